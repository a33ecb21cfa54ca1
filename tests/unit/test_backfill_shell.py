"""Backfills as the shell sees them: the spec's knobs reach the migrator, its progress reaches status in slices,
the catch-up's slices share one run id, and a status field that stops being set is removed from the object."""

from __future__ import annotations

import asyncio
import copy
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from pydantic import ValidationError

from torghut_operator.adapters import live
from torghut_operator.adapters.kube import KubeGateway
from torghut_operator.adapters.live import ConfigReads
from torghut_operator.adapters.postgres.migrator import BackfillProgress, BackfillSettings, SqlMigrationResult
from torghut_operator.core.api.spec import Target, TorghutRolloutSpec
from torghut_operator.core.api.status import BackfillStatus, MigrationStatus, PromotionStatus, TorghutRolloutStatus
from torghut_operator.core.observations import SqlOutcome
from torghut_operator.core.timefmt import format_time
from torghut_operator.shell.ports import Gates
from torghut_operator.shell.reconciler import Reconciler, _dump_status

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NEW = "registry/torghut@sha256:new"
SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"
SQL_SAMPLE_HASH = "d05d56a4f7b01fef"
"""The hash of manifests/samples/sql-migration-expect.yaml's spec before lockTimeout, lockRetries and backfill."""


def spec_body(**sql: Any) -> dict[str, Any]:
    return {
        "target": {"name": "torghut", "container": "torghut", "image": NEW},
        "database": {"secretRef": {"name": "reader", "key": "uri"}},
        "migrate": {"sql": {"configMapRef": {"name": "pack"}, "secretRef": {"name": "owner", "key": "uri"}, **sql}},
        "verify": {"checks": [{"name": "h", "http": {"url": "http://x"}, "min": 1}]},
    }


def progress(done: int, total: int = 1_000, *, finished: bool = False, **changes: Any) -> BackfillProgress:
    fields: dict[str, Any] = {
        "file": "0004_backfill_routes.sql",
        "table": "public.executions",
        "rows_done": done,
        "rows_total": total,
        "batches": done // 100,
        "batch_size": 100,
        "rows_per_second": 50.0,
        "eta_seconds": None if finished else (total - done) / 50.0,
        "throttled": None,
        "finished": finished,
    }
    return BackfillProgress(**(fields | changes))


# --- spec ---


def test_the_spec_defaults_are_the_contracts_and_bounds_are_enforced() -> None:
    sql = TorghutRolloutSpec.model_validate(spec_body()).migrate
    assert sql is not None
    assert sql.sql is not None
    assert (sql.sql.lock_timeout, sql.sql.lock_retries, sql.sql.backfill) == ("2s", 5, None)
    assert live.backfill_settings(None) == BackfillSettings()
    tuned = TorghutRolloutSpec.model_validate(
        spec_body(lockTimeout="500ms", lockRetries=0, backfill={"batchDuration": "250ms", "maxReplicaLag": "2s"})
    )
    assert tuned.migrate is not None
    assert tuned.migrate.sql is not None
    assert live.backfill_settings(tuned.migrate.sql.backfill) == BackfillSettings(
        batch_duration=0.25, pause=0.0, max_transaction_age=60.0, max_replica_lag=2.0
    )
    for bad in ({"lockRetries": 21}, {"lockRetries": -1}, {"lockTimeout": "2"}, {"backfill": {"pause": "9999h"}}):
        with pytest.raises(ValidationError):
            TorghutRolloutSpec.model_validate(spec_body(**bad))


def test_an_operator_upgrade_does_not_start_existing_rollouts_over() -> None:
    """The new fields at their defaults (as the API server fills them in) leave the spec hash as it was."""
    docs = yaml.safe_load_all((SAMPLES / "sql-migration-expect.yaml").read_text())
    sample = next(d for d in docs if d and d.get("kind") == "TorghutRollout")["spec"]
    assert TorghutRolloutSpec.model_validate(sample).spec_hash() == SQL_SAMPLE_HASH
    defaulted = copy.deepcopy(sample)
    defaulted["migrate"]["sql"] |= {"lockTimeout": "2s", "lockRetries": 5}
    assert TorghutRolloutSpec.model_validate(defaulted).spec_hash() == SQL_SAMPLE_HASH
    changes: list[dict[str, Any]] = [{"lockTimeout": "5s"}, {"lockRetries": 2}, {"backfill": {}}]
    for change in changes:
        edited = copy.deepcopy(sample)
        edited["migrate"]["sql"] |= change
        assert TorghutRolloutSpec.model_validate(edited).spec_hash() != SQL_SAMPLE_HASH, change


