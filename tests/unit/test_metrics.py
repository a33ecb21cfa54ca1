"""The operator's own metrics: the gates' last values and streaks, as the alert rules read them."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from torghut_operator import metrics
from torghut_operator.api.status import CheckStatus, Condition, Measurement, Phase, TorghutRolloutStatus, Verdict

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
