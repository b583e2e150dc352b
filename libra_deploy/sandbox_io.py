"""What remote sandbox adapters share: cutting streamed output into lines, unpacking output archives."""

from __future__ import annotations

import io
import tarfile
import threading
from collections.abc import Iterator

from libra_deploy.ports import LineSink


class LineSplitter:
    """Turns chunks of text (as streaming APIs deliver them) into whole lines for a LineSink."""

    def __init__(self, sink: LineSink) -> None:
        self._sink = sink
        self._pending = ""
        self._lock = threading.Lock()

    def feed(self, chunk: str) -> None:
        with self._lock:
            self._pending += chunk
            *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._sink(line.rstrip("\r"))

    def close(self) -> None:
        """Deliver a last line that had no newline."""
        with self._lock:
            rest, self._pending = self._pending, ""
        if rest:
            self._sink(rest.rstrip("\r"))


def untar(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Regular files of a tar.gz made with ``tar -C dir .``, by relative path, in path order.

    Links, devices and names that would leave the directory are skipped: the archive comes from a
    sandbox that ran untrusted code.
    """
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        members = sorted((m for m in archive.getmembers() if m.isfile()), key=lambda m: m.name)
        for member in members:
            parts = [p for p in member.name.split("/") if p not in ("", ".")]
            if not parts or ".." in parts or member.name.startswith("/"):
                continue
            extracted = archive.extractfile(member)
            if extracted is not None:
                yield "/".join(parts), extracted.read()
