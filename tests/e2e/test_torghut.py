"""The owners' checklist end to end: the route/grant SQL pack, the torghut-completion preset against the Torghut
simulator, the evidence ledger and report, gated trading-mode promotion, and a Knative Service target."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
import sqlalchemy as sa
import yaml
from kubernetes import config

from tests.conftest import ClusterHandle
from tests.e2e.conftest import NEW_IMAGE, OLD_IMAGE, World, rollout_manifest
from torghut_localstack import knative, sql_pack, torghut_db
from torghut_localstack.wait import NotYet, wait_for

pytestmark = pytest.mark.e2e

GRANTS = {"role": "torghut_app", "tables": "research_*", "privileges": ["SELECT", "INSERT", "UPDATE", "DELETE"]}


@pytest.fixture
def superuser_secret(world: World) -> str:
    """Torghut's torghut-db-superuser: the SQL pack's GRANTs need the tables' owner."""
    world.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "torghut-db-superuser"},
            "stringData": {"uri": world.postgres.dsn(world.database)},
        },
        sql_pack.configmap_manifest(),
    )
    return "torghut-db-superuser"


def completion_rollout(world: World, name: str, *, expect: bool = True, **spec: Any) -> dict[str, Any]:
    migrate: dict[str, Any] = {
        "sql": {
            "configMapRef": {"name": sql_pack.CONFIGMAP_NAME},
            "secretRef": {"name": "torghut-db-superuser", "key": "uri"},
        }
    }
    if expect:
        migrate["expect"] = {"alembicHeads": list(torghut_db.heads_of(world.schema_state)), "grants": [GRANTS]}
    body: dict[str, Any] = {
        "serviceUrl": world.simulator.url,
        "migrate": migrate,
        "presets": ["torghut-completion"],
        "verify": {"initialDelay": "2s", "interval": "1s", "count": 3, "timeout": "2m"},
    }
    body.update(spec)
    return rollout_manifest(name, world, **body)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def query(world: World, sql: str) -> list[Any]:
    engine = torghut_db.make_engine(world.postgres.dsn(world.database))
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql)).all())
    finally:
        engine.dispose()


def test_a_healthy_release_succeeds_writes_the_ledger_and_the_report(world: World, superuser_secret: str) -> None:
    world.apply(completion_rollout(world, "healthy"))
    obj = world.wait_phase("healthy", "Succeeded", "Failed", "RolledBack", timeout=180)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]
    verdicts = {c["name"]: c["phase"] for c in obj["status"]["checks"]}
    assert set(verdicts.values()) == {"Successful"}, verdicts
    assert {"route-null-rate", "research-grants", "signal-throughput", "fallback-ratio", "build-rolled-out"} <= set(
        verdicts
    )
    assert [a["name"] for a in obj["status"]["migration"]["applied"]] == [p.name for p in sql_pack.pack_files()]
    uid = obj["metadata"]["uid"]
    measured = query(world, f"SELECT check_name, verdict FROM torghut_rollout.measurements WHERE rollout_uid = '{uid}'")
    assert len(measured) >= 3 * len(verdicts)
    decided = [
        r[0]
        for r in query(
            world,
            f"SELECT to_phase FROM torghut_rollout.stage_decisions WHERE rollout_uid = '{uid}' ORDER BY decided_at",
        )
    ]
    assert decided[-1] == "Succeeded"
    assert "Verifying" in decided
    report = wait_for(
        lambda: world.kubectl.get("configmap", "torghut-evidence-healthy", namespace=world.namespace),
        timeout=30,
        what="the evidence report ConfigMap",
    )
    text = report["data"]["report.md"]
    for expected in (
        "route-null-rate",
        "research-grants",
        "Succeeded",
        NEW_IMAGE,
        "research_runs",
        "research_attempts",
    ):
        assert expected in text, expected
    assert "Lane runs seen since" in text, "the report says how many lane runs after the deploy it saw"


def seed_history(world: World, n: int, *, created_at: datetime, **kwargs: Any) -> list[str]:
    engine = torghut_db.make_engine(world.postgres.dsn(world.database))
    try:
        return torghut_db.seed_executions(engine, n, created_at=created_at, step=timedelta(seconds=30), **kwargs)
    finally:
        engine.dispose()


