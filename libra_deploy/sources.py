"""A deployment's source files: untrusted paths made safe, uploads decoded, trees merged.

Every path that reaches the object store, a sandbox or a deploy target went through
:func:`normalize_path`: relative, forward slashes, no ``..``, no control characters, NFC. Two paths
of one request that name the same file once normalised (``a//b`` and ``a/b``, an NFC and an NFD
spelling, a compatibility character and its plain form) are refused rather than one silently
winning. The limits come from the settings and every refusal names the limit or the rule it broke.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from libra_deploy.config import Settings
from libra_deploy.errors import InvalidInput, PayloadTooLarge
from libra_deploy.ports import FileEntry, Manifest

#: Characters that reorder how a name is displayed: they disguise a path (``evil\u202egnp.js``).
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def blob_key(sha256: str) -> str:
    """Where a content-addressed blob lives in the object store."""
    return f"blobs/{sha256}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def normalize_path(raw: object, settings: Settings, *, field: str) -> str:
    """Return the canonical form of a file path given by a client, or raise InvalidInput."""

    def refuse(reason: str, **limit: object) -> InvalidInput:
        details = {"field": field, "path": ascii(raw)[1:-1][:200] if isinstance(raw, str) else None}
        return InvalidInput(f"{field}: {reason}", details={**details, **limit})

    if not isinstance(raw, str) or not raw.strip():
        raise refuse("a path must be a non-empty string")
    path = unicodedata.normalize("NFC", raw)
    if any(unicodedata.category(c) == "Cc" or c in _BIDI_CONTROLS for c in path):
        raise refuse("control characters (including NUL) are not allowed in a path")
    if "\\" in path:
        raise refuse("backslashes are not allowed in a path; use '/'")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":" and path[0].isalpha()):
        raise refuse("absolute paths are not allowed; give a path relative to the project root")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise refuse("'..' is not allowed in a path")
    if not parts:
        raise refuse("the path names no file")
    normalized = "/".join(parts)
    if len(normalized.encode()) > settings.max_path_length:
        raise refuse(
            f"the path is longer than MAX_PATH_LENGTH ({settings.max_path_length} bytes)",
            limit="MAX_PATH_LENGTH",
            value=settings.max_path_length,
        )
    if len(parts) > settings.max_path_depth:
        raise refuse(
            f"the path is deeper than MAX_PATH_DEPTH ({settings.max_path_depth} directories)",
            limit="MAX_PATH_DEPTH",
            value=settings.max_path_depth,
        )
    return normalized


class RequestPaths:
    """The paths one request has named so far, each once: the collision rule of the module docstring.

    Paths are compared after NFKC, which folds the look-alike spellings (full-width letters,
    ligatures) that NFC keeps apart: ``\ufb01le.txt`` and ``file.txt`` would be two files on disk
    but one to the person reading the tree. ``initFiles`` and ``files`` (by hash) of one request
    share one set, so the rule is the same whichever way a file is sent.
    """

    def __init__(self) -> None:
        # NFKC key -> the path as the client spelled it, for the message.
        self._seen: dict[str, str] = {}

    def add(self, path: str, spelled: object, *, field: str) -> None:
        """Take ``path`` (already through :func:`normalize_path`), or refuse it as named before."""
        key = unicodedata.normalize("NFKC", path)
        if key in self._seen:
            raise InvalidInput(
                f"{field}: {spelled!a} names the same file as {self._seen[key]!a} once normalised",
                details={"field": field, "path": path, "rule": "collision"},
            )
        self._seen[key] = str(spelled)


@dataclass(frozen=True)
class IncomingFile:
    """A file of a deploy request: new contents, or a deletion of a stored file (``data`` None)."""

    path: str
    data: bytes | None

    @property
    def sha256(self) -> str | None:
        return None if self.data is None else sha256_hex(self.data)


def decode_init_files(
    items: Sequence[Mapping[str, Any]], settings: Settings, seen: RequestPaths
) -> list[IncomingFile]:
    """Check and decode ``initFiles``: paths, encodings and the size limits. Their paths are added
    to ``seen``, the request's paths, which its ``files`` by hash join next."""
    if len(items) > settings.max_files:
        raise PayloadTooLarge(
            f"initFiles holds {len(items)} files; the limit MAX_FILES is {settings.max_files}",
            details={"limit": "MAX_FILES", "value": settings.max_files},
        )
    files: list[IncomingFile] = []
    total = 0
    for index, item in enumerate(items):
        field = f"initFiles[{index}]"
        path = normalize_path(item.get("path"), settings, field=f"{field}.path")
        seen.add(path, item.get("path"), field=f"{field}.path")
        if item.get("delete"):
            files.append(IncomingFile(path, None))
            continue
        content = item.get("content")
        if not isinstance(content, str):
            raise InvalidInput(
                f"{field}.content: required unless delete is true", details={"field": f"{field}.content"}
            )
        encoding = item.get("encoding") or "utf-8"
        if encoding == "base64":
            try:
                # Line breaks are common in base64 (MIME wraps at 76); anything else must be base64.
                data = base64.b64decode("".join(content.split()), validate=True)
            except (binascii.Error, ValueError):
                raise InvalidInput(
                    f"{field}.content: not valid base64 ({path})",
                    details={"field": f"{field}.content", "path": path},
                ) from None
        else:
            data = content.encode("utf-8")
        if len(data) > settings.max_file_bytes:
            raise PayloadTooLarge(
                f"{path} is {len(data)} bytes; the limit MAX_FILE_BYTES is {settings.max_file_bytes}",
                details={"limit": "MAX_FILE_BYTES", "value": settings.max_file_bytes, "path": path},
            )
        total += len(data)
        if total > settings.max_total_bytes:
            raise PayloadTooLarge(
                f"initFiles add up to more than MAX_TOTAL_BYTES ({settings.max_total_bytes} bytes)",
                details={"limit": "MAX_TOTAL_BYTES", "value": settings.max_total_bytes},
            )
        files.append(IncomingFile(path, data))
    check_tree(f.path for f in files if f.data is not None)
    return files


def check_tree(paths: Iterable[str]) -> None:
    """Refuse a tree where one path is a file and also a directory of another (``a`` and ``a/b``)."""
    files = set(paths)
    for path in files:
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in files:
                raise InvalidInput(
                    f"{parent!r} cannot be both a file and the directory of {path!r}",
                    details={"path": path, "conflictsWith": parent},
                )


def merge_manifest(base: Manifest, changes: Mapping[str, FileEntry | None], *, replace: bool) -> Manifest:
    """Lay ``changes`` (path -> entry, or None to delete) over ``base`` (ignored when ``replace``)."""
    merged: Manifest = {} if replace else dict(base)
    for path, entry in changes.items():
        if entry is None:
            merged.pop(path, None)
        else:
            merged[path] = {"sha256": entry["sha256"], "size": entry["size"]}
    return dict(sorted(merged.items()))
