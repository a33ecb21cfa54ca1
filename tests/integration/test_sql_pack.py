"""The route/grant SQL pack (manifests/torghut) on a real PostgreSQL 15 with a Torghut-like schema."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from torghut_localstack import sql_pack, torghut_db
from torghut_localstack.postgres import PostgresServer
from torghut_localstack.route_rules import Outcome, Route, backfill
from torghut_operator.adapters.postgres.migrator import file_options, is_repeatable, transaction_control

pytestmark = pytest.mark.integration

ROUTE_COLUMNS = (
    "execution_expected_adapter",
    "execution_actual_adapter",
    "execution_fallback_count",
    "execution_fallback_reason",
)


def _engine(url: str) -> Engine:
    return torghut_db.make_engine(url, connect_timeout=5, statement_timeout_ms=120_000)


@pytest.fixture
def db_url(postgres: PostgresServer) -> Iterator[str]:
    with torghut_db.temporary_database(postgres.dsn(), "sqlpack") as url:
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = _engine(db_url)
    torghut_db.create_schema(eng)
    yield eng
    eng.dispose()


def apply_pack(engine: Engine, *, batch_size: int = 16) -> None:
    """What the operator's sql mode does: each file in order as its header says (the backfill in batches of
    ``batch_size`` keys, each its own transaction; the index builds in autocommit)."""
    sql_pack.apply_pack(engine, batch_size=batch_size)


BACKFILL = sql_pack.PACK_DIR / "0004_route_provenance_backfill.sql"


def routes(engine: Engine) -> dict[str, Route]:
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT id::text, {', '.join(ROUTE_COLUMNS)} FROM executions"))
        return {r[0]: Route(r[1], r[2], int(r[3]), r[4]) for r in rows}


def snapshot(engine: Engine) -> dict[str, tuple[Any, ...]]:
    """Every executions row with its xmin: an UPDATE, even to identical values, changes xmin."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id::text, xmin::text, executions::text FROM executions"))
        return {r[0]: (r[1], r[2]) for r in rows}


def insert_row(
    engine: Engine,
    raw_order: Mapping[str, object],
    columns: Mapping[str, object] | None = None,
) -> str:
    with engine.begin() as conn:
        row_id = torghut_db.insert_execution(conn, markers=raw_order, adapters="null")
        if columns:
            sets = ", ".join(f"{name} = :{name}" for name in columns)
            conn.execute(text(f"UPDATE executions SET {sets} WHERE id = CAST(:id AS uuid)"), {**columns, "id": row_id})
    return row_id


# ---- grants -------------------------------------------------------------------------------------

ALL_RESEARCH_TABLES = (*torghut_db.RESEARCH_TABLES, *torghut_db.LATER_RESEARCH_TABLES)


def test_grants_all_four_privileges_on_every_research_table(engine: Engine, db_url: str) -> None:
    before = torghut_db.research_privileges(engine)
    assert len(before) == 4 * len(ALL_RESEARCH_TABLES) == 36
    assert not any(before.values()), f"fixture must start without research grants: {before}"

    apply_pack(engine)

    after = torghut_db.research_privileges(engine)
    missing = sorted(key for key, granted in after.items() if not granted)
    assert missing == []  # the four tables of migration 0026 included

    # and the runtime role can really write the ledger now
    app = _engine(db_url.replace("postgres@", f"{torghut_db.APP_ROLE}@", 1))
    try:
        seeded = torghut_db.seed_research_run(app, candidates=1, folds=1, stress_cases=("latency_spike",))
        assert seeded.rows["research_promotions"] == 1
        with app.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO research_attempts (attempt_id, run_id, attempt_stage, status) VALUES ('a1', 'r1', 'x', 'ok')"
                )
            )
    finally:
        app.dispose()


