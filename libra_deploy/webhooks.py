"""Webhooks: a project's URLs told, by a signed POST, when one of its deployments ends.

Events: ``deployment.completed``, ``deployment.failed``, ``deployment.cancelled``. Each webhook has a
secret, shown once when it is created; every request carries

``Libra-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``

(the scheme Stripe uses): a receiver recomputes the HMAC over the timestamp, a dot and the raw body,
compares it in constant time, and refuses timestamps older than a few minutes (replays). Also sent:
``Libra-Event`` (the event type) and ``Libra-Delivery`` (the delivery id, the same on every attempt:
a receiver that has seen it may answer 2xx and ignore the copy).

Secrets are stored encrypted under ENCRYPTION_KEY (:mod:`libra_deploy.secrets_at_rest`), sealed with
the webhook's id so that a ciphertext copied onto another webhook does not open there; a database
dump or a read-only SQL injection yields no key to sign with. A stored value starting with
``whsec_`` is a secret kept in plaintext before they were encrypted (revision 0009): it signs as is
until :func:`reencrypt_secrets` encrypts it.

Deliveries are an outbox: :func:`record_event` adds one row per webhook in the transaction that
finishes the deployment, the task layer publishes them after the commit, and the outbox relay
publishes any that were committed but never published. An attempt is a POST with a timeout; a 2xx
answer delivers, anything else is tried again with exponential backoff until WEBHOOK_MAX_ATTEMPTS,
except an error that another attempt would meet again (a secret no key decrypts), which fails the
delivery at once.

URLs must resolve to public addresses (unless WEBHOOK_ALLOW_PRIVATE=1): checked when the webhook is
created and again at every attempt, and the attempt connects to the very address it checked, so a
DNS answer that changes in between (DNS rebinding) cannot point it at the service's own network.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import random
import secrets
import socket
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from cryptography.fernet import MultiFernet
from requests.adapters import HTTPAdapter
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from libra_deploy import __version__, accounts, secrets_at_rest
from libra_deploy.auth import Principal
from libra_deploy.config import Settings
from libra_deploy.db import insert_ignoring_duplicates, utcnow
from libra_deploy.errors import ConfigError, InvalidInput, NotFound
from libra_deploy.models import Deployment, Webhook, WebhookDelivery, is_plausible_id, new_id
from libra_deploy.redact import redact_text

EVENTS = ("deployment.completed", "deployment.failed", "deployment.cancelled")
SECRET_PREFIX = "whsec_"  # noqa: S105 - marks secrets in leaked text, not a secret
SIGNATURE_HEADER = "Libra-Signature"
MAX_WEBHOOKS_PER_PROJECT = 20
MAX_DELAY_S = 3600.0
#: While an attempt runs, a copy of its message waits this long before it may send again.
ATTEMPT_LEASE = timedelta(minutes=2)


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


# Signing ------------------------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Libra-Signature`` header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


# Secrets at rest ----------------------------------------------------------------------------------


def _seal_secret(fernet: MultiFernet, webhook_id: str, secret: str) -> str:
    return secrets_at_rest.seal(fernet, secret, {"webhook": webhook_id})


def _is_plaintext(stored: str) -> bool:
    # Fernet tokens are URL-safe base64 starting with "gAAAAA": they never start with the prefix.
    return stored.startswith(SECRET_PREFIX)


def signing_secret(settings: Settings, webhook_id: str, stored: str) -> str:
    """The secret to sign with from its stored value; ValueError saying why it cannot be read.

    The error's message holds neither the secret nor its ciphertext.
    """
    if _is_plaintext(stored):
        return stored
    fernet = secrets_at_rest.keyring(settings)
    if fernet is None:
        raise ValueError(secrets_at_rest.missing_key("webhook secrets").message)
    return secrets_at_rest.unseal(fernet, stored, {"webhook": webhook_id})


@dataclass(frozen=True)
class Reencrypted:
    """What :func:`reencrypt_secrets` changed."""

    count: int
    #: Of those, the ones stored in plaintext until now.
    were_plaintext: int


def reencrypt_secrets(session: Session, settings: Settings) -> Reencrypted:
    """Encrypt every webhook secret with the first key of ENCRYPTION_KEY, plaintext ones included.

    After a rotation (a new key first, the old one after it) this lets the old key be dropped; after
    revision 0009 it encrypts the secrets stored before it.
    """
    fernet = secrets_at_rest.require_keyring(settings, "webhook secrets")
    changed = plaintext = 0
    for webhook in session.scalars(select(Webhook).with_for_update()):
        # Reading first proves a ciphertext belongs to this row before it is given a fresh one.
        try:
            secret = signing_secret(settings, webhook.id, webhook.secret)
        except ValueError as exc:
            raise ConfigError(
                "ENCRYPTION_KEY", f"cannot decrypt the secret of webhook {webhook.id}: {exc}"
            ) from None
        plaintext += _is_plaintext(webhook.secret)
        webhook.secret = _seal_secret(fernet, webhook.id, secret)
        changed += 1
    session.flush()
    return Reencrypted(changed, plaintext)


# Where requests may go ------------------------------------------------------------------------------


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_loopback)


def resolve(url: str, *, allow_private: bool) -> list[str]:
    """The addresses the URL's host resolves to, all of them allowed; InvalidInput otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("a webhook URL must be an absolute http or https URL", details={"field": "url"})
    if parts.username is not None or parts.password is not None:
        raise InvalidInput(
            "a webhook URL may not carry credentials; authenticate with the signature",
            details={"field": "url"},
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError):
        raise InvalidInput(
            f"the webhook host {parts.hostname} does not resolve", code="WEBHOOK_URL_UNRESOLVABLE"
        ) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        refused = [a for a in addresses if not _public(a)]
        if refused:
            raise InvalidInput(
                f"the webhook host {parts.hostname} resolves to a private, loopback or link-local "
                f"address ({refused[0]}); such URLs are refused",
                code="WEBHOOK_URL_NOT_ALLOWED",
                details={"field": "url"},
            )
    return addresses


