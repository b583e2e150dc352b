"""source file count: a project's number of stored files, kept beside its manifest

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 11:00:00.000000

Showing a project (GET, POST and PATCH /projects/<id>) answers its file count; it was the length
of the stored manifest, parsed whole on every read. The upgrade counts the keys of every existing
manifest in the database itself, one statement, without moving a manifest to the migrating process.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Every project's count, from its manifest, in each dialect's JSON functions (a manifest is an
#: object; anything else counts no file).
FILL_COUNTS = {
    "postgresql": (
        "UPDATE projects SET source_file_count = "
        "(SELECT count(*) FROM json_object_keys(source_manifest)) "
        "WHERE json_typeof(source_manifest) = 'object'"
    ),
    "sqlite": (
        "UPDATE projects SET source_file_count = "
        "(SELECT count(*) FROM json_each(source_manifest)) "
        "WHERE json_type(source_manifest) = 'object'"
    ),
}


def upgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_file_count", sa.Integer(), server_default="0", nullable=False))
    op.execute(FILL_COUNTS[op.get_bind().dialect.name])


def downgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("source_file_count")
