"""What the evidence ledger keeps, as values: a run's reference, its measurements and its stage decisions, and the
pure step from a status change to the rows recorded (the Postgres side is `adapters.postgres.ledger`)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from torghut_operator.core.api.status import CheckStatus, Measurement, Phase, TorghutRolloutStatus
from torghut_operator.core.planner import Event
from torghut_operator.core.timefmt import parse_time

# ---------------------------------------------------------------------------------------------------------------
# Rows


def _require_aware(moment: datetime, field: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{field} must be timezone-aware, got {moment.isoformat()}")


def query_hash(query: str) -> str:
    """sha256 (lower-case hex) of the query text's UTF-8 bytes, as stored in measurements.query_hash."""
    return hashlib.sha256(query.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RolloutRef:
    """Which run of which TorghutRollout the rows belong to."""

    uid: str
    name: str
    namespace: str
    attempt: int
    spec_hash: str


@dataclass(frozen=True)
class LedgerMeasurement:
    """One measurement of one check, as recorded."""

    stage: str
    check_name: str
    provider: str
    query: str
    threshold: str
    verdict: str
    measured_at: datetime
    value: str | None = None
    message: str = ""

    def __post_init__(self) -> None:
        _require_aware(self.measured_at, "measured_at")

    @property
    def query_hash(self) -> str:
        return query_hash(self.query)

    @classmethod
    def from_status(cls, check: CheckStatus, measurement: Measurement) -> LedgerMeasurement:
        return cls(
            stage=check.stage,
            check_name=check.name,
            provider=check.provider,
            query=check.query,
            threshold=check.threshold,
            verdict=measurement.phase.value,
            measured_at=parse_time(measurement.at),
            value=measurement.value,
            message=measurement.message,
        )


@dataclass(frozen=True)
class LedgerDecision:
    """One phase transition: ``stage`` is the stage that produced it (or, leaving Pending, the one entered)."""

    from_phase: str
    to_phase: str
    stage: str
    reason: str
    decided_at: datetime
    message: str = ""

    def __post_init__(self) -> None:
        _require_aware(self.decided_at, "decided_at")


@dataclass(frozen=True)
class MeasurementRecord:
    """A row of torghut_rollout.measurements."""

    rollout: RolloutRef
    measurement: LedgerMeasurement
    query_hash: str
    recorded_at: datetime


@dataclass(frozen=True)
class DecisionRecord:
    """A row of torghut_rollout.stage_decisions."""

    rollout: RolloutRef
    decision: LedgerDecision
    recorded_at: datetime


# ---------------------------------------------------------------------------------------------------------------
# From status to rows (pure): what the reconciler records after writing a new status


def status_measurements(status: TorghutRolloutStatus) -> list[LedgerMeasurement]:
    """Every measurement still held in ``status``, oldest first. Recording them all on each change is idempotent
    and heals a crash between writing status and recording evidence."""
    rows = [LedgerMeasurement.from_status(c, m) for c in status.checks for m in c.measurements]
    return sorted(rows, key=lambda r: (r.measured_at, r.check_name))


_PHASES = {p.value for p in Phase}
_STEP_EVENTS = frozenset({"StepApplied", "StepPassed"})
_MOVE = re.compile(r"^(?P<from>[A-Za-z]+) -> (?P<to>[A-Za-z]+): (?P<message>.*)$", re.DOTALL)


def transitions(
    before: TorghutRolloutStatus, after: TorghutRolloutStatus, events: Sequence[Event] = ()
) -> list[LedgerDecision]:
    """The phase transitions of one planner step from ``before`` to ``after``, given the step's ``events``.

    One step may move twice (the retry verb: Failed -> Pending -> Migrating); the planner's phase events (reason
    = the new phase, message ``"<from> -> <to>: <why>"``) name each move. A promotion step applied or passed is a
    decision within Promoting (stage ``promote:<step>``). A decision's reason is the non-phase
    event just before its move (``GateFailed``, ``MigrationFailed``...), else ``Verb`` for the first move of a
    step that handled a verb, else the new phase. Without phase events, a changed phase (or a new attempt) is one
    decision. ``decided_at`` is ``after.phase_started_at``, so recording the same step twice stores one row."""
    if after.phase_started_at is None:
        return []
    decided_at = parse_time(after.phase_started_at)
    verb = after.last_action is not None and after.last_action != before.last_action
    moves: list[LedgerDecision] = []
    cause: str | None = None
    stage = before.stage
    for event in events:
        if event.reason in _STEP_EVENTS and before.promotion is not None:
            moves.append(
                LedgerDecision(
                    from_phase=Phase.PROMOTING.value,
                    to_phase=Phase.PROMOTING.value,
                    stage=f"promote:{before.promotion.step_name}",
                    reason=event.reason,
                    decided_at=decided_at,
                    message=event.message,
                )
            )
            continue
        match = _MOVE.match(event.message)
        if event.reason not in _PHASES or match is None or match["to"] != event.reason:
            if event.reason != "Verb":
                cause = event.reason
            continue
        to_stage = after.stage if event.reason == after.phase.value else ""
        moves.append(
            LedgerDecision(
                from_phase=match["from"],
                to_phase=event.reason,
                stage=stage or to_stage,
                reason=cause or ("Verb" if verb and not moves else event.reason),
                decided_at=decided_at,
                message=match["message"],
            )
        )
        cause = None
        stage = to_stage
    if not moves and (before.phase != after.phase or before.attempt != after.attempt):
        moves.append(
            LedgerDecision(
                from_phase=before.phase.value,
                to_phase=after.phase.value,
                stage=before.stage or after.stage,
                reason=cause or ("Verb" if verb else after.phase.value),
                decided_at=decided_at,
                message=after.message,
            )
        )
    return moves
