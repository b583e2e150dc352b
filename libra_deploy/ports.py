"""The ports: one Protocol per kind of external system, and the small values they exchange.

The core talks only to these Protocols. Each adapter lives in its own module under
``libra_deploy/adapters/``, raises only :mod:`libra_deploy.errors` (``ProviderError`` with
``retryable`` set) and is chosen by name in the settings through :mod:`libra_deploy.registry`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol, TypedDict, runtime_checkable


class FileEntry(TypedDict):
    sha256: str
    size: int


#: A file tree: {relative posix path: {"sha256": hex digest, "size": bytes}}.
Manifest = dict[str, FileEntry]

#: Receives one line of output at a time (no trailing newline).
LineSink = Callable[[str], None]


class ObjectNotFound(LookupError):
    """The object store has no object under that key."""


@runtime_checkable
class ObjectStore(Protocol):
    """Blobs, build caches, artifacts and full logs, by key."""

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None: ...

    def get(self, key: str) -> bytes:
        """Return the object's bytes, or raise :class:`ObjectNotFound`."""
        ...

    def missing(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` the store does not hold (one round trip per key at most)."""
        ...

    def delete(self, key: str) -> None:
        """Remove an object; removing one that does not exist is not an error."""
        ...

    def list_keys(self, prefix: str) -> Iterator[str]:
        """Every key that starts with ``prefix`` (a plain string prefix, as S3 has it), in no set order."""
        ...


@dataclass(frozen=True)
class SandboxSpec:
    deployment_id: str
    project_id: str
    #: How long the sandbox may live before the provider reaps it on its own.
    lifetime_s: float


@runtime_checkable
class SandboxProvider(Protocol):
    """An isolated place to build: create it, put files in, run commands, read files out, destroy it."""

    name: str

    def create(self, spec: SandboxSpec) -> str:
        """Create a sandbox and return its id."""
        ...

    def exists(self, sandbox_id: str) -> bool: ...

    def write_files(self, sandbox_id: str, files: Iterable[tuple[str, bytes]]) -> None:
        """Write files (relative paths) into the sandbox's project directory."""
        ...

    def run(
        self,
        sandbox_id: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        timeout_s: float,
        on_output: LineSink,
        cwd: str = "",
        network: bool = False,
    ) -> int:
        """Run ``command`` in the project directory (or ``cwd`` inside it) and return its exit code.

        Output lines go to ``on_output`` as they arrive. Past ``timeout_s`` the command is killed
        and :class:`~libra_deploy.errors.DeploymentTimeout` is raised. ``network`` says whether the
        command may reach the network (installing dependencies); a provider that cannot cut the
        network per command ignores it.
        """
        ...

    def read_files(self, sandbox_id: str, directory: str) -> Iterator[tuple[str, bytes]]:
        """Yield (path relative to ``directory``, bytes) for every regular file under it.

        Symbolic links the build made never lead to the service's own files: links inside
        ``directory`` are left out, and a provider whose sandbox is on the service's disk (the
        local one) refuses a ``directory`` that is one, or lies under one, with a non-retryable
        ProviderError (SANDBOX_SYMLINK). A remote sandbox resolves them on its own machine.
        """
        ...

    def destroy(self, sandbox_id: str) -> None:
        """Kill whatever runs in the sandbox and remove it. Idempotent."""
        ...


@dataclass(frozen=True)
class SiteFile:
    """One file of a published deployment, ready to serve."""

    path: str
    sha256: str
    size: int
    open: Callable[[], BinaryIO]


@dataclass(frozen=True)
class PublishResult:
    uploaded_files: int
    uploaded_bytes: int
    #: The deployment's own immutable URL at the target (a Pages deployment URL, SITES_PUBLIC_URL
    #: plus its prefix), when the target gives it one.
    url: str | None = None
    #: What the target could not do as asked (site rules it cannot carry out): the deployment's log
    #: shows each as a warning.
    warnings: tuple[str, ...] = ()


@runtime_checkable
class DeployTarget(Protocol):
    """Where built sites are published and from where they are served."""

    name: str

    def publish(
        self, project_id: str, deployment_id: str, manifest: Manifest, store: ObjectStore
    ) -> PublishResult:
        """Make the deployment's files available under its own immutable prefix.

        Only files the target lacks are uploaded. Publishing the same deployment twice is harmless.
        """
        ...

    def activate(self, project_id: str, deployment_id: str) -> None:
        """Point the project's live site at ``deployment_id`` in one atomic write."""
        ...

    def live_deployment(self, project_id: str) -> str | None: ...

    def open(self, project_id: str, deployment_id: str, path: str) -> SiteFile | None:
        """The file at ``path`` of a published deployment, or None when it has no such file."""
        ...

    def remove(self, project_id: str, deployment_id: str) -> None:
        """Delete a published deployment (its manifest or prefix) so that it is no longer served.

        Files that other deployments of the project still use stay. Removing a deployment that
        was never published, or was removed already, is not an error. The caller (retention)
        never removes the live deployment, and removes one project's deployments one at a time,
        under the project's row lock (SQLite: the write lock of BEGIN IMMEDIATE), so a target may
        rely on no two removals of one project running at once.
        """
        ...


# Capabilities only some adapters have; callers check with isinstance. ----------------------------


@runtime_checkable
class PresignedDownloads(Protocol):
    """An object store that can hand out time-limited download URLs (logs, artifacts)."""

    def presigned_url(self, key: str, *, expires_s: int = 3600) -> str:
        """A URL anyone may GET ``key`` from until it expires (made locally: the key is not checked)."""
        ...


@dataclass(frozen=True)
class DomainStatus:
    """Where attaching a custom domain stands at the target."""

    #: active, pending, or error (the target's own words mapped onto these three)
    status: str
    #: What the user still has to do, or what went wrong (a DNS record to add...).
    detail: str = ""


@runtime_checkable
class CustomDomains(Protocol):
    """A deploy target that serves custom domains itself and must be told about them."""

    def attach_domain(self, project_id: str, domain: str) -> DomainStatus:
        """Attach ``domain`` to the project's site (idempotent) and report its validation status."""
        ...
