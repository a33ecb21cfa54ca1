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
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ProgrammingError

from torghut_localstack import sql_pack, torghut_db
from torghut_localstack.postgres import PostgresServer
from torghut_localstack.torghut_db import Route, resolve_route

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


def apply_pack(engine: Engine) -> None:
    """What the operator's sql mode does: each file in order, in its own transaction."""
    for path in sql_pack.pack_files():
        with engine.begin() as conn:
            conn.exec_driver_sql(path.read_text("utf-8"))


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


def test_grants_all_four_privileges_on_the_five_research_tables(engine: Engine, db_url: str) -> None:
    before = torghut_db.research_privileges(engine)
    assert len(before) == 20
    assert not any(before.values()), f"fixture must start without research grants: {before}"

    apply_pack(engine)

    after = torghut_db.research_privileges(engine)
    missing = sorted(key for key, granted in after.items() if not granted)
    assert missing == []

    # and the runtime role can really write the ledger now
    app = _engine(db_url.replace("postgres@", f"{torghut_db.APP_ROLE}@", 1))
    try:
        seeded = torghut_db.seed_research_run(app, candidates=1, folds=1, stress_cases=("latency_spike",))
        assert seeded.rows["research_promotions"] == 1
    finally:
        app.dispose()


def test_grants_fail_closed_without_the_research_tables(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE research_promotions")
    first = sql_pack.pack_files()[0]
    with pytest.raises(ProgrammingError, match="research_promotions"), engine.begin() as conn:
        conn.exec_driver_sql(first.read_text("utf-8"))
    with engine.connect() as conn:
        granted = conn.execute(
            text("SELECT has_table_privilege(:role, 'public.research_runs', 'INSERT')"),
            {"role": torghut_db.APP_ROLE},
        ).scalar_one()
    assert granted is False  # the whole file rolled back


# ---- backfill -----------------------------------------------------------------------------------


def test_backfill_the_torghut_md_example(engine: Engine) -> None:
    row = insert_row(engine, {"_execution_route_expected": "lean", "_execution_route_actual": "alpaca_fallback"})
    assert routes(engine)[row] == Route(None, None, 0, None)

    apply_pack(engine)

    assert routes(engine)[row] == Route("lean", "alpaca", 1, "fallback_from_lean_to_alpaca")


PRECEDENCE_CASES: list[tuple[str, dict[str, object], dict[str, object], Route]] = [
    (
        "route markers beat response fields",
        {
            "_execution_route_expected": "lean",
            "execution_expected_adapter": "simulation",
            "_execution_route_actual": "lean",
            "_execution_adapter": "alpaca",
            "execution_actual_adapter": "simulation",
        },
        {},
        Route("lean", "lean", 0, None),
    ),
    (
        "_execution_adapter beats execution_actual_adapter, expected defaults to actual",
        {"_execution_adapter": "simulation", "execution_actual_adapter": "alpaca"},
        {},
        Route("simulation", "simulation", 0, None),
    ),
    (
        "response fields alone",
        {"execution_expected_adapter": "lean", "execution_actual_adapter": "alpaca"},
        {},
        Route("lean", "alpaca", 1, "fallback_from_lean_to_alpaca"),
    ),
    (
        "empty, blank and unknown markers are skipped",
        {
            "_execution_route_expected": "  ",
            "execution_expected_adapter": "lean",
            "_execution_route_actual": "unknown",
            "_execution_adapter": "alpaca_fallback",
            "execution_actual_adapter": "lean",
        },
        {},
        Route("lean", "alpaca", 1, "fallback_from_lean_to_alpaca"),
    ),
    (
        "trimmed and lower-cased",
        {"_execution_route_expected": " LEAN ", "_execution_route_actual": "Alpaca_Fallback"},
        {},
        Route("lean", "alpaca", 1, "fallback_from_lean_to_alpaca"),
    ),
    (
        "alpaca_fallback alone: expected unknowable",
        {"_execution_adapter": "alpaca_fallback"},
        {},
        Route(None, "alpaca", 0, None),
    ),
    (
        "non-string markers are junk",
        {"_execution_route_expected": 42, "_execution_route_actual": {"adapter": "lean"}},
        {},
        Route(None, None, 0, None),
    ),
    ("no markers: left alone", {}, {}, Route(None, None, 0, None)),
    (
        "no markers, unknown columns: left alone",
        {},
        {"execution_expected_adapter": "unknown", "execution_actual_adapter": "unknown"},
        Route("unknown", "unknown", 0, None),
    ),
    (
        "a column value beats the markers",
        {"_execution_route_expected": "alpaca", "_execution_route_actual": "alpaca_fallback"},
        {"execution_expected_adapter": "lean", "execution_actual_adapter": "unknown"},
        Route("lean", "alpaca", 1, "fallback_from_lean_to_alpaca"),
    ),
    (
        "alpaca_fallback in a column is normalized",
        {},
        {"execution_expected_adapter": "lean", "execution_actual_adapter": "alpaca_fallback"},
        Route("lean", "alpaca", 1, "fallback_from_lean_to_alpaca"),
    ),
    (
        "an existing reason is kept, the count raised",
        {},
        {
            "execution_expected_adapter": "lean",
            "execution_actual_adapter": "alpaca",
            "execution_fallback_reason": "lean_submit_timeout",
        },
        Route("lean", "alpaca", 1, "lean_submit_timeout"),
    ),
    (
        "an existing count above 1 is kept",
        {"_execution_route_expected": "lean", "_execution_route_actual": "alpaca_fallback"},
        {"execution_fallback_count": 3},
        Route("lean", "alpaca", 3, "fallback_from_lean_to_alpaca"),
    ),
]


@pytest.mark.parametrize(
    ("raw_order", "columns", "expected"),
    [pytest.param(raw, cols, want, id=name) for name, raw, cols, want in PRECEDENCE_CASES],
)
def test_backfill_precedence(
    engine: Engine, raw_order: dict[str, object], columns: dict[str, object], expected: Route
) -> None:
    row = insert_row(engine, raw_order, columns)
    before = routes(engine)[row]
    python = resolve_route(
        raw_order,
        expected_column=before.expected,
        actual_column=before.actual,
        fallback_count=before.fallback_count,
        fallback_reason=before.fallback_reason,
    )
    # the Python resolver (used by the seeders and the simulator) predicts the SQL, except that
    # SQL keeps an unusable column value when nothing better is known
    assert (
        Route(
            python.expected or before.expected,
            python.actual or before.actual,
            python.fallback_count,
            python.fallback_reason,
        )
        == expected
    )

    apply_pack(engine)

    assert routes(engine)[row] == expected


def test_backfill_matches_the_python_resolver_on_realistic_rows(engine: Engine) -> None:
    torghut_db.seed_executions(engine, 120, null_adapters=True, seed=7)
    torghut_db.seed_executions(engine, 40, null_adapters="unknown", seed=8)
    torghut_db.seed_executions(engine, 40, null_adapters=False, seed=9)
    with engine.connect() as conn:
        raw = {r[0]: r[1] for r in conn.execute(text("SELECT id::text, raw_order FROM executions"))}

    apply_pack(engine)

    after = routes(engine)
    assert len(after) == 200
    for row_id, route in after.items():
        want = resolve_route(raw[row_id])
        assert route.expected == (want.expected or route.expected), (row_id, raw[row_id])
        assert route.actual == (want.actual or route.actual), (row_id, raw[row_id])
        assert (route.fallback_count, route.fallback_reason) == (want.fallback_count, want.fallback_reason)
    nulls = [r for r in after.values() if r.expected in (None, "unknown") or r.actual in (None, "unknown")]
    # only the rows written before route markers existed stay without provenance
    no_marker_rows = [i for i, raw_order in raw.items() if resolve_route(raw_order).actual is None]
    assert len(nulls) == len(no_marker_rows) > 0


def test_rerunning_the_pack_changes_nothing(engine: Engine) -> None:
    torghut_db.seed_executions(engine, 80, null_adapters=True, seed=1)
    torghut_db.seed_executions(engine, 20, null_adapters="unknown", route_markers="none", seed=2)
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
        ids = torghut_db.seed_executions(eng, 4, route_markers=["lean_fallback", "adapter_marker"], seed=4)
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

    apply_pack(engine)

    with engine.connect() as conn:
        null_after, fallback_wrong = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE execution_actual_adapter IS NULL),"
                " count(*) FILTER (WHERE execution_expected_adapter <> execution_actual_adapter"
                "   AND (execution_fallback_count < 1 OR execution_fallback_reason IS NULL))"
                " FROM executions"
            )
        ).one()
    assert null_after == pytest.approx(null_before / 10, rel=0.2)  # one in ten had no markers
    assert fallback_wrong == 0


# ---- the files and the ConfigMap ------------------------------------------------------------------


def test_pack_files_are_executor_safe() -> None:
    files = sql_pack.pack_files()
    assert [f.name for f in files] == ["0001_research_grants.sql", "0002_route_provenance_backfill.sql"]
    for path in files:
        body = path.read_text("utf-8")
        code = "\n".join(line.split("--", 1)[0] for line in body.splitlines())
        assert not re.search(r"\b(BEGIN|COMMIT|ROLLBACK|CONCURRENTLY)\b", code, re.IGNORECASE), path.name
        assert "%" not in body, path.name
        assert not re.search(r"(?<!:):[A-Za-z_]", body), f"{path.name}: bind-parameter-like syntax"
        for line in body.splitlines():
            if line.lstrip().startswith("--"):
                assert ";" not in line, f"{path.name}: semicolon in a comment: {line}"


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
