"""The imperative shell around the planner: observe, plan, persist, act.

One call of :meth:`Reconciler.reconcile` is one turn for one TorghutRollout. It reads the object (see below), gathers
what the current phase needs, asks the planner, writes the status *before* acting (with optimistic concurrency, so two
writers never interleave), then acts. Measuring actions (SQL migration, expectations, measurements) return outcomes
that go straight back into the planner within the same turn.

Reads come from the operator's own watch where that copy is provably no older than what this process knows, and from
the API server otherwise: the rollout's copy when its resourceVersion is the newest one this process read or wrote
itself (so it is exactly that version), or in its daemon's first turn (then nothing changes before a status write
has proven it current); a write on a copy is still guarded by its resourceVersion. The target's
only while the rollout deploys, verifies or rolls back, and only when its generation is at least the one a GET saw
after the operator's last write to it. Where a restore point is taken (pending, migrating, promoting), for a verb,
and after a measurement (drift is never evidence), the target is always a GET.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import urllib3
from pydantic import ValidationError

from torghut_operator.core.api.spec import Check, Target, TargetKind, TorghutRolloutSpec, target_key
from torghut_operator.core.api.status import Measurement, Phase, RestorePoint, TorghutRolloutStatus, Verdict
from torghut_operator.core.errors import OperatorError, PermanentError, TemporaryError
from torghut_operator.core.judge import last_value
from torghut_operator.core.manifests import (
    ACTION_ANNOTATION,
    deployment_state,
    job_state,
    knative_state,
    migration_job,
    report_name,
)
from torghut_operator.core.observations import (
    JobState,
    Observations,
    Peer,
    TargetState,
)
from torghut_operator.core.planner import (
    OUTCOME_ACTIONS,
    ApplySqlMigrations,
    CheckExpectations,
    CheckPromotionEvidence,
    CreateMigrationJob,
    Event,
    Measure,
    Plan,
    SetTargetEnv,
    SetTargetImage,
    deletion_plan,
    job_name,
    plan,
    stage_checks,
    with_outcomes,
)
from torghut_operator.core.presets import effective_checks
from torghut_operator.core.records import RolloutRef
from torghut_operator.core.text import hide_userinfo, redact_log
from torghut_operator.core.timefmt import format_time, parse_time, utcnow
from torghut_operator.core.verbs import parse_action
from torghut_operator.evidence.facts import LANE_RUNS, REFRESH_HOURS
from torghut_operator.shell import metrics
from torghut_operator.shell.ports import EventSink, Gates, KubernetesPort, WatchCopies

log = logging.getLogger(__name__)

MAX_STEPS = 8
"""Planner calls in one turn; each measuring action costs one."""
PROGRESS_SECONDS = 2.0
"""A status write that would change only the message (e.g. "waiting for …: 1/3 updated" on every Deployment status
change) waits until this long after the rollout's last status write; the turn comes back then to write it."""
CHANGING_ACTIONS = (CreateMigrationJob, ApplySqlMigrations, SetTargetImage, SetTargetEnv)
"""Actions that change something outside the rollout's status (the others only read)."""
KNOWN_VERSIONS = 8
"""How many of a rollout's own recent resourceVersions (read or written by its turns) are remembered per rollout."""
READ_AHEAD_SECONDS = 2.0
"""How old a new rollout's first reads, taken while Kopf's finalizer was on its way (``read_ahead``), may be when its
first turn starts; older ones are read again."""


@dataclass(frozen=True)
class _ReadAhead:
    """A new rollout's first reads, taken before its first turn: for the spec they were read for only."""

    at: float
    """monotonic time the reads were answered"""
    generation: int | None
    target: Target
    peers: tuple[Peer, ...]
    state: TargetState


@dataclass(frozen=True)
class _Parsed:
    """A rollout's spec as its last turn parsed it: reused while the raw spec is equal (see ``_parse_spec``)."""

    raw: dict[str, Any]
    spec: TorghutRolloutSpec
    checks: tuple[Check, ...]


@dataclass(frozen=True)
class Turn:
    """What one turn did, for metrics and for the daemon's next wait."""

    phase: str
    requeue_after: float | None


