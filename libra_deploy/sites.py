"""Serving a published site: which file answers a path, with which type, caching and headers.

Rules, as static hosts do it, in this order:

1. The site's ``_redirects`` (see :mod:`libra_deploy.site_rules`): a matching rule redirects, or
   rewrites the path (200) before the file is looked up.
2. ``/`` and ``dir/`` serve ``index.html``; ``dir`` without its slash is redirected (308) to
   ``dir/`` when ``dir/index.html`` exists. The rule files themselves are not served.
3. A missing file is 404 with the nearest ``404.html`` (from the requested directory up to the
   root), as on Pages. A site without any is treated as a single-page app: a deep link (a last
   path segment without a file extension, such as ``/settings/profile``) gets ``index.html`` with
   200 so that the app's router can take over, while a missing ``/app.js`` stays 404 and a browser
   never runs HTML as a script. A project setting (``spa_fallback``) turns this off.
4. The site's ``_headers`` rules for the requested URL apply to whatever answers, redirects and
   404s included.

HTML is revalidated on every visit, fingerprinted assets (``app-3f9a1c2b.js``) are cached for a
year, and everything carries a strong ETag.

Under ``/sites/`` the service's own origin serves every site, so answers there also carry a sandbox
that gives the page an opaque origin of its own (:func:`shared_origin_headers`); on a custom domain
the site has its origin to itself and is served as it is.
"""

from __future__ import annotations

import mimetypes
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from urllib.parse import quote, unquote, urlsplit

from cachetools import LRUCache

from libra_deploy.ports import DeployTarget, SiteFile
from libra_deploy.site_rules import (
    HEADERS,
    REDIRECTS,
    RULE_FILES,
    HeaderAction,
    SiteRules,
    apply_headers,
    decode,
    parse,
    substitute,
)

_TYPES = mimetypes.MimeTypes()  # the built-in table only: the host's /etc/mime.types varies
_OVERRIDES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".htm": "text/html",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml",
    ".wasm": "application/wasm",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/x-icon",
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".xml": "application/xml",
    ".ts": "text/plain",
}
# A content hash in the file name: eight or more characters with at least one digit, set off by
# '-' or '.' just before the extension (Vite's app-BdE3f9a1.js, CRA's main.3f2a1b9c.css).
_FINGERPRINT = re.compile(r"[.-](?=[A-Za-z0-9_]*\d)[A-Za-z0-9_]{8,}\.[A-Za-z0-9]+$")

HTML_CACHE = "public, max-age=0, must-revalidate"
IMMUTABLE_CACHE = "public, max-age=31536000, immutable"


def content_type(path: str) -> str:
    dot = path.rfind(".")
    ext = path[dot:].lower() if dot > path.rfind("/") else ""
    kind = _OVERRIDES.get(ext) or _TYPES.guess_type("x" + ext)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind in (
        "application/json",
        "application/javascript",
        "application/xml",
        "image/svg+xml",
    ):
        kind += "; charset=utf-8"
    return kind


def cache_control(path: str) -> str:
    return IMMUTABLE_CACHE if _FINGERPRINT.search(path.rsplit("/", 1)[-1]) else HTML_CACHE


def etag(file: SiteFile) -> str:
    return f'"{file.sha256[:32]}"'


def file_headers(file: SiteFile) -> list[tuple[str, str]]:
    """The service's own headers for a file, before the site's ``_headers`` rules."""
    return [
        ("Content-Type", content_type(file.path)),
        ("ETag", etag(file)),
        ("Cache-Control", cache_control(file.path)),
        ("X-Content-Type-Options", "nosniff"),
    ]


#: The sandbox of every answer under /sites/, where sites are served from the API's own origin.
#: Without allow-same-origin the page runs in an opaque origin: its requests say ``Origin: null``
#: (the session cookie's write check refuses them, CORS shows it no answer of the API), and it can
#: read neither the origin's cookies nor its storage, nor register a service worker there. Kept,
#: because static sites use them: scripts, forms, popups and target=_blank links (escaping the
#: sandbox, so that another website opens as itself; a /sites/ page opened so has its own sandbox
#: anyway), alert() and the like, downloads. Left out: allow-top-navigation* (a framed site must
#: not navigate the page framing it) and the rarer page features (pointer lock, presentation),
#: harmless to add when a site needs them. The cost to sites: no cookies, storage, service worker
#: or worker loaded by URL of their own here; a site that needs them uses its custom domain.
SANDBOX_POLICY = (
    "sandbox allow-scripts allow-forms allow-popups allow-popups-to-escape-sandbox"
    " allow-modals allow-downloads"
)
#: An opaque origin is cross-origin to everything, its own files included: module scripts, fonts and
#: fetch() of the site's own files are CORS requests from ``Origin: null``, which need this. A site's
#: files are public and the answer grants no credentials, so any page may read them.
SHARED_ORIGIN_CORS = ("Access-Control-Allow-Origin", "*")


