"""The planner decides every transition; these tables walk each phase through its ways out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from torghut_operator.core.api.spec import TorghutRolloutSpec
from torghut_operator.core.api.status import (
    AppliedFile,
    BackfillStatus,
    Measurement,
    Phase,
    RestorePoint,
    TorghutRolloutStatus,
    Verdict,
)
from torghut_operator.core.judge import judge
from torghut_operator.core.observations import (
    ExpectationOutcome,
    JobState,
    Observations,
    Peer,
    PromotionEvidence,
    SqlOutcome,
    TargetState,
)
from torghut_operator.core.planner import (
    ApplySqlMigrations,
    CheckExpectations,
    CheckPromotionEvidence,
    CreateMigrationJob,
    Measure,
    Plan,
    SetTargetEnv,
    SetTargetImage,
    _fresh_check,
    _record,
    _record_env,
    job_name,
    plan,
    stage_checks,
)
from torghut_operator.core.presets import effective_checks
from torghut_operator.core.reading import Reading
from torghut_operator.core.timefmt import format_time

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
    if phase in (Phase.DEPLOYING, Phase.VERIFYING, Phase.PROMOTING, Phase.ROLLING_BACK):
        base["restore"] = RestorePoint(image=OLD)  # the deploy stage recorded it before patching the image
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
CATCH_UP = ApplySqlMigrations(catch_up=True, run=f"{format_time(T0)} attempt 1")
"""The catch-up of the run that started at T0, first attempt."""


def test_sql_mode_reruns_the_repeatable_files_once_the_new_image_is_available() -> None:
    spec = sql_spec()
    status = started(spec, Phase.DEPLOYING, migration=MIGRATED)
    waiting = run(spec, status, target=target(NEW, rolled_out=False))
    assert waiting.actions == ()  # not while the old image may still write

    p = run(spec, status, target=target(NEW))

    assert p.actions == (CATCH_UP,)
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
    assert run(spec, p.status, target=target(NEW)).actions == (CATCH_UP,)
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


# --- Backfills: slices of batches, progress in status, the stage done only when the backfill is ---


def backfill(
    done: int, total: int = 1_000_000, *, at: datetime = T0, finished: bool = False, throttled: str | None = None
) -> BackfillStatus:
    return BackfillStatus(
        file="0004_backfill_routes.sql",
        table="public.executions",
        rows_done=done,
        rows_total=total,
        batches=done // 5_000,
        batch_size=5_000,
        rows_per_second=12_000.0,
        eta_seconds=None if finished else (total - done) // 12_000,
        throttled=throttled,
        finished=finished,
        updated_at=format_time(at),
    )


def slice_of(progress: BackfillStatus) -> SqlOutcome:
    """What one apply call returns: in progress until the backfill is finished."""
    return SqlOutcome(applied=APPLIED, backfill=progress, in_progress=not progress.finished)


def test_a_backfill_in_the_migrate_stage_reports_progress_and_holds_the_stage_until_done() -> None:
    spec = sql_spec()
    status = started(spec, Phase.MIGRATING, migration={"mode": "sql"})

    first = run(spec, status, sql=slice_of(backfill(450_000, throttled="2 lock waits on public.executions")))

    assert first.status.phase is Phase.MIGRATING
    assert first.status.message == (
        "migrating: backfill 0004_backfill_routes.sql: 45% (450,000 / 1,000,000 rows), 12,000 rows/s, ETA 45s; "
        "throttled: 2 lock waits on public.executions"
    )
    assert first.requeue_after == 1.0
    assert first.status.migration is not None
    assert first.status.migration.completed_at is None
    assert first.status.migration.backfill == backfill(450_000, throttled="2 lock waits on public.executions")
    assert [e.reason for e in first.events] == ["BackfillStarted"]
    assert not any(c.type == "Migrated" and c.status == "True" for c in first.status.conditions)

    again = run(spec, first.status)
    assert again.actions == (ApplySqlMigrations(),)  # the next slice resumes

    second = run(spec, first.status, sql=slice_of(backfill(900_000)))
    assert second.events == ()  # no event per slice
    assert "90%" in second.status.message
    assert "throttled" not in second.status.message
    assert second.status.phase is Phase.MIGRATING

    done = run(spec, second.status, sql=slice_of(backfill(1_000_000, finished=True)))
    assert done.status.phase is Phase.DEPLOYING
    assert [e.reason for e in done.events][:2] == ["BackfillDone", "SqlMigrated"]
    assert done.status.migration is not None
    assert done.status.migration.backfill is not None
    assert done.status.migration.backfill.finished  # the finished figures stay in status
    assert "done, 1,000,000 rows in 200 batches" in done.events[0].message


def test_a_backfill_that_finishes_within_one_slice_emits_only_done() -> None:
    spec = sql_spec()
    p = run(spec, started(spec, Phase.MIGRATING), sql=slice_of(backfill(10, 10, finished=True)))
    assert p.status.phase is Phase.DEPLOYING
    assert "BackfillStarted" not in [e.reason for e in p.events]
    assert "BackfillDone" in [e.reason for e in p.events]


def test_a_failing_batch_fails_the_stage_and_keeps_the_progress_it_made() -> None:
    spec = sql_spec()
    status = started(spec, Phase.MIGRATING, migration={"mode": "sql"})
    running = run(spec, status, sql=slice_of(backfill(300_000))).status
    error = "0004_backfill_routes.sql: batch 300001..305000 failed: 22P02 invalid input syntax"

    p = run(spec, running, sql=SqlOutcome(applied=APPLIED, backfill=backfill(300_000), error=error))

    assert p.status.phase is Phase.FAILED
    assert "batch 300001..305000" in p.status.message
    assert p.status.migration is not None
    assert p.status.migration.backfill == backfill(300_000)


def test_a_catch_up_backfill_holds_the_deploy_stage_with_one_run_id_across_slices() -> None:
    spec = sql_spec()
    status = started(spec, Phase.DEPLOYING, migration=MIGRATED)
    first = run(spec, status, target=target(NEW), sql_catch_up=slice_of(backfill(100_000)))

    assert first.status.phase is Phase.DEPLOYING
    assert first.status.message.startswith("catch-up: backfill 0004_backfill_routes.sql: 10% ")
    assert first.requeue_after == 1.0
    assert not any(c.type == "Deployed" and c.status == "True" for c in first.status.conditions)

    between = run(spec, first.status, at=T0 + timedelta(seconds=11), target=target(NEW))
    assert between.actions == (CATCH_UP,)  # the same run: files done in earlier slices are not run again
    assert between.status.message == first.status.message  # the progress stays on screen between slices

    done = run(spec, first.status, target=target(NEW), sql_catch_up=slice_of(backfill(1_000_000, finished=True)))
    assert done.status.phase is Phase.VERIFYING
    assert [e.reason for e in done.events][:2] == ["BackfillDone", "SqlCaughtUp"]


def test_a_new_attempt_catches_up_under_a_new_run_id() -> None:
    spec = sql_spec()
    retried = started(spec, Phase.DEPLOYING, migration=MIGRATED, attempt=2, started_at=format_time(T0 + HOUR))
    p = run(spec, retried, at=T0 + HOUR, target=target(NEW))
    assert p.actions == (ApplySqlMigrations(catch_up=True, run=f"{format_time(T0 + HOUR)} attempt 2"),)
    assert p.actions != (CATCH_UP,)


HOUR = timedelta(hours=1)


def test_the_progress_deadline_does_not_fail_a_catch_up_backfill_that_keeps_moving() -> None:
    spec = sql_spec()  # deploy.progressDeadline 10m
    status = started(spec, Phase.DEPLOYING, migration=MIGRATED)
    late = T0 + HOUR
    moving = run(spec, status, at=late, target=target(NEW), sql_catch_up=slice_of(backfill(800_000, at=late))).status

    # Postgres restarts an hour into the backfill: the catch-up waits, it does not fail.
    busy = SqlOutcome(error="connection lost: 57P01 terminating connection", retryable=True)
    p = run(spec, moving, at=late + timedelta(minutes=2), target=target(NEW), sql_catch_up=busy)
    assert p.status.phase is Phase.DEPLOYING
    assert "will be retried" in p.status.message
    # so does a replica of the target going away for a moment
    blip = run(spec, moving, at=late + timedelta(minutes=2), target=target(NEW, rolled_out=False))
    assert blip.status.phase is Phase.DEPLOYING

    # No progress for longer than the deadline: it fails as before.
    stuck = run(spec, moving, at=late + timedelta(minutes=11), target=target(NEW), sql_catch_up=busy)
    assert stuck.status.phase is Phase.ROLLING_BACK
    assert condition(stuck, "Deployed") == ("False", "MigrationFailed")


def test_failed_calls_that_report_the_last_progress_do_not_extend_the_deadline() -> None:
    spec = sql_spec()
    status = started(spec, Phase.DEPLOYING, migration=MIGRATED)
    late = T0 + HOUR
    moving = run(spec, status, at=late, target=target(NEW), sql_catch_up=slice_of(backfill(800_000, at=late))).status
    at = late
    for _ in range(12):  # the database is down: every call fails, reporting the progress it last saw
        at += timedelta(minutes=1)
        down = SqlOutcome(backfill=backfill(800_000, at=at), error="connection refused", retryable=True)
        moving = run(spec, moving, at=at, target=target(NEW), sql_catch_up=down).status
        if moving.phase is not Phase.DEPLOYING:
            break
    assert moving.phase is Phase.ROLLING_BACK
    assert at - late == timedelta(minutes=11)  # the first check past progressDeadline (10m) after the last slice
    assert moving.migration is not None
    assert moving.migration.backfill is not None
    assert moving.migration.backfill.updated_at == format_time(late)


def test_the_migrate_stages_backfill_does_not_extend_the_deploy_deadline() -> None:
    spec = sql_spec()
    migrated = {**MIGRATED, "backfill": backfill(1_000_000, at=T0 - HOUR, finished=True).model_dump(by_alias=True)}
    status = started(spec, Phase.DEPLOYING, migration=migrated)
    p = run(spec, status, at=T0 + timedelta(minutes=11), target=target(NEW, rolled_out=False))
    assert p.status.phase is Phase.ROLLING_BACK
    assert "ProgressDeadlineExceeded" in p.status.message


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


def test_waiting_for_the_deployment_comes_back_at_the_progress_deadline_not_every_five_seconds() -> None:
    """Each change of the target wakes the rollout (its watch); the planner's own wake-up is for the deadline only
    (200 rollouts at once waiting on their Deployments took 11 idle turns each at one every 5 s)."""
    spec = make_spec(deploy={"progressDeadline": "1m"})
    status = started(spec, Phase.DEPLOYING)
    waiting = run(spec, status, at=T0 + timedelta(seconds=20), target=target(NEW, rolled_out=False))
    assert waiting.status.phase is Phase.DEPLOYING
    assert waiting.requeue_after == 40.5  # the daemon still looks at least every 30 s
    late = run(spec, status, at=T0 + timedelta(seconds=60, milliseconds=1), target=target(NEW, rolled_out=False))
    assert late.status.phase is Phase.ROLLING_BACK


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


def test_measurements_keep_their_schedule_when_each_is_judged_a_little_late() -> None:
    """count 3 every 10 s: each measurement judged 0.4 s after it was due; the last one is still due 20 s after
    the first (the time a turn takes is not added to every later measurement)."""
    spec = make_spec(verify={**make_spec().verify.model_dump(by_alias=True, exclude_none=True), "count": 3})
    ok = {"null-rate": measured(Verdict.SUCCESSFUL), "fallback": measured(Verdict.SUCCESSFUL)}
    status = verifying(spec)
    lateness = timedelta(seconds=0.4)
    due = T0
    for _ in range(2):
        status = run(spec, status, at=due + lateness, target=target(NEW), measurements=ok).status
        assert status.next_measurement_at == format_time(due + timedelta(seconds=10))
        due += timedelta(seconds=10)
    assert due == T0 + timedelta(seconds=20)
    last = run(spec, status, at=due + lateness, target=target(NEW), measurements=ok)
    assert last.status.phase is Phase.SUCCEEDED


def test_a_measurement_judged_more_than_half_an_interval_late_starts_the_schedule_over() -> None:
    spec = make_spec()
    ok = {"null-rate": measured(Verdict.SUCCESSFUL), "fallback": measured(Verdict.SUCCESSFUL)}
    late = run(spec, verifying(spec), at=T0 + timedelta(seconds=6), target=target(NEW), measurements=ok)
    assert late.status.next_measurement_at == format_time(T0 + timedelta(seconds=16))
    assert late.requeue_after == 10


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


def test_the_env_to_restore_is_recorded_in_the_status_write_before_each_first_patch() -> None:
    spec = make_spec(promotion=PROMOTION)
    status = promoting(spec)
    assert condition(Plan(status), "Verified")[0] == "True"
    assert status.restore == RestorePoint(image=OLD)
    found = PromotionEvidence(True, "1 approved row")
    p = run(spec, status, target=env_target({"TRADING_MODE": "shadow"}), promotion_evidence=found)
    assert p.actions == (SetTargetEnv({"TRADING_MODE": "paper"}),)
    assert p.status.restore == RestorePoint(image=OLD, env={"TRADING_MODE": "shadow"})
    # the live step adds only what is new; TRADING_MODE keeps its first value, not this rollout's "paper"
    live_env = {"TRADING_MODE": "live", "TRADING_CAPITAL_FRACTION": "0.10"}
    later = _record_env(p.status.restore, live_env, {"TRADING_MODE": "paper"})
    assert later == RestorePoint(image=OLD, env={"TRADING_MODE": "shadow"}, unset=["TRADING_CAPITAL_FRACTION"])


def test_a_step_without_approved_promotion_rows_is_blocked_with_missing_evidence() -> None:
    spec = make_spec(promotion=PROMOTION)
    status = promoting(spec)
    asked = run(spec, status, target=env_target({"TRADING_MODE": "shadow"}))
    assert asked.actions == (CheckPromotionEvidence("paper", format_time(T0)),)  # since the attempt started
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
    assert promote.status.last_action.result.startswith("promote cannot waive required evidence: step paper blocked")
    assert promote.status.phase is Phase.PROMOTING
    assert not any(isinstance(a, SetTargetEnv) for a in promote.actions)


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
    p = run(spec, status, target=env_target({"TRADING_MODE": "shadow"}), promotion_evidence=found)
    paper = env_target({"TRADING_MODE": "paper"})
    p = run(spec, p.status, target=paper, promotion_evidence=found)
    bad = {c.name: measured(Verdict.FAILED, "0.5", "fallback: value 0.5 above max 0.25") for c in spec.verify.checks}
    p = run(spec, p.status, at=T0 + timedelta(hours=1), target=paper, measurements=bad)
    assert p.status.phase is Phase.ROLLING_BACK
    restore = run(spec, p.status, target=paper)
    # env and image go back in the same turn
    assert restore.actions == (SetTargetEnv({"TRADING_MODE": "shadow"}), SetTargetImage(OLD))
    half = TargetState(exists=True, image=NEW, rolled_out=True, detail="1/1", env={"TRADING_MODE": "shadow"})
    assert run(spec, restore.status, target=half).actions == (SetTargetImage(OLD),)
    back = TargetState(exists=True, image=OLD, rolled_out=True, detail="1/1", env={"TRADING_MODE": "shadow"})
    done = run(spec, restore.status, target=back)
    assert done.status.phase is Phase.ROLLED_BACK
    assert done.status.restore is None
    assert condition(done, "Restored") == ("True", "Restored")
    assert "shadow" in done.status.message


# --- trading mode and image restored together ---


def _live_canary(spec: TorghutRolloutSpec) -> TorghutRolloutStatus:
    """A rollout whose canary step's env (TRADING_MODE=live) was patched onto the target."""
    status = promoting(spec)
    found = PromotionEvidence(True, "1 approved row")
    p = run(spec, status, target=env_target({"TRADING_MODE": "shadow"}), promotion_evidence=found)
    paper = env_target({"TRADING_MODE": "paper"})
    p = run(spec, p.status, target=paper, promotion_evidence=found)
    ok = {c.name: measured(Verdict.SUCCESSFUL) for c in spec.verify.checks}
    for i in range(spec.verify.count):
        p = run(spec, p.status, at=T0 + timedelta(hours=1, minutes=i), target=paper, measurements=ok)
    p = run(spec, p.status, target=paper, promotion_evidence=found)
    assert p.status.awaiting_approval
    p = run(spec, p.status, verb="promote", target=paper, promotion_evidence=found)
    assert p.actions == (SetTargetEnv({"TRADING_MODE": "live", "TRADING_CAPITAL_FRACTION": "0.10"}),)
    return p.status


