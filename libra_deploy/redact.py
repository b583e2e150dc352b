"""Keep secrets out of everything the service shows: logs, errors, statuses, dead letters."""

from __future__ import annotations

import re
import threading
from urllib.parse import urlsplit

# user:password@ inside any URL-looking string, whatever the scheme.
_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/\s:@]*):(?P<password>[^/\s@]+)@"
)
# An Authorization header echoed back by an SDK's error message.
_BEARER = re.compile(r"(?P<scheme>\b(?:Bearer|Basic|Token)\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)

#: Secrets shorter than this are not registered: scrubbing every "auto" or "1" would mangle messages.
MIN_SECRET_LENGTH = 8

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Scrub ``value`` (an API key, a token) from every text :func:`redact_text` sees from now on.

    The settings register their secret values when they are read, so an SDK error that quotes a
    key or a request header never reaches a log line, a deployment's error or a dead letter.
    """
    if len(value) >= MIN_SECRET_LENGTH:
        with _lock:
            _secrets.add(value)


def redact_url(url: str) -> str:
    """Hide the password of a URL (``redis://:secret@host`` becomes ``redis://:***@host``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", url)


def redact_text(text: str) -> str:
    """Hide credentials in URLs, Authorization values and registered secrets anywhere in a text."""
    text = _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)
    text = _BEARER.sub(r"\g<scheme>***", text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text
