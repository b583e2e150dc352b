"""Build variables: encrypted at rest, set and deleted by name, passed to the build, never shown anywhere."""

from __future__ import annotations

import json
import logging
import os
import stat
import uuid

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from libra_deploy import accounts, build_variables, secrets_at_rest
from libra_deploy.auth import Principal
from libra_deploy.config import Settings
from libra_deploy.db import transaction
from libra_deploy.deployments import DeployRequest, start_deployment
from libra_deploy.errors import ConfigError, StepError
from libra_deploy.models import DeploymentLog, ProjectVariable
from libra_deploy.redact import masker
from libra_deploy.steps.build import build_log_key
from libra_deploy.steps.cleanup import log_key
from tasks import pipeline
from tests.helpers import (
    cli,
    custom_app,
    deploy,
    make_tenant,
    migrated_sessions,
    new_project,
    text_files,
    wait_for,
)


def _put(client, tenant, project_id: str, name: str, value: str):
    return client.put(f"/projects/{project_id}/env/{name}", json={"value": value}, headers=tenant.headers)


def _names(client, tenant, project_id: str) -> list[str]:
    response = client.get(f"/projects/{project_id}/env", headers=tenant.headers)
    assert response.status_code == 200
    return [v["name"] for v in response.get_json()["variables"]]


def _secret() -> str:
    return f"s3cr3t-{uuid.uuid4().hex}"


# The API -----------------------------------------------------------------------------------------


def test_variables_are_set_listed_and_deleted_by_name_and_never_returned(client, runtime, tenant):
    project_id = new_project(runtime, tenant)
    secret = _secret()

    created = _put(client, tenant, project_id, "API_TOKEN", secret)
    changed = _put(client, tenant, project_id, "API_TOKEN", secret + "-2")
    _put(client, tenant, project_id, "PUBLIC_URL", "https://example.io")

    assert created.status_code == 200, created.get_json()
    assert created.get_json()["version"] == 1
    assert changed.get_json()["version"] == 2
    assert set(changed.get_json()) == {"name", "version", "createdAt", "updatedAt"}
    assert _names(client, tenant, project_id) == ["API_TOKEN", "PUBLIC_URL"]
    for response in (
        created,
        changed,
        client.get(f"/projects/{project_id}/env", headers=tenant.headers),
        client.get(f"/projects/{project_id}", headers=tenant.headers),
    ):
        assert secret not in response.get_data(as_text=True)

    assert client.delete(f"/projects/{project_id}/env/API_TOKEN", headers=tenant.headers).status_code == 204
    assert _names(client, tenant, project_id) == ["PUBLIC_URL"]
    missing = client.delete(f"/projects/{project_id}/env/API_TOKEN", headers=tenant.headers)
    assert missing.status_code == 404
    assert missing.get_json()["error"] == "VARIABLE_NOT_FOUND"


def test_another_organisations_variables_are_404(client, runtime, tenant):
    other = make_tenant(runtime)
    assert _put(client, other, other.project_id, "KEY_OF_OTHER", "value-of-other").status_code == 200
    assert client.get(f"/projects/{other.project_id}/env", headers=tenant.headers).status_code == 404
    assert _put(client, tenant, other.project_id, "X", "y").status_code == 404
    assert (
        client.delete(f"/projects/{other.project_id}/env/KEY_OF_OTHER", headers=tenant.headers).status_code
        == 404
    )
    assert client.get(f"/projects/{tenant.project_id}/env").status_code == 401


@pytest.mark.parametrize(
    "name",
    [
        "1ABC",
        "A-B",
        "A.B",
        "PATH",
        "Home",
        "TMPDIR",
        "LD_PRELOAD",
        "ld_library_path",
        "BASH_ENV",
        "GCONV_PATH",
    ],
)
def test_names_that_are_not_posix_or_that_the_sandbox_owns_are_refused(client, tenant, name):
    response = _put(client, tenant, tenant.project_id, name, "value")
    assert response.status_code == 400
    assert response.get_json()["error"] == "INVALID_VARIABLE_NAME"
    assert response.get_json()["details"]["field"] == "name"


