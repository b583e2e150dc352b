"""Prometheus metrics, computed when scraped from the database and the broker.

Why not counters kept in memory: the web and worker processes are many and restart, and a scrape
reaches one web process only. The database already records every deployment, step, attempt and
dead letter, so each scrape asks it (a handful of aggregate queries on indexed tables) and every web
process answers the same numbers; prometheus-client's multiprocess mode would still miss what
worker processes on other machines observed. Queue depths come from the broker.

* ``libra_deployments{status}``: deployments by status;
* ``libra_deployment_step_duration_seconds{step}``: a histogram of completed steps' durations;
* ``libra_deployment_step_retries_total{step}``: attempts beyond the first, per step;
* ``libra_dead_letters{state}``: dead letters pending (neither replayed nor purged) and in total;
* ``libra_queue_messages{queue}``: messages waiting in deployment-queue, deployment-dlq and
  deployment-webhooks (absent when the broker cannot say);
* ``libra_webhook_deliveries{status}``: webhook deliveries by status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, sessionmaker

from libra_deploy.models import (
    DeadLetter,
    Deployment,
    DeploymentStatus,
    DeploymentStep,
    StepStatus,
    WebhookDelivery,
)
from libra_deploy.steps import STEPS

BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def _seconds(session: Session) -> Any:
    """A step's duration in seconds, in the database's own dialect."""
    if session.get_bind().dialect.name == "sqlite":
        return (
            func.julianday(DeploymentStep.finished_at) - func.julianday(DeploymentStep.started_at)
        ) * 86400.0
    return func.extract("epoch", DeploymentStep.finished_at - DeploymentStep.started_at)


class DatabaseCollector(Collector):
    """Collects the service's metrics at scrape time (see the module's note)."""

    def __init__(
        self, sessions: sessionmaker[Session], queue_depths: Callable[[], Mapping[str, int | None]]
    ) -> None:
        self._sessions = sessions
        self._queue_depths = queue_depths

    def collect(self) -> Iterator[Any]:
        with self._sessions() as session:
            yield self._deployments(session)
            yield self._durations(session)
            yield self._retries(session)
            yield self._dead_letters(session)
            yield self._deliveries(session)
        depths = GaugeMetricFamily(
            "libra_queue_messages", "Messages waiting in a broker queue", labels=["queue"]
        )
        for queue, depth in self._queue_depths().items():
            if depth is not None:
                depths.add_metric([queue], depth)
        yield depths

    def _deployments(self, session: Session) -> GaugeMetricFamily:
        counts = dict(
            session.execute(select(Deployment.status, func.count()).group_by(Deployment.status)).all()
        )
        family = GaugeMetricFamily("libra_deployments", "Deployments by status", labels=["status"])
        for status in DeploymentStatus:
            family.add_metric([status.value], counts.get(status.value, 0))
        return family

    def _durations(self, session: Session) -> HistogramMetricFamily:
        seconds = _seconds(session).label("seconds")
        timed = (
            select(DeploymentStep.step, seconds)
            .where(
                DeploymentStep.status == StepStatus.COMPLETED,
                DeploymentStep.started_at.is_not(None),
                DeploymentStep.finished_at.is_not(None),
            )
            .subquery()
        )
        columns = [func.sum(case((timed.c.seconds <= bound, 1), else_=0)) for bound in BUCKETS]
        rows = session.execute(
            select(timed.c.step, func.count(), func.sum(timed.c.seconds), *columns).group_by(timed.c.step)
        ).all()
        family = HistogramMetricFamily(
            "libra_deployment_step_duration_seconds",
            "Duration of completed deployment steps",
            labels=["step"],
        )
        by_step = {row[0]: row for row in rows}
        for step in STEPS:
            row = by_step.get(step)
            count, total = (int(row[1]), float(row[2] or 0.0)) if row else (0, 0.0)
            cumulative = [int(v or 0) for v in row[3:]] if row else [0] * len(BUCKETS)
            buckets = [(str(bound), value) for bound, value in zip(BUCKETS, cumulative, strict=True)]
            buckets.append(("+Inf", count))
            family.add_metric([step], buckets, sum_value=total)
        return family

    def _retries(self, session: Session) -> CounterMetricFamily:
        rows = dict(
            session.execute(
                select(DeploymentStep.step, func.sum(DeploymentStep.attempts - 1))
                .where(DeploymentStep.attempts > 1)
                .group_by(DeploymentStep.step)
            ).all()
        )
        family = CounterMetricFamily(
            "libra_deployment_step_retries", "Attempts of a step beyond its first", labels=["step"]
        )
        for step in STEPS:
            family.add_metric([step], int(rows.get(step) or 0))
        return family

    def _dead_letters(self, session: Session) -> GaugeMetricFamily:
        pending = session.scalar(
            select(func.count()).where(DeadLetter.replayed_at.is_(None), DeadLetter.purged_at.is_(None))
        )
        total = session.scalar(select(func.count()).select_from(DeadLetter))
        family = GaugeMetricFamily(
            "libra_dead_letters", "Dead letters: pending (not replayed or purged) and all", labels=["state"]
        )
        family.add_metric(["pending"], pending or 0)
        family.add_metric(["all"], total or 0)
        return family

    def _deliveries(self, session: Session) -> GaugeMetricFamily:
        counts = dict(
            session.execute(
                select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)
            ).all()
        )
        family = GaugeMetricFamily(
            "libra_webhook_deliveries", "Webhook deliveries by status", labels=["status"]
        )
        for status in ("pending", "delivered", "failed"):
            family.add_metric([status], counts.get(status, 0))
        return family
