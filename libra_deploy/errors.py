"""The service's errors: each carries a stable code and says whether trying again can help.

The web layer maps the request errors to HTTP statuses in one place (``web/errors.py``); the task
layer retries a :class:`StepError` only when ``retryable`` is true. Messages are for people: they
name the thing that is wrong and never carry a secret (see :mod:`libra_deploy.redact`).
"""

from __future__ import annotations

from typing import Any

from libra_deploy.redact import redact_text


class LibraError(Exception):
    """Base of every error the service raises on purpose."""

    code = "INTERNAL_ERROR"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retryable: bool | None = None,
        details: Any = None,
    ) -> None:
        message = redact_text(message)
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable
        self.details = details

    def __str__(self) -> str:
        return self.message


class ConfigError(LibraError):
    """A setting is missing or malformed; the process cannot start."""

    code = "CONFIG_ERROR"

    def __init__(self, setting: str, problem: str, value: str | None = None) -> None:
        shown = f" (got {redact_text(value)!r})" if value is not None else ""
        super().__init__(f"configuration error: {setting} {problem}{shown}")
        self.setting = setting


# Request errors: raised while handling an API call or an operator command. ----------------------


class InvalidInput(LibraError):
    """The request is malformed; ``details`` says which field and why."""

    code = "VALIDATION_ERROR"


class PayloadTooLarge(LibraError):
    """The request exceeds one of the input limits; the message names the limit."""

    code = "PAYLOAD_TOO_LARGE"


class Unauthorized(LibraError):
    code = "UNAUTHORIZED"


class Forbidden(LibraError):
    code = "FORBIDDEN"


class NotFound(LibraError):
    code = "NOT_FOUND"


class Conflict(LibraError):
    code = "CONFLICT"


class Unprocessable(LibraError):
    """The only 422 of the API: an Idempotency-Key reused with another request body."""

    code = "IDEMPOTENCY_KEY_REUSED"


class TooManyRequests(LibraError):
    """A rate limit, a cap or a quota is exhausted; ``retry_after`` is in seconds."""

    code = "RATE_LIMITED"

    def __init__(
        self, message: str, *, retry_after: int, code: str | None = None, details: Any = None
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.retry_after = retry_after


class ServiceUnavailable(LibraError):
    code = "SERVICE_UNAVAILABLE"
    retryable = True


# Pipeline errors: raised by a step or an adapter while a deployment runs. -----------------------


class StepError(LibraError):
    """A step could not do its job. Permanent unless ``retryable`` says otherwise."""

    code = "DEPLOYMENT_STEP_FAILED"


class ProviderError(StepError):
    """An external system (sandbox provider, deploy target, object store) failed.

    Adapters raise it instead of their SDK's exceptions and decide ``retryable``: rate limits,
    5xx answers, timeouts and refused connections are worth another attempt; authentication,
    permission and bad-request answers are not.
    """

    code = "PROVIDER_ERROR"


class BuildFailed(StepError):
    """The project's own build failed (non-zero exit): retrying the same source cannot help."""

    code = "BUILD_FAILED"


class DeploymentTimeout(StepError):
    """A step ran past its deadline; the work was stopped."""

    code = "DEPLOYMENT_TIMEOUT"


class WorkerLost(StepError):
    """The worker running a step died (killed, out of memory, machine lost) before it finished.

    Retryable: the step runs again on another worker, until its attempts are used up.
    """

    code = "WORKER_LOST"
    retryable = True


def as_step_error(exc: BaseException) -> StepError:
    """Turn any exception raised while a step ran into a StepError that says whether to retry.

    Errors of ours keep their code and retryability. Of the rest, lost connections (to the
    database, the broker or a provider) are worth another attempt; anything else is a defect of
    the service, reported as INTERNAL_ERROR without its internals.
    """
    if isinstance(exc, StepError):
        return exc
    if isinstance(exc, LibraError):
        return StepError(exc.message, code=exc.code, retryable=exc.retryable)
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        return StepError("the database connection was lost", code="DATABASE_UNAVAILABLE", retryable=True)
    if isinstance(exc, ConnectionError | TimeoutError):
        return StepError(
            f"a connection failed: {type(exc).__name__}", code="CONNECTION_FAILED", retryable=True
        )
    return StepError(f"internal error ({type(exc).__name__})", code="INTERNAL_ERROR")


#: HTTP statuses worth another attempt: a timeout, "too early", a rate limit, the provider's own failures.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def provider_error(
    provider: str, action: str, detail: str, *, status: int | None, creating: bool = False
) -> ProviderError:
    """The one policy that turns a provider's failure into a ProviderError with ``retryable`` set.

    ``status`` is the HTTP status the provider answered, or None when no answer came (refused or
    lost connection, timeout): those are worth another attempt, as are the RETRYABLE_STATUSES.
    Authentication and permission failures are permanent, and so is a 404 while ``creating`` (the
    template, snapshot or project named in the settings does not exist); a 404 on anything else
    means a resource vanished under us (a reaped sandbox), which a fresh attempt recreates.
    """
    where = f"{provider}: {action} failed"
    if status is None:
        return ProviderError(f"{where}: {detail}", code="PROVIDER_UNAVAILABLE", retryable=True)
    message = f"{where} ({status}): {detail}"
    if status in (401, 403):
        return ProviderError(message, code="PROVIDER_UNAUTHORIZED", retryable=False)
    if status == 429:
        return ProviderError(message, code="PROVIDER_RATE_LIMITED", retryable=True)
    if status in RETRYABLE_STATUSES:
        return ProviderError(message, code="PROVIDER_UNAVAILABLE", retryable=True)
    if status == 404 and not creating:
        return ProviderError(message, code="PROVIDER_NOT_FOUND", retryable=True)
    return ProviderError(message, code="PROVIDER_REJECTED", retryable=False)
