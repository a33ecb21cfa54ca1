"""SQL files from a ConfigMap, applied by the operator itself: each file exactly once, in lexical order, in its
own transaction together with its history row, under a Postgres advisory lock.

Decisions (the brief was silent on these):

* The checksum is the sha256 (lower-case hex) of the file's exact UTF-8 bytes as stored in the ConfigMap. Line
  endings and trailing whitespace are NOT normalised: what runs is what is hashed, so ``|`` vs ``|-`` in the
  ConfigMap's YAML is a change.
* A file whose header (the comment lines before its first statement) has the line
  ``-- torghut-rollout: repeatable`` is *repeatable* (Flyway's word): it must be idempotent, and instead of the
  hard "checksum changed" error it is applied again whenever its checksum changes (how a corrected backfill
  ships), and ``apply(..., catch_up=True)`` runs every repeatable file again whatever its checksum (the rollout's
  catch-up after the new image is available). Its history row records the last application. Every other file is
  *versioned*: applied once, never changed.
* Keys not ending in ``.sql`` are ignored (a README may sit beside the files). Order is by code point (C
  collation): zero-pad numbers (``0002`` < ``0010``).
* An applied file that is no longer in the ConfigMap is a WARNING, not an error: its effects are in the
  database either way, and pruning long-applied files keeps the ConfigMap under its 1 MiB limit. What would make
  pruning dangerous is an error instead: a pending file with the same checksum as a missing one (a rename, which
  would apply the same statements twice).
* A pending file that sorts before an already-applied file is an error: a fresh database would apply the files
  in another order than this one did.
* A pending file containing transaction control (BEGIN, COMMIT, ROLLBACK, END, ABORT, START TRANSACTION, PREPARE
  TRANSACTION) is an error: a COMMIT inside a file would commit the migrator's transaction before its history row,
  and the file would run again. SAVEPOINT / ROLLBACK TO / RELEASE are allowed.
* Any of these errors rejects the whole plan: nothing is applied, not even the files before the problem.
* ``lock_timeout`` bounds both the wait for the advisory lock and every lock a file's DDL waits for, so a
  migration never queues behind a long transaction while blocking the service's own queries.
  ``statement_timeout`` bounds each file (a file is sent as one multi-statement query); ``None`` means no limit for
  files. The operator's own bookkeeping statements always run under :data:`BOOKKEEPING_TIMEOUT`.
* Each file starts from the session's initial settings (RESET ALL, RESET ROLE, DISCARD TEMP): a ``SET
  search_path`` or a temp table of an earlier file never leaks into a later one.
* The DSN must reach Postgres directly (session advisory locks and startup ``options`` don't survive a
  transaction-pooling PgBouncer). It is parsed by libpq itself, so any libpq DSN works (URI or key=value); error
  messages never contain it or its password.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from sqlalchemy.pool import NullPool

from torghut_operator.api.status import AppliedFile

HISTORY_TABLE = "torghut_rollout.sql_migrations"

REPEATABLE_MARKER = "-- torghut-rollout: repeatable"
"""A header line that makes a SQL file repeatable."""

LOCK_KEY = 1375901641654169416
"""The advisory lock (bigint form) held while SQL files are applied: the first 8 bytes of
sha256(b"torghut_rollout.sql_migrations") as a signed big-endian integer. Advisory locks are per database, so this
serialises every migrator of one database and nothing else."""

BOOKKEEPING_TIMEOUT = 30.0
"""Statement timeout (seconds) of the migrator's own statements: lock, history, bookkeeping."""

_KEEPALIVE = {"idle": 30, "interval": 10, "count": 3}
"""TCP keepalives on both ends, so a partitioned operator's session (and its advisory lock) dies in about a
minute instead of the kernel default of two hours."""

_RETRYABLE_SQLSTATES = frozenset({"55P03", "40001", "40P01", "53300", "57P01", "57P02", "57P03"})
_RETRYABLE_SQLSTATE_CLASSES = ("08",)


# ---------------------------------------------------------------------------------------------------------------
# The plan (pure)


