"""A Celery worker running in threads of the current process (``libra-deploy up``)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from celery.worker import WorkController, state
from sqlalchemy import event

from libra_deploy.retention import collect_garbage
from libra_deploy.runtime import Runtime
from libra_deploy.steps.runner import monitor
from tasks import recovery
from tasks.app import app
from tasks.runtime import set_runtime

logger = logging.getLogger(__name__)


class EmbeddedWorker:
    """Consumes the work queues with a threads pool; shares the caller's runtime."""

    def __init__(self, runtime: Runtime, concurrency: int | None = None) -> None:
        set_runtime(runtime)
        app.finalize()
        self._runtime = runtime
        self._ready = threading.Event()
        self._controller = WorkController(
            app=app,
            hostname=f"embedded@{socket.gethostname()}",
            pool="threads",
            concurrency=concurrency or app.conf.worker_concurrency,
            queues=[q.name for q in app.conf.task_queues],
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            ready_callback=lambda *_: self._ready.set(),
        )
        self._thread = threading.Thread(target=self._controller.start, name="celery-worker", daemon=True)

    def start(self, timeout_s: float = 30.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"the embedded worker did not start within {timeout_s:.0f} s")

    def stop(self, grace_s: float) -> bool:
        """Stop taking messages and let running steps finish for ``grace_s``; True if the worker stopped.

        False when steps were still running: their work (builds) is killed and nothing more of them
        is committed, but their threads go on. The threads pool cannot stop a running task (it
        ignores ``should_terminate``) and the interpreter waits for its threads before it exits, so
        the caller must then end the process with ``os._exit``. The steps are left as a crash leaves
        them: in progress, their heartbeat stopping, and the reaper resumes them on the next start.
        """
        state.should_stop = 0
        self._thread.join(grace_s)
        if not self._thread.is_alive():
            state.should_stop = None
            return True
        logger.warning("steps still running after %.0f s; stopping them (they resume on next start)", grace_s)
        # Refuse commits first: a step would otherwise record what the kill does to it (a killed
        # build fails for good) before the process ends. A transaction under way is rolled back.
        event.listen(self._runtime.engine, "commit", _refuse_commit)
        monitor(self._runtime).interrupt()
        return False


def _refuse_commit(_connection: Any) -> None:
    raise RuntimeError("libra-deploy up is stopping: the steps still running are left to the reaper")


class EmbeddedScheduler:
    """The periodic jobs of ``celery beat`` (outbox relay, reaper, gc), run in a thread of this process."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="maintenance", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        settings = self._runtime.settings
        jobs = [
            _Job(settings.outbox_relay_interval_s, recovery.relay_outbox),
            _Job(settings.reaper_interval_s, recovery.reap),
            _Job(settings.gc_interval_s, collect_garbage),
        ]
        while not self._stop.is_set():
            for job in jobs:
                job.run_if_due(self._runtime)
            self._stop.wait(max(min(job.due for job in jobs) - time.monotonic(), 0.0))


class _Job:
    def __init__(self, interval_s: float, run: Callable[[Runtime], object]) -> None:
        self.interval_s = interval_s
        self.due = 0.0
        self._run = run

    def run_if_due(self, runtime: Runtime) -> None:
        now = time.monotonic()
        if now < self.due:
            return
        self.due = now + self.interval_s
        try:
            self._run(runtime)
        except Exception:
            logger.warning(
                "periodic job %s failed; it runs again next time", self._run.__name__, exc_info=True
            )
