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
* Online by default (issue 10): every statement of a file runs under ``lock_timeout`` (the spec's, default 2 s) and a
  file that times out waiting for a lock is tried again ``lock_retries`` times with exponential backoff and full
  jitter; the final error names the backend(s) that blocked it (pid, application, query), read from a second session
  while the statement waited. Header ``-- torghut-rollout: no-transaction`` runs a file's statements one by one
  outside a transaction (``CREATE INDEX CONCURRENTLY``); an INVALID index left by a failed concurrent build is
  dropped and built again. Header ``-- torghut-rollout: backfill table=<table> [key=<column>]`` runs the file once
  per keyset batch of the table, each batch its own transaction committed together with its progress row in
  ``torghut_rollout.sql_runs``; the batch size follows a target batch duration and the migrator waits between
  batches while the database is under pressure (see :class:`BackfillSettings`).
* The DSN must reach Postgres directly (session advisory locks and startup ``options`` don't survive a
  transaction-pooling PgBouncer). It is parsed by libpq itself, so any libpq DSN works (URI or key=value); error
  messages never contain it or its password.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache, partial
from importlib import resources
from typing import TypeVar

import pglast
import psycopg
import sqlalchemy as sa
from pglast import ast as pg_ast
from psycopg.pq import TransactionStatus

from torghut_operator.adapters.postgres.engine import (
    advisory_lock,
    advisory_unlock,
    describe_db_error,
    milliseconds,
    pg_engine,
    set_local_timeouts,
)
from torghut_operator.core.api.status import AppliedFile

_T = TypeVar("_T")

HISTORY_TABLE = "torghut_rollout.sql_migrations"
RUNS_TABLE = "torghut_rollout.sql_runs"

DIRECTIVE_PREFIX = "-- torghut-rollout:"
REPEATABLE_MARKER = "-- torghut-rollout: repeatable"
"""A header line that makes a SQL file repeatable."""
NO_TRANSACTION_MARKER = "-- torghut-rollout: no-transaction"
"""A header line that runs a file's statements one by one outside a transaction (CREATE INDEX CONCURRENTLY)."""
BACKFILL_MARKER = "-- torghut-rollout: backfill"
"""``-- torghut-rollout: backfill table=<table> [key=<column>]``: the file runs once per keyset batch."""
BATCH_FIRST = "torghut_rollout.batch_first"
BATCH_LAST = "torghut_rollout.batch_last"
"""The transaction-local settings holding the text of a batch's first and last key."""
APPLY_RUN = "apply"
"""The sql_runs row of a file's own application (catch-up passes use their own run identity)."""

LOCK_KEY = 1375901641654169416
"""The advisory lock (bigint form) held while SQL files are applied: the first 8 bytes of
sha256(b"torghut_rollout.sql_migrations") as a signed big-endian integer. Advisory locks are per database, so this
serialises every migrator of one database and nothing else."""

ADVISORY_WAIT = 15.0
"""Seconds to wait for the advisory lock (at least the table lock_timeout): longer than a backfill's slice."""

BOOKKEEPING_TIMEOUT = 30.0
"""Statement timeout (seconds) of the migrator's own statements: lock, history, bookkeeping."""


# ---------------------------------------------------------------------------------------------------------------
# The plan (pure)


def checksum(content: str) -> str:
    """sha256 (hex) of the exact UTF-8 bytes of ``content``; nothing is normalised."""
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def _header(content: str) -> Iterator[str]:
    """The stripped lines of the file's header: its leading comment and blank lines."""
    for line in content.splitlines():
        text = line.strip()
        if text and not text.startswith("--"):
            return
        yield text


@dataclass(frozen=True)
class BackfillTarget:
    table: str
    """As written in the header (resolved by Postgres' regclass rules)."""
    key: str | None = None
    """A unique, not-null column; None: the table's one-column primary key."""


@dataclass(frozen=True)
class FileOptions:
    repeatable: bool = False
    transactional: bool = True
    backfill: BackfillTarget | None = None
    errors: tuple[str, ...] = ()


def file_options(content: str, name: str = "the file") -> FileOptions:
    """The ``-- torghut-rollout:`` directives of a file's header, and what is wrong with them."""
    repeatable, transactional = False, True
    backfill: BackfillTarget | None = None
    errors: list[str] = []
    for text in _header(content):
        if not text.startswith(DIRECTIVE_PREFIX):
            continue
        words = text[len(DIRECTIVE_PREFIX) :].split()
        verb, args = (words[0], words[1:]) if words else ("", [])
        if verb == "repeatable" and not args:
            repeatable = True
        elif verb == "no-transaction" and not args:
            transactional = False
        elif verb == "backfill":
            pairs = dict(a.partition("=")[::2] for a in args)
            unknown = sorted(set(pairs) - {"table", "key"})
            if unknown or not pairs.get("table") or ("key" in pairs and not pairs["key"]):
                errors.append(f"{name}: '{text}' must read '{BACKFILL_MARKER} table=<schema.table> [key=<column>]'")
            else:
                backfill = BackfillTarget(table=pairs["table"], key=pairs.get("key"))
        else:
            errors.append(
                f"{name}: unknown directive '{text}' (known: repeatable, no-transaction, "
                "backfill table=<schema.table> [key=<column>])"
            )
    if backfill is not None and not transactional:
        errors.append(f"{name}: a backfill runs each batch in a transaction; it cannot be no-transaction")
    if backfill is not None:
        missing = [g for g in (BATCH_FIRST, BATCH_LAST) if g not in content]
        if missing:
            errors.append(
                f"{name}: a backfill file must restrict each batch to its keys, between "
                f"current_setting('{BATCH_FIRST}') and current_setting('{BATCH_LAST}'); it never reads "
                + " or ".join(missing)
            )
    return FileOptions(repeatable=repeatable, transactional=transactional, backfill=backfill, errors=tuple(errors))


def is_repeatable(content: str) -> bool:
    """True when a line of the file's header (its leading comment and blank lines) is :data:`REPEATABLE_MARKER`."""
    return REPEATABLE_MARKER in _header(content)


def split_statements(sql: str) -> list[str]:
    """The top-level statements of ``sql`` as Postgres' own parser splits them (dollar quotes, comments and all)."""
    return [sql[s].strip() for s in pglast.parser.split(sql, with_parser=True, only_slices=True) if sql[s].strip()]


@dataclass(frozen=True)
class BackfillSettings:
    """How a batched backfill paces itself."""

    batch_duration: float = 0.1
    """Target seconds per batch: row locks are held this long at most, so a writer waits no longer."""
    pause: float = 0.0
    """Seconds to sleep between batches."""
    initial_batch: int = 1000
    min_batch: int = 10
    max_batch: int = 50_000
    max_transaction_age: float = 60.0
    """Wait while another transaction has been open longer than this (it holds back vacuum of the rewritten rows)."""
    max_replica_lag: float = 10.0
    """Wait while a streaming replica's replay lag is above this (seconds)."""
    throttle_poll: float = 1.0
    """Seconds between looks while throttled."""


def next_batch_size(size: int, elapsed: float, settings: BackfillSettings) -> int:
    """The next batch's size: proportional to how far ``elapsed`` was from the target, at most halved or doubled
    per batch, within [min_batch, max_batch]."""
    wanted = size * settings.batch_duration / max(elapsed, 1e-4)
    bounded = min(max(wanted, size / 2), size * 2)
    return max(settings.min_batch, min(settings.max_batch, round(bounded)))


def backoff(attempt: int, rng: random.Random, *, base: float = 0.5, cap: float = 10.0) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): exponential, capped, with jitter (half to full)."""
    return float(min(cap, base * 2**attempt) * rng.uniform(0.5, 1.0))


@dataclass(frozen=True)
class BackfillProgress:
    file: str
    table: str
    rows_done: int
    rows_total: int
    batches: int
    batch_size: int
    """The next batch's size."""
    rows_per_second: float
    """Since the run started (0.0 when unknown)."""
    eta_seconds: float | None
    throttled: str | None
    """Why it is waiting right now."""
    finished: bool