def routes_of(world: World, ids: list[str]) -> list[tuple[Any, ...]]:
    listed = ", ".join(f"'{i}'" for i in ids)
    return query(
        world,
        "SELECT execution_expected_adapter, execution_actual_adapter, execution_fallback_count,"
        f" execution_fallback_reason FROM executions WHERE id IN ({listed}) ORDER BY created_at DESC",
    )


def unset_adapters(world: World) -> tuple[str | None, str | None]:
    """What an execution written without route provenance holds: NULL before 0007, the default 'unknown' at head."""
    return (None, None) if world.schema_state == "checklist" else ("unknown", "unknown")


def test_the_bug_report_history_now_succeeds_and_reports_rows_left_unknown(world: World, superuser_secret: str) -> None:
    """Issue 9: realistic history (no marker, markers set to JSON null, _execution_adapter alpaca_fallback alone,
    _execution_adapter next to a response's execution_expected_adapter, a marker longer than its column) made a
    correct release roll back. Now the backfill follows the service, and what it cannot derive is reported."""
    day_ago = datetime.now(UTC) - timedelta(days=1)
    history = seed_history(world, 50, created_at=day_ago, route_markers=torghut_db.HISTORY_MARKER_MIX, seed=11)
    seed_history(world, 5, created_at=day_ago, route_markers="none", null_adapters="unknown", seed=12)
    too_long = seed_history(
        world, 1, created_at=day_ago, route_markers={"_execution_route_expected": "lean-" + "x" * 40}, seed=13
    )

    world.apply(completion_rollout(world, "history"))
    obj = world.wait_phase("history", "Succeeded", "Failed", "RolledBack", timeout=180)

    assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]
    backfill = next(c for c in obj["status"]["checks"] if c["name"] == "route-backfill")
    assert backfill["phase"] == "Successful"
    message = backfill["measurements"][-1]["message"]
    assert "value 0 at or below max 0" in message
    assert re.search(r"; 15 of \d+ executions \(.* percent\) have no route marker", message), message
    assert ", 1 (" in message, message
    assert "skipped: a route value longer than its column" in message
    # HISTORY_MARKER_MIX, newest first: alpaca, lean, lean_fallback, alpaca, adapter_marker, fallback_marker,
    # adapter_and_response, response_fields, null_markers, none
    assert routes_of(world, history[:10]) == [
        ("alpaca", "alpaca", 0, None),
        ("lean", "lean", 0, None),
        ("lean", "alpaca", 1, "fallback_from_lean_to_alpaca"),
        ("alpaca", "alpaca", 0, None),
        ("alpaca", "alpaca", 0, None),
        ("alpaca", "alpaca", 0, None),  # _execution_adapter alpaca_fallback alone
        ("alpaca", "alpaca", 0, None),  # execution_expected_adapter is not an expected-adapter source
        ("simulation", "simulation", 0, None),
        ("unknown", "unknown", 0, None),  # markers set to JSON null
        ("unknown", "unknown", 0, None),  # no marker at all
    ]
    # skipped, never aborting the migration: it keeps the schema's "missing" value (NULL before 0007, 'unknown' at head)
    assert routes_of(world, too_long) == [(*unset_adapters(world), 0, None)]


def test_rows_the_old_image_writes_after_the_migration_are_caught_up_before_verifying(
    world: World, superuser_secret: str
) -> None:
    """The old image keeps filling orders, without route provenance, between the migration and the new image's
    rollout. The deploy stage re-runs the repeatable backfill once the new image is available."""
    world.kubectl("rollout", "pause", "deployment/torghut", "-n", world.namespace)  # hold the deploy stage
    world.apply(completion_rollout(world, "old-fills"))

    def migrated_and_deploying() -> dict[str, Any]:
        obj = world.rollout("old-fills")
        status = obj.get("status") or {}
        if status.get("phase") != "Deploying" or not (status.get("migration") or {}).get("completedAt"):
            raise NotYet(f"phase {status.get('phase')}: {status.get('message')}")
        return obj

    wait_for(migrated_and_deploying, timeout=120, what="migrated, the new image not yet available")
    old_fills = seed_history(
        world, 12, created_at=datetime.now(UTC), route_markers=["lean_fallback", "alpaca", "fallback_marker"], seed=21
    )
    assert {r[:2] for r in routes_of(world, old_fills)} == {unset_adapters(world)}  # what the old image writes
    world.kubectl("rollout", "resume", "deployment/torghut", "-n", world.namespace)

    obj = world.wait_phase("old-fills", "Succeeded", "Failed", "RolledBack", timeout=180)

    assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]
    migration = obj["status"]["migration"]
    assert migration["caughtUpAt"] >= migration["completedAt"]
    assert {r[:2] for r in routes_of(world, old_fills)} == {("lean", "alpaca"), ("alpaca", "alpaca")}
    verdicts = {c["name"]: c["phase"] for c in obj["status"]["checks"]}
    assert verdicts["route-backfill"] == verdicts["route-null-rate"] == "Successful"
    reasons = [e.get("reason") for e in world.events("old-fills")]
    assert "SqlCaughtUp" in reasons


