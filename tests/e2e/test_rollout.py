"""A TorghutRollout end to end: the operator as a process, CRs applied with kubectl, real Postgres and
Prometheus. Each test names the behaviour an on-call engineer would see."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa

from tests.e2e.conftest import NEW_IMAGE, OLD_IMAGE, REAL_NODE_POD, World, rollout_manifest
from torghut_localstack import torghut_db, workloads
from torghut_localstack.wait import wait_for

pytestmark = pytest.mark.e2e

MIGRATE_JOB = {
    "image": workloads.BUSYBOX_IMAGE,
    "command": ["sh", "-c", "echo migrated"],
    "backoffLimit": 0,
    **REAL_NODE_POD,  # a real container runs the command
}


def healthy_checks(world: World) -> list[dict[str, Any]]:
    return [
        {"name": "executions-written", "postgres": {"query": "SELECT COUNT(*) AS value FROM executions"}, "min": 1},
        {
            "name": "decisions-flowing",
            "prometheus": {"query": "sum(torghut_trading_decisions_total)"},
            "successCondition": "result > 0",
        },
        {
            "name": "healthz",
            "http": {"url": f"{world.simulator.url}/healthz", "jsonPath": "$.status"},
            "successCondition": 'result == "ok"',
        },
    ]


def run_sql(world: World, *statements: str) -> None:
    engine = torghut_db.make_engine(world.postgres.dsn(world.database))
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def reasons(world: World, name: str) -> list[str]:
    return [e["reason"] for e in world.events(name)]


def test_happy_path_migrates_deploys_verifies_and_reports_ready(world: World) -> None:
    world.apply(
        rollout_manifest(
            "release",
            world,
            migrate={"job": MIGRATE_JOB},
            verify={"interval": "1s", "count": 2, "checks": healthy_checks(world)},
        )
    )
    obj = world.wait_phase("release", "Succeeded")
    world.kubectl("wait", "--for=condition=Ready", "torghutrollout/release", "-n", world.namespace, "--timeout=10s")
    status = obj["status"]
    assert world.deployment_image() == NEW_IMAGE
    assert status["previousImage"] == OLD_IMAGE
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["migration"]["jobName"].startswith("release-migrate-")
    for type_ in ("Ready", "Migrated", "Deployed", "Verified"):
        assert condition(obj, type_)["status"] == "True", condition(obj, type_)
    assert {c["name"]: c["phase"] for c in status["checks"]} == {
        "executions-written": "Successful",
        "decisions-flowing": "Successful",
        "healthz": "Successful",
    }
    assert all(len(c["measurements"]) >= 2 for c in status["checks"])
    job = world.kubectl.get("job", status["migration"]["jobName"], namespace=world.namespace)
    assert job is not None
    assert job["metadata"]["ownerReferences"][0]["kind"] == "TorghutRollout"
    env = job["spec"]["template"]["spec"]["containers"][0]["env"][0]
    assert env == {"name": "DB_DSN", "valueFrom": {"secretKeyRef": {"name": "torghut-db-app", "key": "uri"}}}
    seen = reasons(world, "release")
    assert {"Migrating", "Deploying", "Verifying", "Succeeded", "CheckSuccessful"} <= set(seen)
    printed = world.kubectl("get", "torghutrollouts", "-n", world.namespace)
    assert "Succeeded" in printed
    assert NEW_IMAGE in world.kubectl("get", "torghutrollouts", "-n", world.namespace, "-o", "wide")
    assert world.dsn.split("@")[0] not in json.dumps(obj) + json.dumps(world.events("release"))


def test_failed_migration_job_fails_the_rollout_and_leaves_the_target_untouched(world: World) -> None:
    job = {**MIGRATE_JOB, "command": ["sh", "-c", "exit 1"]}
    world.apply(
        rollout_manifest("broken-migration", world, migrate={"job": job}, verify={"checks": healthy_checks(world)})
    )
    obj = world.wait_phase("broken-migration", "Failed")
    assert condition(obj, "Migrated")["reason"] == "MigrationFailed"
    assert "BackoffLimitExceeded" in obj["status"]["message"]
    assert obj["status"]["failedStage"] == "migrate"
    assert world.deployment_image() == OLD_IMAGE
    assert world.kubectl.get("job", obj["status"]["migration"]["jobName"], namespace=world.namespace) is not None


def test_a_turn_the_api_server_keeps_refusing_backs_off_and_says_why(world: World) -> None:
    """The namespace allows no Job (a ResourceQuota of zero): every turn fails the same way. The rollout says why in
    status and stays where it is, and the operator retries after 2 s, 4 s, 8 s… — before, each turn's own error
    report came back through the watch and woke it at once (195 turns in 5 s in one CI run)."""
    world.apply(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "no-jobs"},
            "spec": {"hard": {"count/jobs.batch": "0"}},
        }
    )
    world.apply(
        rollout_manifest("refused", world, migrate={"job": MIGRATE_JOB}, verify={"checks": healthy_checks(world)})
    )

    def three_failed_turns() -> list[dict[str, Any]] | None:
        failed = [e for e in world.events("refused") if e.get("reason") == "ReconcileError"]
        return failed if len(failed) >= 3 else None

    failed = wait_for(three_failed_turns, timeout=60, what="three failed turns of the refused rollout")
    stamps = sorted(datetime.fromisoformat(e.get("eventTime") or e["firstTimestamp"]) for e in failed)
    assert (stamps[2] - stamps[0]).total_seconds() >= 4, f"three failed turns within {stamps[2] - stamps[0]}"

    def reported() -> dict[str, Any] | None:  # each failed turn first writes its plan, then the error: wait for it
        obj = world.rollout("refused")
        ready = condition(obj, "Ready") or {}
        return obj if ready.get("reason") == "ReconcileError" else None

    obj = wait_for(reported, timeout=30, what="the refused rollout's ReconcileError in status")
    assert obj["status"]["phase"] == "Migrating"
    assert "exceeded quota" in condition(obj, "Ready")["message"]
    assert world.deployment_image() == OLD_IMAGE


def test_postgres_check_over_its_threshold_rolls_back_to_the_previous_image(world: World) -> None:
    bad = {"name": "route-null-rate", "postgres": {"query": "SELECT 0.5 AS value"}, "max": 0.1}
    world.apply(rollout_manifest("null-rate", world, verify={"interval": "1s", "count": 2, "checks": [bad]}))
    obj = world.wait_phase("null-rate", "RolledBack")
    assert world.deployment_image() == OLD_IMAGE
    check = obj["status"]["checks"][0]
    assert check["phase"] == "Failed"
    assert "0.5" in check["message"]
    assert "0.1" in check["message"]
    assert "SELECT 0.5" in check["message"]
    assert condition(obj, "Verified")["reason"] == "GateFailed"
    workloads.wait_for_rollout(world.kubectl, "torghut", namespace=world.namespace)


def test_unreachable_prometheus_errors_then_fails_at_the_error_limit_never_succeeds(world: World) -> None:
    check = {"name": "decisions", "prometheus": {"query": "sum(up)"}, "min": 0, "consecutiveErrorLimit": 2}
    manifest = rollout_manifest(
        "no-prometheus",
        world,
        prometheus={"url": "http://127.0.0.1:9"},
        rollback={"onFailure": False},
        verify={"interval": "1s", "count": 1, "checks": [check]},
    )
    world.apply(manifest)
    obj = world.wait_phase("no-prometheus", "Failed", "Succeeded")
    assert obj["status"]["phase"] == "Failed"
    check_status = obj["status"]["checks"][0]
    assert check_status["phase"] == "Error"
    assert check_status["errors"] == 3
    assert all(m["phase"] == "Error" for m in check_status["measurements"])
    assert condition(obj, "Verified")["reason"] == "GateError"


def test_empty_promql_result_is_inconclusive_and_waits_for_a_human(world: World) -> None:
    check = {"name": "no-such-series", "prometheus": {"query": "torghut_trading_no_such_series_total"}, "min": 1}
    world.apply(rollout_manifest("no-data", world, verify={"interval": "1s", "count": 1, "checks": [check]}))

    def awaiting() -> dict[str, Any] | None:
        obj = world.rollout("no-data")
        return obj if (obj.get("status") or {}).get("awaitingApproval") else None

    obj = wait_for(awaiting, timeout=90, what="no-data awaiting approval")
    assert obj["status"]["phase"] == "Verifying"
    assert obj["status"]["checks"][0]["phase"] == "Inconclusive"
    assert "no data" in obj["status"]["checks"][0]["message"]
    assert condition(obj, "Ready")["reason"] == "AwaitingApproval"
    world.kubectl("annotate", "torghutrollout/no-data", "-n", world.namespace, "torghut.proompteng.ai/action=abort")
    obj = world.wait_phase("no-data", "Aborted")
    assert world.deployment_image() == OLD_IMAGE


def test_pause_resume_abort_and_retry(world: World) -> None:
    run_sql(world, "CREATE TABLE e2e_gate (ok int)", f"GRANT SELECT ON e2e_gate TO {torghut_db.APP_ROLE}")
    check = {"name": "gate-open", "postgres": {"query": "SELECT COUNT(*) AS value FROM e2e_gate"}, "min": 1}
    world.apply(rollout_manifest("verbs", world, verify={"interval": "2s", "count": 1, "checks": [check]}))
    annotate = ["annotate", "--overwrite", "torghutrollout/verbs", "-n", world.namespace]
    world.kubectl(*annotate, "torghut.proompteng.ai/action=pause")
    paused = world.wait_phase("verbs", "Paused")
    assert paused["status"]["pausedFrom"] in ("Pending", "Deploying", "Verifying")
    world.kubectl(*annotate, "torghut.proompteng.ai/action=pause")
    world.kubectl(*annotate, "torghut.proompteng.ai/action=resume")
    failed = world.wait_phase("verbs", "RolledBack")
    assert failed["status"]["lastAction"]["verb"] in ("resume", "pause")
    assert world.deployment_image() == OLD_IMAGE
    run_sql(world, "INSERT INTO e2e_gate VALUES (1)")
    world.kubectl(*annotate, "torghut.proompteng.ai/action=retry")
    done = world.wait_phase("verbs", "Succeeded")
    assert done["status"]["attempt"] == 2
    assert world.deployment_image() == NEW_IMAGE
    assert "torghut.proompteng.ai/action" not in (done["metadata"].get("annotations") or {})
    world.kubectl(*annotate, "torghut.proompteng.ai/action=abort")
    wait_for(
        lambda: (world.rollout("verbs")["status"].get("lastAction") or {}).get("verb") == "abort",
        timeout=30,
        what="abort handled",
    )
    after = world.rollout("verbs")
    assert after["status"]["phase"] == "Succeeded"
    assert "nothing to abort" in after["status"]["lastAction"]["result"]


def test_a_second_rollout_on_the_same_target_waits_blocked_until_the_first_ends(world: World) -> None:
    slow = {
        "name": "slow",
        "http": {"url": f"{world.simulator.url}/healthz", "jsonPath": "$.status"},
        "successCondition": 'result == "ok"',
    }
    world.apply(
        rollout_manifest("first", world, verify={"initialDelay": "8s", "interval": "1s", "count": 1, "checks": [slow]})
    )
    world.wait_phase("first", "Deploying", "Verifying")
    world.apply(rollout_manifest("second", world, verify={"interval": "1s", "count": 1, "checks": [slow]}))

    def blocked() -> dict[str, Any] | None:
        obj = world.rollout("second")
        return obj if (obj.get("status") or {}).get("blockedBy") == "first" else None

    obj = wait_for(blocked, timeout=60, what="second blocked by first")
    assert condition(obj, "Ready")["reason"] == "Blocked"
    assert "first" in condition(obj, "Ready")["message"]
    world.wait_phase("first", "Succeeded")
    second = world.wait_phase("second", "Succeeded")
    assert second["status"].get("blockedBy") is None


def test_deleting_a_rollout_mid_run_removes_its_job(world: World) -> None:
    check = {"name": "later", "http": {"url": f"{world.simulator.url}/healthz"}, "successCondition": "true"}
    world.apply(
        rollout_manifest(
            "deleted", world, migrate={"job": MIGRATE_JOB}, verify={"initialDelay": "10m", "checks": [check]}
        )
    )
    obj = world.wait_phase("deleted", "Verifying")
    job_name = obj["status"]["migration"]["jobName"]
    assert world.kubectl.get("job", job_name, namespace=world.namespace) is not None
    world.kubectl("delete", "torghutrollout/deleted", "-n", world.namespace, "--timeout=60s", timeout=70)
    wait_for(
        lambda: world.kubectl.get("job", job_name, namespace=world.namespace) is None,
        timeout=60,
        what=f"Job {job_name} garbage-collected",
    )


def test_sql_migration_applies_each_file_once_when_the_operator_is_killed_mid_stage(world: World) -> None:
    files = {
        "0001_counter.sql": "CREATE TABLE IF NOT EXISTS e2e_applied (file text);\nINSERT INTO e2e_applied VALUES ('0001');\n",
        "0002_slow.sql": "SELECT pg_sleep(4);\nINSERT INTO e2e_applied VALUES ('0002');\n",
        "0003_last.sql": "INSERT INTO e2e_applied VALUES ('0003');\n",
    }
    world.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "sql-pack"}, "data": files},
        rollout_manifest(
            "sql-restart",
            world,
            migrate={"sql": {"configMapRef": {"name": "sql-pack"}}},
            verify={"interval": "1s", "count": 1, "checks": healthy_checks(world)[:1]},
        ),
    )
    engine = torghut_db.make_engine(world.postgres.dsn(world.database))
    try:

        def sleeping() -> bool:
            with engine.connect() as conn:
                query = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(4)%'"
                return bool(conn.execute(sa.text(query)).scalar_one())

        wait_for(sleeping, timeout=60, interval=0.1, what="0002_slow.sql running")
        world.operator.kill()
        world.operator.start()
        world.wait_phase("sql-restart", "Succeeded", timeout=120)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT file FROM e2e_applied ORDER BY file")).scalars().all()
            history = (
                conn.execute(sa.text("SELECT name FROM torghut_rollout.sql_migrations ORDER BY name")).scalars().all()
            )
    finally:
        engine.dispose()
    assert rows == ["0001", "0002", "0003"]
    assert history == sorted(files)
    applied = world.rollout("sql-restart")["status"]["migration"]["applied"]
    assert sorted(a["name"] for a in applied) == sorted(files)


def test_turns_read_the_rollout_and_its_target_from_the_watch_where_that_is_safe(world: World) -> None:
    """Most turns of a rollout read both objects from the operator's own watch instead of GETs (fewer round trips, less
    CPU); the first look at the target (its restore point) and the look after each measurement stay GETs."""
    from tests.e2e.test_torghut import series  # noqa: PLC0415

    def reads() -> dict[tuple[str, str], float]:
        text = world.operator.scrape()
        return {
            (obj, source): sum(series(text, "torghut_rollout_object_reads_total", object=obj, source=source))
            for obj in ("rollout", "target")
            for source in ("api", "watch")
        }

    before = reads()
    check = {"name": "db-up", "postgres": {"query": "SELECT 1 AS value"}, "min": 1}
    world.apply(rollout_manifest("watched", world, verify={"interval": "1s", "count": 3, "checks": [check]}))
    done = world.wait_phase("watched", "Succeeded", timeout=120)
    after = reads()
    delta = {key: after[key] - before[key] for key in after}
    assert delta[("rollout", "watch")] >= 1, delta
    assert delta[("target", "watch")] >= 1, delta
    assert delta[("target", "api")] >= 4, f"the first look and one after each of 3 measurements are GETs: {delta}"
    assert done["status"]["previousImage"] == OLD_IMAGE
    assert world.deployment_image() == NEW_IMAGE
