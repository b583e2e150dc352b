"""The one place a deployment's chain of tasks is built and published."""

from __future__ import annotations

from celery import chain

from libra_deploy.steps import STEPS
from tasks.app import app


def deployment_chain(deployment_id: str, start: str = "validate") -> chain:
    """validate -> sync -> sandbox -> build -> deploy -> cleanup, from ``start`` on."""
    return chain(
        *(
            app.signature(f"deploy.{step}", args=(deployment_id,), immutable=True)
            for step in STEPS[STEPS.index(start) :]
        )
    )


def start_deployment(deployment_id: str) -> None:
    """Publish a committed deployment's chain. Call only after the commit that created it."""
    deployment_chain(deployment_id).apply_async()


def broker_reachable() -> bool:
    """Whether the broker answers now (for /health): one connection attempt, no retries."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=3)
            conn.default_channel  # noqa: B018 - opening a channel is the real check on every transport
        return True
    except Exception:
        return False
