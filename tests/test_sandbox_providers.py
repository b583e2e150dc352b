"""The E2B and Daytona sandbox adapters against stub SDK objects that follow the real SDKs' signatures."""

from __future__ import annotations

import inspect

import daytona
import e2b
import httpx
import pytest

from libra_deploy import registry
from libra_deploy.adapters.daytona_sandbox import DaytonaSandboxProvider
from libra_deploy.adapters.e2b_sandbox import E2BSandboxProvider
from libra_deploy.config import Settings
from libra_deploy.errors import ConfigError, DeploymentTimeout, ProviderError
from libra_deploy.models import new_id
from libra_deploy.ports import SandboxProvider, SandboxSpec
from tests.stub_sdks import StubDaytona, StubE2BSandbox, wait_dead

# The SDK methods the adapters call, with the parameters they rely on. The stubs bind every call to
# these same signatures; this test names them so that a drift in the installed SDKs is reported here.
E2B_SIGNATURES = {
    e2b.Sandbox.create: {"template", "timeout", "metadata", "envs", "opts"},
    e2b.Sandbox._cls_connect_sandbox: {"sandbox_id", "opts"},
    e2b.Sandbox._cls_kill: {"sandbox_id", "opts"},
    e2b.Sandbox.is_running: {"self"},
    e2b.sandbox_sync.filesystem.filesystem.Filesystem.write_files: {"files"},
    e2b.sandbox_sync.filesystem.filesystem.Filesystem.make_dir: {"path"},
    e2b.sandbox_sync.filesystem.filesystem.Filesystem.read: {"path", "format", "request_timeout"},
    e2b.sandbox_sync.commands.command.Commands.run: {"cmd", "background", "envs", "cwd", "timeout"},
    e2b.sandbox_sync.commands.command_handle.CommandHandle.wait: {"on_stdout", "on_stderr"},
    e2b.sandbox_sync.commands.command_handle.CommandHandle.kill: {"self"},
}
DAYTONA_SIGNATURES = {
    daytona.Daytona.create: {"params", "timeout"},
    daytona.Daytona.get: {"sandbox_id_or_name"},
    daytona.DaytonaConfig: {"api_key", "api_url", "target"},
    daytona.CreateSandboxFromSnapshotParams: {
        "snapshot",
        "language",
        "env_vars",
        "labels",
        "auto_stop_interval",
        "ephemeral",
    },
    daytona.CreateSandboxFromImageParams: {"image", "resources"},
    daytona.Resources: {"cpu", "memory", "disk"},
    daytona.FileUpload: {"source", "destination"},
    daytona.SessionExecuteRequest: {"command", "run_async"},
    daytona._sync.sandbox.Sandbox.get_work_dir: {"self"},
    daytona._sync.sandbox.Sandbox.delete: {"self"},
    daytona._sync.filesystem.FileSystem.upload_files: {"files"},
    daytona._sync.filesystem.FileSystem.create_folder: {"path", "mode"},
    daytona._sync.filesystem.FileSystem.download_file: {"args"},
    daytona._sync.process.Process.exec: {"command", "timeout"},
    daytona._sync.process.Process.create_session: {"session_id"},
    daytona._sync.process.Process.execute_session_command: {"session_id", "req"},
    daytona._sync.process.Process.get_session_command_logs_async: {
        "session_id",
        "command_id",
        "on_stdout",
        "on_stderr",
    },
    daytona._sync.process.Process.get_session_command: {"session_id", "command_id"},
    daytona._sync.process.Process.delete_session: {"session_id"},
}


@pytest.mark.parametrize(
    ("real", "names"),
    list(E2B_SIGNATURES.items()) + list(DAYTONA_SIGNATURES.items()),
    ids=lambda v: getattr(v, "__qualname__", None) if callable(v) else "",
)
def test_the_installed_sdks_have_the_signatures_the_adapters_use(real, names):
    parameters = inspect.signature(real).parameters
    assert names <= set(parameters), f"{real.__qualname__} lost {names - set(parameters)}"


