"""`make bench`'s own arithmetic: the hot spots it lists from py-spy's stacks and the write conflicts it counts."""

from __future__ import annotations

import gc
import math
import weakref
from collections import Counter
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from rich.console import Console

from torghut_localstack import bench
from torghut_localstack.bench import (
    LOOP_LAG,
    WORKLOADS,
    Phase,
    RolloutFigures,
    bucket_quantile,
    collector_paused,
    conflicts,
    count_turns,
    count_writes,
    loop_lag_buckets,
    target_table,
    top_functions,
)

pytestmark = pytest.mark.unit


def test_the_top_list_ranks_leaf_functions_by_samples_as_shares() -> None:
    raw = "\n".join(
        [
            "<module> (torghut_operator/__main__.py:3);run (kopf/_core/reactor/running.py:10);poll (selectors.py:468) 60",
            "<module> (torghut_operator/__main__.py:3);deserialize (kubernetes/client/api_client.py:290) 25",
            "<module> (torghut_operator/__main__.py:3);deserialize (kubernetes/client/api_client.py:301) 10",
            "<module> (torghut_operator/__main__.py:3);evaluate (torghut_operator/core/cel.py:40) 5",
            "not a stack line",
        ]
    )
    top = top_functions(raw, count=2)
    assert [name for name, _ in top] == ["poll (selectors.py)", "deserialize (client/api_client.py)"]
    assert [round(share, 2) for _, share in top] == [0.6, 0.35]
    assert top_functions("") == []


def test_only_conflicting_writes_of_what_the_operator_writes_count_as_conflicts() -> None:
    metrics = "\n".join(
        [
            "# HELP apiserver_request_total Counter of apiserver requests",
            'apiserver_request_total{code="409",component="apiserver",resource="deployments",verb="APPLY"} 3',
            'apiserver_request_total{code="422",component="apiserver",resource="torghutrollouts",verb="PATCH"} 2',
            'apiserver_request_total{code="409",component="apiserver",resource="configmaps",verb="POST"} 7',
            'apiserver_request_total{code="200",component="apiserver",resource="deployments",verb="PATCH"} 900',
            'apiserver_request_total{code="409",component="apiserver",resource="deployments",subresource="status",verb="PUT"} 4',
            'apiserver_request_total{code="409",resource="torghutrollouts",subresource="status",verb="PATCH"} 1',
        ]
    )
    found = conflicts(count_writes(metrics))
    assert found == {
        "deployments APPLY 409": 3,
        "torghutrollouts PATCH 422": 2,
        "torghutrollouts/status PATCH 409": 1,
    }  # not: a create of an existing object, kwok's status


def test_gets_per_rollout_count_the_operators_gets_of_rollouts_and_deployments_only() -> None:
    metrics = "\n".join(
        [
            'apiserver_request_total{code="200",resource="torghutrollouts",verb="GET"} 30',
            'apiserver_request_total{code="404",resource="deployments",verb="GET"} 2',
            'apiserver_request_total{code="200",resource="deployments",verb="GET"} 18',
            'apiserver_request_total{code="200",resource="deployments",verb="LIST"} 5',
            'apiserver_request_total{code="200",resource="secrets",verb="GET"} 90',
            'apiserver_request_total{code="200",resource="deployments",subresource="scale",verb="GET"} 4',
        ]
    )
    phase = Phase("peer", 10, [cast(Any, None)] * 10, None, None, 1.0, count_writes(metrics))
    assert phase.gets_per_rollout == 5.0
    assert phase.status_writes_per_rollout == 0
    assert not phase.conflicts


def test_the_peer_workload_waits_two_seconds_in_verify_and_runs_no_migration() -> None:
    peer = WORKLOADS["peer"]
    assert peer.verify_wait == 2.0
    assert not peer.migrate
    assert WORKLOADS["torghut"].verify_wait == 1.0


def test_turns_per_rollout_sum_the_operators_reconciles_of_any_result() -> None:
    metrics = "\n".join(
        [
            "# HELP torghut_rollout_reconciles_total Reconcile turns by result.",
            'torghut_rollout_reconciles_total{result="ok"} 57.0',
            'torghut_rollout_reconciles_total{result="error"} 3.0',
            'torghut_rollout_reconciles_created{result="ok"} 1.7e+09',
            'torghut_rollout_reconcile_errors_total{kind="TemporaryError"} 3.0',
        ]
    )
    assert count_turns(metrics) == 60
    phase = Phase("peer", 10, [cast(Any, None)] * 10, None, None, 1.0, Counter(), turns=60)
    assert phase.turns_per_rollout == 6.0


