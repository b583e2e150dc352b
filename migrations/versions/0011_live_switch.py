"""live switch: when the deploy step began switching the live site to a deployment

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 10:00:00.000000

A cancel and the switch of the live site are decided under the deployment's row lock: the deploy
step records ``live_switch_at`` right before it switches the live site, unless the deployment was
cancelled; cancel refuses a deployment whose switch has begun. Existing rows stay NULL: a deployment
whose deploy step completed is refused by that step's state.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("live_switch_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("live_switch_at")
