"""SandboxProvider on E2B (the ``e2b`` package, 2.x): a microVM per deployment.

The sandbox lives as long as the deployment's budget (E2B reaps it after that even if we never get
to destroy it), starts from E2B_TEMPLATE (``base``: Node and yarn included) with an empty
environment, and receives the project under ``/home/user/project``. Commands run through E2B's
command stream with our deadline as its timeout; their output arrives in chunks, which are cut into
lines here. Build output is tarred inside the sandbox and read back in one download, since E2B has
no directory download.

SDK failures become :class:`ProviderError` with ``retryable`` decided by
:func:`libra_deploy.errors.provider_error`; no SDK exception leaves this module.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import httpx
from e2b import (
    AuthenticationException,
    CommandExitException,
    InvalidArgumentException,
    NotEnoughSpaceException,
    NotFoundException,
    RateLimitException,
    Sandbox,
    SandboxException,
    SandboxNotRunningException,
    SandboxUnreachableException,
    ServiceBusyException,
    TemplateException,
    TimeoutException,
)

from libra_deploy.config import Settings
from libra_deploy.errors import DeploymentTimeout, ProviderError, provider_error
from libra_deploy.ports import LineSink, SandboxSpec
from libra_deploy.redact import register_secrets
from libra_deploy.sandbox_io import NO_DIRECTORY, LineSplitter, archive_command, batches, untar

PROVIDER = "E2B"
PROJECT_DIR = "/home/user/project"
#: Time allowed for control calls (create, connect, kill, file transfers) per request.
REQUEST_TIMEOUT_S = 120.0
#: Time allowed to tar the output inside the sandbox.
ARCHIVE_TIMEOUT_S = 300.0

T = TypeVar("T")
_LEADING_STATUS = re.compile(r"^([1-5]\d\d):")


def e2b_error(action: str, exc: BaseException, *, creating: bool = False) -> ProviderError:
    """E2B's exceptions on our retry policy. Unknown ones are treated by their HTTP status."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, AuthenticationException):
        return provider_error(PROVIDER, action, detail, status=401)
    if isinstance(exc, RateLimitException):
        return provider_error(PROVIDER, action, detail, status=429)
    if isinstance(exc, ServiceBusyException):
        return provider_error(PROVIDER, action, detail, status=503)
    if isinstance(exc, InvalidArgumentException | TemplateException | NotEnoughSpaceException):
        return provider_error(PROVIDER, action, detail, status=400)
    if isinstance(exc, NotFoundException):
        return provider_error(PROVIDER, action, detail, status=404, creating=creating)
    if isinstance(exc, TimeoutException | httpx.TransportError):
        # A timeout, an unreachable or stopped sandbox, a refused connection: a fresh attempt helps.
        return provider_error(PROVIDER, action, detail, status=None)
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        # The SDK writes the HTTP status at the front of the message ("502: ...") when it has one.
        leading = _LEADING_STATUS.match(detail)
        status = int(leading.group(1)) if leading else 500
    return provider_error(PROVIDER, action, detail, status=status, creating=creating)