def test_a_null_rate_regression_rolls_back(world: World, superuser_secret: str) -> None:
    world.simulator.set_scenario("null_routes")
    world.apply(completion_rollout(world, "null-routes"))
    obj = world.wait_phase("null-routes", "RolledBack", "Succeeded", timeout=180)
    assert obj["status"]["phase"] == "RolledBack"
    check = next(c for c in obj["status"]["checks"] if c["name"] == "route-null-rate")
    assert check["phase"] == "Failed"
    assert "above max 0" in check["message"]
    assert world.deployment_image() == OLD_IMAGE


def test_missing_grants_fail_migrate_naming_table_and_privilege_and_the_sql_pack_fixes_it(
    world: World, superuser_secret: str
) -> None:
    rollout = completion_rollout(world, "grants", migrate={"expect": {"grants": [GRANTS]}})
    world.apply(rollout)
    failed = world.wait_phase("grants", "Failed", timeout=120)
    assert condition(failed, "Migrated")["reason"] == "GateFailed"
    assert "torghut_app lacks" in failed["status"]["message"]
    # at head the ledger of 0006 was granted by 0007; the tables of 0026 never were
    assert torghut_db.ungranted_research_tables(world.schema_state)[0] in failed["status"]["message"]
    assert "INSERT" in failed["status"]["message"]
    assert world.deployment_image() == OLD_IMAGE
    fixed = completion_rollout(world, "grants")
    world.apply(fixed)  # add the SQL pack: a spec change starts a new run

    def new_run_done() -> dict[str, Any]:
        obj = world.rollout("grants")
        status = obj.get("status") or {}
        fresh = status.get("observedGeneration") == obj["metadata"]["generation"]
        if not fresh or status.get("phase") not in ("Succeeded", "Failed", "RolledBack"):
            raise NotYet(
                f"{status.get('phase')} (generation {status.get('observedGeneration')}): {status.get('message')}"
            )
        return obj

    obj = wait_for(new_run_done, timeout=180, what="the new run of grants finished")
    assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]
    assert condition(obj, "Migrated")["status"] == "True"


def test_zero_signals_are_inconclusive_then_fail_at_the_deadline_with_the_block_reasons(
    world: World, superuser_secret: str
) -> None:
    world.simulator.set_no_signal_reason("no_features")
    world.simulator.set_scenario("zero_signals")
    signal = {
        "name": "signal-throughput",
        "prometheus": {
            # A window shorter than the initial delay: the simulator's healthy start-up is out of it.
            "query": "sum(increase(torghut_trading_decisions_total[10s]))",
            "explainQuery": "sum by (reason) (increase(torghut_trading_no_signal_reason_total[10s])) > 0",
        },
        "successCondition": "result > 0",
        "failureCondition": "false",
        "inconclusiveLimit": 3,
    }
    manifest = rollout_manifest(
        "zero-signals",
        world,
        verify={"initialDelay": "12s", "interval": "1s", "count": 3, "timeout": "40s", "checks": [signal]},
    )
    world.apply(manifest)

    def inconclusive() -> dict[str, Any] | None:
        obj = world.rollout("zero-signals")
        checks = (obj.get("status") or {}).get("checks") or []
        return obj if checks and checks[0]["phase"] == "Inconclusive" else None

    seen = wait_for(inconclusive, timeout=90, what="signal-throughput Inconclusive")
    assert seen["status"]["awaitingApproval"]
    obj = world.wait_phase("zero-signals", "RolledBack", "Failed", timeout=90)
    assert condition(obj, "Verified")["reason"] == "VerifyTimeout"
    assert "no_features" in obj["status"]["message"]


