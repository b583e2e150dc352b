"""providers: a deployment's URL at the target and its build artifact

(A project's own sandbox provider, projects.sandbox_provider, came with 0002.)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 17:31:34.701964
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("target_url", sa.String(length=2048), nullable=True))
        batch_op.add_column(sa.Column("artifact_key", sa.String(length=300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("artifact_key")
        batch_op.drop_column("target_url")