def test_values_and_counts_are_limited(client, runtime, tenant):
    project_id = new_project(runtime, tenant)
    assert _put(client, tenant, project_id, "NUL", "a\x00b").status_code == 400
    big = _put(client, tenant, project_id, "BIG", "x" * (build_variables.MAX_TOTAL_BYTES + 1))
    assert big.status_code == 400
    assert big.get_json()["error"] == "VARIABLES_TOO_LARGE"
    for n in range(build_variables.MAX_VARIABLES):
        assert _put(client, tenant, project_id, f"V{n}", "1").status_code == 200
    too_many = _put(client, tenant, project_id, "ONE_MORE", "1")
    assert too_many.status_code == 400
    assert too_many.get_json()["error"] == "TOO_MANY_VARIABLES"
    assert _put(client, tenant, project_id, "V0", "changed").status_code == 200  # a change is no new one


def test_the_mask_hides_each_line_of_a_multi_line_value_but_not_short_values():
    mask = masker(["-----BEGIN KEY-----\nMIIEvQIBADANBgkq\n-----END KEY-----", "lengthy-secret", "short"])
    assert mask("token: lengthy-secret, again lengthy-secret") == "token: ***, again ***"
    assert mask("MIIEvQIBADANBgkq") == "***"
    assert (
        mask("the whole -----BEGIN KEY-----\nMIIEvQIBADANBgkq\n-----END KEY----- key") == "the whole *** key"
    )
    # Shorter than MIN_SECRET_LENGTH: masking it would hide ordinary words.
    assert mask("a short line") == "a short line"
    assert masker([])("unchanged") == "unchanged"


# Encryption --------------------------------------------------------------------------------------


def test_values_are_encrypted_at_rest_and_bound_to_their_variable(client, runtime, tenant):
    project_id = new_project(runtime, tenant)
    secret = _secret()
    _put(client, tenant, project_id, "FIRST", secret)
    _put(client, tenant, project_id, "SECOND", "another value")

    with transaction(runtime.sessions) as session:
        rows = {
            v.name: v
            for v in session.scalars(select(ProjectVariable).where(ProjectVariable.project_id == project_id))
        }
        assert secret not in rows["FIRST"].ciphertext
        assert build_variables.for_build(session, runtime.settings, project_id).values == {
            "FIRST": secret,
            "SECOND": "another value",
        }
        # A ciphertext copied onto another variable's row does not decrypt there.
        rows["SECOND"].ciphertext = rows["FIRST"].ciphertext
        session.flush()
        with pytest.raises(StepError) as raised:
            build_variables.for_build(session, runtime.settings, project_id)
        session.rollback()
    assert raised.value.code == "VARIABLE_UNREADABLE"
    assert "SECOND" in raised.value.message
    assert secret not in raised.value.message


def test_without_encryption_key_a_private_key_file_is_made_outside_production(tmp_path):
    settings = Settings.from_env({"LIBRA_DATA_DIR": str(tmp_path)})
    first = secrets_at_rest.keyring(settings)
    key_file = tmp_path / secrets_at_rest.KEY_FILE
    assert first is not None
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    token = first.encrypt(b"x")
    # Another process (a fresh cache) on the same directory gets the same key.
    secrets_at_rest._keyring.cache_clear()
    again = secrets_at_rest.keyring(settings)
    assert again is not None
    assert again.decrypt(token) == b"x"
    production = Settings.from_env({"LIBRA_DATA_DIR": str(tmp_path / "prod"), "ENVIRONMENT": "production"})
    assert secrets_at_rest.keyring(production) is None
    assert not (tmp_path / "prod" / secrets_at_rest.KEY_FILE).exists()


def test_in_production_without_encryption_key_variables_are_refused(client, settings, tenant):
    with custom_app(settings, environment="production", encryption_keys=()) as app:
        response = _put(app.test_client(), tenant, tenant.project_id, "X", "value")
    assert response.status_code == 503
    assert response.get_json()["error"] == "ENCRYPTION_KEY_MISSING"


def test_a_malformed_encryption_key_names_the_setting_and_not_the_value(tmp_path):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"LIBRA_DATA_DIR": str(tmp_path), "ENCRYPTION_KEY": "not-a-fernet-key-at-all"})
    assert raised.value.setting == "ENCRYPTION_KEY"
    assert "not-a-fernet-key-at-all" not in str(raised.value)


