"""The evidence ledger: every measurement and every stage decision of every TorghutRollout, kept in Postgres.

Status keeps the last few measurements per check; the ledger keeps them all, in schema ``torghut_rollout`` beside
the SQL migrator's history (``sql_migrations``) but in tables of its own:

* ``measurements``: one row per measurement (value, threshold, verdict, the query and its sha256, when);
* ``stage_decisions``: one row per phase transition (from, to, the stage, why, when).

Recording is idempotent: both tables have a natural UNIQUE key and rows are inserted with ON CONFLICT DO NOTHING,
so an operator restarted between writing status and recording evidence records the same rows again harmlessly.
Recording the measurements still in status on every turn therefore heals a crash in between.

The ledger's own schema is versioned: the ordered files ``sql/NNNN_name.sql`` of this package are applied once
each, in their own transaction together with their row in ``ledger_schema_version``, under an advisory lock
(another key than the SQL migrator's). The schema ``torghut_rollout`` itself is created, when missing, while also
holding the SQL migrator's lock for that one transaction, since two concurrent CREATE SCHEMA IF NOT EXISTS make one
fail. :meth:`Ledger.ensure_schema` costs one query while the schema is current and nothing at all once it has
succeeded in this instance.

Every connection is opened with a connect timeout and statement/lock timeouts; errors raise :class:`LedgerError`,
whose message never contains the DSN or its password.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources
from typing import Any, TypeVar

import psycopg
import sqlalchemy as sa

from torghut_operator.adapters.postgres.engine import (
    advisory_lock,
    advisory_unlock,
    describe_db_error,
    pg_engine,
    redact,
    set_local_timeouts,
)
from torghut_operator.adapters.postgres.migrator import LOCK_KEY as SQL_MIGRATOR_LOCK_KEY
from torghut_operator.core.errors import TemporaryError
from torghut_operator.core.records import (
    DecisionRecord,
    LedgerDecision,
    LedgerMeasurement,
    MeasurementRecord,
    RolloutRef,
)

SCHEMA = "torghut_rollout"
VERSION_TABLE = f"{SCHEMA}.ledger_schema_version"
MEASUREMENTS_TABLE = f"{SCHEMA}.measurements"
DECISIONS_TABLE = f"{SCHEMA}.stage_decisions"

LOCK_KEY = int.from_bytes(hashlib.sha256(VERSION_TABLE.encode()).digest()[:8], "big", signed=True)
"""The advisory lock (bigint form) held while the ledger's schema is migrated: the first 8 bytes of
sha256(b"torghut_rollout.ledger_schema_version") as a signed big-endian integer, derived like the SQL migrator's
key from its own table, so the two never collide."""

_STEP_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class LedgerError(TemporaryError):
    """The ledger could not be read or written. The message names what failed, never the DSN or a password."""

    def __init__(self, message: str, *, sqlstate: str | None = None, retryable: bool = True) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.retryable = retryable


# ---------------------------------------------------------------------------------------------------------------
# The schema


@dataclass(frozen=True)
class SchemaStep:
    version: int
    name: str
    sql: str


@cache
def schema_steps() -> tuple[SchemaStep, ...]:
    """The ledger's DDL steps (``sql/NNNN_name.sql``), in version order."""
    folder = resources.files("torghut_operator.adapters.postgres").joinpath("ledger_sql")
    steps = []
    for entry in folder.iterdir():
        match = _STEP_FILE.match(entry.name)
        if match is not None:
            steps.append(SchemaStep(int(match[1]), entry.name, entry.read_text(encoding="utf-8")))
    steps.sort(key=lambda s: s.version)
    versions = [s.version for s in steps]
    if versions != list(range(1, len(steps) + 1)):
        raise RuntimeError(f"ledger schema steps must be numbered 1..n without gaps, found {versions}")
    return tuple(steps)


def latest_version() -> int:
    """The ledger schema version this operator writes."""
    return schema_steps()[-1].version


