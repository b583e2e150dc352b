"""Keep secrets out of everything the service shows: logs, errors, statuses, dead letters.

:func:`redact_text` hides, wherever they appear in a text:

* credentials inside URLs (``redis://:secret@host`` becomes ``redis://:***@host``);
* the credentials of ``Authorization`` headers and ``Bearer`` tokens;
* values given to names that say they are secret (``password=...``, ``"api_key": "..."``,
  ``DB_TOKEN=...``);
* tokens whose shape gives them away (our own ``ldt_``/``lds_`` credentials and ``whsec_`` webhook
  secrets, GitHub, npm, AWS, Slack, Stripe and E2B keys, JSON web tokens, PEM private keys);
* the values of the service's own secret settings, registered at start-up with
  :func:`register_secrets`.

:func:`install_log_redaction` makes every log record of the process pass through it: the web app
factory, the worker and ``libra-deploy up`` call it when they start.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

MASK = "***"

# user:password@ inside any URL-looking string, whatever the scheme.
# The patterns start only where a run of name characters starts and consume runs possessively, so
# that a long line costs linear time (a build may print a megabyte of minified code on one line).
_URL_CREDENTIALS = re.compile(
    r"(?<![a-zA-Z0-9+.-])(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*+://)(?P<user>[^/\s:@]*+):(?P<password>[^/\s@]+)@"
)
# "Authorization: Basic abc", "authorization=Bearer abc", '"Authorization": "token abc"'.
_AUTHORIZATION = re.compile(
    r"(?i)(?P<name>\b(?:proxy-)?authorization\b[\"']?\s*[:=]\s*[\"']?)"
    r"(?P<scheme>(?:bearer|basic|token|digest|negotiate)\s+)?(?P<value>[^\s\"',;]+)"
)
_BEARER = re.compile(r"(?i)(?P<name>\bbearer\s+)(?P<value>[A-Za-z0-9\-._~+/]+=*)")
#: A name that says its value is secret, followed by ``=`` or ``:`` and the value (quoted or not).
_ASSIGNMENT = re.compile(
    r"(?<![A-Za-z0-9_.-])(?P<name>[A-Za-z0-9_.-]++[\"']?\s*+[:=]\s*+)(?P<quote>[\"']?)"
    r"(?P<value>(?!\*\*\*)[^\s\"'&,;]+)"
)
#: Credentials recognisable by their shape alone.
_KNOWN_TOKENS = re.compile(
    "|".join(
        (
            r"\bld[ts]_[A-Za-z0-9_-]{20,}",  # our API tokens and session values
            r"\bwhsec_[A-Za-z0-9_-]{20,}",  # our webhook signing secrets
            r"\bgh[pousr]_[A-Za-z0-9]{30,}",  # GitHub tokens
            r"\bgithub_pat_[A-Za-z0-9_]{40,}",
            r"\bnpm_[A-Za-z0-9]{30,}",
            r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
            r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
            r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}",  # Stripe
            r"\be2b_[a-f0-9]{30,}",
            r"\bdtn_[a-f0-9]{30,}",  # Daytona
            r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JSON web tokens
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
        )
    )
)
#: Cheap tests that a line may hold one of the above: most lines hold none, and the full patterns
#: cost tens of microseconds a line (a build prints thousands).
_KNOWN_TOKEN_HINT = re.compile(
    r"ld[ts]_|whsec_|gh[pousr]_|github_pat_|npm_|AKIA|ASIA|xox|k_live_|k_test_|e2b_|dtn_|eyJ|-----BEGIN"
)
_SECRET_WORD = re.compile(
    r"(?i)passw|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|credential|session[_-]?id|cookie"
)
#: Environment variable names that hold a secret (their values are registered at start-up).
_SECRET_SETTING = re.compile(
    r"(?i)(token|secret|passw|api_?key|access_?key|private_?key|credential|(^|_)key$|_dsn$)"
)
#: Registered values shorter than this are not searched for: they would mask ordinary words.
MIN_SECRET_LENGTH = 6

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_secret_pattern: re.Pattern[str] | None = None


def looks_secret(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret (``E2B_API_KEY``...)."""
    return bool(_SECRET_SETTING.search(name))


def url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def register_secrets(values: Iterable[str]) -> None:
    """Add values that must never be shown (the service's own secret settings), process-wide."""
    global _secrets, _secret_pattern
    with _lock:
        merged = _secrets | {v for v in values if len(v) >= MIN_SECRET_LENGTH}
        if merged == _secrets:
            return
        _secrets = frozenset(merged)
        # Longest first, so that a secret containing another is masked whole.
        alternatives = sorted(_secrets, key=len, reverse=True)
        _secret_pattern = re.compile("|".join(re.escape(v) for v in alternatives))


