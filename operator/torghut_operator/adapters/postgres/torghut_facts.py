"""Collects the Torghut facts of the evidence report from the Torghut database, read-only: one REPEATABLE READ,
READ ONLY transaction (one snapshot), a statement timeout on every query, each fact behind its own savepoint. A
missing table or column, a timeout or an unreachable database makes that fact "unavailable: <reason>", never an
exception.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import TypeVar

import sqlalchemy as sa

from torghut_operator.adapters.postgres.engine import describe_db_error, pg_engine, redact, set_local_timeouts
from torghut_operator.adapters.torghut.schema_facts import KNOWN_TABLES, missing_column, missing_table
from torghut_operator.core.timefmt import utcnow
from torghut_operator.evidence.facts import (
    LANE_RUNS,
    GateDecision,
    LaneRun,
    RouteNullRate,
    TableUnavailable,
    TableWrites,
    TorghutFacts,
    Unavailable,
)

_UNSET = "COALESCE(NULLIF({col}, ''), 'unknown') = 'unknown'"
ROUTE_NULL_RATE_SQL = f"""
SELECT count(*) AS executions,
       count(*) FILTER (WHERE {_UNSET.format(col="execution_expected_adapter")}
                           OR {_UNSET.format(col="execution_actual_adapter")}) AS unset
FROM executions
WHERE created_at >= :since
""".strip()
RESEARCH_TABLES_SQL = r"""
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname LIKE 'research\_%'
ORDER BY c.relname
""".strip()
"""Every research_* table now (pg_class: visible whatever the role's privileges)."""
TABLE_WRITES_SQL = "SELECT count(*) FILTER (WHERE created_at >= :since), count(*) FROM {table}"
LANE_RUNS_SQL = """
SELECT run_id, status, strategy_id, created_at FROM research_runs
WHERE created_at >= :since ORDER BY created_at, run_id LIMIT :limit
""".strip()
GATE_DECISIONS_SQL = """
SELECT c.run_id, c.candidate_id, p.decision_action, p.requested_mode, p.approved_mode, p.approve_reason,
       p.deny_reason, p.paper_candidate_patch_ref
FROM research_candidates c LEFT JOIN research_promotions p ON p.candidate_id = c.candidate_id
WHERE c.run_id = ANY(:runs)
ORDER BY c.run_id, c.candidate_id, p.created_at, p.id
""".strip()

_T = TypeVar("_T")


def collect_torghut_facts(
    dsn: str,
    *,
    since: datetime,
    connect_timeout: float = 5,
    statement_timeout: float = 10,
    lane_runs: int = LANE_RUNS,
) -> TorghutFacts:
    """The checklist's evidence artifacts since ``since`` (timezone-aware), read-only; never raises for database
    trouble: what could not be read is :class:`Unavailable`."""
    if since.tzinfo is None:
        raise ValueError("since must be timezone-aware")
    collected_at = utcnow()
    engine = pg_engine(
        dsn,
        connect_timeout=connect_timeout,
        statement_timeout=statement_timeout,
        lock_timeout=statement_timeout,
        application_name="torghut-rollout report",
    )
    try:
        with engine.connect() as conn:
            tx = conn.begin()
            try:
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                set_local_timeouts(conn, statement_timeout=statement_timeout, lock_timeout=statement_timeout)
                route = _fact(conn, dsn, lambda: _route_null_rate(conn, since))
                tables = _fact(conn, dsn, lambda: _research_tables(conn))
                writes: tuple[TableWrites | TableUnavailable, ...] | Unavailable = (
                    tables if isinstance(tables, Unavailable) else tuple(_writes(conn, dsn, t, since) for t in tables)
                )
                runs = _fact(conn, dsn, lambda: _lane_runs(conn, since, lane_runs))
            finally:
                tx.rollback()
    except sa.exc.DBAPIError as exc:
        error = describe_db_error(exc, dsn)
        down = Unavailable(f"database not reachable: {error.sqlstate or 'error'} {error.message}")
        return TorghutFacts(since, collected_at, down, down, down)
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        down = Unavailable(f"database not reachable: {type(exc).__name__}: {redact(str(exc), dsn)}")
        return TorghutFacts(since, collected_at, down, down, down)
    finally:
        engine.dispose()
    return TorghutFacts(since, collected_at, route, writes, runs)


def _fact(conn: sa.Connection, dsn: str, read: Callable[[], _T]) -> _T | Unavailable:
    """``read()`` behind a savepoint, so a failing fact leaves the transaction usable for the next."""
    try:
        with conn.begin_nested():
            return read()
    except sa.exc.DBAPIError as exc:
        if conn.invalidated:
            raise
        error = describe_db_error(exc, dsn)
        message = _schema_gap(error.sqlstate, error.message) or error.message
        return Unavailable(f"{message} ({error.sqlstate})" if error.sqlstate else message)


def _schema_gap(sqlstate: str | None, message: str) -> str | None:
    """A database older than the query, said as such with the Torghut migration that adds what is missing."""
    found = {"42703": missing_column, "42P01": missing_table}.get(sqlstate or "", lambda _: None)(message)
    return found if found is not None and "added by" in found else None


_PRIORITY = {table: i for i, table in enumerate(KNOWN_TABLES)}


def _research_tables(conn: sa.Connection) -> tuple[str, ...]:
    names = [str(r[0]) for r in conn.execute(sa.text(RESEARCH_TABLES_SQL))]
    # the ledger of 0006 in its own order, then later tables by name
    return tuple(sorted(names, key=lambda t: (_PRIORITY.get(t, len(_PRIORITY)), t)))


def _writes(conn: sa.Connection, dsn: str, table: str, since: datetime) -> TableWrites | TableUnavailable:
    got = _fact(conn, dsn, partial(_table_writes, conn, table, since))
    return TableUnavailable(table, got.reason) if isinstance(got, Unavailable) else got


def _route_null_rate(conn: sa.Connection, since: datetime) -> RouteNullRate:
    executions, unset = conn.execute(sa.text(ROUTE_NULL_RATE_SQL), {"since": since}).one()
    return RouteNullRate(executions=int(executions), unset=int(unset))


def _table_writes(conn: sa.Connection, table: str, since: datetime) -> TableWrites:
    quoted = '"' + table.replace('"', '""') + '"'  # a name read from pg_class, quoted as an identifier
    in_window, total = conn.execute(sa.text(TABLE_WRITES_SQL.format(table=quoted)), {"since": since}).one()
    return TableWrites(table=table, in_window=int(in_window), total=int(total))


def _lane_runs(conn: sa.Connection, since: datetime, limit: int) -> tuple[LaneRun, ...]:
    runs = conn.execute(sa.text(LANE_RUNS_SQL), {"since": since, "limit": limit}).all()
    decisions: dict[str, list[GateDecision]] = {str(r.run_id): [] for r in runs}
    if runs:
        for row in conn.execute(sa.text(GATE_DECISIONS_SQL), {"runs": list(decisions)}):
            decisions[str(row.run_id)].append(
                GateDecision(
                    candidate_id=row.candidate_id,
                    decision_action=row.decision_action,
                    requested_mode=row.requested_mode,
                    approved_mode=row.approved_mode,
                    approve_reason=row.approve_reason,
                    deny_reason=row.deny_reason,
                    patch_ref=row.paper_candidate_patch_ref,
                )
            )
    return tuple(
        LaneRun(
            run_id=str(r.run_id),
            status=str(r.status),
            strategy_id=r.strategy_id,
            created_at=r.created_at,
            decisions=tuple(decisions[str(r.run_id)]),
        )
        for r in runs
    )
