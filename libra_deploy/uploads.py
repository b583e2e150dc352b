"""Upload by content hash: send only the files the service lacks, then deploy by naming them.

The client hashes its files (SHA-256), asks which hashes are missing (``POST /projects/<id>/files/
check``), uploads those one by one (``PUT /projects/<id>/files/<sha256>``, raw bytes, hash verified)
and posts the deployment with ``files: [{path, sha256}]``. A second deploy of a large folder sends
only what changed.

Blobs are stored once for everyone (``blobs/<sha256>``), but an organisation may deploy by hash
only what it has uploaded itself (:class:`~libra_deploy.models.OwnedBlob`): knowing a hash is not
knowing the contents, and another organisation's file must not be publishable by its hash. Uploading
a file the store has already costs the transfer, never a second copy.

Garbage collection may delete a blob that was uploaded but not deployed within GC_BLOB_GRACE; the
deploy then answers 400 MISSING_FILES naming it, and the client uploads it again.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from libra_deploy import accounts
from libra_deploy.config import Settings
from libra_deploy.db import in_batches, insert_ignoring_duplicates
from libra_deploy.errors import InvalidInput, PayloadTooLarge
from libra_deploy.models import OwnedBlob
from libra_deploy.ports import ObjectStore
from libra_deploy.sources import RequestPaths, blob_key, normalize_path, sha256_hex

SHA256_PATTERN = r"^[0-9a-f]{64}$"
_SHA256 = re.compile(SHA256_PATTERN)


@dataclass(frozen=True)
class HashedFile:
    """A file of a deploy request named by its hash: its contents are in the object store already."""

    path: str
    sha256: str
    size: int


def _owned_sizes(session: Session, org_id: str, hashes: Collection[str]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for chunk in in_batches(sorted(hashes)):
        rows = session.execute(
            select(OwnedBlob.sha256, OwnedBlob.size).where(
                OwnedBlob.org_id == org_id, OwnedBlob.sha256.in_(chunk)
            )
        )
        sizes.update({sha: size for sha, size in rows})
    return sizes


def _available(session: Session, store: ObjectStore, org_id: str, hashes: Collection[str]) -> dict[str, int]:
    """The hashes the organisation owns and the store still holds, with their sizes."""
    owned = _owned_sizes(session, org_id, hashes)
    gone = store.missing(blob_key(sha) for sha in owned)
    return {sha: size for sha, size in owned.items() if blob_key(sha) not in gone}


def missing(
    session: Session,
    store: ObjectStore,
    settings: Settings,
    org_id: str,
    project_id: str,
    hashes: Sequence[str],
) -> list[str]:
    """The hashes (in the order given, once each) the caller must upload before deploying them."""
    accounts.get_project(session, org_id, project_id)
    if len(hashes) > settings.max_files:
        raise PayloadTooLarge(
            f"hashes holds {len(hashes)} entries; the limit MAX_FILES is {settings.max_files}",
            details={"limit": "MAX_FILES", "value": settings.max_files},
        )
    unique = list(dict.fromkeys(hashes))
    available = _available(session, store, org_id, unique)
    return [sha for sha in unique if sha not in available]


def upload(
    session: Session,
    store: ObjectStore,
    settings: Settings,
    org_id: str,
    project_id: str,
    sha256: str,
    data: bytes,
) -> int:
    """Store one uploaded file under its hash, once it is checked; return its size."""
    accounts.get_project(session, org_id, project_id)
    if not _SHA256.match(sha256):
        raise InvalidInput(
            f"{sha256[:100]!r} is not a SHA-256 (64 lower-case hexadecimal digits)",
            details={"field": "sha256"},
        )
    if len(data) > settings.max_file_bytes:
        raise file_too_large(settings)
    actual = sha256_hex(data)
    if actual != sha256:
        raise InvalidInput(
            f"the body's SHA-256 is {actual}, not {sha256}",
            code="HASH_MISMATCH",
            details={"expected": sha256, "actual": actual},
        )
    key = blob_key(sha256)
    if store.missing([key]):
        store.put(key, data)
    grant(session, org_id, {sha256: len(data)})
    return len(data)


def file_too_large(settings: Settings) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the file is larger than MAX_FILE_BYTES ({settings.max_file_bytes} bytes)",
        details={"limit": "MAX_FILE_BYTES", "value": settings.max_file_bytes},
    )


def grant(session: Session, org_id: str, sizes: Mapping[str, int]) -> None:
    """Record that the organisation uploaded these contents (hash -> size). Idempotent."""
    rows = [{"org_id": org_id, "sha256": sha, "size": sizes[sha]} for sha in sorted(sizes)]
    insert_ignoring_duplicates(session, OwnedBlob, rows)


def resolve_files(
    session: Session,
    store: ObjectStore,
    settings: Settings,
    org_id: str,
    items: Sequence[Mapping[str, Any]],
    seen: RequestPaths,
) -> list[HashedFile]:
    """Check the ``files`` of a deploy request: safe paths, not given twice, contents uploaded.

    ``seen`` holds the request's paths so far (its ``initFiles``): two paths naming one file once
    normalised are refused across both lists.
    """
    named: list[tuple[str, str]] = []
    for index, item in enumerate(items):
        field = f"files[{index}]"
        path = normalize_path(item.get("path"), settings, field=f"{field}.path")
        seen.add(path, item.get("path"), field=f"{field}.path")
        named.append((path, str(item["sha256"])))
    available = _available(session, store, org_id, {sha for _, sha in named})
    absent = sorted({sha for _, sha in named if sha not in available})
    if absent:
        shown = ", ".join(absent[:3]) + (f" and {len(absent) - 3} more" if len(absent) > 3 else "")
        raise InvalidInput(
            f"{len(absent)} file(s) named by hash are not uploaded: {shown}; "
            "upload them with PUT /projects/<id>/files/<sha256> first",
            code="MISSING_FILES",
            details={"missing": absent},
        )
    return [HashedFile(path, sha, available[sha]) for path, sha in named]
