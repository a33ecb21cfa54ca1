"""A Torghut-like database for tests and the demo: schema loader, route resolution and seeders.

Two states (:data:`SCHEMA_STATES`, the ``state`` of :func:`create_schema`):

``checklist``
    ``torghut_schema.sql``: Torghut's tables as they stand *before* its migration 0007, the state the
    owners' checklist describes: route-provenance columns present but nullable and never backfilled, the
    research ledger of 0006 without any privilege for the runtime role ``torghut_app`` and without the
    promotion audit columns of 0011, and an ``alembic_version`` holding several long heads.
``head``
    that plus ``torghut_schema_head.sql``: the newest state: adapters ``NOT NULL DEFAULT 'unknown'``, the
    columns of 0011, the research tables of 0026 (no privilege for ``torghut_app`` on them), the extensions
    the chain needs where this PostgreSQL has them, several long heads.

Neither state has an index on ``executions`` that leads with ``created_at`` (the real chain never has one).

Everything here takes a SQLAlchemy :class:`~sqlalchemy.engine.Engine`; build one with
:func:`make_engine`, which sets a connect timeout and a statement/lock timeout on every session.
Importing this module starts nothing and connects nowhere.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib import resources
from typing import Any, Final, Literal

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url

from torghut_localstack import route_rules
from torghut_localstack.route_rules import Route

__all__ = [
    "ADAPTERS",
    "APP_ROLE",
    "DEFAULT_HEADS",
    "DEFAULT_MARKER_MIX",
    "EXTENSIONS",
    "GRANT_PRIVILEGES",
    "HEAD_HEADS",
    "HEAD_RESEARCH_TABLES",
    "HISTORY_MARKER_MIX",
    "LATER_RESEARCH_TABLES",
    "NEXT_HEAD",
    "RESEARCH_TABLES",
    "ROUTE_MARKER_PRESETS",
    "SCHEMA_STATES",
    "SYMBOLS",
    "ResearchRunSeed",
    "Route",
    "SchemaState",
    "alembic_heads",
    "alpaca_order_payload",
    "bulk_seed_executions",
    "create_database",
    "create_schema",
    "drop_database",
    "existing_research_tables",
    "heads_of",
    "insert_execution",
    "insert_trade_decision",
    "make_engine",
    "research_privileges",
    "research_row_counts",
    "research_tables_of",
    "schema_sql",
    "seed_executions",
    "seed_research_run",
    "set_alembic_heads",
    "sqlalchemy_url",
    "table_columns",
    "temporary_database",
    "ungranted_research_tables",
]

APP_ROLE: Final = "torghut_app"
"""Torghut's runtime role (owner of the real database; here: no privilege on ``research_*``)."""

RESEARCH_TABLES: Final[tuple[str, ...]] = (
    "research_runs",
    "research_candidates",
    "research_fold_metrics",
    "research_stress_metrics",
    "research_promotions",
)
"""The research ledger of migration 0006 (state ``checklist``)."""
LATER_RESEARCH_TABLES: Final[tuple[str, ...]] = (
    "research_attempts",
    "research_cost_calibrations",
    "research_sequential_trials",
    "research_validation_tests",
)
"""Added by migration 0026_strategy_factory_research_objects; no migration grants torghut_app anything on them."""
HEAD_RESEARCH_TABLES: Final[tuple[str, ...]] = RESEARCH_TABLES + LATER_RESEARCH_TABLES
GRANT_PRIVILEGES: Final[tuple[str, ...]] = ("SELECT", "INSERT", "UPDATE", "DELETE")

SchemaState = Literal["checklist", "head"]
SCHEMA_STATES: Final[tuple[str, ...]] = ("checklist", "head")

DEFAULT_HEADS: Final[tuple[str, ...]] = (
    "0007_autonomy_permissions_backfill_routes",
    "0008_order_feed_execution_events",
)
"""The Alembic heads :func:`create_schema` writes into ``alembic_version`` (several, long ids)."""

HEAD_HEADS: Final[tuple[str, ...]] = (
    "0063_options_archive_finalization_index",
    "0083_hyperliquid_execution_order_read_indexes",
)
"""The heads of state ``head``: two real revision ids of Torghut's chain (long file stems, several heads; which
revisions are heads at a given commit varies, the pair is illustrative)."""

EXTENSIONS: Final[tuple[str, ...]] = ("pgcrypto", "vector")
"""Extensions the migration chain needs (vector: 0017; pgcrypto: 0059, 0076); created where available."""

NEXT_HEAD: Final = "0009_execution_tca_metrics"
"""A head a newer image expects but this database lacks (the simulator's ``schema_not_current``)."""

ADAPTERS: Final[tuple[str, ...]] = ("alpaca", "lean", "simulation")