_BOOTSTRAP = f"""
CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE {VERSION_TABLE} IS 'Versions of the TorghutRollout evidence ledger schema applied here'
"""
_SCHEMA_EXISTS = sa.text(f"SELECT to_regnamespace('{SCHEMA}') IS NOT NULL")
_VERSION_TABLE_EXISTS = sa.text(f"SELECT to_regclass('{VERSION_TABLE}') IS NOT NULL")
_CURRENT_VERSION = sa.text(f"SELECT COALESCE(max(version), 0) FROM {VERSION_TABLE}")
_STEP_APPLIED = sa.text(f"SELECT EXISTS (SELECT 1 FROM {VERSION_TABLE} WHERE version = :version)")
_RECORD_STEP = sa.text(f"INSERT INTO {VERSION_TABLE} (version, name) VALUES (:version, :name)")
_XACT_LOCK = sa.text("SELECT pg_advisory_xact_lock(:key)")

_INSERT_MEASUREMENT = sa.text(
    f"""
    INSERT INTO {MEASUREMENTS_TABLE} (rollout_uid, rollout_name, namespace, attempt, spec_hash, stage, check_name,
        provider, query_hash, query, value, threshold, verdict, message, measured_at)
    VALUES (:uid, :name, :namespace, :attempt, :spec_hash, :stage, :check_name, :provider, :query_hash, :query,
        :value, :threshold, :verdict, :message, :measured_at)
    ON CONFLICT (rollout_uid, attempt, check_name, measured_at) DO NOTHING
    """
)
_INSERT_DECISION = sa.text(
    f"""
    INSERT INTO {DECISIONS_TABLE} (rollout_uid, rollout_name, namespace, attempt, spec_hash, from_phase, to_phase,
        stage, reason, message, decided_at)
    VALUES (:uid, :name, :namespace, :attempt, :spec_hash, :from_phase, :to_phase, :stage, :reason, :message,
        :decided_at)
    ON CONFLICT (rollout_uid, attempt, to_phase, decided_at) DO NOTHING
    """
)
_TABLES_EXIST = sa.text(f"SELECT to_regclass('{MEASUREMENTS_TABLE}') IS NOT NULL")
_SELECT_MEASUREMENTS = sa.text(
    f"""
    SELECT rollout_uid, rollout_name, namespace, attempt, spec_hash, stage, check_name, provider, query, value,
        threshold, verdict, message, measured_at, query_hash, recorded_at
    FROM {MEASUREMENTS_TABLE} WHERE rollout_uid = :uid ORDER BY measured_at, check_name, id
    """
)
_SELECT_DECISIONS = sa.text(
    f"""
    SELECT rollout_uid, rollout_name, namespace, attempt, spec_hash, from_phase, to_phase, stage, reason, message,
        decided_at, recorded_at
    FROM {DECISIONS_TABLE} WHERE rollout_uid = :uid ORDER BY decided_at, id
    """
)

_T = TypeVar("_T")
_Row = TypeVar("_Row", LedgerMeasurement, LedgerDecision)


# ---------------------------------------------------------------------------------------------------------------
# The ledger (I/O)