LIVE = {"TRADING_MODE": "live", "TRADING_CAPITAL_FRACTION": "0.10"}


def test_abort_after_a_live_patch_before_its_pods_are_ready_restores_the_env_and_the_image() -> None:
    spec = make_spec(promotion=PROMOTION)
    status = _live_canary(spec)
    assert status.promotion is not None
    assert not status.promotion.applied  # the env is patched, the step not yet marked applied
    aborted = run(spec, status, verb="abort", target=env_target(LIVE, rolled_out=False))
    assert aborted.status.phase is Phase.ROLLING_BACK
    p = run(spec, aborted.status, target=env_target(LIVE, rolled_out=False))
    assert p.actions == (
        SetTargetEnv({"TRADING_MODE": "shadow", "TRADING_CAPITAL_FRACTION": None}),
        SetTargetImage(OLD),
    )
    back = TargetState(exists=True, image=OLD, rolled_out=True, detail="1/1", env={"TRADING_MODE": "shadow"})
    done = run(spec, p.status, target=back)
    assert done.status.phase is Phase.ABORTED
    assert done.status.restore is None


def test_a_live_step_whose_pods_miss_the_progress_deadline_rolls_back_env_and_image() -> None:
    spec = make_spec(promotion=PROMOTION, deploy={"progressDeadline": "5m"})
    status = _live_canary(spec)
    waiting = run(spec, status, at=T0 + timedelta(minutes=2), target=env_target(LIVE, rolled_out=False))
    assert waiting.status.phase is Phase.PROMOTING
    late = run(spec, status, at=T0 + timedelta(minutes=6), target=env_target(LIVE, rolled_out=False))
    assert late.status.phase is Phase.ROLLING_BACK
    assert condition(late, "Promoted") == ("False", "ProgressDeadlineExceeded")
    p = run(spec, late.status, at=T0 + timedelta(hours=3), target=env_target(LIVE, rolled_out=False))
    assert SetTargetEnv({"TRADING_MODE": "shadow", "TRADING_CAPITAL_FRACTION": None}) in p.actions