def checksum(content: str) -> str:
    """sha256 (hex) of the exact UTF-8 bytes of ``content``; nothing is normalised."""
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def is_repeatable(content: str) -> bool:
    """True when a line of the file's header (its leading comment and blank lines) is :data:`REPEATABLE_MARKER`."""
    for line in content.splitlines():
        text = line.strip()
        if text == REPEATABLE_MARKER:
            return True
        if text and not text.startswith("--"):
            return False
    return False


@dataclass(frozen=True)
class SqlFile:
    name: str
    content: str
    checksum: str

    @property
    def repeatable(self) -> bool:
        return is_repeatable(self.content)


@dataclass(frozen=True)
class AppliedRecord:
    """A row of torghut_rollout.sql_migrations."""

    name: str
    checksum: str
    applied_at: datetime
    applied_by: str | None = None
    duration_ms: int | None = None

    def as_status(self) -> AppliedFile:
        return AppliedFile(
            name=self.name,
            checksum=self.checksum,
            applied_at=self.applied_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )


@dataclass(frozen=True)
class SqlPlan:
    pending: tuple[SqlFile, ...]
    """Files to apply, in order."""
    applied: tuple[AppliedRecord, ...]
    """Files of the ConfigMap already applied with the same checksum, in order."""
    missing: tuple[AppliedRecord, ...]
    """Applied files no longer in the ConfigMap (a warning)."""
    ignored: tuple[str, ...]
    """ConfigMap keys that are not SQL files."""
    errors: tuple[str, ...]
    """Reasons to apply nothing at all."""

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(
            f"{r.name} (applied {r.applied_at.astimezone(UTC):%Y-%m-%d %H:%M}Z) is no longer in the ConfigMap; "
            "it stays applied"
            for r in self.missing
        )


def plan_files(files: Mapping[str, str], history: Sequence[AppliedRecord], *, catch_up: bool = False) -> SqlPlan:
    """What to apply from ConfigMap ``files`` given the recorded ``history``; ``catch_up`` re-runs every repeatable
    file too."""
    recorded = {r.name: r for r in history}
    names = sorted(n for n in files if n.endswith(".sql"))
    last_applied = max(recorded, default=None)
    missing = tuple(sorted((r for r in history if r.name not in files), key=lambda r: r.name))
    missing_by_checksum = {r.checksum: r.name for r in missing}

    pending: list[SqlFile] = []
    applied: list[AppliedRecord] = []
    errors: list[str] = []
    for name in names:
        file = SqlFile(name=name, content=files[name], checksum=checksum(files[name]))
        record = recorded.get(name)
        if record is not None and file.repeatable and (catch_up or record.checksum != file.checksum):
            pending.append(file)
            errors.extend(_transaction_errors(file))
            continue
        if record is not None:
            if record.checksum != file.checksum:
                errors.append(
                    f"{name} was applied with checksum {record.checksum[:12]} but the ConfigMap now has "
                    f"{file.checksum[:12]}: an applied file must never change; restore it and put the change in "
                    f"a new file (or, for an idempotent file, mark it repeatable with the header line "
                    f"'{REPEATABLE_MARKER}')"
                )
            else:
                applied.append(record)
            continue
        pending.append(file)
        if last_applied is not None and name < last_applied:
            errors.append(
                f"{name} is not applied but sorts before {last_applied}, which is; files apply in lexical order, "
                f"so rename it to sort after {last_applied}"
            )
        if file.checksum in missing_by_checksum:
            errors.append(
                f"{name} has the same checksum {file.checksum[:12]} as {missing_by_checksum[file.checksum]}, "
                "which was applied and is gone from the ConfigMap: a renamed file would run twice"
            )
        errors.extend(_transaction_errors(file))
    return SqlPlan(
        pending=tuple(pending),
        applied=tuple(applied),
        missing=missing,
        ignored=tuple(sorted(n for n in files if not n.endswith(".sql"))),
        errors=tuple(errors),
    )


def _transaction_errors(file: SqlFile) -> list[str]:
    return [
        f"{file.name} line {line}: {command} inside a file is not allowed; each file already runs in its own "
        "transaction, committed together with its history row"
        for line, command in transaction_control(file.content)
    ]


