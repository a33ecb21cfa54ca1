"""Trading core: trade_decisions and executions, and alembic_version.version_num widened to VARCHAR(128).

Revision ids are the long file stems, longer than Alembic's VARCHAR(32): this first revision widens the column
before Alembic writes its own id into it (in the same transaction, after this upgrade). The runtime role
torghut_app must exist beforehand (as for Torghut's own chain); it may use the trading tables.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001_trading_core_and_wide_alembic_version"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("alembic_version", "version_num", type_=sa.String(128), existing_nullable=False)
    op.execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'torghut_app') THEN "
        "RAISE EXCEPTION 'the role torghut_app must exist before the migrations run'; END IF; END $$"
    )
    op.create_table(
        "trade_decisions",
        sa.Column("id", postgresql.UUID(), server_default=sa.text("gen_random_uuid()"), primary_key=True),
        sa.Column("strategy_id", sa.String(64), nullable=False),
        sa.Column("alpaca_account_label", sa.String(64), nullable=False, server_default=sa.text("'paper'")),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("timeframe", sa.String(16), nullable=False),
        sa.Column("decision_json", sa.JSON(), nullable=False),
        sa.Column("rationale", sa.Text()),
        sa.Column("decision_hash", sa.String(64)),
        sa.Column("status", sa.String(32), nullable=False, server_default=sa.text("'planned'")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("executed_at", sa.DateTime(timezone=True)),
    )
    for column in ("created_at", "status", "symbol"):
        op.create_index(f"ix_trade_decisions_{column}", "trade_decisions", [column])
    op.create_table(
        "executions",
        sa.Column("id", postgresql.UUID(), server_default=sa.text("gen_random_uuid()"), primary_key=True),
        sa.Column("trade_decision_id", postgresql.UUID(), sa.ForeignKey("trade_decisions.id", ondelete="SET NULL")),
        sa.Column("alpaca_account_label", sa.String(64), nullable=False, server_default=sa.text("'paper'")),
        sa.Column("alpaca_order_id", sa.String(128), nullable=False),
        sa.Column("client_order_id", sa.String(128)),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("side", sa.String(8), nullable=False),
        sa.Column("order_type", sa.String(32), nullable=False),
        sa.Column("time_in_force", sa.String(16), nullable=False),
        sa.Column("submitted_qty", sa.Numeric(20, 8), nullable=False),
        sa.Column("filled_qty", sa.Numeric(20, 8), nullable=False, server_default=sa.text("0")),
        sa.Column("avg_fill_price", sa.Numeric(20, 8)),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("execution_correlation_id", sa.String(128)),
        sa.Column("execution_idempotency_key", sa.String(128)),
        sa.Column("raw_order", postgresql.JSONB()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("last_update_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("alpaca_account_label", "alpaca_order_id", name="uq_executions_account_order_id"),
    )
    op.create_index("ix_executions_symbol", "executions", ["symbol"])
    op.create_index("ix_executions_trade_decision_id", "executions", ["trade_decision_id"])
    op.execute("GRANT USAGE ON SCHEMA public TO torghut_app")
    op.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE executions, trade_decisions TO torghut_app")
    op.execute("GRANT SELECT ON TABLE alembic_version TO torghut_app")


def downgrade() -> None:
    op.drop_table("executions")
    op.drop_table("trade_decisions")
