"""The services a benchmark runs against, started the way the test command starts them.

``bin/services`` makes sure PostgreSQL, Redis and RabbitMQ answer on 127.0.0.1; each benchmark then
gets a private PostgreSQL database (migrated to head), a private ``redis-server`` on a spare port
(so a broker queue never mixes with the tests' or another benchmark's), a private data directory,
and the processes of the Procfile (gunicorn, Celery workers) as subprocesses, as
``tests/service.py`` runs them for the recovery tests.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import requests

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
PG_ADMIN_URL = os.environ.get("LIBRA_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def ensure_services() -> None:
    """Start PostgreSQL, Redis and RabbitMQ if they do not answer (bin/services fails loudly if not)."""
    subprocess.run([str(ROOT / "bin" / "services")], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def pg_url(database: str) -> str:
    return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{database}"


#: An organisation's admission limits (POST rate, active deployments, monthly quota) would answer
#: 429 to a benchmark's tenant, which sends far more than one organisation is let through. Every
#: request still runs each check (the rate-limit counters, the organisation's lock, its active
#: count, its quota reservation); what a benchmark measures is their cost, not their refusals.
ADMISSION_UNREFUSED = {
    "DEPLOY_RATE_LIMIT_PER_TOKEN": "1000000/minute",
    "DEPLOY_RATE_LIMIT_PER_ORG": "1000000/minute",
    "MAX_ACTIVE_DEPLOYMENTS_PER_ORG": "1000000",
    "DEFAULT_DEPLOY_QUOTA": "1000000",
}


class Stack:
    """One benchmark's private database, broker and processes; ``close`` removes them all."""

    def __init__(self, name: str, overrides: dict[str, str] | None = None) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"libra-bench-{name}-"))
        self.database = f"libra_bench_{name}_{uuid.uuid4().hex[:8]}"
        self.database_url = pg_url(self.database)
        self.redis_port = free_port()
        self.broker_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("LIBRA_TEST", "PYTEST"))}
        self.env.update(
            {
                "DATABASE_URL": self.database_url,
                "CELERY_BROKER_URL": self.broker_url,
                "LIBRA_DATA_DIR": str(self.workdir / "data"),
                "LOG_LEVEL": "WARNING",
                "ENVIRONMENT": "production",
                **ADMISSION_UNREFUSED,
                **(overrides or {}),
            }
        )
        self._redis: subprocess.Popen[bytes] | None = None

    # Lifecycle -------------------------------------------------------------------------------------

    def create(self) -> None:
        from libra_deploy.migrate import upgrade

        self._start_redis()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        upgrade(self.database_url.replace("postgresql://", "postgresql+psycopg://"))

    def _start_redis(self) -> None:
        """Our own redis-server; on a machine where other suites pick spare ports too, make sure the
        server answering on the port is ours (its pid), else try another port."""
        for _ in range(5):
            self._redis = subprocess.Popen(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port), "--save", "",
                 "--appendonly", "no", "--dir", str(self.workdir),
                 "--logfile", str(self.workdir / "redis.log")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            pid = self._redis.pid
            wait_until(
                lambda: self._redis is None or self._redis.poll() is not None or _redis_pid(self.redis_port),
                10,
                f"redis-server on port {self.redis_port}",
            )
            if self._redis.poll() is None and _redis_pid(self.redis_port) == pid:
                return
            _stop(self._redis)
            self.redis_port = free_port()
            self.broker_url = self.env["CELERY_BROKER_URL"] = f"redis://127.0.0.1:{self.redis_port}/0"
        raise RuntimeError("could not start a redis-server of our own")

    def close(self) -> None:
        for proc in self.procs.values():
            _stop(proc)
        self.procs.clear()
        if self._redis is not None:
            _stop(self._redis)
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        shutil.rmtree(self.workdir, ignore_errors=True)

    # Processes -------------------------------------------------------------------------------------

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            args, cwd=ROOT, env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs[name] = proc
        return proc

    def stop(self, name: str) -> None:
        _stop(self.procs.pop(name))

    def start_web(self, app: str = "web:create_app()", name: str = "web", workers: int = 2) -> str:
        """gunicorn with the production settings (gunicorn.conf.py); returns its base URL."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        self.spawn(
            name,
            [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}", "-w", str(workers),
             "--access-logfile", "/dev/null", app],
            env={"PUBLIC_URL": url, "PORT": str(port)},
        )  # fmt: skip
        wait_until(lambda: _http_ok(url + "/health"), 60, f"{name} on {url}", interval=0.2)
        return url

    def start_worker(
        self,
        name: str = "worker",
        app: str = "tasks",
        pool: str = "prefork",
        env: dict[str, str] | None = None,
    ) -> None:
        """A Celery worker as the Procfile runs it: concurrency 5, prefetch 1, late acks (celeryconfig)."""
        self.spawn(
            name,
            [str(BIN / "celery"), "-A", app, "worker", "-P", pool, "-c", "5", "-n", f"{name}@%h",
             "--without-mingle", "--without-gossip", "--loglevel", "WARNING"],
            env,
        )  # fmt: skip
        wait_until(lambda: _celery_ready(self.broker_url, name), 60, f"worker {name}", interval=0.5)

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    @property
    def redis_pid(self) -> int:
        if self._redis is None:
            raise RuntimeError("the stack's redis-server is not running")
        return self._redis.pid

    def sql(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []


def _celery_ready(broker_url: str, name: str) -> bool:
    # A worker logs nothing at WARNING when it is ready: ask it over the broker instead.
    from celery import Celery

    probe = Celery(broker=broker_url)
    try:
        return bool(probe.control.ping(destination=[f"{name}@{socket.gethostname()}"], timeout=0.5))
    finally:
        probe.close()


def _redis_pid(port: int) -> int | None:
    """The pid of the redis-server answering on the port, if one does."""
    import redis

    try:
        return int(redis.Redis(port=port, socket_timeout=0.5).info("server")["process_id"])
    except (redis.RedisError, OSError):
        return None


def _http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def stack(name: str, overrides: dict[str, str] | None = None) -> Iterator[Stack]:
    s = Stack(name, overrides)
    try:
        s.create()
        yield s
    except BaseException:
        for proc_name in [*s.procs, "redis"]:
            print(f"--- {proc_name} log (last lines) ---\n{s.log(proc_name)[-3000:]}")
        raise
    finally:
        s.close()