_WORD = re.compile(r"[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*")
_DOLLAR_QUOTE = re.compile(r"\$(?:[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")
_ROUTINE_PREFIXES = (
    ("create", "function"),
    ("create", "procedure"),
    ("create", "or", "replace", "function"),
    ("create", "or", "replace", "procedure"),
)


def transaction_control(sql: str) -> list[tuple[int, str]]:
    """(line, command) of each top-level statement that would end or start a transaction."""
    found = []
    for offset, words in _statements(sql):
        first, second = [*words, "", ""][:2]
        ends = first in {"begin", "start", "commit", "end", "abort"} or (first == "rollback" and second != "to")
        if ends or (first == "prepare" and second == "transaction"):
            command = " ".join(words[:2] if first in {"start", "prepare"} else words[:1])
            found.append((sql.count("\n", 0, offset) + 1, command.upper()))
    return found


def _statements(sql: str) -> Iterator[tuple[int, list[str]]]:
    """(offset of the first word, leading words lower-cased) of each statement, skipping comments and every kind
    of quoting. Semicolons inside parentheses or inside a SQL-standard routine body (BEGIN ATOMIC ... END) don't
    end a statement; the routine heuristic is psql's own. Unterminated quotes run to the end: Postgres rejects such a
    file before executing any of it."""
    i, n = 0, len(sql)
    words: list[str] = []
    start = -1
    parens = depth = 0
    while i < n:
        ch = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
        elif sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
        elif ch in "'\"":
            i = _skip_quoted(sql, i + 1, ch, backslash=False)
        elif ch == "$" and (match := _DOLLAR_QUOTE.match(sql, i)):
            end = sql.find(match.group(0), match.end())
            i = n if end < 0 else end + len(match.group(0))
        elif match := _WORD.match(sql, i):
            word = match.group(0).lower()
            i = match.end()
            if word == "e" and sql.startswith("'", i):
                i = _skip_quoted(sql, i + 1, "'", backslash=True)
                continue
            if not words:
                start = match.start()
            words.append(word)
            if parens == 0 and any(tuple(words[: len(p)]) == p for p in _ROUTINE_PREFIXES):
                if word == "begin" or (word == "case" and depth > 0):
                    depth += 1
                elif word == "end" and depth > 0:
                    depth -= 1
        else:
            if ch == "(":
                parens += 1
            elif ch == ")":
                parens = max(0, parens - 1)
            elif ch == ";" and parens == 0 and depth == 0:
                if words:
                    yield start, words
                words, parens, depth = [], 0, 0
            i += 1
    if words:
        yield start, words


def _skip_block_comment(sql: str, i: int) -> int:
    """Index after the (nestable) /* comment */ starting at ``i``."""
    level = 0
    while i < len(sql):
        if sql.startswith("/*", i):
            level, i = level + 1, i + 2
        elif sql.startswith("*/", i):
            level, i = level - 1, i + 2
            if level == 0:
                return i
        else:
            i += 1
    return i


def _skip_quoted(sql: str, i: int, quote: str, *, backslash: bool) -> int:
    """Index after the closing ``quote`` of a literal whose body starts at ``i`` (a doubled quote escapes)."""
    while i < len(sql):
        ch = sql[i]
        if backslash and ch == "\\":
            i += 2
        elif ch == quote:
            if not sql.startswith(quote, i + 1):
                return i + 1
            i += 2
        else:
            i += 1
    return i


# ---------------------------------------------------------------------------------------------------------------
# Postgres plumbing shared with migrate.expect


