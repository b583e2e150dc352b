"""Webhooks: signed events to a receiver on loopback, retries, the outbox, and refused addresses."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select, text

from libra_deploy import accounts, webhooks
from libra_deploy.auth import Principal
from libra_deploy.config import Settings
from libra_deploy.db import transaction
from libra_deploy.errors import InvalidInput
from libra_deploy.models import Deployment, Webhook, WebhookDelivery
from tasks.recovery import relay_outbox
from tests.conftest import PG_ADMIN_URL, _pg_url
from tests.helpers import (
    cli,
    custom_app,
    deploy,
    deploy_completed,
    failing_build,
    migrated_sessions,
    new_project,
    slow_printing_build,
    wait_for,
)
from tests.service import wait_until

SITE = {"index.html": "<h1>hooked</h1>"}


class Receiver:
    """An HTTP receiver on loopback that checks each request's signature itself."""

    def __init__(self, fail_first: int = 0) -> None:
        self.secret = ""
        self.fail_first = fail_first
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    receiver.requests.append(
                        {
                            "headers": dict(self.headers),
                            "body": body,
                            "valid": receiver.verify(self.headers, body),
                        }
                    )
                    failing = len(receiver.requests) <= receiver.fail_first
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/libra"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def verify(self, headers, body: bytes) -> bool:
        parts = dict(item.split("=", 1) for item in headers["Libra-Signature"].split(","))
        timestamp = int(parts["t"])
        expected = hmac.new(self.secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, parts["v1"]) and abs(time.time() - timestamp) < 300

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(fail_first: int = 0) -> Receiver:
        made.append(Receiver(fail_first))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _add_webhook(client, tenant, project_id, receiver, **extra):
    response = client.post(
        f"/projects/{project_id}/webhooks", json={"url": receiver.url, **extra}, headers=tenant.headers
    )
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    receiver.secret = body["secret"]
    return body


def _deliveries(client, tenant, project_id, webhook_id):
    response = client.get(f"/projects/{project_id}/webhooks/{webhook_id}/deliveries", headers=tenant.headers)
    assert response.status_code == 200
    return response.get_json()["deliveries"]


@pytest.mark.stack
def test_a_completed_deployment_is_posted_signed_to_the_receiver(client, runtime, tenant, worker, receiver):
    project = new_project(runtime, tenant)
    hook = receiver()
    created = _add_webhook(client, tenant, project, hook)
    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["deployment.completed", "deployment.failed", "deployment.cancelled"]

    listed = client.get(f"/projects/{project}/webhooks", headers=tenant.headers).get_json()["webhooks"]
    assert [w["id"] for w in listed] == [created["id"]]
    assert "secret" not in listed[0]

    deployment_id = deploy_completed(client, tenant, SITE, project_id=project)
    wait_until(lambda: hook.requests, 30, "the webhook request")
    (request,) = hook.requests
    assert request["valid"], "the signature does not verify"
    assert request["headers"]["Libra-Event"] == "deployment.completed"
    event = json.loads(request["body"])
    assert event["type"] == "deployment.completed"
    assert event["data"]["deploymentId"] == deployment_id
    assert event["data"]["status"] == "completed"
    assert event["data"]["url"].endswith(f"/sites/{project}/")
    assert event["id"] == request["headers"]["Libra-Delivery"]

    (delivery,) = wait_until(
        lambda: [
            d for d in _deliveries(client, tenant, project, created["id"]) if d["status"] == "delivered"
        ],
        30,
        "the delivery to be recorded",
    )
    assert delivery["attempts"] == 1
    assert delivery["lastStatusCode"] == 200
    assert delivery["deploymentId"] == deployment_id


