"""The reference route rules (torghut_localstack.route_rules) and the SQL that must say the same: the preset's CTE is
the pack's, and the character sets the SQL spells out are Python's."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime

import pytest

from torghut_localstack import sql_pack
from torghut_localstack.route_rules import (
    INT_WHITESPACE,
    MAX_EXACT_COUNT,
    PYTHON_WHITESPACE,
    Outcome,
    Route,
    backfill,
    coerce_route_int,
    coerce_route_text,
    decimal_digit_starts,
    service_route,
)
from torghut_operator.adapters.measure import take_measurement
from torghut_operator.core.api.spec import Check
from torghut_operator.core.deadline import Deadline
from torghut_operator.core.presets import ROUTE_BACKFILL_SQL, ROUTE_RULES_CTE, ROUTE_SCOPE_ALL_CTE
from torghut_operator.core.reading import Reading

pytestmark = pytest.mark.unit


# --- the service's coercions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("lean", "lean"),
        ("  LEAN\u3000", "LEAN"),  # stripped as str.strip() does, case kept
        ("alpaca_fallback", "alpaca"),
        (" alpaca_fallback\n", "alpaca"),
        ("Alpaca_Fallback", "Alpaca_Fallback"),  # only the exact text is normalised
        ("unknown", "unknown"),  # a marker reading unknown is a value for the service
        ("", None),
        (" \t", None),
        ("\u200b", "\u200b"),  # not whitespace for Python
        (None, None),
        (42, None),
        (True, None),
        (["lean"], None),
        ({"adapter": "lean"}, None),
    ],
)
def test_coerce_route_text(value: object, text: str | None) -> None:
    assert coerce_route_text(value) == text


@pytest.mark.parametrize(
    ("value", "count"),
    [
        (None, None),
        (True, 1),
        (False, 0),
        (3, 3),
        (-2, -2),
        (2.9, 2),
        (-2.9, -2),
        (" 3 ", 3),
        ("+3", 3),
        ("1_000", 1000),
        ("\u0661\u0662", 12),  # Arabic-Indic digits
        ("\u00a07\u3000", 7),
        ("\x1f7", None),  # str.strip() would strip U+001F, int() does not
        ("3.0", None),
        ("1e3", None),
        ("_1", None),
        ("1__0", None),
        ("", None),
        ("1" * 4301, None),  # beyond Python's digit limit
        ([3], None),
        ({"n": 3}, None),
        (float("inf"), MAX_EXACT_COUNT + 1),
        (float("-inf"), 0),
    ],
)
def test_coerce_route_int(value: object, count: int | None) -> None:
    assert coerce_route_int(value) == count


def test_int_whitespace_is_what_int_skips() -> None:
    def skipped(c: str) -> bool:
        try:
            return int(f"{c}1{c}") == 1
        except ValueError:
            return False

    assert "".join(c for c in PYTHON_WHITESPACE if skipped(c)) == INT_WHITESPACE
    assert set(PYTHON_WHITESPACE) - set(INT_WHITESPACE) == {"\x1c", "\x1d", "\x1e", "\x1f"}


# --- what the service writes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_order", "route"),
    [
        (
            {"_execution_route_expected": "lean", "_execution_route_actual": "alpaca_fallback"},
            Route("lean", "alpaca", 1, "fallback_from_lean_to_alpaca"),
        ),  # torghut.md's example
        ({"_execution_adapter": "alpaca_fallback"}, Route("alpaca", "alpaca", 0, None)),
        ({"_execution_adapter": "alpaca", "execution_expected_adapter": "lean"}, Route("alpaca", "alpaca", 0, None)),
        ({"_execution_route_expected": None, "_execution_route_actual": None}, Route("unknown", "unknown", 0, None)),
        ({}, Route("unknown", "unknown", 0, None)),
        (None, Route("unknown", "unknown", 0, None)),
        (["_execution_adapter", "lean"], Route("unknown", "unknown", 0, None)),
        ({"_execution_fallback_count": 2}, Route("unknown", "unknown", 2, "fallback_from_unknown_to_unknown")),
        (
            {"_execution_route_expected": "lean", "_execution_route_actual": "lean", "_fallback_reason": "probe"},
            Route("lean", "lean", 0, None),  # no count: a reason alone is dropped
        ),
    ],
)
def test_service_route(raw_order: object, route: Route) -> None:
    assert service_route(raw_order) == route


def test_the_submit_time_expected_adapter_wins() -> None:
    route = service_route(
        {"_execution_route_expected": "alpaca", "_execution_adapter": "alpaca"}, expected_adapter="lean"
    )
    assert route == Route("lean", "alpaca", 1, "fallback_from_lean_to_alpaca")


# --- the backfill ---------------------------------------------------------------------------------------------


def test_backfill_keeps_rows_whose_adapters_are_both_set() -> None:
    row = Route(" lean", "alpaca", 0, "kept as is")
    assert backfill(row, {"_execution_route_expected": "simulation"}) == backfill(row, None)
    assert backfill(row, None).outcome is Outcome.UNCHANGED
    assert backfill(Route("lean", " alpaca_fallback", 0, None), None).route == Route("lean", "alpaca", 0, None)


def test_backfill_treats_unknown_empty_and_whitespace_columns_as_missing() -> None:
    for column in (None, "", " \t", "unknown", " unknown "):
        result = backfill(Route(column, column), {"_execution_adapter": "lean"})
        assert result.route == Route("lean", "lean", 0, None), column
        assert result.outcome is Outcome.CHANGED


def test_backfill_keeps_a_usable_actual_column() -> None:
    result = backfill(Route(None, "alpaca"), {"_execution_route_expected": "lean", "_execution_route_actual": "lean"})
    assert result.route == Route("lean", "alpaca", 1, "fallback_from_lean_to_alpaca")


def test_backfill_of_nothing_is_unknown_unknown() -> None:
    result = backfill(Route(None, None, 0, None), {"id": "order-1"})
    assert result.route == Route("unknown", "unknown", 0, None)
    assert result.route.unknown
    assert backfill(result.route, {"id": "order-1"}).outcome is Outcome.UNCHANGED  # idempotent


@pytest.mark.parametrize(
    "raw_order",
    [
        {"_execution_route_expected": "x" * 33},
        {"_execution_adapter": "alpaca", "_execution_route_expected": "lean", "_fallback_reason": "r" * 129},
        {"_execution_adapter": "lean", "_execution_fallback_count": 2**53 + 1},
    ],
)
def test_values_that_do_not_fit_skip_the_row(raw_order: dict[str, object]) -> None:
    row = Route(None, "unknown", 0, None)
    assert backfill(row, raw_order) == backfill(row, raw_order).__class__(row, Outcome.SKIPPED)


# --- the SQL says the same ------------------------------------------------------------------------------------


def test_the_preset_check_and_the_pack_share_one_rule_text() -> None:
    """One text of the rules; only the scope differs: the backfill's is one batch, the check's the whole table."""
    backfill_file = next(p for p in sql_pack.pack_files() if p.name == "0004_route_provenance_backfill.sql")
    body = backfill_file.read_text("utf-8")
    batch_scope = re.search(r"WITH\n(scope AS \(.*?\n\)),\n", body, flags=re.DOTALL)
    assert batch_scope is not None
    assert "WITH\n" + batch_scope.group(1) + ",\n" + ROUTE_RULES_CTE + "\nUPDATE public.executions" in body
    assert ROUTE_BACKFILL_SQL.startswith("WITH\n" + ROUTE_SCOPE_ALL_CTE + ",\n" + ROUTE_RULES_CTE + "\nSELECT")
    # the rules read the scope and nothing else of executions: a batch reads only its own rows
    assert "FROM scope AS e" in ROUTE_RULES_CTE
    assert "FROM public.executions" not in ROUTE_RULES_CTE
    # the batch scope is bounded by both of the migrator's batch settings, and the UPDATE writes only scope rows
    assert "id BETWEEN CAST(current_setting('torghut_rollout.batch_first') AS uuid)" in batch_scope.group(1)
    assert "AND CAST(current_setting('torghut_rollout.batch_last') AS uuid)" in batch_scope.group(1)
    assert body.endswith("\nFROM changes AS c\nWHERE c.id = e.id AND c.changed;\n")
    assert ROUTE_SCOPE_ALL_CTE == "scope AS (SELECT * FROM public.executions AS x)"


def _sql_string(name: str) -> str:
    match = re.search(r"E'([^']*)' AS " + name + ",", ROUTE_RULES_CTE)
    assert match is not None, name
    return re.sub(r"\\u([0-9a-f]{4})", lambda m: chr(int(m.group(1), 16)), match.group(1))


def test_the_sql_whitespace_sets_are_pythons() -> None:
    assert _sql_string("ws") == PYTHON_WHITESPACE
    assert _sql_string("int_ws") == INT_WHITESPACE


def test_the_sql_digit_table_is_pythons() -> None:
    """Unicode adds digits now and then: a Python with a newer Unicode database fails here, naming what to add."""
    match = re.search(r"unnest\(ARRAY\[([0-9,\s]+)\]\)", ROUTE_RULES_CTE)
    assert match is not None
    listed = tuple(int(n) for n in match.group(1).replace("\n", " ").split(","))
    assert listed == decimal_digit_starts(), f"Unicode {unicodedata.unidata_version}"


def test_the_check_quotes_unknown_and_skipped_rows_in_its_verdict() -> None:
    check = Check.model_validate({"name": "route-backfill", "postgres": {"query": ROUTE_BACKFILL_SQL}, "max": 0})

    class Provider:
        def read(self, check: Check, deadline: Deadline) -> Reading:
            return Reading(0, note="12 of 3000 executions (0.40 percent) have no route marker")

    measurement = take_measurement(check, Provider(), previous=None, now=datetime(2026, 11, 24, tzinfo=UTC))
    assert measurement.message.startswith("route-backfill: value 0 at or below max 0 (postgres: WITH")
    assert measurement.message.endswith("; 12 of 3000 executions (0.40 percent) have no route marker")
