"""Maintenance commands: ``libra-deploy gc``, ``libra-deploy reencrypt``."""

from __future__ import annotations

import json

import click

from libra_deploy import build_variables, migrate, webhooks
from libra_deploy.cli.operators import database
from libra_deploy.config import Settings
from libra_deploy.retention import collect_garbage
from libra_deploy.runtime import Runtime


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
def gc(dry_run: bool) -> None:
    """Remove expired deployments and the blobs nothing references any more.

    Keeps, per project, the newest RETENTION_KEEP deployments and every live, pinned or running
    one. Prints the report as JSON on stdout.
    """
    settings = Settings.from_env()
    if settings.is_embedded_database:
        migrate.upgrade(settings.database_url)
    runtime = Runtime.from_settings(settings)
    try:
        report = collect_garbage(runtime, dry_run=dry_run)
    finally:
        runtime.close()
    click.echo(json.dumps(report.as_dict(), indent=2))
    verb = "would remove" if dry_run else "removed"
    click.echo(
        f"gc {verb} {len(report.expired_deployments)} deployments and {len(report.deleted_blobs)} blobs; "
        f"{report.pending_blobs} unreferenced blobs wait for GC_BLOB_GRACE",
        err=True,
    )
    for error in report.errors:
        click.echo(f"libra-deploy: gc could not finish project {error}", err=True)
    if report.errors:
        raise SystemExit(1)


@click.command("reencrypt")
def reencrypt() -> None:
    """Encrypt every stored secret again with the first key of ENCRYPTION_KEY.

    Build variables and webhook secrets, in one transaction, including the webhook secrets stored
    in plaintext before they were encrypted. Rotating the key: put the new key first in
    ENCRYPTION_KEY and the old one after it, restart, run this, then drop the old key.
    """
    settings = Settings.from_env()
    with database() as session:
        variables_count = build_variables.reencrypt(session, settings)
        hooks = webhooks.reencrypt_secrets(session, settings)
    click.echo(
        f"re-encrypted {variables_count} build variables and {hooks.count} webhook secrets "
        f"({hooks.were_plaintext} of them stored in plaintext until now) with the first key of "
        "ENCRYPTION_KEY",
        err=True,
    )


@click.group()
def variables() -> None:
    """Build variables."""


# One key protects both kinds of secret, so one command re-encrypts both: a rotation cannot drop a
# key that webhook secrets still need. ``variables reencrypt`` is that same command, for the
# runbooks written before webhook secrets were encrypted.
variables.add_command(reencrypt)
