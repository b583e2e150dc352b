"""webhook secrets encrypted at rest: the column is wide enough for a Fernet token

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 10:00:00.000000

The revision widens the column and encrypts nothing. Encrypting needs ENCRYPTION_KEY, and a
migration cannot count on having it: ``libra-deploy migrate`` may run in a release job that holds
only DATABASE_URL, and outside production the key may be one generated into the migrating
machine's ``$LIBRA_DATA_DIR``, which the web and worker processes would not have. Secrets encrypted
under a key the service lacks would break every webhook. Instead the service reads a value that
starts with ``whsec_`` as a plaintext secret kept from before, and ``libra-deploy reencrypt`` (run
by the operator, with the service's keys) encrypts those rows.

The downgrade refuses while any secret is encrypted: revision 0008's code would sign with the
ciphertext, so every delivery would fail its receiver's check, and the narrower column cannot hold
a token anyway. Delete those webhooks (or restore a backup taken before the upgrade) first.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.alter_column(
            "secret", existing_type=sa.String(length=100), type_=sa.Text(), existing_nullable=False
        )


def downgrade() -> None:
    encrypted = op.get_bind().scalar(
        sa.text("SELECT count(*) FROM webhooks WHERE substr(secret, 1, 6) <> 'whsec_'")
    )
    if encrypted:
        raise RuntimeError(
            f"{encrypted} webhook secrets are encrypted, which revision 0008 cannot read; delete those "
            "webhooks (or restore a backup taken before revision 0009) and downgrade again"
        )
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.alter_column(
            "secret", existing_type=sa.Text(), type_=sa.String(length=100), existing_nullable=False
        )