@dataclass(frozen=True)
class SqlFile:
    name: str
    content: str
    checksum: str

    @property
    def repeatable(self) -> bool:
        return is_repeatable(self.content)

    @property
    def options(self) -> FileOptions:
        return file_options(self.content, self.name)


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


def plan_files(
    files: Mapping[str, str],
    history: Sequence[AppliedRecord],
    *,
    catch_up: bool = False,
    ran: Mapping[str, str] | None = None,
) -> SqlPlan:
    """What to apply from ConfigMap ``files`` given the recorded ``history``; ``catch_up`` re-runs every repeatable
    file too, except those the same catch-up pass already ran (``ran``: name -> checksum)."""
    ran = ran or {}
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
        again = catch_up and ran.get(name) != file.checksum
        if record is not None and file.repeatable and (again or record.checksum != file.checksum):
            pending.append(file)
            errors.extend(_file_errors(file))
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
        errors.extend(_file_errors(file))
    return SqlPlan(
        pending=tuple(pending),
        applied=tuple(applied),
        missing=missing,
        ignored=tuple(sorted(n for n in files if not n.endswith(".sql"))),
        errors=tuple(errors),
    )


def _file_errors(file: SqlFile) -> list[str]:
    return [
        *file.options.errors,
        *(
            f"{file.name} line {line}: {command} inside a file is not allowed; each file already runs in its own "
            "transaction, committed together with its history row"
            for line, command in transaction_control(file.content)
        ),
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
    """The last batched backfill this call worked on, finished or not."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def in_progress(self) -> bool:
        """A backfill ran out of this call's budget: call again to go on (nothing is wrong)."""
        return self.error is None and self.backfill is not None and not self.backfill.finished

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
    return (
        resources.files("torghut_operator.adapters.postgres").joinpath("sql_migrations.sql").read_text(encoding="utf-8")
    )


_RUNS_EXISTS = sa.text(f"SELECT to_regclass('{RUNS_TABLE}') IS NOT NULL")
_RAN_IN = sa.text(f"SELECT name, checksum FROM {RUNS_TABLE} WHERE run = :run AND finished_at IS NOT NULL")
_RUN_DONE = sa.text(
    f"INSERT INTO {RUNS_TABLE} (run, name, checksum, applied_by, finished_at) "
    "VALUES (:run, :name, :checksum, :applied_by, now()) "
    "ON CONFLICT (run, name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_by = EXCLUDED.applied_by, "
    "updated_at = now(), finished_at = now()"
)
_BLOCKERS = (
    "SELECT a.pid, a.application_name, a.state, left(a.query, 200) FROM pg_catalog.pg_stat_activity a "
    "WHERE a.pid = ANY(pg_catalog.pg_blocking_pids(%s)) ORDER BY a.pid"
)
_INVALID_INDEX = sa.text(
    "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid "
    "WHERE c.relname = :name AND NOT i.indisvalid AND n.oid = ("
    "SELECT t.relnamespace FROM pg_catalog.pg_class t WHERE t.oid = to_regclass(:table))"
)
_BACKFILL_TABLE = sa.text(
    "SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(:table)"
)
_KEY_COLUMN = sa.text(
    # a one-column unique, non-partial index on a NOT NULL column: the primary key's unless key is named
    "SELECT quote_ident(a.attname), format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_index i "
    "JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
    "WHERE i.indrelid = :oid AND i.indnatts = 1 AND i.indisunique AND i.indisvalid AND i.indpred IS NULL "
    "AND a.attnotnull AND (CAST(:key AS text) IS NULL AND i.indisprimary OR a.attname = :key) "
    "ORDER BY i.indisprimary DESC LIMIT 1"
)
_RUN_STATE = sa.text(
    f"SELECT checksum, finished_at, backfill_table, last_key, rows_done, batches, batch_size, rows_total, "
    f"EXTRACT(epoch FROM clock_timestamp() - started_at) FROM {RUNS_TABLE} WHERE run = :run AND name = :name"
)
_RUN_RESET = sa.text(
    f"INSERT INTO {RUNS_TABLE} (run, name, checksum, applied_by, backfill_table, batch_size) "
    "VALUES (:run, :name, :checksum, :applied_by, :table, :size) "
    "ON CONFLICT (run, name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_by = EXCLUDED.applied_by, "
    "started_at = now(), updated_at = now(), finished_at = NULL, backfill_table = EXCLUDED.backfill_table, "
    "last_key = NULL, rows_done = 0, rows_total = 0, batches = 0, batch_size = EXCLUDED.batch_size"
)
_RUN_TOTAL = sa.text(
    f"UPDATE {RUNS_TABLE} SET rows_total = rows_done + :remaining WHERE run = :run AND name = :name "
    "RETURNING rows_total, EXTRACT(epoch FROM clock_timestamp() - started_at)"
)
_RUN_BATCH = sa.text(
    f"UPDATE {RUNS_TABLE} SET last_key = :last, rows_done = rows_done + :rows, batches = batches + 1, "
    "batch_size = :size, rows_total = GREATEST(rows_total, rows_done + :rows), updated_at = now() "
    "WHERE run = :run AND name = :name "
    "RETURNING rows_done, rows_total, batches, EXTRACT(epoch FROM clock_timestamp() - started_at)"
)
_RUN_FINISH = sa.text(
    f"UPDATE {RUNS_TABLE} SET finished_at = now(), updated_at = now(), rows_total = rows_done "
    "WHERE run = :run AND name = :name "
    "RETURNING rows_done, batches, CAST(EXTRACT(epoch FROM clock_timestamp() - started_at) * 1000 AS integer)"
)
_PRESSURE = sa.text(
    "SELECT "
    "(SELECT count(*) FROM pg_catalog.pg_locks WHERE relation = CAST(:oid AS oid) AND NOT granted "
    "AND pid <> pg_backend_pid()), "
    "(SELECT string_agg(CAST(s.pid AS text), ', ') FROM (SELECT pid FROM pg_catalog.pg_stat_activity "
    "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend' "
    "AND xact_start < clock_timestamp() - make_interval(secs => :age) ORDER BY xact_start LIMIT 3) s), "
    "(SELECT max(EXTRACT(epoch FROM replay_lag)) FROM pg_catalog.pg_stat_replication)"
)


@dataclass(frozen=True)
class _Table:
    oid: int
    name: str
    """Quoted, schema-qualified."""
    key: str
    """Quoted column name."""
    key_type: str


@dataclass
class _Run:
    """A backfill's progress as committed."""

    last_key: str | None
    rows_done: int
    rows_total: int
    batches: int
    batch_size: int
    seconds: float
    throttled: str | None = None

    def progress(self, file: str, table: str, *, finished: bool) -> BackfillProgress:
        rate = self.rows_done / self.seconds if self.seconds > 0 else 0.0
        left = max(0, self.rows_total - self.rows_done)
        return BackfillProgress(
            file=file,
            table=table,
            rows_done=self.rows_done,
            rows_total=max(self.rows_total, self.rows_done),
            batches=self.batches,
            batch_size=self.batch_size,
            rows_per_second=round(rate, 1),
            eta_seconds=0.0 if finished else (left / rate if rate > 0 else None),
            throttled=None if finished else self.throttled,
            finished=finished,
        )


class _BlockerWatch:
    """While a statement runs, polls from a second session which backends block it (pg_blocking_pids), remembering
    the last non-empty answer. Best effort: a failure to look is silent; the statement's own outcome decides."""

    def __init__(self, dsn: str, pid: int | None, *, interval: float, connect_timeout: float) -> None:
        self._dsn, self._pid, self._interval, self._connect_timeout = dsn, pid, interval, connect_timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.blockers: list[str] = []

    def __enter__(self) -> _BlockerWatch:
        if self._pid is not None:
            self._thread = threading.Thread(target=self._watch, name="sql-blocker-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()

    def _watch(self) -> None:
        if self._stop.wait(self._interval):
            return
        try:
            with psycopg.connect(
                self._dsn,
                connect_timeout=max(2, math.ceil(self._connect_timeout)),
                autocommit=True,
                application_name="torghut-rollout blocker-watch",
                options="-c statement_timeout=2000",
            ) as conn:
                while not self._stop.is_set():
                    rows = conn.execute(_BLOCKERS, [self._pid]).fetchall()
                    if rows:
                        self.blockers = [
                            f"pid {pid} ({app or 'application unknown'}, {state}: {' '.join(str(q).split())})"
                            for pid, app, state, q in rows
                        ]
                    if self._stop.wait(self._interval):
                        return
        except (psycopg.Error, OSError):
            return


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
        lock_retries: int = 5,
        backfill: BackfillSettings | None = None,
        advisory_timeout: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if connect_timeout <= 0 or lock_timeout <= 0 or (statement_timeout is not None and statement_timeout <= 0):
            raise ValueError("timeouts must be positive (statement_timeout may be None for no limit)")
        if lock_retries < 0:
            raise ValueError("lock_retries must be >= 0")
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._lock_timeout = lock_timeout
        self._statement_timeout = statement_timeout
        self._lock_retries = lock_retries
        # another rollout of the same database holds the advisory lock for up to a slice of batches: wait longer
        # for it than for a table lock (nothing queues behind an advisory lock wait)
        self._advisory_timeout = advisory_timeout if advisory_timeout is not None else max(lock_timeout, ADVISORY_WAIT)
        self._backfill = backfill or BackfillSettings()
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not secrets)

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
        run: str | None = None,
        budget: float | None = None,
    ) -> SqlMigrationResult:
        """Apply the pending SQL files of ``files`` (ConfigMap data); ``rollout`` is recorded as applied_by.
        ``catch_up``: run every repeatable file again as well, once per ``run`` (the catch-up pass's identity; a
        fresh one when None). ``budget``: seconds this call may spend on backfill batches; when they run out the
        result is :attr:`SqlMigrationResult.in_progress` and the next call resumes (None: to the end).

        Never raises for database trouble: the result carries the error. Until the history has been read under the
        lock, every SQL file counts as pending (not known to be applied)."""
        applied: list[AppliedRecord] = []
        plan = plan_files(files, [])
        progress: BackfillProgress | None = None
        deadline = None if budget is None else time.monotonic() + budget
        pass_id = (run or f"catch-up {uuid.uuid4()}") if catch_up else None
        engine = self._engine(rollout)
        try:
            with engine.connect() as conn:
                self._lock(conn)
                try:
                    plan = self._plan(conn, files, catch_up=catch_up, run=pass_id)
                    if not plan.ok:
                        raise _Stop(SqlMigrationError(kind=SqlErrorKind.PLAN_REJECTED, message="; ".join(plan.errors)))
                    for file in plan.pending:
                        options = file.options
                        if options.backfill is not None:
                            progress, record = self._run_backfill(
                                conn, file, options.backfill, rollout, pass_id or APPLY_RUN, deadline
                            )
                            if record is None:
                                break
                        elif not options.transactional:
                            record = self._apply_outside_transaction(conn, file, rollout, pass_id)
                        else:
                            record = self._retrying_locks(
                                conn, file.name, partial(self._apply_file, conn, file, rollout, pass_id)
                            )
                        applied.append(record)
                finally:
                    self._unlock(conn)
        except _Stop as stop:
            return self._result(plan, applied, stop.error, progress)
        except sa.exc.DBAPIError as exc:
            return self._result(plan, applied, self._database_error(exc, "migrating"), progress)
        finally:
            engine.dispose()
        return self._result(plan, applied, None, progress)

    def _engine(self, purpose: str) -> sa.Engine:
        return pg_engine(
            self._dsn,
            connect_timeout=self._connect_timeout,
            statement_timeout=BOOKKEEPING_TIMEOUT,
            lock_timeout=self._lock_timeout,
            application_name=f"torghut-rollout {purpose}",
        )

    def _lock(self, conn: sa.Connection) -> None:
        """Take the session advisory lock, waiting at most the advisory timeout; it outlives the transaction."""
        error = advisory_lock(
            conn,
            LOCK_KEY,
            wait=self._advisory_timeout,
            statement_timeout=self._advisory_timeout + BOOKKEEPING_TIMEOUT,
            dsn=self._dsn,
        )
        if error is not None:
            raise _Stop(
                SqlMigrationError(
                    kind=SqlErrorKind.LOCK_TIMEOUT,
                    message=f"another migration holds the advisory lock {LOCK_KEY} ({HISTORY_TABLE}): waited "
                    f"{self._advisory_timeout:g}s{self._holders(conn)}; nothing was applied",
                    sqlstate=error.sqlstate,
                    retryable=True,
                )
            )

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
        advisory_unlock(conn, LOCK_KEY)

    def _plan(self, conn: sa.Connection, files: Mapping[str, str], *, catch_up: bool, run: str | None) -> SqlPlan:
        """Create the history tables when missing and plan against the history read under the lock."""
        with conn.begin():
            if not conn.execute(_RUNS_EXISTS).scalar_one():
                _run_script(conn, _history_ddl())
        with conn.begin():
            ran = {n: c for n, c in conn.execute(_RAN_IN, {"run": run})} if run is not None else {}
            return plan_files(files, self._read_history(conn), catch_up=catch_up, ran=ran)

    @staticmethod
    def _read_history(conn: sa.Connection) -> list[AppliedRecord]:
        if not conn.execute(_HISTORY_EXISTS).scalar_one():
            return []
        return [
            AppliedRecord(name=n, checksum=c, applied_at=at, applied_by=by, duration_ms=ms)
            for n, c, at, by, ms in conn.execute(_SELECT_HISTORY)
        ]

    # -- waiting for locks ------------------------------------------------------------------------------------------

    def _watch(self, conn: sa.Connection) -> _BlockerWatch:
        driver = conn.connection.driver_connection
        pid = driver.info.backend_pid if isinstance(driver, psycopg.Connection) else None
        return _BlockerWatch(
            self._dsn, pid, interval=max(0.05, self._lock_timeout / 4), connect_timeout=self._connect_timeout
        )

    def _retrying_locks(self, conn: sa.Connection, name: str, attempt: Callable[[], _T]) -> _T:
        """Run ``attempt`` (one transaction, rolled back on error) again while it fails on lock_timeout, at most
        lock_retries more times with backoff; then fail naming who blocked it."""
        tries = 0
        while True:
            with self._watch(conn) as watch:
                try:
                    return attempt()
                except _Stop as stop:
                    if stop.error.sqlstate != "55P03":
                        raise
                    if tries >= self._lock_retries:
                        blocked = "; ".join(watch.blockers) or "no blocking backend visible to this role"
                        raise _Stop(
                            SqlMigrationError(
                                kind=SqlErrorKind.LOCK_TIMEOUT,
                                file=name,
                                sqlstate=stop.error.sqlstate,
                                retryable=False,
                                message=f"{name} waited for a lock {tries + 1} time(s), {self._lock_timeout:g}s each "
                                f"(lock_timeout), and gave up; nothing of that transaction was applied; blocked by "
                                f"{blocked}",
                            )
                        ) from stop
            self._sleep(backoff(tries, self._rng))
            tries += 1

    # -- one transaction per file -----------------------------------------------------------------------------------

    def _apply_file(self, conn: sa.Connection, file: SqlFile, rollout: str, run: str | None) -> AppliedRecord:
        """Run ``file`` and insert its history row (and, in a catch-up pass, its run row) in one transaction."""
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
            applied_at = self._record(conn, file, rollout, run, duration_ms)
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
        self._commit(tx, file.name)
        return AppliedRecord(
            name=file.name, checksum=file.checksum, applied_at=applied_at, applied_by=rollout, duration_ms=duration_ms
        )

    @staticmethod
    def _record(conn: sa.Connection, file: SqlFile, rollout: str, run: str | None, duration_ms: int) -> datetime:
        if run is not None:
            conn.execute(_RUN_DONE, {"run": run, "name": file.name, "checksum": file.checksum, "applied_by": rollout})
        applied_at: datetime = conn.execute(
            _INSERT_HISTORY,
            {"name": file.name, "checksum": file.checksum, "applied_by": rollout, "duration_ms": duration_ms},
        ).scalar_one()
        return applied_at

    def _commit(self, tx: sa.RootTransaction, name: str) -> None:
        try:
            tx.commit()
        except sa.exc.DBAPIError as exc:
            error = describe_db_error(exc, self._dsn)
            raise _Stop(
                SqlMigrationError(
                    kind=SqlErrorKind.FILE_FAILED,
                    file=name,
                    sqlstate=error.sqlstate,
                    retryable=True,
                    message=f"committing {name} failed ({error}); the file and its history row commit "
                    "together, so the next apply learns from the history whether it is applied",
                )
            ) from exc

    # -- no-transaction files ---------------------------------------------------------------------------------------

    def _apply_outside_transaction(
        self, conn: sa.Connection, file: SqlFile, rollout: str, run: str | None
    ) -> AppliedRecord:
        """Each statement on its own (autocommit) under lock_timeout with retries; an INVALID index left by a failed
        CREATE INDEX CONCURRENTLY is dropped before it is built again. The history row follows the last statement."""
        started = time.monotonic()
        try:
            statements = split_statements(file.content)
        except pglast.parser.ParseError as exc:
            raise _Stop(
                SqlMigrationError(kind=SqlErrorKind.FILE_FAILED, file=file.name, message=f"{file.name}: {exc}")
            ) from exc
        auto = conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            _run_script(auto, _FRESH_SESSION)
            auto.execute(
                sa.text("SELECT set_config('statement_timeout', :s, false), set_config('lock_timeout', :l, false)"),
                {
                    "s": "0" if self._statement_timeout is None else milliseconds(self._statement_timeout),
                    "l": milliseconds(self._lock_timeout),
                },
            )
            for number, statement in enumerate(statements, 1):
                where = f"{file.name} statement {number} of {len(statements)}"
                self._retrying_locks(auto, where, partial(self._autocommit, auto, statement, where))
            _run_script(auto, "RESET ALL")
        except sa.exc.DBAPIError as exc:
            raise _Stop(self._database_error(exc, f"applying {file.name}")) from exc
        finally:
            if not conn.invalidated and not conn.closed:
                if conn.in_transaction():
                    conn.commit()  # autocommit: ends SQLAlchemy's autobegun, database-less transaction
                conn.execution_options(isolation_level=conn.default_isolation_level)
        duration_ms = round((time.monotonic() - started) * 1000)
        tx = conn.begin()
        try:
            applied_at = self._record(conn, file, rollout, run, duration_ms)
        except sa.exc.DBAPIError as exc:
            tx.rollback()
            raise _Stop(self._database_error(exc, f"recording {file.name}")) from exc
        self._commit(tx, file.name)
        return AppliedRecord(
            name=file.name, checksum=file.checksum, applied_at=applied_at, applied_by=rollout, duration_ms=duration_ms
        )

    def _autocommit(self, conn: sa.Connection, statement: str, where: str) -> None:
        try:
            index = _concurrent_index(statement)
            if index is not None:
                name, table = index
                invalid = conn.execute(_INVALID_INDEX, {"name": name, "table": table}).scalar_one_or_none()
                if invalid is not None:
                    _run_script(conn, f"DROP INDEX CONCURRENTLY IF EXISTS {invalid}")
            _run_script(conn, statement)
        except sa.exc.DBAPIError as exc:
            error = describe_db_error(exc, self._dsn, statement)
            raise _Stop(
                SqlMigrationError(
                    kind=SqlErrorKind.FILE_FAILED,
                    file=where.split(" ", maxsplit=1)[0],
                    sqlstate=error.sqlstate,
                    retryable=error.retryable,
                    message=f"{where} failed: {error}; the statements before it are committed (a no-transaction "
                    "file runs again from its start, so it must be idempotent)",
                )
            ) from exc

    # -- batched backfills ------------------------------------------------------------------------------------------

    def _run_backfill(
        self,
        conn: sa.Connection,
        file: SqlFile,
        target: BackfillTarget,
        rollout: str,
        run: str,
        deadline: float | None,
    ) -> tuple[BackfillProgress, AppliedRecord | None]:
        """Batches until the table is done (the history row is written with the last) or the budget runs out."""
        settings = self._backfill
        try:
            with conn.begin():  # the catalog only: nothing here waits behind a lock on the table
                table = self._backfill_table(conn, file, target)
                state = self._start_run(conn, file, table, run, rollout)
            size = state.batch_size
            counted = False
            while True:
                with conn.begin():
                    state.throttled = self._pressure(conn, table)
                out_of_time = deadline is not None and time.monotonic() >= deadline
                if state.throttled is not None and not out_of_time:
                    left = settings.throttle_poll if deadline is None else deadline - time.monotonic()
                    self._sleep(max(0.0, min(settings.throttle_poll, left)))
                    continue
                if not counted and state.throttled is None:
                    with conn.begin():
                        total, seconds = conn.execute(
                            _RUN_TOTAL,
                            {"run": run, "name": file.name, "remaining": self._remaining(conn, table, state.last_key)},
                        ).one()
                    state.rows_total, state.seconds, counted = int(total), float(seconds), True
                if deadline is not None and time.monotonic() >= deadline:
                    return state.progress(file.name, table.name, finished=False), None
                started = time.monotonic()
                record = self._retrying_locks(
                    conn, file.name, partial(self._batch, conn, file, table, run, rollout, state, size)
                )
                if record is not None:
                    return state.progress(file.name, table.name, finished=True), record
                size = next_batch_size(size, time.monotonic() - started, settings)
                state.batch_size = size
                if settings.pause > 0:
                    self._sleep(settings.pause)
        except sa.exc.DBAPIError as exc:
            raise _Stop(self._database_error(exc, f"backfilling {file.name}")) from exc

    def _backfill_table(self, conn: sa.Connection, file: SqlFile, target: BackfillTarget) -> _Table:
        found = conn.execute(_BACKFILL_TABLE, {"table": target.table}).first()
        if found is None:
            raise _Stop(
                SqlMigrationError(
                    kind=SqlErrorKind.FILE_FAILED,
                    file=file.name,
                    message=f"{file.name}: the backfill's table {target.table} does not exist",
                )
            )
        key = conn.execute(_KEY_COLUMN, {"oid": found[0], "key": target.key}).first()
        if key is None:
            wanted = f"column {target.key}" if target.key else "a one-column primary key"
            raise _Stop(
                SqlMigrationError(
                    kind=SqlErrorKind.FILE_FAILED,
                    file=file.name,
                    message=f"{file.name}: {target.table} has no {wanted} that is NOT NULL and alone in a unique, "
                    "valid, non-partial index; a backfill walks the table by such a key",
                )
            )
        return _Table(oid=int(found[0]), name=str(found[1]), key=str(key[0]), key_type=str(key[1]))

    def _remaining(self, conn: sa.Connection, table: _Table, after: str | None) -> int:
        where = "" if after is None else f" WHERE {table.key} > CAST(:after AS {table.key_type})"
        counted = conn.execute(sa.text(f"SELECT count(*) FROM {table.name}{where}"), {"after": after}).scalar_one()
        return int(counted)

    def _start_run(self, conn: sa.Connection, file: SqlFile, table: _Table, run: str, rollout: str) -> _Run:
        """Resume the run's progress when it is this file's, unfinished; else start over. Reads and writes only the
        operator's own table: the rows still to do are counted once the table is not under pressure."""
        row = conn.execute(_RUN_STATE, {"run": run, "name": file.name}).first()
        resume = row is not None and row[0] == file.checksum and row[1] is None and row[2] == table.name
        if row is not None and resume:
            last_key, done, batches, size = row[3], int(row[4]), int(row[5]), int(row[6] or 0)
            total, seconds = int(row[7]), float(row[8])
        else:
            last_key, done, batches, size = None, 0, 0, self._backfill.initial_batch
            total, seconds = 0, 0.0
            conn.execute(
                _RUN_RESET,
                {
                    "run": run,
                    "name": file.name,
                    "checksum": file.checksum,
                    "applied_by": rollout,
                    "table": table.name,
                    "size": size,
                },
            )
        size = max(self._backfill.min_batch, min(self._backfill.max_batch, size or self._backfill.initial_batch))
        return _Run(
            last_key=last_key,
            rows_done=done,
            rows_total=int(total),
            batches=batches,
            batch_size=size,
            seconds=float(seconds),
        )

    def _pressure(self, conn: sa.Connection, table: _Table) -> str | None:
        """Why the database is too busy for the next batch right now, or None."""
        waits, old, lag = conn.execute(_PRESSURE, {"oid": table.oid, "age": self._backfill.max_transaction_age}).one()
        reasons = []
        if waits:
            reasons.append(f"{waits} lock wait(s) on {table.name}")
        if old:
            reasons.append(f"transaction(s) open longer than {self._backfill.max_transaction_age:g}s (pid {old})")
        if lag is not None and float(lag) > self._backfill.max_replica_lag:
            reasons.append(f"replica replay lag {float(lag):.1f}s > {self._backfill.max_replica_lag:g}s")
        return "; ".join(reasons) or None

    def _bounds(self, conn: sa.Connection, table: _Table, after: str | None, size: int) -> tuple[int, str, str]:
        where = "" if after is None else f" WHERE {table.key} > CAST(:after AS {table.key_type})"
        query = (
            f"WITH b AS MATERIALIZED (SELECT {table.key} AS k FROM {table.name}{where} ORDER BY {table.key} "
            "LIMIT :size) SELECT count(*), CAST((SELECT k FROM b ORDER BY k LIMIT 1) AS text), "
            "CAST((SELECT k FROM b ORDER BY k DESC LIMIT 1) AS text) FROM b"
        )
        rows, first, last = conn.execute(sa.text(query), {"after": after, "size": size}).one()
        return int(rows), first, last

    def _batch_script(self, conn: sa.Connection, file: SqlFile, first: str, last: str) -> None:
        _run_script(conn, _FRESH_SESSION)
        set_local_timeouts(
            conn, statement_timeout=self._statement_timeout or BOOKKEEPING_TIMEOUT, lock_timeout=self._lock_timeout
        )
        conn.execute(
            sa.text(f"SELECT set_config('{BATCH_FIRST}', :first, true), set_config('{BATCH_LAST}', :last, true)"),
            {"first": first, "last": last},
        )
        _run_script(conn, file.content)

    def _batch(
        self, conn: sa.Connection, file: SqlFile, table: _Table, run: str, rollout: str, state: _Run, size: int
    ) -> AppliedRecord | None:
        """One batch and its progress row in one transaction; the history row when there is nothing left."""
        running: str | None = None
        first = last = ""
        tx = conn.begin()
        try:
            rows, first, last = self._bounds(conn, table, state.last_key, size)
            if rows == 0:
                done, batches, duration_ms = conn.execute(_RUN_FINISH, {"run": run, "name": file.name}).one()
                state.rows_total = state.rows_done = int(done)
                applied_at = self._record(conn, file, rollout, None, int(duration_ms))
                self._commit(tx, file.name)
                return AppliedRecord(
                    name=file.name,
                    checksum=file.checksum,
                    applied_at=applied_at,
                    applied_by=rollout,
                    duration_ms=int(duration_ms),
                )
            running = file.content
            self._batch_script(conn, file, first, last)
            running = None
            done, total, batches, seconds = conn.execute(
                _RUN_BATCH,
                {"run": run, "name": file.name, "last": last, "rows": rows, "size": size},
            ).one()
        except sa.exc.DBAPIError as exc:
            tx.rollback()
            error = describe_db_error(exc, self._dsn, running)
            if running is not None and error.sqlstate is not None and error.sqlstate.startswith(("22", "23")):
                # a data exception or a constraint: some row is at fault; find it
                culprit = self._culprit(conn, file, table, state.last_key, rows)
                raise _Stop(
                    SqlMigrationError(
                        kind=SqlErrorKind.FILE_FAILED,
                        file=file.name,
                        sqlstate=error.sqlstate,
                        message=f"{file.name} failed in batch {state.batches + 1} ({culprit}): {error}; that batch "
                        f"was rolled back, the {state.batches} batch(es) before it ({state.rows_done} rows) stay "
                        f"done and recorded in {RUNS_TABLE}",
                    )
                ) from exc
            raise _Stop(
                SqlMigrationError(
                    kind=SqlErrorKind.FILE_FAILED,
                    file=file.name,
                    sqlstate=error.sqlstate,
                    retryable=error.retryable,
                    message=f"{file.name} batch {state.batches + 1} ({table.key} {first} .. {last}) did not "
                    f"complete: {error}; {state.batches} batch(es) ({state.rows_done} rows) are done and recorded, "
                    "the next apply resumes after them",
                )
            ) from exc
        except _Stop:
            tx.rollback()
            raise
        self._commit(tx, file.name)
        state.last_key, state.rows_done, state.rows_total = last, int(done), int(total)
        state.batches, state.seconds = int(batches), float(seconds)
        return None

    def _culprit(self, conn: sa.Connection, file: SqlFile, table: _Table, after: str | None, rows: int) -> str:
        """The key of the first row the file fails on, found by bisecting the failed batch in transactions that are
        always rolled back; the batch's key range when no single row fails."""
        where = "" if after is None else f" WHERE {table.key} > CAST(:after AS {table.key_type})"
        try:
            with conn.begin():
                keys = [
                    str(k)
                    for (k,) in conn.execute(
                        sa.text(
                            f"SELECT CAST({table.key} AS text) FROM {table.name}{where} ORDER BY {table.key} "
                            "LIMIT :size"
                        ),
                        {"after": after, "size": rows},
                    )
                ]
            if not keys:
                return "no rows"

            def fails(lo: int, hi: int) -> bool:
                tx = conn.begin()
                try:
                    self._batch_script(conn, file, keys[lo], keys[hi])
                    return False
                except sa.exc.DBAPIError:
                    return True
                finally:
                    tx.rollback()

            lo, hi = 0, len(keys) - 1
            while lo < hi:
                mid = (lo + hi) // 2
                if fails(lo, mid):
                    hi = mid
                else:
                    lo = mid + 1
            if fails(lo, lo):
                return f"the row with {table.key} = {keys[lo]}"
            return f"{table.key} {keys[0]} .. {keys[-1]}"
        except sa.exc.DBAPIError:
            return "the failing row could not be isolated"

    def _database_error(self, exc: sa.exc.DBAPIError, doing: str) -> SqlMigrationError:
        error = describe_db_error(exc, self._dsn)
        return SqlMigrationError(
            kind=SqlErrorKind.DATABASE,
            sqlstate=error.sqlstate,
            retryable=error.retryable,
            message=f"database error while {doing}: {error}",
        )

    @staticmethod
    def _result(
        plan: SqlPlan,
        applied: list[AppliedRecord],
        error: SqlMigrationError | None,
        backfill: BackfillProgress | None = None,
    ) -> SqlMigrationResult:
        done = {r.name for r in applied}
        return SqlMigrationResult(
            applied=tuple(applied),
            skipped=plan.applied,
            pending=tuple(f.name for f in plan.pending if f.name not in done),
            warnings=plan.warnings,
            error=error,
            backfill=backfill,
        )


def _concurrent_index(statement: str) -> tuple[str, str] | None:
    """(index name, table as regclass text) of a named ``CREATE INDEX CONCURRENTLY``, else None."""
    try:
        parsed = pglast.parse_sql(statement)
    except pglast.parser.ParseError:
        return None
    if len(parsed) != 1 or not isinstance(parsed[0].stmt, pg_ast.IndexStmt):
        return None
    stmt = parsed[0].stmt
    if not stmt.concurrent or not stmt.idxname or stmt.relation is None:
        return None
    relation = stmt.relation
    table = _quote(str(relation.relname))
    if relation.schemaname:
        table = f"{_quote(str(relation.schemaname))}.{table}"
    return str(stmt.idxname), table


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
