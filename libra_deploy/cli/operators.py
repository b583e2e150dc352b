"""Operator commands: organisations, users, tokens, sessions, projects and quotas.

Each prints the one thing it creates on stdout (so ``ORG=$(libra-deploy orgs create acme)`` works),
nothing when it creates nothing, and explains itself on stderr.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import click
from sqlalchemy.orm import Session

from libra_deploy import accounts, auth, migrate, quota
from libra_deploy.config import Settings
from libra_deploy.db import make_engine, make_sessionmaker, transaction
from libra_deploy.registry import SANDBOX_PROVIDERS


@contextmanager
def database() -> Iterator[Session]:
    """A transaction on DATABASE_URL; the embedded SQLite database is created or upgraded first."""
    settings = Settings.from_env()
    if settings.is_embedded_database:
        migrate.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            yield session
    finally:
        engine.dispose()


@click.group()
def orgs() -> None:
    """Organisations."""


@orgs.command("create")
@click.argument("name")
def create_org(name: str) -> None:
    """Create an organisation; print its id."""
    with database() as session:
        org = accounts.create_organization(session, name)
    click.echo(f"created organisation {org.name}", err=True)
    click.echo(org.id)


@click.group()
def users() -> None:
    """Users of an organisation."""


@users.command("create")
@click.option("--org", "org_id", required=True, help="Organisation id (as printed by orgs create)")
@click.argument("email")
def create_user(org_id: str, email: str) -> None:
    """Create a user in an organisation; print its id."""
    with database() as session:
        user = accounts.create_user(session, org_id, email)
    click.echo(f"created user {user.email} in {org_id}", err=True)
    click.echo(user.id)


@click.group()
def tokens() -> None:
    """API tokens (Bearer credentials)."""


@tokens.command("create")
@click.option("--org", "org_id", required=True, help="Organisation id")
@click.option("--user", "user_id", required=True, help="User id (as printed by users create)")
@click.option("--name", default="", help="A label to recognise the token by")
def create_token(org_id: str, user_id: str, name: str) -> None:
    """Create an API token for a user; print the token (it is shown only this once)."""
    with database() as session:
        row, token = auth.create_token(session, org_id=org_id, user_id=user_id, name=name)
    click.echo(f"created token {row.id} for {user_id}; store it now, it cannot be shown again", err=True)
    click.echo(token)


@tokens.command("revoke")
@click.argument("token")
def revoke_token(token: str) -> None:
    """Revoke an API token, given by its id (tok_...) or by the token itself; print nothing."""
    with database() as session:
        row = auth.revoke_token(session, token)
    click.echo(f"revoked token {row.id}", err=True)


@click.group()
def sessions() -> None:
    """Browser sessions (the session cookie)."""


@sessions.command("create")
@click.option("--org", "org_id", required=True, help="Organisation id")
@click.option("--user", "user_id", required=True, help="User id")
@click.option(
    "--ttl",
    type=click.IntRange(min=60),
    default=None,
    help="Lifetime in seconds (default: SESSION_TTL, 14 days)",
)
def create_session(org_id: str, user_id: str, ttl: int | None) -> None:
    """Open a session for a user; print the value of its session cookie (shown only this once)."""
    lifetime = timedelta(seconds=ttl if ttl is not None else Settings.from_env().session_ttl_s)
    with database() as session:
        row, value = auth.create_session(session, org_id=org_id, user_id=user_id, ttl=lifetime)
    click.echo(
        f"created session {row.id} for {user_id}, valid until {row.expires_at:%Y-%m-%d %H:%M} UTC", err=True
    )
    click.echo(value)


@click.group("quota")
def quota_group() -> None:
    """Deploy quotas of organisations."""


@quota_group.command("set")
@click.argument("org_id", metavar="ORG")
@click.argument("limit", metavar="LIMIT")
def set_quota(org_id: str, limit: str) -> None:
    """Set an organisation's deployments per calendar month (a number, or 'default'); print nothing."""
    if limit == "default":
        value = None
    elif limit.isascii() and limit.isdigit():
        value = int(limit)
    else:
        raise click.BadParameter("must be a number of deployments, or 'default'", param_hint="LIMIT")
    with database() as session:
        quota.set_limit(session, org_id, value)
    shown = "the default (DEFAULT_DEPLOY_QUOTA)" if value is None else f"{value} deployments a month"
    click.echo(f"quota of {org_id} is {shown}", err=True)


@click.group()
def projects() -> None:
    """Projects of an organisation."""


@projects.command("create")
@click.option("--org", "org_id", required=True, help="Organisation id")
@click.option("--template", default=None, help="A template shipped with the service")
@click.option("--domain", "custom_domain", default=None, help="A custom domain to attach")
@click.option(
    "--sandbox-provider",
    type=click.Choice(list(SANDBOX_PROVIDERS)),
    default=None,
    help="Where the project builds (default: SANDBOX_BUILDER_DEFAULT_PROVIDER)",
)
@click.argument("name")
def create_project(
    org_id: str, name: str, template: str | None, custom_domain: str | None, sandbox_provider: str | None
) -> None:
    """Create a project; print its id."""
    with database() as session:
        project = accounts.create_project(
            session,
            org_id,
            name,
            template=template,
            custom_domain=custom_domain,
            sandbox_provider=sandbox_provider,
            settings=Settings.from_env(),
        )
    click.echo(f"created project {project.name} in {org_id}", err=True)
    click.echo(project.id)


COMMANDS = (orgs, users, tokens, sessions, projects, quota_group)
