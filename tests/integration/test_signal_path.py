"""The signal path as the service reports it: the preset's `trading-status` check against the simulator in each
blocked state, over real HTTP, and the `signal-throughput` check's message naming the block (real Prometheus)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import cast

import pytest

from torghut_localstack.ports import HOST
from torghut_localstack.prometheus import PrometheusServer
from torghut_localstack.simulator import DEFAULT_IMAGE, LOOP_ERROR, TorghutSimulator
from torghut_localstack.wait import NotYet, wait_for
from torghut_operator.adapters.http import HttpGateway
from torghut_operator.adapters.live import ConfigReads, LiveGates
from torghut_operator.adapters.measure import take_measurement
from torghut_operator.core.api.spec import Check, TorghutRolloutSpec
from torghut_operator.core.api.status import Verdict
from torghut_operator.core.presets import torghut_completion

pytestmark = pytest.mark.integration


@pytest.fixture
def sim() -> Iterator[TorghutSimulator]:
    """No database, no background loop: each test drives the loop's ticks."""
    with TorghutSimulator(autostart_loop=False, no_signal_reason="cursor_tail_stable") as s:
        yield s


def spec_for(sim: TorghutSimulator, prometheus_url: str = "http://127.0.0.1:9") -> TorghutRolloutSpec:
    return TorghutRolloutSpec.model_validate(
        {
            "target": {"kind": "Deployment", "name": "torghut", "container": "torghut", "image": DEFAULT_IMAGE},
            "database": {"secretRef": {"name": "torghut-db-app", "key": "uri"}},
            "prometheus": {"url": prometheus_url},
            "serviceUrl": sim.url,
            "presets": ["torghut-completion"],
        }
    )


def preset_check(spec: TorghutRolloutSpec, name: str) -> Check:
    return next(c for c in torghut_completion(spec) if c.name == name)


@pytest.mark.parametrize(
    ("scenario", "verdict", "block"),
    [
        ("trading_disabled", Verdict.FAILED, "blocked: trading disabled (enabled=false)"),
        ("kill_switch", Verdict.FAILED, "blocked: kill switch on (kill_switch_enabled=true)"),
        ("loop_stopped", Verdict.INCONCLUSIVE, "blocked: trading loop not running (running=false)"),
        ("loop_error", Verdict.INCONCLUSIVE, f"blocked: last_error: {LOOP_ERROR}"),
        (
            "zero_signals",
            Verdict.INCONCLUSIVE,
            "blocked: loop running with zero signals (runs_total=3, signals_total=0, "
            "last no-signal reason cursor_tail_stable)",
        ),
    ],
)
def test_trading_status_names_the_block(sim: TorghutSimulator, scenario: str, verdict: Verdict, block: str) -> None:
    sim.set_scenario(scenario)
    for _ in range(3):
        sim.tick()
    check = preset_check(spec_for(sim), "trading-status")
    with HttpGateway(timeout=5) as http:
        measured = take_measurement(check, http, previous=None, now=dt.datetime.now(dt.UTC))
    assert measured.phase is verdict, measured.message
    assert f"; {block}" in measured.message, measured.message


def test_trading_status_passes_on_a_running_loop_with_signals(sim: TorghutSimulator) -> None:
    sim.tick()
    check = preset_check(spec_for(sim), "trading-status")
    with HttpGateway(timeout=5) as http:
        measured = take_measurement(check, http, previous=None, now=dt.datetime.now(dt.UTC))
    assert measured.phase is Verdict.SUCCESSFUL, measured.message
    assert "blocked" not in measured.message


def test_zero_signal_throughput_quotes_the_no_signal_reasons_and_the_block(prometheus: PrometheusServer) -> None:
    job = "signal-path"
    with TorghutSimulator(tick_seconds=0.3, scenario="kill_switch") as sim:
        prometheus.set_targets(job, [f"{HOST}:{sim.port}"])
        try:
            prometheus.wait_for_targets(job, timeout=30)
            spec = spec_for(sim, prometheus.url)
            preset = preset_check(spec, "signal-throughput")
            assert preset.prometheus is not None
            # the preset's queries, limited to this test's job: the session's Prometheus scrapes other simulators
            scoped = preset.prometheus.model_copy(
                update={
                    "query": preset.prometheus.query.replace("_total[", f'_total{{job="{job}"}}['),
                    "explain_query": (preset.prometheus.explain_query or "").replace(
                        "_total[", f'_total{{job="{job}"}}['
                    ),
                }
            )
            check = preset.model_copy(update={"prometheus": scoped})
            assert f'job="{job}"' in check.query_text
            gates = LiveGates(cast(ConfigReads, None))  # no Secret involved: the spec has no bearer token

            def blocked() -> str:
                measured = gates.measure(check, spec, "torghut", None)
                if measured.phase is Verdict.ERROR or "kill switch on" not in measured.message:
                    raise NotYet(measured.message)
                return measured.message

            message = wait_for(blocked, timeout=60, interval=0.5, what="signal-throughput blocked by the kill switch")
            assert "explain:" in message
            assert "blocked: kill switch on (kill_switch_enabled=true)" in message
        finally:
            prometheus.remove_targets(job)


@pytest.mark.parametrize(("scenario", "verdict"), [("healthy", Verdict.SUCCESSFUL), ("null_routes", Verdict.FAILED)])
def test_executions_api_fails_on_fresh_rows_without_both_adapters(
    sim: TorghutSimulator, scenario: str, verdict: Verdict
) -> None:
    sim.set_scenario(scenario)
    sim.tick()  # null_routes writes one row with NULL adapters and one with 'unknown'
    check = preset_check(spec_for(sim), "executions-api")
    with HttpGateway(timeout=5) as http:
        measured = take_measurement(check, http, previous=None, now=dt.datetime.now(dt.UTC))
    assert measured.phase is verdict, measured.message


def test_executions_api_without_rows_is_not_yet(sim: TorghutSimulator) -> None:
    check = preset_check(spec_for(sim), "executions-api")
    with HttpGateway(timeout=5) as http:
        measured = take_measurement(check, http, previous=None, now=dt.datetime.now(dt.UTC))
    assert measured.phase is Verdict.INCONCLUSIVE, measured.message