class _PinnedAdapter(HTTPAdapter):
    """Connects to an address checked beforehand while TLS still verifies the URL's host name."""

    def __init__(self, hostname: str) -> None:
        self._hostname = hostname
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["server_hostname"] = self._hostname
        kwargs["assert_hostname"] = self._hostname
        super().init_poolmanager(*args, **kwargs)


@dataclass(frozen=True)
class AttemptResult:
    ok: bool
    status_code: int | None
    error: str | None
    #: False when another attempt would fail the same way: the delivery fails at once.
    retryable: bool = True


def post_event(
    url: str, secret: str, delivery_id: str, event: str, payload: dict[str, Any], settings: Settings
) -> AttemptResult:
    """POST the signed event once, to an address checked just now. Never raises for the receiver's sake."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    try:
        addresses = resolve(url, allow_private=settings.webhook_allow_private)
    except InvalidInput as exc:
        return AttemptResult(False, None, exc.message)
    parts = urlsplit(url)
    hostname = parts.hostname or ""
    address = addresses[0]
    shown = f"[{address}]" if ":" in address else address
    netloc = f"{shown}:{parts.port}" if parts.port else shown
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    host_header = hostname + (f":{parts.port}" if parts.port else "")
    headers = {
        "Host": host_header,
        "Content-Type": "application/json",
        "User-Agent": f"libra-deploy-webhooks/{__version__}",
        "Libra-Event": event,
        "Libra-Delivery": delivery_id,
        SIGNATURE_HEADER: sign(secret, int(time.time()), body),
    }
    with requests.Session() as http:
        http.mount(f"{parts.scheme}://", _PinnedAdapter(hostname))
        try:
            response = http.post(
                pinned, data=body, headers=headers, timeout=settings.webhook_timeout_s, allow_redirects=False
            )
        except requests.RequestException as exc:
            return AttemptResult(False, None, f"{type(exc).__name__}: {redact_text(str(exc))[:300]}")
    if 200 <= response.status_code < 300:
        return AttemptResult(True, response.status_code, None)
    return AttemptResult(False, response.status_code, f"the receiver answered {response.status_code}")


# Webhooks of a project ----------------------------------------------------------------------------


def _check_events(events: Sequence[str] | None) -> list[str]:
    chosen = list(dict.fromkeys(events or EVENTS))
    unknown = [e for e in chosen if e not in EVENTS]
    if unknown or not chosen:
        raise InvalidInput(
            f"events must be some of {', '.join(EVENTS)}", details={"field": "events", "unknown": unknown}
        )
    return chosen


def create(
    session: Session,
    settings: Settings,
    principal: Principal,
    project_id: str,
    url: str,
    *,
    events: Sequence[str] | None = None,
    description: str = "",
) -> tuple[Webhook, str]:
    """Add a webhook to the project; return it and its secret (the only time the secret is shown).

    The secret is stored encrypted: without ENCRYPTION_KEY in production nothing is added (503).
    """
    project = accounts.get_project(session, principal.org_id, project_id)
    if len(url) > 2048:
        raise InvalidInput("a webhook URL may be at most 2048 characters", details={"field": "url"})
    if any(unicodedata.category(c) == "Cc" for c in url):
        # No request could be sent to it (HTTP clients refuse them in a request line), and the
        # database refuses a NUL in text.
        raise InvalidInput(
            "a webhook URL may not contain control characters; percent-encode them",
            details={"field": "url"},
        )
    if "\0" in description:
        # PostgreSQL refuses NUL in text: said here, not as a database error.
        raise InvalidInput(
            "description: a description cannot hold NUL characters", details={"field": "description"}
        )
    resolve(url, allow_private=settings.webhook_allow_private)
    count = len(session.scalars(select(Webhook.id).where(Webhook.project_id == project.id)).all())
    if count >= MAX_WEBHOOKS_PER_PROJECT:
        raise InvalidInput(
            f"a project may have at most {MAX_WEBHOOKS_PER_PROJECT} webhooks", code="TOO_MANY_WEBHOOKS"
        )
    chosen_events = _check_events(events)
    fernet = secrets_at_rest.require_keyring(settings, "webhook secrets")
    # The id is chosen here, not at the flush: the secret is sealed with it.
    webhook_id = new_id("whk")
    secret = new_secret()
    webhook = Webhook(
        id=webhook_id,
        project_id=project.id,
        org_id=principal.org_id,
        url=url,
        secret=_seal_secret(fernet, webhook_id, secret),
        events=chosen_events,
        description=description.strip()[:200],
    )
    session.add(webhook)
    session.flush()
    return webhook, secret


def list_for_project(session: Session, principal: Principal, project_id: str) -> list[Webhook]:
    project = accounts.get_project(session, principal.org_id, project_id)
    return list(
        session.scalars(
            select(Webhook).where(Webhook.project_id == project.id).order_by(Webhook.created_at, Webhook.id)
        )
    )


def get(session: Session, principal: Principal, project_id: str, webhook_id: str) -> Webhook:
    project = accounts.get_project(session, principal.org_id, project_id)
    # An id that cannot be one (a NUL byte, a megabyte) is the same 404, without a query.
    webhook = session.get(Webhook, webhook_id) if is_plausible_id(webhook_id) else None
    if webhook is None or webhook.project_id != project.id:
        raise NotFound(f"webhook {webhook_id} does not exist", code="WEBHOOK_NOT_FOUND")
    return webhook


def remove(session: Session, principal: Principal, project_id: str, webhook_id: str) -> None:
    """Delete a webhook and its deliveries; attempts already queued find nothing and stop."""
    session.delete(get(session, principal, project_id, webhook_id))
    session.flush()


def deliveries(
    session: Session, principal: Principal, project_id: str, webhook_id: str, limit: int = 50
) -> list[WebhookDelivery]:
    """The webhook's deliveries, newest first."""
    webhook = get(session, principal, project_id, webhook_id)
    return list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.webhook_id == webhook.id)
            .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
            .limit(max(1, min(limit, 100)))
        )
    )


