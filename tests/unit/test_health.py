"""Liveness fails only when the watch stopped delivering what the API server has, for longer than the grace."""

from __future__ import annotations

import pytest

from torghut_operator.app.health import Listed, WatchFreshness, served_versions

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _no_rollouts() -> dict[str, str]:
    return {}


def test_a_change_not_delivered_within_the_grace_makes_the_watch_stale() -> None:
    clock = Clock()
    fresh = WatchFreshness(_no_rollouts, grace_seconds=90, clock=clock)
    fresh.saw("a", "10")
    assert fresh.compare({"a": "10"}) == []
    assert fresh.compare({"a": "11"}) == [], "a change in flight is not staleness"
    clock.now = 60
    assert fresh.compare({"a": "11"}) == []
    clock.now = 91
    assert fresh.compare({"a": "11"}) == ["a"]
    fresh.saw("a", "11")
    assert fresh.compare({"a": "11"}) == [], "delivered at last: fresh again"


def test_an_object_the_watch_never_announced_counts_and_deleted_ones_are_forgotten() -> None:
    clock = Clock()
    fresh = WatchFreshness(_no_rollouts, grace_seconds=10, clock=clock)
    assert fresh.compare({"new": "1"}) == []
    clock.now = 11
    assert fresh.compare({"new": "1"}) == ["new"]
    assert fresh.compare({}) == []
    fresh.saw("gone", "5")
    fresh.forget("gone")
    assert fresh.compare({}) == []


def test_with_namespace_patterns_only_rollouts_this_watch_serves_count() -> None:
    listed = [
        Listed("mine", "e2e-a", "1"),
        Listed("other-operators", "incluster-b", "2"),  # never delivered here: it must not fail the liveness
        Listed("being-deleted", "e2e-gone", "3"),  # Kopf stopped serving the terminating namespace
        Listed("unknown-namespace", "e2e-new", "4"),  # not listed yet: not served yet
    ]
    namespaces = {"e2e-a": False, "incluster-b": False, "e2e-gone": True}
    assert served_versions(listed, ["e2e-*"], namespaces) == {"mine": "1"}
    assert served_versions(listed, ["e2e-*, !e2e-a"], namespaces) == {}
    assert served_versions(listed, [], None) == {
        "mine": "1",
        "other-operators": "2",
        "being-deleted": "3",
        "unknown-namespace": "4",
    }
