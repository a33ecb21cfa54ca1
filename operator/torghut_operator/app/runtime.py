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


class Waker:
    """Wakes one rollout's daemon, and keeps what woke it until the daemon looks.

    A change of the rollout itself carries its resourceVersion: one the rollout's own turn read or wrote is no news
    (the echo of its status write). The watch often delivers that echo before the write's answer has reached the
    turn (``make bench``: about one per rollout, one at a time or 200 at once), so the version is judged when the
    daemon looks (``news``), not when the event arrives. A change of what the rollout watches (its target, its
    Job) is ignored while the rollout is ``settled``: in a phase only a verb or a spec change moves (see
    ``drive``), which arrive as changes of the rollout itself."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._versions: set[str] = set()
        self._other = False
        self._nudged = False
        self._settled = False

    def set(self, version: str | None = None) -> None:
        """The rollout changed (to ``version``; None: unknown, e.g. deleted)."""
        if version is None:
            self._other = True
        else:
            self._versions.add(version)
        self._event.set()

    def nudge(self) -> None:
        """Something the rollout watches changed: news unless the rollout is settled."""
        if not self._settled:
            self._nudged = True
            self._event.set()

    def settle(self, settled: bool) -> None:
        """The daemon's last turn left the rollout settled (or not). Settling drops the nudges that came during
        that turn: they matter no more than the ones that will come while it stays settled."""
        self._settled = settled
        if settled and self._nudged:
            self._nudged = False
            if not self._versions and not self._other:
                self._event.clear()

    def clear(self) -> None:
        self._event.clear()
        self._versions.clear()
        self._other = self._nudged = False

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    def news(self, known: Callable[[str], bool]) -> bool:
        """Whether what woke it may change anything: anything but versions of the rollout its own turns knew
        (``known``: a version a turn of this process read or wrote)."""
        return self._other or self._nudged or any(not known(v) for v in self._versions)


@dataclass
class Runtime:
    """Everything the handlers share; built once at startup and kept in Kopf's memo."""

    reconciler: Reconciler
    config: OperatorConfig
    freshness: WatchFreshness
    wakers: dict[str, Waker] = field(default_factory=dict)
    targets: Targets = field(default_factory=Targets)
    route_reader: Callable[[TorghutRolloutSpec, str], RouteStats] | None = None
    """Reads a rollout's target database's route statistics (blocking); None: route metrics off."""
    api: KubeApi | None = None
    """The operator's API session (closed at cleanup)."""
    target_copies: TargetCopies = field(default_factory=TargetCopies)
    reports_done: set[tuple[str, str, int]] = field(default_factory=set)
    """(uid, spec hash, attempt) of finished runs whose report needs no more refreshing (in memory: after a restart
    a report is refreshed once more, which is harmless)."""

    def wake(self, uid: str, version: str | None = None) -> None:
        """The rollout ``uid`` changed (to ``version``, when known)."""
        waker = self.wakers.get(uid)
        if waker is not None:
            waker.set(version)

    def nudge(self, uid: str) -> None:
        """Something rollout ``uid`` watches changed (its Job)."""
        waker = self.wakers.get(uid)
        if waker is not None:
            waker.nudge()

    def wake_target(self, key: TargetKey | None, *, sparing: str | None = None) -> None:
        """Nudge the daemons of the rollouts driving ``key`` (but the one of ``sparing``): the target changed, or
        a rollout on it did, which may unblock the others."""
        for uid in self.targets.uids(key) if key is not None else ():
            if uid != sparing:
                self.nudge(uid)