class Ledger:
    """The evidence ledger of one database. Holds configuration and an engine that connects only when used (one
    fresh connection per call, no pool); safe to share between threads."""

    def __init__(self, dsn: str, *, connect_timeout: float = 5, statement_timeout: float = 10) -> None:
        if connect_timeout <= 0 or statement_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._statement_timeout = statement_timeout
        self._engine = pg_engine(
            dsn,
            connect_timeout=connect_timeout,
            statement_timeout=statement_timeout,
            lock_timeout=statement_timeout,
            application_name="torghut-rollout ledger",
        )
        self._schema_ready = False
        self._schema_guard = threading.Lock()

    def __repr__(self) -> str:
        return f"Ledger({redact(self._dsn, self._dsn)})"

    def close(self) -> None:
        self._engine.dispose()

    # -- schema ---------------------------------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Bring the ledger's schema to :func:`latest_version`. Free once it succeeded in this instance; one read
        while the database is current; otherwise each missing step in its own transaction under the lock."""
        if self._schema_ready:
            return
        with self._schema_guard:
            if self._schema_ready:
                return
            self._run("preparing the ledger schema", self._migrate)
            self._schema_ready = True

    def schema_version(self) -> int:
        """The version recorded in the database (0: no ledger yet)."""
        return self._run("reading the ledger schema version", self._read_version)

    def _migrate(self, conn: sa.Connection) -> None:
        if self._read_version(conn) >= latest_version():
            return
        self._lock(conn)
        try:
            self._bootstrap(conn)
            for step in schema_steps():
                with conn.begin():
                    set_local_timeouts(
                        conn, statement_timeout=self._statement_timeout, lock_timeout=self._statement_timeout
                    )
                    if conn.execute(_STEP_APPLIED, {"version": step.version}).scalar_one():
                        continue
                    conn.exec_driver_sql(step.sql).close()
                    conn.execute(_RECORD_STEP, {"version": step.version, "name": step.name})
        finally:
            advisory_unlock(conn, LOCK_KEY)

    @staticmethod
    def _read_version(conn: sa.Connection) -> int:
        with conn.begin():
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            if not conn.execute(_VERSION_TABLE_EXISTS).scalar_one():
                return 0
            return int(conn.execute(_CURRENT_VERSION).scalar_one())

    def _bootstrap(self, conn: sa.Connection) -> None:
        """The schema and the version table. The schema is shared with the SQL migrator, which creates it under
        its own advisory lock: two concurrent CREATE SCHEMA IF NOT EXISTS make one of them fail, so the schema is
        created only while holding that lock too (for this transaction only). CREATE SCHEMA IF NOT EXISTS needs the
        CREATE privilege even when the schema exists, hence the look first."""
        wait = self._statement_timeout
        try:
            with conn.begin():
                set_local_timeouts(conn, statement_timeout=2 * wait, lock_timeout=wait)
                if not conn.execute(_SCHEMA_EXISTS).scalar_one():
                    conn.execute(_XACT_LOCK, {"key": SQL_MIGRATOR_LOCK_KEY})
                    conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
                conn.exec_driver_sql(_BOOTSTRAP).close()
        except sa.exc.DBAPIError as exc:
            if describe_db_error(exc, self._dsn).sqlstate != "55P03":
                raise
            raise LedgerError(
                f"evidence ledger: schema {SCHEMA} does not exist and the SQL migrator holds its lock "
                f"{SQL_MIGRATOR_LOCK_KEY} (it creates the schema): waited {wait:g}s (55P03); nothing was changed",
                sqlstate="55P03",
            ) from None

    def _lock(self, conn: sa.Connection) -> None:
        """The session advisory lock, waiting at most the statement timeout; it outlives the transaction."""
        wait = self._statement_timeout
        if advisory_lock(conn, LOCK_KEY, wait=wait, statement_timeout=2 * wait, dsn=self._dsn) is not None:
            raise LedgerError(
                f"evidence ledger: another operator holds the ledger schema lock {LOCK_KEY}: waited {wait:g}s "
                "(55P03); nothing was changed",
                sqlstate="55P03",
            )

    # -- writing --------------------------------------------------------------------------------------------------

    def record(
        self,
        rollout: RolloutRef,
        *,
        measurements: Sequence[LedgerMeasurement],
        decisions: Sequence[LedgerDecision],
    ) -> None:
        """Record ``measurements`` and ``decisions`` of ``rollout`` in one transaction; rows already recorded
        (same natural key) are left as they are. Nothing to record: no connection."""
        if not measurements and not decisions:
            return
        self.ensure_schema()
        key = {
            "uid": rollout.uid,
            "name": rollout.name,
            "namespace": rollout.namespace,
            "attempt": rollout.attempt,
            "spec_hash": rollout.spec_hash,
        }
        measurement_rows = [
            {
                **key,
                "stage": m.stage,
                "check_name": m.check_name,
                "provider": m.provider,
                "query_hash": m.query_hash,
                "query": m.query,
                "value": m.value,
                "threshold": m.threshold,
                "verdict": m.verdict,
                "message": m.message,
                "measured_at": m.measured_at,
            }
            for m in measurements
        ]
        decision_rows = [
            {
                **key,
                "from_phase": d.from_phase,
                "to_phase": d.to_phase,
                "stage": d.stage,
                "reason": d.reason,
                "message": d.message,
                "decided_at": d.decided_at,
            }
            for d in decisions
        ]

        def write(conn: sa.Connection) -> None:
            with conn.begin():
                if measurement_rows:
                    conn.execute(_INSERT_MEASUREMENT, measurement_rows)
                if decision_rows:
                    conn.execute(_INSERT_DECISION, decision_rows)

        self._run(f"recording evidence of {rollout.namespace}/{rollout.name}", write)

    # -- reading --------------------------------------------------------------------------------------------------

    def measurements(self, uid: str) -> list[MeasurementRecord]:
        """Every measurement recorded for the rollout ``uid`` (all attempts), oldest first."""

        def read(row: sa.Row[Any]) -> MeasurementRecord:
            m = row._mapping
            return MeasurementRecord(
                rollout=_ref(m),
                measurement=_columns(LedgerMeasurement, m),
                query_hash=m["query_hash"],
                recorded_at=m["recorded_at"],
            )

        return self._select("reading measurements", _SELECT_MEASUREMENTS, uid, read)

    def decisions(self, uid: str) -> list[DecisionRecord]:
        """Every stage decision recorded for the rollout ``uid`` (all attempts), oldest first."""

        def read(row: sa.Row[Any]) -> DecisionRecord:
            m = row._mapping
            return DecisionRecord(rollout=_ref(m), decision=_columns(LedgerDecision, m), recorded_at=m["recorded_at"])

        return self._select("reading stage decisions", _SELECT_DECISIONS, uid, read)

    def _select(self, doing: str, query: sa.TextClause, uid: str, read: Callable[[sa.Row[Any]], _T]) -> list[_T]:
        """Rows of ``query`` in a READ ONLY transaction; no ledger yet means no rows (readers never create it)."""

        def run(conn: sa.Connection) -> list[_T]:
            with conn.begin():
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                if not conn.execute(_TABLES_EXIST).scalar_one():
                    return []
                return [read(row) for row in conn.execute(query, {"uid": uid})]

        return self._run(doing, run)

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _run(self, doing: str, work: Callable[[sa.Connection], _T]) -> _T:
        try:
            with self._engine.connect() as conn:
                return work(conn)
        except LedgerError:
            raise
        except sa.exc.DBAPIError as exc:
            error = describe_db_error(exc, self._dsn)
            raise LedgerError(
                f"evidence ledger: {doing} failed: {error.sqlstate or 'error'} {error.message}",
                sqlstate=error.sqlstate,
                retryable=error.retryable,
            ) from None
        except (sa.exc.SQLAlchemyError, psycopg.Error, OSError) as exc:
            raise LedgerError(
                f"evidence ledger: {doing} failed: {type(exc).__name__}: {redact(str(exc), self._dsn)}"
            ) from None


def _ref(m: Any) -> RolloutRef:
    return RolloutRef(
        uid=m["rollout_uid"],
        name=m["rollout_name"],
        namespace=m["namespace"],
        attempt=m["attempt"],
        spec_hash=m["spec_hash"],
    )


def _columns(cls: type[_Row], m: sa.RowMapping) -> _Row:
    """A ``cls`` whose every field is the column of the same name."""
    return cls(**{f.name: m[f.name] for f in fields(cls)})
