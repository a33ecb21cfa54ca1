"""A finished run's evidence report is refreshed until it shows three lane runs, for a bounded time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from torghut_operator.adapters.kube import KubeGateway
from torghut_operator.core.api.spec import TorghutRolloutSpec
from torghut_operator.core.api.status import TorghutRolloutStatus
from torghut_operator.core.records import RolloutRef
from torghut_operator.core.timefmt import format_time
from torghut_operator.shell.ports import Gates
from torghut_operator.shell.reconciler import Reconciler

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
SPEC = {
    "target": {"kind": "Deployment", "name": "torghut", "container": "torghut", "image": "r/t@sha256:" + "a" * 64},
    "database": {"secretRef": {"name": "torghut-db-app", "key": "uri"}},
    "verify": {"checks": [{"name": "h", "http": {"url": "http://t/healthz"}, "successCondition": "true"}]},
}


class FakeKube:
    def __init__(self, obj: dict[str, Any] | None) -> None:
        self.obj = obj
        self.published: list[str] = []

    async def get_rollout(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.obj

    async def publish_report(self, namespace: str, rollout: str, uid: str, report: str) -> None:
        self.published.append(report)


class FakeGates:
    def __init__(self, seen: int | None) -> None:
        self.seen = seen

    def report_with_lane_runs(
        self, spec: TorghutRolloutSpec, namespace: str, rollout: RolloutRef, status: TorghutRolloutStatus
    ) -> tuple[str, int | None]:
        return f"report with {self.seen} lane runs", self.seen


def rollout(phase: str, ended_minutes_ago: float | None, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "specHash": "h", "attempt": 1}
    if ended_minutes_ago is not None:
        status["completedAt"] = format_time(NOW - timedelta(minutes=ended_minutes_ago))
    return {
        "metadata": {"name": "r", "namespace": "ns", "uid": "u", "resourceVersion": "1"},
        "spec": spec or SPEC,
        "status": status,
    }


def refresh(obj: dict[str, Any] | None, seen: int | None) -> tuple[bool, list[str]]:
    kube = FakeKube(obj)
    reconciler = Reconciler(cast(KubeGateway, kube), cast(Gates, FakeGates(seen)), lambda *a: None, clock=lambda: NOW)
    more = asyncio.run(reconciler.refresh_report("ns", "r"))
    return more, kube.published


@pytest.mark.parametrize(("seen", "more"), [(0, True), (2, True), (None, True), (3, False)])
def test_the_report_is_republished_and_refreshing_goes_on_until_three_lane_runs(seen: int | None, more: bool) -> None:
    again, published = refresh(rollout("Succeeded", 5), seen)
    assert published == [f"report with {seen} lane runs"]
    assert again is more


@pytest.mark.parametrize(
    "obj",
    [
        rollout("Verifying", None),  # still running: the run's own turn publishes it at the end
        rollout("Succeeded", 3 * 60),  # more than 2 h after the end: it stays as it is
        rollout("Succeeded", 5, spec={k: v for k, v in SPEC.items() if k != "database"}),  # nothing to read
        None,  # deleted
    ],
)
def test_nothing_is_published_outside_the_refresh_window(obj: dict[str, Any] | None) -> None:
    assert refresh(obj, 0) == (False, [])
