"""The user CLI against a live `libra-deploy up`: deploy a folder, status, logs, rollback."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import requests

from libra_deploy.cli.user import collect
from tests.test_cli import CLI, _free_port, _start_up, _stop, run


@pytest.fixture
def up_env(tmp_path):
    """The environment of a `libra-deploy up` of the test's own (embedded database and broker)."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "PUBLIC_URL")
    }
    env.update({"LIBRA_DATA_DIR": str(tmp_path / "data"), "PORT": str(_free_port())})
    return env


def _user(env: dict[str, str], base: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        env={**env, "LIBRA_DEPLOY_URL": base, "LIBRA_DEPLOY_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_links_inside_the_folder_are_their_files_and_links_leading_out_are_left_out(tmp_path):
    secret = tmp_path / "outside" / "credentials"
    secret.parent.mkdir()
    secret.write_text("TOKEN=never-published")
    site = tmp_path / "site"
    (site / "assets").mkdir(parents=True)
    (site / "assets" / "logo.svg").write_text("<svg/>")
    (site / "index.html").write_text("<h1>hi</h1>")
    (site / "logo.svg").symlink_to("assets/logo.svg")
    (site / "env.txt").symlink_to("/proc/self/environ")
    (site / "assets" / "creds").symlink_to(secret)
    (site / "up").symlink_to("../outside/credentials")
    (site / "linked-dir").symlink_to(secret.parent)

    files, outside = collect(site.resolve())

    assert [path.relative_to(site).as_posix() for path in files] == [
        "index.html",
        "logo.svg",
        "assets/logo.svg",
    ]
    assert sorted(outside) == ["assets/creds", "env.txt", "up"]


@pytest.mark.slow
def test_deploy_a_folder_follow_it_and_roll_back(up_env, tmp_path):
    site = tmp_path / "site"
    (site / "assets").mkdir(parents=True)
    (site / "node_modules" / "left-pad").mkdir(parents=True)
    (site / "index.html").write_text("<h1>v1</h1>")
    (site / "assets" / "app.js").write_text("console.log('v1')")
    (site / "secret.env").write_text("TOKEN=do-not-ship")
    (site / "node_modules" / "left-pad" / "index.js").write_text("module.exports = 1")
    (site / ".gitignore").write_text("*.env\nnode_modules/\n")
    (site / "assets" / ".gitignore").write_text("*.map\n")
    (site / "assets" / "app.js.map").write_text("{}")

    proc, base = _start_up(up_env)
    try:
        org = run(up_env, "orgs", "create", "Cli").stdout.strip()
        user = run(up_env, "users", "create", "--org", org, "cli@example.io").stdout.strip()
        token = run(up_env, "tokens", "create", "--org", org, "--user", user).stdout.strip()
        project = run(up_env, "projects", "create", "--org", org, "cli-site").stdout.strip()

        first = subprocess.run(
            [CLI, "deploy", str(site), "--project", project, "--url", base, "--token", token],
            env=up_env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert first.returncode == 0, first.stderr
        url = first.stdout.strip()
        assert url == f"{base}/sites/{project}/"
        assert requests.get(url, timeout=30).text == "<h1>v1</h1>"
        assert requests.get(url + "assets/app.js", timeout=30).text == "console.log('v1')"
        for ignored in ("secret.env", "node_modules/left-pad/index.js", "assets/app.js.map"):
            assert requests.get(url + ignored, timeout=30).status_code == 404, ignored
        assert "uploaded 4" in first.stderr  # index.html, app.js and the two .gitignore files
        assert "Publishing build output" in first.stderr  # the live log was shown

        (site / "index.html").write_text("<h1>v2</h1>")
        second = _user(up_env, base, token, "deploy", str(site), "--project", project)
        assert second.returncode == 0, second.stderr
        assert "uploaded 1" in second.stderr  # only what changed
        assert requests.get(url, timeout=30).text == "<h1>v2</h1>"

        history = requests.get(
            f"{base}/projects/{project}/deployments", headers={"Authorization": f"Bearer {token}"}, timeout=30
        ).json()["deployments"]
        newest = history[0]["deploymentId"]
        status = _user(up_env, base, token, "status", newest, "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["status"] == "completed"
        logs = _user(up_env, base, token, "logs", newest)
        assert "Deployment completed" in logs.stdout
        followed = _user(up_env, base, token, "logs", newest, "--follow")
        assert followed.returncode == 0
        assert followed.stdout == logs.stdout

        back = _user(up_env, base, token, "rollback", "--project", project)
        assert back.returncode == 0, back.stderr
        assert back.stdout.strip() == url
        assert requests.get(url, timeout=30).text == "<h1>v1</h1>"

        (site / "package.json").write_text(json.dumps({"scripts": {"build": 'node -e "process.exit(4)"'}}))
        broken = _user(up_env, base, token, "deploy", str(site), "--project", project)
        assert broken.returncode == 1
        assert broken.stdout == ""
        assert "failed" in broken.stderr
        assert "exited with code 4" in broken.stderr
    finally:
        code, _err = _stop(proc)
    assert code == 0
