"""ObjectStore on a local directory (``$LIBRA_DATA_DIR/objects``): the embedded default.

Writes go to a temporary file first and are renamed into place, so a reader never sees half an
object and two writers of the same content-addressed key cannot corrupt it. Keys are paths under the
root; listing skips those temporary files.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from libra_deploy.config import Settings
from libra_deploy.errors import ProviderError
from libra_deploy.ports import ObjectNotFound

_TEMPORARY = ".tmp-"


class LocalObjectStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalObjectStore:
        return cls(settings.data_dir / "objects")

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\0" in key:
            raise ValueError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TEMPORARY)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise ProviderError(f"object store: cannot write {key}: {exc.strerror}", retryable=True) from exc

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise ProviderError(f"object store: cannot read {key}: {exc.strerror}", retryable=True) from exc

    def missing(self, keys: Iterable[str]) -> set[str]:
        return {key for key in keys if not self._path(key).is_file()}

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list_keys(self, prefix: str) -> Iterator[str]:
        # Walk only the directory the prefix names, then filter by the rest of the prefix.
        directory = prefix.rpartition("/")[0]
        start = self._path(directory) if directory else self.root
        for dirpath, _dirnames, filenames in os.walk(start):
            parts = Path(dirpath).relative_to(self.root).parts
            for name in filenames:
                if name.startswith(_TEMPORARY):
                    continue
                key = "/".join((*parts, name))
                if key.startswith(prefix):
                    yield key