class E2BSandboxProvider:
    name = "e2b"

    def __init__(
        self,
        *,
        api_key: str,
        domain: str = "",
        template: str = "base",
        sandbox_class: Any = Sandbox,
    ) -> None:
        register_secrets([api_key])
        self._opts: dict[str, Any] = {"api_key": api_key, "request_timeout": REQUEST_TIMEOUT_S}
        if domain:
            self._opts["domain"] = domain
        self.template = template
        # The SDK's Sandbox class; the tests give a stub that follows its signatures.
        self._sandbox_class = sandbox_class
        self._sandboxes: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> E2BSandboxProvider:
        settings.require_adapter("SANDBOX_BUILDER_DEFAULT_PROVIDER", "e2b")
        return cls(api_key=settings.e2b_api_key, domain=settings.e2b_domain, template=settings.e2b_template)

    def _call(self, action: str, operation: Callable[[], T], *, creating: bool = False) -> T:
        try:
            return operation()
        except ProviderError:
            raise
        except (SandboxException, AuthenticationException, ServiceBusyException, httpx.HTTPError) as exc:
            raise e2b_error(action, exc, creating=creating) from None

    def _sandbox(self, sandbox_id: str) -> Any:
        """The live SDK object; steps may run in another process than the one that created it."""
        with self._lock:
            found = self._sandboxes.get(sandbox_id)
        if found is None:
            found = self._call(
                f"connect to sandbox {sandbox_id}",
                lambda: self._sandbox_class.connect(sandbox_id, **self._opts),
            )
            with self._lock:
                self._sandboxes[sandbox_id] = found
        return found

    def create(self, spec: SandboxSpec) -> str:
        sandbox = self._call(
            "create a sandbox",
            lambda: self._sandbox_class.create(
                template=self.template,
                timeout=max(int(spec.lifetime_s), 60),
                metadata={"libra-deployment": spec.deployment_id},
                envs={},
                **self._opts,
            ),
            creating=True,
        )
        sandbox_id = str(sandbox.sandbox_id)
        with self._lock:
            self._sandboxes[sandbox_id] = sandbox
        self._call("create the project directory", lambda: sandbox.files.make_dir(PROJECT_DIR))
        return sandbox_id

    def exists(self, sandbox_id: str) -> bool:
        try:
            sandbox = self._sandbox(sandbox_id)
            return bool(self._call(f"check sandbox {sandbox_id}", sandbox.is_running))
        except ProviderError as exc:
            if exc.code == "PROVIDER_NOT_FOUND":
                return False
            raise

    def write_files(self, sandbox_id: str, files: Iterable[tuple[str, bytes]]) -> None:
        sandbox = self._sandbox(sandbox_id)
        for batch in batches(files):
            self._write(sandbox, [{"path": f"{PROJECT_DIR}/{rel}", "data": data} for rel, data in batch])

    def _write(self, sandbox: Any, batch: list[dict[str, Any]]) -> None:
        self._call(f"write {len(batch)} files", lambda: sandbox.files.write_files(batch))

    def run(
        self,
        sandbox_id: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        timeout_s: float,
        on_output: LineSink,
        cwd: str = "",
        network: bool = False,
    ) -> int:
        # An E2B sandbox has one network policy for its whole life, set when it is created: ``network``
        # (which only the local sandbox can switch per command) does not apply here.
        sandbox = self._sandbox(sandbox_id)
        lines = LineSplitter(on_output)
        shown = shlex.join(command)
        handle = self._call(
            f"start {shown}",
            lambda: sandbox.commands.run(
                shown,
                background=True,
                envs=dict(env),
                cwd=f"{PROJECT_DIR}/{cwd}".rstrip("/"),
                timeout=max(timeout_s, 1.0),
            ),
        )
        try:
            result = handle.wait(on_stdout=lines.feed, on_stderr=lines.feed)
            return int(result.exit_code)
        except CommandExitException as exc:
            return int(exc.exit_code)
        except (SandboxNotRunningException, SandboxUnreachableException) as exc:
            # The sandbox went away or cannot be reached, not our deadline: a fresh attempt helps.
            raise e2b_error(f"run {shown}", exc) from None
        except TimeoutException:
            # The command stream hit our deadline: stop the process, not just our reading of it.
            with contextlib.suppress(SandboxException, httpx.HTTPError):
                handle.kill()
            raise DeploymentTimeout(
                f"{shown} did not finish within {timeout_s:.0f} s and was stopped"
            ) from None
        except (SandboxException, AuthenticationException, ServiceBusyException, httpx.HTTPError) as exc:
            raise e2b_error(f"run {shown}", exc) from None
        finally:
            lines.close()

    def read_files(self, sandbox_id: str, directory: str) -> Iterator[tuple[str, bytes]]:
        sandbox = self._sandbox(sandbox_id)
        source = f"{PROJECT_DIR}/{directory}".rstrip("/")
        archive = f"/tmp/libra-{uuid.uuid4().hex}.tgz"  # noqa: S108 - inside the sandbox, a fresh name
        try:
            sandbox.commands.run(archive_command(source, archive), timeout=ARCHIVE_TIMEOUT_S)
        except CommandExitException as exc:
            if exc.exit_code == NO_DIRECTORY:
                return
            raise ProviderError(f"{PROVIDER}: archiving {directory} failed: {exc.stderr}".strip()) from None
        except (SandboxException, AuthenticationException, ServiceBusyException, httpx.HTTPError) as exc:
            raise e2b_error("archive the output", exc) from None
        data = self._call(
            "download the output",
            lambda: sandbox.files.read(archive, format="bytes", request_timeout=ARCHIVE_TIMEOUT_S),
        )
        yield from untar(bytes(data))

    def destroy(self, sandbox_id: str) -> None:
        with self._lock:
            self._sandboxes.pop(sandbox_id, None)
        # Returns False when the sandbox is gone already: destroying twice is fine.
        self._call(f"kill sandbox {sandbox_id}", lambda: self._sandbox_class.kill(sandbox_id, **self._opts))