def test_the_loop_lag_p99_is_read_from_the_operators_histogram_between_two_scrapes() -> None:
    """The bench reads the operator's own histogram (prometheus_client's text) before and after a phase; what came
    before the phase does not count."""
    registry = CollectorRegistry()
    lag = Histogram(LOOP_LAG, "lag", buckets=(0.001, 0.01, 0.1, 1), registry=registry)
    for _ in range(50):
        lag.observe(2.0)  # before the phase: a slow start must not count
    before = loop_lag_buckets(generate_latest(registry).decode())
    assert before[0.001] == 0
    assert before[math.inf] == 50
    for _ in range(98):
        lag.observe(0.005)
    lag.observe(0.05)
    lag.observe(0.5)
    after = loop_lag_buckets(generate_latest(registry).decode())
    assert bucket_quantile(before, after, 0.5) == 0.01
    assert bucket_quantile(before, after, 0.99) == 0.1, "99 of the phase's 100 looks were no later than 0.1 s"
    assert bucket_quantile(before, after, 1.0) == 1.0
    assert bucket_quantile(after, after, 0.99) is None, "no looks, no figure"
    assert bucket_quantile({}, before, 0.99) == math.inf, "beyond the last bound"


def _row(text: str, target: str) -> list[str]:
    line = next(line for line in text.splitlines() if target in line)
    return [cell.strip() for cell in line.split("│")[1:-1]]


def test_the_targets_table_shows_one_gets_p99_during_the_phase_beside_a_stage_advance_limit() -> None:
    """A stage advance needs at least one request to the API server under the phase's load: the table shows a bare
    GET's p99 sampled during the phase, in quiet round trips, and says when that alone is above the limit."""
    rtt = 0.002

    def phase(scale: int, advances: list[float], round_trips: list[float]) -> Phase:
        figures = [RolloutFigures(f"ns-{i}", "Succeeded", "", {"step": a}, 1.0, 1.0) for i, a in enumerate(advances)]
        return Phase("peer", scale, figures, None, None, 1.0, Counter(), round_trips=round_trips)

    at1 = phase(1, [0.012, 0.023], [0.002] * 98 + [0.017, 0.017])  # the GET's p99: 17 ms = 8.5 round trips
    at50 = phase(50, [0.014, 0.030], [0.003] * 100)  # 1.5 round trips: within the limit
    console = Console(record=True, width=250, color_system=None)
    console.print(target_table([at1, at50], rtt))
    text = console.export_text()
    assert _row(text, "stage advance p99 at 1")[3:] == ["11.5 x RTT", "no", "8.5 x RTT (above the limit)"]
    assert _row(text, "stage advance p99 at 50")[3:] == ["15 x RTT", "yes", "1.5 x RTT"]
    assert _row(text, "CPU per rollout")[-1] == "—", "no floor for a cost"
    assert "out of reach for any controller" in " ".join(text.split())


def test_a_phase_without_sampled_gets_has_no_floor() -> None:
    figures = [RolloutFigures("ns", "Succeeded", "", {"step": 0.05}, 1.0, 1.0)]
    console = Console(record=True, width=250, color_system=None)
    console.print(target_table([Phase("peer", 1, figures, None, None, 1.0, Counter())], 0.002))
    assert _row(console.export_text(), "stage advance p99 at 1")[3:] == ["25 x RTT", "no", "—"]


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_the_benchs_own_garbage_collector_is_off_while_it_stamps_and_collects_afterwards() -> None:
    """A full collection of the bench's recorded history stalled its watch threads for up to 130 ms, a stall its
    stamps would have charged to the operator: during a measured window the collector is off, a cycle made there
    lives until the window ends, and is collected then; an error inside still turns the collector back on."""
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        cycle = _Cycle()
        gone = weakref.ref(cycle)
        del cycle
        # With the collector on, these allocations would trigger collections.
        allocations: list[list[int]] = [[] for _ in range(20_000)]
        assert gone() is not None, "no collection ran during the window"
        del allocations
    assert gone() is None, "the cycle made during the window is collected when it ends"
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("a phase failed")
    assert gc.isenabled()


def test_the_collector_stays_off_after_the_window_if_it_was_off_before() -> None:
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_profiler_samples_the_operator_without_pausing_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """py-spy pauses the process it samples unless told not to: two of them at 50 Hz each stopped the operator
    during the very phase whose stage advances the bench measures."""
    started: list[list[str]] = []

    class Spy:
        def __init__(self, argv: list[str], **_: Any) -> None:
            started.append(argv)

    monkeypatch.setattr("shutil.which", lambda *_a, **_k: "/bin/py-spy")
    monkeypatch.setattr("subprocess.Popen", Spy)
    profiler = bench.Profiler(4242, tmp_path, "peer-50")
    assert profiler.svg == tmp_path / "operator-peer-50.svg"
    assert len(started) == 2, "a flame graph and the raw stacks"
    for argv in started:
        assert argv[:2] == ["/bin/py-spy", "record"]
        assert argv[argv.index("--pid") + 1] == "4242"
        assert "--nonblocking" in argv