def promotion_rows(world: World, mode: Literal["paper", "live"]) -> None:
    engine = torghut_db.make_engine(world.postgres.dsn(world.database))
    try:
        torghut_db.seed_research_run(engine, run_id=f"e2e-{mode}", decision_action="promote", approved_mode=mode)
    finally:
        engine.dispose()


def test_promotion_is_blocked_without_approved_rows_and_promotes_one_step_at_a_time_with_them(
    world: World, superuser_secret: str
) -> None:
    world.simulator.set_scenario("zero_signals")  # the lane writes no promotion rows of its own meanwhile
    engine = torghut_db.make_engine(world.postgres.dsn(world.database))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM research_promotions"))
    finally:
        engine.dispose()
    check = {
        "name": "healthz",
        "http": {"url": f"{world.simulator.url}/healthz", "jsonPath": "$.status"},
        "successCondition": 'result == "ok"',
    }
    steps = [
        {"name": "paper", "env": {"TRADING_MODE": "paper"}, "requiredPromotion": {"mode": "paper"}},
        {
            "name": "canary-0.10x",
            "env": {"TRADING_MODE": "live", "TRADING_CAPITAL_FRACTION": "0.10"},
            "requiredPromotion": {"mode": "live"},
            "requiresApproval": True,
        },
    ]
    world.apply(
        rollout_manifest(
            "promote",
            world,
            # The grant pack first: without it torghut_app can't read research_promotions, and a step whose
            # evidence can't be read stays blocked.
            migrate={
                "sql": {
                    "configMapRef": {"name": sql_pack.CONFIGMAP_NAME},
                    "secretRef": {"name": superuser_secret, "key": "uri"},
                }
            },
            verify={"interval": "1s", "count": 1, "checks": [check]},
            promotion={"steps": steps},
        )
    )

    def blocked() -> dict[str, Any] | None:
        obj = world.rollout("promote")
        conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}
        return obj if conds.get("Promoted", {}).get("reason") == "MissingEvidence" else None

    obj = wait_for(blocked, timeout=90, what="promotion blocked on missing evidence")
    assert "research_promotions" in condition(obj, "Promoted")["message"]
    assert env_of(world)["TRADING_MODE"] == "paper"
    promotion_rows(world, "paper")

    def paper_passed() -> bool:
        status = world.rollout("promote")["status"]
        if "paper" not in (status.get("promotion") or {}).get("completed", []):
            raise NotYet(f"phase {status['phase']}: {status.get('message')}; promotion {status.get('promotion')}")
        return True

    wait_for(paper_passed, timeout=60, what="step paper passed")

    def awaiting() -> dict[str, Any] | None:
        o = world.rollout("promote")
        return o if condition(o, "Promoted")["reason"] in ("MissingEvidence", "AwaitingApproval") else None

    wait_for(awaiting, timeout=30, what="step canary waiting")
    assert "TRADING_CAPITAL_FRACTION" not in env_of(world)
    promotion_rows(world, "live")
    wait_for(lambda: world.rollout("promote")["status"].get("awaitingApproval"), timeout=60, what="awaiting approval")
    assert "TRADING_CAPITAL_FRACTION" not in env_of(world), "no step is applied before its approval"
    world.kubectl("annotate", "torghutrollout/promote", "-n", world.namespace, "torghut.proompteng.ai/action=promote")
    done = world.wait_phase("promote", "Succeeded", timeout=90)
    assert done["status"]["promotion"]["completed"] == ["paper", "canary-0.10x"]
    assert env_of(world)["TRADING_MODE"] == "live"
    assert env_of(world)["TRADING_CAPITAL_FRACTION"] == "0.10"


def env_of(world: World) -> dict[str, str]:
    obj = world.kubectl.get("deployment", "torghut", namespace=world.namespace)
    assert obj is not None
    container = obj["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


@pytest.fixture
def knative_service(world: World, cluster: ClusterHandle) -> Iterator[knative.KnativeStatusDriver]:
    world.kubectl("apply", "--server-side", "-f", str(knative.CRD_PATH))
    world.kubectl("wait", "--for=condition=Established", "crd/services.serving.knative.dev", "--timeout=60s")
    service = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "torghut"},
        "spec": {"template": {"spec": {"containers": [{"name": "user-container", "image": OLD_IMAGE}]}}},
    }
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    with knative.KnativeStatusDriver(api, world.namespace) as driver:
        world.apply(service)
        yield driver
    api.close()


