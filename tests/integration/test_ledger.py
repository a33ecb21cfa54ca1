"""The evidence ledger and the Torghut facts collector against a real PostgreSQL 15."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from torghut_localstack.ports import free_port
from torghut_localstack.postgres import PostgresServer
from torghut_localstack.torghut_db import (
    APP_ROLE,
    HEAD_RESEARCH_TABLES,
    RESEARCH_TABLES,
    create_database,
    create_schema,
    drop_database,
    make_engine,
    research_tables_of,
    seed_executions,
    seed_research_run,
)
from torghut_operator.adapters.postgres.ledger import LOCK_KEY, Ledger, LedgerError, latest_version
from torghut_operator.adapters.postgres.migrator import LOCK_KEY as SQL_MIGRATOR_LOCK_KEY
from torghut_operator.adapters.postgres.migrator import SqlMigrator
from torghut_operator.adapters.postgres.torghut_facts import collect_torghut_facts
from torghut_operator.core.api.status import TorghutRolloutStatus
from torghut_operator.core.records import LedgerDecision, LedgerMeasurement, RolloutRef, query_hash
from torghut_operator.evidence.facts import RouteNullRate, TableUnavailable, TableWrites, Unavailable
from torghut_operator.evidence.report import render_report

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
REF = RolloutRef(uid="8c1f-uid", name="release-42", namespace="torghut", attempt=1, spec_hash="0123456789abcdef")


@pytest.fixture
def dsn(postgres: PostgresServer) -> Iterator[str]:
    """A fresh, empty database per test."""
    name = f"ledger_{uuid.uuid4().hex[:16]}"
    create_database(postgres.dsn(), name)
    yield postgres.dsn(name)
    drop_database(postgres.dsn(), name)


def rows(dsn: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, connect_timeout=5, options="-c statement_timeout=10000") as conn:
        return conn.execute(query).fetchall()


def measurement(check: str, minute: int, verdict: str = "Successful", value: str | None = "0") -> LedgerMeasurement:
    return LedgerMeasurement(
        stage="verify",
        check_name=check,
        provider="postgres",
        query="SELECT COUNT(*) AS value FROM executions",
        threshold="<= 0",
        verdict=verdict,
        measured_at=T0 + timedelta(minutes=minute),
        value=value,
        message=f"{check} {verdict}",
    )


def decision(to: str, minute: int, from_: str = "Pending") -> LedgerDecision:
    return LedgerDecision(
        from_phase=from_,
        to_phase=to,
        stage="migrate",
        reason=to,
        decided_at=T0 + timedelta(minutes=minute),
        message=f"{from_} -> {to}",
    )


# --- schema ---------------------------------------------------------------------------------------------------


def test_schema_is_created_once_and_versioned(dsn: str) -> None:
    ledger = Ledger(dsn)
    assert ledger.schema_version() == 0

    ledger.ensure_schema()

    assert ledger.schema_version() == latest_version() == 1
    assert [r[:2] for r in rows(dsn, "SELECT version, name FROM torghut_rollout.ledger_schema_version")] == [
        (1, "0001_ledger.sql")
    ]
    uniques = rows(
        dsn,
        "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE contype = 'u' AND connamespace = 'torghut_rollout'::regnamespace ORDER BY 1",
    )
    assert uniques == [
        ("torghut_rollout.measurements", "UNIQUE (rollout_uid, attempt, check_name, measured_at)"),
        ("torghut_rollout.stage_decisions", "UNIQUE (rollout_uid, attempt, to_phase, decided_at)"),
    ]
    indexes = {r[0] for r in rows(dsn, "SELECT indexdef FROM pg_indexes WHERE schemaname = 'torghut_rollout'")}
    assert (
        "CREATE INDEX measurements_by_rollout_time ON torghut_rollout.measurements USING btree (rollout_uid, measured_at)"
        in indexes
    )
    assert (
        "CREATE INDEX stage_decisions_by_rollout_time ON torghut_rollout.stage_decisions "
        "USING btree (rollout_uid, decided_at)" in indexes
    )


def test_ensure_schema_again_is_a_no_op(dsn: str) -> None:
    Ledger(dsn).ensure_schema()
    before = rows(dsn, "SELECT version, applied_at FROM torghut_rollout.ledger_schema_version")

    # A current database is recognised without the advisory lock: another session holding it doesn't matter.
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
        ledger = Ledger(dsn, statement_timeout=1)
        ledger.ensure_schema()
    assert rows(dsn, "SELECT version, applied_at FROM torghut_rollout.ledger_schema_version") == before

    # Once it succeeded, the instance doesn't look again (not even after the schema is gone).
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        conn.execute("DROP SCHEMA torghut_rollout CASCADE")
    ledger.ensure_schema()
    assert rows(dsn, "SELECT to_regnamespace('torghut_rollout') IS NULL") == [(True,)]


def test_a_busy_lock_on_a_fresh_database_is_a_ledger_error(dsn: str) -> None:
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
        with pytest.raises(LedgerError, match="55P03") as caught:
            Ledger(dsn, statement_timeout=0.5).ensure_schema()
    assert caught.value.retryable
    Ledger(dsn).ensure_schema()  # and it works once the lock is free
    assert LOCK_KEY != SQL_MIGRATOR_LOCK_KEY


def test_the_schema_is_created_only_under_the_sql_migrators_lock_too(dsn: str) -> None:
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as migrator:
        migrator.execute("SELECT pg_advisory_lock(%s)", [SQL_MIGRATOR_LOCK_KEY])
        with pytest.raises(LedgerError, match="SQL migrator holds its lock") as caught:
            Ledger(dsn, statement_timeout=0.5).ensure_schema()
        assert caught.value.retryable
        assert rows(dsn, "SELECT to_regnamespace('torghut_rollout') IS NULL") == [(True,)]
        migrator.execute("CREATE SCHEMA torghut_rollout")
        Ledger(dsn, statement_timeout=0.5).ensure_schema()  # an existing schema needs no lock of the migrator's
    assert Ledger(dsn).schema_version() == 1


def test_concurrent_ensure_schema_both_succeed(dsn: str) -> None:
    start = threading.Barrier(2, timeout=30)

    def ensure() -> int:
        ledger = Ledger(dsn)
        start.wait()
        ledger.ensure_schema()
        return ledger.schema_version()

    with ThreadPoolExecutor(2) as pool:
        versions = list(pool.map(lambda _: ensure(), range(2)))
    assert versions == [1, 1]
    assert rows(dsn, "SELECT count(*) FROM torghut_rollout.ledger_schema_version") == [(1,)]


def test_shares_its_schema_with_the_sql_migrator(dsn: str) -> None:
    start = threading.Barrier(2, timeout=30)

    def migrate() -> bool:
        migrator = SqlMigrator(dsn, connect_timeout=5, lock_timeout=10, statement_timeout=10)
        start.wait()
        return migrator.apply({"0001_app.sql": "CREATE TABLE app (id int);"}, rollout="torghut/r").ok

    def ledger() -> bool:
        start.wait()
        Ledger(dsn).ensure_schema()
        return True

    with ThreadPoolExecutor(2) as pool:
        results = [pool.submit(migrate), pool.submit(ledger)]
        assert [r.result(timeout=60) for r in results] == [True, True]
    tables = rows(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'torghut_rollout' ORDER BY 1")
    assert tables == [
        ("ledger_schema_version",),
        ("measurements",),
        ("sql_migrations",),
        ("sql_runs",),
        ("stage_decisions",),
    ]


# --- recording and reading ------------------------------------------------------------------------------------


def test_recording_the_same_measurement_twice_stores_one_row(dsn: str) -> None:
    ledger = Ledger(dsn)
    m = measurement("route-null-rate", 1, value=None)
    d = decision("Migrating", 0)

    ledger.record(REF, measurements=[m], decisions=[d])
    Ledger(dsn).record(REF, measurements=[m], decisions=[d])  # a restarted operator records again

    stored = ledger.measurements(REF.uid)
    assert len(stored) == 1
    assert stored[0].measurement == m
    assert stored[0].rollout == REF
    assert stored[0].query_hash == query_hash(m.query) == m.query_hash
    assert stored[0].measurement.value is None
    assert [r.decision for r in ledger.decisions(REF.uid)] == [d]
    # another attempt is another measurement
    ledger.record(RolloutRef(**{**REF.__dict__, "attempt": 2}), measurements=[m], decisions=[])
    assert [r.rollout.attempt for r in ledger.measurements(REF.uid)] == [1, 2]


def test_record_is_one_transaction(dsn: str) -> None:
    ledger = Ledger(dsn)
    bad = LedgerDecision("Pending", "Migrating", "migrate", "Migrating", T0, "NUL \x00 is not text")
    with pytest.raises(LedgerError, match="recording evidence of torghut/release-42"):
        ledger.record(REF, measurements=[measurement("route-null-rate", 1)], decisions=[bad])
    assert ledger.measurements(REF.uid) == []


def test_readers_order_by_time(dsn: str) -> None:
    ledger = Ledger(dsn)
    assert ledger.measurements(REF.uid) == []  # no ledger yet: nothing, and nothing created
    assert ledger.schema_version() == 0

    ledger.record(
        REF,
        measurements=[measurement("b", 5), measurement("a", 5), measurement("a", 1, "Inconclusive", None)],
        decisions=[decision("Verifying", 4, "Deploying"), decision("Migrating", 0)],
    )
    ledger.record(REF, measurements=[measurement("a", 3)], decisions=[decision("Deploying", 2, "Migrating")])
    other = RolloutRef("other-uid", "release-43", "torghut", 1, "fedcba9876543210")
    ledger.record(other, measurements=[measurement("a", 0)], decisions=[decision("Migrating", 0)])

    assert [(r.measurement.check_name, r.measurement.measured_at.minute) for r in ledger.measurements(REF.uid)] == [
        ("a", 1),
        ("a", 3),
        ("a", 5),
        ("b", 5),
    ]
    assert [r.decision.to_phase for r in ledger.decisions(REF.uid)] == ["Migrating", "Deploying", "Verifying"]
    assert len(ledger.measurements(other.uid)) == 1


def test_errors_never_show_the_dsn_or_password(postgres: PostgresServer) -> None:
    secret = "s3cret-pw"
    missing_db = postgres.dsn("no_such_database", user="postgres", password=secret)
    closed_port = f"postgresql://postgres:{secret}@127.0.0.1:{free_port()}/torghut"
    for dsn in (missing_db, closed_port):
        with pytest.raises(LedgerError) as caught:
            Ledger(dsn, connect_timeout=2).ensure_schema()
        text = str(caught.value)
        assert secret not in text
        assert dsn not in text
        assert text.startswith("evidence ledger: preparing the ledger schema failed")
        assert caught.value.__cause__ is None
        assert secret not in repr(Ledger(dsn))


# --- Torghut facts --------------------------------------------------------------------------------------------


@pytest.fixture
def torghut(dsn: str) -> Iterator[sa.Engine]:
    engine = make_engine(dsn)
    create_schema(engine, state="head")
    yield engine
    engine.dispose()


def test_facts_from_a_torghut_database(torghut: sa.Engine, dsn: str) -> None:
    now = datetime.now(UTC)
    since = now - timedelta(hours=1)
    # before the window: historical fills without adapters (they don't count) and an older lane run
    seed_executions(torghut, 5, null_adapters=True, created_at=now - timedelta(hours=3), seed=1)
    before = seed_research_run(torghut, run_id="run-0", created_at=now - timedelta(hours=2), seed=1)
    # in the window: 6 routed fills, 2 without adapters (NULL), 1 written as 'unknown'
    seed_executions(torghut, 6, route_markers=["alpaca", "lean_fallback"], null_adapters=False, seed=2)
    seed_executions(torghut, 2, route_markers="none", null_adapters=True, seed=3)
    seed_executions(torghut, 1, route_markers="lean", null_adapters="unknown", seed=4)
    runs = [
        seed_research_run(torghut, run_id="run-1", created_at=since + timedelta(minutes=5), seed=1),
        seed_research_run(
            torghut, run_id="run-2", created_at=since + timedelta(minutes=10), decision_action="reject", seed=2
        ),
        seed_research_run(torghut, run_id="run-3", created_at=since + timedelta(minutes=15), candidates=0),
        seed_research_run(torghut, run_id="run-4", created_at=since + timedelta(minutes=20), seed=4),
    ]

    facts = collect_torghut_facts(dsn, since=since)

    assert facts.route_null_rate == RouteNullRate(executions=9, unset=3)
    in_window = {t: sum(r.rows.get(t, 0) for r in runs) for t in HEAD_RESEARCH_TABLES}
    # every research_* table that exists: the ledger of 0006 first, then the later tables of 0026 by name
    ordered = RESEARCH_TABLES + tuple(sorted(HEAD_RESEARCH_TABLES[len(RESEARCH_TABLES) :]))
    assert facts.research_writes == tuple(
        TableWrites(t, in_window[t], in_window[t] + before.rows.get(t, 0)) for t in ordered
    )
    assert in_window["research_attempts"] > 0, "the lane of this schema writes the tables of 0026 too"
    assert not isinstance(facts.lane_runs, Unavailable)
    assert [r.run_id for r in facts.lane_runs] == ["run-1", "run-2", "run-3"]
    first, second, third = facts.lane_runs
    assert [(d.candidate_id, d.decision_action, d.approved_mode, d.reason, d.patch_ref) for d in first.decisions] == [
        ("run-1-c01", "promote", "paper", "walk_forward_and_stress_gates_passed", "autonomy/patches/run-1-c01.yaml"),
        ("run-1-c02", "hold", None, "insufficient_fold_stability", None),
    ]
    assert [(d.decision_action, d.approved_mode, d.patch_ref) for d in second.decisions] == [
        ("reject", None, None),
        ("hold", None, None),
    ]
    assert third.decisions == ()

    text = render_report(
        name="release-42",
        namespace="torghut",
        spec=None,
        status=TorghutRolloutStatus(),
        measurements=[],
        decisions=[],
        facts=facts,
    )
    assert "- Execution route null rate: **33.33%** (3 of 9 executions without an expected or actual adapter)" in text
    assert "| research_runs | 4 | 5 |" in text
    assert (
        "| `run-1-c01` | promote | paper | walk_forward_and_stress_gates_passed | `autonomy/patches/run-1-c01.yaml` |"
        in text
    )
    assert "| `run-3` |" in text
    assert "| `run-4` |" not in text
    assert "**3 of 3**" in text


def test_facts_read_as_the_runtime_role_without_research_grants(
    torghut: sa.Engine, postgres: PostgresServer, dsn: str
) -> None:
    """torghut_app may read executions but not the research tables of 0026 (no migration grants them): those
    writes are unavailable, named by table, the others are counted."""
    seed_executions(torghut, 4, route_markers="alpaca", null_adapters=False, seed=5)
    database = dsn.rsplit("/", 1)[1]

    facts = collect_torghut_facts(postgres.dsn(database, user=APP_ROLE), since=datetime.now(UTC) - timedelta(hours=1))

    assert facts.route_null_rate == RouteNullRate(executions=4, unset=0)
    assert isinstance(facts.research_writes, tuple)
    denied = {w.table: w for w in facts.research_writes if isinstance(w, TableUnavailable)}
    assert denied == {
        t: TableUnavailable(t, f"permission denied for table {t} (42501)") for t in HEAD_RESEARCH_TABLES[5:]
    }
    assert {w.table for w in facts.research_writes if isinstance(w, TableWrites)} == set(RESEARCH_TABLES)
    assert not isinstance(facts.lane_runs, Unavailable)


def test_facts_when_tables_are_missing(dsn: str) -> None:
    since = datetime.now(UTC) - timedelta(hours=1)

    facts = collect_torghut_facts(dsn, since=since)

    assert facts.route_null_rate == Unavailable('relation "executions" does not exist (42P01)')
    assert facts.research_writes == ()
    assert facts.lane_runs == Unavailable(
        "schema lacks table research_runs (added by Torghut migration 0006_autonomy_ledger_and_execution_route) (42P01)"
    )
    text = render_report(
        name="r", namespace="n", spec=None, status=TorghutRolloutStatus(), measurements=[], decisions=[], facts=facts
    )
    assert '- Execution route null rate: unavailable: relation "executions" does not exist (42P01)' in text
    assert "No research_* table in schema public." in text


def test_lane_run_decisions_on_a_schema_before_0011_say_the_schema_is_too_old(dsn: str) -> None:
    engine = make_engine(dsn)
    try:
        create_schema(engine, state="checklist")
        seed_research_run(engine, run_id="run-1")
    finally:
        engine.dispose()

    facts = collect_torghut_facts(dsn, since=datetime.now(UTC) - timedelta(hours=1))

    assert facts.lane_runs == Unavailable(
        "schema lacks research_promotions.decision_action (added by Torghut migration "
        "0011_autonomy_lifecycle_and_promotion_audit) (42703)"
    )
    assert isinstance(facts.research_writes, tuple)
    assert sorted(w.table for w in facts.research_writes) == sorted(research_tables_of("checklist"))


def test_facts_before_route_provenance_columns(dsn: str) -> None:
    engine = make_engine(dsn)
    try:
        create_schema(engine, with_adapter_columns=False)
    finally:
        engine.dispose()

    facts = collect_torghut_facts(dsn, since=datetime.now(UTC) - timedelta(hours=1))

    assert facts.route_null_rate == Unavailable(
        "schema lacks executions.execution_expected_adapter (added by Torghut migration "
        "0006_autonomy_ledger_and_execution_route) (42703)"
    )
    assert isinstance(facts.research_writes, tuple)
    assert all(isinstance(w, TableWrites) for w in facts.research_writes)


def test_facts_when_the_database_is_unreachable() -> None:
    secret = "s3cret-pw"
    facts = collect_torghut_facts(
        f"postgresql://torghut:{secret}@127.0.0.1:{free_port()}/torghut",
        since=datetime.now(UTC),
        connect_timeout=2,
    )
    assert isinstance(facts.route_null_rate, Unavailable)
    assert facts.route_null_rate.reason.startswith("database not reachable:")
    assert secret not in facts.route_null_rate.reason
    assert facts.research_writes == facts.lane_runs == facts.route_null_rate
