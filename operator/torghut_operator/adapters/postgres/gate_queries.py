"""Postgres gates: read-only SQL with a statement timeout, through SQLAlchemy 2 and psycopg 3.

A gate query cannot write, whoever the DSN is: defence in depth, each layer enough for what it covers.

1. Before anything is sent, PostgreSQL's own parser decides whether the text is a single read statement with no
   function that escapes the transaction (``gates.sql_guard``); otherwise an Error naming the reason.
2. Once per connection, before the query, the session's role is checked: a superuser, or a member of
   ``pg_execute_server_program``, ``pg_write_server_files`` or ``pg_read_server_files``, is refused (an Error:
   "gate DSN role postgres is a superuser: ..."). Such a role can write through COPY and server-side functions
   whatever the transaction says; gates need a role that can only read.
3. Every query runs in its own transaction that is

* ``READ ONLY`` (``SET TRANSACTION READ ONLY`` first, plus ``default_transaction_read_only`` for the rest of
  the session in case anything ended the transaction early), and always rolled back, never committed;
* bounded by ``SET LOCAL statement_timeout``;
* sent as **one prepared statement** (psycopg ``prepare=True``, the extended protocol), so a query can't
  smuggle ``COMMIT; DELETE ...`` past the read-only transaction: Postgres refuses several commands in one
  prepared statement. (psycopg's default, the simple protocol, would run them all.)

Deadline: the connect timeout and the statement timeout are cut to the measurement's time left, and the
connection's socket is shut down when the deadline passes (a server that stops answering can't hold the
worker). libpq's connect timeout is whole seconds and at least 2 s, so an unreachable server may overrun a
deadline by up to that much.

Connections are not pooled (``NullPool``): a gate runs every few seconds at most, and a fresh connection
never carries state from a previous query. The DSN is only ever held by the engine; error messages name the
host, port and database and never the password or the DSN.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import math
import os
import re
import socket
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, cast

import psycopg
import sqlalchemy
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import NullPool

from torghut_operator.adapters.postgres.sql_guard import refusal
from torghut_operator.adapters.torghut.schema_facts import missing_column, missing_table
from torghut_operator.core.api.spec import Check
from torghut_operator.core.deadline import Deadline
from torghut_operator.core.reading import ProviderError, Reading

APPLICATION_NAME = "torghut-rollout-gates"
MAX_ROWS = 10_000
"""query_rows refuses results larger than this."""

_DSN_IN_TEXT = re.compile(r"(postgres(?:ql)?(?:\+\w+)?://)[^\s@/'\"]*@")
_PASSWORD_IN_TEXT = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)

WRITER_ROLES = ("pg_execute_server_program", "pg_write_server_files", "pg_read_server_files")
"""Membership in any of these lets a role reach the server's programs or files (COPY TO PROGRAM / file)."""

ROLE_SQL = (
    "SELECT current_user::text, r.rolsuper, "
    + ", ".join(f"pg_has_role(current_user, '{role}', 'MEMBER')" for role in WRITER_ROLES)
    + " FROM pg_roles r WHERE r.rolname = current_user"
)
"""The session's role, whether it is a superuser, and its membership in each of WRITER_ROLES."""


def role_refusal(row: tuple[Any, ...] | None) -> str | None:
    """Why a session whose ROLE_SQL row is ``row`` may not run gate queries, or None (pure)."""
    if row is None or len(row) != 2 + len(WRITER_ROLES):
        return "could not determine the gate DSN's role: gates refuse to run as a role they can't check"
    role, superuser, *memberships = row
    if superuser:
        return (
            f"gate DSN role {role} is a superuser: gates refuse to run as a role that can write; use a read-only role"
        )
    for member_of, member in zip(WRITER_ROLES, memberships, strict=True):
        if member:
            return (
                f"gate DSN role {role} is a member of {member_of}: gates refuse to run as a role that can "
                "reach the server's programs or files; use a read-only role"
            )
    return None


# The connect timeout of the connection being opened now (per thread: each measurement connects in its own).
_connect_timeout: contextvars.ContextVar[int | None] = contextvars.ContextVar("gate_connect_timeout", default=None)