ROUTE_MARKER_PRESETS: Final[Mapping[str, Mapping[str, object]]] = {
    "alpaca": {"_execution_route_expected": "alpaca", "_execution_route_actual": "alpaca"},
    "lean": {"_execution_route_expected": "lean", "_execution_route_actual": "lean"},
    "lean_fallback": {"_execution_route_expected": "lean", "_execution_route_actual": "alpaca_fallback"},
    "adapter_marker": {"_execution_adapter": "alpaca"},
    "fallback_marker": {"_execution_adapter": "alpaca_fallback"},
    "adapter_and_response": {"_execution_adapter": "alpaca", "execution_expected_adapter": "lean"},
    "response_fields": {"execution_expected_adapter": "simulation", "execution_actual_adapter": "simulation"},
    "null_markers": {"_execution_route_expected": None, "_execution_route_actual": None},
    "none": {},
}
"""Named ``raw_order`` marker sets as they occur in Torghut's history (``none``: a row from before route markers;
``null_markers``: marker keys present but JSON null)."""

HISTORY_MARKER_MIX: Final[tuple[str, ...]] = (
    "alpaca",
    "lean",
    "lean_fallback",
    "alpaca",
    "adapter_marker",
    "fallback_marker",
    "adapter_and_response",
    "response_fields",
    "null_markers",
    "none",
)
"""Historical fills as a real database holds them, including the shapes the first backfill got wrong: no marker,
markers set to JSON null, ``_execution_adapter: alpaca_fallback`` alone, and a response's
``execution_expected_adapter`` next to ``_execution_adapter``."""

DEFAULT_MARKER_MIX: Final[tuple[str, ...]] = (
    "alpaca",
    "alpaca",
    "lean",
    "lean_fallback",
    "alpaca",
    "adapter_marker",
    "response_fields",
    "none",
)

SYMBOLS: Final[tuple[str, ...]] = ("AAPL", "MSFT", "NVDA", "AMZN", "META", "GOOGL", "TSLA", "SPY")

_SCHEMA_RESOURCE: Final = "torghut_schema.sql"
_HEAD_RESOURCE: Final = "torghut_schema_head.sql"


# --------------------------------------------------------------------------------------------------
# Engines and databases


def sqlalchemy_url(dsn: str) -> str:
    """Return ``dsn`` with the psycopg 3 driver (``postgresql://`` and ``postgres://`` are accepted)."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix) :]
    raise ValueError("expected a postgresql:// URL")


def make_engine(
    dsn: str,
    *,
    connect_timeout: float = 5.0,
    statement_timeout_ms: int = 30_000,
    lock_timeout_ms: int = 10_000,
    pool_size: int = 2,
) -> Engine:
    """An engine whose every connection has a connect timeout and statement/lock timeouts."""
    options = f"-c statement_timeout={int(statement_timeout_ms)} -c lock_timeout={int(lock_timeout_ms)}"
    return create_engine(
        sqlalchemy_url(dsn),
        connect_args={"connect_timeout": max(1, round(connect_timeout)), "options": options},
        pool_size=pool_size,
        max_overflow=2,
        pool_timeout=connect_timeout,
        pool_pre_ping=True,
    )


def create_database(admin_dsn: str, name: str, *, connect_timeout: float = 5.0) -> str:
    """Create database ``name`` (dropping any previous one) and return its SQLAlchemy URL."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"invalid database name {name!r}")
    admin = make_engine(admin_dsn, connect_timeout=connect_timeout).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        admin.dispose()
    return make_url(sqlalchemy_url(admin_dsn)).set(database=name).render_as_string(hide_password=False)


@contextmanager
def temporary_database(admin_dsn: str, prefix: str = "torghut") -> Iterator[str]:
    """A fresh, uniquely named database for the block; yields its SQLAlchemy URL, drops it after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    url = create_database(admin_dsn, name)
    try:
        yield url
    finally:
        drop_database(admin_dsn, name)


def drop_database(admin_dsn: str, name: str, *, connect_timeout: float = 5.0) -> None:
    """Drop database ``name`` if it exists, disconnecting its sessions."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"invalid database name {name!r}")
    admin = make_engine(admin_dsn, connect_timeout=connect_timeout).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


# --------------------------------------------------------------------------------------------------
# Schema


def schema_sql(state: SchemaState = "checklist") -> str:
    """The SQL of state ``state``: ``torghut_schema.sql``, plus ``torghut_schema_head.sql`` for ``head``."""
    files = resources.files(__package__ or "torghut_localstack")
    text_ = files.joinpath(_SCHEMA_RESOURCE).read_text("utf-8")
    if state == "head":
        text_ += "\n" + files.joinpath(_HEAD_RESOURCE).read_text("utf-8")
    elif state != "checklist":
        raise ValueError(f"unknown schema state {state!r}; expected one of {', '.join(SCHEMA_STATES)}")
    return text_


def heads_of(state: SchemaState) -> tuple[str, ...]:
    """The Alembic heads :func:`create_schema` writes for ``state`` by default."""
    return HEAD_HEADS if state == "head" else DEFAULT_HEADS


def research_tables_of(state: SchemaState) -> tuple[str, ...]:
    """Every ``research_*`` table of ``state``: both states hold the four tables of 0026 too (the graph has several
    heads: the research branch may run ahead of the route/grant patch 0007)."""
    return HEAD_RESEARCH_TABLES


