"""The fault matrix: the operator killed with SIGKILL at every phase boundary and in the middle of every phase, the
API server restarted mid-verify, Postgres stopped mid-migration and mid-verify, Prometheus stopped mid-verify and
answering errors, and rollouts deleted mid-flight. Each ends in the documented phase, with nothing run twice (the
SQL files' side effects are counted, and so are the target's generations: every real change of the Deployment
bumps it once) and no verdict passed on missing data."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sqlalchemy as sa

from tests.e2e.conftest import NEW_IMAGE, OLD_IMAGE, World, rollout_manifest
from torghut_localstack import torghut_db
from torghut_localstack.cluster import LocalCluster
from torghut_localstack.wait import NotYet, wait_for

pytestmark = pytest.mark.e2e

SQL_FILES = {
    "0001_counter.sql": "CREATE TABLE IF NOT EXISTS e2e_applied (file text);\nINSERT INTO e2e_applied VALUES ('0001');\n",
    "0002_slow.sql": "SELECT pg_sleep(3);\nINSERT INTO e2e_applied VALUES ('0002');\n",
}
CANARY = {"TRADING_MODE": "live", "TRADING_CAPITAL_FRACTION": "0.10"}


@pytest.fixture
def faults(world: World) -> World:
    """The world made slow enough to stop in each phase: a 3 s SQL file, 3 s of minReadySeconds on the target (so
    Deploying and RollingBack last), a 3 s initial delay; research_promotions readable by the gate role."""
    world.kubectl(
        "patch", "deployment/torghut", "-n", world.namespace, "--type=merge", "-p", '{"spec":{"minReadySeconds":3}}'
    )
    world.postgres.execute(f"GRANT SELECT ON research_promotions TO {torghut_db.APP_ROLE}", world.database)
    world.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "sql-pack"}, "data": SQL_FILES})
    wait_for(lambda: available(world), timeout=60, what="the target available with minReadySeconds")
    return world


def release(
    world: World,
    name: str,
    *,
    canary_fails: bool = False,
    checks: list[dict[str, Any]] | None = None,
    error_limit: int = 4,
    **verify: Any,
) -> dict[str, Any]:
    if checks is None:
        checks = [
            {
                "name": "executions-written",
                "postgres": {"query": "SELECT COUNT(*) AS value FROM executions"},
                "min": 1,
                "consecutiveErrorLimit": error_limit,
            },
            {
                "name": "healthz",
                "http": {"url": f"{world.simulator.url}/healthz", "jsonPath": "$.status"},
                "successCondition": 'result == "ok"',
            },
        ]
    canary: dict[str, Any] = {
        "name": "canary",
        "env": CANARY,
        "requiredPromotion": {"mode": "live"},
        "requiresApproval": True,
    }
    if canary_fails:
        canary["checks"] = [{"name": "never", "postgres": {"query": "SELECT 1 AS value"}, "max": 0}]
    return rollout_manifest(
        name,
        world,
        migrate={"sql": {"configMapRef": {"name": "sql-pack"}}},
        deploy={"progressDeadline": "2m"},
        verify={"initialDelay": "3s", "interval": "1s", "count": 2, "checks": checks, **verify},
        promotion={
            "steps": [
                {"name": "paper", "env": {"TRADING_MODE": "paper"}, "requiredPromotion": {"mode": "paper"}},
                canary,
            ]
        },
    )


def status(world: World, name: str) -> dict[str, Any]:
    return world.rollout(name).get("status") or {}


def deployment(world: World) -> dict[str, Any]:
    obj = world.kubectl.get("deployment", "torghut", namespace=world.namespace)
    assert obj is not None
    return obj


def available(world: World) -> bool:
    obj = deployment(world)
    s = obj.get("status") or {}
    replicas = obj["spec"].get("replicas", 1)
    return bool(
        s.get("observedGeneration") == obj["metadata"]["generation"]
        and s.get("replicas") == replicas  # no old pod left
        and s.get("updatedReplicas") == replicas
        and s.get("availableReplicas") == replicas
    )


def env_of(world: World) -> dict[str, str]:
    container = deployment(world)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


def image_of(world: World) -> str:
    return str(deployment(world)["spec"]["template"]["spec"]["containers"][0]["image"])


def approve_evidence(world: World, *modes: str) -> None:
    """Approved research_promotions rows, created now (after the attempt started)."""
    engine = torghut_db.make_engine(world.postgres.dsn(world.database))
    try:
        with engine.begin() as conn:
            for mode in modes:
                conn.execute(
                    sa.text(
                        "INSERT INTO research_promotions (candidate_id, requested_mode, approved_mode, approver,"
                        " approve_reason, created_at) VALUES (:c, :m, :m, 'e2e', 'faults', now())"
                    ),
                    {"c": f"faults-{mode}", "m": mode},
                )
    finally:
        engine.dispose()


def applied_sql(world: World) -> tuple[list[str], list[str]]:
    engine = torghut_db.make_engine(world.postgres.dsn(world.database))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT file FROM e2e_applied ORDER BY file")).scalars().all()
            history = conn.execute(sa.text("SELECT name FROM torghut_rollout.sql_migrations ORDER BY name"))
            return list(rows), list(history.scalars().all())
    finally:
        engine.dispose()


def pg_sleeping(world: World) -> bool:
    engine = torghut_db.make_engine(world.postgres.dsn(world.database))
    try:
        with engine.connect() as conn:
            query = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(3)%'"
            return bool(conn.execute(sa.text(query)).scalar_one())
    finally:
        engine.dispose()


def promote(world: World, name: str) -> None:
    world.kubectl("annotate", f"torghutrollout/{name}", "-n", world.namespace, "torghut.proompteng.ai/action=promote")


def kill_and_restart(world: World) -> None:
    world.operator.kill()
    world.operator.start()


def in_phase(world: World, name: str, phase: str) -> Callable[[], bool]:
    def check() -> bool:
        return status(world, name).get("phase") == phase

    return check


def measured(world: World, name: str) -> Callable[[], bool]:
    def check() -> bool:
        s = status(world, name)
        return s.get("phase") == "Verifying" and any(c.get("measurements") for c in s.get("checks") or [])

    return check


def deploying_mid(world: World, name: str) -> Callable[[], bool]:
    def check() -> bool:
        return status(world, name).get("phase") == "Deploying" and image_of(world) == NEW_IMAGE and not available(world)

    return check


def awaiting_canary(world: World, name: str) -> Callable[[], bool]:
    def check() -> bool:
        s = status(world, name)
        return bool(s.get("awaitingApproval")) and (s.get("promotion") or {}).get("stepName") == "canary"

    return check


def restoring_mid(world: World, name: str) -> Callable[[], bool]:
    """The old image is back on the target. The pause pods turn ready within a second or two, so the rollout may
    already have reached RolledBack by the time a poll sees it; the second kill then lands after the end, which is
    harmless, and the final assertions still say whether the restore ran exactly once."""

    def check() -> bool:
        return image_of(world) == OLD_IMAGE and status(world, name).get("phase") in ("RollingBack", "RolledBack")

    return check


def drive_to_the_end(world: World, name: str, kills: list[tuple[str, Callable[[], bool]]], *, final: str) -> None:
    """Apply the release, kill -9 the operator at each point in turn (restarting it at once), approve the canary
    when it waits, and wait for ``final``."""
    approved = False
    for what, reached in kills:
        wait_for(reached, timeout=120, interval=0.1, what=f"{name}: {what}")
        kill_and_restart(world)
        if not approved and status(world, name).get("phase") in ("Promoting", "Verifying"):
            approve_evidence(world, "paper", "live")
            approved = True
    if not approved:
        approve_evidence(world, "paper", "live")
    wait_for(awaiting_canary(world, name), timeout=120, interval=0.2, what=f"{name}: canary awaiting approval")
    promote(world, name)
    world.wait_phase(name, final, timeout=180)


def assert_ran_once(world: World, generation_before: int, changes: int) -> None:
    rows, history = applied_sql(world)
    assert rows == ["0001", "0002"], f"SQL files' side effects: {rows}"
    assert history == sorted(SQL_FILES)
    assert deployment(world)["metadata"]["generation"] == generation_before + changes, (
        "the target was changed more (or fewer) times than the rollout has changes to make"
    )


def test_kill_9_at_every_phase_boundary_runs_nothing_twice(faults: World) -> None:
    world = faults
    before = deployment(world)["metadata"]["generation"]
    world.apply(release(world, "boundaries"))
    kills = [(f"entered {phase}", in_phase(world, "boundaries", phase)) for phase in ("Migrating", "Deploying")]
    kills += [(f"entered {phase}", in_phase(world, "boundaries", phase)) for phase in ("Verifying", "Promoting")]
    drive_to_the_end(world, "boundaries", kills, final="Succeeded")
    assert image_of(world) == NEW_IMAGE
    assert env_of(world)["TRADING_MODE"] == "live"
    assert_ran_once(world, before, changes=2)  # the image, then the canary's env


def test_kill_9_in_the_middle_of_every_phase_runs_nothing_twice(faults: World) -> None:
    world = faults
    before = deployment(world)["metadata"]["generation"]
    world.apply(release(world, "middles"))
    kills = [
        ("a SQL file running", lambda: pg_sleeping(world)),
        ("the new image rolling out", deploying_mid(world, "middles")),
        ("a measurement recorded", measured(world, "middles")),
        ("the canary awaiting approval", awaiting_canary(world, "middles")),
    ]
    drive_to_the_end(world, "middles", kills, final="Succeeded")
    assert env_of(world) == {"TRADING_MODE": "live", "TRADING_CAPITAL_FRACTION": "0.10"}
    assert_ran_once(world, before, changes=2)


def test_kill_9_while_rolling_back_still_restores_image_and_trading_env(faults: World) -> None:
    world = faults
    before = deployment(world)["metadata"]["generation"]
    world.apply(release(world, "restore", canary_fails=True))
    # Evidence counts only when created after the attempt started: approve once the rollout runs.
    wait_for(in_phase(world, "restore", "Verifying"), timeout=120, interval=0.2, what="verifying")
    approve_evidence(world, "paper", "live")
    wait_for(awaiting_canary(world, "restore"), timeout=120, interval=0.2, what="canary awaiting approval")
    promote(world, "restore")
    wait_for(lambda: env_of(world).get("TRADING_MODE") == "live", timeout=60, interval=0.1, what="live trading on")
    world.wait_phase("restore", "RollingBack", timeout=120)
    kill_and_restart(world)
    wait_for(restoring_mid(world, "restore"), timeout=60, interval=0.1, what="old image rolling out again")
    kill_and_restart(world)
    done = world.wait_phase("restore", "RolledBack", timeout=120)
    assert image_of(world) == OLD_IMAGE
    assert env_of(world) == {"TRADING_MODE": "paper"}
    assert "restore" not in done["status"]
    restored = next(c for c in done["status"]["conditions"] if c["type"] == "Restored")
    assert restored["status"] == "True"
    # image, canary env, then both restored in one turn: env and image (two patches of the Deployment)
    assert_ran_once(world, before, changes=4)


@pytest.mark.local_only(
    "restarts kube-apiserver, a process of the embedded control plane (kind runs it in a static pod)"
)
def test_the_api_server_restarted_mid_verify(faults: World, local_cluster: LocalCluster) -> None:
    world = faults
    world.apply(release(world, "apiserver", count=6))
    wait_for(measured(world, "apiserver"), timeout=120, interval=0.1, what="a measurement recorded")
    down = local_cluster.restart_apiserver()
    approve_evidence(world, "paper", "live")
    wait_for(awaiting_canary(world, "apiserver"), timeout=120, interval=0.2, what="canary awaiting approval")
    promote(world, "apiserver")
    done = world.wait_phase("apiserver", "Succeeded", timeout=120)
    assert down < 60
    for check in done["status"]["checks"]:
        assert check["phase"] == "Successful", check
    assert env_of(world)["TRADING_MODE"] == "live"


def test_postgres_stopped_mid_migration_waits_and_applies_each_file_once(faults: World) -> None:
    world = faults
    world.apply(release(world, "pg-migrate"))
    wait_for(lambda: pg_sleeping(world), timeout=60, interval=0.1, what="a SQL file running")
    with world.postgres.down():

        def waiting() -> bool:
            s = status(world, "pg-migrate")
            if s.get("phase") != "Migrating" or "will be retried" not in (s.get("message") or ""):
                raise NotYet(f"{s.get('phase')}: {s.get('message')}")
            return True

        wait_for(waiting, timeout=60, interval=0.2, what="the migration waiting for Postgres")
    approve_evidence(world, "paper", "live")
    wait_for(awaiting_canary(world, "pg-migrate"), timeout=120, interval=0.2, what="canary awaiting approval")
    rows, history = applied_sql(world)
    assert rows == ["0001", "0002"]
    assert history == sorted(SQL_FILES)


def test_postgres_stopped_mid_verify_is_an_error_never_a_pass_and_fails_at_the_error_limit(faults: World) -> None:
    world = faults
    world.apply(release(world, "pg-verify", error_limit=2, count=4))
    wait_for(measured(world, "pg-verify"), timeout=120, interval=0.1, what="a measurement recorded")
    with world.postgres.down():
        done = world.wait_phase("pg-verify", "RolledBack", "Failed", timeout=120)
    check = next(c for c in done["status"]["checks"] if c["name"] == "executions-written")
    assert check["phase"] == "Error", check
    assert check["measurements"][-1]["phase"] == "Error"
    assert done["status"]["phase"] == "RolledBack"
    assert image_of(world) == OLD_IMAGE


def test_prometheus_stopped_mid_verify_fails_closed(faults: World) -> None:
    world = faults
    check = {
        "name": "decisions",
        "prometheus": {"query": "sum(torghut_trading_decisions_total)"},
        "successCondition": "result >= 0",
        "consecutiveErrorLimit": 1,
    }
    world.apply(release(world, "prom-down", count=5, checks=[check]))
    wait_for(measured(world, "prom-down"), timeout=120, interval=0.1, what="a measurement recorded")
    with world.prometheus.down():
        done = world.wait_phase("prom-down", "RolledBack", timeout=120)
    state = done["status"]["checks"][0]
    assert state["phase"] == "Error"
    assert "prometheus" in state["message"]
    assert image_of(world) == OLD_IMAGE


class _ErrorAnswers(BaseHTTPRequestHandler):
    """A Prometheus look-alike whose every answer is an HTTP 200 that is not data."""

    answers: list[dict[str, Any]] = []

    def do_GET(self) -> None:
        body = json.dumps(self.answers[self.server.calls % len(self.answers)]).encode()  # type: ignore[attr-defined]
        self.server.calls += 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def lying_prometheus(host_address: str) -> Iterator[str]:
    _ErrorAnswers.answers = [
        {"status": "error", "errorType": "execution", "error": "query timed out", "data": {"resultType": "vector"}},
        {"status": "success", "data": {"resultType": "string", "result": [0, "1"]}},
        {"status": "success", "warnings": ["partial response"], "data": {"resultType": "scalar", "result": [0, "1"]}},
    ]
    server = ThreadingHTTPServer((host_address, 0), _ErrorAnswers)  # where the operator's pod reaches it
    server.calls = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{host_address}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_prometheus_answering_errors_never_passes(world: World, lying_prometheus: str) -> None:
    check = {
        "name": "decisions",
        "prometheus": {"query": "sum(torghut_trading_decisions_total)"},
        "min": 0,
        "consecutiveErrorLimit": 3,
        "inconclusiveLimit": 3,
    }
    manifest = rollout_manifest(
        "lying", world, verify={"interval": "1s", "count": 2, "timeout": "40s", "checks": [check]}
    )
    manifest["spec"]["prometheus"] = {"url": lying_prometheus}
    world.apply(manifest)
    done = world.wait_phase("lying", "RolledBack", timeout=120)
    state = done["status"]["checks"][0]
    assert state["successful"] == 0, state
    assert state["phase"] != "Successful"
    assert image_of(world) == OLD_IMAGE


def test_deleting_a_rollout_mid_verification_restores_the_target_first(world: World) -> None:
    check = {"name": "later", "http": {"url": f"{world.simulator.url}/healthz"}, "successCondition": "true"}
    world.apply(rollout_manifest("deleted", world, verify={"initialDelay": "10m", "checks": [check]}))
    world.wait_phase("deleted", "Verifying")
    assert image_of(world) == NEW_IMAGE
    world.kubectl("delete", "torghutrollout/deleted", "-n", world.namespace, "--timeout=90s", timeout=100)
    assert image_of(world) == OLD_IMAGE
    assert available(world)
    reasons = [e["reason"] for e in world.events("deleted")]
    assert "RestoredOnDelete" in reasons, reasons


def test_deleting_with_on_delete_orphan_leaves_the_target_and_says_so(world: World) -> None:
    check = {"name": "later", "http": {"url": f"{world.simulator.url}/healthz"}, "successCondition": "true"}
    world.apply(rollout_manifest("orphan", world, onDelete="Orphan", verify={"initialDelay": "10m", "checks": [check]}))
    world.wait_phase("orphan", "Verifying")
    world.kubectl("delete", "torghutrollout/orphan", "-n", world.namespace, "--timeout=60s", timeout=70)
    assert image_of(world) == NEW_IMAGE
    warnings = [e["message"] for e in world.events("orphan") if e["reason"] == "DeletedUnrestored"]
    assert warnings, world.events("orphan")
    assert NEW_IMAGE in warnings[0]
    assert OLD_IMAGE in warnings[0]


BATCH = (
    "id BETWEEN CAST(current_setting('torghut_rollout.batch_first') AS bigint) "
    "AND CAST(current_setting('torghut_rollout.batch_last') AS bigint)"
)
BACKFILL_ROWS = 15_000
BACKFILL_FILES = {
    "0001_items.sql": (
        "CREATE TABLE e2e_items (id bigint PRIMARY KEY, v int NOT NULL);\n"
        f"INSERT INTO e2e_items SELECT g, g FROM generate_series(1, {BACKFILL_ROWS}) AS g;\n"
        # one row per id the backfill touched: a batch that ran twice would fail on the duplicate key
        "CREATE TABLE e2e_touched (id bigint PRIMARY KEY, batch_pid int NOT NULL);\n"
    ),
    "0002_backfill.sql": (
        "-- torghut-rollout: backfill table=public.e2e_items\n"
        # 1 ms a row: batches of about 500 rows last the target 500 ms, long enough for a kill to land inside one,
        # and the whole backfill outlasts one 10 s slice, so status shows it in progress
        f"SELECT pg_sleep(0.001 * (SELECT count(*) FROM e2e_items WHERE {BATCH}));\n"
        f"INSERT INTO e2e_touched SELECT id, pg_backend_pid() FROM e2e_items WHERE {BATCH};\n"
        f"UPDATE e2e_items SET v = -v WHERE {BATCH};\n"
    ),
}


def backfill_sleeping(world: World) -> bool:
    engine = torghut_db.make_engine(world.postgres.dsn(world.database))
    try:
        with engine.connect() as conn:
            query = (
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%INSERT INTO e2e_touched%' "
                "AND wait_event = 'PgSleep' AND datname = current_database()"
            )
            return bool(conn.execute(sa.text(query)).scalar_one())
    finally:
        engine.dispose()


def backfill_rows(world: World) -> tuple[int, int, int, int]:
    """(rows touched, rows touched twice or never negated, committed batches, rows done in sql_runs)."""
    engine = torghut_db.make_engine(world.postgres.dsn(world.database))
    try:
        with engine.connect() as conn:
            touched = conn.execute(sa.text("SELECT count(*) FROM e2e_touched")).scalar_one()
            positive = conn.execute(sa.text("SELECT count(*) FROM e2e_items WHERE v > 0")).scalar_one()
            row = conn.execute(
                sa.text("SELECT batches, rows_done FROM torghut_rollout.sql_runs WHERE name = '0002_backfill.sql'")
            ).first()
            batches, done = row if row is not None else (0, 0)
            return int(touched), int(positive), int(batches), int(done)
    finally:
        engine.dispose()


def start_backfill(world: World, name: str) -> None:
    world.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "backfill"}, "data": BACKFILL_FILES})
    manifest = release(world, name)
    manifest["spec"]["migrate"] = {
        "sql": {"configMapRef": {"name": "backfill"}, "backfill": {"batchDuration": "500ms"}}
    }
    world.apply(manifest)


def in_flight(world: World, after: int) -> Callable[[], bool]:
    """A backfill batch sleeping inside its transaction, with at least ``after`` batches committed."""
    return lambda: backfill_sleeping(world) and backfill_rows(world)[2] >= after


def migrated(world: World, name: str) -> Callable[[], object]:
    return lambda: (status(world, name).get("migration") or {}).get("completedAt")


def test_kill_9_in_the_middle_of_backfill_batches_resumes_and_runs_no_batch_twice(faults: World) -> None:
    world = faults
    start_backfill(world, "backfill")
    shown: list[dict[str, Any]] = []

    def in_progress() -> bool:
        backfill = (status(world, "backfill").get("migration") or {}).get("backfill") or {}
        if backfill.get("rowsDone") and not backfill.get("finished"):
            shown.append(backfill)
        return bool(shown)

    wait_for(in_flight(world, 1), timeout=120, interval=0.05, what="a batch in flight after the first")
    kill_and_restart(world)
    committed = backfill_rows(world)[2]
    wait_for(in_flight(world, committed + 2), timeout=120, interval=0.05, what="a batch in flight, two after the kill")
    kill_and_restart(world)
    wait_for(in_progress, timeout=120, interval=0.1, what="backfill progress in status")
    assert shown[0]["rowsTotal"] == BACKFILL_ROWS
    assert 0 < shown[0]["rowsDone"] < BACKFILL_ROWS
    wait_for(migrated(world, "backfill"), timeout=180, interval=0.2, what="the migrate stage done")
    touched, positive, batches, done = backfill_rows(world)
    assert touched == done == BACKFILL_ROWS  # every row once: a batch run twice would have hit the primary key
    assert positive == 0
    assert batches >= 3
    final = status(world, "backfill")["migration"]["backfill"]
    assert final["finished"] is True
    assert final["rowsDone"] == final["rowsTotal"] == BACKFILL_ROWS
    events = world.kubectl("get", "events", "-n", world.namespace, "-o", "json")
    reasons = [e["reason"] for e in json.loads(events)["items"]]
    assert "BackfillDone" in reasons


def test_postgres_stopped_mid_backfill_waits_then_resumes_after_the_last_committed_batch(faults: World) -> None:
    world = faults
    start_backfill(world, "pg-backfill")
    wait_for(in_flight(world, 2), timeout=120, interval=0.05, what="a batch in flight after two")
    with world.postgres.down():

        def waiting() -> bool:
            s = status(world, "pg-backfill")
            if s.get("phase") != "Migrating" or "will be retried" not in (s.get("message") or ""):
                raise NotYet(f"{s.get('phase')}: {s.get('message')}")
            return True

        wait_for(waiting, timeout=60, interval=0.2, what="the backfill waiting for Postgres")
    wait_for(migrated(world, "pg-backfill"), timeout=180, interval=0.2, what="the migrate stage done")
    touched, positive, batches, done = backfill_rows(world)
    assert touched == done == BACKFILL_ROWS
    assert positive == 0
    assert batches >= 3
