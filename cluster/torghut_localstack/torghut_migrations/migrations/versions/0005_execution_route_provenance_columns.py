"""Execution route provenance: the expected and actual adapter columns (nullable when first added), fallback
reason and count, and an index on each adapter column."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_execution_route_provenance_columns"
down_revision = "0001_trading_core_and_wide_alembic_version"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("executions", sa.Column("execution_expected_adapter", sa.String(32)))
    op.add_column("executions", sa.Column("execution_actual_adapter", sa.String(32)))
    op.add_column("executions", sa.Column("execution_fallback_reason", sa.String(128)))
    op.add_column(
        "executions",
        sa.Column("execution_fallback_count", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.create_index("ix_executions_expected_adapter", "executions", ["execution_expected_adapter"])
    op.create_index("ix_executions_actual_adapter", "executions", ["execution_actual_adapter"])


def downgrade() -> None:
    op.drop_index("ix_executions_actual_adapter", "executions")
    op.drop_index("ix_executions_expected_adapter", "executions")
    for column in ("execution_fallback_count", "execution_fallback_reason", "execution_actual_adapter"):
        op.drop_column("executions", column)
    op.drop_column("executions", "execution_expected_adapter")