def ungranted_research_tables(state: SchemaState) -> tuple[str, ...]:
    """The research tables on which ``torghut_app`` holds nothing in ``state`` (what the grant pack fixes):
    all nine before 0007; at head the four of 0026, which no migration grants."""
    return LATER_RESEARCH_TABLES if state == "head" else HEAD_RESEARCH_TABLES


def create_schema(
    engine: Engine,
    *,
    state: SchemaState = "checklist",
    heads: Sequence[str] | None = None,
    with_adapter_columns: bool = True,
    raw_order_type: Literal["jsonb", "json"] = "jsonb",
) -> tuple[str, ...]:
    """Load Torghut's schema in state ``state`` (see the module docstring) into the (empty) database of
    ``engine``; return the extensions created (at ``head``: those of :data:`EXTENSIONS` this PostgreSQL has;
    ``vector`` is not installed on the Debian machines this runs on).

    ``heads`` (default: :func:`heads_of` ``state``) are written into ``alembic_version``.
    ``with_adapter_columns=False`` drops the four route-provenance columns and their indexes (the shape from
    before migration 0006, state ``checklist`` only), and ``raw_order_type="json"`` stores ``raw_order`` as
    ``json`` instead of ``jsonb`` (both exist in the wild).
    """
    if state == "head" and not with_adapter_columns:
        raise ValueError("state head has the route-provenance columns")
    created: list[str] = []
    with engine.begin() as conn:
        if state == "head":
            available = {
                str(r[0])
                for r in conn.execute(
                    text("SELECT name FROM pg_available_extensions WHERE name = ANY(:names)"),
                    {"names": list(EXTENSIONS)},
                )
            }
            for extension in EXTENSIONS:
                if extension in available:
                    conn.exec_driver_sql(f'CREATE EXTENSION IF NOT EXISTS "{extension}"')
                    created.append(extension)
        conn.exec_driver_sql(schema_sql(state))
        if not with_adapter_columns:
            conn.exec_driver_sql(
                "ALTER TABLE executions"
                " DROP COLUMN IF EXISTS execution_expected_adapter,"
                " DROP COLUMN IF EXISTS execution_actual_adapter,"
                " DROP COLUMN IF EXISTS execution_fallback_reason,"
                " DROP COLUMN IF EXISTS execution_fallback_count"
            )
        if raw_order_type == "json":
            conn.exec_driver_sql("ALTER TABLE executions ALTER COLUMN raw_order TYPE json USING raw_order::json")
        _write_heads(conn, heads_of(state) if heads is None else heads)
    return tuple(created)


def set_alembic_heads(engine: Engine, heads: Sequence[str]) -> None:
    """Replace the rows of ``alembic_version`` by ``heads``."""
    with engine.begin() as conn:
        _write_heads(conn, heads)


def _write_heads(conn: Connection, heads: Sequence[str]) -> None:
    conn.execute(text("DELETE FROM alembic_version"))
    for head in heads:
        conn.execute(text("INSERT INTO alembic_version (version_num) VALUES (:v)"), {"v": head})