def test_the_daytona_log_follower_is_a_coroutine_on_the_sync_class():
    assert inspect.iscoroutinefunction(daytona._sync.process.Process.get_session_command_logs_async)


# Both adapters behave the same behind the port -----------------------------------------------------


@pytest.fixture(params=["e2b", "daytona"])
def provider(request, tmp_path):
    if request.param == "e2b":
        StubE2BSandbox.reset(tmp_path)
        adapter = E2BSandboxProvider(api_key="e2b_test_key_0123456789", sandbox_class=StubE2BSandbox)
        adapter.stub = StubE2BSandbox
    else:
        stub = StubDaytona(tmp_path)
        adapter = DaytonaSandboxProvider(stub, snapshot="node20-builder")
        adapter.stub = stub
    return adapter


def _spec() -> SandboxSpec:
    return SandboxSpec(deployment_id=new_id("dep"), project_id=new_id("prj"), lifetime_s=900)


def _machine(provider, sandbox_id):
    if isinstance(provider, E2BSandboxProvider):
        return StubE2BSandbox.machines[sandbox_id]
    return provider.stub.sandboxes[sandbox_id].machine


def test_files_in_commands_streamed_output_out(provider):
    assert isinstance(provider, SandboxProvider)
    sandbox_id = provider.create(_spec())
    provider.write_files(sandbox_id, [("index.html", b"<h1>hi</h1>"), ("src/a.txt", b"A")])
    lines: list[str] = []
    script = (
        "mkdir -p dist/sub && cp index.html dist/ && printf 'one\\ntwo' && echo ' err' >&2 "
        "&& echo $GREETING > dist/sub/g.txt"
    )

    code = provider.run(
        sandbox_id, ["bash", "-c", script], env={"GREETING": "hello"}, timeout_s=30, on_output=lines.append
    )

    assert code == 0
    assert "one" in lines
    assert any(line.startswith("two") for line in lines)
    assert dict(provider.read_files(sandbox_id, "dist")) == {
        "index.html": b"<h1>hi</h1>",
        "sub/g.txt": b"hello\n",
    }
    assert list(provider.read_files(sandbox_id, "nothing-here")) == []
    assert provider.exists(sandbox_id)
    provider.destroy(sandbox_id)
    provider.destroy(sandbox_id)
    assert not provider.exists(sandbox_id)


def test_a_command_runs_in_a_subdirectory_and_its_exit_code_is_returned(provider):
    sandbox_id = provider.create(_spec())
    provider.write_files(sandbox_id, [("app/x", b"")])
    lines: list[str] = []
    code = provider.run(
        sandbox_id, ["bash", "-c", "pwd; exit 7"], env={}, timeout_s=30, on_output=lines.append, cwd="app"
    )
    assert code == 7
    assert lines[-1].endswith("/project/app")


def test_a_command_past_its_deadline_is_killed_and_raises_deployment_timeout(provider):
    sandbox_id = provider.create(_spec())
    with pytest.raises(DeploymentTimeout):
        provider.run(
            sandbox_id,
            ["bash", "-c", "echo started; sleep 30"],
            env={},
            timeout_s=0.5,
            on_output=lambda _l: None,
        )
    (proc,) = _machine(provider, sandbox_id).processes
    assert wait_dead(proc)


def test_the_sandbox_starts_with_an_empty_environment_and_a_lifetime(provider):
    provider.create(SandboxSpec(deployment_id=new_id("dep"), project_id=new_id("prj"), lifetime_s=1200))
    if isinstance(provider, E2BSandboxProvider):
        (created,) = StubE2BSandbox.created
        assert (created["envs"], created["timeout"], created["template"]) == ({}, 1200, "base")
    else:
        (created,) = provider.stub.created
        params = created["params"]
        assert (params.env_vars, params.ephemeral, params.snapshot, params.auto_stop_interval) == (
            {},
            True,
            "node20-builder",
            20,
        )


