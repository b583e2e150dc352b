"""``_redirects`` and ``_headers``: a site's own rules, in the syntax Cloudflare Pages documents.

Both files sit at the root of the build output. They are read when a deployment is published (their
mistakes go to the deployment's log as warnings) and when the site is served; they are never served
as files themselves. A malformed line is skipped with a warning naming the file, the line and the
reason; it never fails a deployment.

URL patterns (both files)
    A path that begins with ``/``. ``*`` (a splat, at most one) matches anything, ``/`` included;
    ``:name`` (a placeholder: a letter, then letters, digits or ``_``) matches one path segment.
    Matching is on the whole, percent-decoded path and is case-sensitive, so ``/blog/*`` matches
    ``/blog/`` and ``/blog/a/b`` but not ``/blog``. The matched values are ``:splat`` and
    ``:name`` in a destination or a header value.

``_redirects``: one rule per line, ``source destination [status]``
    The destination is a path of the site or an absolute http(s) URL. The status is 301, 302 (the
    default), 303, 307 or 308 for a redirect, or 200 for a rewrite: the destination path's content
    is served under the requested URL (a path of the site only; Pages proxies to no other host).
    Precedence, as on Pages: a static rule (no splat, no placeholder) whose source is the path wins;
    otherwise the first matching dynamic rule in the file. Of two rules for one source the first
    applies. Rules come before files: a rule for a path that exists is followed all the same. A
    redirect keeps the request's query string when its destination has none. Limits as on Pages:
    2,000 static and 100 dynamic rules, 1,000 characters a line.

``_headers``: a URL pattern on a line of its own, then ``Name: value`` lines and ``! Name`` lines
    A pattern may also be an absolute URL (``https://:sub.example.com/*``), matched against the
    request's host too; there a placeholder matches one label. Every rule whose pattern matches
    applies, in file order: the first rule to set a header replaces the service's own value, a
    later rule's value for the same header is appended after a comma, and ``! Name`` removes the
    header as set so far (by the service or by earlier rules). Limits as on Pages: 100 rules, 2,000
    characters a line. Headers that frame the response (Content-Length, Transfer-Encoding and the
    hop-by-hop ones) cannot be set or removed, nor can those that act on the whole origin rather
    than on the answer (:data:`ORIGIN_HEADERS`: cookies, Clear-Site-Data, HSTS...), since under
    ``/sites/`` a site shares its origin with the API. A rule's Content-Security-Policy stays a
    policy of its own beside the sandbox the service adds under ``/sites/``, and its
    ``Access-Control-*`` headers give way to the service's there (:mod:`libra_deploy.sites`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

REDIRECTS = "_redirects"
HEADERS = "_headers"
RULE_FILES = (REDIRECTS, HEADERS)

REDIRECT_STATUSES = frozenset({200, 301, 302, 303, 307, 308})
DEFAULT_REDIRECT_STATUS = 302
MAX_STATIC_REDIRECTS = 2000
MAX_DYNAMIC_REDIRECTS = 100
MAX_REDIRECT_LINE = 1000
MAX_HEADER_RULES = 100
MAX_HEADER_LINE = 2000

#: Headers the server owns: changing them would break the response's framing or the connection.
SERVER_HEADERS = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    }
)
#: Headers that act on the whole origin, and outlast the answer, rather than on the answer itself.
#: Under /sites/ a site shares its origin with the API and with every other site, so one answer
#: carrying them would reach everyone who uses the service: Set-Cookie could replace a visitor's
#: API session with the site's, Clear-Site-Data log them out, Service-Worker-Allowed let a service
#: worker claim a scope beyond the site's directory, Strict-Transport-Security pin the API's host
#: (and with includeSubDomains its subdomains), NEL and Report-To have reports about every later
#: request to the origin sent where the site says, Alt-Svc send the origin's traffic elsewhere.
#: They are refused like the server's own headers, on every host: one deployment's rules serve
#: under /sites/ and on its custom domain alike (a custom domain's proxy can set them there).
ORIGIN_HEADERS = frozenset(
    {
        "set-cookie",
        "set-cookie2",
        "clear-site-data",
        "service-worker-allowed",
        "strict-transport-security",
        "nel",
        "report-to",
        "alt-svc",
    }
)

_TOKEN = re.compile(r"(\*|:[A-Za-z][A-Za-z0-9_]*)")
_REFERENCE = re.compile(r":([A-Za-z][A-Za-z0-9_]*)")
_ABSOLUTE = re.compile(r"^https?://", re.IGNORECASE)
_PATTERN_LINE = re.compile(r"^(/|[A-Za-z][A-Za-z0-9+.-]*://)")
#: RFC 9110 token: what a header name may be made of.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_PORT = re.compile(r":\d")


class RuleError(ValueError):
    """A pattern or a rule that cannot be used; its message says why."""


@dataclass(frozen=True)
class RuleWarning:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file} line {self.line}: {self.message}"


@dataclass(frozen=True)
class Pattern:
    """A compiled URL pattern: a path, and for absolute ones a host."""

    text: str
    path: re.Pattern[str]
    host: re.Pattern[str] | None = None
    dynamic: bool = False

    def match(self, host: str, path: str) -> dict[str, str] | None:
        """The splat and placeholder values when the pattern matches, else None."""
        params: dict[str, str] = {}
        if self.host is not None:
            found = self.host.fullmatch(host.lower())
            if found is None:
                return None
            params.update(found.groupdict())
        found = self.path.fullmatch(path)
        if found is None:
            return None
        params.update(found.groupdict())
        return params


def compile_pattern(text: str, *, allow_host: bool) -> Pattern:
    """Compile a URL pattern, or raise RuleError saying what is wrong with it."""
    host_text = None
    path_text = text.split("#", 1)[0]  # a fragment never reaches the server
    if _ABSOLUTE.match(path_text):
        if not allow_host:
            raise RuleError(f"{text}: a source must be a path; rules for other hosts are not supported")
        host_text, slash, rest = path_text.split("://", 1)[1].partition("/")
        if not host_text:
            raise RuleError(f"{text}: the URL names no host")
        if _PORT.search(host_text):
            raise RuleError(f"{text}: a URL pattern cannot carry a port")
        path_text = slash + rest or "/"
    if not path_text.startswith("/"):
        raise RuleError(f"{text}: a path must begin with '/'")
    if "?" in path_text:
        raise RuleError(f"{text}: a pattern cannot match a query string")
    names: set[str] = set()
    host = _compile(host_text.lower(), names, segment="[^./]+", text=text) if host_text else None
    path = _compile(path_text, names, segment="[^/]+", text=text)
    return Pattern(text=path_text, path=path, host=host, dynamic=bool(names))


def _compile(pattern: str, names: set[str], *, segment: str, text: str) -> re.Pattern[str]:
    parts: list[str] = []
    for piece in _TOKEN.split(pattern):
        if not piece:
            continue
        if piece == "*" or piece.startswith(":"):
            name = "splat" if piece == "*" else piece[1:]
            if name in names:
                what = "more than one splat" if name == "splat" else f"the placeholder :{name} twice"
                raise RuleError(f"{text}: a pattern may hold {what}")
            names.add(name)
            parts.append(f"(?P<{name}>.*)" if piece == "*" else f"(?P<{name}>{segment})")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts))


def substitute(template: str, params: Mapping[str, str]) -> str:
    """Put the matched values into a destination or a header value (percent-encoded, as in a URL)."""

    def value(found: re.Match[str]) -> str:
        name = found.group(1)
        return quote(params[name], safe="/") if name in params else found.group(0)

    return _REFERENCE.sub(value, template) if params else template


@dataclass(frozen=True)
class RedirectRule:
    source: Pattern
    destination: str
    status: int
    line: int


@dataclass(frozen=True)
class HeaderRule:
    pattern: Pattern
    #: (name, value) in file order; one name set twice in a rule is one value, comma-joined.
    set: tuple[tuple[str, str], ...]
    unset: tuple[str, ...]
    line: int


@dataclass(frozen=True)
class HeaderAction:
    """What one matching ``_headers`` rule does to a response, with its values substituted."""

    set: tuple[tuple[str, str], ...]
    unset: tuple[str, ...]


@dataclass(frozen=True)
class SiteRules:
    redirects: tuple[RedirectRule, ...] = ()
    headers: tuple[HeaderRule, ...] = ()
    warnings: tuple[RuleWarning, ...] = ()
    #: The static redirect rules (no splat, no placeholder) by their source path.
    static_redirects: Mapping[str, RedirectRule] = field(default_factory=dict, repr=False, compare=False)

    def redirect_for(self, path: str) -> tuple[RedirectRule, dict[str, str]] | None:
        """The redirect or rewrite rule that applies to ``path`` (with its values), if any."""
        static = self.static_redirects.get(path)
        if static is not None:
            return static, {}
        for rule in self.redirects:
            if rule.source.dynamic:
                params = rule.source.match("", path)
                if params is not None:
                    return rule, params
        return None

    def header_actions(self, host: str, path: str) -> tuple[HeaderAction, ...]:
        actions = []
        for rule in self.headers:
            params = rule.pattern.match(host, path)
            if params is not None:
                values = tuple((name, substitute(value, params)) for name, value in rule.set)
                actions.append(HeaderAction(set=values, unset=rule.unset))
        return tuple(actions)


def apply_headers(
    headers: Iterable[tuple[str, str]], actions: Iterable[HeaderAction]
) -> list[tuple[str, str]]:
    """The response headers once the matching ``_headers`` rules have been applied, in order."""
    result = list(headers)
    set_by_rules: set[str] = set()
    for action in actions:
        for name in action.unset:
            key = name.lower()
            result = [(n, v) for n, v in result if n.lower() != key]
            set_by_rules.discard(key)
        for name, value in action.set:
            key = name.lower()
            if key in set_by_rules:
                result = [(n, f"{v}, {value}" if n.lower() == key else v) for n, v in result]
            else:
                result = [(n, v) for n, v in result if n.lower() != key]
                result.append((name, value))
                set_by_rules.add(key)
    return result


def decode(data: bytes) -> str:
    """A rule file's text: UTF-8 (a byte-order mark is dropped), undecodable bytes replaced."""
    return data.decode("utf-8", errors="replace").removeprefix("\ufeff")