def alembic_heads(engine: Engine) -> list[str]:
    """The rows of ``alembic_version``, sorted."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT version_num FROM alembic_version ORDER BY version_num"))
        return [str(r[0]) for r in rows]


def existing_research_tables(conn: Connection) -> tuple[str, ...]:
    """The ``research_*`` tables of schema public, sorted."""
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname LIKE 'research\\_%'"
            " ORDER BY c.relname"
        )
    )
    return tuple(str(r[0]) for r in rows)


def table_columns(conn: Connection, table: str) -> frozenset[str]:
    """The columns of ``public.<table>`` (empty when it does not exist). From pg_attribute, which every role
    may read, so a role without privileges on the table still sees its shape."""
    rows = conn.execute(
        text("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(:t) AND attnum > 0 AND NOT attisdropped"),
        {"t": f"public.{table}"},
    )
    return frozenset(str(r[0]) for r in rows)


def _route_columns_nullable(conn: Connection) -> bool:
    """Whether the adapter columns take NULL (state ``checklist``) or are NOT NULL DEFAULT 'unknown' (``head``)."""
    row = conn.execute(
        text(
            "SELECT NOT attnotnull FROM pg_attribute"
            " WHERE attrelid = to_regclass('public.executions') AND attname = 'execution_expected_adapter'"
        )
    ).first()
    return True if row is None else bool(row[0])


def research_row_counts(engine: Engine) -> dict[str, int]:
    """Row count of each ``research_*`` table that exists."""
    with engine.connect() as conn:
        return {
            table: int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in existing_research_tables(conn)
        }


def research_privileges(engine: Engine, role: str = APP_ROLE) -> dict[tuple[str, str], bool]:
    """``has_table_privilege(role, table, privilege)`` for every research table that exists and privilege."""
    out: dict[tuple[str, str], bool] = {}
    with engine.connect() as conn:
        for table in existing_research_tables(conn):
            for privilege in GRANT_PRIVILEGES:
                value = conn.execute(
                    text("SELECT has_table_privilege(:role, :table, :priv)"),
                    {"role": role, "table": f"public.{table}", "priv": privilege},
                ).scalar_one()
                out[(table, privilege)] = bool(value)
    return out


# --------------------------------------------------------------------------------------------------
# Rows


def _rng(seed: int | None) -> random.Random:
    return random.Random(seed)  # noqa: S311 - fixture data, not security


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def alpaca_order_payload(
    *,
    order_id: str,
    client_order_id: str,
    symbol: str,
    side: str,
    qty: Decimal,
    fill_price: Decimal | None,
    status: str,
    created_at: datetime,
    account_label: str = "paper",
    markers: Mapping[str, object] | None = None,
) -> dict[str, Any]:
    """A broker order payload shaped like Alpaca's REST order, plus Torghut's route ``markers``."""
    filled = status in ("filled", "partially_filled")
    filled_qty = qty if status == "filled" else (qty / 2 if filled else Decimal(0))
    payload: dict[str, Any] = {
        "id": order_id,
        "client_order_id": client_order_id,
        "created_at": _iso(created_at),
        "updated_at": _iso(created_at + timedelta(milliseconds=350)),
        "submitted_at": _iso(created_at),
        "filled_at": _iso(created_at + timedelta(milliseconds=350)) if filled else None,
        "expired_at": None,
        "canceled_at": None,
        "failed_at": None,
        "asset_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"alpaca:asset:{symbol}")),
        "symbol": symbol,
        "asset_class": "us_equity",
        "qty": str(qty),
        "notional": None,
        "filled_qty": str(filled_qty),
        "filled_avg_price": str(fill_price) if filled and fill_price is not None else None,
        "order_class": "",
        "order_type": "market",
        "type": "market",
        "side": side,
        "time_in_force": "day",
        "limit_price": None,
        "stop_price": None,
        "status": status,
        "extended_hours": False,
        "legs": None,
        "account_label": account_label,
    }
    if markers:
        payload.update(markers)
    return payload


_INSERT_EXECUTION = text(
    """
    INSERT INTO executions (
        trade_decision_id, alpaca_account_label, alpaca_order_id, client_order_id, symbol, side,
        order_type, time_in_force, submitted_qty, filled_qty, avg_fill_price, status,
        execution_expected_adapter, execution_actual_adapter, execution_fallback_reason,
        execution_fallback_count, execution_correlation_id, execution_idempotency_key, raw_order,
        created_at, updated_at, last_update_at
    ) VALUES (
        CAST(:trade_decision_id AS uuid), :account_label, :order_id, :client_order_id, :symbol, :side,
        'market', 'day', :qty, :filled_qty, :price, :status,
        :expected, :actual, :reason, :count, :correlation_id, :idempotency_key, CAST(:raw_order AS jsonb),
        :created_at, :created_at, :created_at
    )
    RETURNING id
    """
)

_INSERT_EXECUTION_NO_ROUTE = text(
    """
    INSERT INTO executions (
        trade_decision_id, alpaca_account_label, alpaca_order_id, client_order_id, symbol, side,
        order_type, time_in_force, submitted_qty, filled_qty, avg_fill_price, status,
        execution_correlation_id, execution_idempotency_key, raw_order, created_at, updated_at,
        last_update_at
    ) VALUES (
        CAST(:trade_decision_id AS uuid), :account_label, :order_id, :client_order_id, :symbol, :side,
        'market', 'day', :qty, :filled_qty, :price, :status,
        :correlation_id, :idempotency_key, CAST(:raw_order AS jsonb), :created_at, :created_at,
        :created_at
    )
    RETURNING id
    """
)


def insert_execution(
    conn: Connection,
    *,
    markers: Mapping[str, object] | None,
    adapters: Literal["null", "unknown", "resolved"] = "resolved",
    created_at: datetime | None = None,
    symbol: str | None = None,
    account_label: str = "paper",
    trade_decision_id: str | None = None,
    rng: random.Random | None = None,
    with_route_columns: bool = True,
) -> str:
    """Insert one filled execution whose ``raw_order`` carries ``markers``; return its id.

    ``adapters``: ``"resolved"`` fills the route columns as Torghut does at fill time (via
    :func:`route_rules.service_route`), ``"null"`` leaves them NULL (a historical row; where the columns are NOT
    NULL, state ``head``, the column default ``'unknown'`` as the service would get), ``"unknown"`` writes
    ``'unknown'``. ``with_route_columns=False`` is for a table without those columns.
    """
    rnd = rng or _rng(None)
    ts = created_at or datetime.now(UTC)
    sym = symbol or rnd.choice(SYMBOLS)
    side = rnd.choice(("buy", "sell"))
    qty = Decimal(rnd.randint(1, 200))
    price = Decimal(rnd.randint(5_000, 90_000)) / Decimal(100)
    order_id = str(uuid.uuid4())
    client_order_id = f"torghut-{uuid.uuid4().hex[:20]}"
    payload = alpaca_order_payload(
        order_id=order_id,
        client_order_id=client_order_id,
        symbol=sym,
        side=side,
        qty=qty,
        fill_price=price,
        status="filled",
        created_at=ts,
        account_label=account_label,
        markers=markers,
    )
    if adapters == "resolved":
        route = route_rules.service_route(dict(markers or {}))
    elif adapters == "unknown" or (with_route_columns and not _route_columns_nullable(conn)):
        route = Route(expected="unknown", actual="unknown")
    else:
        route = Route(expected=None, actual=None)
    params: dict[str, Any] = {
        "trade_decision_id": trade_decision_id,
        "account_label": account_label,
        "order_id": order_id,
        "client_order_id": client_order_id,
        "symbol": sym,
        "side": side,
        "qty": qty,
        "filled_qty": qty,
        "price": price,
        "status": "filled",
        "expected": route.expected,
        "actual": route.actual,
        "reason": route.fallback_reason,
        "count": route.fallback_count,
        "correlation_id": f"corr-{uuid.uuid4().hex[:16]}",
        "idempotency_key": hashlib.sha256(client_order_id.encode()).hexdigest()[:32],
        "raw_order": json.dumps(payload),
        "created_at": ts,
    }
    stmt = _INSERT_EXECUTION if with_route_columns else _INSERT_EXECUTION_NO_ROUTE
    return str(conn.execute(stmt, params).scalar_one())


def insert_trade_decision(
    conn: Connection,
    *,
    symbol: str,
    strategy_id: str = "intraday-momentum-v3",
    status: str = "filled",
    created_at: datetime | None = None,
    rng: random.Random | None = None,
) -> str:
    """Insert one trade decision; return its id."""
    rnd = rng or _rng(None)
    ts = created_at or datetime.now(UTC)
    decision = {
        "symbol": symbol,
        "action": rnd.choice(("buy", "sell")),
        "qty": rnd.randint(1, 200),
        "order_type": "market",
        "time_in_force": "day",
        "confidence": round(rnd.uniform(0.55, 0.95), 3),
        "signal": {"name": "momentum_breakout", "timeframe": "1Min"},
    }
    body = json.dumps(decision, sort_keys=True)
    row = conn.execute(
        text(
            """
            INSERT INTO trade_decisions (strategy_id, alpaca_account_label, symbol, timeframe,
                decision_json, rationale, decision_hash, status, created_at, executed_at)
            VALUES (:strategy_id, 'paper', :symbol, '1Min', CAST(:decision AS json), :rationale,
                :hash, :status, :ts, :executed_at)
            RETURNING id
            """
        ),
        {
            "strategy_id": strategy_id,
            "symbol": symbol,
            "decision": body,
            "rationale": "momentum breakout above VWAP with rising volume",
            "hash": hashlib.sha256(body.encode()).hexdigest(),
            "status": status,
            "ts": ts,
            "executed_at": ts if status == "filled" else None,
        },
    ).scalar_one()
    return str(row)


def _marker_cycle(
    route_markers: Mapping[str, object] | Sequence[Mapping[str, object] | str] | str | None,
) -> list[Mapping[str, object]]:
    if route_markers is None:
        return [ROUTE_MARKER_PRESETS[name] for name in DEFAULT_MARKER_MIX]
    if isinstance(route_markers, str):
        return [ROUTE_MARKER_PRESETS[route_markers]]
    if isinstance(route_markers, Mapping):
        return [route_markers]
    out: list[Mapping[str, object]] = []
    for item in route_markers:
        out.append(ROUTE_MARKER_PRESETS[item] if isinstance(item, str) else item)
    if not out:
        raise ValueError("route_markers must not be empty")
    return out


def seed_executions(
    engine: Engine,
    n: int,
    *,
    route_markers: Mapping[str, object] | Sequence[Mapping[str, object] | str] | str | None = None,
    null_adapters: bool | Literal["unknown"] = True,
    created_at: datetime | None = None,
    step: timedelta = timedelta(seconds=1),
    symbol: str | None = None,
    account_label: str = "paper",
    with_decisions: bool = False,
    with_route_columns: bool = True,
    seed: int | None = None,
) -> list[str]:
    """Insert ``n`` filled executions with realistic ``raw_order`` payloads; return their ids.

    ``route_markers``: the markers put into ``raw_order`` — a mapping (every row), a preset name of
    :data:`ROUTE_MARKER_PRESETS`, or a sequence of either, cycled over the rows; ``None`` cycles
    :data:`DEFAULT_MARKER_MIX`. ``null_adapters``: ``True`` leaves the route columns NULL (rows
    written before route provenance), ``"unknown"`` writes ``'unknown'``, ``False`` fills them as
    Torghut does at fill time. Row ``i`` is created at ``created_at - i * step`` (default now), so the
    first id is the newest. ``with_decisions`` links each execution to a new trade decision.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    cycle = _marker_cycle(route_markers)
    rnd = _rng(seed)
    base = created_at or datetime.now(UTC)
    adapters: Literal["null", "unknown", "resolved"]
    if null_adapters is True:
        adapters = "null"
    elif null_adapters == "unknown":
        adapters = "unknown"
    else:
        adapters = "resolved"
    ids: list[str] = []
    with engine.begin() as conn:
        for i in range(n):
            ts = base - i * step
            sym = symbol or rnd.choice(SYMBOLS)
            decision_id = insert_trade_decision(conn, symbol=sym, created_at=ts, rng=rnd) if with_decisions else None
            ids.append(
                insert_execution(
                    conn,
                    markers=cycle[i % len(cycle)],
                    adapters=adapters,
                    created_at=ts,
                    symbol=sym,
                    account_label=account_label,
                    trade_decision_id=decision_id,
                    rng=rnd,
                    with_route_columns=with_route_columns,
                )
            )
    return ids


