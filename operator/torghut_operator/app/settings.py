"""Operator configuration from the environment, applied to Kopf's settings once at startup."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import kopf

from torghut_operator.core.api.spec import GROUP


def route_interval() -> float:
    """Seconds between two reads of each watched target's route statistics (TORGHUT_OPERATOR_ROUTE_INTERVAL,
    default 30). Read at import: Kopf fixes a timer's interval when the handler is registered."""
    return max(1.0, float(os.environ.get("TORGHUT_OPERATOR_ROUTE_INTERVAL", "30")))


def report_refresh_interval() -> float:
    """Seconds between two refreshes of a finished rollout's evidence report while it waits for lane runs
    (TORGHUT_OPERATOR_REPORT_REFRESH_INTERVAL, default 60)."""
    return max(1.0, float(os.environ.get("TORGHUT_OPERATOR_REPORT_REFRESH_INTERVAL", "60")))


FINALIZER = f"{GROUP}/finalizer"
"""Kopf's finalizer on every rollout (it holds deletion for the on-delete handler)."""
DIFF_BASE_ANNOTATION = f"{GROUP}/last-handled-configuration"
"""Where Kopf kept each rollout's last handled spec (its diff base) before the operator stopped keeping one:
older rollouts still carry it, harmlessly."""


def adopted(meta: Mapping[str, Any]) -> bool:
    """Whether Kopf has made its own first write to a new rollout (its finalizer), or the rollout is going: a status
    write before it would race it and fail its precondition."""
    if meta.get("deletionTimestamp"):
        return True
    return FINALIZER in (meta.get("finalizers") or ())


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base at all. Kopf keeps one (a copy of the spec in an annotation, written when a rollout appears,
    rebuilt, deep-copied and diffed on every watch event) to tell creations, updates and field changes apart for
    ``on.create``/``on.update``/``on.field`` handlers; the operator has none (a daemon drives each rollout from
    what it reads; deletion is its only changing handler, and Kopf finds deletions by ``deletionTimestamp``), so
    keeping it served nothing and cost a PATCH and a watch event per new rollout, a copy of the spec in every
    answer about a rollout, and CPU on every event (``make bench``). Every event is then a "creation" with no
    handlers, which Kopf skips. tests/unit/test_diffbase.py fails if a changing handler other than deletion is
    added."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@dataclass(frozen=True)
class OperatorConfig:
    watch_server_timeout: int = 300
    """Seconds the API server keeps a watch open before the client re-establishes it."""
    watch_client_timeout: int = 330
    """Client-side watch timeout: a watch that hangs silently is cut and restarted."""
    request_timeout: float = 30.0
    """Timeout of Kopf's own API requests."""
    freshness_grace_seconds: float = 90.0
    """How long a change may stay undelivered by the watch before liveness fails."""
    metrics_port: int = 9090
    """Port of the operator's /metrics endpoint (0 turns it off)."""
    worker_threads: int = 32
    """Threads for blocking calls (API, Postgres, Prometheus, HTTP) shared by all rollouts' turns."""
    gate_sql_denylist: tuple[str, ...] = ()
    """Functions gate SQL may not call, on top of the built-in list (``name`` or ``prefix*``)."""

    @classmethod
    def from_env(cls) -> OperatorConfig:
        env = os.environ
        return cls(
            watch_server_timeout=int(env.get("TORGHUT_OPERATOR_WATCH_SERVER_TIMEOUT", cls.watch_server_timeout)),
            watch_client_timeout=int(env.get("TORGHUT_OPERATOR_WATCH_CLIENT_TIMEOUT", cls.watch_client_timeout)),
            request_timeout=float(env.get("TORGHUT_OPERATOR_REQUEST_TIMEOUT", cls.request_timeout)),
            freshness_grace_seconds=float(env.get("TORGHUT_OPERATOR_FRESHNESS_GRACE", cls.freshness_grace_seconds)),
            metrics_port=int(env.get("TORGHUT_OPERATOR_METRICS_PORT", cls.metrics_port)),
            worker_threads=int(env.get("TORGHUT_OPERATOR_WORKER_THREADS", cls.worker_threads)),
            gate_sql_denylist=tuple(
                name.strip() for name in env.get("TORGHUT_OPERATOR_GATE_SQL_DENYLIST", "").split(",") if name.strip()
            ),
        )

    def apply(self, settings: kopf.OperatorSettings) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = NoDiffBase()
        settings.watching.server_timeout = self.watch_server_timeout
        settings.watching.client_timeout = self.watch_client_timeout
        settings.watching.connect_timeout = 10
        settings.networking.request_timeout = self.request_timeout
        settings.networking.connect_timeout = 10
        settings.posting.level = logging.WARNING  # events are posted explicitly, not from log lines
        settings.execution.max_workers = 20
        # A deleted rollout keeps its finalizer until its timers have stopped; a timer inside a blocking call
        # (a route query on a worker thread) does not stop at once, and Kopf would look again only after 60 s.
        settings.background.cancellation_polling = 1.0