def test_keys_rotate_the_first_encrypts_and_any_decrypts(tmp_path):
    # A database of its own: re-encrypting touches every project's variables.
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    env = {"LIBRA_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'rotation.db'}"}

    def keyed(*keys: str) -> dict[str, str]:
        return {**os.environ, **env, "ENCRYPTION_KEY": ",".join(keys)}

    settings = Settings.from_env(keyed(old))
    with migrated_sessions(settings.database_url) as sessions:
        with transaction(sessions) as session:
            org = accounts.create_organization(session, "rotation")
            project = accounts.create_project(session, org.id, "rotated")
            build_variables.set_variable(session, settings, org.id, project.id, "ROTATED", "rotated value")
        with transaction(sessions) as session:
            both = Settings.from_env(keyed(new, old))
            assert build_variables.for_build(session, both, project.id).values == {"ROTATED": "rotated value"}
            with pytest.raises(StepError):
                build_variables.for_build(session, Settings.from_env(keyed(new)), project.id)

        result = cli("variables", "reencrypt", env=keyed(new, old))

        assert result.returncode == 0, result.stderr
        assert "re-encrypted 1 build variables" in result.stderr
        with transaction(sessions) as session:
            only_new = Settings.from_env(keyed(new))
            assert build_variables.for_build(session, only_new, project.id).values == {
                "ROTATED": "rotated value"
            }
            with pytest.raises(StepError):
                build_variables.for_build(session, Settings.from_env(keyed(old)), project.id)


# Through the pipeline -----------------------------------------------------------------------------

#: A build that prints the variable (on one line and inside a longer one) and writes it into the site.
SHOWS_SECRET = {
    "package.json": json.dumps({"scripts": {"build": "node build.js"}}),
    "build.js": (
        "const fs = require('fs'); fs.mkdirSync('dist', {recursive: true});"
        "console.log(process.env.API_SECRET);"
        "console.log('the secret is ' + process.env.API_SECRET + '!');"
        "console.error('install saw: ' + fs.readFileSync('install.txt', 'utf8').trim());"
        "fs.writeFileSync('dist/index.html', '<p>' + process.env.API_SECRET + '</p>');"
    ),
}


def _stored_logs(runtime, deployment_id: str) -> str:
    return "".join(
        runtime.store.get(key).decode() for key in (log_key(deployment_id), build_log_key(deployment_id))
    )


@pytest.mark.stack
@pytest.mark.slow
def test_a_variable_reaches_the_install_and_the_build_but_no_log_and_no_answer(
    client, runtime, worker, tenant, caplog
):
    # The service's own logs too: the web app and the worker (a thread here) log through logging.
    caplog.set_level(logging.INFO)
    project_id = new_project(runtime, tenant)
    secret = _secret()
    assert _put(client, tenant, project_id, "API_SECRET", secret).status_code == 200
    client.patch(
        f"/projects/{project_id}",
        json={"installCommand": "echo $API_SECRET > install.txt"},
        headers=tenant.headers,
    )

    deployment_id = deploy(client, tenant, SHOWS_SECRET, project_id=project_id)
    status = wait_for(client, tenant, deployment_id, timeout=120)

    assert status["status"] == "completed", status
    # The site shows it: the build had it.
    assert client.get(f"/sites/{project_id}/").get_data(as_text=True) == f"<p>{secret}</p>"
    # The API never returns it.
    answers = [
        status,
        client.get(f"/projects/{project_id}", headers=tenant.headers).get_json(),
        client.get(f"/projects/{project_id}/env", headers=tenant.headers).get_json(),
    ]
    assert all(secret not in json.dumps(answer) for answer in answers)
    assert status["buildVariables"] == {"API_SECRET": 1}
    # No log line holds it: not the database's, not the full log or the build log in the store.
    with runtime.sessions() as session:
        lines = session.scalars(
            select(DeploymentLog.message).where(DeploymentLog.deployment_id == deployment_id)
        ).all()
    assert lines
    assert not [line for line in lines if secret in line]
    assert "***" in lines
    assert "the secret is ***!" in lines
    assert "install saw: ***" in lines
    stored = _stored_logs(runtime, deployment_id)
    assert "the secret is ***!" in stored
    assert secret not in stored
    assert caplog.records
    assert secret not in caplog.text


