"""The base of the six step tasks: run the step, retry what is retryable, fail the rest cleanly."""

from __future__ import annotations

import logging

from celery import Task

from libra_deploy.errors import StepError, as_step_error
from libra_deploy.retries import MAX_RETRIES, backoff_delay
from libra_deploy.steps.runner import Outcome, record_failure, run_step
from tasks.runtime import get_runtime

logger = logging.getLogger(__name__)


class StepTask(Task):
    """A Celery task that runs one step of one deployment, identified by its id alone."""

    max_retries = MAX_RETRIES
    acks_late = True
    #: Failed steps are expected in normal operation (a user's build breaks): no traceback in the log.
    throws = (StepError,)
    step: str

    def run_step(self, deployment_id: str) -> None:
        runtime = get_runtime()
        try:
            outcome = run_step(runtime, self.step, deployment_id)
        except Exception as raw:
            error = as_step_error(raw)
            if error.code == "INTERNAL_ERROR":
                logger.exception("step %s of %s failed unexpectedly", self.step, deployment_id)
            if error.retryable and self.request.retries < self.max_retries:
                record_failure(runtime, self.step, deployment_id, error, final=False)
                delay = backoff_delay(self.request.retries, runtime.settings.step_retry_base_delay_s)
                raise self.retry(exc=error, countdown=delay) from None
            record_failure(runtime, self.step, deployment_id, error, final=True)
            if self.step != "cleanup":
                # The chain stops here; cleanup still has to release the sandbox.
                self.app.signature("deploy.cleanup", args=(deployment_id,)).apply_async()
            raise error from None
        if outcome is Outcome.NOT_RUNNABLE:
            # Finished or gone: nothing downstream should run either.
            self.request.chain = None
