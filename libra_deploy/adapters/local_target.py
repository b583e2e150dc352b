"""DeployTarget on a local directory, served by the service itself under /sites/.

Layout under ``$LIBRA_DATA_DIR/sites/<project>/``::

    files/<sha256>              every file the project ever published, stored once by content
    deployments/<id>.json       a deployment: {path: {"sha256", "size"}}, written once, never changed
    live                        the id of the deployment the site serves

Publishing writes only the files the project lacks, then the deployment's manifest; activating
replaces ``live`` with one atomic rename. A deployment is therefore immutable and switching the live
one (a deploy, a rollback) never copies a file.

Removing a deployment deletes its files that no other deployment of the project lists, then its
manifest. Publishing and removing hold the project's lock file (``.lock``, across processes: the
worker publishes while ``libra-deploy gc`` removes), so a removal never deletes a file that a
publish in progress found present and therefore did not write.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from filelock import FileLock

from libra_deploy.config import Settings
from libra_deploy.errors import ProviderError
from libra_deploy.ports import Manifest, ObjectStore, PublishResult, SiteFile

_ID = re.compile(r"^[a-z]{2,5}_[0-9a-z]{26}$")


class LocalStaticTarget:
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        # Deployments never change once written, so their parsed manifests can be kept.
        self._manifests: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock_manifests = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalStaticTarget:
        return cls(settings.data_dir / "sites")

    def _project(self, project_id: str) -> Path:
        if not _ID.match(project_id):
            raise ValueError(f"invalid project id {project_id!r}")
        return self.root / project_id

    def _lock(self, project_id: str) -> FileLock:
        base = self._project(project_id)
        base.mkdir(parents=True, exist_ok=True)
        return FileLock(base / ".lock")

    def _manifest_path(self, project_id: str, deployment_id: str) -> Path:
        if not _ID.match(deployment_id):
            raise ValueError(f"invalid deployment id {deployment_id!r}")
        return self._project(project_id) / "deployments" / f"{deployment_id}.json"

    def publish(
        self, project_id: str, deployment_id: str, manifest: Manifest, store: ObjectStore
    ) -> PublishResult:
        base = self._project(project_id)
        files = base / "files"
        uploaded = uploaded_bytes = 0
        with self._lock(project_id):
            files.mkdir(parents=True, exist_ok=True)
            for sha in sorted({str(entry["sha256"]) for entry in manifest.values()}):
                dest = files / sha
                if dest.exists():
                    continue
                data = store.get(f"blobs/{sha}")
                _atomic_write(dest, data)
                uploaded += 1
                uploaded_bytes += len(data)
            _atomic_write(self._manifest_path(project_id, deployment_id), json.dumps(manifest).encode())
        return PublishResult(uploaded_files=uploaded, uploaded_bytes=uploaded_bytes)

    def remove(self, project_id: str, deployment_id: str) -> None:
        path = self._manifest_path(project_id, deployment_id)
        files = self._project(project_id) / "files"
        with self._lock(project_id):
            try:
                removed = json.loads(path.read_bytes())
            except FileNotFoundError:
                return
            still_used: set[str] = set()
            for other in path.parent.glob("*.json"):
                if other != path:
                    still_used.update(str(e["sha256"]) for e in json.loads(other.read_bytes()).values())
            # Files first, the manifest last: an interrupted removal is finished by the next one.
            for sha in {str(e["sha256"]) for e in removed.values()} - still_used:
                (files / sha).unlink(missing_ok=True)
            path.unlink()
        with self._lock_manifests:
            self._manifests.pop((project_id, deployment_id), None)

    def activate(self, project_id: str, deployment_id: str) -> None:
        base = self._project(project_id)
        if not (base / "deployments" / f"{deployment_id}.json").is_file():
            raise ProviderError(f"deployment {deployment_id} was never published")
        _atomic_write(base / "live", deployment_id.encode())

    def live_deployment(self, project_id: str) -> str | None:
        try:
            return (self._project(project_id) / "live").read_text().strip() or None
        except (FileNotFoundError, ValueError):
            return None

    def _manifest(self, project_id: str, deployment_id: str) -> dict[str, Any] | None:
        key = (project_id, deployment_id)
        try:
            path = self._manifest_path(project_id, deployment_id)
        except ValueError:
            return None
        with self._lock_manifests:
            cached = self._manifests.get(key)
        # Another process (gc) may have removed the deployment since it was cached.
        if cached is not None and path.exists():
            return cached
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            with self._lock_manifests:
                self._manifests.pop(key, None)
            return None
        manifest = json.loads(raw)
        with self._lock_manifests:
            if len(self._manifests) > 256:
                self._manifests.clear()
            self._manifests[key] = manifest
        return manifest

    def open(self, project_id: str, deployment_id: str, path: str) -> SiteFile | None:
        manifest = self._manifest(project_id, deployment_id)
        entry = manifest.get(path) if manifest else None
        if entry is None:
            return None
        blob = self._project(project_id) / "files" / str(entry["sha256"])
        return SiteFile(
            path=path, sha256=str(entry["sha256"]), size=int(entry["size"]), open=partial(_open, blob)
        )


def _open(path: Path) -> BinaryIO:
    return path.open("rb")


def _atomic_write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise ProviderError(
            f"local target: cannot write {path.name}: {exc.strerror}", retryable=True
        ) from exc
