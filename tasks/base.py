"""The base of the six step tasks: run the step, retry what is retryable, fail the rest cleanly."""

from __future__ import annotations

import logging

from celery import Task

from libra_deploy.errors import StepError, as_step_error
from libra_deploy.retries import backoff_delay
from libra_deploy.runtime import Runtime
from libra_deploy.steps.runner import Outcome, fail_attempt, run_step
from tasks.pipeline import enqueue_cleanup, hand_over_slots, publish_webhooks
from tasks.recovery import publish_dead_letter
from tasks.runtime import get_runtime

logger = logging.getLogger(__name__)


class StepTask(Task):
    """A Celery task that runs one step of one deployment, identified by its id alone.

    The retry budget is counted in the database (every execution of the step, whether it ended in
    an error or with its worker gone), not in the message, so Celery's own count is unlimited here.
    """

    max_retries = None
    acks_late = True
    #: Failed steps are expected in normal operation (a user's build breaks): no traceback in the log.
    throws = (StepError,)
    step: str

    def run_step(self, deployment_id: str) -> None:
        runtime = get_runtime()
        try:
            run = run_step(runtime, self.step, deployment_id, self.request.id)
        except Exception as raw:
            error = as_step_error(raw)
            if error.code == "INTERNAL_ERROR":
                logger.exception("step %s of %s failed unexpectedly", self.step, deployment_id)
            verdict = fail_attempt(runtime, self.step, deployment_id, error)
            if not verdict.final:
                delay = backoff_delay(verdict.attempts - 1, runtime.settings.step_retry_base_delay_s)
                raise self.retry(exc=error, countdown=delay) from None
            if verdict.dead_letter is not None:
                publish_dead_letter(runtime, verdict.dead_letter.id, verdict.dead_letter.message)
            # The failure recorded its webhook deliveries; they go out now that it is committed.
            _publish_webhooks(runtime, deployment_id)
            if self.step != "cleanup":
                # The chain stops here; cleanup still has to release the sandbox and the slot.
                enqueue_cleanup(deployment_id)
            raise error from None
        if self.step == "cleanup" and run.outcome is Outcome.RAN:
            # The slot it gave back goes to the next in line now, rather than at that one's next ask.
            hand_over_slots(run.woken)
            _publish_webhooks(runtime, deployment_id)
        if run.outcome is Outcome.WAITING:
            # No sandbox slot is free (or, for a cleanup, the cancelled step is still stopping):
            # ask again later. No attempt was counted for this.
            raise self.retry(countdown=run.wait_s)
        if run.outcome in (
            Outcome.NOT_RUNNABLE,
            Outcome.DUPLICATE,
            Outcome.DONE_BY_ANOTHER,
            Outcome.CANCELLED,
        ):
            # Nothing downstream of this message should run: the message that runs (or ran) the
            # step goes on with the chain; cancel publishes its own cleanup.
            self.request.chain = None


def _publish_webhooks(runtime: Runtime, deployment_id: str) -> None:
    try:
        publish_webhooks(runtime, deployment_id)
    except Exception:
        # Recorded in the database: the outbox relay publishes them when the database answers again.
        logger.warning("could not publish the webhooks of %s", deployment_id, exc_info=True)