def test_a_spec_edit_during_a_live_step_puts_the_trading_env_back_before_starting_over() -> None:
    spec = make_spec(promotion=PROMOTION)
    status = _live_canary(spec)
    edited = make_spec(promotion=PROMOTION, verify={**spec.verify.model_dump(by_alias=True), "count": 3})
    p = run(edited, status, target=env_target(LIVE))
    assert p.status.phase is Phase.PENDING
    assert p.actions == (SetTargetEnv({"TRADING_MODE": "shadow", "TRADING_CAPITAL_FRACTION": None}),)
    assert condition(p, "Ready")[1] == "Progressing"
    assert any(e.reason == "RestoringEnv" for e in p.events)
    restored = run(edited, p.status, target=env_target({"TRADING_MODE": "shadow"}))
    assert restored.status.phase is Phase.MIGRATING
    assert restored.status.restore == RestorePoint(image=OLD)  # the original image is still what a failure restores


def test_without_rollback_on_failure_the_trading_env_still_goes_back_and_the_kept_image_is_said_loudly() -> None:
    spec = make_spec(promotion=PROMOTION, rollback={"onFailure": False})
    status = _live_canary(spec)
    applied = run(spec, status, target=env_target(LIVE)).status
    bad = {c.name: measured(Verdict.FAILED, "0.5", "fallback: value 0.5 above max 0.25") for c in spec.verify.checks}
    p = run(spec, applied, at=T0 + timedelta(hours=2), target=env_target(LIVE), measurements=bad)
    assert p.status.phase is Phase.ROLLING_BACK
    p = run(spec, p.status, target=env_target(LIVE))
    assert p.actions == (SetTargetEnv({"TRADING_MODE": "shadow", "TRADING_CAPITAL_FRACTION": None}),)
    done = run(spec, p.status, target=env_target({"TRADING_MODE": "shadow"}))
    assert done.status.phase is Phase.FAILED
    assert condition(done, "Restored") == ("False", "RollbackDisabled")
    assert condition(done, "Ready") == ("False", "RollbackDisabled")
    assert any(e.reason == "RollbackDisabled" and e.type == "Warning" for e in done.events)
    assert done.status.restore == RestorePoint(image=OLD)  # a retry still knows the original image


