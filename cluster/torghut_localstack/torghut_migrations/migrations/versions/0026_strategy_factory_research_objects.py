"""Strategy factory research objects: research_attempts, research_validation_tests, research_sequential_trials,
research_cost_calibrations, and research_runs' discovery columns.

A branch of its own from 0006 (the research branch can run ahead of 0007, so the graph has several heads). As in
Torghut's chain, it grants torghut_app nothing: 0007's default privileges cover these tables when 0007 ran first,
its grant on every research_* table when it runs after.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0026_strategy_factory_research_objects"
down_revision = "0006_autonomy_research_ledger_tables"
branch_labels = None
depends_on = None


def _id() -> sa.Column[Any]:
    return sa.Column("id", postgresql.UUID(), server_default=sa.text("gen_random_uuid()"), primary_key=True)


def _now(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()"))


def upgrade() -> None:
    op.add_column("research_runs", sa.Column("discovery_mode", sa.String(64)))
    op.add_column("research_runs", sa.Column("generator_family", sa.String(128)))
    op.create_table(
        "research_attempts",
        _id(),
        sa.Column("attempt_id", sa.String(64), nullable=False, unique=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("candidate_hash", sa.String(128)),
        sa.Column("generator_family", sa.String(128)),
        sa.Column("attempt_stage", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("reason_codes", postgresql.JSONB()),
        sa.Column("artifact_ref", sa.String(255)),
        sa.Column("metadata_bundle", postgresql.JSONB()),
        _now("created_at"),
    )
    op.create_index("ix_research_attempts_run_id", "research_attempts", ["run_id"])
    op.create_table(
        "research_validation_tests",
        _id(),
        sa.Column("candidate_id", sa.String(64), nullable=False),
        sa.Column("test_name", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("metric_bundle", postgresql.JSONB()),
        sa.Column("artifact_ref", sa.String(255)),
        _now("computed_at"),
        _now("created_at"),
        sa.UniqueConstraint("candidate_id", "test_name", name="uq_research_validation_tests_candidate_name"),
    )
    op.create_table(
        "research_sequential_trials",
        _id(),
        sa.Column("candidate_id", sa.String(64), nullable=False),
        sa.Column("trial_stage", sa.String(32), nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_update_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sample_count", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        *(
            sa.Column(name, sa.Numeric(20, 8))
            for name in (
                "confidence_sequence_lower",
                "confidence_sequence_upper",
                "posterior_edge_mean",
                "posterior_edge_lower",
            )
        ),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("reason_codes", postgresql.JSONB()),
        _now("created_at"),
        sa.UniqueConstraint(
            "candidate_id", "trial_stage", "account", name="uq_research_sequential_trials_candidate_stage_account"
        ),
    )
    op.create_table(
        "research_cost_calibrations",
        _id(),
        sa.Column("calibration_id", sa.String(64), nullable=False, unique=True),
        sa.Column("scope_type", sa.String(64), nullable=False),
        sa.Column("scope_id", sa.String(128), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True)),
        sa.Column("window_end", sa.DateTime(timezone=True)),
        *(
            sa.Column(name, sa.Numeric(20, 8))
            for name in (
                "modeled_slippage_bps",
                "realized_slippage_bps",
                "modeled_shortfall_bps",
                "realized_shortfall_bps",
            )
        ),
        sa.Column("calibration_error_bundle", postgresql.JSONB()),
        sa.Column("status", sa.String(32), nullable=False),
        _now("computed_at"),
        _now("created_at"),
    )


def downgrade() -> None:
    for table in ("research_cost_calibrations", "research_sequential_trials", "research_validation_tests"):
        op.drop_table(table)
    op.drop_table("research_attempts")
    op.drop_column("research_runs", "generator_family")
    op.drop_column("research_runs", "discovery_mode")
