"""The planner against random backfills: slices that move, slices that wait on a throttle, retryable errors
(Postgres restarting), turns whose apply never ran (an operator killed after the status write) and a target that
blips, across the migrate stage's backfill and the deploy stage's catch-up.

Properties, after every step:
- the migrate stage is not done before its backfill is, nor the deploy stage before the catch-up's;
- the rollout fails only after a retryable error outlived deploy.progressDeadline counted from the last progress,
  and then it does (an error reporting old progress is no progress);
- no event per slice: one BackfillStarted per pass at most, and an in-progress slice emits nothing else;
- every catch-up apply of the run carries the same run id; status.migration.backfill never goes backwards in a pass;
and at the end, in a calm world, the rollout reaches Verifying.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from torghut_operator.core.api.durations import parse_duration
from torghut_operator.core.api.spec import TorghutRolloutSpec
from torghut_operator.core.api.status import BackfillStatus, Phase, TorghutRolloutStatus
from torghut_operator.core.observations import Observations, SqlOutcome, TargetState
from torghut_operator.core.planner import ApplySqlMigrations, Plan, SetTargetImage, plan, with_outcomes
from torghut_operator.core.presets import effective_checks
from torghut_operator.core.timefmt import format_time, parse_time

pytestmark = pytest.mark.unit

NAME = "release"
OLD = "registry/torghut@sha256:old"
NEW = "registry/torghut@sha256:new"
TOTALS = {"migrate": 2_000}
"""Rows of each pass: the migrate stage's is short, the catch-up's (any other key) long, so random walks reach
both a finished migrate stage and a catch-up that outlives the progress deadline."""
CATCH_UP_TOTAL = 30_000
SPEC = TorghutRolloutSpec.model_validate(
    {
        "target": {"name": "torghut", "container": "torghut", "image": NEW},
        "database": {"secretRef": {"name": "db", "key": "uri"}},
        "migrate": {"sql": {"configMapRef": {"name": "pack"}}},
        "deploy": {"progressDeadline": "1m"},
        "verify": {"checks": [{"name": "rate", "postgres": {"query": "SELECT 0"}, "max": 0}]},
    }
)
DEADLINE = timedelta(seconds=parse_duration(SPEC.deploy.progress_deadline))

STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("slice"), st.integers(min_value=0, max_value=2_500)),
        st.tuples(st.just("slice"), st.integers(min_value=500, max_value=2_500)),
        st.tuples(st.just("throttled"), st.just(0)),
        st.tuples(st.just("retryable"), st.integers(min_value=1, max_value=90)),
        st.tuples(st.just("kill"), st.integers(min_value=1, max_value=60)),
        st.tuples(st.just("blip"), st.integers(min_value=1, max_value=90)),
    ),
    max_size=60,
)


@dataclass
class Sim:
    status: TorghutRolloutStatus = field(default_factory=TorghutRolloutStatus)
    now: datetime = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    image: str = OLD
    passes: list[str] = field(default_factory=list)
    """One entry per backfill pass the migrator started: 'migrate' or the catch-up's run id."""
    done: int = 0
    total: int = 0
    last_progress: datetime | None = None
    runs: set[str] = field(default_factory=set)
    started_events: int = 0

    def progress(self, *, throttled: bool) -> BackfillStatus:
        finished = self.done >= self.total
        return BackfillStatus(
            file="0004_backfill_routes.sql",
            table="public.executions",
            rows_done=min(self.done, self.total),
            rows_total=self.total,
            batches=self.done // 100,
            batch_size=100,
            rows_per_second=100.0,
            eta_seconds=None if finished else (self.total - self.done) // 100,
            throttled="a transaction open for 75s (pid 4242)" if throttled and not finished else None,
            finished=finished,
            updated_at=format_time(self.now),
        )

    def apply(self, action: ApplySqlMigrations, step: str, amount: int) -> SqlOutcome:
        key = action.run if action.catch_up and action.run is not None else "migrate"
        if action.catch_up:
            self.runs.add(key)
        if not self.passes or self.passes[-1] != key:
            self.passes.append(key)
            self.done = 0
            self.total = TOTALS.get(key, CATCH_UP_TOTAL)
        self.now += timedelta(seconds=10)  # one slice
        if step == "retryable":  # the migrator reports the progress it last saw along with the error
            return SqlOutcome(
                backfill=self.progress(throttled=False) if self.done else None,
                error="57P01 terminating connection due to administrator command",
                retryable=True,
            )
        if step == "slice":
            self.done += max(amount, 1)
        progress = self.progress(throttled=step == "throttled")
        self.last_progress = self.now  # a slice that returned, moving or throttled, is progress
        return SqlOutcome(backfill=progress, in_progress=not progress.finished)

    def step(self, step: str, amount: int) -> None:
        """One turn: plan, act (unless killed), feed the outcome back."""
        rolled_out = step != "blip"
        obs = Observations(now=self.now, target=TargetState(exists=True, image=self.image, rolled_out=rolled_out))
        before = self.status
        for _ in range(4):
            p = plan(SPEC, effective_checks(SPEC), self.status, obs, name=NAME)
            self.check(before, p.status, p, obs)
            self.status = p.status
            if step == "kill":
                break
            apply = next((a for a in p.actions if isinstance(a, ApplySqlMigrations)), None)
            for a in p.actions:
                if isinstance(a, SetTargetImage):
                    self.image = a.image
            if apply is None:
                break
            outcome = self.apply(apply, step, amount)
            # the outcome of this turn's apply (the reconciler keeps the turn's clock; the slice took 10 s)
            obs = with_outcomes(obs, **{"sql_catch_up" if apply.catch_up else "sql": outcome})
        self.now += timedelta(seconds=amount if step in ("kill", "blip", "retryable") else 1)

    def check(self, before: TorghutRolloutStatus, after: TorghutRolloutStatus, p: Plan, obs: Observations) -> None:
        outcome = obs.sql or obs.sql_catch_up
        if after.phase in (Phase.DEPLOYING, Phase.VERIFYING) and before.phase is Phase.MIGRATING:
            assert "migrate" in self.passes
            assert self.passes[-1] != "migrate" or self.done >= self.total, "left migrate with the backfill unfinished"
        if after.phase is Phase.VERIFYING and before.phase is Phase.DEPLOYING:
            assert self.runs, "verifying without a catch-up"
            assert self.passes[-1] in self.runs
            assert self.done >= self.total, "verifying before the catch-up's backfill finished"
        stage_start = parse_time(before.phase_started_at or format_time(obs.now))
        since = max(self.last_progress or stage_start, stage_start)
        if after.phase in (Phase.FAILED, Phase.ROLLING_BACK):
            assert before.phase is Phase.DEPLOYING, after.message
            assert obs.now - since > DEADLINE, f"failed while making progress: {after.message}"
        failing = obs.sql_catch_up is not None and obs.sql_catch_up.error is not None
        if before.phase is Phase.DEPLOYING and failing and obs.now - since > DEADLINE:
            assert after.phase is Phase.ROLLING_BACK, f"still waiting {obs.now - since} after the last progress"
        events = [e.reason for e in p.events]
        self.started_events += events.count("BackfillStarted")
        assert self.started_events <= len(self.passes)
        if outcome is not None and outcome.in_progress:
            assert set(events) <= {"BackfillStarted"}, events
        old = before.migration.backfill if before.migration else None
        new = after.migration.backfill if after.migration else None
        if old is not None and new is not None and not old.finished and new.file == old.file:
            assert new.rows_done >= old.rows_done


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS)
@example(steps=[("slice", 2_500), ("slice", 0), *[("throttled", 0)] * 8, ("retryable", 5)])
@example(steps=[("slice", 2_500), ("slice", 0), *[("slice", 1_000)] * 8, ("blip", 5), ("retryable", 90)])
@example(steps=[*[("slice", 2_500)] * 5, *[("retryable", 90)] * 3])
def test_backfills_hold_their_stage_and_never_fail_while_moving(steps: list[tuple[str, int]]) -> None:
    sim = Sim()
    for step, amount in steps:
        sim.step(step, amount)
        if sim.status.phase.terminal or sim.status.phase is Phase.ROLLING_BACK:
            return
    for _ in range(200):  # a calm world: slices that move
        if sim.status.phase is Phase.VERIFYING:
            break
        sim.step("slice", 1_000)
    assert sim.status.phase is Phase.VERIFYING, sim.status.message
    assert len(sim.runs) == 1, sim.runs
    assert sim.status.migration is not None
    assert sim.status.migration.backfill is not None
    assert sim.status.migration.backfill.finished
