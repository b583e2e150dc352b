"""Watches the steps running in this process: heartbeats, cancels, and log lines that wait.

One thread per process, whatever the number of running steps: every second it writes the steps'
pending log lines, reads the status of
the deployments it watches (a cancel is seen within a second and the watcher's callbacks kill the
work, wherever in the process it runs), and every ``heartbeat_interval_s`` it refreshes their
heartbeats in one UPDATE (a heartbeat that stops means the worker was lost; see recovery.py).
A step that ends within a second costs nothing here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from libra_deploy.db import transaction, utcnow
from libra_deploy.models import Deployment, DeploymentStatus

logger = logging.getLogger(__name__)

POLL_S = 1.0


@dataclass
class Watch:
    deployment_id: str
    #: Writes the step's pending log lines; called every poll, so a line printed before a long
    #: silence still reaches the status and the live logs within a second.
    flush_logs: Callable[[], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    callbacks: list[Callable[[], None]] = field(default_factory=list)
    #: The process stopped the step's work without a cancel (:meth:`StepMonitor.interrupt`).
    interrupted: bool = False

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` if the deployment is cancelled (from the monitor's thread) or the process
        interrupts the step (:meth:`StepMonitor.interrupt`); it may run twice, so it must not mind."""
        self.callbacks.append(callback)
        if self.cancelled.is_set() or self.interrupted:
            callback()

    def stop_work(self) -> None:
        """Run every callback (what kills the step's work); one that fails does not stop the others."""
        for callback in list(self.callbacks):
            try:
                callback()
            except Exception:
                logger.exception("stopping the work of %s failed", self.deployment_id)


class StepMonitor:
    def __init__(self, sessions: sessionmaker[Session], heartbeat_interval_s: float) -> None:
        self._sessions = sessions
        self._heartbeat_interval_s = heartbeat_interval_s
        self._watches: dict[int, Watch] = {}
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._interrupted = False

    def watch(self, deployment_id: str, flush_logs: Callable[[], None]) -> Watch:
        watch = Watch(deployment_id, flush_logs)
        with self._lock:
            watch.interrupted = self._interrupted
            self._watches[id(watch)] = watch
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="step-monitor", daemon=True)
                self._thread.start()
            self._lock.notify()
        return watch

    def unwatch(self, watch: Watch) -> None:
        with self._lock:
            self._watches.pop(id(watch), None)

    def interrupt(self) -> None:
        """Stop the work of every step of this process as a cancel does, without cancelling them.

        For a process that ends while steps run (``libra-deploy up`` stopping): what they run (a
        build) must not outlive it, while the steps themselves are resumed after it, as after a
        crash. A step that registers a callback later (its next command) has it run at once.
        """
        with self._lock:
            self._interrupted = True
            watches = list(self._watches.values())
            for watch in watches:
                watch.interrupted = True
        for watch in watches:
            watch.stop_work()

    def _run(self) -> None:
        last_beat = time.monotonic()
        while True:
            with self._lock:
                while not self._watches:
                    self._lock.wait()
                    last_beat = time.monotonic()
            time.sleep(POLL_S)
            with self._lock:
                watches = list(self._watches.values())
            if not watches:
                continue
            beat = time.monotonic() - last_beat >= self._heartbeat_interval_s
            try:
                cancelled = self._poll({w.deployment_id for w in watches}, beat)
            except Exception:
                # The database may be away for a moment; the step itself will notice if it stays away.
                logger.warning("step monitor could not reach the database", exc_info=True)
                continue
            if beat:
                last_beat = time.monotonic()
            for watch in watches:
                try:
                    watch.flush_logs()
                except Exception:
                    logger.warning("could not write the log lines of %s", watch.deployment_id, exc_info=True)
                if watch.deployment_id in cancelled and not watch.cancelled.is_set():
                    watch.cancelled.set()
                    watch.stop_work()

    def _poll(self, deployment_ids: set[str], beat: bool) -> set[str]:
        with transaction(self._sessions) as session:
            if beat:
                session.execute(
                    update(Deployment).where(Deployment.id.in_(deployment_ids)).values(heartbeat_at=utcnow())
                )
            rows = session.execute(
                select(Deployment.id).where(
                    Deployment.id.in_(deployment_ids), Deployment.status == DeploymentStatus.CANCELLED
                )
            )
            return {row[0] for row in rows}
