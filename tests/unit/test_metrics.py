"""The operator's own metrics: the gates' last values and streaks, as the alert rules read them."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from torghut_operator.core.api.status import (
    BackfillStatus,
    CheckStatus,
    Condition,
    Measurement,
    MigrationStatus,
    Phase,
    TorghutRolloutStatus,
    Verdict,
)
from torghut_operator.core.route_stats import RouteStats
from torghut_operator.shell import metrics

pytestmark = pytest.mark.unit


def test_gate_gauges_show_the_last_value_and_the_streak_of_windows_that_did_not_pass() -> None:
    def m(phase: Verdict, value: str) -> Measurement:
        return Measurement(phase=phase, at="2026-11-24T00:00:00.000Z", value=value)

    check = CheckStatus(
        name="signal-throughput",
        stage="verify",
        provider="prometheus",
        query="q",
        threshold="t",
        measurements=[m(Verdict.SUCCESSFUL, "4"), m(Verdict.INCONCLUSIVE, "0"), m(Verdict.INCONCLUSIVE, "0")],
    )
    metrics.observe_status("ns", "r", TorghutRolloutStatus(checks=[check]))
    labels = {"namespace": "ns", "name": "r", "check": "signal-throughput"}
    assert REGISTRY.get_sample_value("torghut_rollout_gate_value", labels) == 0
    assert REGISTRY.get_sample_value("torghut_rollout_check_not_passing_streak", labels) == 2


def test_a_restore_that_failed_is_a_series_an_alert_reads_until_the_rollout_goes() -> None:
    failed = Condition(type="Restored", status="False", last_transition_time="t", reason="RestoreFailed")
    metrics.observe_status("ns", "stuck", TorghutRolloutStatus(phase=Phase.FAILED, conditions=[failed]))
    labels = {"namespace": "ns", "name": "stuck"}
    assert REGISTRY.get_sample_value("torghut_rollout_restore_failed", labels) == 1
    metrics.observe_status("ns", "stuck", TorghutRolloutStatus(phase=Phase.PENDING))
    assert REGISTRY.get_sample_value("torghut_rollout_restore_failed", labels) == 0
    metrics.forget("ns", "stuck")
    assert REGISTRY.get_sample_value("torghut_rollout_restore_failed", labels) is None


def _series(metric: str, /, **labels: str) -> list[dict[str, str]]:
    return [
        s.labels
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def _status() -> TorghutRolloutStatus:
    m = Measurement(phase=Verdict.FAILED, at="2026-11-24T00:00:00.000Z", value="0.5")
    check = CheckStatus(
        name="route-null-rate", stage="verify", provider="postgres", query="q", threshold="t", measurements=[m]
    )
    return TorghutRolloutStatus(checks=[check])


def test_every_series_of_a_deleted_rollout_disappears_and_a_late_turn_cannot_bring_it_back() -> None:
    metrics.watching("del", "gone")
    metrics.watching("del", "kept")
    metrics.observe_status("del", "gone", _status())
    metrics.observe_status("del", "kept", _status())
    per_rollout = (
        "torghut_rollout_phase",
        "torghut_rollout_check_verdict",
        "torghut_rollout_gate_value",
        "torghut_rollout_check_not_passing_streak",
    )
    assert all(_series(n, namespace="del", name="gone") for n in per_rollout)
    metrics.forget("del", "gone")
    assert not any(_series(n, namespace="del", name="gone") for n in per_rollout)
    metrics.observe_status("del", "gone", _status())  # a turn that was in flight when it was deleted
    assert not any(_series(n, namespace="del", name="gone") for n in per_rollout)
    assert all(_series(n, namespace="del", name="kept") for n in per_rollout), "another rollout keeps its series"
    metrics.watching("del", "gone")  # created again under the same name
    metrics.observe_status("del", "gone", _status())
    assert _series("torghut_rollout_phase", namespace="del", name="gone")


def test_route_series_live_while_any_rollout_watches_the_target() -> None:
    stats = RouteStats(executions=40, unset=4, unknown=2, fallback=10)
    metrics.observe_route("uid-a", "routes", "torghut", stats)
    metrics.observe_route("uid-b", "routes", "torghut", stats)
    labels = {"namespace": "routes", "target": "torghut"}
    assert REGISTRY.get_sample_value("torghut_rollout_route_null_rate", labels) == 0.1
    assert REGISTRY.get_sample_value("torghut_rollout_route_unknown_rate", labels) == 0.05
    assert REGISTRY.get_sample_value("torghut_rollout_route_fallback_ratio", labels) == 0.25
    assert REGISTRY.get_sample_value("torghut_rollout_route_executions", labels) == 40
    assert REGISTRY.get_sample_value("torghut_rollout_route_read_success", labels) == 1
    metrics.forget_route("uid-a")
    assert REGISTRY.get_sample_value("torghut_rollout_route_null_rate", labels) == 0.1
    metrics.forget_route("uid-b")
    for name in ("null_rate", "unknown_rate", "fallback_ratio", "executions", "read_success"):
        assert not _series(f"torghut_rollout_route_{name}", **labels), name


def test_a_failed_read_removes_the_rates_instead_of_keeping_stale_ones() -> None:
    labels = {"namespace": "routes-err", "target": "torghut"}
    metrics.observe_route("uid-e", "routes-err", "torghut", RouteStats(10, 0, 0, 0))
    assert REGISTRY.get_sample_value("torghut_rollout_route_null_rate", labels) == 0
    metrics.observe_route("uid-e", "routes-err", "torghut", None)
    assert REGISTRY.get_sample_value("torghut_rollout_route_read_success", labels) == 0
    assert REGISTRY.get_sample_value("torghut_rollout_route_null_rate", labels) is None
    metrics.observe_route("uid-e", "routes-err", "torghut", RouteStats(0, 0, 0, 0))
    value = REGISTRY.get_sample_value("torghut_rollout_route_null_rate", labels)
    assert value is not None
    assert math.isnan(value), "no executions: no rate, never 0"
    metrics.forget_route("uid-e")


@pytest.mark.parametrize(
    "row",
    [
        {"executions": 3, "unset": 4, "unknown": 0, "fallback": 0},
        {"executions": -1, "unset": 0, "unknown": 0, "fallback": 0},
        {"executions": None, "unset": 0, "unknown": 0, "fallback": 0},
        {"executions": True, "unset": 0, "unknown": 0, "fallback": 0},
        {"executions": 3, "unset": 0, "unknown": 0},
    ],
)
def test_a_malformed_route_answer_is_refused(row: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="route stats"):
        RouteStats.from_row(row)


def test_an_accepted_inconclusive_or_a_check_of_an_earlier_stage_leaves_no_series_an_alert_reads() -> None:
    waiting = CheckStatus(
        name="research-writes",
        stage="verify",
        provider="postgres",
        query="q",
        threshold="t",
        phase=Verdict.INCONCLUSIVE,
    )
    metrics.watching("acc", "r")
    metrics.observe_status("acc", "r", TorghutRolloutStatus(checks=[waiting]))
    labels = {"namespace": "acc", "name": "r", "check": "research-writes", "verdict": "Inconclusive"}
    assert REGISTRY.get_sample_value("torghut_rollout_check_verdict", labels) == 1
    approved = waiting.model_copy(update={"approved": True})
    metrics.observe_status("acc", "r", TorghutRolloutStatus(checks=[approved]))
    assert REGISTRY.get_sample_value("torghut_rollout_check_verdict", labels) == 0
    metrics.observe_status("acc", "r", TorghutRolloutStatus(checks=[]))  # the next stage has other checks
    assert REGISTRY.get_sample_value("torghut_rollout_check_verdict", labels) is None


def _backfilling(file: str, done: int, *, eta: int | None, finished: bool = False) -> TorghutRolloutStatus:
    progress = BackfillStatus(
        file=file,
        table="public.executions",
        rows_done=done,
        rows_total=1_000_000,
        batches=done // 5_000,
        batch_size=5_000,
        rows_per_second=12_000.0,
        eta_seconds=eta,
        finished=finished,
        updated_at="2026-12-01T12:00:00.000Z",
    )
    return TorghutRolloutStatus(phase=Phase.MIGRATING, migration=MigrationStatus(mode="sql", backfill=progress))


def test_backfill_progress_is_exported_per_file_and_goes_with_the_run_and_the_rollout() -> None:
    metrics.watching("bf", "r")
    metrics.observe_status("bf", "r", _backfilling("0004_a.sql", 450_000, eta=46))
    a = {"namespace": "bf", "name": "r", "file": "0004_a.sql"}
    assert REGISTRY.get_sample_value("torghut_rollout_backfill_rows", {**a, "kind": "done"}) == 450_000
    assert REGISTRY.get_sample_value("torghut_rollout_backfill_rows", {**a, "kind": "total"}) == 1_000_000
    assert REGISTRY.get_sample_value("torghut_rollout_backfill_rows_per_second", a) == 12_000
    assert REGISTRY.get_sample_value("torghut_rollout_backfill_eta_seconds", a) == 46

    metrics.observe_status("bf", "r", _backfilling("0004_a.sql", 460_000, eta=None))  # rate unknown for a moment
    assert REGISTRY.get_sample_value("torghut_rollout_backfill_eta_seconds", a) is None
    metrics.observe_status("bf", "r", _backfilling("0005_b.sql", 1_000_000, eta=None, finished=True))
    b = {**a, "file": "0005_b.sql"}
    assert _series("torghut_rollout_backfill_rows", **a) == []  # the earlier file's series went
    assert REGISTRY.get_sample_value("torghut_rollout_backfill_eta_seconds", b) == 0
    assert REGISTRY.get_sample_value("torghut_rollout_backfill_rows", {**b, "kind": "done"}) == 1_000_000

    metrics.observe_status("bf", "r", TorghutRolloutStatus(phase=Phase.PENDING))  # a new run: nothing yet
    assert _series("torghut_rollout_backfill_rows", namespace="bf", name="r") == []
    metrics.observe_status("bf", "r", _backfilling("0004_a.sql", 1, eta=10))
    metrics.forget("bf", "r")
    for metric in ("rows", "rows_per_second", "eta_seconds"):
        assert _series(f"torghut_rollout_backfill_{metric}", namespace="bf", name="r") == []
    metrics.observe_status("bf", "r", _backfilling("0004_a.sql", 2, eta=10))  # a turn still in flight
    assert _series("torghut_rollout_backfill_rows", namespace="bf", name="r") == []


def _exported(namespace: str, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float | str]:
    """Every per-rollout sample of one rollout, its own labels left out (NaN as text: NaN is equal to nothing)."""
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("namespace", "name")))): (
            "NaN" if math.isnan(s.value) else s.value
        )
        for family in REGISTRY.collect()
        for s in family.samples
        if s.labels.get("namespace") == namespace and s.labels.get("name") == name
    }


_verdicts = st.sampled_from(list(Verdict))
_measurements = st.builds(
    Measurement,
    phase=_verdicts,
    at=st.just("2026-12-04T00:00:00.000Z"),
    value=st.sampled_from([None, "0", "1", "2.5", "NaN", "not a number"]),
)
_checks = st.builds(
    CheckStatus,
    name=st.sampled_from(["route-null-rate", "signal-throughput", "research-writes"]),
    stage=st.just("verify"),
    provider=st.just("postgres"),
    query=st.just("q"),
    threshold=st.just("t"),
    phase=_verdicts,
    approved=st.booleans(),
    measurements=st.lists(_measurements, max_size=3),
)
_statuses = st.builds(
    TorghutRolloutStatus,
    phase=st.sampled_from(list(Phase)),
    checks=st.lists(_checks, max_size=3, unique_by=lambda c: c.name),
    conditions=st.lists(
        st.builds(
            lambda status, reason: Condition(type="Restored", status=status, last_transition_time="t", reason=reason),
            st.sampled_from(["True", "False"]),
            st.sampled_from(["Restored", "RestoreFailed"]),
        ),
        max_size=1,
    ),
    migration=st.one_of(
        st.none(),
        st.builds(
            lambda file, done, eta: _backfilling(file, done, eta=eta).migration,
            st.sampled_from(["0004_a.sql", "0005_b.sql"]),
            st.integers(0, 1_000_000),
            st.one_of(st.none(), st.integers(0, 100)),
        ),
    ),
)


@given(st.lists(_statuses, min_size=1, max_size=6))
def test_whatever_a_rollout_exported_before_its_series_are_those_of_its_last_status(
    statuses: list[TorghutRolloutStatus],
) -> None:
    """A turn sets only the series whose value changed and removes those it no longer sets: what an alert reads is
    what exporting the last status alone would show."""
    metrics.watching("prop", "seq")
    metrics.watching("prop", "once")
    for status in statuses:
        metrics.observe_status("prop", "seq", status)
    metrics.observe_status("prop", "once", statuses[-1])
    try:
        assert _exported("prop", "seq") == _exported("prop", "once")
    finally:
        metrics.forget("prop", "seq")
        metrics.forget("prop", "once")


def _lag(bucket: str | None = None) -> float:
    name = "torghut_rollout_operator_loop_lag_seconds"
    if bucket is None:
        return REGISTRY.get_sample_value(f"{name}_count") or 0.0
    return REGISTRY.get_sample_value(f"{name}_bucket", {"le": bucket}) or 0.0


def test_the_loop_lag_histogram_sees_a_step_that_held_the_event_loop() -> None:
    """What a stage advance waited behind on the operator's own loop: a step that held it for 0.15 s shows as a
    look later than 0.1 s, and the sampler looks again and again until it is cancelled."""
    looks_before, late_before = _lag(), _lag() - _lag("0.1")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, time.sleep, 0.15)  # a step that holds the loop: what the histogram is there to see
        with pytest.raises(TimeoutError):  # wait_for cancels the sampler at the end of the window
            await asyncio.wait_for(metrics.sample_loop_lag(0.01), timeout=0.5)

    asyncio.run(scenario())
    assert _lag() - _lag("0.1") - late_before >= 1
    assert _lag() - looks_before >= 3