def test_research_tables_created_after_the_migration_get_the_privileges(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP ROLE IF EXISTS torghut_owner")
        conn.exec_driver_sql("CREATE ROLE torghut_owner")
        conn.exec_driver_sql("GRANT CREATE ON SCHEMA public TO torghut_owner")
        for table in ALL_RESEARCH_TABLES:
            conn.exec_driver_sql(f"ALTER TABLE {table} OWNER TO torghut_owner")

    apply_pack(engine)

    with engine.begin() as conn:  # the next Torghut migration, run by the tables' owner
        conn.exec_driver_sql("SET ROLE torghut_owner")
        conn.exec_driver_sql("CREATE TABLE research_epoch_ledgers (id bigint PRIMARY KEY, note text)")
        conn.exec_driver_sql("RESET ROLE")
    later = torghut_db.research_privileges(engine)  # every research_* table that exists, the new one included
    assert ("research_epoch_ledgers", "INSERT") in later
    assert all(later.values()), later
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE research_epoch_ledgers")
        conn.exec_driver_sql("DROP OWNED BY torghut_owner")
        conn.exec_driver_sql("DROP ROLE torghut_owner")


def test_grants_fail_closed_without_any_research_table(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in ALL_RESEARCH_TABLES:
            conn.exec_driver_sql(f"DROP TABLE {table}")
    first = sql_pack.pack_files()[0]
    with pytest.raises(DBAPIError, match="no research_\\* table"), engine.begin() as conn:
        conn.exec_driver_sql(first.read_text("utf-8"))
    with engine.connect() as conn:
        acl = conn.execute(text("SELECT count(*) FROM pg_default_acl")).scalar_one()
    assert acl == 0  # nothing of the file stayed


# ---- backfill -----------------------------------------------------------------------------------


def test_backfill_the_torghut_md_example(engine: Engine) -> None:
    row = insert_row(engine, {"_execution_route_expected": "lean", "_execution_route_actual": "alpaca_fallback"})
    assert routes(engine)[row] == Route(None, None, 0, None)

    apply_pack(engine)

    assert routes(engine)[row] == Route("lean", "alpaca", 1, "fallback_from_lean_to_alpaca")


E, A = "_execution_route_expected", "_execution_route_actual"
PRECEDENCE_CASES: list[tuple[str, dict[str, object], dict[str, object], Route]] = [
    (
        "route markers: expected from _execution_route_expected, actual from _execution_route_actual",
        {E: "lean", "execution_expected_adapter": "simulation", A: "lean", "_execution_adapter": "alpaca"},
        {},
        Route("lean", "lean", 0, None),
    ),
    (
        "_execution_adapter beats execution_actual_adapter, expected follows actual",
        {"_execution_adapter": "simulation", "execution_actual_adapter": "alpaca"},
        {},
        Route("simulation", "simulation", 0, None),
    ),
    (
        "execution_expected_adapter is never the expected adapter (no invented fallback)",
        {"_execution_adapter": "alpaca", "execution_expected_adapter": "lean"},
        {},
        Route("alpaca", "alpaca", 0, None),
    ),
    (
        "response fields alone: the actual one decides both",
        {"execution_expected_adapter": "lean", "execution_actual_adapter": "alpaca"},
        {},
        Route("alpaca", "alpaca", 0, None),
    ),
    (
        "execution_expected_adapter is the last actual marker",
        {"execution_expected_adapter": "lean"},
        {},
        Route("lean", "lean", 0, None),
    ),
    (
        "alpaca_fallback alone is alpaca/alpaca",
        {"_execution_adapter": "alpaca_fallback"},
        {},
        Route("alpaca", "alpaca", 0, None),
    ),
    (
        "trimmed like str.strip(), case kept",
        {E: " LEAN ", A: "\talpaca_fallback\u3000"},
        {},
        Route("LEAN", "alpaca", 1, "fallback_from_LEAN_to_alpaca"),
    ),
    (
        "JSON null, numbers, objects and arrays are missing",
        {E: None, A: 42, "_execution_adapter": {"adapter": "lean"}, "execution_actual_adapter": ["lean"]},
        {},
        Route("unknown", "unknown", 0, None),
    ),
    ("no markers: unknown/unknown", {}, {}, Route("unknown", "unknown", 0, None)),
    (
        "unknown columns are missing",
        {E: "lean", A: "lean"},
        {"execution_expected_adapter": "unknown", "execution_actual_adapter": "unknown"},
        Route("lean", "lean", 0, None),
    ),
    (
        "the expected column (submit-time choice) wins over the markers",
        {E: "alpaca", A: "alpaca_fallback"},
        {"execution_expected_adapter": "lean"},
        Route("lean", "alpaca", 1, "fallback_from_lean_to_alpaca"),
    ),
    (
        "a usable actual column is kept, and expected follows it",
        {A: "lean"},
        {"execution_actual_adapter": "alpaca", "execution_expected_adapter": "  "},
        Route("alpaca", "alpaca", 0, None),
    ),
    (
        "both columns set: kept, only alpaca_fallback becomes alpaca",
        {E: "simulation"},
        {"execution_expected_adapter": "lean", "execution_actual_adapter": "alpaca_fallback"},
        Route("lean", "alpaca", 0, None),
    ),
    (
        "both columns set: untouched, reason included",
        {E: "simulation", A: "simulation"},
        {
            "execution_expected_adapter": "lean",
            "execution_actual_adapter": "alpaca",
            "execution_fallback_reason": "lean_submit_timeout",
        },
        Route("lean", "alpaca", 0, "lean_submit_timeout"),
    ),
    (
        "fallback count and reason markers",
        {E: "lean", A: "alpaca_fallback", "_execution_fallback_count": " 3 ", "_fallback_reason": "lean_timeout"},
        {},
        Route("lean", "alpaca", 3, "lean_timeout"),
    ),
    (
        "a zero count with different adapters becomes 1",
        {E: "lean", A: "alpaca", "_execution_fallback_count": 0},
        {},
        Route("lean", "alpaca", 1, "fallback_from_lean_to_alpaca"),
    ),
    (
        "a zero count with a reason becomes 1 (the service's rule)",
        {E: "lean", A: "lean", "_execution_fallback_count": False, "_execution_fallback_reason": "probe"},
        {},
        Route("lean", "lean", 1, "probe"),
    ),
    (
        "a count without any adapter",
        {"_execution_fallback_count": 2.9},
        {},
        Route("unknown", "unknown", 2, "fallback_from_unknown_to_unknown"),
    ),
    (
        "a junk count is missing",
        {E: "lean", A: "lean", "_execution_fallback_count": "2x"},
        {"execution_fallback_count": 5},
        Route("lean", "lean", 0, None),
    ),
    (
        "a value longer than its column: the row is skipped, not the file",
        {E: "x" * 33, A: "alpaca"},
        {},
        Route(None, None, 0, None),
    ),
]


@pytest.mark.parametrize(
    ("raw_order", "columns", "expected"),
    [pytest.param(raw, cols, want, id=name) for name, raw, cols, want in PRECEDENCE_CASES],
)
def test_backfill_follows_the_service_rules(
    engine: Engine, raw_order: dict[str, object], columns: dict[str, object], expected: Route
) -> None:
    row = insert_row(engine, raw_order, columns)
    with engine.connect() as conn:
        stored = conn.execute(
            text("SELECT raw_order FROM executions WHERE id = CAST(:id AS uuid)"), {"id": row}
        ).scalar_one()
    before = routes(engine)[row]
    reference = backfill(before, stored)
    assert reference.route == expected

    apply_pack(engine)

    assert routes(engine)[row] == expected


def test_realistic_history_is_backfilled_row_by_row_as_the_reference_says(engine: Engine) -> None:
    torghut_db.seed_executions(engine, 120, route_markers=torghut_db.HISTORY_MARKER_MIX, null_adapters=True, seed=7)
    torghut_db.seed_executions(engine, 40, route_markers=torghut_db.HISTORY_MARKER_MIX, null_adapters="unknown", seed=8)
    torghut_db.seed_executions(engine, 40, route_markers=torghut_db.HISTORY_MARKER_MIX, null_adapters=False, seed=9)
    with engine.connect() as conn:
        raw = {r[0]: r[1] for r in conn.execute(text("SELECT id::text, raw_order FROM executions"))}
    before = routes(engine)

    apply_pack(engine)

    after = routes(engine)
    assert len(after) == 200
    assert after == {row_id: backfill(before[row_id], raw[row_id]).route for row_id in after}
    unknown = [r for r in after.values() if r.unknown]
    # exactly the rows without any route marker (none, null_markers) end unknown/unknown: 2 in 10
    assert len(unknown) == 40
    assert {(r.expected, r.actual, r.fallback_count, r.fallback_reason) for r in unknown} == {
        ("unknown", "unknown", 0, None)
    }
    assert not any(r.expected is None or r.actual is None for r in after.values())


def test_rerunning_the_pack_changes_nothing(engine: Engine) -> None:
    torghut_db.seed_executions(engine, 80, route_markers=torghut_db.HISTORY_MARKER_MIX, null_adapters=True, seed=1)
    torghut_db.seed_executions(engine, 20, null_adapters="unknown", route_markers="none", seed=2)
    insert_row(engine, {E: "y" * 40})  # skipped, every time
    apply_pack(engine)
    first = snapshot(engine)
    grants = torghut_db.research_privileges(engine)

    apply_pack(engine)

    assert snapshot(engine) == first  # same values and same xmin: not a single row rewritten
    assert torghut_db.research_privileges(engine) == grants


def test_adds_the_route_columns_when_missing(db_url: str) -> None:
    eng = _engine(db_url)
    try:
        torghut_db.create_schema(eng, with_adapter_columns=False)
        ids = torghut_db.seed_executions(eng, 3, route_markers="lean_fallback", with_route_columns=False, seed=3)
        apply_pack(eng)
        with eng.connect() as conn:
            columns = {
                r[0]: (r[1], r[2], r[3])
                for r in conn.execute(
                    text(
                        "SELECT column_name, data_type, is_nullable, column_default"
                        " FROM information_schema.columns WHERE table_name = 'executions'"
                    )
                )
            }
            indexes = {
                r[0] for r in conn.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = 'executions'"))
            }
        assert columns["execution_expected_adapter"][:2] == ("character varying", "YES")
        assert columns["execution_actual_adapter"][:2] == ("character varying", "YES")
        assert columns["execution_fallback_reason"][:2] == ("character varying", "YES")
        assert columns["execution_fallback_count"][:2] == ("bigint", "NO")
        assert {"ix_executions_expected_adapter", "ix_executions_actual_adapter"} <= indexes
        assert {routes(eng)[i] for i in ids} == {Route("lean", "alpaca", 1, "fallback_from_lean_to_alpaca")}
    finally:
        eng.dispose()


def test_works_with_a_json_raw_order_column(db_url: str) -> None:
    eng = _engine(db_url)
    try:
        torghut_db.create_schema(eng, raw_order_type="json")
        ids = torghut_db.seed_executions(eng, 4, route_markers=["lean_fallback", "fallback_marker"], seed=4)
        apply_pack(eng)
        got = routes(eng)
        assert got[ids[0]] == Route("lean", "alpaca", 1, "fallback_from_lean_to_alpaca")
        assert got[ids[1]] == Route("alpaca", "alpaca", 0, None)
    finally:
        eng.dispose()


def test_bulk_rows_are_backfilled(engine: Engine) -> None:
    inserted = torghut_db.bulk_seed_executions(engine, 30_000, null_fraction=0.2, batch_size=10_000)
    assert inserted == 30_000
    with engine.connect() as conn:
        null_before = conn.execute(
            text("SELECT count(*) FROM executions WHERE execution_actual_adapter IS NULL")
        ).scalar_one()
    assert 5_000 < null_before < 7_000

    apply_pack(engine, batch_size=2_000)

    with engine.connect() as conn:
        null_after, unknown_after, fallback_wrong = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE execution_actual_adapter IS NULL),"
                " count(*) FILTER (WHERE execution_actual_adapter = 'unknown'),"
                " count(*) FILTER (WHERE execution_expected_adapter <> execution_actual_adapter"
                "   AND (execution_fallback_count < 1 OR execution_fallback_reason IS NULL))"
                " FROM executions"
            )
        ).one()
    assert null_after == 0
    assert unknown_after == pytest.approx(null_before / 10, rel=0.2)  # one in ten had no markers
    assert fallback_wrong == 0


