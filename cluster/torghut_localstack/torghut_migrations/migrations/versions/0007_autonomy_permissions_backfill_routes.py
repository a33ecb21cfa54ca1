"""The route/grant change as one revision: the local stack's route/grant SQL pack (``manifests/torghut/*.sql``),
applied file by file in name order, as the operator's migrator reads them.

* ``0001_research_grants.sql``: torghut_app gets SELECT, INSERT, UPDATE, DELETE on every research_* table now and,
  by default privileges, on the tables created later (so 0026's tables are covered whichever branch runs first);
* ``0002_route_provenance_columns.sql``: the adapter columns when missing (0005 added them: nothing to do);
* ``0003_route_provenance_indexes.sql`` (``no-transaction``): its concurrent index builds, statement by statement
  outside the revision's transaction;
* ``0004_route_provenance_backfill.sql`` (``backfill``): the route backfill by Torghut's own rules, here as one
  batch over the whole table (the migrator's batches are for live tables; this runs before the service).

The pack is ``route_grant_sql/`` beside ``migrations/`` (a link to ``manifests/torghut`` in the repository, a copy
in the torghut-sim image). Its header options and statement splitting come from the operator's migrator.
"""

from __future__ import annotations

from pathlib import Path

from alembic import op
from sqlalchemy import text

from torghut_operator.adapters.postgres.migrator import BATCH_FIRST, BATCH_LAST, file_options, split_statements

revision = "0007_autonomy_permissions_backfill_routes"
down_revision = "0006_autonomy_research_ledger_tables"
branch_labels = None
depends_on = None

PACK = Path(__file__).resolve().parents[2] / "route_grant_sql"


def upgrade() -> None:
    files = sorted(PACK.glob("*.sql"), key=lambda p: p.name)
    if not files:
        raise FileNotFoundError(f"no route/grant SQL files in {PACK}")
    connection = op.get_bind()
    for path in files:
        content = path.read_text()
        options = file_options(content, path.name)
        if options.errors:
            raise ValueError(f"{path.name}: {'; '.join(options.errors)}")
        if options.backfill is not None:
            key = options.backfill.key or "id"
            table = options.backfill.table
            # ORDER BY, not min()/max(): PostgreSQL has no min(uuid)
            bounds = connection.execute(
                text(
                    f"SELECT (SELECT CAST({key} AS text) FROM {table} ORDER BY {key} LIMIT 1),"
                    f" (SELECT CAST({key} AS text) FROM {table} ORDER BY {key} DESC LIMIT 1)"
                )
            )
            first, last = bounds.one()
            if first is None:
                continue  # an empty table: nothing to backfill
            connection.execute(
                text(f"SELECT set_config('{BATCH_FIRST}', :first, true), set_config('{BATCH_LAST}', :last, true)"),
                {"first": first, "last": last},
            )
            connection.exec_driver_sql(content)
        elif not options.transactional:
            with op.get_context().autocommit_block():
                for statement in split_statements(content):
                    op.get_bind().exec_driver_sql(statement)
        else:
            connection.exec_driver_sql(content)


def downgrade() -> None:
    raise NotImplementedError("0007 backfills rows and grants privileges: it is not undone by a downgrade")
