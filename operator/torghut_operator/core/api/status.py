"""The TorghutRollout status: everything the operator knows about a run, so a restarted operator resumes from
it. Every field here is declared in the CRD's status schema, or the API server would silently prune it."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from torghut_operator.core.api.spec import ApiModel
from torghut_operator.core.timefmt import span

MAX_MEASUREMENTS = 10
"""Measurements kept per check in status; the evidence ledger keeps them all."""


class Phase(StrEnum):
    PENDING = "Pending"
    MIGRATING = "Migrating"
    DEPLOYING = "Deploying"
    VERIFYING = "Verifying"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    PROMOTING = "Promoting"
    PAUSED = "Paused"
    ABORTED = "Aborted"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_PHASES


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.ROLLED_BACK, Phase.ABORTED})


class Verdict(StrEnum):
    """Argo Rollouts' vocabulary. Only Successful ever lets a stage advance."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


class Condition(ApiModel):
    """metav1.Condition."""

    type: str
    status: str
    observed_generation: int | None = None
    last_transition_time: str
    reason: str
    message: str = ""


class Measurement(ApiModel):
    phase: Verdict
    at: str = Field(description="When the measurement finished (RFC 3339).")
    value: str | None = Field(default=None, description="The measured value as text; absent when there was none.")
    samples: int | None = None
    message: str = ""


class CheckStatus(ApiModel):
    name: str
    stage: str
    provider: str
    query: str
    threshold: str
    phase: Verdict = Verdict.PENDING
    dry_run: bool = False
    waivable: bool = Field(default=True, description="The promote verb may accept an Inconclusive verdict.")
    successful: int = 0
    failed: int = 0
    inconclusive: int = 0
    errors: int = 0
    consecutive_errors: int = 0
    message: str = ""
    approved: bool = Field(default=False, description="An Inconclusive verdict accepted by the promote verb.")
    measurements: list[Measurement] = Field(default_factory=list)

    @property
    def counted(self) -> int:
        """Measurements that count toward verify.count; errors are retried, not counted."""
        return self.successful + self.failed + self.inconclusive


class AppliedFile(ApiModel):
    name: str
    checksum: str
    applied_at: str


class BackfillStatus(ApiModel):
    """Progress of the backfill file the migrator ran last (header ``-- torghut-rollout: backfill``)."""

    file: str = Field(description="ConfigMap key of the backfill file.")
    table: str = Field(description="The table it walks, schema-qualified.")
    rows_done: int = Field(description="Rows covered by committed batches.")
    rows_total: int = Field(description="Rows to cover (an estimate while running; at least rowsDone).")
    batches: int = Field(description="Batches committed.")
    batch_size: int = Field(
        description="Size of the next batch (it adapts to spec.migrate.sql.backfill.batchDuration)."
    )
    rows_per_second: float = Field(description="Rows per second over the current pass.")
    eta_seconds: int | None = Field(default=None, description="Seconds left at the current rate; absent when unknown.")
    throttled: str | None = Field(default=None, description="Why it is waiting right now, when it is.")
    finished: bool = Field(default=False, description="Every batch is done.")
    updated_at: str = Field(description="When this progress was recorded (RFC 3339).")

    @property
    def percent(self) -> int:
        """Whole percent done, rounded down: 100 only once finished (or with nothing to do), never before."""
        if self.finished or self.rows_total <= 0:
            return 100
        return min(99, 100 * max(self.rows_done, 0) // self.rows_total)

    def summary(self) -> str:
        """``0004_x.sql: 45% (450,000 / 1,000,000 rows), 12,000 rows/s, ETA 46s; throttled: ...`` while it runs,
        ``0004_x.sql: done, 1,000,000 rows in 200 batches, 12,000 rows/s`` once finished."""
        rate = f"{self.rows_per_second:,.0f} rows/s"
        if self.finished:
            return f"{self.file}: done, {self.rows_done:,} rows in {self.batches:,} batches, {rate}"
        text = f"{self.file}: {self.percent}% ({self.rows_done:,} / {self.rows_total:,} rows), {rate}"
        if self.eta_seconds is not None:
            text += f", ETA {span(self.eta_seconds)}"
        if self.throttled:
            text += f"; throttled: {self.throttled}"
        return text


class MigrationStatus(ApiModel):
    mode: str = ""
    job_name: str | None = None
    applied: list[AppliedFile] = Field(default_factory=list)
    message: str = ""
    completed_at: str | None = None
    caught_up_at: str | None = Field(
        default=None,
        description="When the repeatable SQL files ran again after the new image became available (sql mode).",
    )
    backfill: BackfillStatus | None = Field(
        default=None, description="Progress of the backfill file running now, or of the last one finished."
    )
    job_logs: str | None = Field(
        default=None, description="The last lines of the failed migration Job's pod (secrets removed)."
    )


class PromotionStatus(ApiModel):
    step: int = Field(default=0, description="Index of the current step.")
    step_name: str = ""
    applied: bool = Field(default=False, description="The current step's env is set on the target.")
    approved: bool = Field(default=False, description="The promote verb approved the current step.")
    patched_at: str | None = Field(
        default=None, description="When the current step's env was first written to the target (RFC 3339)."
    )
    soak_since: str | None = Field(
        default=None,
        description="When the previous stage (verify or the previous step) passed; a step's soak counts from it.",
    )
    completed: list[str] = Field(default_factory=list, description="Steps that passed, in order.")
    message: str = ""


class RestorePoint(ApiModel):
    """What the target looked like before this rollout first changed it. Written in the same status write that
    precedes the first patch, kept across spec edits, new runs, retries and restarts, and cleared only once the
    target is back to it (or the rollout Succeeded and the change is wanted)."""

    image: str | None = Field(default=None, description="The target container's image before the first image patch.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Values, before the first change, of the variables this rollout changed."
    )
    unset: list[str] = Field(
        default_factory=list, description="Variables this rollout set that the target container did not have."
    )

    @property
    def env_changes(self) -> dict[str, str | None]:
        """The env patch that puts the variables back (None removes a variable)."""
        return {**self.env, **dict.fromkeys(self.unset)}

    @property
    def empty(self) -> bool:
        return self.image is None and not self.env and not self.unset


class LastAction(ApiModel):
    verb: str
    at: str
    result: str


class TorghutRolloutStatus(ApiModel):
    phase: Phase = Phase.PENDING
    stage: str = Field(default="", description="migrate, deploy, verify or rollback while one runs.")
    message: str = ""
    observed_generation: int | None = None
    spec_hash: str | None = None
    attempt: int = 1
    image: str | None = Field(default=None, description="The image this run rolls out.")
    previous_image: str | None = None
    started_at: str | None = None
    phase_started_at: str | None = None
    completed_at: str | None = None
    paused_from: Phase | None = None
    paused_by: str | None = Field(default=None, description="spec (spec.paused) or verb (the pause verb).")
    aborted: bool = False
    failed_stage: str | None = None
    blocked_by: str | None = None
    awaiting_approval: bool = False
    drift: str | None = Field(
        default=None,
        description="Set while the target differs from what this rollout set (spec.target.onDrift Wait): what, who.",
    )
    migration: MigrationStatus | None = None
    checks: list[CheckStatus] = Field(default_factory=list)
    promotion: PromotionStatus | None = None
    restore: RestorePoint | None = Field(
        default=None, description="What every failure restores: the image and trading env before this rollout."
    )
    next_measurement_at: str | None = None
    last_action: LastAction | None = None
    conditions: list[Condition] = Field(default_factory=list)