# The outbox ---------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def event_payload(deployment: Deployment, event: str, delivery_id: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        "deploymentId": deployment.id,
        "projectId": deployment.project_id,
        "orgId": deployment.org_id,
        "status": deployment.status,
        "createdAt": _iso(deployment.created_at),
        "finishedAt": _iso(deployment.finished_at or utcnow()),
    }
    if deployment.url:
        data["url"] = deployment.url
    if deployment.error_code:
        data["errorCode"] = deployment.error_code
        data["error"] = deployment.error_message
    return {"id": delivery_id, "type": event, "createdAt": _iso(utcnow()), "data": data}


def record_event(session: Session, deployment: Deployment, event: str) -> None:
    """Record one delivery per webhook of the project that wants ``event`` (caller's transaction).

    Recording the same event of the same deployment twice adds nothing.
    """
    hooks = session.execute(
        select(Webhook.id, Webhook.events).where(Webhook.project_id == deployment.project_id)
    ).all()
    rows = []
    for webhook_id, events in hooks:
        if event not in (events or EVENTS):
            continue
        delivery_id = new_id("whd")
        rows.append(
            {
                "id": delivery_id,
                "webhook_id": webhook_id,
                "deployment_id": deployment.id,
                "event": event,
                "payload": event_payload(deployment, event, delivery_id),
                "status": DeliveryStatus.PENDING,
                "attempts": 0,
                "created_at": utcnow(),
            }
        )
    insert_ignoring_duplicates(session, WebhookDelivery, rows)


def claim_unpublished(session: Session, deployment_id: str | None = None) -> list[str]:
    """Deliveries recorded but not published (of one deployment, or all); marked published here.

    The caller publishes them after its commit and hands back those the broker refused
    (:func:`mark_unpublished`), which the outbox relay then publishes.
    """
    query = select(WebhookDelivery.id).where(
        WebhookDelivery.published_at.is_(None), WebhookDelivery.status == DeliveryStatus.PENDING
    )
    if deployment_id is not None:
        query = query.where(WebhookDelivery.deployment_id == deployment_id)
    ids = list(session.scalars(query.limit(200).with_for_update(skip_locked=True)))
    if ids:
        now = utcnow()
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(ids))
            .values(published_at=now, next_attempt_at=now)
        )
    return ids


