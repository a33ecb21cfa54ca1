"""Liveness that means something: the rollout watch still delivers what the API server has.

Kopf's watch streams have been seen to go silent after API-server trouble while every task still runs. This
probe lists the rollouts and compares each resourceVersion with the last one the watch delivered; a difference
that persists past a grace period means the watch is stale, and the liveness endpoint fails so the kubelet
restarts the operator.

With ``--namespace`` patterns the operator serves only some namespaces, and Kopf stops serving a namespace once it
is terminating: a rollout there (another operator's, or one whose namespace is being deleted) never reaches this
watch, so it is left out of the comparison (`served_versions`), or it would fail the liveness endpoint for good.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from kopf._cogs.structs.references import NamespaceName, match_namespace  # Kopf's own: agrees with what it serves


@dataclass(frozen=True)
class Listed:
    """A rollout as listed: where it lives and its current resourceVersion."""

    uid: str
    namespace: str
    resource_version: str


def served_versions(
    listed: Iterable[Listed], patterns: Iterable[str], terminating: Mapping[str, bool] | None
) -> dict[str, str]:
    """The versions of the rollouts this operator's watch delivers: all of them cluster-wide (no `patterns`), else
    those in a namespace matching a pattern that is not terminating (`terminating`: every namespace, True for the
    terminating ones; a namespace it does not know is not served)."""
    globs = list(patterns)
    if not globs:
        return {item.uid: item.resource_version for item in listed}
    states = terminating or {}
    return {
        item.uid: item.resource_version
        for item in listed
        if item.namespace in states
        and not states[item.namespace]
        and any(match_namespace(NamespaceName(item.namespace), glob) for glob in globs)
    }


class WatchFreshness:
    def __init__(
        self,
        list_versions: Callable[[], Awaitable[dict[str, str]]],
        *,
        grace_seconds: float = 90.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._list = list_versions
        self._grace = grace_seconds
        self._clock = clock
        self._seen: dict[str, str] = {}
        self._behind_since: dict[str, float] = {}

    def saw(self, uid: str, resource_version: str | None) -> None:
        if resource_version:
            self._seen[uid] = resource_version

    def forget(self, uid: str) -> None:
        self._seen.pop(uid, None)
        self._behind_since.pop(uid, None)

    async def stale_objects(self) -> list[str]:
        listed = await self._list()
        return self.compare(listed)

    def compare(self, listed: dict[str, str]) -> list[str]:
        """uids whose listed version the watch has not delivered for longer than the grace period."""
        now = self._clock()
        stale = []
        for uid, version in listed.items():
            if self._seen.get(uid) == version:
                self._behind_since.pop(uid, None)
                continue
            since = self._behind_since.setdefault(uid, now)
            if now - since > self._grace:
                stale.append(uid)
        for uid in set(self._behind_since) - set(listed):
            del self._behind_since[uid]
        return stale
