"""The planner against random bad days: interleavings of verbs, spec edits, failing and stalling targets, errors,
missing evidence and operator kills (a status write whose actions never ran), driven against a simulated target.

Properties, after every step:
- no failure phase (Failed, RolledBack, Aborted) with a trading env or image this rollout set, unless the status
  says loudly that it could not restore (condition Restored=False);
- the restore record is in the status written before any patch that changes the target;
- nothing is applied twice (an image or env patch that is already in place, a Job that already exists);
and at the end, in a calm world, every rollout reaches a terminal phase: no phase without a way out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torghut_operator.core.api.spec import TorghutRolloutSpec
from torghut_operator.core.api.status import Measurement, Phase, TorghutRolloutStatus, Verdict
from torghut_operator.core.observations import JobState, Observations, PromotionEvidence, TargetState
from torghut_operator.core.planner import (
    CheckPromotionEvidence,
    CreateMigrationJob,
    Measure,
    Plan,
    SetTargetEnv,
    SetTargetImage,
    job_name,
    next_due,
    plan,
    with_outcomes,
)
from torghut_operator.core.presets import effective_checks
from torghut_operator.core.timefmt import format_time

pytestmark = pytest.mark.unit

NAME = "release"
OLD = "registry/torghut@sha256:old"
ORIGINAL_ENV = {"TRADING_MODE": "paper", "OTHER": "kept"}
EXAMPLES = 400


def _spec(image: str, *, rollback: bool = True, soak: str | None = None) -> TorghutRolloutSpec:
    live_step: dict[str, Any] = {
        "name": "canary",
        "env": {"TRADING_MODE": "live", "TRADING_CAPITAL_FRACTION": "0.10"},
        "requiredPromotion": {"mode": "live"},
        "requiresApproval": True,
    }
    if soak is not None:
        live_step["requiredSoakTime"] = soak
    return TorghutRolloutSpec.model_validate(
        {
            "target": {"name": "torghut", "container": "torghut", "image": image},
            "database": {"secretRef": {"name": "db", "key": "uri"}},
            "migrate": {"job": {"command": ["alembic", "upgrade", "heads"]}},
            "deploy": {"progressDeadline": "5m"},
            "verify": {
                "interval": "1s",
                "count": 1,
                "timeout": "30m",
                "checks": [
                    {"name": "rate", "postgres": {"query": "SELECT 0"}, "max": 0, "inconclusiveLimit": 1},
                ],
            },
            "promotion": {
                "steps": [
                    {"name": "paper", "env": {"TRADING_MODE": "paper"}, "requiredPromotion": {"mode": "paper"}},
                    live_step,
                    {
                        "name": "live",
                        "env": {"TRADING_MODE": "live", "TRADING_CAPITAL_FRACTION": "1.0"},
                        "requiredPromotion": {"mode": "live"},
                    },
                ]
            },
            "rollback": {"onFailure": rollback},
        }
    )


SPECS = [
    _spec("registry/torghut@sha256:new"),
    _spec("registry/torghut@sha256:newer"),
    _spec("registry/torghut@sha256:new", rollback=False),
    _spec("registry/torghut@sha256:newest", soak="2m"),
]

STEPS = st.sampled_from(
    [
        "tick",
        "tick",
        "tick",
        "kill",
        "rollout",
        "rollout",
        "stall",
        "target-fails",
        "job-ok",
        "job-fails",
        "good",
        "bad",
        "error",
        "nodata",
        "evidence",
        "no-evidence",
        "abort",
        "retry",
        "promote",
        "pause",
        "resume",
        "edit-0",
        "edit-1",
        "edit-2",
        "edit-3",
    ]
)


@dataclass
class Sim:
    """The target, the migration Jobs and the gates, as the planner's observations see them."""

    spec: TorghutRolloutSpec
    status: TorghutRolloutStatus = field(default_factory=TorghutRolloutStatus)
    now: datetime = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    image: str = OLD
    env: dict[str, str] = field(default_factory=lambda: dict(ORIGINAL_ENV))
    rolled_out: bool = True
    failed: str | None = None
    jobs: dict[str, str] = field(default_factory=dict)
    job_outcome: str = "running"
    measurement: Verdict = Verdict.SUCCESSFUL
    evidence: bool = True
    ever_changed: bool = False
    trace: list[str] = field(default_factory=list)

    def target(self) -> TargetState:
        return TargetState(
            exists=True,
            image=self.image,
            rolled_out=self.rolled_out,
            failed_reason=self.failed,
            detail="simulated",
            env=dict(self.env),
        )

    def job(self) -> JobState:
        name = job_name(NAME, self.status.spec_hash or "", self.status.attempt)
        state = self.jobs.get(name)
        return JobState(name, exists=state is not None, succeeded=state == "ok", failed=state == "failed")

    def turn(self, verb: str | None = None, *, killed: bool = False) -> None:
        """One reconcile turn as the shell runs it: plan, persist, act, feed outcomes back."""
        obs = Observations(now=self.now, verb=verb, target=self.target(), job=self.job())
        for _ in range(8):
            result = plan(self.spec, effective_checks(self.spec), self.status, obs, name=NAME, generation=1)
            self.status = result.status  # persisted before any action
            self.trace.append(f"{result.status.phase.value}: {result.status.message} {result.actions}")
            if killed:
                return
            outcomes = self._act(result)
            if outcomes is None:
                return
            obs = with_outcomes(obs, **outcomes)

    def _act(self, result: Plan) -> dict[str, object] | None:
        outcomes: dict[str, object] = {}
        for action in result.actions:
            if isinstance(action, SetTargetImage):
                assert self.image != action.image, f"image {action.image} patched twice\n{self.log()}"
                self._assert_recorded_before(action)
                self.image, self.rolled_out, self.failed = action.image, False, None
                self.ever_changed = True
            elif isinstance(action, SetTargetEnv):
                assert any(self.env.get(k) != v for k, v in action.env.items()), f"env patched twice\n{self.log()}"
                self._assert_recorded_before(action)
                for key, value in action.env.items():
                    if value is None:
                        self.env.pop(key, None)
                    else:
                        self.env[key] = value
                self.rolled_out, self.failed = False, None
                self.ever_changed = True
            elif isinstance(action, CreateMigrationJob):
                assert action.name not in self.jobs, f"Job {action.name} created twice\n{self.log()}"
                self.jobs[action.name] = self.job_outcome
            elif isinstance(action, Measure):
                outcomes["measurements"] = {
                    name: Measurement(phase=self.measurement, at=format_time(self.now), value="0", message="sim")
                    for name in action.checks
                }
            elif isinstance(action, CheckPromotionEvidence):
                outcomes["promotion_evidence"] = PromotionEvidence(self.evidence, "sim evidence")
        if not outcomes:
            return None
        return outcomes

    def _assert_recorded_before(self, action: SetTargetImage | SetTargetEnv) -> None:
        restore = self.status.restore
        if isinstance(action, SetTargetImage):
            assert restore is not None, f"image patched without a restore record\n{self.log()}"
            if action.image != restore.image:  # a patch forward, not the restore itself
                assert restore.image == OLD, f"restore record lost the original image\n{self.log()}"
            return
        restoring = restore is not None and action.env == restore.env_changes
        if not restoring:
            assert restore is not None, f"env patched without a restore record\n{self.log()}"
            recorded = set(restore.env) | set(restore.unset)
            assert set(action.env) <= recorded, f"env {action.env} patched before it was recorded\n{self.log()}"
            for key in recorded:
                assert restore.env.get(key) == ORIGINAL_ENV.get(key), f"record of {key} is not original\n{self.log()}"

    def log(self) -> str:
        return "\n".join(self.trace[-30:])

    def step(self, what: str) -> None:
        verbs = {"abort", "retry", "promote", "pause", "resume"}
        if what in verbs:
            self.turn(what)
        elif what == "tick":
            self.now += timedelta(seconds=45)
            self.turn()
        elif what == "kill":
            self.now += timedelta(seconds=1)
            self.turn(killed=True)
        elif what == "rollout":
            self.rolled_out, self.failed = True, None
            self.turn()
        elif what == "stall":
            self.rolled_out = False
        elif what == "target-fails":
            self.rolled_out, self.failed = False, "ProgressDeadlineExceeded"
            self.turn()
        elif what in ("job-ok", "job-fails"):
            self.job_outcome = "ok" if what == "job-ok" else "failed"
            self.jobs = dict.fromkeys(self.jobs, self.job_outcome)
            self.turn()
        elif what in ("good", "bad", "error", "nodata"):
            self.measurement = {
                "good": Verdict.SUCCESSFUL,
                "bad": Verdict.FAILED,
                "error": Verdict.ERROR,
                "nodata": Verdict.INCONCLUSIVE,
            }[what]
        elif what in ("evidence", "no-evidence"):
            self.evidence = what == "evidence"
        elif what.startswith("edit-"):
            self.spec = SPECS[int(what.split("-")[1])]
            self.turn()
        self.check_invariants()

    def check_invariants(self) -> None:
        s = self.status
        restored = next((c for c in s.conditions if c.type == "Restored"), None)
        loud = restored is not None and restored.status == "False"
        if s.phase in (Phase.ROLLED_BACK, Phase.ABORTED, Phase.FAILED) and not loud:
            assert self.env == ORIGINAL_ENV, f"{s.phase.value} with trading env {self.env}\n{self.log()}"
            assert self.image == OLD, f"{s.phase.value} with image {self.image}\n{self.log()}"
        if s.phase is Phase.FAILED and loud:
            assert restored is not None
            assert restored.reason in ("RestoreFailed", "RollbackDisabled"), restored
            if restored.reason == "RollbackDisabled":  # only the image may stay; the trading env never does
                assert self.env == ORIGINAL_ENV, f"RollbackDisabled with trading env {self.env}\n{self.log()}"
            ready = next(c for c in s.conditions if c.type == "Ready")
            assert ready.reason == restored.reason

    def calm_down(self) -> None:
        """No more faults: every way out must lead to a terminal phase."""
        self.failed, self.measurement, self.evidence, self.job_outcome = None, Verdict.SUCCESSFUL, True, "ok"
        self.jobs = dict.fromkeys(self.jobs, "ok")
        for _ in range(300):
            if self.status.phase.terminal:
                return
            self.rolled_out = True
            verb = None
            if self.status.phase is Phase.PAUSED:
                verb = "resume"
            elif self.status.awaiting_approval:
                verb = "promote"
            self.now += timedelta(seconds=30)
            self.turn(verb)
            self.check_invariants()
        raise AssertionError(f"no way out of {self.status.phase.value}: {self.status.message}\n{self.log()}")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=st.integers(min_value=0, max_value=len(SPECS) - 1), steps=st.lists(STEPS, max_size=60))
