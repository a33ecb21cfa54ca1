"""The ports of the reconcile shell: what it needs from the world, as small Protocols.

`adapters` implement them (the Kubernetes API, Postgres, Prometheus, HTTP) without importing this module; `app`
wires one implementation of each into the :class:`~torghut_operator.shell.reconciler.Reconciler`, and the unit tests
pass fakes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from torghut_operator.core.api.spec import Check, Target, TorghutRolloutSpec
from torghut_operator.core.api.status import Measurement, TorghutRolloutStatus
from torghut_operator.core.observations import ExpectationOutcome, PromotionEvidence, SqlOutcome
from torghut_operator.core.planner import CheckPromotionEvidence, Event
from torghut_operator.core.records import RolloutRef


class KubernetesPort(Protocol):
    """The rollout object, its Jobs, its target and its report ConfigMap: asynchronous, on the event loop."""

    async def get_rollout(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def list_rollouts(self, namespace: str) -> list[dict[str, Any]]: ...

    async def patch_rollout_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str
    ) -> str | None: ...

    async def clear_action(self, namespace: str, name: str, value: str) -> None: ...

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create_job(self, namespace: str, manifest: dict[str, Any]) -> None: ...

    async def job_logs(self, namespace: str, job: str) -> str: ...

    async def get_target(self, namespace: str, target: Target) -> dict[str, Any] | None: ...

    async def set_target_image(
        self, namespace: str, target: Target, image: str, current: Mapping[str, Any] | None = None
    ) -> None:
        """``current``: the target as last read, the write's base if still current (else it reads again)."""
        ...

    async def set_target_env(
        self, namespace: str, target: Target, env: dict[str, str | None], current: Mapping[str, Any] | None = None
    ) -> None: ...

    async def publish_report(self, namespace: str, rollout: str, uid: str, report: str) -> None: ...


class WatchCopies(Protocol):
    """The latest copy of a target the operator's own watch delivered: (namespace, kind, name) -> the object as the
    watch sent it, or None when the watch holds none (not yet seen, deleted, or driven by no rollout). Never
    written to: the reconciler only reads it, and only where its guard proves it no older than what it knows."""

    def __call__(self, key: tuple[str, str, str]) -> Mapping[str, Any] | None: ...


class EventSink(Protocol):
    def __call__(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None: ...


class Measurer(Protocol):
    def measure(self, check: Check, spec: TorghutRolloutSpec, namespace: str, previous: Any | None) -> Measurement: ...


class Migrator(Protocol):
    def apply_sql(
        self, spec: TorghutRolloutSpec, namespace: str, rollout: str, *, catch_up: bool = False, run: str | None = None
    ) -> SqlOutcome: ...

    def check_expectations(self, spec: TorghutRolloutSpec, namespace: str) -> tuple[ExpectationOutcome, ...]: ...


class PromotionEvidenceReader(Protocol):
    def promotion_evidence(
        self, spec: TorghutRolloutSpec, namespace: str, request: CheckPromotionEvidence
    ) -> PromotionEvidence: ...


class EvidenceSink(Protocol):
    """The ledger (every measurement and decision) and the Markdown report built from it."""

    def record_evidence(
        self,
        spec: TorghutRolloutSpec,
        namespace: str,
        rollout: RolloutRef,
        before: TorghutRolloutStatus,
        after: TorghutRolloutStatus,
        events: tuple[Event, ...],
    ) -> None: ...

    def report(
        self, spec: TorghutRolloutSpec, namespace: str, rollout: RolloutRef, status: TorghutRolloutStatus
    ) -> str: ...

    def report_with_lane_runs(
        self, spec: TorghutRolloutSpec, namespace: str, rollout: RolloutRef, status: TorghutRolloutStatus
    ) -> tuple[str, int | None]: ...


class Gates(Measurer, Migrator, PromotionEvidenceReader, EvidenceSink, Protocol):
    """Every database- and gate-facing port at once, as one implementation (`adapters.live.LiveGates`) provides."""