def claim_overdue(session: Session, settings: Settings, now: datetime) -> list[str]:
    """Pending deliveries whose next attempt is long overdue: their message was lost. Publish again."""
    overdue = now - timedelta(seconds=settings.pickup_timeout_s)
    ids = list(
        session.scalars(
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.status == DeliveryStatus.PENDING,
                WebhookDelivery.published_at.is_not(None),
                WebhookDelivery.next_attempt_at < overdue,
            )
            .limit(200)
            .with_for_update(skip_locked=True)
        )
    )
    if ids:
        session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id.in_(ids)).values(next_attempt_at=now)
        )
    return ids


def mark_unpublished(session: Session, delivery_ids: list[str]) -> None:
    if delivery_ids:
        session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id.in_(delivery_ids)).values(published_at=None)
        )


@dataclass(frozen=True)
class Attempt:
    delivery_id: str
    deployment_id: str
    webhook_id: str
    url: str
    #: As the database holds it (see :func:`signing_secret`); kept out of the repr all the same.
    stored_secret: str = field(repr=False)
    event: str
    payload: dict[str, Any]
    number: int


def begin_attempt(session: Session, delivery_id: str, now: datetime) -> Attempt | None:
    """Take the delivery for one attempt, or None: delivered, given up, deleted, or being sent."""
    delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if delivery is None or delivery.status != DeliveryStatus.PENDING:
        return None
    if delivery.attempt_started_at is not None and now - delivery.attempt_started_at < ATTEMPT_LEASE:
        return None
    webhook = session.get(Webhook, delivery.webhook_id)
    if webhook is None:
        return None
    delivery.attempts += 1
    delivery.attempt_started_at = now
    return Attempt(
        delivery.id,
        delivery.deployment_id,
        webhook.id,
        webhook.url,
        webhook.secret,
        delivery.event,
        dict(delivery.payload),
        delivery.attempts,
    )


def send(attempt: Attempt, settings: Settings) -> AttemptResult:
    """Sign the attempt's event with its webhook's secret and POST it once."""
    try:
        secret = signing_secret(settings, attempt.webhook_id, attempt.stored_secret)
    except ValueError as exc:
        # The next attempt would read the same value with the same keys: fail now, saying why.
        return AttemptResult(
            False, None, f"not sent: the webhook's secret cannot be decrypted: {exc}", retryable=False
        )
    return post_event(attempt.url, secret, attempt.delivery_id, attempt.event, attempt.payload, settings)


def retry_delay(attempts_so_far: int, base_s: float) -> float:
    """Exponential backoff with jitter: base, 2 x base, 4 x base... capped at an hour."""
    ceiling = min(MAX_DELAY_S, base_s * (2 ** max(attempts_so_far - 1, 0)))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


def finish_attempt(
    session: Session, settings: Settings, delivery_id: str, result: AttemptResult, now: datetime
) -> float | None:
    """Record an attempt's result; return the delay before the next attempt, or None when done."""
    delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if delivery is None:
        return None
    delivery.attempt_started_at = None
    delivery.last_status_code = result.status_code
    delivery.last_error = result.error
    if result.ok:
        delivery.status = DeliveryStatus.DELIVERED
        delivery.delivered_at = now
        delivery.next_attempt_at = None
        return None
    if not result.retryable or delivery.attempts >= settings.webhook_max_attempts:
        delivery.status = DeliveryStatus.FAILED
        delivery.next_attempt_at = None
        return None
    delay = retry_delay(delivery.attempts, settings.webhook_retry_base_delay_s)
    delivery.next_attempt_at = now + timedelta(seconds=delay)
    return delay


def describe_delivery(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "webhookId": delivery.webhook_id,
        "deploymentId": delivery.deployment_id,
        "event": delivery.event,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "lastStatusCode": delivery.last_status_code,
        "lastError": delivery.last_error,
        "createdAt": _iso(delivery.created_at),
        "deliveredAt": _iso(delivery.delivered_at),
        "nextAttemptAt": _iso(delivery.next_attempt_at)
        if delivery.status == DeliveryStatus.PENDING
        else None,
        "payload": delivery.payload,
    }


def describe_webhook(webhook: Webhook) -> dict[str, Any]:
    """A webhook as the API shows it after its creation: never with its secret."""
    return {
        "id": webhook.id,
        "projectId": webhook.project_id,
        "url": webhook.url,
        "events": list(webhook.events or EVENTS),
        "description": webhook.description,
        "createdAt": _iso(webhook.created_at),
    }