# Errors: each SDK failure class on our retry policy -------------------------------------------------

E2B_ERRORS = [
    (e2b.RateLimitException("429: Rate limit exceeded"), True, "PROVIDER_RATE_LIMITED"),
    (e2b.ServiceBusyException("503: no capacity"), True, "PROVIDER_UNAVAILABLE"),
    (e2b.TimeoutException("request timed out"), True, "PROVIDER_UNAVAILABLE"),
    (httpx.ConnectError("Connection refused"), True, "PROVIDER_UNAVAILABLE"),
    (e2b.SandboxException("502: bad gateway"), True, "PROVIDER_UNAVAILABLE"),
    (e2b.SandboxException("Bad request", status_code=400), False, "PROVIDER_REJECTED"),
    (e2b.SandboxException("422: invalid metadata"), False, "PROVIDER_REJECTED"),
    (
        e2b.AuthenticationException("401: Invalid API key e2b_test_key_0123456789"),
        False,
        "PROVIDER_UNAUTHORIZED",
    ),
    (e2b.NotFoundException("404: template 'nope' not found"), False, "PROVIDER_REJECTED"),
    (e2b.InvalidArgumentException("400: bad timeout"), False, "PROVIDER_REJECTED"),
]
DAYTONA_ERRORS = [
    (daytona.DaytonaRateLimitError("Too many requests", status_code=429), True, "PROVIDER_RATE_LIMITED"),
    (daytona.DaytonaInternalServerError("boom", status_code=500), True, "PROVIDER_UNAVAILABLE"),
    (daytona.DaytonaServiceUnavailableError("busy", status_code=503), True, "PROVIDER_UNAVAILABLE"),
    (daytona.DaytonaTimeoutError("timed out", status_code=504), True, "PROVIDER_UNAVAILABLE"),
    (daytona.DaytonaError("Failed to create sandbox: Connection refused"), True, "PROVIDER_UNAVAILABLE"),
    (daytona.DaytonaAuthenticationError("Unauthorized", status_code=401), False, "PROVIDER_UNAUTHORIZED"),
    (daytona.DaytonaForbiddenError("Forbidden", status_code=403), False, "PROVIDER_UNAUTHORIZED"),
    (
        daytona.DaytonaNotFoundError("snapshot node20-builder not found", status_code=404),
        False,
        "PROVIDER_REJECTED",
    ),
]