def test_random_bad_days_never_end_with_live_trading_or_without_a_way_out(first: int, steps: list[str]) -> None:
    sim = Sim(SPECS[first])
    sim.turn()
    for what in steps:
        sim.step(what)
    sim.calm_down()
    if sim.status.phase is not Phase.SUCCEEDED:
        sim.check_invariants()


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(steps=st.lists(STEPS, max_size=40), abort_at=st.integers(min_value=0, max_value=40))
def test_abort_from_anywhere_restores_the_image_and_the_trading_env(steps: list[str], abort_at: int) -> None:
    sim = Sim(SPECS[0])
    sim.turn()
    for what in steps[:abort_at]:
        sim.step(what)
    if sim.status.phase.terminal:
        return
    sim.step("abort")
    sim.calm_down()
    assert sim.status.phase in (Phase.ABORTED, Phase.FAILED), sim.log()
    restored = next((c for c in sim.status.conditions if c.type == "Restored"), None)
    if sim.status.phase is Phase.ABORTED:
        assert sim.env == ORIGINAL_ENV, sim.log()
        assert sim.image == OLD, sim.log()
    else:
        assert restored is not None, sim.log()
        assert restored.reason == "RestoreFailed", sim.log()


@given(
    due=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)),
    late=st.floats(min_value=0, max_value=7200, allow_nan=False),
    interval=st.floats(min_value=0.001, max_value=3600, allow_nan=False),
)
def test_the_next_measurement_keeps_the_schedule_yet_never_comes_within_half_an_interval(
    due: datetime, late: float, interval: float
) -> None:
    """Whatever the lateness: the next measurement is due no sooner than one interval after the last was due,
    no sooner than half an interval after it was judged, and no later than one interval after that."""
    now = due + timedelta(seconds=late)
    step = timedelta(seconds=interval)
    following = next_due(due, now, interval)
    assert following >= due + step
    assert following >= now + step / 2
    assert following <= now + step
    if late < interval / 2 - 1e-5:  # (timedelta keeps microseconds)
        assert following == due + step