# --------------------------------------------------------------------------------------------------
# Research ledger


@dataclass(frozen=True)
class ResearchRunSeed:
    """What :func:`seed_research_run` wrote."""

    run_id: str
    candidate_ids: tuple[str, ...]
    promoted_candidate_id: str | None
    rows: Mapping[str, int] = field(default_factory=dict)


def seed_research_run(
    engine_or_conn: Engine | Connection,
    *,
    run_id: str | None = None,
    status: str = "completed",
    strategy_id: str = "intraday-momentum-v3",
    candidates: int = 2,
    folds: int = 3,
    stress_cases: Sequence[str] = ("spread_widening", "latency_spike"),
    decision_action: str = "promote",
    approved_mode: Literal["paper", "live"] = "paper",
    requested_mode: Literal["paper", "live"] | None = None,
    created_at: datetime | None = None,
    code_commit: str = "5d1c0f2a9b7e",
    seed: int | None = None,
) -> ResearchRunSeed:
    """Write one autonomous lane run into the research ledger: the run, its candidates, fold and
    stress metrics, and one promotion row per candidate.

    The first candidate gets ``decision_action`` (``promote``: ``approved_mode`` set with an approve
    reason and a paper candidate patch ref; anything else: a deny reason and no approved mode); the
    other candidates are ``hold`` with a deny reason. ``candidates=0`` writes only the run row.
    Accepts an engine (own transaction) or a connection (caller's transaction).
    """
    kwargs: dict[str, Any] = {
        "run_id": run_id,
        "status": status,
        "strategy_id": strategy_id,
        "candidates": candidates,
        "folds": folds,
        "stress_cases": stress_cases,
        "decision_action": decision_action,
        "approved_mode": approved_mode,
        "requested_mode": requested_mode,
        "created_at": created_at,
        "code_commit": code_commit,
        "seed": seed,
    }
    if isinstance(engine_or_conn, Engine):
        with engine_or_conn.begin() as conn:
            return _seed_research_run(conn, **kwargs)
    return _seed_research_run(engine_or_conn, **kwargs)