def test_a_rollback_that_cannot_complete_fails_loudly_and_keeps_the_restore_record() -> None:
    spec = make_spec(promotion=PROMOTION, deploy={"progressDeadline": "5m"})
    status = started(spec, Phase.ROLLING_BACK, restore=RestorePoint(image=OLD, env={"TRADING_MODE": "paper"}))
    stuck = TargetState(exists=True, image=OLD, rolled_out=False, detail="0/1 ready", env={"TRADING_MODE": "paper"})
    p = run(spec, status, at=T0 + timedelta(minutes=10), target=stuck)
    assert p.status.phase is Phase.FAILED
    assert condition(p, "Restored") == ("False", "RestoreFailed")
    assert condition(p, "Ready") == ("False", "RestoreFailed")
    assert p.status.restore is not None
    assert "may still run the new image or trading env" in p.status.message
    retried = run(spec, p.status, verb="retry", target=env_target({"TRADING_MODE": "live"}))
    assert retried.status.restore is not None
    assert retried.actions == (SetTargetEnv({"TRADING_MODE": "paper"}),)


def test_spec_paused_never_pauses_a_rollback() -> None:
    spec = make_spec()
    status = started(spec, Phase.ROLLING_BACK)
    p = run(spec.model_copy(update={"paused": True}), status, target=target(NEW))
    assert p.status.phase is Phase.ROLLING_BACK
    assert p.actions == (SetTargetImage(OLD),)


