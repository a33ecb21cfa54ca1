"""One rule set: the SQL pack's backfill and the route-backfill check against the reference (torghut_localstack.
route_rules) on a real PostgreSQL 15, on generated rows. Every generated batch is inserted in bulk; the check must
count exactly the rows the reference would change, the backfill (run once, in batches of a few keys) must leave every row as the reference
says, and afterwards the check must count 0 and report the rows left unknown or skipped."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.engine import Engine

from torghut_localstack import sql_pack, torghut_db
from torghut_localstack.postgres import PostgresServer
from torghut_localstack.route_rules import (
    ALL_MARKERS,
    PYTHON_WHITESPACE,
    Backfill,
    Outcome,
    Route,
    backfill,
    decimal_digit_starts,
)
from torghut_operator.core.presets import ROUTE_BACKFILL_SQL

pytestmark = pytest.mark.integration

MIN_ROWS = 10_000
BATCHES = 600
"""Examples per run; each inserts one batch of rows (see ``batches``), backfills and compares it."""
BATCH_KEYS = 37
"""Keys per backfill batch (the migrator's batches; unrelated to hypothesis's batches of rows)."""

# ---- generated data -------------------------------------------------------------------------------

_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")  # jsonb can store neither
_WS = st.text(st.sampled_from(PYTHON_WHITESPACE + "\u200b\ufeff"), max_size=3)  # plus two str.strip() keeps
_ADAPTERS = st.sampled_from(
    ["alpaca", "lean", "simulation", "alpaca_fallback", "unknown", "Alpaca_Fallback", "LEAN", "Unknown", "", "alpaca "]
)
_DIGIT_SETS = [chr(start + d) for start in decimal_digit_starts()[:12] for d in range(10)]


@st.composite
def padded(draw: st.DrawFn, core: st.SearchStrategy[str]) -> str:
    return draw(_WS) + draw(core) + draw(_WS)


def adapter_text(longest: int = 36) -> st.SearchStrategy[str]:
    return st.one_of(
        padded(_ADAPTERS).filter(lambda t: len(t) <= longest),
        st.text(_CHARS, max_size=12),
        st.text(st.sampled_from("ab_-"), min_size=30, max_size=longest),  # around varchar(32)
    )


_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
)
_JSON_JUNK = st.one_of(
    _JSON_SCALARS,
    st.lists(_JSON_SCALARS, max_size=2),
    st.dictionaries(st.text(_CHARS, max_size=4), _JSON_SCALARS, max_size=2),
)


@st.composite
def int_like(draw: st.DrawFn) -> str:
    """Strings Python's int() may accept: whitespace, a sign, digits (ASCII or other scripts), underscores."""
    digits = draw(st.lists(st.sampled_from("0123456789" * 4 + "".join(_DIGIT_SETS)), min_size=1, max_size=22))
    body = ""
    for i, digit in enumerate(digits):
        body += digit
        if i < len(digits) - 1 and draw(st.integers(0, 9)) == 0:
            body += "_"
    sign = draw(st.sampled_from(["", "", "+", "-"]))
    text = draw(_WS) + sign + body + draw(_WS)
    mutation = draw(st.integers(0, 11))
    if mutation == 0:
        text = "_" + text
    elif mutation == 1:
        text += "_"
    elif mutation == 2:
        text = text.replace("_", "__", 1) if "_" in text else text + " 1"
    elif mutation == 3:
        text = sign + " " + body
    return text


_COUNTS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**25), max_value=10**25),
    st.integers(min_value=-3, max_value=5),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-3, max_value=5),
    int_like(),
    st.sampled_from(["1" * 4300, "1" * 4301, "0" * 4301, "1e3", "0x10", "", " ", "3.0", "\u0663"]),
    st.text(_CHARS, max_size=6),
    _JSON_JUNK,
)
_REASONS = st.one_of(
    padded(st.sampled_from(["lean_timeout", "alpaca_fallback", "", "fallback_from_lean_to_alpaca"])),
    st.text(_CHARS, max_size=20),
    st.text(st.sampled_from("rs "), min_size=126, max_size=132),  # around varchar(128)
    _JSON_JUNK,
)


@st.composite
def raw_orders(draw: st.DrawFn) -> object:
    shape = draw(st.integers(0, 19))
    if shape == 0:
        return None  # SQL NULL
    if shape == 1:
        return draw(_JSON_JUNK)  # JSON that is not an object
    order: dict[str, object] = {"id": "o", "symbol": "AAPL"}
    for key in draw(st.lists(st.sampled_from(ALL_MARKERS), unique=True, max_size=len(ALL_MARKERS))):
        if key == "_execution_fallback_count":
            order[key] = draw(_COUNTS)
        elif key.endswith("reason"):
            order[key] = draw(_REASONS)
        else:
            order[key] = draw(st.one_of(adapter_text(), adapter_text(), _JSON_JUNK))
    return order


_COLUMN_ADAPTERS = st.one_of(st.none(), st.none(), adapter_text(longest=32))


@st.composite
def rows(draw: st.DrawFn) -> tuple[Route, object]:
    route = Route(
        draw(_COLUMN_ADAPTERS),
        draw(_COLUMN_ADAPTERS),
        draw(st.sampled_from([0, 0, 0, 1, 2, -1, 7])),
        draw(st.one_of(st.none(), st.none(), st.text(_CHARS, max_size=128))),
    )
    return route, draw(raw_orders())


