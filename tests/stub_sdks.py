"""Stub E2B and Daytona SDK objects that follow the installed SDKs' signatures.

Every stub method binds the arguments it receives to the real SDK method's signature
(``inspect.signature(real).bind``) before doing anything, and reads them by the real parameter names:
a call the real SDK would reject, or a parameter the SDK renamed, fails the test. Behind the
signatures the stubs are small real machines: files go to a directory, commands run in bash as real
processes (so output streams, exit codes are real, and a timeout has a process to kill), and the
tests can make any call raise one of the SDK's own exceptions.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import daytona
import daytona._sync.filesystem as daytona_fs
import daytona._sync.process as daytona_process
import daytona._sync.sandbox as daytona_sandbox
from daytona_toolbox_api_client import Command as ToolboxCommand
from e2b import CommandExitException, Sandbox, TimeoutException
from e2b.sandbox_sync.commands.command import Commands
from e2b.sandbox_sync.commands.command_handle import CommandHandle, CommandResult
from e2b.sandbox_sync.filesystem.filesystem import Filesystem


def bind(real: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The arguments as the real SDK method would receive them, defaults filled in."""
    bound = inspect.signature(real).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


@dataclass
class Machine:
    """A directory standing for a remote home directory, and real bash processes in it."""

    root: Path
    remote_home: str
    failures: dict[str, BaseException] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def local(self, text: str) -> str:
        return text.replace(self.remote_home, str(self.root))

    def enter(self, name: str) -> None:
        """Record a call by name, raising the failure a test planted for it."""
        self.calls.append(name)
        failure = self.failures.pop(name, None)
        if failure is not None:
            raise failure

    def spawn(self, script: str, cwd: str | None, env: dict[str, str] | None) -> subprocess.Popen[bytes]:
        workdir = self.local(cwd) if cwd else str(self.root)
        proc = subprocess.Popen(
            ["bash", "-c", self.local(script)],
            cwd=workdir,
            env={"PATH": os.environ["PATH"], "HOME": str(self.root), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.processes.append(proc)
        return proc

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _pump(proc: subprocess.Popen[bytes], out: Any, err: Any) -> list[threading.Thread]:
    def read(stream: Any, sink: Any) -> None:
        for raw in iter(lambda: stream.read1(64), b""):
            if sink:
                sink(raw.decode())

    threads = [
        threading.Thread(target=read, args=(proc.stdout, out), daemon=True),
        threading.Thread(target=read, args=(proc.stderr, err), daemon=True),
    ]
    for thread in threads:
        thread.start()
    return threads


# E2B --------------------------------------------------------------------------------------------


class StubE2BFiles:
    def __init__(self, machine: Machine) -> None:
        self.m = machine

    def make_dir(self, *args: Any, **kwargs: Any) -> bool:
        a = bind(Filesystem.make_dir, self, *args, **kwargs)
        self.m.enter("files.make_dir")
        Path(self.m.local(a["path"])).mkdir(parents=True, exist_ok=True)
        return True

    def write_files(self, *args: Any, **kwargs: Any) -> list[Any]:
        a = bind(Filesystem.write_files, self, *args, **kwargs)
        self.m.enter("files.write_files")
        for entry in a["files"]:
            target = Path(self.m.local(entry["path"]))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(entry["data"])
        return []

    def read(self, *args: Any, **kwargs: Any) -> Any:
        a = bind(Filesystem.read, self, *args, **kwargs)
        self.m.enter("files.read")
        assert a["format"] == "bytes"
        return bytearray(Path(a["path"]).read_bytes())


class StubE2BHandle:
    def __init__(self, machine: Machine, proc: subprocess.Popen[bytes], timeout: float | None) -> None:
        self.m = machine
        self.proc = proc
        self.timeout = timeout
        self.killed = False

    def wait(self, *args: Any, **kwargs: Any) -> CommandResult[Any]:
        a = bind(CommandHandle.wait, self, *args, **kwargs)
        self.m.enter("handle.wait")
        threads = _pump(self.proc, a["on_stdout"], a["on_stderr"])
        try:
            # As the SDK: the command stream is bounded by `timeout`; the process goes on running.
            code = self.proc.wait(timeout=self.timeout or None)
        except subprocess.TimeoutExpired:
            raise TimeoutException("context deadline exceeded: the command stream timed out") from None
        for thread in threads:
            thread.join(5)
        if code != 0:
            raise CommandExitException(stdout="", stderr="", exit_code=code, error=None)
        return CommandResult(stdout="", stderr="", exit_code=0, error=None)

    def kill(self, *args: Any, **kwargs: Any) -> bool:
        bind(CommandHandle.kill, self, *args, **kwargs)
        self.killed = True
        Machine.kill(self.proc)
        return True


class StubE2BCommands:
    def __init__(self, machine: Machine) -> None:
        self.m = machine
        self.handles: list[StubE2BHandle] = []

    def run(self, *args: Any, **kwargs: Any) -> Any:
        a = bind(Commands.run, self, *args, **kwargs)
        self.m.enter("commands.run")
        proc = self.m.spawn(a["cmd"], a["cwd"], a["envs"])
        handle = StubE2BHandle(self.m, proc, a["timeout"])
        self.handles.append(handle)
        if a["background"]:
            return handle
        return handle.wait(on_stdout=a["on_stdout"], on_stderr=a["on_stderr"])


class StubE2BSandbox:
    """Stands for ``e2b.Sandbox``: the class methods the adapter calls and the instances they return."""

    machines: dict[str, Machine]
    root: Path
    failures: dict[str, BaseException]
    created: list[dict[str, Any]]

    @classmethod
    def reset(cls, root: Path) -> None:
        cls.machines, cls.root, cls.failures, cls.created = {}, root, {}, []

    def __init__(self, sandbox_id: str, machine: Machine) -> None:
        self.sandbox_id = sandbox_id
        self.files = StubE2BFiles(machine)
        self.commands = StubE2BCommands(machine)
        self.machine = machine

    @classmethod
    def _enter(cls, name: str) -> None:
        failure = cls.failures.pop(name, None)
        if failure is not None:
            raise failure

    @classmethod
    def create(cls, *args: Any, **kwargs: Any) -> StubE2BSandbox:
        a = bind(Sandbox.create, *args, **kwargs)
        cls._enter("create")
        cls.created.append(a)
        sandbox_id = f"i{uuid.uuid4().hex[:12]}"
        directory = cls.root / sandbox_id
        directory.mkdir(parents=True)
        cls.machines[sandbox_id] = Machine(directory, "/home/user")
        return cls(sandbox_id, cls.machines[sandbox_id])

    @classmethod
    def connect(cls, *args: Any, **kwargs: Any) -> StubE2BSandbox:
        a = bind(Sandbox._cls_connect_sandbox, *args, **kwargs)
        cls._enter("connect")
        machine = cls.machines.get(a["sandbox_id"])
        if machine is None:
            from e2b import SandboxNotFoundException

            raise SandboxNotFoundException(f"sandbox {a['sandbox_id']} not found")
        return cls(a["sandbox_id"], machine)

    @classmethod
    def kill(cls, *args: Any, **kwargs: Any) -> bool:
        a = bind(Sandbox._cls_kill, *args, **kwargs)
        cls._enter("kill")
        machine = cls.machines.pop(a["sandbox_id"], None)
        if machine is None:
            return False
        for proc in machine.processes:
            Machine.kill(proc)
        return True

    def is_running(self, *args: Any, **kwargs: Any) -> bool:
        bind(Sandbox.is_running, self, *args, **kwargs)
        return self.sandbox_id in type(self).machines


# Daytona ----------------------------------------------------------------------------------------


@dataclass
class _Command:
    proc: subprocess.Popen[bytes]
    id: str


class StubDaytonaFs:
    def __init__(self, machine: Machine) -> None:
        self.m = machine

    def create_folder(self, *args: Any, **kwargs: Any) -> None:
        a = bind(daytona_fs.FileSystem.create_folder, self, *args, **kwargs)
        self.m.enter("fs.create_folder")
        Path(self.m.local(a["path"])).mkdir(parents=True, exist_ok=True)

    def upload_files(self, *args: Any, **kwargs: Any) -> None:
        a = bind(daytona_fs.FileSystem.upload_files, self, *args, **kwargs)
        self.m.enter("fs.upload_files")
        for upload in a["files"]:
            assert isinstance(upload, daytona.FileUpload)
            target = Path(self.m.local(upload.destination))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(upload.source)

    def download_file(self, *args: Any, **kwargs: Any) -> bytes:
        a = bind(daytona_fs.FileSystem.download_file, self, *args, **kwargs)
        self.m.enter("fs.download_file")
        (remote,) = a["args"]
        return Path(remote).read_bytes()


class StubDaytonaProcess:
    def __init__(self, machine: Machine) -> None:
        self.m = machine
        self.sessions: dict[str, dict[str, _Command]] = {}
        self.deleted: list[str] = []

    def create_session(self, *args: Any, **kwargs: Any) -> None:
        a = bind(daytona_process.Process.create_session, self, *args, **kwargs)
        self.m.enter("process.create_session")
        self.sessions[a["session_id"]] = {}

    def execute_session_command(self, *args: Any, **kwargs: Any) -> Any:
        a = bind(daytona_process.Process.execute_session_command, self, *args, **kwargs)
        self.m.enter("process.execute_session_command")
        request = a["req"]
        assert isinstance(request, daytona.SessionExecuteRequest)
        assert request.run_async is True
        command = _Command(self.m.spawn(request.command, None, None), uuid.uuid4().hex)
        self.sessions[a["session_id"]][command.id] = command
        return daytona.SessionExecuteResponse(cmd_id=command.id)

    async def get_session_command_logs_async(self, *args: Any, **kwargs: Any) -> None:
        a = bind(daytona_process.Process.get_session_command_logs_async, self, *args, **kwargs)
        self.m.enter("process.get_session_command_logs_async")
        command = self.sessions[a["session_id"]][a["command_id"]]
        threads = _pump(command.proc, a["on_stdout"], a["on_stderr"])
        while any(t.is_alive() for t in threads):
            await asyncio.sleep(0.02)

    def get_session_command(self, *args: Any, **kwargs: Any) -> Any:
        a = bind(daytona_process.Process.get_session_command, self, *args, **kwargs)
        command = self.sessions[a["session_id"]][a["command_id"]]
        return ToolboxCommand(id=command.id, command="", exit_code=command.proc.wait())

    def delete_session(self, *args: Any, **kwargs: Any) -> None:
        a = bind(daytona_process.Process.delete_session, self, *args, **kwargs)
        self.deleted.append(a["session_id"])
        for command in self.sessions.pop(a["session_id"], {}).values():
            Machine.kill(command.proc)

    def exec(self, *args: Any, **kwargs: Any) -> Any:
        a = bind(daytona_process.Process.exec, self, *args, **kwargs)
        self.m.enter("process.exec")
        proc = self.m.spawn(a["command"], a["cwd"], a["env"])
        out, err = proc.communicate(timeout=a["timeout"])
        return daytona.ExecuteResponse(exit_code=proc.returncode, result=(out + err).decode())


class StubDaytonaSandbox:
    def __init__(self, sandbox_id: str, machine: Machine, owner: StubDaytona) -> None:
        self.id = sandbox_id
        self.state = daytona.SandboxState.STARTED
        self.fs = StubDaytonaFs(machine)
        self.process = StubDaytonaProcess(machine)
        self.machine = machine
        self._owner = owner

    def get_work_dir(self, *args: Any, **kwargs: Any) -> str:
        bind(daytona_sandbox.Sandbox.get_work_dir, self, *args, **kwargs)
        return "/home/daytona"

    def delete(self, *args: Any, **kwargs: Any) -> None:
        bind(daytona_sandbox.Sandbox.delete, self, *args, **kwargs)
        self.machine.enter("delete")
        for proc in self.machine.processes:
            Machine.kill(proc)
        self._owner.sandboxes.pop(self.id, None)
        self.state = daytona.SandboxState.DESTROYED


class StubDaytona:
    """Stands for ``daytona.Daytona``: a client whose sandboxes are directories on this machine."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sandboxes: dict[str, StubDaytonaSandbox] = {}
        self.failures: dict[str, BaseException] = {}
        self.created: list[dict[str, Any]] = []

    def _enter(self, name: str) -> None:
        failure = self.failures.pop(name, None)
        if failure is not None:
            raise failure

    def create(self, *args: Any, **kwargs: Any) -> StubDaytonaSandbox:
        a = bind(daytona.Daytona.create, self, *args, **kwargs)
        self._enter("create")
        self.created.append(a)
        sandbox_id = uuid.uuid4().hex
        directory = self.root / sandbox_id
        directory.mkdir(parents=True)
        sandbox = StubDaytonaSandbox(sandbox_id, Machine(directory, "/home/daytona"), self)
        self.sandboxes[sandbox_id] = sandbox
        return sandbox

    def get(self, *args: Any, **kwargs: Any) -> StubDaytonaSandbox:
        a = bind(daytona.Daytona.get, self, *args, **kwargs)
        self._enter("get")
        found = self.sandboxes.get(a["sandbox_id_or_name"])
        if found is None:
            raise daytona.DaytonaNotFoundError("Sandbox not found", status_code=404)
        return found


def wait_dead(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return True
        time.sleep(0.05)
    return False