class PostgresGateway:
    """Read-only queries against one database.

    ``dsn``: a libpq URL (``postgresql://user:pass@host:5432/db?sslmode=require``; ``postgres://`` and
    ``postgresql+psycopg://`` are accepted too). ``statement_timeout`` and ``connect_timeout`` in seconds.
    Creating the gateway does not connect. Thread-safe.
    """

    def __init__(
        self,
        dsn: str,
        *,
        statement_timeout: float,
        connect_timeout: float,
        denied_functions: Iterable[str] = (),
    ) -> None:
        if statement_timeout <= 0 or connect_timeout <= 0:
            raise ValueError("statement_timeout and connect_timeout must be positive")
        url = _psycopg_url(dsn)
        self._secrets = tuple(s for s in (dsn, url.password and str(url.password)) if s)
        self.target = f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"
        """host:port/database, safe to show."""
        self.statement_timeout = statement_timeout
        self.connect_timeout = connect_timeout
        self.denied_functions = tuple(denied_functions)
        """Function patterns refused on top of sql_guard.DENIED_FUNCTIONS."""
        self._engine: Engine = sqlalchemy.create_engine(
            url,
            poolclass=NullPool,
            hide_parameters=True,
            connect_args={
                # libpq takes whole seconds; psycopg applies at least 2 s
                "connect_timeout": max(1, math.ceil(connect_timeout)),
                "application_name": APPLICATION_NAME,
                # a peer that vanishes mid-query is noticed instead of blocking a worker thread for hours
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
            },
        )
        sqlalchemy.event.listen(self._engine, "do_connect", _apply_connect_timeout)

    def __repr__(self) -> str:
        return f"PostgresGateway({self.target})"

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> PostgresGateway:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- gates ----------------------------------------------------------------------------------------------

    def read(self, check: Check, deadline: Deadline) -> Reading:
        """Run the check's query. One row expected: column ``value`` (else the first column other than
        ``samples`` and ``detail``) is the value, an optional column ``samples`` the sample count and an optional
        text column ``detail`` context quoted in the verdict message. No row or a NULL value is no data; several
        rows, a statement that returns no result set, a write attempt, an error or a timeout raise
        ProviderError."""
        if check.postgres is None:
            raise ProviderError(f"check {check.name} has no postgres query")
        columns, rows = self._run(check.postgres.query, check.postgres.query, None, limit=2, deadline=deadline)
        if not rows:
            return Reading(None, detail="query returned no rows")
        if len(rows) > 1:
            raise ProviderError("query returned more than one row; a gate query must return exactly one")
        row = dict(zip(columns, rows[0], strict=True))
        others = [column for column in columns if column not in ("samples", "detail")] or columns
        value = row["value"] if "value" in row else row[others[0]]
        samples = _samples(row["samples"]) if "samples" in row else None
        note = "" if row.get("detail") is None else str(row["detail"])
        if value is None:
            return Reading(None, samples=samples, detail="value is NULL", note=note)
        return Reading(plain(value), samples=samples, note=note)

    def query_rows(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        max_rows: int = MAX_ROWS,
        deadline: Deadline | None = None,
    ) -> list[dict[str, Any]]:
        """Rows of one read-only statement as dicts (values as the driver returns them). ``sql`` takes
        SQLAlchemy-style ``:name`` parameters bound from ``params``. Same guard, transaction rules and errors
        as ``read``; more than ``max_rows`` rows is a ProviderError. ``deadline``: by default the statement
        timeout plus the connect timeout from now."""
        try:
            statement = sqlalchemy.text(sql).bindparams(**dict(params or {}))
            compiled = statement.compile(dialect=self._engine.dialect)
            # The guard parses the statement with its values inlined: libpg_query can't parse %(name)s.
            literal = statement.compile(dialect=self._engine.dialect, compile_kwargs={"literal_binds": True}).string
        except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.CompileError) as error:
            raise ProviderError(f"bad query parameters: {error}") from None
        deadline = deadline or Deadline.after(self.statement_timeout + self.connect_timeout)
        columns, rows = self._run(
            literal, compiled.string, dict(compiled.params), limit=max_rows + 1, deadline=deadline
        )
        if len(rows) > max_rows:
            raise ProviderError(f"query returned more than {max_rows} rows")
        return [dict(zip(columns, row, strict=True)) for row in rows]

    # -- the one place that talks to Postgres ---------------------------------------------------------------

    def _run(
        self, parsed: str, query: str, params: dict[str, Any] | None, *, limit: int, deadline: Deadline
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Guard ``parsed`` (the statement as the parser should see it), then run ``query`` with ``params``."""
        refused = refusal(parsed, self.denied_functions)
        if refused is not None:
            raise ProviderError(refused)
        statement_timeout = min(self.statement_timeout, deadline.timeout())
        timeout_ms = max(1, round(statement_timeout * 1000))
        connected = False
        token = _connect_timeout.set(max(1, math.ceil(min(self.connect_timeout, deadline.timeout()))))
        try:
            with self._engine.connect() as connection:
                connected = True
                driver = cast(psycopg.Connection[Any], connection.connection.driver_connection)
                try:
                    with deadline.on_expiry(lambda: _cut(driver)), driver.cursor() as cursor:
                        cursor.execute("SET TRANSACTION READ ONLY")
                        cursor.execute("SET default_transaction_read_only = on")
                        cursor.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
                        cursor.execute(ROLE_SQL, prepare=True)
                        role_refused = role_refusal(cursor.fetchone())
                        if role_refused is not None:
                            raise ProviderError(role_refused)
                        cursor.execute(query, params, prepare=True)
                        if cursor.description is None:
                            raise ProviderError("the statement returned no result set; a gate query is a SELECT")
                        columns = [column.name for column in cursor.description]
                        rows = cursor.fetchmany(limit)
                finally:
                    if not driver.closed:
                        # the socket may have been cut at the deadline; the connection is discarded anyway
                        with contextlib.suppress(psycopg.Error):
                            driver.rollback()
        except ProviderError:
            raise
        except (sqlalchemy.exc.SQLAlchemyError, psycopg.Error) as error:
            raise self._error(error, connecting=not connected) from None
        except OSError as error:
            raise ProviderError(self._scrub(f"postgres {self.target}: {type(error).__name__}: {error}")) from None
        finally:
            _connect_timeout.reset(token)
        return columns, rows

    def _error(self, error: Exception, *, connecting: bool) -> ProviderError:
        """A secret-free ProviderError for a driver or SQLAlchemy error. (Raised ``from None``: the original
        exception's text can quote the statement and, for some connection errors, connection parameters.)"""
        original = getattr(error, "orig", None) or error
        if connecting:
            text = f"cannot connect to postgres at {self.target}: {_first_line(str(original))}"
        elif isinstance(original, psycopg.errors.QueryCanceled):
            text = f"statement timeout: the query ran longer than {self.statement_timeout:g}s and was canceled"
        elif isinstance(original, psycopg.errors.ReadOnlySqlTransaction):
            text = f"write refused in a read-only transaction: {_primary(original)}"
        elif isinstance(original, psycopg.OperationalError) and original.sqlstate is None:
            text = f"lost the connection to postgres at {self.target}: {_first_line(str(original))}"
        elif isinstance(original, psycopg.errors.SyntaxError) and "multiple commands" in str(original):
            text = "a gate query must be a single statement; several were given"
        elif isinstance(original, psycopg.Error) and (lacks := _schema_gap(original)):
            # a database older than the query: "schema too old", naming the Torghut migration where known
            text = f"{lacks}: {_primary(original)} [SQLSTATE {original.sqlstate}]"
        elif isinstance(original, psycopg.Error):
            code = f" [SQLSTATE {original.sqlstate}]" if original.sqlstate else ""
            text = f"query failed on {self.target}: {_primary(original)}{code}"
        else:
            text = f"postgres {self.target}: {type(original).__name__}: {_first_line(str(original))}"
        return ProviderError(self._scrub(text))

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = _DSN_IN_TEXT.sub(r"\1***@", text)
        return _PASSWORD_IN_TEXT.sub(r"\1***", text)


def _apply_connect_timeout(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
    timeout = _connect_timeout.get()
    if timeout is not None:
        params["connect_timeout"] = timeout


def _cut(driver: psycopg.Connection[Any]) -> None:
    """Shut the connection's socket down (from the watchdog thread), waking the thread waiting on it."""
    try:
        fd = driver.pgconn.socket
        duplicate = socket.socket(fileno=os.dup(fd))
    except (psycopg.Error, OSError):
        return
    try:
        duplicate.shutdown(socket.SHUT_RDWR)  # shuts the socket itself down, not only this descriptor
    except OSError:
        pass
    finally:
        duplicate.close()


def _psycopg_url(dsn: str) -> URL:
    """The SQLAlchemy URL (driver psycopg 3) of a libpq URL; ValueError, without the DSN, otherwise."""
    text = dsn.strip()
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme not in {"postgresql", "postgres", "postgresql+psycopg"}:
        raise ValueError("the database DSN must be a postgresql:// URL")
    try:
        url = make_url("postgresql+psycopg://" + text.split("://", 1)[1])
    except Exception:  # noqa: BLE001 - the parser's message would quote the DSN
        raise ValueError("the database DSN is not a valid postgresql:// URL") from None
    return url


def _samples(raw: Any) -> int | None:
    if raw is None:
        return None
    number = float(raw) if isinstance(raw, Decimal | float) else raw
    if isinstance(number, bool) or not isinstance(number, int | float) or not float(number).is_integer():
        raise ProviderError(f"column samples must be a whole number, got {raw!r}")
    if number < 0:
        raise ProviderError(f"column samples must not be negative, got {raw!r}")
    return int(number)


def plain(value: Any) -> Any:
    """A database value as a JSON-like value: numeric -> float, interval -> seconds, timestamps -> RFC 3339
    text, uuid -> text, bytea -> hex; json/jsonb and arrays recursively."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    return str(value)


def _schema_gap(error: psycopg.Error) -> str | None:
    if isinstance(error, psycopg.errors.UndefinedColumn):
        return missing_column(_primary(error))
    if isinstance(error, psycopg.errors.UndefinedTable):
        return missing_table(_primary(error))
    return None


def _primary(error: psycopg.Error) -> str:
    primary = error.diag.message_primary if error.diag is not None else None
    return primary or _first_line(str(error))


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"