def _lines(text: str) -> Iterable[tuple[int, str]]:
    # Only newlines end a line, as on Pages; str.splitlines would also split on form feeds and such.
    for number, raw in enumerate(text.split("\n"), start=1):
        yield number, raw.removesuffix("\r")


def parse_redirects(text: str) -> tuple[list[RedirectRule], list[RuleWarning]]:
    rules: list[RedirectRule] = []
    warnings: list[RuleWarning] = []
    seen: dict[str, int] = {}
    static = dynamic = 0

    def warn(number: int, message: str) -> None:
        warnings.append(RuleWarning(REDIRECTS, number, message))

    for number, raw in _lines(text):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if len(raw) > MAX_REDIRECT_LINE:
            warn(number, f"longer than {MAX_REDIRECT_LINE} characters; ignored")
            continue
        tokens = line.split()
        if len(tokens) not in (2, 3):
            warn(number, f"expected `source destination [status]`, found {len(tokens)} fields; ignored")
            continue
        source, destination = tokens[0], tokens[1]
        status = DEFAULT_REDIRECT_STATUS
        if len(tokens) == 3:
            # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
            if not (tokens[2].isascii() and tokens[2].isdigit()) or int(tokens[2]) not in REDIRECT_STATUSES:
                warn(number, f"status {tokens[2]!r} is not one of 200, 301, 302, 303, 307, 308; ignored")
                continue
            status = int(tokens[2])
        try:
            pattern = compile_pattern(source, allow_host=False)
        except RuleError as exc:
            warn(number, f"{exc}; ignored")
            continue
        if _ABSOLUTE.match(destination):
            if status == 200:
                warn(number, f"a 200 rewrite must point to a path of the site, not {destination}; ignored")
                continue
        elif not destination.startswith("/"):
            warn(number, f"the destination {destination!r} must begin with '/' or https://; ignored")
            continue
        if pattern.text in seen:
            warn(number, f"a rule for {pattern.text} is on line {seen[pattern.text]} already; ignored")
            continue
        if not pattern.dynamic and status != 200 and re.split("[?#]", destination)[0] == pattern.text:
            warn(number, f"{pattern.text} redirects to itself; ignored")
            continue
        if pattern.dynamic:
            if dynamic >= MAX_DYNAMIC_REDIRECTS:
                warn(number, f"more than {MAX_DYNAMIC_REDIRECTS} dynamic rules; this and later lines ignored")
                break
            dynamic += 1
        else:
            if static >= MAX_STATIC_REDIRECTS:
                warn(number, f"more than {MAX_STATIC_REDIRECTS} static rules; ignored")
                continue
            static += 1
        seen[pattern.text] = number
        rules.append(RedirectRule(source=pattern, destination=destination, status=status, line=number))
    return rules, warnings


