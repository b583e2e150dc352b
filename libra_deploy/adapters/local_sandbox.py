"""SandboxProvider on this machine: a fresh directory per deployment and a subprocess per command.

Every command runs

* with a minimal environment: no variable of the service reaches it (only PATH, the locale and the
  time zone, and the sandbox's own HOME and TMPDIR);
* in its own process group, killed group and all at its deadline or when the sandbox is destroyed
  (which is how a cancel reaches a build running in another thread);
* under resource limits set with ``prlimit`` (util-linux): CPU seconds, memory (the data limit,
  which counts the heap and private writable mappings but not the huge address-space reservations
  V8 makes for WebAssembly, so a Vite build still runs), file size,
  number of processes, no core dumps. ``prlimit`` rather than ``preexec_fn``: the worker runs
  threads, and code between fork and exec is unsafe there;
* inside bubblewrap (``bwrap``) when it works on this machine: the sandbox directory, mounted at
  ``/sandbox``, is the only writable place; the system is mounted read-only and only the parts a
  toolchain needs (``/usr``, a few files of ``/etc``); the service's data, its code and the other
  deployments are not mounted at all; new PID, IPC, UTS and network namespaces, the network being
  shared only for commands that install dependencies. When the service runs as root, the command
  runs as an unprivileged user (SANDBOX_UID) inside the sandbox, so the process limit holds too.

Without bubblewrap (not installed, user namespaces disabled, or SANDBOX_ISOLATION=none) builds still
get the limits and the minimal environment, and the provider says so in the log at start-up and in
:attr:`LocalSandboxProvider.isolation` (shown by /health).

The host never follows a symlink inside a sandbox: the build may turn any of its paths into one
(``ln -s ../../.. dist``), which bubblewrap resolves inside the sandbox but the host would resolve to
the host's own files. Files are read and written one directory at a time without following links,
and a link where a directory must be (the output directory or one above it, a directory a file is
written into, the sandbox's tmp) fails with SANDBOX_SYMLINK. Hard links need no such care: bubblewrap
refuses one across its mounts (EXDEV), so a build can only link files of its own sandbox.

The process groups of running commands are also recorded beside the sandbox: when a worker dies in
the middle of a build, its build lives on as an orphan, and the worker that takes the step over (or
the cleanup) finds it there and kills it before doing anything else in that sandbox.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from libra_deploy.config import Settings
from libra_deploy.errors import ConfigError, DeploymentTimeout, ProviderError
from libra_deploy.ports import LineSink, SandboxSpec
from libra_deploy.redact import contains_secret

logger = logging.getLogger(__name__)

#: What a build may see of the service's environment: enough to find its toolchain, nothing else.
_INHERITED = ("PATH", "LANG", "LC_ALL", "TZ")
#: Where the sandbox directory appears inside bubblewrap.
SANDBOX_ROOT = "/sandbox"
#: The sandbox's own tmp directory is mounted over /tmp: tools that ignore TMPDIR stay inside too.
SANDBOX_TMP = "/tmp"  # noqa: S108 - a path inside the sandbox's mount namespace, not the host's
#: System directories a toolchain needs, mounted read-only (or recreated as the symlinks they are).
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: The files of /etc a build needs: name resolution, certificates, users, time zone, the loader.
_ETC_ENTRIES = (
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "gai.conf",
    "group",
    "host.conf",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "passwd",
    "resolv.conf",
    "ssl",
    "timezone",
)
PROBE_TIMEOUT_S = 20
#: How the host opens a directory of a sandbox: never through a symlink the build put in its place.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class ResourceLimits:
    cpu_seconds: int
    memory_bytes: int
    file_bytes: int
    max_processes: int

    def prlimit_args(self) -> list[str]:
        return [
            f"--cpu={self.cpu_seconds}",
            f"--data={self.memory_bytes}",
            f"--fsize={self.file_bytes}",
            f"--nproc={self.max_processes}",
            "--core=0",
        ]


class LocalSandboxProvider:
    name = "local"

    def __init__(
        self,
        root: Path,
        *,
        limits: ResourceLimits,
        isolation: str = "auto",
        sandbox_uid: int = 65534,
    ) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.limits = limits
        self._lock = threading.Lock()
        self._running: dict[str, set[subprocess.Popen[bytes]]] = {}
        prlimit = shutil.which("prlimit")
        if prlimit is None:
            raise ConfigError("SANDBOX_BUILDER_DEFAULT_PROVIDER", "local needs prlimit (util-linux)", "local")
        self._prlimit = prlimit
        self._bwrap = shutil.which("bwrap")
        # Root builds drop to an unprivileged user inside bubblewrap: the kernel does not count
        # root's processes against a process limit, and a build has no business being root.
        self._uid = sandbox_uid if os.geteuid() == 0 else None
        self._setpriv = shutil.which("setpriv") if self._uid is not None else None
        #: "bubblewrap" or "none": how builds are isolated here, as /health reports it. "none" while
        #: the trial sandbox of the probe runs (it needs no ownership change).
        self.isolation = "none"
        self.isolation = self._choose_isolation(isolation)

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalSandboxProvider:
        return cls(
            settings.data_dir / "sandboxes",
            limits=ResourceLimits(
                cpu_seconds=settings.sandbox_cpu_seconds,
                memory_bytes=settings.sandbox_memory_bytes,
                file_bytes=settings.sandbox_file_bytes,
                max_processes=settings.sandbox_max_processes,
            ),
            isolation=settings.sandbox_isolation,
            sandbox_uid=settings.sandbox_uid,
        )

    # Isolation ----------------------------------------------------------------------------------

    def _choose_isolation(self, wanted: str) -> str:
        if wanted == "none":
            logger.warning(
                "SANDBOX_ISOLATION=none: builds run without bubblewrap (no filesystem or network "
                "isolation), with resource limits and a minimal environment only"
            )
            return "none"
        problem = self._probe_bubblewrap()
        if problem is None:
            return "bubblewrap"
        if wanted == "bubblewrap":
            raise ConfigError("SANDBOX_ISOLATION", f"is bubblewrap, but {problem}", wanted)
        logger.warning(
            "bubblewrap is not available (%s): builds run without filesystem or network isolation, "
            "with resource limits and a minimal environment only; install the bubblewrap package",
            problem,
        )
        return "none"

    def _probe_bubblewrap(self) -> str | None:
        """Why bubblewrap cannot isolate builds here, or None when a trial sandbox works."""
        if self._bwrap is None:
            return "bwrap is not installed"
        if self._uid is not None and self._setpriv is None:
            return "setpriv (util-linux) is missing"
        base = Path(tempfile.mkdtemp(prefix=".probe-", dir=self.root))
        try:
            self._make_dirs(base)
            argv = self._bubblewrap_argv(base, "", network=False, command=["true"])
            result = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bwrap could not start ({exc})"
        finally:
            shutil.rmtree(base, ignore_errors=True)
        if result.returncode != 0:
            return "bwrap failed: " + result.stderr.decode("utf-8", "replace").strip()[:300]
        return None

    def _bubblewrap_argv(self, base: Path, cwd: str, *, network: bool, command: Sequence[str]) -> list[str]:
        assert self._bwrap is not None
        argv = [self._bwrap, "--die-with-parent"]
        if self._uid is None:
            # Unprivileged: bubblewrap needs a user namespace for everything else.
            argv.append("--unshare-all")
        else:
            # As root the mounts need no user namespace; one would map the sandbox user to root.
            argv += [
                "--unshare-ipc",
                "--unshare-pid",
                "--unshare-uts",
                "--unshare-cgroup-try",
                "--unshare-net",
            ]
        if network:
            argv.append("--share-net")
        argv += ["--hostname", "sandbox"]
        for directory in _SYSTEM_DIRS:
            path = Path(directory)
            if path.is_symlink():
                argv += ["--symlink", os.readlink(path), directory]
            elif path.is_dir():
                argv += ["--ro-bind", directory, directory]
        # Directories bubblewrap makes on its own are private to root: /etc must be readable.
        argv += ["--perms", "0755", "--dir", "/etc"]
        for entry in _ETC_ENTRIES:
            argv += ["--ro-bind-try", f"/etc/{entry}", f"/etc/{entry}"]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        argv += ["--bind", str(base), SANDBOX_ROOT, "--bind", str(base / "tmp"), SANDBOX_TMP]
        argv += ["--chdir", f"{SANDBOX_ROOT}/project/{cwd}".rstrip("/"), "--"]
        if self._uid is not None:
            assert self._setpriv is not None
            argv += [
                self._setpriv,
                f"--reuid={self._uid}",
                f"--regid={self._uid}",
                "--clear-groups",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
            ]
        return [*argv, self._prlimit, *self.limits.prlimit_args(), "--", *command]

    # The sandbox ----------------------------------------------------------------------------------

    def _dir(self, sandbox_id: str) -> Path:
        if not sandbox_id.startswith("lsb_") or "/" in sandbox_id or ".." in sandbox_id:
            raise ProviderError(f"not a local sandbox id: {sandbox_id!r}")
        return self.root / sandbox_id

    def project_dir(self, sandbox_id: str) -> Path:
        return self._dir(sandbox_id) / "project"

    def _groups(self, sandbox_id: str) -> Path:
        """Where the process groups running in a sandbox are recorded: beside it, out of the build's reach."""
        return self.root / ".groups" / sandbox_id

    def _make_dirs(self, base: Path) -> None:
        for sub in ("project", "home", "tmp"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        self._give_to_sandbox_user(base)

    def _give_to_sandbox_user(self, top: Path) -> None:
        """Make everything under ``top`` belong to the sandbox user, who must write there."""
        if self._uid is None or self.isolation != "bubblewrap":
            return
        os.lchown(top, self._uid, self._uid)
        # fwalk neither starts in nor descends into a symlinked directory (os.walk starts in one):
        # the owner of the host's files must not change.
        for _path, dirnames, filenames, dir_fd in os.fwalk(top):
            for name in (*dirnames, *filenames):
                os.chown(name, self._uid, self._uid, dir_fd=dir_fd, follow_symlinks=False)

    def create(self, spec: SandboxSpec) -> str:
        # One sandbox per deployment, named after it: a redelivered sandbox step finds its own.
        sandbox_id = f"lsb_{spec.deployment_id}"
        base = self._dir(sandbox_id)
        if base.exists():
            _kill_orphans(self._groups(sandbox_id), base)
            shutil.rmtree(base)
        self._make_dirs(base)
        return sandbox_id

    def exists(self, sandbox_id: str) -> bool:
        return self.project_dir(sandbox_id).is_dir()

    def write_files(self, sandbox_id: str, files: Iterable[tuple[str, bytes]]) -> None:
        base = self._dir(sandbox_id)
        try:
            os.close(_open_dir(base, "project", action="write into the sandbox"))
        except (FileNotFoundError, NotADirectoryError):
            raise ProviderError(f"sandbox {sandbox_id} does not exist", retryable=True) from None
        for rel, data in files:
            parent, name = posixpath.split(rel)
            if name in ("", ".", ".."):
                raise ProviderError(f"not a file path: {rel!r}")
            dir_fd = _open_dir(base, f"project/{parent}", action=f"write {rel}", create=True)
            try:
                # What a previous build left at this path (a symlink, a hard link) is replaced, not
                # written through.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dir_fd)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                with open(os.open(name, flags, 0o666, dir_fd=dir_fd), "wb") as file:
                    file.write(data)
            finally:
                os.close(dir_fd)
        self._give_to_sandbox_user(base / "project")

    def _environment(self, base: Path, env: Mapping[str, str]) -> dict[str, str]:
        child = {k: os.environ[k] for k in _INHERITED if k in os.environ}
        if self.isolation == "bubblewrap":
            # Only the system's own directories exist inside the sandbox.
            path = [p for p in child.get("PATH", "").split(":") if p.startswith(("/usr/", "/bin", "/sbin"))]
            child["PATH"] = ":".join(path) or "/usr/local/bin:/usr/bin:/bin"
            child.update({"HOME": f"{SANDBOX_ROOT}/home", "TMPDIR": SANDBOX_TMP})
        else:
            child.update({"HOME": str(base / "home"), "TMPDIR": str(base / "tmp")})
        child["CI"] = "1"
        child.update(env)
        # Whatever the caller passed, a value holding one of the service's secrets stays outside.
        return {k: v for k, v in child.items() if not contains_secret(v)}

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
        base = self._dir(sandbox_id)
        workdir = base / "project" / cwd
        if not workdir.is_dir():
            raise ProviderError(f"sandbox {sandbox_id} has no directory {cwd or '.'!r}", retryable=True)
        # Whatever a dead worker left running here would race this command: stop it first.
        _kill_orphans(self._groups(sandbox_id), base)
        if self.isolation == "bubblewrap":
            # bubblewrap binds the sandbox's tmp by its host path, following a symlink: a tmp the
            # last command replaced with one would bind a directory of the host into this one.
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                os.close(_open_dir(base, "tmp", action="run another command in the sandbox"))
            argv = self._bubblewrap_argv(base, cwd, network=network, command=command)
        else:
            argv = [self._prlimit, *self.limits.prlimit_args(), "--", *command]
        try:
            proc = subprocess.Popen(
                argv,
                cwd=workdir,
                env=self._environment(base, env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise ProviderError(f"command not found in the sandbox: {argv[0]}") from None
        with self._lock:
            self._running.setdefault(sandbox_id, set()).add(proc)
        group_file = self._groups(sandbox_id) / str(proc.pid)
        group_file.parent.mkdir(parents=True, exist_ok=True)
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
        shown = f"{directory.strip('/') or '.'}/"
        try:
            top = _open_dir(self._dir(sandbox_id), f"project/{directory}", action=f"read {shown}")
        except (FileNotFoundError, NotADirectoryError):
            return
        try:
            # fwalk never descends into a symlinked directory, and each file is opened relative to
            # its directory without following a symlink: nothing outside ``directory`` is read.
            for dirpath, dirnames, filenames, dir_fd in os.fwalk(".", dir_fd=top):
                dirnames.sort()
                for name in sorted(filenames):
                    data = _read_regular_file(name, dir_fd)
                    if data is not None:
                        yield posixpath.normpath(posixpath.join(dirpath, name)), data
        finally:
            os.close(top)

    def destroy(self, sandbox_id: str) -> None:
        with self._lock:
            procs = self._running.pop(sandbox_id, set())
        for proc in procs:
            _kill_group(proc)
        base = self._dir(sandbox_id)
        _kill_orphans(self._groups(sandbox_id), base)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(self._groups(sandbox_id), ignore_errors=True)


def _open_dir(base: Path, relative: str, *, action: str, create: bool = False) -> int:
    """A descriptor of the directory ``relative`` of the sandbox directory ``base``.

    Opened one component at a time, never through a symlink (FileNotFoundError or
    NotADirectoryError when there is no such directory); missing components are made when
    ``create`` is true. A symlink fails ``action`` with a non-retryable SANDBOX_SYMLINK naming it as
    the build sees it: the same sandbox would refuse it again.
    """
    fd = os.open(base, _DIR_FLAGS)
    shown = SANDBOX_ROOT
    try:
        for part in relative.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                raise ProviderError(f"cannot {action}: {relative!r} is not a path inside the sandbox")
            shown = f"{shown}/{part}"
            try:
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, dir_fd=fd)
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                # O_NOFOLLOW makes a symlink fail as "not a directory" (or ELOOP): tell them apart.
                if exc.errno in (errno.ENOTDIR, errno.ELOOP) and stat.S_ISLNK(
                    os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
                ):
                    target = os.readlink(part, dir_fd=fd)
                    raise ProviderError(
                        f"cannot {action}: {shown} is a symbolic link (to {target[:200]!r}), which the "
                        "service never follows out of the sandbox; the build must leave a directory there",
                        code="SANDBOX_SYMLINK",
                        retryable=False,
                    ) from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_regular_file(name: str, dir_fd: int) -> bytes | None:
    """The bytes of the regular file ``name`` in ``dir_fd``; None for a symlink, a FIFO, a socket..."""
    if not stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
        return None
    # O_NOFOLLOW: the file was checked just above, but the host never opens through a symlink.
    with open(os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd), "rb") as file:
        return file.read()


def _pump_lines(proc: subprocess.Popen[bytes], on_output: LineSink) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        on_output(raw.decode("utf-8", "replace").rstrip("\r\n"))
    proc.stdout.close()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _kill_orphans(groups_dir: Path, base: Path) -> None:
    """Kill the recorded process groups whose processes still work inside the sandbox ``base``.

    A recorded group id may have been reused by an unrelated process since; only processes of that
    group whose working directory lies in this sandbox are killed.
    """
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
