"""What the handlers share, built once at startup by `wiring` and kept in Kopf's memo."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torghut_operator.adapters.kubeapi import KubeApi
from torghut_operator.app.health import WatchFreshness
from torghut_operator.app.settings import OperatorConfig
from torghut_operator.core.api.spec import TorghutRolloutSpec
from torghut_operator.core.route_stats import RouteStats
from torghut_operator.shell.reconciler import Reconciler

TargetKey = tuple[str, str, str]
"""(namespace, target kind, target name): two rollouts with the same key drive the same workload."""


@dataclass
class Targets:
    """Which rollouts drive which target, kept from the rollout watch's events (every one, the first listing's too).

    Kopf's own index (``@kopf.index``) would keep the same, but Kopf holds back every handler of every object until
    each watched namespace's first listing of an indexed resource has finished, and a namespace deleted before its
    listing finished holds them back for good (Kopf 1.45.2: ``orchestration.terminate_redundancies`` stops the
    namespace's watcher without dropping its index toggle). An operator restarted while a namespace it watches is
    going would then drive nothing until its liveness probe restarts it; tests/unit/test_target_map.py pins
    both."""

    _of: dict[str, TargetKey] = field(default_factory=dict)
    _by: dict[TargetKey, set[str]] = field(default_factory=dict)

    def saw(self, uid: str, key: TargetKey) -> TargetKey | None:
        """Rollout ``uid`` drives ``key`` now; returns the target it drove before if that was another one."""
        before = self._of.get(uid)
        if before == key:
            return None
        if before is not None:
            self._drop(uid, before)
        self._of[uid] = key
        self._by.setdefault(key, set()).add(uid)
        return before

    def forget(self, uid: str) -> TargetKey | None:
        """Rollout ``uid`` is gone; returns the target it drove."""
        before = self._of.pop(uid, None)
        if before is not None:
            self._drop(uid, before)
        return before

    def uids(self, key: TargetKey) -> frozenset[str]:
        return frozenset(self._by.get(key, ()))

    def _drop(self, uid: str, key: TargetKey) -> None:
        uids = self._by.get(key)
        if uids is not None:
            uids.discard(uid)
            if not uids:
                del self._by[key]


@dataclass
class TargetCopies:
    """The latest copy the operator's watch delivered of each target some rollout drives (``shell.ports.WatchCopies``):
    the reconciler reads a target from it instead of a GET where that is safe (see ``shell.reconciler``). Only
    targets of rollouts are kept, so a cluster's other Deployments cost no memory."""

    _copies: dict[TargetKey, Mapping[str, Any]] = field(default_factory=dict)

    def get(self, key: TargetKey) -> Mapping[str, Any] | None:
        return self._copies.get(key)

    def saw(self, key: TargetKey, body: Mapping[str, Any] | None, *, driven: bool) -> None:
        """The watch delivered ``body`` (None: deleted) of ``key``; ``driven``: some rollout drives it."""
        if body is None or not driven:
            self._copies.pop(key, None)
        else:
            self._copies[key] = body


@dataclass
class Runtime:
    """Everything the handlers share; built once at startup and kept in Kopf's memo."""

    reconciler: Reconciler
    config: OperatorConfig
    freshness: WatchFreshness
    wakers: dict[str, asyncio.Event] = field(default_factory=dict)
    targets: Targets = field(default_factory=Targets)
    route_reader: Callable[[TorghutRolloutSpec, str], RouteStats] | None = None
    """Reads a rollout's target database's route statistics (blocking); None: route metrics off."""
    api: KubeApi | None = None
    """The operator's API session (closed at cleanup)."""
    target_copies: TargetCopies = field(default_factory=TargetCopies)
    reports_done: set[tuple[str, str, int]] = field(default_factory=set)
    """(uid, spec hash, attempt) of finished runs whose report needs no more refreshing (in memory: after a restart
    a report is refreshed once more, which is harmless)."""

    def wake(self, uid: str) -> None:
        event = self.wakers.get(uid)
        if event is not None:
            event.set()

    def wake_target(self, key: TargetKey | None, *, sparing: str | None = None) -> None:
        """Wake the daemons of the rollouts driving ``key`` (but the one of ``sparing``)."""
        for uid in self.targets.uids(key) if key is not None else ():
            if uid != sparing:
                self.wake(uid)