# --- apply_sql: the migrator built from the spec, one slice per call ---


class Kube:
    def read_config_map(self, namespace: str, name: str) -> dict[str, str]:
        return {"0004_backfill_routes.sql": "-- torghut-rollout: backfill table=public.executions\nSELECT 1;"}

    def read_secret_value(self, namespace: str, name: str, key: str) -> str:
        return f"postgresql://{name}@db/torghut"


@dataclass
class Migrator:
    """Records how it was built and called; answers with ``result``."""

    result: SqlMigrationResult
    built: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, dsn: str, **kwargs: Any) -> Migrator:
        self.built.append({"dsn": dsn, **kwargs})
        return self

    def apply(self, files: dict[str, str], **kwargs: Any) -> SqlMigrationResult:
        self.calls.append(kwargs)
        return self.result


def result(backfill: BackfillProgress | None) -> SqlMigrationResult:
    return SqlMigrationResult(
        applied=(), skipped=(), pending=("0004_backfill_routes.sql",), warnings=(), error=None, backfill=backfill
    )


@pytest.mark.parametrize("catch_up", [False, True])
def test_apply_sql_builds_the_migrator_from_the_spec_and_runs_one_slice(
    monkeypatch: pytest.MonkeyPatch, catch_up: bool
) -> None:
    migrator = Migrator(result(progress(400, throttled="1 lock wait on public.executions")))
    monkeypatch.setattr("torghut_operator.adapters.postgres.migrator.SqlMigrator", migrator)
    spec = TorghutRolloutSpec.model_validate(spec_body(lockTimeout="3s", lockRetries=7, backfill={"pause": "50ms"}))

    outcome = live.LiveGates(cast(ConfigReads, Kube())).apply_sql(
        spec, "torghut", "release", catch_up=catch_up, run="2026-12-01T12:00:00.000Z attempt 2"
    )

    (built,) = migrator.built
    assert built["dsn"] == "postgresql://owner@db/torghut"  # migrate.sql.secretRef
    assert (built["lock_timeout"], built["lock_retries"]) == (3.0, 7)
    assert built["backfill"] == BackfillSettings(pause=0.05)
    (call,) = migrator.calls
    assert call["budget"] == live.BACKFILL_SLICE == 10.0
    assert call["catch_up"] is catch_up
    expected_run = "catch-up torghut/release 2026-12-01T12:00:00.000Z attempt 2" if catch_up else None
    assert call["run"] == expected_run
    assert outcome.in_progress
    assert outcome.error is None
    assert outcome.backfill is not None
    assert outcome.backfill.rows_done == 400
    assert outcome.backfill.eta_seconds == 12
    assert outcome.backfill.throttled == "1 lock wait on public.executions"


def test_the_migrators_figures_become_a_status_the_api_server_accepts() -> None:
    odd = progress(1_200, 1_000, rows_per_second=math.nan, eta_seconds=math.inf, throttled="")
    status = live.backfill_status(odd, at=NOW)
    assert status.rows_total == 1_200  # never fewer than done
    assert status.rows_per_second == 0.0  # NaN is no JSON number
    assert status.eta_seconds is None
    assert status.throttled is None
    assert status.updated_at == format_time(NOW)
    assert live.backfill_status(progress(999, eta_seconds=0.2), at=NOW).eta_seconds == 1  # rounded up, never 0 early
    done = live.sql_outcome(result(progress(1_000, finished=True)), at=NOW)
    assert not done.in_progress
    assert done.backfill is not None
    assert done.backfill.finished
    assert live.sql_outcome(result(None), at=NOW) == SqlOutcome(backfill=None, in_progress=False)


# --- status patches ---


def test_a_nested_field_no_longer_set_is_removed_by_the_status_patch() -> None:
    """A merge patch keeps what it does not mention: `throttled` must be sent as null once it stops."""
    running = BackfillStatus(
        file="f.sql",
        table="public.executions",
        rows_done=1,
        rows_total=2,
        batches=1,
        batch_size=1,
        rows_per_second=1.0,
        eta_seconds=1,
        throttled="1 lock wait",
        updated_at=format_time(NOW),
    )
    calm = running.model_copy(update={"throttled": None, "eta_seconds": None})
    patch = _dump_status(TorghutRolloutStatus(migration=MigrationStatus(mode="sql", backfill=calm)))
    assert patch["migration"]["backfill"]["throttled"] is None
    assert patch["migration"]["backfill"]["etaSeconds"] is None
    assert "throttled" in patch["migration"]["backfill"]
    assert patch["promotion"] is None
    with_checks = _dump_status(TorghutRolloutStatus.model_validate({"checks": [{"name": "c", "stage": "verify",
        "provider": "http", "query": "q", "threshold": "t", "measurements": [{"phase": "Successful", "at": "x"}]}]}))  # fmt: skip
    assert "value" not in with_checks["checks"][0]["measurements"][0]  # no nulls stored inside lists


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies the operator's status patch."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def test_the_next_promotion_step_does_not_inherit_the_previous_steps_patch_time() -> None:
    """A stale promotion.patchedAt made the planner skip the next step's evidence and approval."""
    applied = TorghutRolloutStatus.model_validate(
        {"phase": "Promoting", "promotion": {"step": 0, "stepName": "paper", "applied": True, "patchedAt": "t1"}}
    )
    next_step = applied.model_copy(
        update={"promotion": PromotionStatus(step=1, step_name="canary", completed=["paper"], soak_since="t2")}
    )
    stored = merge_patch(merge_patch({}, _dump_status(applied)), _dump_status(next_step))
    assert TorghutRolloutStatus.model_validate(stored) == next_step


