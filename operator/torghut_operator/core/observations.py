"""What the shell observed of the world, handed to the planner as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from torghut_operator.core.api.status import AppliedFile, BackfillStatus, Measurement


@dataclass(frozen=True)
class TargetState:
    """The target workload as the planner needs it, whatever its kind."""

    exists: bool
    image: str | None = None
    rolled_out: bool = False
    """The controller has observed the current template and every replica runs it and is available."""
    failed_reason: str | None = None
    """Why the target's own controller gave up on the rollout (e.g. ProgressDeadlineExceeded)."""
    detail: str = ""
    env: dict[str, str] = field(default_factory=dict)
    """Plain-value environment of the target container (valueFrom entries are left out)."""
    owners: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """The field managers of ``image`` and of each ``env:<NAME>`` (``*``: of the whole containers list), as
    ``"<manager> (<operation> <time>)"``: who to name when one of them changed under a rollout."""


@dataclass(frozen=True)
class JobState:
    name: str
    exists: bool
    succeeded: bool = False
    failed: bool = False
    reason: str = ""
    message: str = ""
    logs: str = ""
    """The last lines of a failed Job's pod, secrets removed (read only once the Job failed)."""


@dataclass(frozen=True)
class Peer:
    """Another TorghutRollout in the namespace on the same target."""

    name: str
    created: str
    phase: str
    active: bool


@dataclass(frozen=True)
class SqlOutcome:
    applied: tuple[AppliedFile, ...] = ()
    """Every file of the ConfigMap recorded as applied, whenever it was."""
    applied_now: tuple[str, ...] = ()
    """The files this call applied."""
    skipped: tuple[str, ...] = ()
    error: str | None = None
    retryable: bool = False
    """The error may go away by itself (lock busy, connection lost): try again, don't fail."""
    backfill: BackfillStatus | None = None
    """The last backfill this call ran batches of, finished or not."""
    in_progress: bool = False
    """The call ran out of its time slice in the middle of a backfill: call again, it resumes."""


@dataclass(frozen=True)
class ExpectationOutcome:
    name: str
    passed: bool
    message: str
    error: bool = False
    """The check could not be made (connection, timeout, bad query); never passed."""


@dataclass(frozen=True)
class PromotionEvidence:
    found: bool
    message: str


@dataclass(frozen=True)
class Observations:
    now: datetime
    verb: str | None = None
    peers: tuple[Peer, ...] = ()
    target: TargetState | None = None
    job: JobState | None = None
    sql: SqlOutcome | None = None
    sql_catch_up: SqlOutcome | None = None
    """The outcome of re-running the repeatable SQL files after the new image is available (deploy stage)."""
    expectations: tuple[ExpectationOutcome, ...] | None = None
    measurements: dict[str, Measurement] = field(default_factory=dict)
    promotion_evidence: PromotionEvidence | None = None