def masker(values: Iterable[str]) -> Callable[[str], str]:
    """A function that replaces ``values`` with the mask wherever they appear in a text.

    For the secrets of one deployment (its build variables), which must be masked in what that
    deployment shows but, unlike :func:`register_secrets`, not process-wide: a value registered for
    every text would be masked in other organisations' logs too (telling them it is someone's
    secret), and the local sandbox keeps registered values out of every build's environment. Each
    line of a multi-line value is masked on its own too, since output arrives a line at a time.
    Values shorter than MIN_SECRET_LENGTH are not masked: they would mask ordinary words.
    """
    pieces = {
        v for value in values for v in (value, *value.splitlines()) if len(v.strip()) >= MIN_SECRET_LENGTH
    }
    if not pieces:
        return lambda text: text
    pattern = re.compile("|".join(re.escape(v) for v in sorted(pieces, key=len, reverse=True)))
    return lambda text: pattern.sub(MASK, text) if text else text


def redact_url(url: str) -> str:
    """Hide the password of a URL (``redis://:secret@host`` becomes ``redis://:***@host``)."""
    if url_password(url) is None:
        return url
    return _URL_CREDENTIALS.sub(rf"\g<scheme>\g<user>:{MASK}@", url)


def redact_text(text: str) -> str:
    """Hide every credential the module knows how to find in a free-form text."""
    if not text:
        return text
    pattern = _secret_pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    if "://" in text and "@" in text:
        text = _URL_CREDENTIALS.sub(rf"\g<scheme>\g<user>:{MASK}@", text)
    if _KNOWN_TOKEN_HINT.search(text):
        text = _KNOWN_TOKENS.sub(MASK, text)
    lower = text.lower()
    if "authorization" in lower:
        text = _AUTHORIZATION.sub(lambda m: f"{m['name']}{m['scheme'] or ''}{MASK}", text)
    if "bearer" in lower:
        text = _BEARER.sub(rf"\g<name>{MASK}", text)
    if _SECRET_WORD.search(text):
        text = _ASSIGNMENT.sub(_mask_secret_assignment, text)
    return text


def _mask_secret_assignment(match: re.Match[str]) -> str:
    """``name=value`` keeps its value unless the name says the value is secret."""
    if _SECRET_WORD.search(match["name"]):
        return f"{match['name']}{match['quote']}{MASK}"
    return match[0]


def redact_data(value: Any) -> Any:
    """Redact every string inside a JSON-like value; the values of secret-named keys entirely."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            key: MASK
            if isinstance(key, str) and (looks_secret(key) or key.lower() == "authorization") and value_
            else redact_data(value_)
            for key, value_ in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_data(item) for item in value]
    return value


class RedactingFilter(logging.Filter):
    """A logging filter that rewrites a record's message and traceback without their secrets.

    It never drops a record. The formatted message replaces ``msg`` (and ``args`` is emptied) so
    that handlers format the redacted text; a traceback is formatted and redacted here too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    try:
        message = record.getMessage()
    except Exception:
        # A malformed record (arguments that do not fit the format) fails again in its handler,
        # which prints the message and the arguments: both are redacted for that.
        record.msg = redact_text(str(record.msg))
        if isinstance(record.args, tuple):
            record.args = tuple(redact_text(str(arg)) for arg in record.args)
        return record
    record.msg = redact_text(message)
    record.args = None
    if record.exc_info and not record.exc_text:
        record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    if record.exc_text:
        record.exc_text = redact_text(record.exc_text)
    # A formatter given the exception itself formats it again, unredacted (python-json-logger
    # does, whatever exc_text holds); without it, every formatter prints the redacted exc_text.
    record.exc_info = None
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info)
    return record


_installed = False


def install_log_redaction(secrets: Iterable[str] = ()) -> None:
    """Register ``secrets`` and make every log record of this process redacted when it is created.

    The redaction runs in the log record factory rather than in a handler's filter so that it
    covers every logger and every handler, including those configured later (Celery's, gunicorn's).
    Calling it again only registers more secrets.
    """
    global _installed
    register_secrets(secrets)
    with _lock:
        if _installed:
            return
        _installed = True
        make_record = logging.getLogRecordFactory()
        redacting = RedactingFilter()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make_record(*args, **kwargs)
            redacting.filter(record)
            return record

        logging.setLogRecordFactory(factory)


def contains_secret(text: str) -> bool:
    """Whether ``text`` holds one of the registered secret values (a sandbox must never get one)."""
    pattern = _secret_pattern
    return pattern is not None and pattern.search(text) is not None