@pytest.mark.slow
def test_a_node_version_variable_is_masked_in_the_steps_own_lines(client, runtime, worker, tenant):
    # The build step names the NODE_VERSION it was given when it compares it with the sandbox's Node.js.
    secret = _secret()
    assert _put(client, tenant, tenant.project_id, "NODE_VERSION", secret).status_code == 200
    site = {**SHOWS_SECRET, "install.txt": "none"}

    status = wait_for(client, tenant, deploy(client, tenant, site), timeout=120)

    assert status["status"] == "completed", status
    assert any(line.startswith("NODE_VERSION=*** is passed to the build") for line in status["logs"])
    assert secret not in json.dumps(status)
    assert secret not in _stored_logs(runtime, status["deploymentId"])


@pytest.mark.slow
def test_the_mask_is_the_deployments_own(client, runtime, worker, tenant):
    # Another organisation printing the same text sees it: masking tells nobody what others keep secret.
    other = make_tenant(runtime)
    secret = _secret()
    _put(client, tenant, tenant.project_id, "API_SECRET", secret)
    files = {**SHOWS_SECRET, "install.txt": "none"}
    masked = wait_for(client, tenant, deploy(client, tenant, files), timeout=120)
    files["build.js"] = files["build.js"].replace("process.env.API_SECRET", json.dumps(secret))
    plain = wait_for(client, other, deploy(client, other, files), timeout=120)

    assert masked["status"] == plain["status"] == "completed"
    assert f"the secret is {secret}!" in plain["logs"]
    assert "the secret is ***!" in masked["logs"]


@pytest.mark.slow
def test_a_failing_build_shows_its_output_masked_in_the_error(client, runtime, worker, tenant):
    secret = _secret()
    _put(client, tenant, tenant.project_id, "API_SECRET", secret)
    files = {
        "package.json": json.dumps({"scripts": {"build": "node fail.js"}}),
        "fail.js": "console.log('cannot log in with ' + process.env.API_SECRET); process.exit(1);",
    }

    status = wait_for(client, tenant, deploy(client, tenant, files), timeout=120)

    assert status["status"] == "failed"
    assert status["errorCode"] == "BUILD_FAILED"
    assert "cannot log in with ***" in status["error"]
    assert "cannot log in with ***" in status["steps"]["build"]["error"]
    assert secret not in json.dumps(status)


@pytest.mark.stack
@pytest.mark.slow
def test_a_variable_deleted_while_the_deployment_is_queued_is_not_there(client, runtime, worker, tenant):
    project_id = new_project(runtime, tenant)
    _put(client, tenant, project_id, "KEPT", "kept value")
    _put(client, tenant, project_id, "DROPPED", "dropped value")
    files = {
        "package.json": json.dumps({"scripts": {"build": "node build.js"}}),
        "build.js": "require('fs').mkdirSync('dist');"
        "require('fs').writeFileSync('dist/index.html', `${process.env.KEPT}|${process.env.DROPPED}`);",
    }
    # Recorded as POST /deploy records it, and not yet published: it waits in the queue.
    principal = Principal(tenant.org_id, tenant.user_id, "tok_test")
    request = DeployRequest(project_id=project_id, init_files=text_files(files))
    with transaction(runtime.sessions) as session:
        deployment_id = start_deployment(session, runtime.settings, runtime.store, principal, request).id

    assert client.delete(f"/projects/{project_id}/env/DROPPED", headers=tenant.headers).status_code == 204
    pipeline.start_deployment(deployment_id)
    status = wait_for(client, tenant, deployment_id, timeout=120)

    assert status["status"] == "completed", status
    assert client.get(f"/sites/{project_id}/").get_data(as_text=True) == "kept value|undefined"
    assert status["buildVariables"] == {"KEPT": 1}
    assert "Build variables: KEPT (v1)" in status["logs"]
