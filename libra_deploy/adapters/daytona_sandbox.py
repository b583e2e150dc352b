"""SandboxProvider on Daytona (the ``daytona`` package): a container per deployment.

The sandbox is created from DAYTONA_SNAPSHOT (or DAYTONA_IMAGE with the resources below, or
Daytona's default snapshot, which has Node), ephemeral and stopped automatically as a backstop
against leaks, with an empty environment. The project lives in ``<work dir>/project``. Commands run
as async session commands whose logs are followed as they are written; Daytona puts no deadline on
those, so ours is enforced around the log stream and the session is deleted (killing the command)
when it passes. Output is tarred in the sandbox and downloaded in one request.

SDK failures become :class:`ProviderError` with ``retryable`` decided by
:func:`libra_deploy.errors.provider_error`; no SDK exception leaves this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from daytona import (
    CreateSandboxFromImageParams,
    CreateSandboxFromSnapshotParams,
    Daytona,
    DaytonaConfig,
    DaytonaError,
    DaytonaNotFoundError,
    FileUpload,
    Resources,
    SessionExecuteRequest,
)

from libra_deploy.config import Settings
from libra_deploy.errors import DeploymentTimeout, ProviderError, provider_error
from libra_deploy.ports import LineSink, SandboxSpec
from libra_deploy.sandbox_io import NO_DIRECTORY, LineSplitter, archive_command, batches, untar

PROVIDER = "Daytona"
#: Resources of a sandbox built from DAYTONA_IMAGE (a snapshot carries its own).
RESOURCES_CPU, RESOURCES_MEMORY_GIB, RESOURCES_DISK_GIB = 2, 4, 8
CREATE_TIMEOUT_S = 120.0
ARCHIVE_TIMEOUT_S = 300
#: How long to wait for Daytona to record a finished command's exit code after its logs end.
EXIT_CODE_WAIT_S = 30.0

T = TypeVar("T")


def daytona_error(action: str, exc: DaytonaError, *, creating: bool = False) -> ProviderError:
    """Daytona's errors on our retry policy, by the HTTP status they carry.

    A plain DaytonaError without a status is how the SDK reports a refused or lost connection.
    """
    status = exc.status_code if isinstance(exc.status_code, int) else None
    return provider_error(PROVIDER, action, str(exc.message or exc), status=status, creating=creating)


class DaytonaSandboxProvider:
    name = "daytona"

    def __init__(
        self,
        client: Any,
        *,
        snapshot: str = "",
        image: str = "",
        target: str = "",
    ) -> None:
        # The SDK's Daytona client; the tests give a stub that follows its signatures.
        self._client = client
        self.snapshot = snapshot
        self.image = image
        self.target = target
        self._sandboxes: dict[str, Any] = {}
        self._roots: dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> DaytonaSandboxProvider:
        settings.require_adapter("SANDBOX_BUILDER_DEFAULT_PROVIDER", "daytona")
        config = DaytonaConfig(
            api_key=settings.daytona_api_key,
            api_url=settings.daytona_api_url or None,
            target=settings.daytona_target or None,
        )
        return cls(
            Daytona(config),
            snapshot=settings.daytona_snapshot,
            image=settings.daytona_image,
            target=settings.daytona_target,
        )

    def _call(self, action: str, operation: Callable[[], T], *, creating: bool = False) -> T:
        try:
            return operation()
        except DaytonaError as exc:
            raise daytona_error(action, exc, creating=creating) from None

    def _sandbox(self, sandbox_id: str) -> Any:
        with self._lock:
            found = self._sandboxes.get(sandbox_id)
        if found is None:
            found = self._call(f"find sandbox {sandbox_id}", lambda: self._client.get(sandbox_id))
            with self._lock:
                self._sandboxes[sandbox_id] = found
        return found

    def _root(self, sandbox_id: str) -> str:
        with self._lock:
            root = self._roots.get(sandbox_id)
        if root is None:
            sandbox = self._sandbox(sandbox_id)
            work_dir = self._call("read the work directory", sandbox.get_work_dir)
            root = f"{str(work_dir).rstrip('/')}/project"
            with self._lock:
                self._roots[sandbox_id] = root
        return root

    def create(self, spec: SandboxSpec) -> str:
        common: dict[str, Any] = {
            "language": "javascript",
            "env_vars": {},
            "labels": {"libra-deployment": spec.deployment_id},
            # Stopped after this many idle minutes and deleted when stopped, should cleanup never come.
            "auto_stop_interval": max(int(spec.lifetime_s // 60), 15),
            "ephemeral": True,
        }
        params: CreateSandboxFromSnapshotParams | CreateSandboxFromImageParams
        if self.image:
            params = CreateSandboxFromImageParams(
                image=self.image,
                resources=Resources(cpu=RESOURCES_CPU, memory=RESOURCES_MEMORY_GIB, disk=RESOURCES_DISK_GIB),
                **common,
            )
        else:
            params = CreateSandboxFromSnapshotParams(snapshot=self.snapshot or None, **common)
        sandbox = self._call(
            "create a sandbox", lambda: self._client.create(params, timeout=CREATE_TIMEOUT_S), creating=True
        )
        sandbox_id = str(sandbox.id)
        with self._lock:
            self._sandboxes[sandbox_id] = sandbox
        root = self._root(sandbox_id)
        self._call("create the project directory", lambda: sandbox.fs.create_folder(root, "755"))
        return sandbox_id

    def exists(self, sandbox_id: str) -> bool:
        with self._lock:
            self._sandboxes.pop(sandbox_id, None)
        try:
            sandbox = self._client.get(sandbox_id)
        except DaytonaNotFoundError:
            return False
        except DaytonaError as exc:
            raise daytona_error(f"find sandbox {sandbox_id}", exc) from None
        with self._lock:
            self._sandboxes[sandbox_id] = sandbox
        return str(getattr(sandbox.state, "value", sandbox.state)).lower() == "started"

    def write_files(self, sandbox_id: str, files: Iterable[tuple[str, bytes]]) -> None:
        sandbox = self._sandbox(sandbox_id)
        root = self._root(sandbox_id)
        for batch in batches(files):
            self._upload(
                sandbox, [FileUpload(source=data, destination=f"{root}/{rel}") for rel, data in batch]
            )

    def _upload(self, sandbox: Any, batch: list[FileUpload]) -> None:
        self._call(f"upload {len(batch)} files", lambda: sandbox.fs.upload_files(batch))

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
        # A Daytona sandbox has one network policy for its whole life, set when it is created: ``network``
        # (which only the local sandbox can switch per command) does not apply here.
        sandbox = self._sandbox(sandbox_id)
        workdir = f"{self._root(sandbox_id)}/{cwd}".rstrip("/")
        shown = shlex.join(command)
        assignments = "".join(f"{k}={shlex.quote(v)} " for k, v in env.items())
        # A subshell, so the session's own shell keeps its directory and environment.
        script = f"(cd {shlex.quote(workdir)} && env {assignments}{shown})"
        session = f"libra-{uuid.uuid4().hex[:12]}"
        process = sandbox.process
        self._call("open a session", lambda: process.create_session(session))
        try:
            started = self._call(
                f"start {shown}",
                lambda: process.execute_session_command(
                    session, SessionExecuteRequest(command=script, run_async=True)
                ),
            )
            lines = LineSplitter(on_output)
            follow = process.get_session_command_logs_async(session, started.cmd_id, lines.feed, lines.feed)
            try:
                asyncio.run(asyncio.wait_for(follow, timeout=max(timeout_s, 0.001)))
            except TimeoutError:
                raise DeploymentTimeout(
                    f"{shown} did not finish within {timeout_s:.0f} s and was stopped"
                ) from None
            except DaytonaError as exc:
                raise daytona_error(f"follow {shown}", exc) from None
            finally:
                lines.close()
            return self._exit_code(process, session, str(started.cmd_id), shown)
        finally:
            # Deleting the session kills whatever still runs in it (the command, after a timeout).
            with contextlib.suppress(DaytonaError):
                process.delete_session(session)

    def _exit_code(self, process: Any, session: str, command_id: str, shown: str) -> int:
        deadline = time.monotonic() + EXIT_CODE_WAIT_S
        while True:
            done = self._call(
                f"read the exit code of {shown}", lambda: process.get_session_command(session, command_id)
            )
            if done.exit_code is not None:
                return int(done.exit_code)
            if time.monotonic() > deadline:
                raise ProviderError(f"{PROVIDER}: {shown} ended without an exit code", retryable=True)
            time.sleep(0.2)

    def read_files(self, sandbox_id: str, directory: str) -> Iterator[tuple[str, bytes]]:
        sandbox = self._sandbox(sandbox_id)
        source = f"{self._root(sandbox_id)}/{directory}".rstrip("/")
        archive = f"/tmp/libra-{uuid.uuid4().hex}.tgz"  # noqa: S108 - inside the sandbox, a fresh name
        script = f"sh -c {shlex.quote(archive_command(source, archive))}"
        result = self._call(
            "archive the output", lambda: sandbox.process.exec(script, timeout=ARCHIVE_TIMEOUT_S)
        )
        if result.exit_code == NO_DIRECTORY:
            return
        if result.exit_code != 0:
            raise ProviderError(f"{PROVIDER}: archiving {directory} failed: {result.result}".strip())
        data = self._call("download the output", lambda: sandbox.fs.download_file(archive))
        if data is None:
            raise ProviderError(
                f"{PROVIDER}: the output archive of {directory} came back empty", retryable=True
            )
        yield from untar(bytes(data))

    def destroy(self, sandbox_id: str) -> None:
        with self._lock:
            sandbox = self._sandboxes.pop(sandbox_id, None)
            self._roots.pop(sandbox_id, None)
        try:
            if sandbox is None:
                sandbox = self._client.get(sandbox_id)
            sandbox.delete()
        except DaytonaNotFoundError:
            return
        except DaytonaError as exc:
            raise daytona_error(f"delete sandbox {sandbox_id}", exc) from None
