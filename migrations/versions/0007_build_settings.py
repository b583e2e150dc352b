"""build settings per project (commands, directories, Node.js hint), encrypted build variables

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 18:38:00.405029
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "project_variables",
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_project_variables_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "name", name=op.f("pk_project_variables")),
    )
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("build_variables", sa.JSON(), nullable=True))

    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("install_command", sa.String(length=1000), nullable=True))
        batch_op.add_column(sa.Column("build_command", sa.String(length=1000), nullable=True))
        batch_op.add_column(sa.Column("output_directory", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("root_directory", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("node_version", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("node_version")
        batch_op.drop_column("root_directory")
        batch_op.drop_column("output_directory")
        batch_op.drop_column("build_command")
        batch_op.drop_column("install_command")

    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("build_variables")

    op.drop_table("project_variables")