class Reconciler:
    def __init__(
        self,
        kube: KubernetesPort,
        gates: Gates,
        events: EventSink,
        clock: Callable[[], Any] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        copies: WatchCopies | None = None,
    ) -> None:
        self._kube = kube
        self._gates = gates
        self._events = events
        self._clock = clock
        self._monotonic = monotonic
        self._copies = copies
        self._newest: dict[tuple[str, str], str | None] = {}
        """(namespace, name) -> the resourceVersion of the rollout this process read or wrote last (None: it wrote
        one whose version it does not know, e.g. clearing a verb): the one version its watch copy may be used at"""
        self._target_seen: dict[tuple[str, str, str], Mapping[str, Any]] = {}
        """target key -> the target as this process last read it (GET or copy): the base of its next write, whose
        resourceVersion precondition turns a stale base into a conflict and a fresh read"""
        self._target_floor: dict[tuple[str, str, str], int] = {}
        """target key -> the generation a GET saw after this process last wrote the target (none: the next read
        GETs): a watch copy of the target below it predates the operator's own change"""
        self._target_of: dict[tuple[str, str], tuple[str, str, str]] = {}
        """(namespace, name) -> the rollout's target key, so what is kept of a target goes with its last rollout"""
        self._written: dict[tuple[str, str], float] = {}
        """(namespace, name) -> monotonic time of the rollout's last status write from this process"""
        self._known: dict[tuple[str, str], deque[str]] = {}
        """(namespace, name) -> the last resourceVersions of the rollout this process read or wrote itself"""
        self._ahead: dict[tuple[str, str], _ReadAhead] = {}
        """(namespace, name) -> a new rollout's first reads, until its first turn takes them (``read_ahead``)"""
        self._parsed: dict[tuple[str, str], _Parsed] = {}
        """(namespace, name) -> the spec its last turn parsed, its checks and the raw spec they came from"""

    async def reconcile(self, namespace: str, name: str, live: Mapping[str, Any] | None = None) -> Turn | None:
        """One turn. ``live``: the rollout as the operator's watch last delivered it (Kopf's live body), read instead
        of a GET where ``_live_copy`` allows."""
        started = time.monotonic()
        try:
            turn = await self._turn(namespace, name, live)
        except Exception as exc:
            metrics.RECONCILES.labels(result="error").inc()
            metrics.ERRORS.labels(kind=type(exc).__name__).inc()
            raise
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
        metrics.RECONCILES.labels(result="ok").inc()
        return turn

    async def read_ahead(self, namespace: str, name: str, live: Mapping[str, Any]) -> None:
        """A new rollout's first reads (its peers' listing and its target), taken while Kopf's own first write (its
        finalizer, which the first turn waits for) is on its way: the first turn then goes straight to its status
        write, one round trip sooner. They are the reads that turn would take, a moment earlier and still after the
        rollout was created (so a peer created at the same time sees it, or it sees the peer); the turn takes them
        only for the same target and generation and within ``READ_AHEAD_SECONDS``. Never raises: anything that
        fails here is read again, and reported, by the turn. ``live``: the rollout as the watch delivered it."""
        meta = live.get("metadata") or {}
        if live.get("status") or (meta.get("annotations") or {}).get(ACTION_ANNOTATION):
            return  # not a new rollout, or a verb: the turn reads for itself
        generation = meta.get("generation")  # of the spec read here: ``live`` changes while the reads are out
        try:
            spec = self._parse_spec(namespace, name, live.get("spec") or {})[0]  # the first turn's, if unchanged
            self._target_of[(namespace, name)] = target_key(namespace, spec)
            async with asyncio.TaskGroup() as reads:
                peers = reads.create_task(self._peers(namespace, spec))
                state = reads.create_task(self._read_target(namespace, spec, fresh=True))
        except Exception:  # noqa: BLE001 (the turn reads again and reports what fails)
            log.debug("TorghutRollout %s/%s: reading ahead failed; the first turn reads", namespace, name)
            return
        self._ahead[(namespace, name)] = _ReadAhead(
            self._monotonic(), generation, spec.target, peers.result(), state.result()
        )

    def _taken_ahead(
        self, namespace: str, name: str, spec: TorghutRolloutSpec, generation: int | None
    ) -> _ReadAhead | None:
        ahead = self._ahead.pop((namespace, name), None)
        if ahead is None or ahead.generation != generation or ahead.target != spec.target:
            return None
        return ahead if self._monotonic() - ahead.at <= READ_AHEAD_SECONDS else None

    def knows(self, namespace: str, name: str, resource_version: str | None) -> bool:
        """Whether this version of the rollout is one a turn of this process read or wrote itself: its watch event
        (the echo of a status write, or a change the turn already decided on) tells the rollout's daemon nothing
        new, and waking it for one would cost a whole turn, or cut short the backoff after a failed turn."""
        return resource_version is not None and resource_version in self._known.get((namespace, name), ())

    def _saw(self, namespace: str, name: str, resource_version: str) -> None:
        self._known.setdefault((namespace, name), deque(maxlen=KNOWN_VERSIONS)).append(resource_version)

    def _live_copy(self, namespace: str, name: str, live: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The watch's copy of the rollout if it is the newest version this process read or wrote, or if this
        process holds nothing of the rollout yet (its daemon's first turn: the copy is what the watch just
        delivered; such a turn writes its status before any action that changes something, or reads the rollout
        again first: see ``_turn``); else None."""
        if live is None:
            return None
        key = (namespace, name)
        meta = live.get("metadata") or {}
        if key in self._newest and (self._newest[key] is None or meta.get("resourceVersion") != self._newest[key]):
            return None
        return dict(live)

    async def _get_rollout(self, namespace: str, name: str) -> dict[str, Any] | None:
        body = await self._kube.get_rollout(namespace, name)
        metrics.READS.labels(object="rollout", source="api").inc()
        self._newest[(namespace, name)] = None if body is None else body["metadata"]["resourceVersion"]
        return body

    async def _turn(self, namespace: str, name: str, live: Mapping[str, Any] | None = None) -> Turn | None:
        # A copy at the newest version this process read or wrote is that version; a daemon's first copy is only
        # what the watch delivered: nothing changes on it before a status write has proven it current.
        first_look = (namespace, name) not in self._newest
        body = self._live_copy(namespace, name, live)
        unproven = first_look and body is not None
        if body is not None:
            metrics.READS.labels(object="rollout", source="watch").inc()
            self._newest[(namespace, name)] = body["metadata"]["resourceVersion"]
        else:
            body = await self._get_rollout(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.forget(namespace, name)
            return None
        meta = body["metadata"]
        self._saw(namespace, name, meta["resourceVersion"])
        generation = meta.get("generation")
        try:
            spec, checks = self._parse_spec(namespace, name, body.get("spec") or {})
        except (ValidationError, ValueError) as exc:
            await self._invalid_spec(body, exc)
            return Turn(Phase.FAILED.value, None)
        self._target_of[(namespace, name)] = target_key(namespace, spec)
        status = _parse_status(body.get("status"))
        verb_value = (meta.get("annotations") or {}).get(ACTION_ANNOTATION)
        verb = parse_action(verb_value)[0] if verb_value else None
        obs = await self._observe(body, spec, status, namespace, name, verb)
        resource_version = meta["resourceVersion"]
        read_all = True  # every version this turn writes on is one whose content it read
        wrote = False
        result: Plan | None = None
        for _ in range(MAX_STEPS):
            result = plan(spec, checks, status, obs, name=name, generation=generation)
            wait = self._progress_wait(namespace, name, status, result)
            if wait > 0:  # only the message changed, and the last write is recent: write it a little later
                metrics.observe_status(namespace, name, status)
                later = result.requeue_after
                return Turn(status.phase.value, min(wait, later) if later else wait)
            if result.status != status:
                self._written[(namespace, name)] = self._monotonic()
                written = await self._kube.patch_rollout_status(
                    namespace,
                    name,
                    _dump_status(result.status),
                    resource_version,
                )
                if written is None:  # someone else changed the object: start the turn over soon, from a GET
                    self._newest[(namespace, name)] = None
                    return Turn(status.phase.value, 0.5)
                resource_version = written
                self._newest[(namespace, name)] = written
                wrote = True
                if read_all:
                    self._saw(namespace, name, written)
                await self._evidence(body, spec, namespace, status, result)
            if unproven and not wrote and any(isinstance(a, CHANGING_ACTIONS) for a in result.actions):
                # Nothing changes on a copy no write of this turn has proven current: read the rollout first.
                self._newest[(namespace, name)] = None
                return Turn(status.phase.value, 0.0)
            if result.verb_handled and verb_value is not None:
                self._newest[(namespace, name)] = None  # a version this process does not know, until read
                await self._kube.clear_action(namespace, name, verb_value)
                verb_value = None
                fresh = await self._get_rollout(namespace, name)
                if fresh is None:
                    return None
                # Only its version is taken: a change someone made meanwhile is not read, so a write on it is no
                # echo, and its watch event must still wake the daemon.
                resource_version = fresh["metadata"]["resourceVersion"]
                read_all = False
            for event in result.events:
                self._emit(body, event)
            status = result.status
            outcomes = await self._act(body, spec, checks, status, namespace, name, result)
            if outcomes is None:
                break
            obs = with_outcomes(obs, **outcomes)
        assert result is not None
        self._target_seen.pop(target_key(namespace, spec), None)  # a write's base is this turn's read only
        metrics.observe_status(namespace, name, result.status)
        # A step that wrote the status without saying when to come back (entering a phase, e.g. Pending ->
        # Migrating) leaves the next phase's first step to the next turn, at once: the echo of the write, which
        # used to start it, no longer wakes the daemon (see `knows`).
        requeue = 0.0 if wrote and result.requeue_after is None else result.requeue_after
        return Turn(result.status.phase.value, requeue)

    def _parse_spec(self, namespace: str, name: str, raw: Mapping[str, Any]) -> tuple[TorghutRolloutSpec, list[Check]]:
        """The rollout's spec and effective checks, parsed from ``raw`` (raising as the parse does), or the ones its
        last turn parsed when ``raw`` is equal to what they were parsed from: parsing is a pure function of the raw
        spec and the models are frozen, so the result is the parse's, without the validation and the spec hash
        (together 4 % of the operator's CPU at 50 rollouts at once, on every turn of a spec that had not changed)."""
        key = (namespace, name)
        parsed = self._parsed.get(key)
        if parsed is None or parsed.raw != raw:
            spec = TorghutRolloutSpec.model_validate(raw)
            checks = tuple(effective_checks(spec))
            # a deep copy: the cache must not see a later change made in place to the dict it was parsed from
            parsed = _Parsed(copy.deepcopy(dict(raw)), spec, checks)
            self._parsed[key] = parsed
        return parsed.spec, list(parsed.checks)

    def forget(self, namespace: str, name: str) -> None:
        """The rollout's daemon has stopped (it is gone, or the operator stops): drop what is kept about it."""
        self._parsed.pop((namespace, name), None)
        self._written.pop((namespace, name), None)
        self._known.pop((namespace, name), None)
        self._newest.pop((namespace, name), None)
        self._ahead.pop((namespace, name), None)
        key = self._target_of.pop((namespace, name), None)
        if key is not None and key not in self._target_of.values():
            self._target_floor.pop(key, None)
            self._target_seen.pop(key, None)

    def _progress_wait(self, namespace: str, name: str, before: TorghutRolloutStatus, result: Plan) -> float:
        """Seconds to hold back a status write that changes nothing but the message, with nothing to act on or
        announce (a progress message): 0 to write it now."""
        if result.status == before or result.actions or result.events or result.verb_handled:
            return 0.0
        if _without_message(result.status) != _without_message(before):
            return 0.0
        last = self._written.get((namespace, name))
        return 0.0 if last is None else max(0.0, last + PROGRESS_SECONDS - self._monotonic())

    async def _evidence(
        self, body: dict[str, Any], spec: TorghutRolloutSpec, namespace: str, before: TorghutRolloutStatus, result: Plan
    ) -> None:
        """Record the step in the ledger and, when a run ends, publish the evidence report. Status is the source
        of truth and is already written; a ledger that is down is reported and caught up on the next change
        (every measurement still in status is recorded again, idempotently)."""
        after = result.status
        meta = body["metadata"]
        ref = RolloutRef(meta["uid"], meta["name"], namespace, after.attempt, after.spec_hash or "")
        if spec.database is not None:
            try:
                await asyncio.to_thread(self._gates.record_evidence, spec, namespace, ref, before, after, result.events)
            except Exception as exc:  # noqa: BLE001 (reported, retried on the next change)
                self._emit(body, Event("Warning", "LedgerWriteFailed", f"evidence ledger: {_secret_free(exc)}"))
        if after.phase.terminal and not before.phase.terminal:
            try:
                report = await asyncio.to_thread(self._gates.report, spec, namespace, ref, after)
                await self._kube.publish_report(namespace, meta["name"], meta["uid"], report)
                self._emit(body, Event("Normal", "EvidenceReport", f"report in ConfigMap {report_name(meta['name'])}"))
            except Exception as exc:  # noqa: BLE001 (the report can be rendered again by the plugin)
                self._emit(body, Event("Warning", "EvidenceReportFailed", _secret_free(exc)))

    async def report_stuck(self, namespace: str, name: str, exc: BaseException) -> None:
        """A turn failed for a reason that retrying alone will not fix (a bug, a forbidden request, a status that
        does not parse): say so in status (Ready=False, reason ReconcileError) and in an event, once per message.
        The daemon keeps retrying with backoff; nothing else in status changes, so no decision is lost."""
        body = await self._get_rollout(namespace, name)
        if body is None:
            return
        text = f"reconcile failed: {describe_error(exc)}"
        raw = body.get("status") or {}
        conditions = [c for c in raw.get("conditions") or [] if isinstance(c, dict)]
        ready = next((c for c in conditions if c.get("type") == "Ready"), None)
        if ready is not None and ready.get("reason") == "ReconcileError" and ready.get("message") == text:
            return
        now = format_time(self._clock())
        new_ready = {
            "type": "Ready",
            "status": "False",
            "reason": "ReconcileError",
            "message": text,
            "lastTransitionTime": ready.get("lastTransitionTime", now)
            if ready is not None and ready.get("status") == "False"
            else now,
            "observedGeneration": body["metadata"].get("generation"),
        }
        others = [c for c in conditions if c.get("type") != "Ready"]
        patch = {"message": text, "conditions": [new_ready, *others]}
        version = body["metadata"]["resourceVersion"]
        written = await self._kube.patch_rollout_status(namespace, name, patch, version)
        if written is not None:
            self._newest[(namespace, name)] = written
        if written is not None and self.knows(namespace, name, version):  # nobody else wrote since the turn
            self._saw(namespace, name, written)
        self._emit(body, Event("Warning", "ReconcileError", text))

    async def finalize(self, namespace: str, name: str) -> bool:
        """Deletion of a rollout: True once it may go. With ``spec.onDelete: Restore`` (default) a rollout that
        changed its target first puts the previous image and trading env back (the planner's rollback, as if
        aborted when the deletion was asked), within deploy.progressDeadline; past it, or with Orphan, it goes
        with a Warning event saying what it left behind."""
        body = await self._kube.get_rollout(namespace, name)
        if body is None:
            return True
        try:
            spec = TorghutRolloutSpec.model_validate(body.get("spec") or {})
            status = _parse_status(body.get("status"))
        except (ValidationError, PermanentError) as exc:
            self._emit(body, Event("Warning", "DeletedUnrestored", f"target not checked: {_short_error(exc)}"))
            return True
        restore = status.restore
        if spec.on_delete == "Orphan":
            if restore is not None and not restore.empty and status.phase is not Phase.SUCCEEDED:
                self._emit(body, Event("Warning", "DeletedUnrestored", _left_behind(spec, restore)))
            return True
        raw = await self._kube.get_target(namespace, spec.target)
        reader = deployment_state if spec.target.kind is TargetKind.DEPLOYMENT else knative_state
        deleted_at = parse_time(body["metadata"].get("deletionTimestamp") or format_time(self._clock()))
        result = deletion_plan(
            spec, status, reader(raw, spec.target.container), now=self._clock(), deleted_at=deleted_at, name=name
        )
        if result is None:
            return True
        if result.status.phase is Phase.ROLLING_BACK:
            if result.actions:
                self._emit(body, Event("Normal", "RestoringOnDelete", f"deleted: {result.status.message}"))
            base = raw  # read just now: the first write's base (the next one's is stale by then, so it reads again)
            for action in result.actions:
                if isinstance(action, SetTargetImage | SetTargetEnv):
                    self._wrote_target(namespace, spec)
                if isinstance(action, SetTargetImage):
                    await self._kube.set_target_image(namespace, spec.target, action.image, base)
                    base = None
                elif isinstance(action, SetTargetEnv):
                    await self._kube.set_target_env(namespace, spec.target, action.env, base)
                    base = None
            return False
        if result.status.phase is Phase.ABORTED:
            self._emit(body, Event("Normal", "RestoredOnDelete", f"deleted after {result.status.message}"))
        else:
            self._emit(body, Event("Warning", "DeletedUnrestored", f"{result.status.message}; deleted anyway"))
        return True

    async def refresh_report(self, namespace: str, name: str) -> bool:
        """Re-render and republish a finished run's report so it shows the first lane runs after the deploy as they
        happen. True while there is more to wait for (fewer than LANE_RUNS seen, within REFRESH_HOURS of the end);
        False when done or not applicable (running, no database, deleted)."""
        body = await self._kube.get_rollout(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return False
        try:
            spec = TorghutRolloutSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            return False
        status = _parse_status(body.get("status"))
        if spec.database is None or not status.phase.terminal or status.completed_at is None:
            return False
        if self._clock() - parse_time(status.completed_at) > timedelta(hours=REFRESH_HOURS):
            return False
        meta = body["metadata"]
        ref = RolloutRef(meta["uid"], meta["name"], namespace, status.attempt, status.spec_hash or "")
        text, seen = await asyncio.to_thread(self._gates.report_with_lane_runs, spec, namespace, ref, status)
        await self._kube.publish_report(namespace, meta["name"], meta["uid"], text)
        return seen is None or seen < LANE_RUNS

    async def _invalid_spec(self, body: dict[str, Any], exc: Exception) -> None:
        meta = body["metadata"]
        message = f"invalid spec: {_short_error(exc)}"
        status = _parse_status(body.get("status"))
        if status.message == message and status.phase is Phase.FAILED:
            return
        status = status.model_copy(
            update={"phase": Phase.FAILED, "message": message, "observed_generation": meta.get("generation")}
        )
        written = await self._kube.patch_rollout_status(
            meta["namespace"],
            meta["name"],
            _dump_status(status),
            meta["resourceVersion"],
        )
        if written is not None:
            self._saw(meta["namespace"], meta["name"], written)
            self._newest[(meta["namespace"], meta["name"])] = written
        self._emit(body, Event("Warning", "InvalidSpec", message))

    async def _observe(
        self,
        body: dict[str, Any],
        spec: TorghutRolloutSpec,
        status: TorghutRolloutStatus,
        namespace: str,
        name: str,
        verb: str | None,
    ) -> Observations:
        phase = status.phase if status.spec_hash == spec.spec_hash() else Phase.PENDING
        if phase is Phase.PAUSED and status.paused_from is not None:
            phase = status.paused_from
        # Migrating too: the turn that sees the migration done deploys at once, in the same status write.
        watched = (
            Phase.PENDING,
            Phase.MIGRATING,
            Phase.DEPLOYING,
            Phase.VERIFYING,
            Phase.PROMOTING,
            Phase.ROLLING_BACK,
        )
        ahead = self._taken_ahead(namespace, name, spec, (body.get("metadata") or {}).get("generation"))
        if ahead is not None and phase is Phase.PENDING and verb is None:
            return Observations(now=self._clock(), verb=None, peers=ahead.peers, target=ahead.state)
        # The reads a turn needs do not depend on each other: they go out together (a new rollout's first turn
        # waited for its peers' listing before it read its target), and one that fails cancels the others and is
        # raised as itself (what the turn reports and how it retries depend on the error, not on a group of them).
        try:
            async with asyncio.TaskGroup() as reads:
                peers_read = (
                    reads.create_task(self._peers(namespace, spec))
                    if phase is Phase.PENDING or verb == "retry"
                    else None
                )
                target_read = None
                if phase in watched or verb in ("retry", "abort"):
                    # Where a restore point is taken from the target (a new rollout's first look, the turn that ends
                    # its migration and patches the image, a promotion step's trading env) and for a verb: always a GET.
                    fresh = phase in (Phase.PENDING, Phase.MIGRATING, Phase.PROMOTING) or verb is not None
                    target_read = reads.create_task(self._read_target(namespace, spec, fresh=fresh))
                job_read = None
                if phase is Phase.MIGRATING and spec.migrate is not None and spec.migrate.job is not None:
                    job_read = reads.create_task(
                        self._read_job(namespace, job_name(name, status.spec_hash or "", status.attempt))
                    )
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return Observations(
            now=self._clock(),
            verb=verb,
            peers=() if peers_read is None else peers_read.result(),
            target=None if target_read is None else target_read.result(),
            job=None if job_read is None else job_read.result(),
        )

    async def _read_job(self, namespace: str, name: str) -> JobState:
        job = job_state(name, await self._kube.get_job(namespace, name))
        if job.failed:
            job = replace(job, logs=await self._job_logs(namespace, name))
        return job

    async def _job_logs(self, namespace: str, job: str) -> str:
        """The failed Job's last log lines for status (kept pods; secrets removed). A log that can't be read is
        said so: the failure itself is never held up by it."""
        try:
            text = await self._kube.job_logs(namespace, job)
        except Exception as exc:  # noqa: BLE001 (reported in place of the log)
            return f"(the pod's log could not be read: {describe_error(exc)})"
        return redact_log(text).strip() or "(the pod wrote no log)"

    async def _read_target(self, namespace: str, spec: TorghutRolloutSpec, *, fresh: bool) -> TargetState:
        """The target, from the watch's copy when allowed (not ``fresh``) and no older than the floor, else a GET
        (which sets the floor)."""
        reader = deployment_state if spec.target.kind is TargetKind.DEPLOYMENT else knative_state
        key = target_key(namespace, spec)
        floor = self._target_floor.get(key)
        if not fresh and floor is not None and self._copies is not None:
            copy = self._copies(key)
            if copy is not None and _generation(copy) >= floor:
                metrics.READS.labels(object="target", source="watch").inc()
                self._target_seen[key] = copy
                return reader(dict(copy), spec.target.container)
        raw = await self._kube.get_target(namespace, spec.target)
        metrics.READS.labels(object="target", source="api").inc()
        if raw is None:
            self._target_floor.pop(key, None)
            self._target_seen.pop(key, None)
        else:
            self._target_floor[key] = _generation(raw)
            self._target_seen[key] = raw
        return reader(raw, spec.target.container)

    def _wrote_target(self, namespace: str, spec: TorghutRolloutSpec) -> Mapping[str, Any] | None:
        """The operator is changing the target: no watch copy counts until a GET has seen the change's generation.
        Returns the target as last read, the write's base (used once)."""
        key = target_key(namespace, spec)
        self._target_floor.pop(key, None)
        return self._target_seen.pop(key, None)

    async def _peers(self, namespace: str, spec: TorghutRolloutSpec) -> tuple[Peer, ...]:
        items = await self._kube.list_rollouts(namespace)
        peers = []
        for item in items:
            if target_key(namespace, item.get("spec") or {}) != target_key(namespace, spec):
                continue
            phase = ((item.get("status") or {}).get("phase")) or Phase.PENDING.value
            active = phase not in {p.value for p in Phase if p.terminal} and not item["metadata"].get(
                "deletionTimestamp"
            )
            peers.append(Peer(item["metadata"]["name"], item["metadata"]["creationTimestamp"], phase, active))
        return tuple(peers)

    async def _act(
        self,
        body: dict[str, Any],
        spec: TorghutRolloutSpec,
        checks: list[Check],
        status: TorghutRolloutStatus,
        namespace: str,
        name: str,
        result: Plan,
    ) -> dict[str, object] | None:
        outcomes: dict[str, object] = {}
        for action in result.actions:
            if isinstance(action, CreateMigrationJob):
                manifest = migration_job(
                    spec, name=action.name, rollout=name, uid=body["metadata"]["uid"], namespace=namespace
                )
                await self._kube.create_job(namespace, manifest)
            elif isinstance(action, SetTargetImage):
                base = self._wrote_target(namespace, spec)
                await self._kube.set_target_image(namespace, spec.target, action.image, base)
            elif isinstance(action, SetTargetEnv):
                base = self._wrote_target(namespace, spec)
                await self._kube.set_target_env(namespace, spec.target, action.env, base)
            elif isinstance(action, CheckPromotionEvidence):
                outcomes["promotion_evidence"] = await asyncio.to_thread(
                    self._gates.promotion_evidence, spec, namespace, action
                )
            elif isinstance(action, ApplySqlMigrations):
                outcome = await asyncio.to_thread(
                    self._gates.apply_sql, spec, namespace, name, catch_up=action.catch_up, run=action.run
                )
                outcomes["sql_catch_up" if action.catch_up else "sql"] = outcome
            elif isinstance(action, CheckExpectations):
                outcomes["expectations"] = await asyncio.to_thread(self._gates.check_expectations, spec, namespace)
            elif isinstance(action, Measure):
                stage = stage_checks(spec, checks, status)
                outcomes["measurements"] = await self._measure(spec, stage, status, namespace, action.checks)
                # Read the target again after measuring: the planner judges the measurements only if the target
                # still runs what this rollout set (drift during a measurement is never evidence).
                outcomes["target"] = await self._read_target(namespace, spec, fresh=True)
        if not any(isinstance(a, OUTCOME_ACTIONS) for a in result.actions):
            return None
        return outcomes

    async def _measure(
        self,
        spec: TorghutRolloutSpec,
        checks: list[Check],
        status: TorghutRolloutStatus,
        namespace: str,
        names: tuple[str, ...],
    ) -> dict[str, Measurement]:
        by_name = {c.name: c for c in checks}
        previous = {s.name: last_value(s.measurements) for s in status.checks}
        due = [by_name[n] for n in names if n in by_name]
        results = await asyncio.gather(
            *(asyncio.to_thread(self._gates.measure, c, spec, namespace, previous.get(c.name)) for c in due),
            return_exceptions=True,
        )
        measured: dict[str, Measurement] = {}
        for check, outcome in zip(due, results, strict=True):
            if isinstance(outcome, BaseException):  # fail closed: an unexpected failure is an Error measurement
                text = outcome if isinstance(outcome, OperatorError) else type(outcome).__name__
                m = Measurement(phase=Verdict.ERROR, at=format_time(self._clock()), message=f"{check.name}: {text}")
            else:
                m = outcome
            measured[check.name] = m
            metrics.MEASUREMENTS.labels(check=check.name, verdict=m.phase.value).inc()
        return measured

    def _emit(self, body: dict[str, Any], event: Event) -> None:
        try:
            self._events(body, event.type, event.reason, event.message[:1024])
        except Exception:  # an event is a courtesy; the status already says it
            log.exception("could not post event %s", event.reason)


def describe_error(exc: BaseException) -> str:
    """An error for status and events: our own errors as written (secret-free by contract); anything else by
    type and a short message with URL credentials removed."""
    if isinstance(exc, OperatorError):
        return str(exc)
    text = hide_userinfo(" ".join(str(exc).split()))[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_transient(exc: BaseException) -> bool:
    """Whether the world may fix this by itself (an outage, a timeout, a conflict): retried quietly. Anything
    else is reported in status by :meth:`Reconciler.report_stuck`."""
    if isinstance(exc, PermanentError):
        return False
    return isinstance(exc, TemporaryError | TimeoutError | OSError | urllib3.exceptions.HTTPError)


def _left_behind(spec: TorghutRolloutSpec, restore: RestorePoint) -> str:
    parts = []
    if restore.image is not None:
        parts.append(f"image {spec.target.image} (was {restore.image})")
    if restore.env or restore.unset:
        parts.append(
            "trading env changed by the rollout (was "
            + ", ".join([f"{k}={v}" for k, v in sorted(restore.env.items())] + [f"{k} unset" for k in restore.unset])
            + ")"
        )
    return "deleted with spec.onDelete Orphan: the target keeps " + " and ".join(parts)


def _secret_free(exc: Exception) -> str:
    """Our own errors are written secret-free; anything else is named by type only."""
    return str(exc) if isinstance(exc, OperatorError) else type(exc).__name__


def _generation(obj: Mapping[str, Any]) -> int:
    value = (obj.get("metadata") or {}).get("generation")
    return value if isinstance(value, int) else 0


def _parse_status(raw: dict[str, Any] | None) -> TorghutRolloutStatus:
    if not raw:
        return TorghutRolloutStatus()
    try:
        return TorghutRolloutStatus.model_validate(raw)
    except ValidationError as exc:
        raise PermanentError(f"status does not parse: {_short_error(exc)}") from None


def _without_message(status: TorghutRolloutStatus) -> TorghutRolloutStatus:
    """The status without its message (and the Ready condition's copy of it)."""
    conditions = [c.model_copy(update={"message": ""}) if c.type == "Ready" else c for c in status.conditions]
    return status.model_copy(update={"message": "", "conditions": conditions})


def _dump_status(status: TorghutRolloutStatus) -> dict[str, Any]:
    """The whole status for a merge patch: fields no longer set are null, at any depth of nested objects, so the
    patch removes them (e.g. migration.backfill.throttled once the backfill stops waiting); inside lists, which a
    merge patch replaces whole, unset values are left out (a null there would be stored as it is)."""
    dumped: dict[str, Any] = _nulls_outside_lists(status.model_dump(mode="json", by_alias=True))
    return dumped


def _nulls_outside_lists(value: Any, *, in_list: bool = False) -> Any:
    if isinstance(value, dict):
        return {k: _nulls_outside_lists(v, in_list=in_list) for k, v in value.items() if not (in_list and v is None)}
    if isinstance(value, list):
        return [_nulls_outside_lists(v, in_list=True) for v in value]
    return value


def _short_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err["loc"])
            parts.append(f"{where}: {err['msg']}" if where else err["msg"])
        return "; ".join(parts)
    return str(exc)