# --- evidence tied to the release ---


def test_promotion_evidence_is_looked_for_since_the_attempt_or_within_the_window_for_the_candidate() -> None:
    steps = [
        {
            "name": "paper",
            "env": {"TRADING_MODE": "paper"},
            "requiredPromotion": {"mode": "paper", "candidateId": "cand-7", "window": "2h"},
        }
    ]
    spec = make_spec(promotion={"steps": steps})
    status = promoting(spec)
    asked = run(spec, status, target=env_target({"TRADING_MODE": "shadow"}))
    assert asked.actions == (CheckPromotionEvidence("paper", format_time(T0 - timedelta(hours=2)), "cand-7"),)


def test_a_soak_holds_the_next_step_until_the_previous_stage_stayed_verified_long_enough() -> None:
    steps = [{"name": "paper", "env": {"TRADING_MODE": "paper"}, "requiredSoakTime": "30m"}]
    spec = make_spec(promotion={"steps": steps})
    status = promoting(spec)
    soaking = run(spec, status, at=T0 + timedelta(minutes=10), target=env_target({"TRADING_MODE": "shadow"}))
    assert soaking.actions == ()
    assert condition(soaking, "Promoted") == ("False", "Soaking")
    assert "soaking" in soaking.status.message
    assert soaking.requeue_after is not None
    assert soaking.requeue_after > 0
    later = run(spec, status, at=T0 + timedelta(minutes=40), target=env_target({"TRADING_MODE": "shadow"}))
    assert later.actions == (SetTargetEnv({"TRADING_MODE": "paper"}),)