def _seed_research_run(
    conn: Connection,
    *,
    run_id: str | None,
    status: str,
    strategy_id: str,
    candidates: int,
    folds: int,
    stress_cases: Sequence[str],
    decision_action: str,
    approved_mode: str,
    requested_mode: str | None,
    created_at: datetime | None,
    code_commit: str,
    seed: int | None,
) -> ResearchRunSeed:
    rnd = _rng(seed)
    ts = created_at or datetime.now(UTC)
    rid = run_id or f"run-{ts.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    # Write what the service of this schema version writes: the 0011 audit columns and the 0026 tables only
    # where they exist.
    audit = "decision_action" in table_columns(conn, "research_promotions")
    later = set(existing_research_tables(conn)) & set(LATER_RESEARCH_TABLES) if candidates else set()
    day = ts.replace(hour=0, minute=0, second=0, microsecond=0)
    conn.execute(
        text(
            """
            INSERT INTO research_runs (run_id, status, strategy_id, strategy_name, strategy_type,
                strategy_version, code_commit, feature_version, dataset_version, dataset_from,
                dataset_to, runner_version, created_at, updated_at)
            VALUES (:run_id, :status, :strategy_id, 'Intraday momentum', 'momentum', 'v3',
                :code_commit, 'features-v5', 'bars-1min-2026q4', :dataset_from, :dataset_to,
                'autonomy-lane-1.4.2', :ts, :ts)
            """
        ),
        {
            "run_id": rid,
            "status": status,
            "strategy_id": strategy_id,
            "code_commit": code_commit,
            "dataset_from": day - timedelta(days=90),
            "dataset_to": day,
            "ts": ts,
        },
    )
    rows = {table: 0 for table in RESEARCH_TABLES}
    rows["research_runs"] = 1
    candidate_ids: list[str] = []
    promoted: str | None = None
    for c in range(candidates):
        cid = f"{rid}-c{c + 1:02d}"
        candidate_ids.append(cid)
        params = {"lookback": rnd.choice((15, 30, 60)), "threshold_bps": rnd.choice((8, 12, 20))}
        decisions = rnd.randint(40, 400)
        conn.execute(
            text(
                """
                INSERT INTO research_candidates (run_id, candidate_id, candidate_hash, parameter_set,
                    decision_count, trade_count, promotion_target, created_at, updated_at)
                VALUES (:run_id, :cid, :hash, CAST(:params AS jsonb), :decisions, :trades, :target,
                    :ts, :ts)
                """
            ),
            {
                "run_id": rid,
                "cid": cid,
                "hash": hashlib.sha256(f"{cid}{params}".encode()).hexdigest(),
                "params": json.dumps(params),
                "decisions": decisions,
                "trades": decisions // 2,
                "target": approved_mode if c == 0 else "paper",
                "ts": ts,
            },
        )
        rows["research_candidates"] += 1
        for f in range(folds):
            train_start = day - timedelta(days=90 - 20 * f)
            gross = Decimal(rnd.randint(-5_000, 25_000)) / Decimal(10)
            conn.execute(
                text(
                    """
                    INSERT INTO research_fold_metrics (candidate_id, fold_name, fold_order,
                        train_start, train_end, test_start, test_end, decision_count, trade_count,
                        gross_pnl, net_pnl, max_drawdown, cost_bps, created_at, updated_at)
                    VALUES (:cid, :name, :ord, :ts0, :ts1, :ts1, :ts2, :decisions, :trades, :gross,
                        :net, :dd, :cost, :ts, :ts)
                    """
                ),
                {
                    "cid": cid,
                    "name": f"walk-forward-{f + 1}",
                    "ord": f,
                    "ts0": train_start,
                    "ts1": train_start + timedelta(days=15),
                    "ts2": train_start + timedelta(days=20),
                    "decisions": decisions // max(folds, 1),
                    "trades": decisions // max(folds, 1) // 2,
                    "gross": gross,
                    "net": gross - Decimal(rnd.randint(50, 400)) / Decimal(10),
                    "dd": Decimal(rnd.randint(100, 2_000)) / Decimal(10),
                    "cost": Decimal(rnd.randint(5, 40)) / Decimal(10),
                    "ts": ts,
                },
            )
            rows["research_fold_metrics"] += 1
        for case in stress_cases:
            delta = -Decimal(rnd.randint(10, 900)) / Decimal(10)
            conn.execute(
                text(
                    """
                    INSERT INTO research_stress_metrics (candidate_id, stress_case, metric_bundle,
                        pessimistic_pnl_delta, created_at, updated_at)
                    VALUES (:cid, :case, CAST(:bundle AS jsonb), :delta, :ts, :ts)
                    """
                ),
                {
                    "cid": cid,
                    "case": case,
                    "bundle": json.dumps({"net_pnl_delta": float(delta), "sharpe_delta": -0.12}),
                    "delta": delta,
                    "ts": ts,
                },
            )
            rows["research_stress_metrics"] += 1
        action = decision_action if c == 0 else "hold"
        promote = action == "promote"
        if promote:
            promoted = cid
        values: dict[str, Any] = {
            "candidate_id": cid,
            "requested_mode": requested_mode or approved_mode,
            "approved_mode": approved_mode if promote else None,
            "approver": "torghut-autonomy",
            "approver_role": "system",
            "approve_reason": "walk_forward_and_stress_gates_passed" if promote else None,
            "deny_reason": None if promote else "insufficient_fold_stability",
            "paper_candidate_patch_ref": f"autonomy/patches/{cid}.yaml" if promote else None,
            "effective_time": ts if promote else None,
            "created_at": ts,
            "updated_at": ts,
        }
        if audit:  # the promotion audit columns of migration 0011
            values["decision_action"] = action
            values["decision_rationale"] = (
                "all folds net positive, stress delta within budget"
                if promote
                else "fold net pnl dispersion above limit"
            )
            values["evidence_bundle"] = json.dumps({"folds": folds, "stress_cases": list(stress_cases)})
        _insert(conn, "research_promotions", values, jsonb=("evidence_bundle",))
        rows["research_promotions"] += 1
        if "research_attempts" in later:  # the strategy-factory ledger of migration 0026
            _insert(
                conn,
                "research_attempts",
                {
                    "attempt_id": f"{cid}-a1",
                    "run_id": rid,
                    "candidate_hash": hashlib.sha256(cid.encode()).hexdigest(),
                    "generator_family": "momentum",
                    "attempt_stage": "evaluation",
                    "status": "completed",
                    "created_at": ts,
                },
            )
            rows["research_attempts"] = rows.get("research_attempts", 0) + 1
        if "research_validation_tests" in later:
            _insert(
                conn,
                "research_validation_tests",
                {
                    "candidate_id": cid,
                    "test_name": "deflated_sharpe",
                    "status": "passed" if promote else "failed",
                    "computed_at": ts,
                    "created_at": ts,
                },
            )
            rows["research_validation_tests"] = rows.get("research_validation_tests", 0) + 1
    return ResearchRunSeed(run_id=rid, candidate_ids=tuple(candidate_ids), promoted_candidate_id=promoted, rows=rows)