def pg_engine(
    dsn: str, *, connect_timeout: float, statement_timeout: float, lock_timeout: float, application_name: str
) -> sa.Engine:
    """An engine that opens one fresh connection per ``connect()`` with every timeout set at connection start (so
    even SQLAlchemy's own first queries are bounded). Nothing connects until ``connect()``."""
    options = " ".join(
        [
            f"-c statement_timeout={_ms(statement_timeout)}",
            f"-c lock_timeout={_ms(lock_timeout)}",
            *(f"-c tcp_keepalives_{k}={v}" for k, v in _KEEPALIVE.items()),
        ]
    )

    def connect() -> psycopg.Connection[Any]:
        own = conninfo_to_dict(dsn).get("options")
        return psycopg.connect(
            dsn,
            connect_timeout=max(2, math.ceil(connect_timeout)),
            application_name=application_name[:63],
            options=f"{own} {options}" if own else options,
            keepalives=1,
            keepalives_idle=_KEEPALIVE["idle"],
            keepalives_interval=_KEEPALIVE["interval"],
            keepalives_count=_KEEPALIVE["count"],
        )

    return sa.create_engine("postgresql+psycopg://", creator=connect, poolclass=NullPool)


def set_local_timeouts(conn: sa.Connection, *, statement_timeout: float | None, lock_timeout: float) -> None:
    """SET LOCAL both timeouts for the current transaction (``None``: no statement timeout)."""
    conn.execute(
        sa.text("SELECT set_config('statement_timeout', :statement, true), set_config('lock_timeout', :lock, true)"),
        {"statement": "0" if statement_timeout is None else _ms(statement_timeout), "lock": _ms(lock_timeout)},
    )


@dataclass(frozen=True)
class DbError:
    """A database error as it may be shown: SQLSTATE and message, never the DSN or a password."""

    sqlstate: str | None
    message: str
    retryable: bool

    def __str__(self) -> str:
        return f"{self.sqlstate} {self.message}" if self.sqlstate else self.message


def describe_db_error(exc: BaseException, dsn: str, sql: str | None = None) -> DbError:
    """SQLSTATE, Postgres' own message (with detail, hint and, given the ``sql`` that ran, the line) of ``exc``."""
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    sqlstate: str | None = None
    if isinstance(orig, psycopg.Error) and orig.diag.message_primary:
        diag = orig.diag
        sqlstate = orig.sqlstate
        parts = [diag.message_primary or ""]
        if sql is not None and diag.statement_position and diag.statement_position.isdigit():
            parts.append(f"at line {sql.count(chr(10), 0, int(diag.statement_position) - 1) + 1}")
        if diag.message_detail:
            parts.append(f"(detail: {diag.message_detail})")
        if diag.message_hint:
            parts.append(f"(hint: {diag.message_hint})")
        if diag.context:
            parts.append(f"(context: {diag.context.splitlines()[0]})")
        message = " ".join(parts)
    else:
        message = f"{type(orig).__name__}: {orig}"
    retryable = sqlstate in _RETRYABLE_SQLSTATES or (
        sqlstate.startswith(_RETRYABLE_SQLSTATE_CLASSES)
        if sqlstate
        else isinstance(orig, psycopg.OperationalError | OSError | TimeoutError)
    )
    return DbError(sqlstate=sqlstate, message=redact(" ".join(message.split()), dsn), retryable=retryable)