def shared_origin_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """An answer's headers, ``_headers`` rules applied, as served from the service's own origin.

    The sandbox is a policy of its own, added after the rules: a rule's Content-Security-Policy
    (or its ``!`` removal) acts only on the site's own policy, and a browser enforces every policy
    it gets, so a site's policy can tighten the sandbox but neither remove nor loosen it. The CORS
    answer is the service's, whole: a rule's ``Access-Control-*`` headers (kept on a custom domain)
    give way to it, so that no site grants credentialed reads on the API's origin.
    """
    kept = [(name, value) for name, value in headers if not name.lower().startswith("access-control-")]
    return [*kept, ("Content-Security-Policy", SANDBOX_POLICY), SHARED_ORIGIN_CORS]


# A last path segment with a file extension: "app.js", "photo.JPG", ".env"; not "settings".
_EXTENSION = re.compile(r"\.[A-Za-z0-9]+$")


@dataclass(frozen=True)
class SiteAnswer:
    status: int
    file: SiteFile | None = None
    #: For a redirect: a path of the site ("/docs/", with any query string) or an absolute URL.
    location: str | None = None
    #: The site's ``_headers`` rules that match the request, to apply to the response in order.
    header_actions: tuple[HeaderAction, ...] = ()

    def headers(self, base: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """``base`` (the response's own headers) with the site's ``_headers`` rules applied."""
        return apply_headers(base, self.header_actions)


#: Parsed rule files by (project, deployment). A deployment never changes, so neither do its rules.
_RULES: LRUCache[tuple[str, str], SiteRules] = LRUCache(maxsize=512)
_RULES_LOCK = threading.Lock()


def site_rules(target: DeployTarget, project_id: str, deployment_id: str) -> SiteRules:
    """The deployment's ``_redirects`` and ``_headers`` rules, parsed once per process."""
    key = (project_id, deployment_id)
    with _RULES_LOCK:
        cached = _RULES.get(key)
    if cached is not None:
        return cached
    texts: dict[str, str] = {}
    for name in RULE_FILES:
        found = target.open(project_id, deployment_id, name)
        if found is not None:
            with found.open() as f:
                texts[name] = decode(f.read())
    rules = parse(texts.get(REDIRECTS), texts.get(HEADERS))
    with _RULES_LOCK:
        _RULES[key] = rules
    return rules


def resolve(
    target: DeployTarget,
    project_id: str,
    deployment_id: str,
    path: str,
    *,
    host: str = "",
    query: str = "",
    spa_fallback: Callable[[], bool] = lambda: True,
) -> SiteAnswer:
    """Find what answers ``path`` (URL-decoded, without the leading slash) in a deployment.

    ``host`` is the request's host (for ``_headers`` rules on absolute URLs) and ``query`` its
    query string; ``spa_fallback`` says whether the project wants the single-page-app fallback
    (asked only when it could apply, since it may cost a database read).
    """
    rules = site_rules(target, project_id, deployment_id)
    requested = "/" + path
    site = _Site(target, project_id, deployment_id, query, spa_fallback)
    redirect = rules.redirect_for(requested)
    if redirect is None:
        answer = site.file(path)
    else:
        rule, params = redirect
        destination = substitute(rule.destination, params)
        if rule.status == 200:
            answer = site.file(unquote(urlsplit(destination).path).lstrip("/"))
        else:
            answer = SiteAnswer(rule.status, location=_with_query(destination, query))
    return replace(answer, header_actions=rules.header_actions(host, requested))


def _with_query(location: str, query: str) -> str:
    if not query or "?" in location:
        return location
    base, hash_mark, fragment = location.partition("#")
    return f"{base}?{query}{hash_mark}{fragment}"


@dataclass(frozen=True)
class _Site:
    target: DeployTarget
    project_id: str
    deployment_id: str
    query: str
    spa_fallback: Callable[[], bool]

    def open(self, path: str) -> SiteFile | None:
        if path in RULE_FILES:
            return None
        return self.target.open(self.project_id, self.deployment_id, path)

    def file(self, path: str) -> SiteAnswer:
        parts = [p for p in path.split("/") if p]
        if any(p in (".", "..") or "\\" in p or "\0" in p for p in parts):
            return SiteAnswer(404, self.open("404.html"))
        clean = "/".join(parts)
        if not clean or path.endswith("/"):
            found = self.open(f"{clean}/index.html" if clean else "index.html")
            return SiteAnswer(200, found) if found else self.not_found(parts, parts)
        found = self.open(clean)
        if found:
            return SiteAnswer(200, found)
        if self.open(f"{clean}/index.html"):
            return SiteAnswer(308, location=_with_query("/" + quote(clean) + "/", self.query))
        return self.not_found(parts, parts[:-1])

    def not_found(self, parts: list[str], directory: list[str]) -> SiteAnswer:
        for depth in range(len(directory), -1, -1):
            page = self.open("/".join([*directory[:depth], "404.html"]))
            if page:
                return SiteAnswer(404, page)
        deep_link = not parts or not _EXTENSION.search(parts[-1])
        if deep_link:
            index = self.open("index.html")
            if index and self.spa_fallback():
                return SiteAnswer(200, index)
        return SiteAnswer(404)
