"""The ``libra-deploy`` command: operator commands and the embedded default, as subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
CLI = str(ROOT / ".venv" / "bin" / "libra-deploy")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def embedded_env(tmp_path):
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "PUBLIC_URL")
    }
    env.update({"LIBRA_DATA_DIR": str(tmp_path / "data"), "PORT": str(_free_port())})
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=120)


def test_operator_commands_print_only_what_they_create(embedded_env):
    org = run(embedded_env, "orgs", "create", "Acme")
    assert org.returncode == 0, org.stderr
    org_id = org.stdout.strip()
    assert org_id.startswith("org_")
    assert "\n" not in org_id

    user_id = run(embedded_env, "users", "create", "--org", org_id, "ops@acme.io").stdout.strip()
    assert user_id.startswith("usr_")
    token = run(embedded_env, "tokens", "create", "--org", org_id, "--user", user_id).stdout.strip()
    assert token.startswith("ldt_")
    project = run(embedded_env, "projects", "create", "--org", org_id, "www")
    assert project.stdout.strip().startswith("prj_")
    assert "created project www" in project.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("users", "create", "--org", "org_missing", "a@b.io"), "organisation org_missing does not exist"),
        (("tokens", "create", "--org", "org_missing", "--user", "usr_missing"), "is not a member"),
        (("projects", "create", "--org", "org_missing", "x"), "organisation org_missing does not exist"),
    ],
)
def test_operator_errors_are_one_line_and_exit_1(embedded_env, args, message):
    result = run(embedded_env, *args)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("libra-deploy: ")
    assert message in lines[0]


def _start_up(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([CLI, "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{env['PORT']}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            if requests.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("libra-deploy up did not become healthy")


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.mark.slow
def test_up_deploys_stops_on_sigint_and_keeps_its_data(embedded_env):
    proc, base = _start_up(embedded_env)
    try:
        # The operator commands work beside the running service, on the same data directory.
        org_id = run(embedded_env, "orgs", "create", "Beside").stdout.strip()
        user_id = run(embedded_env, "users", "create", "--org", org_id, "dev@beside.io").stdout.strip()
        token = run(embedded_env, "tokens", "create", "--org", org_id, "--user", user_id).stdout.strip()
        project_id = run(embedded_env, "projects", "create", "--org", org_id, "site").stdout.strip()
        headers = {"Authorization": f"Bearer {token}"}
        files = [{"path": "index.html", "content": "<h1>embedded</h1>"}, {"path": "a.txt", "content": "a"}]
        accepted = requests.post(
            f"{base}/deploy", json={"projectId": project_id, "initFiles": files}, headers=headers, timeout=30
        )
        assert accepted.status_code == 202, accepted.text
        deployment_id = accepted.json()["deploymentId"]
        status = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = requests.get(
                f"{base}/deploy-status", params={"id": deployment_id}, headers=headers, timeout=30
            ).json()
            if status["status"] in ("completed", "failed"):
                break
            time.sleep(0.1)
        assert status["status"] == "completed", status
        assert status["url"] == f"{base}/sites/{project_id}/"
        assert requests.get(status["url"], timeout=30).text == "<h1>embedded</h1>"
    finally:
        code, err = _stop(proc)
    assert code == 0, err
    assert "libra-deploy is up" in err
    assert "Token:" in err

    proc, base = _start_up(embedded_env)
    try:
        again = requests.get(
            f"{base}/deploy-status", params={"id": deployment_id}, headers=headers, timeout=30
        )
        assert again.status_code == 200
        assert again.json()["status"] == "completed"
        assert requests.get(f"{base}/sites/{project_id}/", timeout=30).text == "<h1>embedded</h1>"
    finally:
        code, _err = _stop(proc)
    assert code == 0


def _drain(proc: subprocess.Popen[str]) -> list[str]:
    """Collect what ``proc`` prints on stderr as it comes (a long run's logs would fill the pipe)."""
    printed: list[str] = []
    assert proc.stderr is not None
    threading.Thread(target=lambda: printed.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    return printed


def _banner(printed: list[str], name: str) -> str:
    deadline = time.monotonic() + 30
    while not any(f"{name}:" in line for line in printed):
        assert time.monotonic() < deadline, "".join(printed)
        time.sleep(0.1)
    return next(line.split()[-1] for line in printed if f"{name}:" in line)


def _status(base: str, token: str, deployment_id: str) -> dict:
    return requests.get(
        f"{base}/deploy-status",
        params={"id": deployment_id},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ).json()


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ["auto", "none"])
def test_sigterm_kills_a_running_build_after_the_grace_and_the_next_start_resumes_it(embedded_env, isolation):
    """A build that outlives the stop's grace period is killed, `up` ends without waiting for its
    thread, and the next start resumes the deployment at its build, as after a crash. Without
    bubblewrap (``none``), only up's own kill stops the build (no --die-with-parent)."""
    from libra_deploy.cli.up import WORKER_STOP_GRACE_S
    from tests.helpers import build_processes, sleeping_build, text_files

    env = {**embedded_env, "SANDBOX_ISOLATION": isolation, "HEARTBEAT_TIMEOUT": "2", "REAPER_INTERVAL": "0.5"}
    marker = f"stop-{uuid.uuid4().hex}"
    build_s = WORKER_STOP_GRACE_S + 10
    proc, base = _start_up(env)
    printed = _drain(proc)
    try:
        token, project_id = _banner(printed, "Token"), _banner(printed, "Project")
        files = text_files(sleeping_build(build_s, marker))
        accepted = requests.post(
            f"{base}/deploy",
            json={"projectId": project_id, "initFiles": files},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert accepted.status_code == 202, accepted.text
        deployment_id = accepted.json()["deploymentId"]
        deadline = time.monotonic() + 60
        while not build_processes(marker):
            assert time.monotonic() < deadline, _status(base, token, deployment_id)
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        code = proc.wait(timeout=build_s + 60)
    took = time.monotonic() - stopping
    log = "".join(printed)
    assert code == 0, log
    # The grace, the kill and the exit, not the build's remaining build_s (a bound with room for a
    # loaded machine: this is about what up waits for, not how fast it is).
    assert took < build_s - 4, f"up took {took:.1f} s to stop:\n{log}"
    assert "steps still running" in log
    assert log.rstrip().endswith("stopped"), log
    # Killed with SIGKILL before "stopped" was printed: at most a moment for the kernel to end them.
    deadline = time.monotonic() + 1
    while build_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not build_processes(marker), "the build outlived libra-deploy up"
    # Nothing of the kill was recorded: the build is still in progress, as a crash would leave it.
    assert _embedded_row(
        env, "SELECT status, current_step FROM deployments WHERE id = :id", id=deployment_id
    ) == ("in_progress", "build")
    assert _embedded_row(
        env,
        "SELECT status, attempts FROM deployment_steps WHERE deployment_id = :id AND step = 'build'",
        id=deployment_id,
    ) == ("in_progress", 1)

    proc, base = _start_up(env)
    printed = _drain(proc)
    try:
        deadline = time.monotonic() + build_s + 60
        while (status := _status(base, token, deployment_id))["status"] not in ("completed", "failed"):
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
        assert status["status"] == "completed", status
        assert status["steps"]["build"]["attempts"] == 2
        assert requests.get(status["url"], timeout=30).text == f"built after {build_s} s"
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    assert code == 0, "".join(printed)


@pytest.mark.slow
def test_up_prints_a_demo_token_that_works(embedded_env):
    proc, base = _start_up(embedded_env)
    try:
        time.sleep(0.5)
    finally:
        code, err = _stop(proc)
    assert code == 0
    token = next(line.split()[-1] for line in err.splitlines() if "Token:" in line)
    project = next(line.split()[-1] for line in err.splitlines() if "Project:" in line)
    proc, base = _start_up(embedded_env)
    try:
        response = requests.get(
            f"{base}/projects/{project}", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        assert response.status_code == 200
        assert response.json()["name"] == "demo-site"
    finally:
        _stop(proc)


def test_projects_create_takes_a_template_and_a_sandbox_provider(embedded_env):
    org_id = run(embedded_env, "orgs", "create", "Acme").stdout.strip()
    made = run(
        embedded_env,
        "projects",
        "create",
        "--org",
        org_id,
        "--template",
        "vite-react",
        "--sandbox-provider",
        "daytona",
        "app",
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().startswith("prj_")
    refused = run(embedded_env, "projects", "create", "--org", org_id, "--sandbox-provider", "docker", "app")
    assert refused.returncode != 0
    assert "docker" in refused.stderr
    unknown = run(embedded_env, "projects", "create", "--org", org_id, "--template", "wordpress", "app")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == (
        "libra-deploy: unknown template 'wordpress'; choose one of static, vite-react"
    )


def _embedded_row(env: dict[str, str], sql: str, **params: str) -> tuple:
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{env['LIBRA_DATA_DIR']}/libra.db")
    try:
        with engine.connect() as conn:
            return tuple(conn.execute(text(sql), params).one())
    finally:
        engine.dispose()


def test_sessions_tokens_and_quotas_from_the_command_line(embedded_env):
    import hashlib

    org_id = run(embedded_env, "orgs", "create", "Cookies").stdout.strip()
    user_id = run(embedded_env, "users", "create", "--org", org_id, "web@cookies.io").stdout.strip()

    session = run(embedded_env, "sessions", "create", "--org", org_id, "--user", user_id, "--ttl", "3600")
    assert session.returncode == 0, session.stderr
    value = session.stdout.strip()
    assert value.startswith("lds_")
    assert "\n" not in value
    digest = hashlib.sha256(value.encode()).hexdigest()
    (lifetime,) = _embedded_row(
        embedded_env,
        "SELECT (julianday(expires_at) - julianday(created_at)) * 86400 FROM sessions "
        "WHERE session_hash = :h",
        h=digest,
    )
    assert 3590 < lifetime < 3610

    token = run(embedded_env, "tokens", "create", "--org", org_id, "--user", user_id)
    token_id = token.stderr.split("created token ")[1].split()[0]
    revoked = run(embedded_env, "tokens", "revoke", token_id)
    assert (revoked.returncode, revoked.stdout) == (0, "")
    assert f"revoked token {token_id}" in revoked.stderr
    (revoked_at,) = _embedded_row(
        embedded_env, "SELECT revoked_at FROM api_tokens WHERE id = :id", id=token_id
    )
    assert revoked_at is not None
    missing = run(embedded_env, "tokens", "revoke", "tok_missing")
    assert (missing.returncode, missing.stdout) == (1, "")

    quota = run(embedded_env, "quota", "set", org_id, "25")
    assert (quota.returncode, quota.stdout) == (0, "")
    assert _embedded_row(
        embedded_env, "SELECT deploy_quota FROM organizations WHERE id = :id", id=org_id
    ) == (25,)
    assert run(embedded_env, "quota", "set", org_id, "default").stdout == ""
    assert _embedded_row(
        embedded_env, "SELECT deploy_quota FROM organizations WHERE id = :id", id=org_id
    ) == (None,)
    for bad_limit in ("lots", "²", str(2**31)):
        bad = run(embedded_env, "quota", "set", org_id, bad_limit)
        assert bad.returncode != 0, bad_limit
        assert bad.stdout == ""
        assert "Traceback" not in bad.stderr, bad.stderr


@pytest.mark.slow
def test_a_fresh_clone_runs_as_the_readme_says(tmp_path, embedded_env):
    """`git clone`, then `bin/up` (which installs into the clone's own .venv), then the README's
    requests, with its data in the clone's ./.libra. `bin/test` is the other README command: CI
    runs it on a fresh clone through .ci/run."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    env = {k: v for k, v in embedded_env.items() if k not in ("LIBRA_DATA_DIR", "VIRTUAL_ENV")}
    proc = subprocess.Popen(
        [str(clone / "bin" / "up")],
        cwd=clone,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    printed: list[str] = []
    # The installation takes a while: read what bin/up prints until it names the demo project.
    reader = threading.Thread(target=lambda: printed.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{env['PORT']}"
    try:
        deadline = time.monotonic() + 600
        while not any("Project:" in line for line in printed):
            assert proc.poll() is None, "".join(printed)
            assert time.monotonic() < deadline, "bin/up was not ready in 10 minutes:\n" + "".join(printed)
            time.sleep(0.5)
        token = next(line.split()[-1] for line in printed if "Token:" in line)
        project = next(line.split()[-1] for line in printed if "Project:" in line)
        headers = {"Authorization": f"Bearer {token}"}
        files = [
            {"path": "index.html", "content": "<link rel=stylesheet href=site.css><h1>Hello</h1>"},
            {"path": "site.css", "content": "h1 { color: teal }"},
        ]
        accepted = requests.post(
            f"{base}/deploy", json={"projectId": project, "initFiles": files}, headers=headers, timeout=30
        )
        assert accepted.status_code == 202, accepted.text
        status_url = f"{base}/deploy-status?id={accepted.json()['deploymentId']}"
        status: dict = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and status.get("status") not in ("completed", "failed"):
            time.sleep(0.1)
            status = requests.get(status_url, headers=headers, timeout=30).json()
        assert status["status"] == "completed", status
        assert requests.get(f"{base}/sites/{project}/", timeout=30).text.endswith("<h1>Hello</h1>")
        assert requests.get(f"{base}/docs", timeout=30).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        reader.join(10)
    assert code == 0, "".join(printed)
    assert (clone / ".libra").is_dir()
