"""SandboxProvider on this machine: a fresh directory per deployment and a subprocess per command.

Each command runs in its own process group with a scrubbed environment (no variable of the service
reaches it) and is killed, group and all, at its deadline or when the sandbox is destroyed, which
is how a cancel reaches a build that is running in another thread.

The process groups are also written into the sandbox directory: when a worker dies in the middle of
a build, its build lives on as an orphan, and the worker that takes the step over (or the cleanup)
finds it there and kills it before doing anything else in that sandbox.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from libra_deploy.config import Settings
from libra_deploy.errors import DeploymentTimeout, ProviderError
from libra_deploy.ports import LineSink, SandboxSpec

#: What a build may see of the service's environment: enough to find its toolchain, nothing else.
_INHERITED = ("PATH", "LANG", "LC_ALL", "TZ")


class LocalSandboxProvider:
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._running: dict[str, set[subprocess.Popen[bytes]]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalSandboxProvider:
        return cls(settings.data_dir / "sandboxes")

    def _dir(self, sandbox_id: str) -> Path:
        if not sandbox_id.startswith("lsb_") or "/" in sandbox_id or ".." in sandbox_id:
            raise ProviderError(f"not a local sandbox id: {sandbox_id!r}")
        return self.root / sandbox_id

    def project_dir(self, sandbox_id: str) -> Path:
        return self._dir(sandbox_id) / "project"

    def create(self, spec: SandboxSpec) -> str:
        # One sandbox per deployment, named after it: a redelivered sandbox step finds its own.
        sandbox_id = f"lsb_{spec.deployment_id}"
        base = self._dir(sandbox_id)
        if base.exists():
            _kill_orphans(base)
            shutil.rmtree(base)
        for sub in ("project", "home", "tmp", "groups"):
            (base / sub).mkdir(parents=True)
        return sandbox_id

    def exists(self, sandbox_id: str) -> bool:
        return self.project_dir(sandbox_id).is_dir()

    def write_files(self, sandbox_id: str, files: Iterable[tuple[str, bytes]]) -> None:
        root = self.project_dir(sandbox_id)
        if not root.is_dir():
            raise ProviderError(f"sandbox {sandbox_id} does not exist", retryable=True)
        for rel, data in files:
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    def run(
        self,
        sandbox_id: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        timeout_s: float,
        on_output: LineSink,
        cwd: str = "",
    ) -> int:
        base = self._dir(sandbox_id)
        workdir = base / "project" / cwd
        if not workdir.is_dir():
            raise ProviderError(f"sandbox {sandbox_id} has no directory {cwd or '.'!r}", retryable=True)
        child_env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
        child_env.update({"HOME": str(base / "home"), "TMPDIR": str(base / "tmp"), "CI": "1"})
        child_env.update(env)
        # Whatever a dead worker left running here would race this command: stop it first.
        _kill_orphans(base)
        try:
            proc = subprocess.Popen(
                list(command),
                cwd=workdir,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise ProviderError(f"command not found in the sandbox: {command[0]}") from None
        with self._lock:
            self._running.setdefault(sandbox_id, set()).add(proc)
        group_file = base / "groups" / str(proc.pid)
        group_file.touch()
        reader = threading.Thread(target=_pump_lines, args=(proc, on_output), daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout=max(timeout_s, 0.001))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
            reader.join(5)
            raise DeploymentTimeout(
                f"{' '.join(command)} did not finish within {timeout_s:.0f} s and was stopped"
            ) from None
        finally:
            with self._lock:
                self._running.get(sandbox_id, set()).discard(proc)
        # Background processes the command left behind must not outlive it (nor hold the pipe).
        _kill_group(proc)
        group_file.unlink(missing_ok=True)
        reader.join(5)
        return code

    def read_files(self, sandbox_id: str, directory: str) -> Iterator[tuple[str, bytes]]:
        root = self.project_dir(sandbox_id) / directory
        if not root.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                # A build could plant a symlink to a file outside its sandbox: never follow one.
                if path.is_symlink() or not path.is_file():
                    continue
                yield path.relative_to(root).as_posix(), path.read_bytes()

    def destroy(self, sandbox_id: str) -> None:
        with self._lock:
            procs = self._running.pop(sandbox_id, set())
        for proc in procs:
            _kill_group(proc)
        base = self._dir(sandbox_id)
        if base.exists():
            _kill_orphans(base)
        shutil.rmtree(base, ignore_errors=True)


def _pump_lines(proc: subprocess.Popen[bytes], on_output: LineSink) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        on_output(raw.decode("utf-8", "replace").rstrip("\r\n"))
    proc.stdout.close()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _kill_orphans(base: Path) -> None:
    """Kill the process groups recorded in the sandbox whose processes still work inside it.

    A recorded group id may have been reused by an unrelated process since; only processes of that
    group whose working directory lies in this sandbox are killed.
    """
    groups_dir = base / "groups"
    recorded = (
        {int(p.name) for p in groups_dir.iterdir() if p.name.isdigit()} if groups_dir.is_dir() else set()
    )
    if not recorded:
        return
    root = str(base.resolve())
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            fields = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()
            group = int(fields[2])
            if group in recorded and os.readlink(proc_dir / "cwd").startswith(root):
                os.killpg(group, signal.SIGKILL)
                recorded.discard(group)
        except (OSError, ValueError, IndexError):
            continue
    for group_file in groups_dir.iterdir():
        group_file.unlink(missing_ok=True)
