"""The Torghut facts the owners' checklist asks for (route null rate, research table writes, the first lane runs
with their gate decisions), as values; `adapters.postgres.torghut_facts` reads them, `evidence.report` shows them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from torghut_operator.core.api.status import TorghutRolloutStatus
from torghut_operator.core.timefmt import parse_time

LANE_RUNS = 3
"""Lane runs shown: the checklist asks for the first three after the release."""
REFRESH_HOURS = 2
"""After a run ends, the operator refreshes the report until LANE_RUNS lane runs exist, for at most this long."""


# ---------------------------------------------------------------------------------------------------------------
# Torghut facts


@dataclass(frozen=True)
class Unavailable:
    """A fact that could not be collected, and why (no DSN or password in ``reason``)."""

    reason: str

    def __str__(self) -> str:
        return f"unavailable: {self.reason}"


@dataclass(frozen=True)
class RouteNullRate:
    """Executions created in the window, and those whose expected or actual adapter is NULL, empty or 'unknown'."""

    executions: int
    unset: int

    @property
    def rate(self) -> float | None:
        return self.unset / self.executions if self.executions else None


@dataclass(frozen=True)
class TableWrites:
    """Rows of one research_* table created in the window, and in total."""

    table: str
    in_window: int
    total: int


@dataclass(frozen=True)
class TableUnavailable:
    """A research_* table whose writes could not be counted, and why."""

    table: str
    reason: str

    def __str__(self) -> str:
        return f"unavailable: {self.reason}"


@dataclass(frozen=True)
class GateDecision:
    """A candidate of a lane run and its research_promotions row (``decision_action`` None: no row)."""

    candidate_id: str
    decision_action: str | None = None
    requested_mode: str | None = None
    approved_mode: str | None = None
    approve_reason: str | None = None
    deny_reason: str | None = None
    patch_ref: str | None = None

    @property
    def reason(self) -> str | None:
        return self.approve_reason or self.deny_reason


@dataclass(frozen=True)
class LaneRun:
    run_id: str
    status: str
    strategy_id: str | None
    created_at: datetime
    decisions: tuple[GateDecision, ...] = ()


@dataclass(frozen=True)
class TorghutFacts:
    since: datetime
    collected_at: datetime
    route_null_rate: RouteNullRate | Unavailable
    research_writes: tuple[TableWrites | TableUnavailable, ...] | Unavailable
    """One entry per research_* table that exists (those of migration 0006, then the later ones), by name."""
    lane_runs: tuple[LaneRun, ...] | Unavailable
    """The first lane runs created in the window, oldest first."""


def facts_since(status: TorghutRolloutStatus) -> datetime | None:
    """Where the facts' window starts: when the new image was deployed (the Deployed condition turned True), else
    when the run started; None before either."""
    deployed = next((c for c in status.conditions if c.type == "Deployed" and c.status == "True"), None)
    if deployed is not None:
        return parse_time(deployed.last_transition_time)
    return parse_time(status.started_at) if status.started_at else None


def lane_runs_seen(facts: TorghutFacts | None) -> int | None:
    """Lane runs the facts hold (None: not collected or unavailable)."""
    if facts is None or isinstance(facts.lane_runs, Unavailable):
        return None
    return len(facts.lane_runs)