batches = st.lists(rows(), min_size=-(-MIN_ROWS // BATCHES), max_size=40)  # MIN_ROWS reached by construction


# ---- the database ---------------------------------------------------------------------------------

_INSERT = text(
    "INSERT INTO executions (alpaca_order_id, symbol, side, order_type, time_in_force, submitted_qty, status,"
    " execution_expected_adapter, execution_actual_adapter, execution_fallback_count, execution_fallback_reason,"
    " raw_order)"
    " VALUES (:key, 'AAPL', 'buy', 'market', 'day', 1, 'filled', :expected, :actual, :count, :reason,"
    " CAST(:raw AS jsonb))"
)
_READ = text(
    "SELECT alpaca_order_id, execution_expected_adapter, execution_actual_adapter, execution_fallback_count,"
    " execution_fallback_reason FROM executions"
)


@pytest.fixture(scope="module")
def engine(postgres: PostgresServer) -> Iterator[Engine]:
    with torghut_db.temporary_database(postgres.dsn(), "routeprop") as url:
        eng = torghut_db.make_engine(url, statement_timeout_ms=120_000)
        torghut_db.create_schema(eng)
        yield eng
        eng.dispose()


def backfill_sql() -> str:
    return (sql_pack.PACK_DIR / "0004_route_provenance_backfill.sql").read_text("utf-8")


def measure(engine: Engine) -> tuple[int, str]:
    with engine.connect() as conn:
        value, detail = conn.execute(text(ROUTE_BACKFILL_SQL)).one()
    return int(value), str(detail)


@dataclass
class Tally:
    collected: list[tuple[Route, object]] = field(default_factory=list)
    rows: int = 0
    batches: int = 0
    changed: int = 0
    skipped: int = 0
    unknown: int = 0


def run_batch(engine: Engine, batch: list[tuple[Route, object]], tally: Tally) -> None:
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE executions"))
        conn.execute(
            _INSERT,
            [
                {
                    "key": f"row-{i}",
                    "expected": route.expected,
                    "actual": route.actual,
                    "count": route.fallback_count,
                    "reason": route.fallback_reason,
                    "raw": None if raw is None else json.dumps(raw),
                }
                for i, (route, raw) in enumerate(batch)
            ],
        )
    want: dict[str, Backfill] = {f"row-{i}": backfill(route, raw) for i, (route, raw) in enumerate(batch)}
    changed = sum(b.outcome is Outcome.CHANGED for b in want.values())
    skipped = sum(b.outcome is Outcome.SKIPPED for b in want.values())
    unknown = sum(b.outcome is not Outcome.SKIPPED and b.route.unknown for b in want.values())

    before, _ = measure(engine)
    assert before == changed, "route-backfill must count exactly the rows the rules would change"

    # in batches, as the migrator runs it: a few keys each, so batch edges fall everywhere
    sql_pack.run_backfill(engine, backfill_sql(), batch_size=BATCH_KEYS)
    with engine.connect() as conn:
        got = {r[0]: Route(r[1], r[2], int(r[3]), r[4]) for r in conn.execute(_READ)}

    wrong = {key: (want[key].route, got[key], batch[int(key[4:])]) for key in want if got[key] != want[key].route}
    assert not wrong, f"{len(wrong)} rows differ (reference, SQL, input): {list(wrong.items())[:3]}"

    after, detail = measure(engine)
    assert after == 0
    total = len(batch)
    assert re.match(rf"{unknown} of {total} executions \(.*\) have no route marker", detail), detail
    assert f", {skipped} (" in detail, detail
    tally.collected.extend(batch)
    tally.rows += total
    tally.batches += 1
    tally.changed += changed
    tally.skipped += skipped
    tally.unknown += unknown


def test_the_backfill_and_its_check_agree_with_the_reference_on_generated_rows(engine: Engine) -> None:
    tally = Tally()

    @settings(
        max_examples=BATCHES,
        deadline=None,
        derandomize=False,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(batch=batches)
    def check(batch: list[tuple[Route, object]]) -> None:
        run_batch(engine, batch, tally)

    check()
    assert tally.rows >= MIN_ROWS
    # and all of them at once, as production runs it: one bulk insert, one backfill, every row compared
    everything = Tally()
    run_batch(engine, tally.collected, everything)
    print(
        f"route rules property: {tally.batches} batches, {everything.rows} rows, {everything.changed} changed, "
        f"{everything.skipped} skipped, {everything.unknown} unknown"
    )
    # the generator reaches every outcome, so a pass says something about each
    assert everything.changed > 0
    assert everything.skipped > 0
    assert everything.unknown > 0


def test_reference_examples_hold_as_sql(engine: Engine) -> None:
    """Edge cases the generator reaches only by luck, pinned."""
    batch: list[tuple[Route, Any]] = [
        (Route(None, None), {"_execution_fallback_count": "1" * 4301, "_execution_route_actual": "lean"}),
        (Route(None, None), {"_execution_fallback_count": "1" * 4300}),
        (Route(None, None), {"_execution_fallback_count": 2**53 + 1.0}),
        (Route(None, None), {"_execution_fallback_count": 2**53}),
        (Route(None, None), {"_execution_fallback_count": "\u00a0-\u0661_\u0662\u3000"}),
        (Route(None, None), {"_execution_fallback_count": 1e300}),
        (Route(None, None), {"_execution_fallback_count": -1e300, "_fallback_reason": "r"}),
        (Route(None, None), [1, 2]),
        (Route(None, None), "not an object"),
        (Route("unknown", "unknown"), None),
        (Route(" lean ", " alpaca_fallback "), {"_execution_route_expected": "simulation"}),
        (Route("\u2003", "lean"), {"_execution_route_expected": "Lean\u200b"}),
        (Route(None, None), {"_execution_route_expected": "e" * 32, "_execution_route_actual": "a" * 32}),
    ]
    run_batch(engine, batch, Tally())
