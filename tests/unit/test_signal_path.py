"""What blocks Torghut's signal path, from /trading/status; and "schema too old" messages from Postgres errors."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from torghut_operator.adapters.torghut import trading_status
from torghut_operator.adapters.torghut.schema_facts import missing_column, missing_table
from torghut_operator.core.cel import compile_condition
from torghut_operator.core.presets import EXECUTIONS_FAILURE, EXECUTIONS_SUCCESS

pytestmark = pytest.mark.unit

HEALTHY: dict[str, Any] = {
    "enabled": True,
    "mode": "paper",
    "kill_switch_enabled": False,
    "running": True,
    "last_run_at": "2026-11-24T14:30:00+00:00",
    "last_error": None,
    "autonomy": {"runs_total": 40, "signals_total": 120, "patches_total": 3},
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


def test_a_healthy_loop_is_not_blocked() -> None:
    assert trading_status.blocks(HEALTHY) == []
    assert trading_status.explain(HEALTHY) is None


@pytest.mark.parametrize(
    ("change", "block"),
    [
        ({"enabled": False}, "trading disabled (enabled=false)"),
        ({"kill_switch_enabled": True}, "kill switch on (kill_switch_enabled=true)"),
        ({"running": False}, "trading loop not running (running=false)"),
        ({"last_error": "alpaca: 403 forbidden"}, "last_error: alpaca: 403 forbidden"),
        (
            {"autonomy": {"runs_total": 7, "signals_total": 0, "last_reason": "cursor_ahead_of_stream"}},
            "loop running with zero signals (runs_total=7, signals_total=0, last no-signal reason "
            "cursor_ahead_of_stream)",
        ),
        ({"autonomy": {"runs_total": 0, "signals_total": 0}}, "no loop run yet (runs_total=0, signals_total=0)"),
        ({"enabled": "true"}, "malformed /trading/status answer: enabled is 'true'"),
        ({"autonomy": None}, "malformed /trading/status answer: autonomy is None"),
    ],
)
def test_each_block_is_named(change: dict[str, Any], block: str) -> None:
    assert trading_status.blocks({**HEALTHY, **change}) == [block]


def test_several_blocks_are_all_named_in_order() -> None:
    text = trading_status.explain({**HEALTHY, "enabled": False, "kill_switch_enabled": True})
    assert text == "blocked: trading disabled (enabled=false); kill switch on (kill_switch_enabled=true)"


@given(json_values)
def test_any_answer_that_is_not_exactly_healthy_names_a_block(answer: Any) -> None:
    """Fail closed: whatever comes back, "nothing blocks" only for an enabled, running, error-free loop with signals."""
    found = trading_status.blocks(answer)
    if not isinstance(answer, dict):
        assert found
        return
    error = answer.get("last_error")
    autonomy = answer.get("autonomy")
    counts = [autonomy.get(k) for k in ("runs_total", "signals_total")] if isinstance(autonomy, dict) else [None]
    healthy = (
        answer.get("enabled") is True
        and answer.get("kill_switch_enabled") is False
        and answer.get("running") is True
        and (error is None or (isinstance(error, str) and not error.strip()))
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts)
        and counts[-1] != 0
    )
    if not healthy:
        assert found, answer


@given(st.dictionaries(st.sampled_from(list(HEALTHY)), json_values, max_size=6))
def test_a_healthy_answer_with_any_field_replaced_never_raises(change: dict[str, Any]) -> None:
    assert isinstance(trading_status.blocks({**HEALTHY, **change}), list)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://torghut.torghut.svc.cluster.local/trading/status", True),
        ("http://torghut/trading/status/?x=1", True),
        ("http://torghut/trading/metrics", False),
        ("http://torghut/status", False),
    ],
)
def test_the_status_endpoint_is_recognised_by_its_path(url: str, expected: bool) -> None:
    assert trading_status.is_trading_status_url(url) is expected


@pytest.mark.parametrize(
    ("primary", "expected"),
    [
        (
            "column p.decision_action does not exist",
            "schema lacks research_promotions.decision_action "
            "(added by Torghut migration 0011_autonomy_lifecycle_and_promotion_audit)",
        ),
        (
            'column "evidence_bundle" does not exist',
            "schema lacks research_promotions.evidence_bundle "
            "(added by Torghut migration 0011_autonomy_lifecycle_and_promotion_audit)",
        ),
        (
            "column executions.execution_actual_adapter does not exist",
            "schema lacks executions.execution_actual_adapter "
            "(added by Torghut migration 0006_autonomy_ledger_and_execution_route)",
        ),
        (
            "column x.no_such does not exist",
            "schema lacks column no_such (not added by any Torghut migration this database has run)",
        ),
    ],
)
def test_a_missing_column_names_the_table_and_migration(primary: str, expected: str) -> None:
    assert missing_column(primary) == expected


def test_a_missing_table_names_its_migration() -> None:
    assert missing_table('relation "research_cost_calibrations" does not exist') == (
        "schema lacks table research_cost_calibrations (added by Torghut migration "
        "0026_strategy_factory_research_objects)"
    )
    assert missing_table('relation "public.foo" does not exist') == (
        "schema lacks table foo (not created by any Torghut migration this database has run)"
    )
    assert missing_table("missing FROM-clause entry for table p") is None


def test_executions_api_judges_fresh_rows_and_leaves_underivable_history_to_route_backfill() -> None:
    def row(at: str, adapter: str) -> dict[str, str]:
        return {"created_at": at, "execution_expected_adapter": adapter, "execution_actual_adapter": adapter}

    fresh = [row("2026-12-01T22:00:00+00:00", "alpaca"), row("2026-12-01T21:50:00.5+00:00", "lean")]
    history = [row("2026-11-30T22:00:00+00:00", "unknown")]  # no route marker: the backfill left it unknown
    success, failure = compile_condition(EXECUTIONS_SUCCESS), compile_condition(EXECUTIONS_FAILURE)
    assert success.evaluate(result=fresh + history, samples=None, previous=None)
    assert not failure.evaluate(result=fresh + history, samples=None, previous=None)
    broken = [row("2026-12-01T22:01:00+00:00", "unknown"), *fresh]
    assert failure.evaluate(result=broken, samples=None, previous=None)
    assert not success.evaluate(result=broken, samples=None, previous=None)
