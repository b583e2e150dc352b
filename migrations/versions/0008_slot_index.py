"""slot index: find the sandbox slots held without scanning every deployment

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 18:15:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SLOT_HELD = "slot_acquired_at IS NOT NULL AND slot_released_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.create_index(
            "ix_deployments_slot_held",
            ["slot_acquired_at"],
            unique=False,
            postgresql_where=sa.text(SLOT_HELD),
            sqlite_where=sa.text(SLOT_HELD),
        )


def downgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_deployments_slot_held",
            postgresql_where=sa.text(SLOT_HELD),
            sqlite_where=sa.text(SLOT_HELD),
        )