def test_skipped_rows_are_left_alone_and_counted_by_the_reference(engine: Engine) -> None:
    long_reason = {E: "lean", A: "alpaca", "_execution_fallback_reason": "r" * 129}
    ids = [insert_row(engine, long_reason), insert_row(engine, {"_execution_adapter": "z" * 33})]
    ok = insert_row(engine, {"_execution_adapter": "alpaca_fallback"})
    before = routes(engine)
    assert {backfill(before[i], {**long_reason}).outcome for i in ids[:1]} == {Outcome.SKIPPED}

    apply_pack(engine)

    after = routes(engine)
    assert [after[i] for i in ids] == [Route(None, None, 0, None)] * 2
    assert after[ok] == Route("alpaca", "alpaca", 0, None)


# ---- batches -----------------------------------------------------------------------------------


def _ids(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [str(r[0]) for r in conn.execute(text("SELECT id::text FROM executions ORDER BY id"))]


def _run_batch(conn: Connection, first: str, last: str) -> None:
    conn.execute(
        text("SELECT set_config(:f, :first, true), set_config(:l, :last, true)"),
        {"f": sql_pack.BATCH_FIRST, "first": first, "l": sql_pack.BATCH_LAST, "last": last},
    )
    conn.exec_driver_sql(BACKFILL.read_text("utf-8"))


def test_the_backfill_refuses_to_run_without_a_batch(engine: Engine) -> None:
    """Run outside the migrator (psql -f, an old migrator) the file fails instead of updating the whole table."""
    insert_row(engine, {E: "lean", A: "alpaca_fallback"})
    with pytest.raises(DBAPIError, match=r"torghut_rollout\.batch_first"), engine.begin() as conn:
        conn.exec_driver_sql(BACKFILL.read_text("utf-8"))
    assert set(routes(engine).values()) == {Route(None, None, 0, None)}


def test_a_batch_touches_only_its_own_rows(engine: Engine) -> None:
    torghut_db.seed_executions(engine, 60, route_markers=torghut_db.HISTORY_MARKER_MIX, null_adapters=True, seed=11)
    ids = _ids(engine)
    before = snapshot(engine)
    with engine.begin() as conn:
        _run_batch(conn, ids[20], ids[39])
    after = snapshot(engine)
    touched = sorted(i for i in ids if after[i] != before[i])
    assert touched, "the batch changed nothing"
    assert set(touched) <= set(ids[20:40])
    assert {routes(engine)[i] for i in ids[:20] + ids[40:]} <= {Route(None, None, 0, None)}


def test_batches_of_any_size_give_what_the_reference_gives(engine: Engine) -> None:
    """The same history backfilled in batches of 1, 7 and 500 keys (one batch for all): the reference's rows, row
    by row, every time."""
    mix = torghut_db.HISTORY_MARKER_MIX
    torghut_db.seed_executions(engine, 40, route_markers=mix, null_adapters=True, seed=21)
    torghut_db.seed_executions(engine, 40, route_markers=mix, null_adapters="unknown", seed=22)
    torghut_db.seed_executions(engine, 40, route_markers=mix, null_adapters=False, seed=23)
    with engine.connect() as conn:
        raw = {r[0]: r[1] for r in conn.execute(text("SELECT id::text, raw_order FROM executions"))}
    before = routes(engine)
    want = {i: backfill(before[i], raw[i]).route for i in before}
    assert want != before
    for size in (1, 7, 500):
        with engine.begin() as conn:  # back to the history
            conn.execute(
                text(
                    f"UPDATE executions SET {', '.join(f'{c} = :{c}' for c in ROUTE_COLUMNS)}"
                    " WHERE id = CAST(:id AS uuid)"
                ),
                [
                    {
                        "id": i,
                        "execution_expected_adapter": r.expected,
                        "execution_actual_adapter": r.actual,
                        "execution_fallback_count": r.fallback_count,
                        "execution_fallback_reason": r.fallback_reason,
                    }
                    for i, r in before.items()
                ],
            )
        assert routes(engine) == before

        run = sql_pack.run_backfill(engine, BACKFILL.read_text("utf-8"), batch_size=size)

        assert (run.rows, run.batches) == (120, -(-120 // size))
        assert routes(engine) == want, f"batches of {size}"


def test_a_running_batch_blocks_no_write_outside_it(engine: Engine, db_url: str) -> None:
    """A batch holds row locks on its changed rows only: the service updates any other execution at once, and
    inserts new ones, while the batch's transaction is still open."""
    torghut_db.seed_executions(engine, 40, route_markers="lean_fallback", null_adapters=True, seed=12)
    ids = _ids(engine)
    writer = _engine(db_url)
    try:
        with engine.connect() as batch:
            tx = batch.begin()
            _run_batch(batch, ids[0], ids[19])
            with writer.begin() as conn:
                conn.exec_driver_sql("SET LOCAL lock_timeout = '1s'")
                updated = conn.execute(
                    text("UPDATE executions SET status = 'canceled', updated_at = now() WHERE id = CAST(:id AS uuid)"),
                    {"id": ids[30]},
                ).rowcount
                torghut_db.insert_execution(conn, markers={E: "lean"}, adapters="null")
            assert updated == 1
            with writer.begin() as conn:
                conn.exec_driver_sql("SET LOCAL lock_timeout = '200ms'")
                inside = text("UPDATE executions SET status = 'canceled' WHERE id = CAST(:id AS uuid)")
                with pytest.raises(DBAPIError, match="lock timeout"):
                    conn.execute(inside, {"id": ids[5]})
            tx.commit()
    finally:
        writer.dispose()


# ---- the files and the ConfigMap ------------------------------------------------------------------


def test_pack_files_are_executor_safe() -> None:
    """No transaction control, no percent sign, no bind syntax, and outside dollar-quoted DO bodies no semicolon
    except at the end of a statement; every file is repeatable; concurrent index builds only in the no-transaction
    file."""
    files = sql_pack.pack_files()
    assert [f.name for f in files] == [
        "0001_research_grants.sql",
        "0002_route_provenance_columns.sql",
        "0003_route_provenance_indexes.sql",
        "0004_route_provenance_backfill.sql",
    ]
    for path in files:
        body = path.read_text("utf-8")
        assert is_repeatable(body), path.name
        assert transaction_control(body) == [], path.name
        assert "%" not in body, path.name
        concurrent = "CONCURRENTLY" in re.sub(r"--[^\n]*", "", body)
        assert concurrent == (not file_options(body).transactional), path.name
        assert not re.search(r"(?<!:):[A-Za-z_]", body), f"{path.name}: bind-parameter-like syntax"
        outside = re.sub(r"\$\$.*?\$\$", "$$ $$", body, flags=re.DOTALL)
        for line in outside.splitlines():
            if line.lstrip().startswith("--"):
                assert ";" not in line, f"{path.name}: semicolon in a comment: {line}"
            else:
                assert ";" not in line.rstrip()[:-1], f"{path.name}: semicolon inside a statement: {line}"


def test_kustomization_generates_the_configmap() -> None:
    kustomization = yaml.safe_load((sql_pack.PACK_DIR / "kustomization.yaml").read_text())
    [generator] = kustomization["configMapGenerator"]
    assert generator["name"] == sql_pack.CONFIGMAP_NAME
    assert generator["files"] == [p.name for p in sql_pack.pack_files()]
    assert kustomization["generatorOptions"]["disableNameSuffixHash"] is True

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: kustomize output not checked")
    out = subprocess.run(
        [kubectl, "kustomize", str(sql_pack.PACK_DIR)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    generated = yaml.safe_load(out)
    assert generated == sql_pack.configmap_manifest()
    assert json.dumps(generated)  # plain data, ready to apply
