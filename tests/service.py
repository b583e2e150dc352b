"""The service as production runs it, in subprocesses, for tests that break things on purpose.

A private ``redis-server`` on a spare port (so stopping, restarting or wiping it touches nobody
else), a private PostgreSQL database, the web process under gunicorn, Celery workers and
``celery beat``, all started from the Procfile's commands with short recovery timings.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import requests

from libra_deploy.config import Settings
from libra_deploy.migrate import upgrade
from libra_deploy.runtime import Runtime
from tests.conftest import PG_ADMIN_URL, _pg_url

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"

#: Recovery timings short enough for a test to watch them happen.
FAST_RECOVERY = {
    "HEARTBEAT_TIMEOUT": "3",
    "PICKUP_TIMEOUT": "3",
    "REAPER_INTERVAL": "1",
    "OUTBOX_RELAY_INTERVAL": "0.5",
    "STEP_RETRY_BASE_DELAY": "0.2",
    "SLOT_WAIT_INTERVAL": "0.3",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class RedisServer:
    """A redis-server of the test's own, keeping nothing on disk (as the machines' Redis)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, 10, f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart_empty(self) -> None:
        """Stop and start again: without persistence everything it held is gone."""
        self.stop()
        self.start()


class Service:
    def __init__(self, workdir: Path, redis: RedisServer, overrides: dict[str, str]) -> None:
        self.workdir = workdir
        self.redis = redis
        self.database = f"libra_svc_{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("LIBRA_TEST", "PYTEST"))}
        self.env.update(
            {
                "DATABASE_URL": _pg_url(self.database),
                "CELERY_BROKER_URL": redis.url,
                "LIBRA_DATA_DIR": str(workdir / "data"),
                "PUBLIC_URL": self.url,
                "PORT": str(self.port),
                "LOG_LEVEL": "WARNING",
                **FAST_RECOVERY,
                **overrides,
            }
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.runtime: Runtime | None = None

    def create(self) -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        settings = Settings.from_env(self.env)
        upgrade(settings.database_url)
        self.runtime = Runtime.from_settings(settings)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def start_web(self) -> None:
        self._spawn(
            "web",
            [
                str(BIN / "gunicorn"),
                "-c",
                "gunicorn.conf.py",
                "-b",
                f"127.0.0.1:{self.port}",
                "-w",
                "1",
                "--threads",
                "8",
                "web:create_app()",
            ],
        )
        wait_until(self._web_answers, 30, "the web process")

    def _web_answers(self) -> bool:
        try:
            return requests.get(f"{self.url}/", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def start_worker(self, name: str, concurrency: int = 5) -> subprocess.Popen[bytes]:
        proc = self._spawn(
            name,
            [
                str(BIN / "celery"),
                "-A",
                "tasks",
                "worker",
                "-P",
                "threads",
                "-c",
                str(concurrency),
                "-n",
                f"{name}@%h",
                "--without-mingle",
                "--without-gossip",
                "--loglevel",
                "WARNING",
            ],
        )
        return proc

    def start_beat(self) -> None:
        self._spawn("beat", [str(BIN / "celery"), "-A", "tasks", "beat", "--loglevel", "WARNING"])

    def kill(self, name: str) -> None:
        """SIGKILL a process: no chance to clean up, as when a machine dies."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait()
        self.procs.clear()
        if self.runtime is not None:
            self.runtime.close()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


@contextmanager
def running_service(**overrides: str) -> Iterator[Service]:
    workdir = Path(tempfile.mkdtemp(prefix="libra-svc-"))
    redis = RedisServer(workdir)
    redis.start()
    service = Service(workdir, redis, overrides)
    try:
        service.create()
        yield service
    except BaseException:
        for name in service.procs:
            print(f"--- {name} log ---\n{service.log(name)[-4000:]}")
        raise
    finally:
        service.close()
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