def test_a_receiver_failing_twice_gets_the_event_delivered_once_on_the_third_attempt(
    client, runtime, tenant, worker, receiver
):
    project = new_project(runtime, tenant)
    hook = receiver(fail_first=2)
    created = _add_webhook(client, tenant, project, hook)
    deploy_completed(client, tenant, SITE, project_id=project)

    wait_until(lambda: len(hook.requests) >= 3, 60, "three attempts")
    time.sleep(1)  # a fourth request would come within this if the success were not recorded
    assert len(hook.requests) == 3
    assert all(r["valid"] for r in hook.requests)
    assert len({r["headers"]["Libra-Delivery"] for r in hook.requests}) == 1
    assert len({r["body"] for r in hook.requests}) == 1  # the same event each time

    (delivery,) = wait_until(
        lambda: [
            d for d in _deliveries(client, tenant, project, created["id"]) if d["status"] == "delivered"
        ],
        30,
        "the delivery",
    )
    assert delivery["attempts"] == 3
    assert delivery["lastStatusCode"] == 200
    with runtime.sessions() as session:
        rows = session.query(WebhookDelivery).filter_by(webhook_id=created["id"]).all()
    assert [(r.event, r.status) for r in rows] == [("deployment.completed", "delivered")]


def test_failed_and_cancelled_deployments_send_their_events(client, runtime, tenant, worker, receiver):
    project = new_project(runtime, tenant)
    hook = receiver()
    _add_webhook(client, tenant, project, hook, events=["deployment.failed", "deployment.cancelled"])

    failed = deploy(client, tenant, failing_build(), project_id=project)
    assert wait_for(client, tenant, failed)["status"] == "failed"
    running = deploy(client, tenant, slow_printing_build(40, 0.25), project_id=project, replaceFiles=True)
    assert client.post(f"/deployments/{running}/cancel", headers=tenant.headers).status_code == 202

    wait_until(lambda: len(hook.requests) >= 2, 30, "two events")
    events = sorted((json.loads(r["body"]) for r in hook.requests), key=lambda e: e["type"])
    assert [(e["type"], e["data"]["deploymentId"]) for e in events] == [
        ("deployment.cancelled", running),
        ("deployment.failed", failed),
    ]
    assert events[1]["data"]["errorCode"] == "BUILD_FAILED"
    assert all(r["valid"] for r in hook.requests)

    # Only the events asked for: a completed deployment sends nothing to this webhook.
    deploy_completed(client, tenant, SITE, project_id=project, replaceFiles=True)
    time.sleep(1)
    assert len(hook.requests) == 2


def test_the_outbox_relay_publishes_deliveries_recorded_but_never_published(
    client, runtime, tenant, worker, receiver
):
    project = new_project(runtime, tenant)
    deployment_id = deploy_completed(client, tenant, SITE, project_id=project)
    hook = receiver()
    _add_webhook(client, tenant, project, hook)
    # As if the process died between the commit that recorded the event and its publish.
    with transaction(runtime.sessions) as session:
        webhooks.record_event(session, session.get(Deployment, deployment_id), "deployment.completed")
    time.sleep(0.5)
    assert hook.requests == []

    relay_outbox(runtime)

    wait_until(lambda: hook.requests, 30, "the relayed event")
    assert json.loads(hook.requests[0]["body"])["data"]["deploymentId"] == deployment_id


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[fd00::1]/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_private_loopback_and_link_local_addresses_are_refused(url):
    with pytest.raises(InvalidInput) as refused:
        webhooks.resolve(url, allow_private=False)
    assert refused.value.code == "WEBHOOK_URL_NOT_ALLOWED"


def test_public_addresses_and_bad_urls():
    assert webhooks.resolve("https://93.184.216.34/hook", allow_private=False) == ["93.184.216.34"]
    for url in ("ftp://93.184.216.34/x", "https://user:pw@93.184.216.34/x", "/relative"):
        with pytest.raises(InvalidInput):
            webhooks.resolve(url, allow_private=False)


def test_the_address_is_checked_again_when_sending(settings, receiver):
    hook = receiver()
    strict = dataclasses.replace(settings, webhook_allow_private=False)
    result = webhooks.post_event(hook.url, "whsec_x", "whd_test", "deployment.completed", {"id": "x"}, strict)
    assert not result.ok
    assert "private" in (result.error or "")
    assert hook.requests == []


