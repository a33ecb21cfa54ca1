"""The Torghut-shaped Alembic chain (``cluster/torghut_localstack/torghut_migrations``) against a real Postgres:
several heads with long revision ids, ``alembic_version.version_num`` widened, the route/grant change as one
revision, and at the end the schema the local stack's own SQL produces for every table the operator reads."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Engine

from torghut_localstack import route_rules, sql_pack, torghut_db
from torghut_localstack.postgres import PostgresServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ALEMBIC_INI = REPO / "cluster" / "torghut_localstack" / "torghut_migrations" / "alembic.ini"
VERSIONS = ALEMBIC_INI.parent / "migrations" / "versions"
OPERATOR_TABLES = ("alembic_version", "executions", "trade_decisions", *torghut_db.HEAD_RESEARCH_TABLES)


def alembic(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DB_DSN": url}
    command = [sys.executable, "-m", "alembic", "-c", str(ALEMBIC_INI), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def fresh_db(postgres: PostgresServer) -> Iterator[str]:
    """An empty database (its URL); the role torghut_app exists (the chain needs it beforehand, as Torghut's does)."""
    with torghut_db.temporary_database(postgres.dsn(), prefix="alembic") as url:
        engine = torghut_db.make_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'torghut_app') THEN "
                "CREATE ROLE torghut_app LOGIN; END IF; EXCEPTION WHEN duplicate_object OR unique_violation THEN "
                "NULL; END $$"
            )
        engine.dispose()
        yield url


def columns(engine: Engine, table: str) -> dict[str, tuple[object, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT column_name, data_type, character_maximum_length, numeric_precision, numeric_scale,"
                " is_nullable, column_default FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name = :t"
            ),
            {"t": table},
        )
        return {str(r[0]): tuple(r[1:]) for r in rows}


def app_privileges(engine: Engine, table: str) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT privilege_type FROM information_schema.role_table_grants"
                " WHERE table_schema = 'public' AND table_name = :t AND grantee = :role"
            ),
            {"t": table, "role": torghut_db.APP_ROLE},
        )
        return {str(r[0]) for r in rows}


def tables(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
        return {str(r[0]) for r in rows}


def test_revision_ids_are_the_long_file_stems_and_the_graph_has_several_heads() -> None:
    script = ScriptDirectory.from_config(Config(str(ALEMBIC_INI)))
    revisions = list(script.walk_revisions())
    assert len(revisions) >= 8
    assert all(revision.revision == Path(revision.path).stem for revision in revisions)
    assert any(len(revision.revision) > 32 for revision in revisions), "longer than Alembic's default VARCHAR(32)"
    assert sorted(script.get_heads()) == sorted(torghut_db.HEAD_HEADS), "the local stack's head state's heads"
    route_grant = [r for r in revisions if "grant" in r.revision or "backfill_routes" in r.revision]
    assert [r.revision for r in route_grant] == ["0007_autonomy_permissions_backfill_routes"], "one revision"


def test_upgrade_heads_reaches_every_head_with_a_wide_version_column(fresh_db: str) -> None:
    done = alembic(fresh_db, "upgrade", "heads")
    assert done.returncode == 0, done.stderr
    engine = torghut_db.make_engine(fresh_db)
    try:
        assert torghut_db.alembic_heads(engine) == sorted(torghut_db.HEAD_HEADS)
        assert columns(engine, "alembic_version")["version_num"][:2] == ("character varying", 128)
        again = alembic(fresh_db, "upgrade", "heads")
        assert again.returncode == 0, again.stderr
        assert torghut_db.alembic_heads(engine) == sorted(torghut_db.HEAD_HEADS)
    finally:
        engine.dispose()


def test_the_chain_gives_the_local_stacks_schema_for_every_table_the_operator_reads(
    postgres: PostgresServer, fresh_db: str
) -> None:
    """Chain at heads == ``torghut_schema.sql`` + ``torghut_schema_head.sql`` + the route/grant pack: columns (type,
    length, nullability, default), torghut_app's privileges, and no index on executions leading with created_at."""
    done = alembic(fresh_db, "upgrade", "heads")
    assert done.returncode == 0, done.stderr
    chain = torghut_db.make_engine(fresh_db)
    with torghut_db.temporary_database(postgres.dsn(), prefix="localsql") as url:
        local = torghut_db.make_engine(url)
        try:
            torghut_db.create_schema(local, state="head")
            sql_pack.apply_pack(local)
            for table in OPERATOR_TABLES:
                assert columns(chain, table) == columns(local, table), table
                assert app_privileges(chain, table) == app_privileges(local, table), table
            extra = tables(chain) - tables(local)
            assert extra, "the chain has tables of its own (the other heads' revisions)"
            assert not [t for t in extra if t.startswith("research_")], "every research_* table is compared above"
            with chain.connect() as conn:
                leading = conn.execute(
                    text(
                        "SELECT indexrelid::regclass::text FROM pg_index i JOIN pg_attribute a"
                        " ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
                        " WHERE i.indrelid = 'executions'::regclass AND a.attname = 'created_at'"
                    )
                ).all()
            assert leading == []
        finally:
            local.dispose()
            chain.dispose()


def test_the_route_grant_revision_backfills_rows_by_the_services_own_rules(fresh_db: str) -> None:
    """Rows written before 0007 (NULL adapters, markers only in raw_order) get what the service would have written."""
    done = alembic(fresh_db, "upgrade", "0006_autonomy_research_ledger_tables")
    assert done.returncode == 0, done.stderr
    engine = torghut_db.make_engine(fresh_db)
    try:
        markers = list(torghut_db.ROUTE_MARKER_PRESETS.values())
        with engine.begin() as conn:
            ids = {torghut_db.insert_execution(conn, markers=m, adapters="null"): m for m in markers}
        done = alembic(fresh_db, "upgrade", "heads")
        assert done.returncode == 0, done.stderr
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT CAST(id AS text), execution_expected_adapter, execution_actual_adapter,"
                    " execution_fallback_count, execution_fallback_reason FROM executions"
                )
            ).all()
        assert len(rows) == len(ids)
        for row_id, expected, actual, count, reason in rows:
            route = route_rules.service_route(dict(ids[row_id]))
            assert (expected, actual, count, reason) == (
                route.expected,
                route.actual,
                route.fallback_count,
                route.fallback_reason,
            ), ids[row_id]
    finally:
        engine.dispose()
