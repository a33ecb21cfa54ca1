"""What the handlers share, built once at startup by `wiring` and kept in Kopf's memo."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from torghut_operator.adapters.kubeapi import KubeApi
from torghut_operator.app.health import WatchFreshness
from torghut_operator.app.settings import OperatorConfig
from torghut_operator.core.api.spec import TorghutRolloutSpec
from torghut_operator.core.route_stats import RouteStats
from torghut_operator.shell.reconciler import Reconciler


@dataclass
class Runtime:
    """Everything the handlers share; built once at startup and kept in Kopf's memo."""

    reconciler: Reconciler
    config: OperatorConfig
    freshness: WatchFreshness
    wakers: dict[str, asyncio.Event] = field(default_factory=dict)
    route_reader: Callable[[TorghutRolloutSpec, str], RouteStats] | None = None
    """Reads a rollout's target database's route statistics (blocking); None: route metrics off."""
    api: KubeApi | None = None
    """The operator's API session (closed at cleanup)."""
    reports_done: set[tuple[str, str, int]] = field(default_factory=set)
    """(uid, spec hash, attempt) of finished runs whose report needs no more refreshing (in memory: after a restart
    a report is refreshed once more, which is harmless)."""

    def wake(self, uid: str) -> None:
        event = self.wakers.get(uid)
        if event is not None:
            event.set()