@pytest.mark.parametrize(
    ("error", "retryable", "code"),
    E2B_ERRORS,
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_e2b_create_errors_are_mapped(tmp_path, error, retryable, code):
    StubE2BSandbox.reset(tmp_path)
    StubE2BSandbox.failures["create"] = error
    adapter = E2BSandboxProvider(api_key="e2b_test_key_0123456789", sandbox_class=StubE2BSandbox)
    with pytest.raises(ProviderError) as raised:
        adapter.create(_spec())
    assert (raised.value.retryable, raised.value.code) == (retryable, code)
    assert "e2b_test_key_0123456789" not in str(raised.value)


@pytest.mark.parametrize(
    ("error", "retryable", "code"),
    DAYTONA_ERRORS,
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_daytona_create_errors_are_mapped(tmp_path, error, retryable, code):
    stub = StubDaytona(tmp_path)
    stub.failures["create"] = error
    adapter = DaytonaSandboxProvider(stub)
    with pytest.raises(ProviderError) as raised:
        adapter.create(_spec())
    assert (raised.value.retryable, raised.value.code) == (retryable, code)


def test_a_vanished_sandbox_is_retryable_outside_create(provider):
    sandbox_id = provider.create(_spec())
    if isinstance(provider, E2BSandboxProvider):
        _machine(provider, sandbox_id).failures["files.write_files"] = e2b.SandboxException(
            "404: sandbox not found"
        )
    else:
        _machine(provider, sandbox_id).failures["fs.upload_files"] = daytona.DaytonaNotFoundError(
            "gone", status_code=404
        )
    with pytest.raises(ProviderError) as raised:
        provider.write_files(sandbox_id, [("a", b"1")])
    assert raised.value.retryable is True


def test_a_failure_while_streaming_is_mapped(provider):
    sandbox_id = provider.create(_spec())
    if isinstance(provider, E2BSandboxProvider):
        _machine(provider, sandbox_id).failures["commands.run"] = e2b.SandboxUnreachableException(
            "envd unreachable"
        )
    else:
        _machine(provider, sandbox_id).failures["process.get_session_command_logs_async"] = (
            daytona.DaytonaError("websocket closed")
        )
    with pytest.raises(ProviderError) as raised:
        provider.run(sandbox_id, ["true"], env={}, timeout_s=10, on_output=lambda _l: None)
    assert raised.value.retryable is True


@pytest.mark.parametrize(
    "error",
    [
        e2b.SandboxUnreachableException("envd is not responding"),
        e2b.SandboxNotRunningException("sandbox was killed"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_an_e2b_sandbox_lost_mid_command_is_retryable_not_a_timeout(tmp_path, error):
    StubE2BSandbox.reset(tmp_path)
    adapter = E2BSandboxProvider(api_key="e2b_test_key_0123456789", sandbox_class=StubE2BSandbox)
    sandbox_id = adapter.create(_spec())
    StubE2BSandbox.machines[sandbox_id].failures["handle.wait"] = error
    with pytest.raises(ProviderError) as raised:
        adapter.run(sandbox_id, ["true"], env={}, timeout_s=10, on_output=lambda _l: None)
    assert not isinstance(raised.value, DeploymentTimeout)
    assert raised.value.retryable is True


def test_the_api_key_secret_is_scrubbed_from_errors(tmp_path):
    settings = Settings.from_env(
        {"LIBRA_DATA_DIR": str(tmp_path), "E2B_API_KEY": "e2b_live_secret_987654321"}
    )
    StubE2BSandbox.reset(tmp_path)
    StubE2BSandbox.failures["create"] = e2b.AuthenticationException(
        "401: key e2b_live_secret_987654321 is invalid"
    )
    adapter = E2BSandboxProvider(api_key=settings.e2b_api_key, sandbox_class=StubE2BSandbox)
    with pytest.raises(ProviderError) as raised:
        adapter.create(_spec())
    assert "e2b_live_secret_987654321" not in str(raised.value)


# Choosing them --------------------------------------------------------------------------------------


def test_the_registry_builds_them_from_settings_without_network(tmp_path):
    env = {
        "LIBRA_DATA_DIR": str(tmp_path),
        "E2B_API_KEY": "e2b_0123456789",
        "DAYTONA_API_KEY": "dtn_0123456789",
    }
    settings = Settings.from_env({**env, "E2B_DOMAIN": "e2b.example.io", "DAYTONA_TARGET": "eu"})
    e2b_provider = registry.sandbox_provider(settings, "e2b")
    assert isinstance(e2b_provider, E2BSandboxProvider)
    assert e2b_provider._opts["domain"] == "e2b.example.io"
    daytona_provider = registry.sandbox_provider(settings, "daytona")
    assert isinstance(daytona_provider, DaytonaSandboxProvider)
    assert daytona_provider.target == "eu"


@pytest.mark.parametrize(("name", "setting"), [("e2b", "E2B_API_KEY"), ("daytona", "DAYTONA_API_KEY")])
def test_a_provider_without_its_key_stops_start_up_naming_it(tmp_path, name, setting):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"LIBRA_DATA_DIR": str(tmp_path), "SANDBOX_BUILDER_DEFAULT_PROVIDER": name})
    assert raised.value.setting == setting
    # Chosen by a project while the default is local: the adapter refuses the same way.
    with pytest.raises(ConfigError) as raised:
        registry.sandbox_provider(Settings.from_env({"LIBRA_DATA_DIR": str(tmp_path)}), name)
    assert raised.value.setting == setting