def test_creating_a_webhook_validates_it_and_deleting_removes_it(client, runtime, tenant, receiver):
    project = new_project(runtime, tenant)
    bad = client.post(f"/projects/{project}/webhooks", json={"url": "not a url"}, headers=tenant.headers)
    assert bad.status_code == 400
    unknown_event = client.post(
        f"/projects/{project}/webhooks",
        json={"url": "http://127.0.0.1:9/x", "events": ["deployment.exploded"]},
        headers=tenant.headers,
    )
    assert unknown_event.status_code == 400
    created = _add_webhook(client, tenant, project, receiver())
    gone = client.delete(f"/projects/{project}/webhooks/{created['id']}", headers=tenant.headers)
    assert gone.status_code == 200
    assert client.get(f"/projects/{project}/webhooks", headers=tenant.headers).get_json()["webhooks"] == []
    again = client.delete(f"/projects/{project}/webhooks/{created['id']}", headers=tenant.headers)
    assert again.status_code == 404


# Secrets at rest ----------------------------------------------------------------------------------


def _stored_secret(runtime, webhook_id: str) -> str:
    with runtime.sessions() as session:
        return session.scalars(select(Webhook.secret).where(Webhook.id == webhook_id)).one()


@pytest.mark.stack
def test_the_secret_is_stored_encrypted_and_deliveries_verify_with_the_one_shown(
    client, runtime, tenant, worker, receiver
):
    project = new_project(runtime, tenant)
    hook = receiver()
    created = _add_webhook(client, tenant, project, hook)

    stored = _stored_secret(runtime, created["id"])
    assert created["secret"] not in stored
    assert created["secret"].removeprefix("whsec_") not in stored
    assert webhooks.signing_secret(runtime.settings, created["id"], stored) == created["secret"]

    deploy_completed(client, tenant, SITE, project_id=project)
    wait_until(lambda: hook.requests, 30, "the webhook request")
    assert hook.requests[0]["valid"], "the signature does not verify with the secret shown at creation"


def test_a_ciphertext_copied_onto_another_webhook_fails_its_delivery_at_once_and_shows_neither(
    client, runtime, tenant, worker, receiver, caplog
):
    caplog.set_level(logging.INFO)
    project = new_project(runtime, tenant)
    honest, moved = receiver(), receiver()
    source = _add_webhook(client, tenant, project, honest)
    target = _add_webhook(client, tenant, project, moved)
    ciphertext = _stored_secret(runtime, source["id"])
    # Whoever can write to the database but not read the key puts a known secret onto another row.
    with transaction(runtime.sessions) as session:
        session.get(Webhook, target["id"]).secret = ciphertext

    deploy_completed(client, tenant, SITE, project_id=project)

    (failed,) = wait_until(
        lambda: [d for d in _deliveries(client, tenant, project, target["id"]) if d["status"] == "failed"],
        30,
        "the delivery with the moved secret to fail",
    )
    wait_until(lambda: honest.requests, 30, "the other webhook's request")
    assert honest.requests[0]["valid"]
    assert moved.requests == []
    # The next attempt would read the same row with the same keys: no retries.
    assert failed["attempts"] == 1
    assert "cannot be decrypted" in failed["lastError"]
    assert "another row" in failed["lastError"]
    shown = json.dumps(_deliveries(client, tenant, project, target["id"])) + caplog.text
    assert "cannot be decrypted" in caplog.text
    for secret in (ciphertext, source["secret"], target["secret"]):
        assert secret not in shown


def test_in_production_without_encryption_key_no_webhook_is_created(client, runtime, settings, tenant):
    project = new_project(runtime, tenant)
    with custom_app(settings, environment="production", encryption_keys=()) as app:
        response = app.test_client().post(
            f"/projects/{project}/webhooks", json={"url": "http://127.0.0.1:9/hook"}, headers=tenant.headers
        )
    assert response.status_code == 503
    assert response.get_json()["error"] == "ENCRYPTION_KEY_MISSING"
    assert "webhook secrets need ENCRYPTION_KEY" in response.get_json()["message"]
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).where(Webhook.project_id == project)) == 0


