"""The order feed: one row per broker event of an execution (not read by the rollout operator)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008_order_feed_execution_events"
down_revision = "0007_autonomy_permissions_backfill_routes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "execution_order_events",
        sa.Column("id", postgresql.UUID(), server_default=sa.text("gen_random_uuid()"), primary_key=True),
        sa.Column("alpaca_order_id", sa.String(128), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("payload", postgresql.JSONB()),
        sa.Column("event_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    op.create_index("ix_execution_order_events_order_id", "execution_order_events", ["alpaca_order_id"])


def downgrade() -> None:
    op.drop_table("execution_order_events")