def _insert(conn: Connection, table: str, values: Mapping[str, Any], *, jsonb: Sequence[str] = ()) -> None:
    columns = ", ".join(values)
    params = ", ".join(f"CAST(:{k} AS jsonb)" if k in jsonb else f":{k}" for k in values)
    conn.execute(text(f"INSERT INTO {table} ({columns}) VALUES ({params})"), dict(values))


# --------------------------------------------------------------------------------------------------
# Bulk seeding for EXPLAIN benchmarks

_BULK_INSERT = """
INSERT INTO executions (
    alpaca_account_label, alpaca_order_id, client_order_id, symbol, side, order_type, time_in_force,
    submitted_qty, filled_qty, avg_fill_price, status,
    execution_expected_adapter, execution_actual_adapter, execution_fallback_reason,
    execution_fallback_count, execution_correlation_id, execution_idempotency_key, raw_order,
    created_at, updated_at, last_update_at
)
SELECT
    'paper', o.order_id, 'torghut-' || o.order_id, o.symbol, o.side, 'market', 'day',
    o.qty, o.qty, o.price, 'filled',
    CASE WHEN o.is_null THEN CAST(:missing AS varchar) ELSE o.expected END,
    CASE WHEN o.is_null THEN CAST(:missing AS varchar) ELSE o.actual END,
    CASE WHEN NOT o.is_null AND o.expected <> o.actual
        THEN 'fallback_from_' || o.expected || '_to_' || o.actual END,
    CASE WHEN NOT o.is_null AND o.expected <> o.actual THEN 1 ELSE 0 END,
    'corr-' || o.order_id, md5(o.order_id),
    jsonb_build_object(
        'id', o.order_id, 'client_order_id', 'torghut-' || o.order_id, 'symbol', o.symbol,
        'side', o.side, 'qty', o.qty::text, 'filled_qty', o.qty::text,
        'filled_avg_price', o.price::text, 'status', 'filled', 'type', 'market',
        'order_type', 'market', 'time_in_force', 'day', 'asset_class', 'us_equity',
        'created_at', o.ts, 'filled_at', o.ts
    ) || CASE
        WHEN o.is_null AND mod(o.g, 10) = 0 THEN '{}'::jsonb
        ELSE jsonb_build_object(
            '_execution_route_expected', o.expected,
            '_execution_route_actual', CASE WHEN o.expected <> o.actual THEN 'alpaca_fallback'
                ELSE o.actual END)
    END,
    o.ts, o.ts, o.ts
FROM (
    SELECT
        g,
        CAST(:prefix AS text) || '-' || g AS order_id,
        (ARRAY['AAPL','MSFT','NVDA','AMZN','META','GOOGL','TSLA','SPY'])[1 + mod(g, 8)] AS symbol,
        CASE WHEN mod(g, 2) = 0 THEN 'buy' ELSE 'sell' END AS side,
        (1 + mod(g * 7, 200))::numeric(20, 8) AS qty,
        (50 + mod(g * 13, 900) + mod(g, 100) / 100.0)::numeric(20, 8) AS price,
        CASE WHEN mod(g, 1000) < :lean_permille THEN 'lean' ELSE 'alpaca' END AS expected,
        CASE WHEN mod(g, 1000) < :fallback_permille THEN 'alpaca'
             WHEN mod(g, 1000) < :lean_permille THEN 'lean' ELSE 'alpaca' END AS actual,
        mod(g * 7919, 1000) < :null_permille AS is_null,
        :start + (g - 1) * :step AS ts
    FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g
) AS o
"""


