"""Candidate lifecycle and the promotion audit: research_promotions.decision_action (NOT NULL DEFAULT 'hold'),
decision_rationale, evidence_bundle and the trace columns; research_candidates' lifecycle columns."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011_autonomy_lifecycle_and_promotion_audit"
down_revision = "0008_order_feed_execution_events"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "research_candidates",
        sa.Column("lifecycle_role", sa.String(32), nullable=False, server_default=sa.text("'challenger'")),
    )
    op.add_column(
        "research_candidates",
        sa.Column("lifecycle_status", sa.String(32), nullable=False, server_default=sa.text("'evaluated'")),
    )
    op.add_column("research_candidates", sa.Column("metadata_bundle", postgresql.JSONB()))
    op.add_column("research_candidates", sa.Column("recommendation_bundle", postgresql.JSONB()))
    op.add_column(
        "research_promotions",
        sa.Column("decision_action", sa.String(32), nullable=False, server_default=sa.text("'hold'")),
    )
    op.add_column("research_promotions", sa.Column("decision_rationale", sa.Text()))
    op.add_column("research_promotions", sa.Column("evidence_bundle", postgresql.JSONB()))
    for column in ("recommendation_trace_id", "successor_candidate_id", "rollback_candidate_id"):
        op.add_column("research_promotions", sa.Column(column, sa.String(64)))
    op.create_index("ix_research_promotions_action", "research_promotions", ["decision_action"])


def downgrade() -> None:
    op.drop_index("ix_research_promotions_action", "research_promotions")
    for column in (
        "rollback_candidate_id",
        "successor_candidate_id",
        "recommendation_trace_id",
        "evidence_bundle",
        "decision_rationale",
        "decision_action",
    ):
        op.drop_column("research_promotions", column)
    for column in ("recommendation_bundle", "metadata_bundle", "lifecycle_status", "lifecycle_role"):
        op.drop_column("research_candidates", column)
