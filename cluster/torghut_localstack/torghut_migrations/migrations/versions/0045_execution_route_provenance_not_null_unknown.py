"""Route provenance from here on is never NULL: what is still NULL becomes 'unknown' (the "missing" value), and
both adapter columns become NOT NULL DEFAULT 'unknown'."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0045_execution_route_provenance_not_null_unknown"
down_revision = "0011_autonomy_lifecycle_and_promotion_audit"
branch_labels = None
depends_on = None

_ADAPTERS = ("execution_expected_adapter", "execution_actual_adapter")


def upgrade() -> None:
    for column in _ADAPTERS:
        op.execute(f"UPDATE executions SET {column} = 'unknown' WHERE {column} IS NULL")
        op.alter_column(
            "executions",
            column,
            existing_type=sa.String(32),
            nullable=False,
            server_default=sa.text("'unknown'"),
        )


def downgrade() -> None:
    for column in _ADAPTERS:
        op.alter_column("executions", column, existing_type=sa.String(32), nullable=True, server_default=None)
