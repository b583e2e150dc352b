"""Keep secrets out of everything the service shows: logs, errors, statuses, dead letters."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# user:password@ inside any URL-looking string, whatever the scheme.
_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/\s:@]*):(?P<password>[^/\s@]+)@"
)


def redact_url(url: str) -> str:
    """Hide the password of a URL (``redis://:secret@host`` becomes ``redis://:***@host``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", url)


def redact_text(text: str) -> str:
    """Hide credentials embedded in URLs anywhere in a free-form text."""
    return _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)
