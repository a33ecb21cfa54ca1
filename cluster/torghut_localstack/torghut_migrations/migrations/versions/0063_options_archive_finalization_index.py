"""The options archive's finalization markers, with the index their readers use (not read by the operator)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0063_options_archive_finalization_index"
down_revision = "0045_execution_route_provenance_not_null_unknown"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "options_archive_finalizations",
        sa.Column("archive_date", sa.Date(), primary_key=True),
        sa.Column("underlying", sa.String(32), primary_key=True),
        sa.Column("finalized_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    op.create_index("ix_options_archive_finalizations_finalized_at", "options_archive_finalizations", ["finalized_at"])


def downgrade() -> None:
    op.drop_table("options_archive_finalizations")
