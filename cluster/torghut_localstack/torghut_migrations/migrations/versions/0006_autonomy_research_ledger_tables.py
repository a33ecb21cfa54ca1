"""The research ledger of the autonomous lane: research_runs, research_candidates, research_fold_metrics,
research_stress_metrics, research_promotions. String business keys, no foreign keys; and, as in Torghut's own
0006, no privilege for torghut_app (the bug 0007 fixes)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql


def _id() -> sa.Column[Any]:
    return sa.Column("id", postgresql.UUID(), server_default=sa.text("gen_random_uuid()"), primary_key=True)


def _now(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()"))


def _count(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.BigInteger(), nullable=False, server_default=sa.text("0"))


revision = "0006_autonomy_research_ledger_tables"
down_revision = "0005_execution_route_provenance_columns"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "research_runs",
        _id(),
        sa.Column("run_id", sa.String(64), nullable=False, unique=True),
        sa.Column("status", sa.String(32), nullable=False, server_default=sa.text("'running'")),
        sa.Column("strategy_id", sa.String(64)),
        sa.Column("strategy_name", sa.String(255)),
        sa.Column("strategy_type", sa.String(128)),
        sa.Column("strategy_version", sa.String(64)),
        sa.Column("code_commit", sa.String(128)),
        sa.Column("feature_version", sa.String(64)),
        sa.Column("dataset_version", sa.String(64)),
        sa.Column("dataset_from", sa.DateTime(timezone=True)),
        sa.Column("dataset_to", sa.DateTime(timezone=True)),
        sa.Column("runner_version", sa.String(64)),
        _now("created_at"),
        _now("updated_at"),
    )
    op.create_index("ix_research_runs_status", "research_runs", ["status"])
    op.create_index("ix_research_runs_created_at", "research_runs", ["created_at"])
    op.create_table(
        "research_candidates",
        _id(),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("candidate_id", sa.String(64), nullable=False, unique=True),
        sa.Column("candidate_hash", sa.String(128)),
        sa.Column("parameter_set", postgresql.JSONB()),
        _count("decision_count"),
        _count("trade_count"),
        sa.Column("promotion_target", sa.String(16)),
        _now("created_at"),
        _now("updated_at"),
    )
    op.create_index("ix_research_candidates_run_id", "research_candidates", ["run_id"])
    op.create_table(
        "research_fold_metrics",
        _id(),
        sa.Column("candidate_id", sa.String(64), nullable=False),
        sa.Column("fold_name", sa.String(128), nullable=False),
        _count("fold_order"),
        *(sa.Column(n, sa.DateTime(timezone=True), nullable=False) for n in ("train_start", "train_end")),
        *(sa.Column(n, sa.DateTime(timezone=True), nullable=False) for n in ("test_start", "test_end")),
        _count("decision_count"),
        _count("trade_count"),
        *(sa.Column(n, sa.Numeric(20, 8)) for n in ("gross_pnl", "net_pnl", "max_drawdown", "cost_bps")),
        _now("created_at"),
        _now("updated_at"),
    )
    op.create_index("ix_research_fold_metrics_candidate", "research_fold_metrics", ["candidate_id"])
    op.create_table(
        "research_stress_metrics",
        _id(),
        sa.Column("candidate_id", sa.String(64), nullable=False),
        sa.Column("stress_case", sa.String(64), nullable=False),
        sa.Column("metric_bundle", postgresql.JSONB()),
        sa.Column("pessimistic_pnl_delta", sa.Numeric(20, 8)),
        _now("created_at"),
        _now("updated_at"),
    )
    op.create_index("ix_research_stress_metrics_candidate", "research_stress_metrics", ["candidate_id"])
    op.create_table(
        "research_promotions",
        _id(),
        sa.Column("candidate_id", sa.String(64), nullable=False),
        sa.Column("requested_mode", sa.String(16)),
        sa.Column("approved_mode", sa.String(16)),
        sa.Column("approver", sa.String(128)),
        sa.Column("approver_role", sa.String(64)),
        sa.Column("approve_reason", sa.Text()),
        sa.Column("deny_reason", sa.Text()),
        sa.Column("paper_candidate_patch_ref", sa.String(255)),
        sa.Column("effective_time", sa.DateTime(timezone=True)),
        _now("created_at"),
        _now("updated_at"),
    )
    op.create_index("ix_research_promotions_candidate", "research_promotions", ["candidate_id"])
    op.create_index("ix_research_promotions_created_at", "research_promotions", ["created_at"])


def downgrade() -> None:
    for table in ("research_promotions", "research_stress_metrics", "research_fold_metrics"):
        op.drop_table(table)
    op.drop_table("research_candidates")
    op.drop_table("research_runs")
