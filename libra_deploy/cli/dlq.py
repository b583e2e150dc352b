"""``libra-deploy dlq``: look at, replay and purge the dead-letter queue.

A dead letter is a deployment step that failed for good after its retries (or whose worker died on
every attempt). ``list`` and ``show`` do not consume anything. ``replay`` puts a failed deployment
back in the queue to resume at the failed step (``--from-start``: at validate) and closes its dead
letters in the same transaction, publishes it, and only then acknowledges the dead-letter message;
a publish the broker refuses is left to the outbox relay. ``purge`` drops them all.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from libra_deploy import dead_letters
from libra_deploy.config import Settings
from libra_deploy.db import transaction, utcnow
from libra_deploy.errors import LibraError
from libra_deploy.models import Deployment
from libra_deploy.runtime import Runtime


@contextmanager
def _runtime() -> Iterator[Runtime]:
    runtime = Runtime.from_settings(Settings.from_env())
    try:
        yield runtime
    finally:
        runtime.close()


def _entries(runtime: Runtime) -> dict[str, dict[str, Any]]:
    """Pending dead letters: those recorded in the database, and any only the broker holds."""
    from tasks import dead_letters as broker

    entries: dict[str, dict[str, Any]] = {}
    held = broker.peek()
    with runtime.sessions() as session:
        for letter in dead_letters.pending(session):
            entries[letter.id] = {**letter.message, "deadLetteredAt": letter.created_at}
        # A replay closes its letters before it takes their messages off the broker, which may be
        # away then: such a copy is no dead letter any more.
        closed = dead_letters.closed_among(session, [envelope["id"] for envelope in held])
    for envelope in held:
        if envelope["id"] not in closed:
            entries.setdefault(envelope["id"], {**envelope, "deadLetteredAt": None})
    return entries


def _age(when: datetime | None) -> str:
    if when is None:
        return "?"
    seconds = int((datetime.now(UTC) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@click.group()
def dlq() -> None:
    """The dead-letter queue: deployments that failed for good after their retries."""


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table")
def list_letters(as_json: bool) -> None:
    """List the dead letters (nothing is consumed)."""
    with _runtime() as runtime:
        entries = sorted(_entries(runtime).values(), key=lambda e: str(e.get("failedAt") or ""))
    if as_json:
        click.echo(json.dumps(entries, default=str, indent=2))
        return
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "DEPLOYMENT", "STEP"):
        table.add_column(column, no_wrap=True)
    table.add_column("ERROR")
    table.add_column("AGE", no_wrap=True, justify="right")
    for entry in entries:
        error = entry.get("error") or {}
        table.add_row(
            entry["id"],
            str(entry.get("deploymentId")),
            str(entry.get("step")),
            f"{error.get('code', '')}: {error.get('message', '')}"[:80],
            _age(entry.get("deadLetteredAt")),
        )
    # Piped into another program, the table is not cut to a terminal's width.
    Console(width=None if sys.stdout.isatty() else 240).print(table)
    click.echo(f"{len(entries)} dead letter(s)", err=True)


@dlq.command("show")
@click.argument("letter_id")
def show(letter_id: str) -> None:
    """Print one dead letter's whole message."""
    with _runtime() as runtime:
        entry = _entries(runtime).get(letter_id)
        if entry is None:
            with runtime.sessions() as session:
                entry = dead_letters.get(session, letter_id).message
    entry = {k: v for k, v in entry.items() if k != "deadLetteredAt"}
    click.echo(json.dumps(entry, indent=2, default=str))


@dlq.command("replay")
@click.argument("letter_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter")
@click.option("--from-start", is_flag=True, help="Run the whole deployment again, from validate")
def replay(letter_id: str | None, replay_all: bool, from_start: bool) -> None:
    """Resume dead-lettered deployments at their failed step; print the replayed deployment ids."""
    if bool(letter_id) == replay_all:
        raise click.UsageError("give one dead letter id, or --all")
    with _runtime() as runtime:
        entries = _entries(runtime)
        if letter_id is not None:
            if letter_id not in entries:
                raise LibraError(f"dead letter {letter_id} is not in the queue (replayed, purged or unknown)")
            chosen = [entries[letter_id]]
        else:
            chosen = sorted(entries.values(), key=lambda e: str(e.get("failedAt") or ""))
        refused = 0
        #: Letters closed by a replay of their deployment earlier in this run (--all).
        closed: set[str] = set()
        for entry in chosen:
            if entry["id"] in closed:
                continue
            try:
                plan = _replay_one(runtime, entry, from_start=from_start)
            except LibraError as exc:
                refused += 1
                click.echo(f"libra-deploy: not replaying {entry['id']}: {exc.message}", err=True)
                continue
            closed.update(plan.closed)
            click.echo(plan.deployment_id)
    if refused:
        sys.exit(1)


def _replay_one(runtime: Runtime, envelope: dict[str, Any], *, from_start: bool) -> dead_letters.Replay:
    from tasks import dead_letters as broker
    from tasks.pipeline import start_deployment

    with transaction(runtime.sessions) as session:
        letter = dead_letters.ingest(session, {k: v for k, v in envelope.items() if k != "deadLetteredAt"})
        plan = dead_letters.prepare_replay(session, runtime.settings, letter, from_start=from_start)
    # Committed: the deployment is queued again and its letters are closed, whatever happens next.
    try:
        start_deployment(plan.deployment_id, plan.start)
    except Exception as exc:
        # Replayed all the same: the outbox relay publishes it when the broker answers.
        click.echo(
            f"libra-deploy: the broker refused the replay of {plan.deployment_id} ({type(exc).__name__}); "
            "it is queued and the outbox relay will publish it",
            err=True,
        )
    else:
        with transaction(runtime.sessions) as session:
            deployment = session.get(Deployment, plan.deployment_id)
            if deployment is not None:
                deployment.enqueued_at = utcnow()
    # Only once the deployment is queued again do its dead letters leave the broker's queue. A copy
    # left there (the broker is away) is no longer listed: its letter is closed.
    try:
        broker.take(lambda e: e["id"] in plan.closed)
    except Exception as exc:
        click.echo(
            f"libra-deploy: could not take {', '.join(plan.closed)} off the dead-letter queue "
            f"({type(exc).__name__}); closed all the same",
            err=True,
        )
    return plan


@dlq.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation")
def purge(yes: bool) -> None:
    """Drop every dead letter (the deployments stay failed)."""
    from tasks import dead_letters as broker

    with _runtime() as runtime:
        entries = _entries(runtime)
        if not entries:
            click.echo("the dead-letter queue is empty", err=True)
            return
        if not yes:
            click.confirm(f"Drop {len(entries)} dead letter(s)?", abort=True, err=True)
        broker.take(lambda _e: True)
        with transaction(runtime.sessions) as session:
            dead_letters.mark_purged(session, list(entries))
    click.echo(f"purged {len(entries)} dead letter(s)", err=True)
