"""The operator's own Prometheus metrics."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

from torghut_operator.api.status import Phase, TorghutRolloutStatus, Verdict

RECONCILES = Counter("torghut_rollout_reconciles_total", "Reconcile turns by result.", ["result"])
ERRORS = Counter("torghut_rollout_reconcile_errors_total", "Reconcile turns that raised, by error type.", ["kind"])
RECONCILE_SECONDS = Histogram(
    "torghut_rollout_reconcile_duration_seconds",
    "Duration of one reconcile turn.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
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


def observe_status(namespace: str, name: str, status: TorghutRolloutStatus) -> None:
    restored = next((c for c in status.conditions if c.type == "Restored"), None)
    failed = restored is not None and restored.status == "False" and restored.reason == "RestoreFailed"
    RESTORE_FAILED.labels(namespace=namespace, name=name).set(1 if failed else 0)
    for phase in Phase:
        PHASE.labels(namespace=namespace, name=name, phase=phase.value).set(1 if status.phase is phase else 0)
    for check in status.checks:
        value = _number(check.measurements[-1].value) if check.measurements else None
        if value is not None:
            GATE_VALUE.labels(namespace=namespace, name=name, check=check.name).set(value)
        streak = 0
        for measurement in reversed(check.measurements):
            if measurement.phase is Verdict.SUCCESSFUL:
                break
            streak += 1
        NOT_PASSING_STREAK.labels(namespace=namespace, name=name, check=check.name).set(streak)
        for verdict in Verdict:
            value = 1 if check.phase is verdict else 0
            CHECK_VERDICT.labels(namespace=namespace, name=name, check=check.name, verdict=verdict.value).set(value)


def forget(namespace: str, name: str) -> None:
    """Drop the series of a deleted rollout."""
    for phase in Phase:
        with contextlib.suppress(KeyError):
            PHASE.remove(namespace, name, phase.value)
    with contextlib.suppress(KeyError):
        RESTORE_FAILED.remove(namespace, name)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
