"""The operator's own Prometheus metrics.

Per-rollout series (labels namespace, name) exist while the rollout does: :func:`forget` removes every one of them
when it is deleted, and a turn that was still in flight cannot bring them back. Route series (labels namespace,
target) exist while at least one rollout watches that target: :func:`forget_route` removes them with the last one.
So no alert ever fires on the stale value of something that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading

from prometheus_client import Counter, Gauge, Histogram

from torghut_operator.core.api.status import Phase, TorghutRolloutStatus, Verdict
from torghut_operator.core.route_stats import RouteStats

RECONCILES = Counter("torghut_rollout_reconciles_total", "Reconcile turns by result.", ["result"])
ERRORS = Counter("torghut_rollout_reconcile_errors_total", "Reconcile turns that raised, by error type.", ["kind"])
RECONCILE_SECONDS = Histogram(
    "torghut_rollout_reconcile_duration_seconds",
    "Duration of one reconcile turn.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LOOP_LAG_INTERVAL = 0.1
"""Seconds between two looks of :func:`sample_loop_lag`."""
LOOP_LAG = Histogram(
    "torghut_rollout_operator_loop_lag_seconds",
    "How late the operator's event loop ran a timer due every 0.1 s: what any watch event, turn or probe waited "
    "then behind whatever held the loop (a long step, a garbage collection, the process not getting the CPU).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
READS = Counter(
    "torghut_rollout_object_reads_total",
    "Reads of a rollout or its target by reconcile turns, by object and source: api (a GET) or watch (the copy the "
    "operator's own watch delivered, used only when it is provably no older than what the operator knows).",
    ["object", "source"],
)
PHASE = Gauge(
    "torghut_rollout_phase",
    "1 for the phase each TorghutRollout is in, 0 for the others.",
    ["namespace", "name", "phase"],
)
MEASUREMENTS = Counter(
    "torghut_rollout_measurements_total", "Measurements taken, by check and verdict.", ["check", "verdict"]
)
CHECK_VERDICT = Gauge(
    "torghut_rollout_check_verdict",
    "1 for each check's current verdict.",
    ["namespace", "name", "check", "verdict"],
)


GATE_VALUE = Gauge(
    "torghut_rollout_gate_value",
    "Last numeric value measured by each check (route null rate, fallback ratio, signal throughput...).",
    ["namespace", "name", "check"],
)


NOT_PASSING_STREAK = Gauge(
    "torghut_rollout_check_not_passing_streak",
    "Consecutive latest measurements of each check that did not pass (of the last 10 kept in status); for "
    "signal-throughput, the consecutive zero-signal windows.",
    ["namespace", "name", "check"],
)


RESTORE_FAILED = Gauge(
    "torghut_rollout_restore_failed",
    "1 while a rollout's failure could not put the previous image and trading env back (Restored=False, "
    "RestoreFailed): the target may still trade on the new image or a live trading env.",
    ["namespace", "name"],
)


BACKFILL_ROWS = Gauge(
    "torghut_rollout_backfill_rows",
    "Rows of the rollout's current (or last finished) backfill file: kind done (committed batches) or total.",
    ["namespace", "name", "file", "kind"],
)
BACKFILL_RATE = Gauge(
    "torghut_rollout_backfill_rows_per_second",
    "Rows per second of the rollout's current (or last finished) backfill file over its current pass.",
    ["namespace", "name", "file"],
)
BACKFILL_ETA = Gauge(
    "torghut_rollout_backfill_eta_seconds",
    "Seconds the rollout's running backfill needs at its current rate (0 once finished; absent when unknown).",
    ["namespace", "name", "file"],
)


ROUTE_NULL_RATE = Gauge(
    "torghut_rollout_route_null_rate",
    "Share of the target's executions of the last 15 minutes whose expected or actual adapter is NULL, empty or "
    "'unknown' (NaN: no executions in the window).",
    ["namespace", "target"],
)
ROUTE_UNKNOWN_RATE = Gauge(
    "torghut_rollout_route_unknown_rate",
    "Share of the target's executions of the last 15 minutes with an adapter exactly 'unknown' (NaN: none).",
    ["namespace", "target"],
)
ROUTE_FALLBACK_RATIO = Gauge(
    "torghut_rollout_route_fallback_ratio",
    "Share of the target's executions of the last 15 minutes that fell back to another adapter (NaN: none).",
    ["namespace", "target"],
)
ROUTE_EXECUTIONS = Gauge(
    "torghut_rollout_route_executions",
    "Executions of the target in the last 15 minutes (the denominator of the route rates).",
    ["namespace", "target"],
)
ROUTE_UP = Gauge(
    "torghut_rollout_route_read_success",
    "1 when the last read of the target's route statistics succeeded, 0 when it failed (rates then absent).",
    ["namespace", "target"],
)
_ROUTE_RATES = (ROUTE_NULL_RATE, ROUTE_UNKNOWN_RATE, ROUTE_FALLBACK_RATIO, ROUTE_EXECUTIONS)

_lock = threading.Lock()
_forgotten: set[tuple[str, str]] = set()
"""(namespace, name) of rollouts deleted: a turn still in flight must not recreate their series."""
_watchers: dict[str, tuple[str, str]] = {}
"""rollout uid -> (namespace, target) whose route series it keeps alive."""


def watching(namespace: str, name: str) -> None:
    """A rollout of this name exists (again): its series may be exported."""
    with _lock:
        _forgotten.discard((namespace, name))


def observe_status(namespace: str, name: str, status: TorghutRolloutStatus) -> None:
    with _lock:
        if (namespace, name) not in _forgotten:
            _observe_status(namespace, name, status)


Series = tuple[Gauge, tuple[str, ...]]
"""A gauge and the values of its labels, in the order the gauge declares them."""
_series: dict[tuple[str, str], dict[Series, float]] = {}
"""Every per-rollout series each rollout exported at its last turn, with the value it set: what a turn no longer sets
(a check of an earlier stage, another backfill file, an unknown ETA) is removed by difference, in time proportional
to that rollout's own series, never by scanning the series of every rollout; what a turn sets to the value it
already has is not set again (most turns change one or two of a rollout's 15-30 series, and each ``labels()`` call
checks and joins its label values under the metric's lock)."""


def _observe_status(namespace: str, name: str, status: TorghutRolloutStatus) -> None:
    now: dict[Series, float] = {}
    restored = next((c for c in status.conditions if c.type == "Restored"), None)
    failed = restored is not None and restored.status == "False" and restored.reason == "RestoreFailed"
    now[(RESTORE_FAILED, (namespace, name))] = 1 if failed else 0
    for phase in Phase:
        now[(PHASE, (namespace, name, phase.value))] = 1 if status.phase is phase else 0
    for check in status.checks:
        value = _number(check.measurements[-1].value) if check.measurements else None
        if value is not None:
            now[(GATE_VALUE, (namespace, name, check.name))] = value
        streak = 0
        for measurement in reversed(check.measurements):
            if measurement.phase is Verdict.SUCCESSFUL:
                break
            streak += 1
        now[(NOT_PASSING_STREAK, (namespace, name, check.name))] = streak
        # An Inconclusive verdict a human accepted (promote) awaits nobody any more.
        awaiting = not (check.approved and check.phase is Verdict.INCONCLUSIVE)
        for verdict in Verdict:
            now[(CHECK_VERDICT, (namespace, name, check.name, verdict.value))] = (
                1 if check.phase is verdict and awaiting else 0
            )
    # The backfill in status.migration.backfill; series of another file (or of a run without one) go.
    backfill = status.migration.backfill if status.migration is not None else None
    if backfill is not None:
        labels = (namespace, name, backfill.file)
        now[(BACKFILL_ROWS, (*labels, "done"))] = backfill.rows_done
        now[(BACKFILL_ROWS, (*labels, "total"))] = backfill.rows_total
        now[(BACKFILL_RATE, labels)] = backfill.rows_per_second
        eta = 0 if backfill.finished else backfill.eta_seconds
        if eta is not None:  # absent when unknown
            now[(BACKFILL_ETA, labels)] = eta
    before = _series.get((namespace, name), {})
    for series, value in now.items():
        if before.get(series) != value:  # new, changed, or NaN (never equal to itself): set
            gauge, values = series
            gauge.labels(*values).set(value)
    for gauge, values in before.keys() - now.keys():
        with contextlib.suppress(KeyError):
            gauge.remove(*values)
    _series[(namespace, name)] = now


def forget(namespace: str, name: str) -> None:
    """Drop every series of a deleted rollout (phase, verdicts, gate values, streaks, backfill progress)."""
    with _lock:
        _forgotten.add((namespace, name))
        for gauge, values in _series.pop((namespace, name), {}):
            with contextlib.suppress(KeyError):
                gauge.remove(*values)


def observe_route(uid: str, namespace: str, target: str, stats: RouteStats | None) -> None:
    """The route statistics of ``target`` read for rollout ``uid`` (None: the read failed, rates removed)."""
    with _lock:
        _watchers[uid] = (namespace, target)
        ROUTE_UP.labels(namespace=namespace, target=target).set(0 if stats is None else 1)
        if stats is None:
            for gauge in _ROUTE_RATES:
                _remove_matching(gauge, {"namespace": namespace, "target": target})
            return
        ROUTE_EXECUTIONS.labels(namespace=namespace, target=target).set(stats.executions)
        for gauge, value in (
            (ROUTE_NULL_RATE, stats.null_rate),
            (ROUTE_UNKNOWN_RATE, stats.unknown_rate),
            (ROUTE_FALLBACK_RATIO, stats.fallback_ratio),
        ):
            gauge.labels(namespace=namespace, target=target).set(math.nan if value is None else value)


def forget_route(uid: str) -> None:
    """Rollout ``uid`` is gone: drop its target's route series unless another rollout still watches it."""
    with _lock:
        key = _watchers.pop(uid, None)
        if key is None or key in _watchers.values():
            return
        namespace, target = key
        for gauge in (*_ROUTE_RATES, ROUTE_UP):
            _remove_matching(gauge, {"namespace": namespace, "target": target})


def _remove_matching(gauge: Gauge, labels: dict[str, str]) -> None:
    """Remove every child of ``gauge`` whose labels include ``labels`` (found through the public collect())."""
    for family in gauge.collect():
        for sample in family.samples:
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                # sample labels come in the gauge's label-name order
                with contextlib.suppress(KeyError):
                    gauge.remove(*sample.labels.values())


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


async def sample_loop_lag(interval: float = LOOP_LAG_INTERVAL) -> None:
    """Observe, until cancelled, how late a timer due every ``interval`` seconds runs (``LOOP_LAG``). Every stage
    advance waits on the same loop: a lag near the advance's own time says the operator was the wait, a small one
    that the wait was elsewhere (the API server, the watch)."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        LOOP_LAG.observe(max(0.0, loop.time() - due))