def test_in_production_without_encryption_key_an_encrypted_secret_is_not_sent_nor_retried(
    client, runtime, settings, tenant, receiver
):
    project = new_project(runtime, tenant)
    hook = receiver()
    created = _add_webhook(client, tenant, project, hook)
    production = dataclasses.replace(settings, environment="production", encryption_keys=())

    stored = _stored_secret(runtime, created["id"])

    result = webhooks.send(_attempt(created["id"], stored, hook), production)

    assert not result.ok
    assert not result.retryable
    assert "ENCRYPTION_KEY" in (result.error or "")
    assert stored not in (result.error or "")
    assert hook.requests == []


def _attempt(webhook_id: str, stored_secret: str, hook: Receiver) -> webhooks.Attempt:
    return webhooks.Attempt(
        delivery_id="whd_test",
        deployment_id="dep_test",
        webhook_id=webhook_id,
        url=hook.url,
        stored_secret=stored_secret,
        event="deployment.completed",
        payload={"id": "whd_test"},
        number=1,
    )


@pytest.fixture
def own_database():
    """A PostgreSQL database of the test's own: re-encrypting touches every webhook of a database."""
    name = f"libra_webhook_keys_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _pg_url(name)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_reencrypt_encrypts_plaintext_secrets_and_moves_old_key_ones_to_the_first_key(own_database, receiver):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()

    def keyed(*keys: str) -> dict[str, str]:
        return {**os.environ, "DATABASE_URL": own_database, "ENCRYPTION_KEY": ",".join(keys)}

    def signs(keys: tuple[str, ...], webhook_id: str, secret: str) -> bool:
        hook.secret = secret
        result = webhooks.send(
            _attempt(webhook_id, stored[webhook_id], hook), Settings.from_env(keyed(*keys))
        )
        return result.ok and hook.requests[-1]["valid"]

    def read_stored() -> dict[str, str]:
        with sessions() as session:
            return {row.id: row.secret for row in session.execute(select(Webhook.id, Webhook.secret))}

    hook = receiver()
    settings = Settings.from_env(keyed(old))
    with migrated_sessions(settings.database_url) as sessions:
        with transaction(sessions) as session:
            org = accounts.create_organization(session, "keys")
            project = accounts.create_project(session, org.id, "hooked")
            principal = Principal(org.id, "usr_test", "tok_test")
            encrypted, encrypted_secret = webhooks.create(session, settings, principal, project.id, hook.url)
            legacy, _ = webhooks.create(session, settings, principal, project.id, hook.url)
            encrypted_id, legacy_id = encrypted.id, legacy.id
        # As revision 0008 stored it.
        legacy_secret = webhooks.new_secret()
        with transaction(sessions) as session:
            session.execute(
                text("UPDATE webhooks SET secret = :secret WHERE id = :id"),
                {"secret": legacy_secret, "id": legacy_id},
            )
        stored = read_stored()
        assert signs((new, old), encrypted_id, encrypted_secret)
        assert signs((new, old), legacy_id, legacy_secret)

        result = cli("reencrypt", env=keyed(new, old))

        assert result.returncode == 0, result.stderr
        assert "re-encrypted 0 build variables and 2 webhook secrets (1 of them stored in plaintext" in (
            result.stderr
        )
        stored = read_stored()
        assert legacy_secret not in stored[legacy_id]
        for webhook_id, secret in ((encrypted_id, encrypted_secret), (legacy_id, legacy_secret)):
            assert signs((new,), webhook_id, secret)
            with pytest.raises(ValueError, match="none of the keys"):
                webhooks.signing_secret(Settings.from_env(keyed(old)), webhook_id, stored[webhook_id])
        # The alias the runbooks written for build variables call does the same.
        again = cli("variables", "reencrypt", env=keyed(new))
        assert "and 2 webhook secrets (0 of them stored in plaintext" in again.stderr
