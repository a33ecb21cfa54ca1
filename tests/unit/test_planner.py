"""The planner decides every transition; these tables walk each phase through its ways out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from torghut_operator.api.spec import TorghutRolloutSpec
from torghut_operator.api.status import AppliedFile, Measurement, Phase, TorghutRolloutStatus, Verdict
from torghut_operator.observations import (
    ExpectationOutcome,
    JobState,
    Observations,
    Peer,
    PromotionEvidence,
    SqlOutcome,
    TargetState,
)
from torghut_operator.planner import (
    ApplySqlMigrations,
    CheckExpectations,
    CheckPromotionEvidence,
    CreateMigrationJob,
    Measure,
    Plan,
    SetTargetEnv,
    SetTargetImage,
    job_name,
    plan,
)
from torghut_operator.presets import effective_checks
from torghut_operator.timefmt import format_time

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
OLD = "registry/torghut@sha256:old"
NEW = "registry/torghut@sha256:new"
NAME = "release-42"


def make_spec(**overrides: Any) -> TorghutRolloutSpec:
    raw: dict[str, Any] = {
        "target": {"name": "torghut", "container": "torghut", "image": NEW},
        "database": {"secretRef": {"name": "torghut-db-app", "key": "uri"}},
        "prometheus": {"url": "http://prometheus:9090"},
        "migrate": {"job": {"command": ["alembic", "upgrade", "heads"]}},
        "verify": {
            "interval": "10s",
            "count": 2,
            "checks": [
                {"name": "null-rate", "postgres": {"query": "SELECT 0"}, "max": 0},
                {"name": "fallback", "prometheus": {"query": "ratio"}, "max": 0.25},
            ],
        },
    }
    raw.update(overrides)
    return TorghutRolloutSpec.model_validate(raw)


def target(image: str = OLD, *, rolled_out: bool = True, failed: str | None = None) -> TargetState:
    return TargetState(exists=True, image=image, rolled_out=rolled_out, failed_reason=failed, detail="1/1 updated")


def run(spec: TorghutRolloutSpec, status: TorghutRolloutStatus | None = None, *, at: datetime = T0, **obs: Any) -> Plan:
    return plan(
        spec,
        effective_checks(spec),
        status or TorghutRolloutStatus(),
        Observations(now=at, **obs),
        name=NAME,
        generation=3,
    )


def started(spec: TorghutRolloutSpec, phase: Phase, **fields: Any) -> TorghutRolloutStatus:
    base: dict[str, Any] = {
        "spec_hash": spec.spec_hash(),
        "phase": phase,
        "image": NEW,
        "previous_image": OLD,
        "started_at": format_time(T0),
        "phase_started_at": format_time(T0),
    }
    base.update(fields)
    return TorghutRolloutStatus(**base)


def measured(phase: Verdict, value: str | None = "0", message: str = "") -> Measurement:
    return Measurement(phase=phase, at=format_time(T0), value=value, message=message or phase.value)


def condition(p: Plan, type_: str) -> tuple[str, str]:
    c = next(c for c in p.status.conditions if c.type == type_)
    return c.status, c.reason


# --- Pending ---


def test_pending_records_the_previous_image_and_starts_migrating() -> None:
    p = run(make_spec(), target=target())
    assert p.status.phase is Phase.MIGRATING
    assert p.status.previous_image == OLD
    assert p.status.stage == "migrate"
    assert p.status.observed_generation == 3
    assert condition(p, "Ready") == ("False", "Progressing")
    assert any(e.reason == "Migrating" for e in p.events)


def test_pending_without_migrate_goes_straight_to_deploying() -> None:
    p = run(make_spec(migrate=None), target=target())
    assert p.status.phase is Phase.DEPLOYING
    assert condition(p, "Migrated") == ("True", "NotConfigured")


def test_pending_waits_for_a_missing_target_without_failing() -> None:
    p = run(make_spec(), target=TargetState(exists=False))
    assert p.status.phase is Phase.PENDING
    assert "not found" in p.status.message
    assert p.requeue_after is not None


@pytest.mark.parametrize(
    ("peers", "blocked_by"),
    [
        ((Peer("older", "2026-01-01T00:00:00Z", "Pending", True),), "older"),
        ((Peer("newer-running", "2027-01-01T00:00:00Z", "Verifying", True),), "newer-running"),
        ((Peer("done", "2026-01-01T00:00:00Z", "Succeeded", False),), None),
        ((Peer("newer-pending", "2027-01-01T00:00:00Z", "Pending", True),), None),
    ],
)
def test_one_rollout_per_target(peers: tuple[Peer, ...], blocked_by: str | None) -> None:
    me = Peer(NAME, "2026-06-01T00:00:00Z", "Pending", True)
    p = run(make_spec(), target=target(), peers=(me, *peers))
    assert p.status.blocked_by == blocked_by
    if blocked_by:
        assert p.status.phase is Phase.PENDING
        assert condition(p, "Ready") == ("False", "Blocked")
        assert blocked_by in p.status.message
    else:
        assert p.status.phase is Phase.MIGRATING


# --- Migrating ---


def test_migration_job_is_created_under_a_deterministic_name() -> None:
    spec = make_spec()
    status = started(spec, Phase.MIGRATING)
    p = run(spec, status, job=JobState(name="x", exists=False))
    expected = job_name(NAME, spec.spec_hash(), 1)
    assert p.actions == (CreateMigrationJob(expected),)
    assert p.status.migration is not None
    assert p.status.migration.job_name == expected
    again = run(spec, p.status, job=JobState(name=expected, exists=True))
    assert again.actions == ()
    assert again.status.phase is Phase.MIGRATING


def test_job_name_fits_a_label_and_changes_per_attempt() -> None:
    long = "x" * 80
    assert len(job_name(long, "abcdef0123456789", 12)) <= 63
    assert job_name("r", "abcdef0123456789", 1) != job_name("r", "abcdef0123456789", 2)


def test_failed_migration_job_fails_and_leaves_the_target_alone() -> None:
    spec = make_spec()
    p = run(
        spec,
        started(spec, Phase.MIGRATING),
        job=JobState(name="j", exists=True, failed=True, reason="BackoffLimitExceeded", message="reached limit"),
    )
    assert p.status.phase is Phase.FAILED
    assert "BackoffLimitExceeded" in p.status.message
    assert not any(isinstance(a, SetTargetImage) for a in p.actions)
    assert condition(p, "Migrated") == ("False", "MigrationFailed")
    assert p.status.failed_stage == "migrate"


def test_completed_job_moves_to_deploy() -> None:
    spec = make_spec()
    p = run(spec, started(spec, Phase.MIGRATING), job=JobState(name="j", exists=True, succeeded=True))
    assert p.status.phase is Phase.DEPLOYING
    assert condition(p, "Migrated") == ("True", "Succeeded")


def sql_spec(**expect: Any) -> TorghutRolloutSpec:
    migrate: dict[str, Any] = {"sql": {"configMapRef": {"name": "torghut-route-grant-sql"}}}
    if expect:
        migrate["expect"] = expect
    return make_spec(migrate=migrate)


def test_sql_migration_asks_to_apply_then_records_what_was_applied() -> None:
    spec = sql_spec()
    status = started(spec, Phase.MIGRATING)
    first = run(spec, status)
    assert first.actions == (ApplySqlMigrations(),)
    second = run(spec, first.status, sql=SqlOutcome(skipped=("0001_grants.sql",)))
    assert second.status.phase is Phase.DEPLOYING


def test_a_retryable_sql_error_waits_and_tries_again() -> None:
    spec = sql_spec()
    p = run(spec, started(spec, Phase.MIGRATING), sql=SqlOutcome(error="lock busy: held by pid 42", retryable=True))
    assert p.status.phase is Phase.MIGRATING
    assert "retried" in p.status.message
    assert run(spec, p.status).actions == (ApplySqlMigrations(),)


def test_sql_migration_error_is_a_hard_failure_naming_the_file() -> None:
    spec = sql_spec()
    error = "0001_grants.sql: checksum changed since it was applied"
    p = run(spec, started(spec, Phase.MIGRATING), sql=SqlOutcome(error=error))
    assert p.status.phase is Phase.FAILED
    assert "0001_grants.sql" in p.status.message


def test_failed_expectations_fail_the_stage_with_their_message() -> None:
    spec = sql_spec(grants=[{"role": "torghut_app", "tables": "research_*", "privileges": ["INSERT"]}])
    status = started(spec, Phase.MIGRATING, migration={"mode": "sql", "completedAt": format_time(T0)})
    asked = run(spec, status)
    assert asked.actions == (CheckExpectations(),)
    outcome = ExpectationOutcome("grants", False, "torghut_app lacks INSERT on research_runs")
    p = run(spec, status, expectations=(outcome,))
    assert p.status.phase is Phase.FAILED
    assert "torghut_app lacks INSERT on research_runs" in p.status.message
    assert condition(p, "Migrated") == ("False", "GateFailed")


def test_expectation_errors_never_pass() -> None:
    spec = sql_spec(alembicHeads=["0007_autonomy_permissions_backfill_routes"])
    status = started(spec, Phase.MIGRATING, migration={"mode": "sql", "completedAt": format_time(T0)})
    p = run(spec, status, expectations=(ExpectationOutcome("alembic", False, "connection refused", error=True),))
    assert p.status.phase is Phase.FAILED
    assert condition(p, "Migrated")[1] == "GateError"


# --- Deploying ---


def test_deploy_patches_the_image_then_waits() -> None:
    spec = make_spec()
    status = started(spec, Phase.DEPLOYING)
    p = run(spec, status, target=target(OLD))
    assert p.actions == (SetTargetImage(NEW),)
    waiting = run(spec, status, target=target(NEW, rolled_out=False))
    assert waiting.actions == ()
    assert waiting.status.phase is Phase.DEPLOYING


def test_available_deployment_moves_to_verifying_with_fresh_checks() -> None:
    spec = make_spec(verify={"initialDelay": "30s", "checks": [{"name": "c", "http": {"url": "http://x"}, "min": 1}]})
    p = run(spec, started(spec, Phase.DEPLOYING), target=target(NEW))
    assert p.status.phase is Phase.VERIFYING
    assert [c.name for c in p.status.checks] == ["c"]
    assert p.status.next_measurement_at == format_time(T0 + timedelta(seconds=30))
    assert p.requeue_after == 30


# --- Deploying: the SQL catch-up (sql mode) ---

MIGRATED = {"mode": "sql", "completedAt": format_time(T0)}
APPLIED = (AppliedFile(name="0002_backfill.sql", checksum="c0ffee", applied_at=format_time(T0)),)


def test_sql_mode_reruns_the_repeatable_files_once_the_new_image_is_available() -> None:
    spec = sql_spec()
    status = started(spec, Phase.DEPLOYING, migration=MIGRATED)
    waiting = run(spec, status, target=target(NEW, rolled_out=False))
    assert waiting.actions == ()  # not while the old image may still write

    p = run(spec, status, target=target(NEW))

    assert p.actions == (ApplySqlMigrations(catch_up=True),)
    assert p.status.phase is Phase.DEPLOYING
    assert "catch-up" in p.status.message
    assert not any(c.type == "Deployed" and c.status == "True" for c in p.status.conditions)


def test_a_successful_catch_up_is_recorded_then_verifying_starts() -> None:
    spec = sql_spec()
    status = started(spec, Phase.DEPLOYING, migration=MIGRATED)
    outcome = SqlOutcome(applied=APPLIED, applied_now=("0002_backfill.sql",), skipped=("0001_grants.sql",))

    p = run(spec, status, target=target(NEW), sql_catch_up=outcome)

    assert p.status.phase is Phase.VERIFYING
    assert p.actions == ()
    assert p.status.migration is not None
    assert p.status.migration.caught_up_at == format_time(T0)
    assert p.status.migration.completed_at == format_time(T0)
    assert [f.name for f in p.status.migration.applied] == ["0002_backfill.sql"]
    assert any(e.reason == "SqlCaughtUp" and "1 repeatable file(s)" in e.message for e in p.events)
    assert condition(p, "Deployed") == ("True", "Available")


def test_after_a_restart_a_recorded_catch_up_is_not_repeated() -> None:
    spec = sql_spec()
    status = started(spec, Phase.DEPLOYING, migration={**MIGRATED, "caughtUpAt": format_time(T0)})
    p = run(spec, status, target=target(NEW))
    assert p.actions == ()
    assert p.status.phase is Phase.VERIFYING


def test_a_retryable_catch_up_error_waits_until_the_progress_deadline() -> None:
    spec = sql_spec()
    status = started(spec, Phase.DEPLOYING, migration=MIGRATED)
    busy = SqlOutcome(error="another migration holds the advisory lock", retryable=True)

    p = run(spec, status, target=target(NEW), sql_catch_up=busy)

    assert p.status.phase is Phase.DEPLOYING
    assert "will be retried" in p.status.message
    assert p.requeue_after is not None
    assert run(spec, p.status, target=target(NEW)).actions == (ApplySqlMigrations(catch_up=True),)
    late = run(spec, status, at=T0 + timedelta(minutes=11), target=target(NEW), sql_catch_up=busy)
    assert late.status.phase is Phase.ROLLING_BACK
    assert condition(late, "Deployed") == ("False", "MigrationFailed")


def test_a_failing_catch_up_fails_the_deploy_stage_and_rolls_back() -> None:
    spec = sql_spec()
    status = started(spec, Phase.DEPLOYING, migration=MIGRATED)
    failed = SqlOutcome(error="0002_backfill.sql failed and was rolled back, nothing of it applied: 42P01 ...")

    p = run(spec, status, target=target(NEW), sql_catch_up=failed)

    assert p.status.phase is Phase.ROLLING_BACK
    assert "0002_backfill.sql" in p.status.message
    assert condition(p, "Deployed") == ("False", "MigrationFailed")
    assert p.status.failed_stage == "deploy"


def test_job_mode_has_no_catch_up() -> None:
    spec = make_spec()
    p = run(spec, started(spec, Phase.DEPLOYING, migration={"mode": "job"}), target=target(NEW))
    assert p.actions == ()
    assert p.status.phase is Phase.VERIFYING


def test_progress_deadline_fails_and_rolls_back() -> None:
    spec = make_spec(deploy={"progressDeadline": "1m"})
    status = started(spec, Phase.DEPLOYING)
    p = run(spec, status, at=T0 + timedelta(minutes=2), target=target(NEW, rolled_out=False))
    assert p.status.phase is Phase.ROLLING_BACK
    assert "ProgressDeadlineExceeded" in p.status.message
    assert condition(p, "Deployed") == ("False", "ProgressDeadlineExceeded")


def test_deployment_controller_deadline_fails_without_rollback_when_off() -> None:
    spec = make_spec(rollback={"onFailure": False})
    p = run(
        spec, started(spec, Phase.DEPLOYING), target=target(NEW, rolled_out=False, failed="ProgressDeadlineExceeded")
    )
    assert p.status.phase is Phase.FAILED


# --- Verifying ---


def verifying(spec: TorghutRolloutSpec, **fields: Any) -> TorghutRolloutStatus:
    deployed = run(spec, started(spec, Phase.DEPLOYING), target=target(NEW)).status
    return deployed.model_copy(update=fields)


def test_verify_measures_every_pending_check_when_due() -> None:
    spec = make_spec()
    p = run(spec, verifying(spec), target=target(NEW))
    assert p.actions == (Measure(("null-rate", "fallback")),)


def test_verify_succeeds_only_after_count_successful_measurements() -> None:
    spec = make_spec()
    status = verifying(spec)
    ok = {"null-rate": measured(Verdict.SUCCESSFUL), "fallback": measured(Verdict.SUCCESSFUL)}
    first = run(spec, status, target=target(NEW), measurements=ok)
    assert first.status.phase is Phase.VERIFYING
    assert all(c.phase is Verdict.RUNNING for c in first.status.checks)
    assert first.status.next_measurement_at == format_time(T0 + timedelta(seconds=10))
    second = run(spec, first.status, at=T0 + timedelta(seconds=10), target=target(NEW), measurements=ok)
    assert second.status.phase is Phase.SUCCEEDED
    assert condition(second, "Ready") == ("True", "Succeeded")
    assert condition(second, "Verified")[0] == "True"


def test_a_failed_measurement_over_the_limit_rolls_back_with_value_and_query() -> None:
    spec = make_spec()
    msg = "null-rate: value 0.12 above max 0 (postgres: SELECT 0)"
    p = run(
        spec,
        verifying(spec),
        target=target(NEW),
        measurements={"null-rate": measured(Verdict.FAILED, "0.12", msg), "fallback": measured(Verdict.SUCCESSFUL)},
    )
    assert p.status.phase is Phase.ROLLING_BACK
    assert "0.12" in p.status.message
    assert "SELECT 0" in p.status.message
    assert condition(p, "Verified") == ("False", "GateFailed")


def test_errors_never_pass_and_fail_at_the_consecutive_error_limit() -> None:
    spec = make_spec(
        verify={
            "count": 1,
            "checks": [{"name": "p", "prometheus": {"query": "up"}, "min": 1, "consecutiveErrorLimit": 2}],
        }
    )
    status = verifying(spec)
    for i in range(3):
        p = run(
            spec,
            status,
            at=T0 + timedelta(minutes=i),
            target=target(NEW),
            measurements={"p": measured(Verdict.ERROR, None, "connection refused")},
        )
        status = p.status
        if i < 2:
            assert status.phase is Phase.VERIFYING
            assert status.checks[0].phase is Verdict.RUNNING
    assert status.phase is Phase.ROLLING_BACK
    assert status.checks[0].phase is Verdict.ERROR
    assert condition(p, "Verified") == ("False", "GateError")


def test_no_data_is_inconclusive_and_waits_for_a_human() -> None:
    spec = make_spec(verify={"count": 1, "checks": [{"name": "p", "prometheus": {"query": "up"}, "min": 1}]})
    p = run(
        spec, verifying(spec), target=target(NEW), measurements={"p": measured(Verdict.INCONCLUSIVE, None, "no data")}
    )
    assert p.status.phase is Phase.VERIFYING
    assert p.status.awaiting_approval
    assert condition(p, "Ready") == ("False", "AwaitingApproval")
    assert p.actions == ()
    promoted = run(spec, p.status, at=T0 + timedelta(seconds=1), target=target(NEW), verb="promote")
    assert promoted.status.phase is Phase.SUCCEEDED
    assert promoted.status.checks[0].approved
    assert promoted.verb_handled


def test_inconclusive_fails_at_the_verify_timeout() -> None:
    spec = make_spec(
        verify={"count": 1, "timeout": "5m", "checks": [{"name": "p", "prometheus": {"query": "up"}, "min": 1}]}
    )
    status = run(
        spec,
        verifying(spec),
        target=target(NEW),
        measurements={"p": measured(Verdict.INCONCLUSIVE, "0", "zero signals")},
    ).status
    p = run(spec, status, at=T0 + timedelta(minutes=6), target=target(NEW))
    assert p.status.phase is Phase.ROLLING_BACK
    assert "zero signals" in p.status.message
    assert condition(p, "Verified") == ("False", "VerifyTimeout")


def test_dry_run_checks_never_block() -> None:
    spec = make_spec(
        verify={
            "count": 1,
            "checks": [
                {"name": "real", "http": {"url": "http://x"}, "min": 1},
                {"name": "dry", "http": {"url": "http://y"}, "min": 1, "dryRun": True},
            ],
        }
    )
    p = run(
        spec,
        verifying(spec),
        target=target(NEW),
        measurements={"real": measured(Verdict.SUCCESSFUL, "1"), "dry": measured(Verdict.FAILED, "0")},
    )
    assert p.status.phase is Phase.SUCCEEDED


def test_a_check_never_passes_without_a_successful_measurement() -> None:
    spec = make_spec(
        verify={"count": 1, "checks": [{"name": "p", "http": {"url": "http://x"}, "min": 1, "inconclusiveLimit": 5}]}
    )
    p = run(spec, verifying(spec), target=target(NEW), measurements={"p": measured(Verdict.INCONCLUSIVE, None)})
    assert p.status.phase is Phase.VERIFYING
    assert p.status.checks[0].phase is Verdict.RUNNING


# --- RollingBack ---


def test_rollback_restores_the_previous_image_then_reports_rolled_back() -> None:
    spec = make_spec()
    status = started(spec, Phase.ROLLING_BACK, stage="rollback", message="verify failed")
    p = run(spec, status, target=target(NEW))
    assert p.actions == (SetTargetImage(OLD),)
    done = run(spec, status, target=target(OLD, rolled_out=True))
    assert done.status.phase is Phase.ROLLED_BACK
    assert done.status.completed_at is not None


# --- verbs ---


@pytest.mark.parametrize("phase", [Phase.PENDING, Phase.MIGRATING, Phase.DEPLOYING, Phase.VERIFYING])
def test_pause_and_resume_from_any_running_phase(phase: Phase) -> None:
    spec = make_spec()
    status = started(spec, phase)
    paused = run(spec, status, verb="pause", target=target(NEW))
    assert paused.status.phase is Phase.PAUSED
    assert paused.status.paused_from is phase
    assert paused.actions == ()
    again = run(spec, paused.status, verb="pause")
    assert again.status.phase is Phase.PAUSED
    assert again.status.last_action is not None
    assert again.status.last_action.result.startswith("already paused")
    resumed = run(spec, paused.status, verb="resume", target=target(OLD), job=JobState("j", exists=True))
    assert resumed.status.phase is not Phase.PAUSED
    assert resumed.status.paused_from is None
    assert resumed.status.last_action is not None
    assert resumed.status.last_action.result == "resumed"


@pytest.mark.parametrize(
    ("phase", "result"),
    [
        (Phase.MIGRATING, Phase.ABORTED),
        (Phase.DEPLOYING, Phase.ROLLING_BACK),
        (Phase.VERIFYING, Phase.ROLLING_BACK),
        (Phase.SUCCEEDED, Phase.SUCCEEDED),
        (Phase.FAILED, Phase.FAILED),
    ],
)
def test_abort_from_each_phase(phase: Phase, result: Phase) -> None:
    spec = make_spec()
    p = run(spec, started(spec, phase), verb="abort", target=target(NEW, rolled_out=False))
    assert p.status.phase is result
    assert p.verb_handled


def test_aborted_rollback_ends_aborted() -> None:
    spec = make_spec()
    rolling = run(spec, started(spec, Phase.VERIFYING), verb="abort", target=target(NEW)).status
    p = run(spec, rolling, target=target(OLD))
    assert p.status.phase is Phase.ABORTED


@pytest.mark.parametrize("phase", [Phase.FAILED, Phase.ROLLED_BACK, Phase.ABORTED])
def test_retry_starts_a_new_attempt_keeping_the_stable_image(phase: Phase) -> None:
    spec = make_spec()
    p = run(spec, started(spec, phase), verb="retry", target=target(NEW))
    assert p.status.attempt == 2
    assert p.status.previous_image == OLD
    assert p.status.phase is Phase.MIGRATING
    assert p.status.migration is not None
    assert p.status.migration.job_name is None


@pytest.mark.parametrize("phase", [Phase.PENDING, Phase.VERIFYING, Phase.SUCCEEDED])
def test_retry_is_a_no_op_unless_finished_badly(phase: Phase) -> None:
    spec = make_spec()
    p = run(spec, started(spec, phase), verb="retry", target=target(NEW))
    assert p.status.attempt == 1
    assert p.status.last_action is not None
    assert "nothing to retry" in p.status.last_action.result


def test_unknown_verb_is_reported_not_applied() -> None:
    spec = make_spec()
    p = run(spec, started(spec, Phase.DEPLOYING), verb="yolo", target=target(NEW, rolled_out=False))
    assert p.status.last_action is not None
    assert "unknown verb" in p.status.last_action.result
    assert p.status.phase is Phase.DEPLOYING


def test_spec_paused_pauses_and_unpausing_resumes() -> None:
    spec = make_spec()
    paused_spec = spec.model_copy(update={"paused": True})
    p = run(paused_spec, started(spec, Phase.DEPLOYING), target=target(NEW))
    assert p.status.phase is Phase.PAUSED
    assert p.status.paused_by == "spec"
    resumed = run(spec, p.status, target=target(NEW, rolled_out=False))
    assert resumed.status.phase is Phase.DEPLOYING


def test_a_spec_change_starts_a_new_run() -> None:
    spec = make_spec()
    done = started(spec, Phase.SUCCEEDED)
    changed = make_spec(target={"name": "torghut", "container": "torghut", "image": "registry/torghut@sha256:newer"})
    p = run(changed, done, target=target(NEW))
    assert p.status.spec_hash == changed.spec_hash()
    assert p.status.phase is Phase.MIGRATING
    assert p.status.previous_image == NEW


# --- Promoting ---

PROMOTION = {
    "steps": [
        {"name": "paper", "env": {"TRADING_MODE": "paper"}, "requiredPromotion": {"mode": "paper"}},
        {
            "name": "canary-0.10x",
            "env": {"TRADING_MODE": "live", "TRADING_CAPITAL_FRACTION": "0.10"},
            "requiredPromotion": {"mode": "live"},
            "requiresApproval": True,
        },
    ]
}


def env_target(env: dict[str, str], *, rolled_out: bool = True) -> TargetState:
    return TargetState(exists=True, image=NEW, rolled_out=rolled_out, detail="1/1 updated", env=env)


def promoting(spec: TorghutRolloutSpec) -> TorghutRolloutStatus:
    ok = {c.name: measured(Verdict.SUCCESSFUL) for c in spec.verify.checks}
    status = verifying(spec)
    for i in range(spec.verify.count):
        status = run(
            spec, status, at=T0 + timedelta(minutes=i), target=env_target({"TRADING_MODE": "shadow"}), measurements=ok
        ).status
    assert status.phase is Phase.PROMOTING
    return status


def test_verified_rollout_with_promotion_moves_to_promoting_and_records_the_env_to_restore() -> None:
    spec = make_spec(promotion=PROMOTION)
    status = promoting(spec)
    assert status.promotion is not None
    assert status.promotion.previous_env == {"TRADING_MODE": "shadow"}
    assert status.promotion.previously_unset == ["TRADING_CAPITAL_FRACTION"]
    assert condition(Plan(status), "Verified")[0] == "True"


def test_a_step_without_approved_promotion_rows_is_blocked_with_missing_evidence() -> None:
    spec = make_spec(promotion=PROMOTION)
    status = promoting(spec)
    asked = run(spec, status, target=env_target({"TRADING_MODE": "shadow"}))
    assert asked.actions == (CheckPromotionEvidence("paper"),)
    p = run(
        spec,
        status,
        target=env_target({"TRADING_MODE": "shadow"}),
        promotion_evidence=PromotionEvidence(False, "no approved research_promotions row for mode paper"),
    )
    assert p.status.phase is Phase.PROMOTING
    assert condition(p, "Promoted") == ("False", "MissingEvidence")
    assert "research_promotions" in p.status.message
    assert not any(isinstance(a, SetTargetEnv) for a in p.actions)
    promote = run(spec, p.status, verb="promote", target=env_target({"TRADING_MODE": "shadow"}))
    assert promote.status.last_action is not None
    assert promote.status.last_action.result.startswith("nothing awaits approval")


def test_steps_apply_one_at_a_time_with_evidence_and_approval() -> None:
    spec = make_spec(promotion=PROMOTION)
    status = promoting(spec)
    found = PromotionEvidence(True, "1 approved row")
    shadow = env_target({"TRADING_MODE": "shadow"})
    p = run(spec, status, target=shadow, promotion_evidence=found)
    assert p.actions == (SetTargetEnv({"TRADING_MODE": "paper"}),)
    paper = env_target({"TRADING_MODE": "paper"})
    p = run(spec, p.status, target=paper, promotion_evidence=found)
    assert p.status.promotion is not None
    assert p.status.promotion.applied
    assert all(c.stage == "promote:paper" for c in p.status.checks)
    ok = {c.name: measured(Verdict.SUCCESSFUL) for c in spec.verify.checks}
    for i in range(spec.verify.count):
        p = run(spec, p.status, at=T0 + timedelta(hours=1, minutes=i), target=paper, measurements=ok)
    assert p.status.promotion is not None
    assert p.status.promotion.completed == ["paper"]
    assert p.status.promotion.step_name == "canary-0.10x"
    waiting = run(spec, p.status, target=paper, promotion_evidence=found)
    assert waiting.status.awaiting_approval
    assert condition(waiting, "Promoted") == ("False", "AwaitingApproval")
    assert waiting.actions == ()
    approved = run(spec, waiting.status, verb="promote", target=paper, promotion_evidence=found)
    assert approved.actions == (SetTargetEnv({"TRADING_MODE": "live", "TRADING_CAPITAL_FRACTION": "0.10"}),)


def test_a_failed_step_restores_the_trading_env_and_the_image() -> None:
    spec = make_spec(promotion=PROMOTION)
    status = promoting(spec)
    found = PromotionEvidence(True, "1 approved row")
    paper = env_target({"TRADING_MODE": "paper"})
    p = run(spec, status, target=paper, promotion_evidence=found)
    bad = {c.name: measured(Verdict.FAILED, "0.5", "fallback: value 0.5 above max 0.25") for c in spec.verify.checks}
    p = run(spec, p.status, at=T0 + timedelta(hours=1), target=paper, measurements=bad)
    assert p.status.phase is Phase.ROLLING_BACK
    restore = run(spec, p.status, target=paper)
    assert restore.actions == (SetTargetEnv({"TRADING_CAPITAL_FRACTION": None, "TRADING_MODE": "shadow"}),)