# --- a turn of the reconciler ---


class FakeKube:
    def __init__(self, rollout: dict[str, Any]) -> None:
        self.rollout = rollout

    async def get_rollout(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.rollout)

    async def patch_rollout_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str
    ) -> str | None:
        self.rollout["status"] = merge_patch(self.rollout.get("status") or {}, status)
        return "2"

    async def get_target(self, namespace: str, target: Target) -> dict[str, Any] | None:
        container = {"name": "torghut", "image": NEW, "env": []}
        ready = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
        return {
            "metadata": {"generation": 1},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [container]}}},
            "status": {**ready, "readyReplicas": 1},
        }


class SlicingGates:
    """apply_sql answers with the next outcome of ``slices``; every other gate is quiet."""

    def __init__(self, slices: list[SqlOutcome]) -> None:
        self.slices = slices
        self.calls: list[tuple[bool, str | None]] = []

    def apply_sql(
        self, spec: TorghutRolloutSpec, namespace: str, rollout: str, *, catch_up: bool = False, run: str | None = None
    ) -> SqlOutcome:
        self.calls.append((catch_up, run))
        return self.slices.pop(0)

    def record_evidence(self, *args: Any) -> None:
        pass


def status_backfill(done: int, *, finished: bool = False, at: datetime = NOW) -> BackfillStatus:
    return live.backfill_status(progress(done, finished=finished), at=at)


def test_a_catch_up_backfill_runs_slice_by_slice_under_one_run_id() -> None:
    body = TorghutRolloutSpec.model_validate(spec_body()).spec_hash()
    started = format_time(NOW - timedelta(minutes=1))
    rollout = {
        "metadata": {"name": "release", "namespace": "torghut", "uid": "u1", "generation": 1, "resourceVersion": "1"},
        "spec": spec_body(),
        "status": {
            "phase": "Deploying",
            "stage": "deploy",
            "specHash": body,
            "attempt": 2,
            "image": NEW,
            "startedAt": started,
            "phaseStartedAt": started,
            "migration": {"mode": "sql", "completedAt": started},
        },
    }
    kube = FakeKube(rollout)
    slices = [
        SqlOutcome(backfill=status_backfill(300), in_progress=True),
        SqlOutcome(backfill=status_backfill(700), in_progress=True),
        SqlOutcome(backfill=status_backfill(1_000, finished=True)),
    ]
    gates = SlicingGates(slices)
    events: list[tuple[str, str, str]] = []

    def sink(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        events.append((type_, reason, message))

    reconciler = Reconciler(cast(KubeGateway, kube), cast(Gates, gates), sink, clock=lambda: NOW)
    first = asyncio.run(reconciler.reconcile("torghut", "release"))
    assert first is not None
    assert first.requeue_after == 1.0
    assert kube.rollout["status"]["phase"] == "Deploying"
    assert kube.rollout["status"]["message"].startswith("catch-up: backfill 0004_backfill_routes.sql: 30% (300 / 1,000")
    assert kube.rollout["status"]["migration"]["backfill"]["rowsDone"] == 300

    asyncio.run(reconciler.reconcile("torghut", "release"))
    assert kube.rollout["status"]["migration"]["backfill"]["rowsDone"] == 700
    asyncio.run(reconciler.reconcile("torghut", "release"))

    assert kube.rollout["status"]["phase"] == "Verifying"
    assert kube.rollout["status"]["migration"]["backfill"]["finished"] is True
    run_id = f"{started} attempt 2"
    assert gates.calls == [(True, run_id)] * 3
    assert [reason for _, reason, _ in events if reason.startswith("Backfill")] == ["BackfillStarted", "BackfillDone"]