def test_the_same_release_on_a_knative_service_target(
    world: World, knative_service: knative.KnativeStatusDriver
) -> None:
    check = {
        "name": "healthz",
        "http": {"url": f"{world.simulator.url}/healthz", "jsonPath": "$.status"},
        "successCondition": 'result == "ok"',
    }
    manifest = rollout_manifest(
        "knative",
        world,
        target={"kind": "Service", "name": "torghut", "container": "user-container", "image": NEW_IMAGE},
        verify={"interval": "1s", "count": 2, "checks": [check]},
    )
    world.apply(manifest)
    obj = world.wait_phase("knative", "Succeeded", "Failed", "RolledBack", timeout=120)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]
    svc = world.kubectl.get("services.serving.knative.dev", "torghut", namespace=world.namespace)
    assert svc is not None
    assert svc["spec"]["template"]["spec"]["containers"][0]["image"] == NEW_IMAGE
    assert svc["status"]["latestReadyRevisionName"] == "torghut-00002"
    # A revision that fails to become ready is rolled back to the previous image.
    knative_service.fail_next_revision()
    bad = yaml.safe_load(yaml.safe_dump(manifest))
    bad["metadata"]["name"] = "knative-bad"
    bad["spec"]["target"]["image"] = OLD_IMAGE.replace("3.9", "3.8")
    world.apply(bad)
    rolled = world.wait_phase("knative-bad", "RolledBack", "Failed", timeout=120)
    assert rolled["status"]["phase"] == "RolledBack", rolled["status"]["message"]
    assert "RevisionFailed" in rolled["status"]["message"]
    svc = world.kubectl.get("services.serving.knative.dev", "torghut", namespace=world.namespace)
    assert svc is not None
    assert svc["spec"]["template"]["spec"]["containers"][0]["image"] == NEW_IMAGE


def series(text: str, metric: str, **labels: str) -> list[float]:
    """Values of ``metric`` samples in a /metrics text whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    return [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def test_route_metrics_are_exported_while_a_rollout_watches_the_target_and_vanish_with_it(world: World) -> None:
    check = {
        "name": "healthz",
        "http": {"url": f"{world.simulator.url}/healthz", "jsonPath": "$.status"},
        "successCondition": 'result == "ok"',
    }
    world.apply(rollout_manifest("routes", world, verify={"interval": "1s", "count": 1, "checks": [check]}))
    world.wait_phase("routes", "Succeeded", timeout=120)
    target = {"namespace": world.namespace, "target": "torghut"}
    mine = {"namespace": world.namespace, "name": "routes"}

    def exported() -> str:
        text = world.operator.scrape()
        if not series(text, "torghut_rollout_route_executions", **target):
            raise NotYet("no route series yet")
        return text

    # after the run ended: visibility does not depend on a rollout being in progress
    text = wait_for(exported, timeout=60, what="route metrics of the target")
    assert series(text, "torghut_rollout_route_executions", **target)[0] > 0, "the simulator fills every tick"
    assert series(text, "torghut_rollout_route_null_rate", **target) == [0.0]
    assert series(text, "torghut_rollout_route_read_success", **target) == [1.0]
    assert series(text, "torghut_rollout_phase", **mine)
    assert series(text, "torghut_rollout_check_verdict", **mine)
    assert series(text, "torghut_rollout_operator_loop_lag_seconds_count")[0] > 0, "the loop's lag is sampled"

    world.kubectl("delete", "torghutrollout", "routes", "-n", world.namespace, "--wait=true", timeout=60)

    def gone() -> bool:
        text = world.operator.scrape()
        left = [
            metric
            for metric, labels in (
                ("torghut_rollout_route_null_rate", target),
                ("torghut_rollout_route_executions", target),
                ("torghut_rollout_route_read_success", target),
                ("torghut_rollout_phase", mine),
                ("torghut_rollout_check_verdict", mine),
                ("torghut_rollout_gate_value", mine),
            )
            if series(text, metric, **labels)
        ]
        if left:
            raise NotYet(f"still exported: {left}")
        return True

    wait_for(gone, timeout=30, what="every series of the deleted rollout gone")