@dataclass
class _OpenRule:
    pattern: Pattern
    line: int
    set: dict[str, tuple[str, str]] = field(default_factory=dict)
    unset: list[str] = field(default_factory=list)

    def close(self) -> HeaderRule:
        return HeaderRule(self.pattern, tuple(self.set.values()), tuple(self.unset), self.line)


def parse_headers(text: str) -> tuple[list[HeaderRule], list[RuleWarning]]:
    rules: list[HeaderRule] = []
    warnings: list[RuleWarning] = []
    current: _OpenRule | None = None
    # Header lines after a pattern that was refused belong to no rule; that pattern's warning is enough.
    skipping = False

    def warn(number: int, message: str) -> None:
        warnings.append(RuleWarning(HEADERS, number, message))

    def finish() -> None:
        if current is None:
            return
        if current.set or current.unset:
            rules.append(current.close())
        else:
            warn(current.line, f"no headers for {current.pattern.text}; ignored")

    for number, raw in _lines(text):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if len(raw) > MAX_HEADER_LINE:
            warn(number, f"longer than {MAX_HEADER_LINE} characters; ignored")
            continue
        if _PATTERN_LINE.match(line):
            finish()
            current = None
            if len(rules) >= MAX_HEADER_RULES:
                warn(number, f"more than {MAX_HEADER_RULES} rules; this line and the rest are ignored")
                break
            try:
                current = _OpenRule(compile_pattern(line, allow_host=True), number)
                skipping = False
            except RuleError as exc:
                warn(number, f"{exc}; its headers are ignored")
                skipping = True
            continue
        if skipping:
            continue
        if line.startswith("!"):
            name, value = line[1:].strip(), ""
        else:
            name, colon, value = line.partition(":")
            name, value = name.strip(), value.strip()
            if not colon:
                warn(number, "expected `Name: value`, `! Name` or a URL pattern; ignored")
                continue
            if not value:
                warn(number, f"the header {name} has no value; ignored")
                continue
        problem = _header_problem(name, value)
        if problem:
            warn(number, f"{problem}; ignored")
            continue
        if current is None:
            warn(number, f"the header {name} comes before any URL pattern; ignored")
            continue
        if line.startswith("!"):
            current.unset.append(name)
            continue
        key = name.lower()
        if key in current.set:
            shown, before = current.set[key]
            current.set[key] = (shown, f"{before}, {value}")
        else:
            current.set[key] = (name, value)
    finish()
    return rules, warnings


def _header_problem(name: str, value: str) -> str | None:
    if not _HEADER_NAME.match(name):
        return f"{name!r} is not a valid header name"
    if name.lower() in SERVER_HEADERS:
        return f"{name} is set by the server and cannot be changed"
    if name.lower() in ORIGIN_HEADERS:
        return f"{name} acts on the whole origin, not on one answer, and cannot be set or removed"
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
        return f"the value of {name} holds control characters"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return f"the value of {name} holds characters an HTTP header cannot carry"
    return None


def parse(redirects: str | None, headers: str | None) -> SiteRules:
    """Both rule files of a site (None for a file the site does not have)."""
    redirect_rules, redirect_warnings = parse_redirects(redirects or "")
    header_rules, header_warnings = parse_headers(headers or "")
    return SiteRules(
        redirects=tuple(redirect_rules),
        headers=tuple(header_rules),
        warnings=(*redirect_warnings, *header_warnings),
        static_redirects={rule.source.text: rule for rule in redirect_rules if not rule.source.dynamic},
    )
