"""The pure planner: (spec, status, observations) -> (new status, actions, events).

No I/O happens here. The shell (``reconciler.py``) gathers observations, calls :func:`plan`, persists the new
status *before* it carries out the actions, and feeds the outcomes of measuring actions back into the next call.
Because every decision is derived from the persisted status plus what is observed now, an operator killed
anywhere resumes where it stood, and repeating a decision repeats nothing harmful: images are patched to a
value, Jobs are created under a deterministic name, SQL files are recorded under an advisory lock.

The rule that matters most: a stage advances only on recorded, successful evidence. Errors, timeouts, empty
results and missing data never pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from torghut_operator.core.api.durations import parse_duration
from torghut_operator.core.api.spec import Check, PromotionStep, TorghutRolloutSpec
from torghut_operator.core.api.status import (
    MAX_MEASUREMENTS,
    CheckStatus,
    Condition,
    LastAction,
    Measurement,
    MigrationStatus,
    Phase,
    PromotionStatus,
    RestorePoint,
    TorghutRolloutStatus,
    Verdict,
)
from torghut_operator.core.observations import Observations, SqlOutcome, TargetState
from torghut_operator.core.ownership import FIELD_MANAGER
from torghut_operator.core.text import telling_log_line
from torghut_operator.core.timefmt import format_time, parse_time
from torghut_operator.core.verbs import verb_applies

POLL_SECONDS = 5.0
"""How soon to look again while waiting on something a watch may not announce (a peer, a Job, a target)."""
DEADLINE_SLACK_SECONDS = 0.5
"""A turn that waits for a deadline comes back this long after it, so it finds the deadline passed."""
BACKFILL_REQUEUE = 1.0
"""How soon the next slice of a running backfill starts after the last one returned."""


# --- actions -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateMigrationJob:
    name: str


@dataclass(frozen=True)
class ApplySqlMigrations:
    catch_up: bool = False
    """Also run every repeatable file again (the deploy stage's catch-up); the outcome comes back as
    ``Observations.sql_catch_up``."""
    run: str | None = None
    """With ``catch_up``: which run of the rollout this catch-up belongs to (its start and attempt), so the slices
    of one catch-up run each repeatable file once and a new run or attempt runs them all again."""


@dataclass(frozen=True)
class CheckExpectations:
    pass


@dataclass(frozen=True)
class SetTargetImage:
    image: str


@dataclass(frozen=True)
class SetTargetEnv:
    """Set (value) or remove (None) environment variables of the target container."""

    env: dict[str, str | None]


@dataclass(frozen=True)
class Measure:
    checks: tuple[str, ...]


@dataclass(frozen=True)
class CheckPromotionEvidence:
    """Look for the research_promotions row a step needs: approved for ``mode``, no deny reason, created at or
    after ``since``, for ``candidate_id`` when one is named."""

    mode: str
    since: str
    candidate_id: str | None = None


Action = (
    CreateMigrationJob
    | ApplySqlMigrations
    | CheckExpectations
    | SetTargetImage
    | SetTargetEnv
    | Measure
    | CheckPromotionEvidence
)
OUTCOME_ACTIONS = (ApplySqlMigrations, CheckExpectations, Measure, CheckPromotionEvidence)
"""Actions whose outcome is fed back into the planner at once."""


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    status: TorghutRolloutStatus
    actions: tuple[Action, ...] = ()
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None
    verb_handled: bool = False


# --- helpers -------------------------------------------------------------------------------------------------


def job_name(rollout: str, spec_hash: str, attempt: int) -> str:
    """Deterministic per run and attempt, so a restarted operator finds the Job it created."""
    suffix = f"-migrate-{spec_hash[:8]}-{attempt}"
    return rollout[: 63 - len(suffix)].rstrip("-.") + suffix


@dataclass
class _Builder:
    """Accumulates one planning step; keeps the status transitions readable."""

    status: TorghutRolloutStatus
    now: datetime
    generation: int | None
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None

    @property
    def now_text(self) -> str:
        return format_time(self.now)

    def update(self, **changes: object) -> None:
        self.status = self.status.model_copy(update=changes)

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def requeue(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)

    def move(self, phase: Phase, message: str, *, stage: str | None = None, warning: bool = False) -> None:
        previous = self.status.phase
        changes: dict[str, object] = {"phase": phase, "message": message, "phase_started_at": self.now_text}
        if stage is not None:
            changes["stage"] = stage
        if phase.terminal:
            changes["completed_at"] = self.now_text
            changes["stage"] = ""
        self.update(**changes)
        if previous != phase:
            self.event(
                "Warning" if warning else "Normal",
                phase.value,
                f"{previous.value} -> {phase.value}: {message}",
            )

    def condition(self, type_: str, status: bool | None, reason: str, message: str = "") -> None:
        text = "Unknown" if status is None else ("True" if status else "False")
        conditions = [c for c in self.status.conditions if c.type != type_]
        old = next((c for c in self.status.conditions if c.type == type_), None)
        transition = old.last_transition_time if old is not None and old.status == text else self.now_text
        conditions.append(
            Condition(
                type=type_,
                status=text,
                observed_generation=self.generation,
                last_transition_time=transition,
                reason=reason,
                message=message,
            )
        )
        order = {"Ready": 0, "Migrated": 1, "Deployed": 2, "Verified": 3}
        self.update(conditions=sorted(conditions, key=lambda c: order.get(c.type, 9)))

    def finish(self, verb_handled: bool) -> Plan:
        self._ready_condition()
        return Plan(self.status, tuple(self.actions), tuple(self.events), self.requeue_after, verb_handled)

    def _ready_condition(self) -> None:
        s = self.status
        if s.phase is Phase.SUCCEEDED:
            self.condition("Ready", True, "Succeeded", s.message)
            return
        reason = {
            Phase.PAUSED: "Paused",
            Phase.FAILED: "Failed",
            Phase.ROLLED_BACK: "RolledBack",
            Phase.ROLLING_BACK: "RollingBack",
            Phase.ABORTED: "Aborted",
        }.get(s.phase, "Progressing")
        restored = next((c for c in s.conditions if c.type == "Restored"), None)
        if s.phase is Phase.FAILED and restored is not None and restored.status == "False":
            reason = restored.reason
        if s.blocked_by:
            reason = "Blocked"
        elif s.awaiting_approval and s.phase is not Phase.PAUSED:
            reason = "AwaitingApproval"
        self.condition("Ready", False, reason, s.message)


def _elapsed(since: str | None, now: datetime) -> float:
    return 0.0 if since is None else (now - parse_time(since)).total_seconds()


# --- the planner ---------------------------------------------------------------------------------------------


def plan(
    spec: TorghutRolloutSpec,
    checks: list[Check],
    status: TorghutRolloutStatus,
    obs: Observations,
    *,
    name: str,
    generation: int | None = None,
) -> Plan:
    """Decide the next step of the rollout ``name``.

    ``checks`` are the effective verify checks (spec checks plus presets); the shell expands them once.
    """
    b = _Builder(status=status, now=obs.now, generation=generation)
    spec_hash = spec.spec_hash()
    if status.spec_hash != spec_hash:
        _new_run(b, spec, spec_hash)

    verb_handled = False
    if obs.verb is not None:
        _apply_verb(b, spec, obs.verb)
        verb_handled = True

    # A rollback is never paused, by the verb or by the spec: it puts the previous image and trading env back.
    pausable = not b.status.phase.terminal and b.status.phase not in (Phase.PAUSED, Phase.ROLLING_BACK)
    if spec.paused and pausable:
        _pause(b, by="spec")
    elif not spec.paused and b.status.phase is Phase.PAUSED and b.status.paused_by == "spec":
        _resume(b)

    handler = _PHASES.get(b.status.phase)
    if handler is not None:
        handler(b, spec, checks, obs, name)
    b.update(observed_generation=generation)
    return b.finish(verb_handled)


def _new_run(b: _Builder, spec: TorghutRolloutSpec, spec_hash: str) -> None:
    first = b.status.spec_hash is None
    keep_previous = b.status.previous_image if b.status.phase is not Phase.SUCCEEDED else None
    # What the target looked like before this rollout changed it outlives the run that changed it: a spec edit
    # in the middle of a live step must still be able to put the trading env back.
    b.status = TorghutRolloutStatus(
        spec_hash=spec_hash,
        image=spec.target.image,
        previous_image=keep_previous,
        restore=b.status.restore,
        phase_started_at=b.now_text,
    )
    if not first:
        b.event("Normal", "SpecChanged", "spec changed: the rollout starts over with the new spec")
    b.condition("Migrated", None, "Pending")
    b.condition("Deployed", None, "Pending")
    b.condition("Verified", None, "Pending")


# --- verbs ---------------------------------------------------------------------------------------------------


def _apply_verb(b: _Builder, spec: TorghutRolloutSpec, verb: str) -> None:
    refusal = verb_applies(verb, b.status, spec_paused=spec.paused)
    if refusal is not None:
        result = refusal
    elif verb == "pause":
        _pause(b, by="verb")
        result = "paused"
    elif verb == "resume":
        _resume(b)
        result = "resumed"
    elif verb == "abort":
        _abort(b)
        result = "aborted"
    elif verb == "retry":
        _retry(b, spec)
        result = f"retrying (attempt {b.status.attempt})"
    elif b.status.phase is Phase.PROMOTING and _step_awaits_approval(b.status):
        assert b.status.promotion is not None
        b.update(promotion=b.status.promotion.model_copy(update={"approved": True}), awaiting_approval=False)
        result = f"step {b.status.promotion.step_name} approved"
    else:  # promote, with Inconclusive verdicts awaiting approval (required evidence is never waived)
        checks = [
            c.model_copy(update={"approved": True})
            if c.phase is Verdict.INCONCLUSIVE and not c.dry_run and c.waivable
            else c
            for c in b.status.checks
        ]
        b.update(checks=checks, awaiting_approval=False)
        result = "promoted: Inconclusive verdicts accepted"
    b.update(last_action=LastAction(verb=verb, at=b.now_text, result=result))
    b.event("Normal", "Verb", f"{verb}: {result}")


def _step_awaits_approval(status: TorghutRolloutStatus) -> bool:
    promo = status.promotion
    return promo is not None and not promo.applied and not promo.approved


def _pause(b: _Builder, *, by: str) -> None:
    paused_from = b.status.phase
    b.update(paused_from=paused_from, paused_by=by)
    b.move(
        Phase.PAUSED,
        f"paused in {paused_from.value} by {'spec.paused' if by == 'spec' else 'the pause verb'}",
    )


def _resume(b: _Builder) -> None:
    target = b.status.paused_from or Phase.PENDING
    # The stage clock restarts: time spent paused does not count against deadlines.
    b.update(paused_from=None, paused_by=None, next_measurement_at=None)
    b.move(target, f"resumed in {target.value}")


def _abort(b: _Builder) -> None:
    b.update(aborted=True, paused_from=None, paused_by=None, awaiting_approval=False)
    if _has_restore(b.status):
        b.move(
            Phase.ROLLING_BACK, "aborted: restoring the previous image and trading env", stage="rollback", warning=True
        )
    else:
        b.move(Phase.ABORTED, "aborted", warning=True)


def _retry(b: _Builder, spec: TorghutRolloutSpec) -> None:
    s = b.status
    b.status = TorghutRolloutStatus(
        spec_hash=s.spec_hash,
        attempt=s.attempt + 1,
        image=spec.target.image,
        previous_image=s.previous_image,
        restore=s.restore,
        conditions=s.conditions,
        last_action=s.last_action,
        phase=s.phase,
    )
    b.move(Phase.PENDING, f"retry: attempt {b.status.attempt}")


# --- phases --------------------------------------------------------------------------------------------------


def _pending(b: _Builder, spec: TorghutRolloutSpec, checks: list[Check], obs: Observations, name: str) -> None:
    target_text = f"{spec.target.kind.value}/{spec.target.name}"
    blocking = _blocking_peer(obs, name)
    if blocking is not None:
        message = f"waiting for TorghutRollout {blocking} on {target_text}: one rollout per target at a time"
        if b.status.blocked_by != blocking:
            b.event("Normal", "Blocked", message)
        b.update(blocked_by=blocking, message=message)
        b.requeue(POLL_SECONDS)
        return
    b.update(blocked_by=None)
    if obs.target is None or not obs.target.exists:
        message = f"target {target_text} not found; waiting for it"
        if b.status.message != message:
            b.event("Warning", "TargetNotFound", message)
        b.update(message=message)
        b.requeue(POLL_SECONDS)
        return
    restore = b.status.restore
    if restore is not None and (restore.env or restore.unset):
        # An earlier run of this rollout (before a spec edit or a retry) changed the trading env: put it back
        # before starting over, so no new run begins on a mode it did not earn.
        changes = restore.env_changes
        if any(obs.target.env.get(k) != v for k, v in changes.items()):
            message = f"restoring the trading env an earlier run set ({_env_text(changes)}) before starting over"
            if b.status.message != message:
                b.event("Warning", "RestoringEnv", message)
            b.actions.append(SetTargetEnv(changes))
            b.update(message=message)
            b.requeue(POLL_SECONDS)
            return
        b.update(restore=restore.model_copy(update={"env": {}, "unset": []}))
    b.update(
        started_at=b.status.started_at or b.now_text,
        previous_image=b.status.previous_image or obs.target.image,
    )
    if spec.migrate is not None:
        mode = "job" if spec.migrate.job else "sql" if spec.migrate.sql else "expect"
        b.update(migration=MigrationStatus(mode=mode))
        b.condition("Migrated", False, "Migrating")
        b.move(Phase.MIGRATING, f"migrating ({mode})", stage="migrate")
    else:
        b.condition("Migrated", True, "NotConfigured", "no migrate stage")
        _enter_deploy(b, spec, checks, obs, name)


def _blocking_peer(obs: Observations, name: str) -> str | None:
    """The peer this rollout waits for: one that already runs, or an older pending one."""
    me = next((p for p in obs.peers if p.name == name), None)
    my_key = (me.created, me.name) if me is not None else ("~", name)
    for peer in sorted(obs.peers, key=lambda p: (p.created, p.name)):
        if peer.name == name or not peer.active:
            continue
        if peer.phase != Phase.PENDING.value or (peer.created, peer.name) < my_key:
            return peer.name
    return None


def _migrating(b: _Builder, spec: TorghutRolloutSpec, checks: list[Check], obs: Observations, name: str) -> None:
    assert spec.migrate is not None
    migration = b.status.migration or MigrationStatus()
    ran = migration.completed_at is not None or (spec.migrate.job is None and spec.migrate.sql is None)
    if not ran and spec.migrate.job is not None:
        job = job_name(name, b.status.spec_hash or "", b.status.attempt)
        if migration.job_name != job:
            b.update(migration=migration.model_copy(update={"job_name": job}))
        state = obs.job
        if state is None or not state.exists:
            b.actions.append(CreateMigrationJob(job))
            b.update(message=f"migration Job {job} created")
            b.requeue(POLL_SECONDS)
            return
        if state.failed:
            text = f"migration Job {job} failed: {state.reason or 'Failed'}: {state.message}".rstrip(": ")
            telling = telling_log_line(state.logs)
            if telling is not None:
                text += f"; {telling[0]}: {telling[1][:300]} (status.migration.jobLogs has more)"
                b.update(migration=(b.status.migration or migration).model_copy(update={"job_logs": state.logs}))
            _fail(b, spec, "migrate", "MigrationFailed", text, condition="Migrated")
            return
        if not state.succeeded:
            b.update(message=f"migration Job {job} running")
            b.requeue(POLL_SECONDS)
            return
        migration = (b.status.migration or migration).model_copy(
            update={"completed_at": b.now_text, "message": f"Job {job} completed"}
        )
        b.update(migration=migration)
        b.event("Normal", "MigrationJobSucceeded", f"migration Job {job} completed")
        ran = True
    if not ran and spec.migrate.sql is not None:
        if obs.sql is None:
            b.actions.append(ApplySqlMigrations())
            return
        migration = _backfill_seen(b, migration, obs.sql)
        if obs.sql.error is not None and obs.sql.retryable:
            b.update(message=f"SQL migration will be retried: {obs.sql.error}")
            b.event("Warning", "MigrationRetry", obs.sql.error)
            b.requeue(POLL_SECONDS * 2)
            return
        if obs.sql.error is not None:
            _fail(b, spec, "migrate", "MigrationFailed", obs.sql.error, condition="Migrated")
            return
        if obs.sql.in_progress:
            _backfill_running(b, migration, obs.sql, "migrating")
            return
        applied = list(obs.sql.applied)
        text = f"{len(obs.sql.applied_now)} SQL file(s) applied, {len(obs.sql.skipped)} already applied"
        b.update(
            migration=migration.model_copy(update={"applied": applied, "completed_at": b.now_text, "message": text})
        )
        b.event("Normal", "SqlMigrated", text)
    expect = spec.migrate.expect
    if expect is not None and (expect.alembic_heads or expect.grants or expect.checks):
        if obs.expectations is None:
            b.actions.append(CheckExpectations())
            return
        failed = [e for e in obs.expectations if not e.passed]
        if failed:
            reason = "GateError" if any(e.error for e in failed) else "GateFailed"
            text = "; ".join(f"{e.name}: {e.message}" for e in failed)
            _fail(b, spec, "migrate", reason, f"migration postconditions not met: {text}", condition="Migrated")
            return
        b.event("Normal", "MigrationVerified", f"{len(obs.expectations)} postcondition(s) hold")
    b.condition("Migrated", True, "Succeeded", (b.status.migration or migration).message or "migrated")
    _enter_deploy(b, spec, checks, obs, name)


def _enter_deploy(b: _Builder, spec: TorghutRolloutSpec, checks: list[Check], obs: Observations, name: str) -> None:
    b.condition("Deployed", False, "Deploying")
    b.move(Phase.DEPLOYING, f"deploying {spec.target.image}", stage="deploy")
    if obs.target is None:  # not observed in this turn: the next one reads it
        b.requeue(0)
        return
    # The target was read in this turn: deploy now, in the same status write (one write and one turn fewer).
    _deploying(b, spec, checks, obs, name)


def _deploying(b: _Builder, spec: TorghutRolloutSpec, checks: list[Check], obs: Observations, name: str) -> None:
    target = obs.target
    if target is None or not target.exists:
        _fail(
            b,
            spec,
            "deploy",
            "TargetNotFound",
            f"target {spec.target.kind.value}/{spec.target.name} not found",
            condition="Deployed",
        )
        return
    if target.image != spec.target.image:
        restore = b.status.restore or RestorePoint()
        if restore.image is None and target.image is not None:
            # Recorded in the status write that precedes the patch: a kill right after it still knows what to restore.
            b.update(restore=restore.model_copy(update={"image": target.image}))
        b.actions.append(SetTargetImage(spec.target.image))
        b.update(message=f"setting {spec.target.container} image to {spec.target.image}")
        b.requeue(POLL_SECONDS)
        return
    if target.failed_reason:
        _fail(
            b,
            spec,
            "deploy",
            target.failed_reason,
            f"deploy failed: {target.failed_reason}: {target.detail}",
            condition="Deployed",
        )
        return
    if target.rolled_out:
        if not _caught_up(b, spec, obs):
            return
        b.condition("Deployed", True, "Available", target.detail)
        b.condition("Verified", False, "Verifying")
        delay = parse_duration(spec.verify.initial_delay)
        b.update(
            checks=[_fresh_check(c) for c in checks],
            next_measurement_at=format_time(b.now + timedelta(seconds=delay)),
        )
        b.move(
            Phase.VERIFYING,
            f"{spec.target.image} available; verifying {len(checks)} check(s)",
            stage="verify",
        )
        b.requeue(delay)
        return
    deadline = parse_duration(spec.deploy.progress_deadline)
    if _elapsed(_deploy_clock(b.status), b.now) > deadline:
        _fail(
            b,
            spec,
            "deploy",
            "ProgressDeadlineExceeded",
            f"not available within {spec.deploy.progress_deadline}: {target.detail}",
            condition="Deployed",
        )
        return
    b.update(message=f"waiting for {spec.target.image}: {target.detail}")
    # Every change of the target wakes the rollout (its watch): the turn that finds it available comes then. Not
    # polling every POLL_SECONDS: 200 rollouts at once waiting on their Deployments took 11 idle turns each.
    b.requeue(max(deadline - _elapsed(_deploy_clock(b.status), b.now), 0.0) + DEADLINE_SLACK_SECONDS)


def _caught_up(b: _Builder, spec: TorghutRolloutSpec, obs: Observations) -> bool:
    """sql mode: once the new image is available, run the repeatable SQL files again before verifying, so rows
    the old image wrote after the migration get backfilled too. Recorded in status.migration.caughtUpAt (a restart
    before that repeats only idempotent files). False while it is pending or waiting on a retryable error."""
    if spec.migrate is None or spec.migrate.sql is None:
        return True
    migration = b.status.migration or MigrationStatus(mode="sql")
    if migration.caught_up_at is not None:
        return True
    outcome = obs.sql_catch_up
    if outcome is None:
        b.actions.append(ApplySqlMigrations(catch_up=True, run=_run_id(b.status)))
        if not _backfilling(b.status):  # between two slices the message keeps showing the progress
            b.update(message="new image available; re-running the repeatable SQL files (catch-up)")
        return False
    migration = _backfill_seen(b, migration, outcome)
    if outcome.error is not None and outcome.retryable:
        # A catch-up that is backfilling is measured from its last progress, not from the stage's start.
        deadline = parse_duration(spec.deploy.progress_deadline)
        if _elapsed(_deploy_clock(b.status), b.now) <= deadline:
            b.update(message=f"SQL catch-up will be retried: {outcome.error}")
            b.event("Warning", "MigrationRetry", outcome.error)
            b.requeue(POLL_SECONDS * 2)
            return False
    if outcome.error is not None:
        _fail(b, spec, "deploy", "MigrationFailed", f"SQL catch-up failed: {outcome.error}", condition="Deployed")
        return False
    if outcome.in_progress:
        _backfill_running(b, migration, outcome, "catch-up")
        return False
    text = f"SQL catch-up: {len(outcome.applied_now)} repeatable file(s) ran again"
    b.update(
        migration=migration.model_copy(
            update={"caught_up_at": b.now_text, "applied": list(outcome.applied) or migration.applied}
        )
    )
    b.event("Normal", "SqlCaughtUp", text)
    return True


def _run_id(status: TorghutRolloutStatus) -> str:
    """What tells this run and attempt of the rollout from every other: a spec edit or a retry starts a new one."""
    return f"{status.started_at or status.spec_hash} attempt {status.attempt}"


def _backfilling(status: TorghutRolloutStatus) -> bool:
    """A backfill of this run is between two slices."""
    backfill = status.migration.backfill if status.migration is not None else None
    return backfill is not None and not backfill.finished


def _deploy_clock(status: TorghutRolloutStatus) -> str | None:
    """Where the deploy stage's progress deadline counts from: the stage's start, or the last progress of the
    catch-up's backfill when that is later (a long backfill that keeps moving never runs out of time)."""
    start = status.phase_started_at
    backfill = status.migration.backfill if status.migration is not None else None
    if backfill is None or start is None or parse_time(backfill.updated_at) <= parse_time(start):
        return start
    return backfill.updated_at


def _backfill_seen(b: _Builder, migration: MigrationStatus, outcome: SqlOutcome) -> MigrationStatus:
    """Record the backfill progress an apply reported (finished or not) in status.migration.backfill, with one
    event when a backfill starts and one when it finishes; never one per slice."""
    progress = outcome.backfill
    if progress is None:
        return migration
    before = migration.backfill
    running = before is not None and before.file == progress.file and not before.finished
    if outcome.error is not None and running and before is not None:
        # A failed call is no progress: the deadline keeps counting from the last slice that went through.
        progress = progress.model_copy(update={"updated_at": before.updated_at})
    if progress.finished:
        b.event("Normal", "BackfillDone", f"backfill {progress.summary()}")
    elif not running and outcome.error is None:
        b.event("Normal", "BackfillStarted", f"backfill {progress.summary()}")
    migration = migration.model_copy(update={"backfill": progress})
    b.update(migration=migration)
    return migration


def _backfill_running(b: _Builder, migration: MigrationStatus, outcome: SqlOutcome, doing: str) -> None:
    """The apply ran out of its slice in the middle of a backfill: say how far it is and start the next slice soon.
    The stage stays where it is until the backfill is done."""
    progress = outcome.backfill
    text = f"{doing}: backfill {progress.summary()}" if progress is not None else f"{doing}: SQL files still running"
    b.update(
        migration=migration.model_copy(update={"applied": list(outcome.applied) or migration.applied}),
        message=text,
    )
    b.requeue(BACKFILL_REQUEUE)


def _fresh_check(check: Check, stage: str = "verify") -> CheckStatus:
    return CheckStatus(
        name=check.name,
        stage=stage,
        provider=check.provider,
        query=check.query_text,
        threshold=check.threshold_text,
        dry_run=check.dry_run,
        waivable=check.waivable,
    )


def _record(check: Check, state: CheckStatus, m: Measurement, count: int) -> CheckStatus:
    """Fold one measurement into a check's state and judge the check (Argo Rollouts' rules, fail-closed)."""
    updates: dict[str, object] = {
        "measurements": [*state.measurements, m][-MAX_MEASUREMENTS:],
        "message": m.message,
    }
    if m.phase is Verdict.ERROR:
        updates["errors"] = state.errors + 1
        updates["consecutive_errors"] = state.consecutive_errors + 1
    else:
        updates["consecutive_errors"] = 0
        key = {
            Verdict.SUCCESSFUL: "successful",
            Verdict.FAILED: "failed",
            Verdict.INCONCLUSIVE: "inconclusive",
        }[m.phase]
        updates[key] = getattr(state, key) + 1
    new = state.model_copy(update=updates)
    if new.consecutive_errors > check.consecutive_error_limit:
        phase = Verdict.ERROR
        message = f"{new.consecutive_errors} consecutive errors (limit {check.consecutive_error_limit}): {m.message}"
    elif new.failed > check.failure_limit:
        phase = Verdict.FAILED
        message = f"{new.failed} failed measurement(s) (limit {check.failure_limit}): {m.message}"
    elif new.inconclusive > check.inconclusive_limit and not check.waivable:
        # Required evidence that keeps not showing up fails; no human can accept it in place of data.
        phase = Verdict.FAILED
        message = (
            f"required evidence missing: {new.inconclusive} inconclusive measurement(s) "
            f"(limit {check.inconclusive_limit}, not waivable): {m.message}"
        )
    elif new.inconclusive > check.inconclusive_limit:
        phase = Verdict.INCONCLUSIVE
        message = f"{new.inconclusive} inconclusive measurement(s) (limit {check.inconclusive_limit}): {m.message}"
    elif new.counted >= count and new.successful > 0:
        phase = Verdict.SUCCESSFUL
        message = f"{new.successful}/{new.counted} measurements successful; last: {m.message}"
    else:
        phase = Verdict.RUNNING
        message = f"{new.counted}/{count} measurements; last: {m.message}"
    return new.model_copy(update={"phase": phase, "message": message})


def _run_checks(
    b: _Builder, spec: TorghutRolloutSpec, checks: list[Check], obs: Observations, *, stage: str, condition: str
) -> bool:
    """Fold measurements into the checks of ``stage`` and judge them. True once every blocking check passed;
    otherwise it has failed the stage, or scheduled what comes next (a measurement, a wait, a human)."""
    by_name = {c.name: c for c in checks}
    states = {s.name: s for s in b.status.checks}
    if set(states) != set(by_name):  # e.g. a status written by an older operator: start the stage's checks over
        states = {c.name: states.get(c.name) or _fresh_check(c, stage) for c in checks}
    final = {Verdict.SUCCESSFUL, Verdict.FAILED, Verdict.ERROR, Verdict.INCONCLUSIVE}
    if obs.measurements:
        for check_name, m in obs.measurements.items():
            if check_name in states and check_name in by_name:
                before = states[check_name]
                after = _record(by_name[check_name], before, m, spec.verify.count)
                states[check_name] = after
                if after.phase in final and before.phase not in final:
                    kind = "Normal" if after.phase is Verdict.SUCCESSFUL else "Warning"
                    b.event(kind, f"Check{after.phase.value}", f"{check_name} {after.phase.value}: {after.message}")
        was_due = parse_time(b.status.next_measurement_at) if b.status.next_measurement_at else None
        b.update(next_measurement_at=format_time(next_due(was_due, b.now, parse_duration(spec.verify.interval))))
    b.update(checks=[states[c.name] for c in checks])

    blocking = [s for s in states.values() if not s.dry_run]
    broken = [s for s in blocking if s.phase in (Verdict.FAILED, Verdict.ERROR)]
    if broken:
        reason = "GateError" if all(s.phase is Verdict.ERROR for s in broken) else "GateFailed"
        text = "; ".join(f"{s.name} {s.phase.value}: {s.message}" for s in broken)
        b.condition(condition, False, reason, text)
        _fail(b, spec, stage, reason, text, condition=None)
        return False
    passed = [s for s in blocking if s.phase is Verdict.SUCCESSFUL or (s.phase is Verdict.INCONCLUSIVE and s.approved)]
    if len(passed) == len(blocking) and blocking:
        b.update(awaiting_approval=False)
        return True
    waiting = [s for s in blocking if s.phase is Verdict.INCONCLUSIVE and not s.approved]
    timeout = spec.verify.timeout
    if timeout is not None and _elapsed(b.status.phase_started_at, b.now) > parse_duration(timeout):
        pending = [s for s in blocking if s not in passed]
        text = "; ".join(f"{s.name} {s.phase.value}: {s.message}" for s in pending)
        b.condition(condition, False, "VerifyTimeout", text)
        _fail(b, spec, stage, "VerifyTimeout", f"checks not passed within {timeout}: {text}", condition=None)
        return False
    if waiting:
        text = "; ".join(f"{s.name}: {s.message}" for s in waiting)
        if not b.status.awaiting_approval:
            b.event("Warning", "AwaitingApproval", f"Inconclusive: {text}; promote to accept, abort to roll back")
        b.update(awaiting_approval=True, message=f"awaiting approval: {text}")
        b.condition(condition, False, "AwaitingApproval", text)
    due = [c.name for c in checks if states[c.name].phase in (Verdict.PENDING, Verdict.RUNNING)]
    if not due:
        return False
    wait = (parse_time(b.status.next_measurement_at) - b.now).total_seconds() if b.status.next_measurement_at else 0
    if wait <= 0 and not obs.measurements:
        b.actions.append(Measure(tuple(due)))
        return False
    if not waiting:
        done = sum(s.phase is Verdict.SUCCESSFUL for s in blocking)
        b.update(message=f"{stage}: {done}/{len(blocking)} checks passed")
    b.requeue(max(wait, 0.0) if wait > 0 else parse_duration(spec.verify.interval))
    return False


def next_due(due: datetime | None, now: datetime, interval: float) -> datetime:
    """When the measurement after the one due at ``due`` and judged at ``now`` is due: one ``interval`` after
    ``due`` (a fixed schedule, as Flagger's analysis interval: the time a measurement and its turn take is not
    added to every later one), unless that is less than half an interval away; then one interval from ``now`` (the
    schedule starts over, so two measurements are never closer than half an interval: a late turn cannot bunch
    the evidence)."""
    step = timedelta(seconds=interval)
    if due is not None and due + step - now >= step / 2:
        return due + step
    return now + step


def _expected_env(spec: TorghutRolloutSpec, status: TorghutRolloutStatus) -> dict[str, str]:
    """The trading env this rollout has set by now and must still see: every completed promotion step's variables
    (a later step's value wins) and the current step's once it is applied. While the current step's patch is on
    its way its own variables are the step's business (a failed patch is simply sent again)."""
    promo = status.promotion
    if spec.promotion is None or promo is None or status.phase is not Phase.PROMOTING:
        return {}
    env: dict[str, str] = {}
    for step in spec.promotion.steps[: promo.step]:
        env.update(step.env)
    if promo.step < len(spec.promotion.steps):
        current = spec.promotion.steps[promo.step].env
        if promo.applied:
            env.update(current)
        elif promo.patched_at is not None:
            for var in current:
                env.pop(var, None)
    return env


def _who(target: TargetState, field_name: str) -> str:
    """The managers of ``field_name`` other than the operator itself: who made the change."""
    labels = [*target.owners.get(field_name, ()), *target.owners.get("*", ())]
    others = [label for label in labels if not label.startswith(f"{FIELD_MANAGER} ")]
    return ", ".join(others) if others else "an unknown writer (no other field manager recorded)"


def _drift_text(spec: TorghutRolloutSpec, status: TorghutRolloutStatus, target: TargetState) -> str | None:
    if not target.exists:  # a target that is gone is not drift: the stage's own checks and restore handle it
        return None
    diffs = []
    if target.image != spec.target.image:
        diffs.append(f"image is {target.image} instead of {spec.target.image}, set by {_who(target, 'image')}")
    for var, value in sorted(_expected_env(spec, status).items()):
        now = target.env.get(var)
        if now != value:
            shown = "unset" if now is None else repr(now)
            diffs.append(f"{var} is {shown} instead of {value!r}, set by {_who(target, f'env:{var}')}")
    return "; ".join(diffs) if diffs else None


def _drifted(
    b: _Builder, spec: TorghutRolloutSpec, checks: list[Check], obs: Observations, *, stage: str, condition: str
) -> bool:
    """Drift is never evidence: True when the target no longer runs what this rollout set (someone else changed
    the image or a trading variable), and nothing this turn may count. onDrift Fail rolls back; Wait takes no
    measurement until the target is back, then starts the stage's checks over (a window that saw the drift must
    not count either)."""
    target = obs.target
    if target is None:
        return False
    text = _drift_text(spec, b.status, target)
    if text is None:
        if b.status.drift is not None:
            b.event("Normal", "DriftResolved", f"target back as this rollout set it; {stage} checks start over")
            delay = parse_duration(spec.verify.initial_delay)
            b.update(
                drift=None,
                checks=[_fresh_check(c, stage) for c in stage_checks(spec, checks, b.status)],
                next_measurement_at=format_time(b.now + timedelta(seconds=delay)),
                message=f"target back; {stage} checks start over",
            )
        return False
    text = f"target changed under the rollout: {text}"
    if spec.target.on_drift == "Fail":
        b.condition(condition, False, "TargetDrifted", text)
        _fail(b, spec, stage, "TargetDrifted", text, condition=None)
        return True
    if b.status.drift != text:
        b.event("Warning", "TargetDrifted", f"{text}; waiting (onDrift Wait), no measurement meanwhile")
    b.update(drift=text, message=f"waiting: {text}", awaiting_approval=False)
    b.condition(condition, False, "TargetDrifted", text)
    b.requeue(POLL_SECONDS)
    return True


def _verifying(b: _Builder, spec: TorghutRolloutSpec, checks: list[Check], obs: Observations, name: str) -> None:
    if _drifted(b, spec, checks, obs, stage="verify", condition="Verified"):
        return
    if not _run_checks(b, spec, checks, obs, stage="verify", condition="Verified"):
        return
    text = "; ".join(f"{s.name}: {s.message}" for s in b.status.checks if not s.dry_run)
    b.condition("Verified", True, "ChecksPassed", text)
    if spec.promotion is None:
        b.update(restore=None)
        b.move(Phase.SUCCEEDED, f"{spec.target.image} rolled out and verified")
        return
    b.update(promotion=PromotionStatus(step=0, step_name=spec.promotion.steps[0].name, soak_since=b.now_text))
    b.condition("Promoted", False, "Promoting")
    b.move(Phase.PROMOTING, f"verified; promoting to {spec.promotion.steps[0].name}", stage="promote")
    b.requeue(0)


def _promoting(b: _Builder, spec: TorghutRolloutSpec, checks: list[Check], obs: Observations, name: str) -> None:
    assert spec.promotion is not None
    promo = b.status.promotion or PromotionStatus()
    step = spec.promotion.steps[promo.step]
    stage = f"promote:{step.name}"
    if _drifted(b, spec, checks, obs, stage=stage, condition="Promoted"):
        return
    if not promo.applied:
        if promo.patched_at is None and not _step_may_start(b, spec, step, promo, obs):
            return
        target = obs.target
        if target is None or not target.exists:
            _fail(b, spec, stage, "TargetNotFound", "target not found", condition="Promoted")
            return
        if any(target.env.get(k) != v for k, v in step.env.items()):
            # The restore record and the patch time are in the status write that precedes the patch.
            b.actions.append(SetTargetEnv(dict(step.env)))
            b.update(
                restore=_record_env(b.status.restore, step.env, target.env),
                promotion=promo.model_copy(update={"patched_at": promo.patched_at or b.now_text}),
                message=f"applying step {step.name}: {_env_text(step.env)}",
                awaiting_approval=False,
            )
            b.requeue(POLL_SECONDS)
            return
        if target.failed_reason:
            _fail(b, spec, stage, target.failed_reason, f"step {step.name}: {target.detail}", condition="Promoted")
            return
        if not target.rolled_out:
            deadline = parse_duration(spec.deploy.progress_deadline)
            if _elapsed(promo.patched_at or b.status.phase_started_at, b.now) > deadline:
                text = f"step {step.name} not available within {spec.deploy.progress_deadline}: {target.detail}"
                _fail(b, spec, stage, "ProgressDeadlineExceeded", text, condition="Promoted")
                return
            b.update(message=f"step {step.name}: waiting for the target: {target.detail}")
            b.requeue(POLL_SECONDS)
            return
        step_checks = step.checks or checks
        b.update(
            promotion=promo.model_copy(update={"applied": True, "message": f"step {step.name} applied"}),
            checks=[_fresh_check(c, stage) for c in step_checks],
            next_measurement_at=format_time(b.now + timedelta(seconds=parse_duration(spec.verify.initial_delay))),
            phase_started_at=b.now_text,
            message=f"step {step.name} applied; re-verifying",
        )
        b.event("Normal", "StepApplied", f"step {step.name} applied: {_env_text(step.env)}")
        b.requeue(parse_duration(spec.verify.initial_delay))
        return
    if not _run_checks(b, spec, step.checks or checks, obs, stage=stage, condition="Promoted"):
        return
    completed = [*promo.completed, step.name]
    b.event("Normal", "StepPassed", f"step {step.name} verified")
    if promo.step + 1 >= len(spec.promotion.steps):
        b.update(promotion=promo.model_copy(update={"completed": completed, "message": "all steps passed"}))
        b.condition("Promoted", True, "AllStepsPassed", " -> ".join(completed))
        b.update(restore=None)
        b.move(Phase.SUCCEEDED, f"{spec.target.image} verified and promoted: {' -> '.join(completed)}")
        return
    nxt = spec.promotion.steps[promo.step + 1]
    b.update(
        promotion=PromotionStatus(
            step=promo.step + 1,
            step_name=nxt.name,
            completed=completed,
            soak_since=b.now_text,
            message=f"promoting to {nxt.name}",
        ),
        phase_started_at=b.now_text,
        message=f"step {step.name} passed; promoting to {nxt.name}",
    )
    b.requeue(0)


def _step_may_start(
    b: _Builder, spec: TorghutRolloutSpec, step: PromotionStep, promo: PromotionStatus, obs: Observations
) -> bool:
    """Soak, evidence and approval, in that order; False (with the wait scheduled) until all hold."""
    if step.required_soak_time is not None:
        soak = parse_duration(step.required_soak_time)
        soaked = _elapsed(promo.soak_since or b.status.phase_started_at, b.now)
        if soaked < soak:
            previous = promo.completed[-1] if promo.completed else "verify"
            text = f"step {step.name} soaking: {soaked:.0f}s of {step.required_soak_time} verified in {previous}"
            b.update(promotion=promo.model_copy(update={"message": text}), message=text)
            b.condition("Promoted", False, "Soaking", text)
            b.requeue(soak - soaked)
            return False
    if step.required_promotion is not None:
        evidence = obs.promotion_evidence
        if evidence is None:
            required = step.required_promotion
            if required.window is not None:
                since = format_time(b.now - timedelta(seconds=parse_duration(required.window)))
            else:
                since = b.status.started_at or b.now_text
            b.actions.append(CheckPromotionEvidence(required.mode, since, required.candidate_id))
            return False
        if not evidence.found:
            text = f"step {step.name} blocked: {evidence.message}"
            if promo.message != text:
                b.event("Warning", "MissingEvidence", text)
            b.update(promotion=promo.model_copy(update={"message": text}), message=text, awaiting_approval=False)
            b.condition("Promoted", False, "MissingEvidence", text)
            b.requeue(parse_duration(spec.verify.interval))
            return False
    if step.requires_approval and not promo.approved:
        text = f"step {step.name} awaits approval: promote to apply it"
        if not b.status.awaiting_approval:
            b.event("Normal", "AwaitingApproval", text)
        b.update(awaiting_approval=True, message=text, promotion=promo.model_copy(update={"message": text}))
        b.condition("Promoted", False, "AwaitingApproval", text)
        return False
    return True


def _record_env(restore: RestorePoint | None, env: dict[str, str], current: dict[str, str]) -> RestorePoint:
    """The restore record with the target's present values of ``env``'s variables added; a variable already
    recorded keeps its first value (the target may carry this rollout's own value by now)."""
    restore = restore or RestorePoint()
    known = set(restore.env) | set(restore.unset)
    new = [k for k in sorted(env) if k not in known]
    return restore.model_copy(
        update={
            "env": {**restore.env, **{k: current[k] for k in new if k in current}},
            "unset": [*restore.unset, *(k for k in new if k not in current)],
        }
    )


def _env_text(env: dict[str, str] | dict[str, str | None]) -> str:
    return ", ".join(f"{k}={v}" if v is not None else f"{k} unset" for k, v in sorted(env.items()))


def _has_restore(status: TorghutRolloutStatus) -> bool:
    """This rollout changed the target (image or trading env) and has not put it back yet."""
    return status.restore is not None and not status.restore.empty


def _restores_image(spec: TorghutRolloutSpec, status: TorghutRolloutStatus) -> bool:
    """An abort always restores the image; a failure does when rollback.onFailure is on."""
    restore = status.restore
    return restore is not None and restore.image is not None and (status.aborted or spec.rollback.on_failure)


def _fail(
    b: _Builder, spec: TorghutRolloutSpec, stage: str, reason: str, message: str, *, condition: str | None
) -> None:
    if condition is not None:
        b.condition(condition, False, reason, message)
    b.update(failed_stage=stage, awaiting_approval=False)
    b.event("Warning", reason, message)
    restore = b.status.restore
    if _restores_image(spec, b.status) or (restore is not None and (restore.env or restore.unset)):
        what = "the previous image and trading env" if _restores_image(spec, b.status) else "the trading env"
        b.move(
            Phase.ROLLING_BACK,
            f"{stage} failed ({reason}): {message}; restoring {what}",
            stage="rollback",
            warning=True,
        )
        b.requeue(0)
        return
    b.move(Phase.FAILED, f"{stage} failed ({reason}): {message}", warning=True)
    _say_image_kept(b, spec)


def _say_image_kept(b: _Builder, spec: TorghutRolloutSpec) -> None:
    """A failure that leaves the new image running (rollback.onFailure false) says so, loudly."""
    restore = b.status.restore
    if restore is None or restore.image is None or spec.rollback.on_failure or b.status.aborted:
        return
    text = f"{spec.target.image} left running, {restore.image} not restored: spec.rollback.onFailure is false"
    b.condition("Restored", False, "RollbackDisabled", text)
    b.event("Warning", "RollbackDisabled", text)


def _rolling_back(b: _Builder, spec: TorghutRolloutSpec, checks: list[Check], obs: Observations, name: str) -> None:
    """Put the target back the way it was before this rollout: trading env always, image on abort or when
    rollback.onFailure is on. Both patches go out in one turn; then wait until the target runs them."""
    restore = b.status.restore or RestorePoint()
    image_back = _restores_image(spec, b.status)
    target = obs.target
    if target is None or not target.exists:
        _restore_failed(b, spec, "the target is gone")
        return
    env = restore.env_changes
    acted = False
    if any(target.env.get(k) != v for k, v in env.items()):
        b.actions.append(SetTargetEnv(env))
        acted = True
    if image_back and restore.image is not None and target.image != restore.image:
        b.actions.append(SetTargetImage(restore.image))
        acted = True
    if acted:
        b.requeue(POLL_SECONDS)
        return
    what = " and ".join(
        part
        for part in (
            restore.image if image_back and restore.image else "",
            f"trading env {_env_text(env)}" if env else "",
        )
        if part
    )
    if target.rolled_out:
        kept = RestorePoint(image=None if image_back else restore.image)
        b.update(restore=None if kept.empty else kept)
        if image_back:
            b.condition("Deployed", False, "RolledBack", f"{restore.image} restored")
        b.condition("Restored", True, "Restored", f"{what or 'nothing to restore'} restored")
        done = Phase.ABORTED if b.status.aborted else Phase.ROLLED_BACK if image_back else Phase.FAILED
        b.move(done, f"{what or 'the target'} restored and available; {b.status.message}".strip("; "))
        if done is Phase.FAILED:
            _say_image_kept(b, spec)
        return
    if target.failed_reason or _elapsed(b.status.phase_started_at, b.now) > parse_duration(
        spec.deploy.progress_deadline
    ):
        _restore_failed(b, spec, f"{what} did not become available: {target.detail}")
        return
    # The message keeps saying why the rollout is rolling back; the final phase quotes it too.
    b.requeue(POLL_SECONDS)


def _restore_failed(b: _Builder, spec: TorghutRolloutSpec, why: str) -> None:
    """The loudest failure there is: the target may still run the new image or trading env. The restore record
    stays, so a retry or a spec edit tries again."""
    text = f"could not restore the target: {why}; it may still run the new image or trading env"
    b.condition("Restored", False, "RestoreFailed", text)
    b.move(Phase.FAILED, text, warning=True)
    b.event("Warning", "RestoreFailed", text)


def _idle(b: _Builder, spec: TorghutRolloutSpec, checks: list[Check], obs: Observations, name: str) -> None:
    """Terminal and paused phases wait for a verb or a spec change."""


_PHASES = {
    Phase.PENDING: _pending,
    Phase.MIGRATING: _migrating,
    Phase.DEPLOYING: _deploying,
    Phase.VERIFYING: _verifying,
    Phase.PROMOTING: _promoting,
    Phase.ROLLING_BACK: _rolling_back,
    Phase.PAUSED: _idle,
    Phase.SUCCEEDED: _idle,
    Phase.FAILED: _idle,
    Phase.ROLLED_BACK: _idle,
    Phase.ABORTED: _idle,
}


def stage_checks(spec: TorghutRolloutSpec, checks: list[Check], status: TorghutRolloutStatus) -> list[Check]:
    """The checks the current stage measures: a promotion step's own checks while it runs, else ``checks``."""
    promo = status.promotion
    steps = spec.promotion.steps if spec.promotion is not None else []
    if status.phase is Phase.PROMOTING and promo is not None and promo.step < len(steps):
        return steps[promo.step].checks or checks
    return checks


def with_outcomes(obs: Observations, **changes: object) -> Observations:
    """Observations with the outcome of the last measuring action; a verb is applied only once."""
    return replace(obs, verb=None, **changes)  # type: ignore[arg-type]


def deletion_plan(
    spec: TorghutRolloutSpec,
    status: TorghutRolloutStatus,
    target: TargetState | None,
    *,
    now: datetime,
    deleted_at: datetime,
    name: str,
) -> Plan | None:
    """What deleting the rollout must do first with ``spec.onDelete: Restore``: None when the target needs
    nothing (never changed, already restored, Succeeded, or an image kept on purpose by rollback.onFailure
    false); otherwise the plan of a rollback as if aborted at ``deleted_at``. Its phase says the outcome:
    RollingBack (act and look again), Aborted (restored), Failed (could not restore before the deadline)."""
    restore = status.restore
    if restore is None or restore.empty or status.phase is Phase.SUCCEEDED:
        return None
    kept_on_purpose = next(
        (c for c in status.conditions if c.type == "Restored" and c.reason == "RollbackDisabled"), None
    )
    if kept_on_purpose is not None and not restore.env and not restore.unset:
        return None
    rolling = status.model_copy(
        update={
            "phase": Phase.ROLLING_BACK,
            "aborted": True,
            "phase_started_at": format_time(deleted_at),
            "spec_hash": spec.spec_hash(),  # the spec as it is now; never a new run at deletion
        }
    )
    return plan(spec, [], rolling, Observations(now=now, target=target), name=name)
