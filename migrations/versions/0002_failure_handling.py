"""failure handling

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 17:18:44.958771
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table("deployment_steps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("task_id", sa.String(length=64), nullable=True))

    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("slot_requested_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("slot_acquired_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("slot_released_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("sandbox_created_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("sandbox_destroyed_at", sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sandbox_provider", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("sandbox_provider")

    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("sandbox_destroyed_at")
        batch_op.drop_column("sandbox_created_at")
        batch_op.drop_column("slot_released_at")
        batch_op.drop_column("slot_acquired_at")
        batch_op.drop_column("slot_requested_at")
        batch_op.drop_column("cancel_requested_at")
        batch_op.drop_column("enqueued_at")

    with op.batch_alter_table("deployment_steps", schema=None) as batch_op:
        batch_op.drop_column("task_id")

    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_column("purged_at")
        batch_op.drop_column("published_at")
