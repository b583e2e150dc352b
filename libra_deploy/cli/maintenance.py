"""Maintenance commands: ``libra-deploy gc``, ``libra-deploy variables reencrypt``."""

from __future__ import annotations

import json

import click

from libra_deploy import build_variables, migrate
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


@click.group()
def variables() -> None:
    """Build variables."""


@variables.command("reencrypt")
def reencrypt() -> None:
    """Encrypt every build variable again with the first key of ENCRYPTION_KEY.

    Rotating the key: put the new key first in ENCRYPTION_KEY and the old one after it, restart,
    run this, then drop the old key.
    """
    settings = Settings.from_env()
    with database() as session:
        count = build_variables.reencrypt(session, settings)
    click.echo(f"re-encrypted {count} build variables with the first key of ENCRYPTION_KEY", err=True)
