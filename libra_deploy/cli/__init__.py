"""The ``libra-deploy`` command: the composition root of the service.

Operator commands are scriptable: they print only what they create (an id, a token) on stdout and
everything else on stderr; they exit 0 on success and 1 with one clear line otherwise. They work
against DATABASE_URL (the embedded SQLite file by default), also while ``libra-deploy up`` runs on
the same LIBRA_DATA_DIR. Web and task modules are imported inside the commands that need them.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from libra_deploy.errors import LibraError


class Group(click.Group):
    """A click group whose commands turn every expected error into one line on stderr and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LibraError as exc:
            click.echo(f"libra-deploy: {exc.message}", err=True)
            sys.exit(1)


@click.group(cls=Group)
@click.version_option(package_name="libra-deploy")
def main() -> None:
    """Deploy projects through a queue of six steps: validate, sync, sandbox, build, deploy, cleanup."""


def _register() -> None:
    from libra_deploy.cli import dlq, maintenance, operators, up, user

    for command in (
        *operators.COMMANDS,
        *user.COMMANDS,
        dlq.dlq,
        maintenance.gc,
        maintenance.reencrypt,
        up.up,
        up.migrate_command,
    ):
        main.add_command(command)
    main.add_command(maintenance.variables)


_register()
