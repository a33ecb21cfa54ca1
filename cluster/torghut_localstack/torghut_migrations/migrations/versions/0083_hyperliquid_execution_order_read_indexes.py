"""Orders of a second venue and the indexes their read paths need; the head of the research branch (not read by
the operator)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0083_hyperliquid_execution_order_read_indexes"
down_revision = "0026_strategy_factory_research_objects"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hyperliquid_execution_orders",
        sa.Column("id", postgresql.UUID(), server_default=sa.text("gen_random_uuid()"), primary_key=True),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("order_id", sa.String(128), nullable=False),
        sa.Column("raw_order", postgresql.JSONB()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    op.create_index(
        "ix_hyperliquid_execution_orders_account_symbol", "hyperliquid_execution_orders", ["account", "symbol"]
    )
    op.create_index("ix_hyperliquid_execution_orders_order_id", "hyperliquid_execution_orders", ["order_id"])


def downgrade() -> None:
    op.drop_table("hyperliquid_execution_orders")