def redact(text: str, dsn: str) -> str:
    """``text`` without the DSN, its password (raw or percent-encoded) or anything that looks like a password."""
    secrets = {dsn}
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        password = None
    if password:
        secrets |= {str(password), urllib.parse.quote(str(password), safe="")}
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    text = re.sub(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", text, flags=re.IGNORECASE)


def _ms(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


# ---------------------------------------------------------------------------------------------------------------
# The migrator (I/O)


class SqlErrorKind(StrEnum):
    """Why an apply stopped; the values read well as condition reasons."""

    PLAN_REJECTED = "PlanRejected"
    LOCK_TIMEOUT = "LockTimeout"
    FILE_FAILED = "FileFailed"
    DATABASE = "DatabaseError"


@dataclass(frozen=True)
class SqlMigrationError:
    kind: SqlErrorKind
    message: str
    file: str | None = None
    sqlstate: str | None = None
    retryable: bool = False
    """True when trying again later may succeed (lock busy, connection lost, serialisation failure); a rejected
    plan or a failing file's SQL error needs a change first."""


@dataclass(frozen=True)
class BackfillSettings:
    """SHIM (shell branch): the contract's names only; the core branch replaces this file."""

    batch_duration: float = 0.1
    pause: float = 0.0
    initial_batch: int = 1000
    min_batch: int = 10
    max_batch: int = 50_000
    max_transaction_age: float = 60.0
    max_replica_lag: float = 10.0


@dataclass(frozen=True)
class BackfillProgress:
    """SHIM (shell branch): the contract's names only; the core branch replaces this file."""

    file: str
    table: str
    rows_done: int
    rows_total: int
    batches: int
    batch_size: int
    rows_per_second: float
    eta_seconds: float | None
    throttled: str | None
    finished: bool


@dataclass(frozen=True)
class SqlMigrationResult:
    applied: tuple[AppliedRecord, ...]
    """Files applied by this call, in order."""
    skipped: tuple[AppliedRecord, ...]
    """Files of the ConfigMap applied earlier (same checksum), in order."""
    pending: tuple[str, ...]
    """Files still to apply (after an error: the failing file and those after it)."""
    warnings: tuple[str, ...]
    error: SqlMigrationError | None
    backfill: BackfillProgress | None = None
    """SHIM (shell branch): always None here."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def in_progress(self) -> bool:
        return self.backfill is not None and not self.backfill.finished and self.error is None

    def status_files(self) -> list[AppliedFile]:
        """Every applied file of the ConfigMap, for status.migration.applied."""
        return [r.as_status() for r in sorted((*self.skipped, *self.applied), key=lambda r: r.name)]


class SqlMigrationFailed(Exception):
    """history() could not be read."""

    def __init__(self, error: SqlMigrationError) -> None:
        super().__init__(error.message)
        self.error = error


class _Stop(Exception):
    """Ends an apply with ``error`` (internal control flow)."""

    def __init__(self, error: SqlMigrationError) -> None:
        super().__init__(error.message)
        self.error = error


_SELECT_HISTORY = sa.text(
    f"SELECT name, checksum, applied_at, applied_by, duration_ms FROM {HISTORY_TABLE} ORDER BY name"
)
_HISTORY_EXISTS = sa.text(f"SELECT to_regclass('{HISTORY_TABLE}') IS NOT NULL")
_INSERT_HISTORY = sa.text(
    f"INSERT INTO {HISTORY_TABLE} (name, checksum, applied_by, duration_ms) "
    "VALUES (:name, :checksum, :applied_by, :duration_ms) "
    # a repeatable file's row records its last application
    "ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now(), "
    "applied_by = EXCLUDED.applied_by, duration_ms = EXCLUDED.duration_ms "
    "RETURNING applied_at"
)
_FRESH_SESSION = "RESET ALL; RESET ROLE; DISCARD TEMP"
"""Run before each file: a file sees the session as it was at connection start, whatever an earlier file SET,
so it behaves the same applied right after its predecessors or alone after a restart."""
_LOCK = sa.text("SELECT pg_advisory_lock(:key)")
_UNLOCK = sa.text("SELECT pg_advisory_unlock(:key)")
_LOCK_HOLDERS = sa.text(
    "SELECT l.pid, a.application_name FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND l.classid = CAST(CAST(:classid AS bigint) AS oid) AND l.objid = CAST(CAST(:objid AS bigint) AS oid)"
)


def _run_script(conn: sa.Connection, script: str) -> None:
    """Send ``script`` untouched (no %-placeholder parsing) by the simple query protocol, which runs several
    statements in one call."""
    conn.execution_options(no_parameters=True).exec_driver_sql(script).close()


@cache
def _history_ddl() -> str:
    return resources.files("torghut_operator.migrate").joinpath("sql_migrations.sql").read_text(encoding="utf-8")


class SqlMigrator:
    """Applies SQL files to one database. Holds configuration only: every call opens and closes its own
    connection."""

    def __init__(
        self,
        dsn: str,
        *,
        connect_timeout: float,
        lock_timeout: float,
        statement_timeout: float | None,
        lock_retries: int = 5,  # SHIM (shell branch): accepted and ignored
        backfill: BackfillSettings = BackfillSettings(),  # SHIM (shell branch): accepted and ignored
    ) -> None:
        if connect_timeout <= 0 or lock_timeout <= 0 or (statement_timeout is not None and statement_timeout <= 0):
            raise ValueError("timeouts must be positive (statement_timeout may be None for no limit)")
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._lock_timeout = lock_timeout
        self._statement_timeout = statement_timeout

    def history(self) -> list[AppliedRecord]:
        """The recorded history (empty when the table doesn't exist yet); raises SqlMigrationFailed."""
        engine = self._engine("history")
        try:
            with engine.connect() as conn, conn.begin():
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                return self._read_history(conn)
        except sa.exc.DBAPIError as exc:
            raise SqlMigrationFailed(self._database_error(exc, "reading the history")) from exc
        finally:
            engine.dispose()

    def apply(
        self,
        files: Mapping[str, str],
        *,
        rollout: str,
        catch_up: bool = False,
        run: str | None = None,  # SHIM (shell branch): accepted and ignored
        budget: float | None = None,  # SHIM (shell branch): accepted and ignored
    ) -> SqlMigrationResult:
        """Apply the pending SQL files of ``files`` (ConfigMap data); ``rollout`` is recorded as applied_by.
        ``catch_up``: run every repeatable file again as well.

        Never raises for database trouble: the result carries the error. Until the history has been read under the
        lock, every SQL file counts as pending (not known to be applied)."""
        applied: list[AppliedRecord] = []
        plan = plan_files(files, [])
        engine = self._engine(rollout)
        try:
            with engine.connect() as conn:
                self._lock(conn)
                try:
                    plan = self._plan(conn, files, catch_up=catch_up)
                    if not plan.ok:
                        raise _Stop(SqlMigrationError(kind=SqlErrorKind.PLAN_REJECTED, message="; ".join(plan.errors)))
                    for file in plan.pending:
                        applied.append(self._apply_file(conn, file, rollout))
                finally:
                    self._unlock(conn)
        except _Stop as stop:
            return self._result(plan, applied, stop.error)
        except sa.exc.DBAPIError as exc:
            return self._result(plan, applied, self._database_error(exc, "migrating"))
        finally:
            engine.dispose()
        return self._result(plan, applied, None)

    def _engine(self, purpose: str) -> sa.Engine:
        return pg_engine(
            self._dsn,
            connect_timeout=self._connect_timeout,
            statement_timeout=BOOKKEEPING_TIMEOUT,
            lock_timeout=self._lock_timeout,
            application_name=f"torghut-rollout {purpose}",
        )

    def _lock(self, conn: sa.Connection) -> None:
        """Take the session advisory lock, waiting at most lock_timeout; it outlives the transaction."""
        try:
            with conn.begin():
                set_local_timeouts(
                    conn, statement_timeout=self._lock_timeout + BOOKKEEPING_TIMEOUT, lock_timeout=self._lock_timeout
                )
                conn.execute(_LOCK, {"key": LOCK_KEY})
        except sa.exc.DBAPIError as exc:
            error = describe_db_error(exc, self._dsn)
            if error.sqlstate != "55P03":
                raise
            raise _Stop(
                SqlMigrationError(
                    kind=SqlErrorKind.LOCK_TIMEOUT,
                    message=f"another migration holds the advisory lock {LOCK_KEY} ({HISTORY_TABLE}): waited "
                    f"{self._lock_timeout:g}s{self._holders(conn)}; nothing was applied",
                    sqlstate=error.sqlstate,
                    retryable=True,
                )
            ) from exc

    def _holders(self, conn: sa.Connection) -> str:
        """Who holds the lock, best effort (visibility of other sessions depends on the role)."""
        key = LOCK_KEY & 0xFFFF_FFFF_FFFF_FFFF
        try:
            with conn.begin():
                rows = conn.execute(_LOCK_HOLDERS, {"classid": key >> 32, "objid": key & 0xFFFF_FFFF}).all()
        except sa.exc.DBAPIError:
            return ""
        return "".join(f"; held by pid {pid} ({app or 'application unknown'})" for pid, app in rows)

    def _unlock(self, conn: sa.Connection) -> None:
        """Release the lock if the session is still usable; closing the connection releases it anyway."""
        if conn.invalidated or conn.closed:
            return
        try:
            with conn.begin():
                conn.execute(_UNLOCK, {"key": LOCK_KEY})
        except sa.exc.DBAPIError:
            conn.invalidate()

    def _plan(self, conn: sa.Connection, files: Mapping[str, str], *, catch_up: bool) -> SqlPlan:
        """Create the history table when missing and plan against the history read under the lock."""
        with conn.begin():
            if not conn.execute(_HISTORY_EXISTS).scalar_one():
                _run_script(conn, _history_ddl())
        with conn.begin():
            return plan_files(files, self._read_history(conn), catch_up=catch_up)

    @staticmethod
    def _read_history(conn: sa.Connection) -> list[AppliedRecord]:
        if not conn.execute(_HISTORY_EXISTS).scalar_one():
            return []
        return [
            AppliedRecord(name=n, checksum=c, applied_at=at, applied_by=by, duration_ms=ms)
            for n, c, at, by, ms in conn.execute(_SELECT_HISTORY)
        ]

    def _apply_file(self, conn: sa.Connection, file: SqlFile, rollout: str) -> AppliedRecord:
        """Run ``file`` and insert its history row in one transaction."""
        started = time.monotonic()
        running: str | None = None  # the file's text while it runs, to turn an error position into a line
        tx = conn.begin()
        try:
            _run_script(conn, _FRESH_SESSION)
            set_local_timeouts(conn, statement_timeout=self._statement_timeout, lock_timeout=self._lock_timeout)
            if file.content.strip():
                running = file.content
                _run_script(conn, file.content)
                running = None
            driver = conn.connection.driver_connection
            if driver is None or driver.info.transaction_status != TransactionStatus.INTRANS:
                raise _Stop(
                    SqlMigrationError(
                        kind=SqlErrorKind.FILE_FAILED,
                        file=file.name,
                        message=f"{file.name} ended the migrator's transaction itself; its statements may be "
                        "committed WITHOUT a history row, so inspect the database before retrying",
                    )
                )
            duration_ms = round((time.monotonic() - started) * 1000)
            applied_at = conn.execute(
                _INSERT_HISTORY,
                {"name": file.name, "checksum": file.checksum, "applied_by": rollout, "duration_ms": duration_ms},
            ).scalar_one()
        except sa.exc.DBAPIError as exc:
            tx.rollback()
            error = describe_db_error(exc, self._dsn, running)
            raise _Stop(
                SqlMigrationError(
                    kind=SqlErrorKind.FILE_FAILED,
                    file=file.name,
                    sqlstate=error.sqlstate,
                    retryable=error.retryable,
                    message=f"{file.name} failed and was rolled back, nothing of it applied: {error}",
                )
            ) from exc
        except _Stop:
            tx.rollback()
            raise
        try:
            tx.commit()
        except sa.exc.DBAPIError as exc:
            error = describe_db_error(exc, self._dsn)
            raise _Stop(
                SqlMigrationError(
                    kind=SqlErrorKind.FILE_FAILED,
                    file=file.name,
                    sqlstate=error.sqlstate,
                    retryable=True,
                    message=f"committing {file.name} failed ({error}); the file and its history row commit "
                    "together, so the next apply learns from the history whether it is applied",
                )
            ) from exc
        return AppliedRecord(
            name=file.name,
            checksum=file.checksum,
            applied_at=applied_at,
            applied_by=rollout,
            duration_ms=duration_ms,
        )

    def _database_error(self, exc: sa.exc.DBAPIError, doing: str) -> SqlMigrationError:
        error = describe_db_error(exc, self._dsn)
        return SqlMigrationError(
            kind=SqlErrorKind.DATABASE,
            sqlstate=error.sqlstate,
            retryable=error.retryable,
            message=f"database error while {doing}: {error}",
        )

    @staticmethod
    def _result(plan: SqlPlan, applied: list[AppliedRecord], error: SqlMigrationError | None) -> SqlMigrationResult:
        done = {r.name for r in applied}
        return SqlMigrationResult(
            applied=tuple(applied),
            skipped=plan.applied,
            pending=tuple(f.name for f in plan.pending if f.name not in done),
            warnings=plan.warnings,
            error=error,
        )
