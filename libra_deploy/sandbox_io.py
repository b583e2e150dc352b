"""What remote sandbox adapters share: sending files in batches, cutting streamed output into lines,
packing a directory inside the sandbox and unpacking that archive here."""

from __future__ import annotations

import io
import shlex
import tarfile
import threading
from collections.abc import Iterable, Iterator

from libra_deploy.ports import LineSink

#: Files per upload request, and the bytes at which a batch is sent early.
BATCH_FILES = 200
BATCH_BYTES = 32 * 1024 * 1024
#: The exit status of :func:`archive_command` when the directory does not exist.
NO_DIRECTORY = 3


def batches(files: Iterable[tuple[str, bytes]]) -> Iterator[list[tuple[str, bytes]]]:
    """The files in upload requests of at most BATCH_FILES files, cut early at BATCH_BYTES."""
    batch: list[tuple[str, bytes]] = []
    size = 0
    for rel, data in files:
        batch.append((rel, data))
        size += len(data)
        if len(batch) >= BATCH_FILES or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def archive_command(source: str, archive: str) -> str:
    """A shell command, run in the sandbox, that packs ``source`` into the tar.gz ``archive`` (for
    :func:`untar`) and exits NO_DIRECTORY when there is no such directory."""
    quoted = shlex.quote(source)
    return f"test -d {quoted} || exit {NO_DIRECTORY}; tar -czf {archive} -C {quoted} ."


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
