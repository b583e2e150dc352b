"""Serving a published site: which file answers a path, with which type and caching rules.

Rules, as static hosts do it: ``/`` and ``dir/`` serve ``index.html``; ``dir`` without its slash is
redirected (308) to ``dir/`` when ``dir/index.html`` exists; a missing file is 404, with the site's
own ``404.html`` when it has one. HTML is revalidated on every visit, fingerprinted assets
(``app-3f9a1c2b.js``) are cached for a year, and everything carries a strong ETag.
"""

from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass
from urllib.parse import quote

from libra_deploy.ports import DeployTarget, SiteFile

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


@dataclass(frozen=True)
class SiteAnswer:
    status: int
    file: SiteFile | None = None
    #: For a redirect, the path to send the client to (relative to the site root).
    location: str | None = None


def resolve(target: DeployTarget, project_id: str, deployment_id: str, path: str) -> SiteAnswer:
    """Find what answers ``path`` (URL-decoded, without the leading slash) in a deployment."""
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") or "\\" in p or "\0" in p for p in parts):
        return _not_found(target, project_id, deployment_id)
    clean = "/".join(parts)
    if not clean or path.endswith("/"):
        index = f"{clean}/index.html" if clean else "index.html"
        found = target.open(project_id, deployment_id, index)
        return SiteAnswer(200, found) if found else _not_found(target, project_id, deployment_id)
    found = target.open(project_id, deployment_id, clean)
    if found:
        return SiteAnswer(200, found)
    if target.open(project_id, deployment_id, f"{clean}/index.html"):
        return SiteAnswer(308, location=quote(clean) + "/")
    return _not_found(target, project_id, deployment_id)


def _not_found(target: DeployTarget, project_id: str, deployment_id: str) -> SiteAnswer:
    return SiteAnswer(404, target.open(project_id, deployment_id, "404.html"))