def test_required_evidence_is_never_waived_and_fails_when_it_stays_missing() -> None:
    check = {
        "name": "research-writes",
        "postgres": {"query": "SELECT 0"},
        "successCondition": "result >= 1",
        "failureCondition": "false",
        "inconclusiveLimit": 1,
        "waivable": False,
    }
    spec = make_spec(verify={"count": 1, "interval": "1s", "checks": [check]})
    nodata = {"research-writes": measured(Verdict.INCONCLUSIVE, "0")}
    p = run(spec, verifying(spec), target=target(NEW), measurements=nodata)
    assert p.status.phase is Phase.VERIFYING
    assert not p.status.awaiting_approval
    refused = run(spec, p.status, verb="promote", target=target(NEW))
    assert refused.status.last_action is not None
    assert refused.status.last_action.result.startswith("nothing awaits approval")
    p = run(spec, p.status, at=T0 + timedelta(seconds=5), target=target(NEW), measurements=nodata)
    assert p.status.phase is Phase.ROLLING_BACK
    assert "required evidence missing" in p.status.message


@pytest.mark.parametrize(
    ("steps", "error"),
    [
        ([{"name": "live", "env": {"TRADING_MODE": "live"}}], "needs requiredPromotion with mode live"),
        (
            [{"name": "live", "env": {"TRADING_MODE": "live"}, "requiredPromotion": {"mode": "paper"}}],
            "needs requiredPromotion with mode live",
        ),
        (
            [{"name": "live", "env": {"TRADING_MODE": "live"}, "requiredPromotion": {"mode": "live"}}],
            "reaches live before any paper step",
        ),
        (
            [
                {"name": "paper", "env": {"TRADING_MODE": "paper"}},
                {"name": "live", "env": {"TRADING_MODE": "live"}, "requiredPromotion": {"mode": "live"}},
                {"name": "back", "env": {"TRADING_MODE": "paper"}},
            ],
            "goes back from live to paper",
        ),
        ([{"name": "typo", "env": {"TRADING_MODE": "Live"}}], "TRADING_MODE must be one of paper, live"),
    ],
)
def test_promotion_steps_that_would_trade_live_without_evidence_or_out_of_order_are_rejected(
    steps: list[dict[str, Any]], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        make_spec(promotion={"steps": steps})


def test_unordered_steps_are_allowed_only_when_the_spec_says_so() -> None:
    steps = [{"name": "live", "env": {"TRADING_MODE": "live"}, "requiredPromotion": {"mode": "live"}}]
    spec = make_spec(promotion={"steps": steps, "allowUnordered": True})
    assert spec.promotion is not None
    assert spec.promotion.allow_unordered


@pytest.mark.parametrize("duration", ["99999999h", "169h", "10081m"])
def test_durations_past_a_week_are_rejected(duration: str) -> None:
    with pytest.raises(ValueError, match="longer than the maximum 168h"):
        make_spec(verify={"interval": duration, "checks": [{"name": "a", "http": {"url": "http://x"}, "min": 1}]})


@pytest.mark.parametrize(
    ("mode", "first", "verdict_after_first"),
    [("Lenient", Verdict.INCONCLUSIVE, Verdict.RUNNING), ("Strict", Verdict.FAILED, Verdict.FAILED)],
)
def test_research_writes_are_required_evidence_strict_fails_at_once(
    mode: str, first: Verdict, verdict_after_first: Verdict
) -> None:
    spec = make_spec(
        presets=["torghut-completion"], serviceUrl="http://torghut", researchMode=mode, verify={"count": 1}
    )
    (check,) = [c for c in effective_checks(spec) if c.name == "research-writes"]
    assert not check.waivable
    verdict, message = judge(check, Reading(0))
    assert verdict is first
    assert "research-writes" in message
    assert "research_runs" in message  # the message names what was looked for (the query)
    state = _fresh_check(check)
    after = _record(check, state, measured(verdict, "0", message), count=1)
    assert after.phase is verdict_after_first


def test_a_promotion_step_measures_its_own_checks() -> None:
    own = {"name": "fallback-live", "prometheus": {"query": "ratio"}, "max": 0.1}
    steps = [{"name": "paper", "env": {"TRADING_MODE": "paper"}, "checks": [own]}]
    spec = make_spec(promotion={"steps": steps})
    checks = effective_checks(spec)
    status = promoting(spec)
    assert [c.name for c in stage_checks(spec, checks, status)] == ["fallback-live"]
    assert stage_checks(spec, checks, verifying(spec)) == checks