def bulk_seed_executions(
    engine: Engine,
    n: int,
    *,
    null_fraction: float = 0.02,
    lean_fraction: float = 0.3,
    fallback_fraction: float = 0.05,
    start: datetime | None = None,
    span: timedelta = timedelta(days=30),
    batch_size: int = 250_000,
    statement_timeout_ms: int = 600_000,
    analyze: bool = True,
) -> int:
    """Insert ``n`` executions with ``INSERT ... SELECT generate_series`` (≈1M rows in well under a
    minute), spread evenly over ``span`` starting at ``start`` (default: ``now() - span``).

    ``lean_fraction`` of the rows expect ``lean``; ``fallback_fraction`` of all rows fell back from
    lean to alpaca (raw marker ``alpaca_fallback``); ``null_fraction`` have NULL route columns (one in
    ten of those without any marker). Batches of ``batch_size`` rows, one transaction each, with a
    local statement timeout of ``statement_timeout_ms``. Returns the number of rows inserted.
    """
    if n <= 0:
        return 0
    lean_permille = round(lean_fraction * 1000)
    fallback_permille = min(round(fallback_fraction * 1000), lean_permille)
    begin = start or (datetime.now(UTC) - span)
    step = span / n
    prefix = f"bulk-{uuid.uuid4().hex[:10]}"
    with engine.connect() as conn:
        missing = None if _route_columns_nullable(conn) else "unknown"
    inserted = 0
    stmt = text(_BULK_INSERT)
    for lo in range(1, n + 1, batch_size):
        hi = min(n, lo + batch_size - 1)
        with engine.begin() as conn:
            conn.execute(text(f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}"))
            conn.execute(text("SET LOCAL synchronous_commit = off"))
            result = conn.execute(
                stmt,
                {
                    "prefix": prefix,
                    "missing": missing,
                    "lean_permille": lean_permille,
                    "fallback_permille": fallback_permille,
                    "null_permille": round(null_fraction * 1000),
                    "start": begin,
                    "step": step,
                    "lo": lo,
                    "hi": hi,
                },
            )
            inserted += result.rowcount
    if analyze:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"SET statement_timeout = {int(statement_timeout_ms)}"))
            conn.execute(text("ANALYZE executions"))
    return inserted
