"""The Postgres toolkit the adapters share: an engine whose every session is bounded (connect, statement and lock
timeouts set at connection start, TCP keepalives), SET LOCAL of both timeouts, session advisory locks, database
errors described for people (SQLSTATE, message, line, detail, hint; never the DSN or a password) and redaction.
Used by the SQL-file migrator, the ledger, the expectations and the Torghut facts."""

from __future__ import annotations

import math
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.pool import NullPool

_KEEPALIVE = {"idle": 30, "interval": 10, "count": 3}
"""TCP keepalives on both ends, so a partitioned operator's session (and its advisory lock) dies in about a
minute instead of the kernel default of two hours."""

_RETRYABLE_SQLSTATES = frozenset({"55P03", "40001", "40P01", "53300", "57P01", "57P02", "57P03"})
_RETRYABLE_SQLSTATE_CLASSES = ("08",)


def pg_engine(
    dsn: str, *, connect_timeout: float, statement_timeout: float, lock_timeout: float, application_name: str
) -> sa.Engine:
    """An engine that opens one fresh connection per ``connect()`` with every timeout set at connection start (so
    even SQLAlchemy's own first queries are bounded). Nothing connects until ``connect()``."""
    options = " ".join(
        [
            f"-c statement_timeout={milliseconds(statement_timeout)}",
            f"-c lock_timeout={milliseconds(lock_timeout)}",
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
        {
            "statement": "0" if statement_timeout is None else milliseconds(statement_timeout),
            "lock": milliseconds(lock_timeout),
        },
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


_ADVISORY_LOCK = sa.text("SELECT pg_advisory_lock(:key)")
_ADVISORY_UNLOCK = sa.text("SELECT pg_advisory_unlock(:key)")


def advisory_lock(conn: sa.Connection, key: int, *, wait: float, statement_timeout: float, dsn: str) -> DbError | None:
    """Take the session advisory lock ``key`` (it outlives the transaction), waiting at most ``wait`` seconds.
    Returns the lock-timeout error (55P03) when the wait ran out, None once held; any other error raises."""
    try:
        with conn.begin():
            set_local_timeouts(conn, statement_timeout=statement_timeout, lock_timeout=wait)
            conn.execute(_ADVISORY_LOCK, {"key": key})
    except sa.exc.DBAPIError as exc:
        error = describe_db_error(exc, dsn)
        if error.sqlstate != "55P03":
            raise
        return error
    return None


def advisory_unlock(conn: sa.Connection, key: int) -> None:
    """Release ``key`` if the session is still usable; closing the connection releases it anyway."""
    if conn.invalidated or conn.closed:
        return
    try:
        if conn.in_transaction():
            conn.rollback()
        with conn.begin():
            conn.execute(_ADVISORY_UNLOCK, {"key": key})
    except sa.exc.DBAPIError:
        conn.invalidate()


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


def milliseconds(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))
