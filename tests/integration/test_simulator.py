"""The Torghut simulator over real HTTP (and a real PostgreSQL 15 where a DSN is involved)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.helpers import TORGHUT_SERIES
from torghut_localstack import sql_pack, torghut_db, workloads
from torghut_localstack.kubectl import Kubectl
from torghut_localstack.postgres import PostgresServer
from torghut_localstack.simulator import SCENARIOS, FollowTarget, TorghutSimulator, build_from_image
from torghut_localstack.wait import wait_for

pytestmark = pytest.mark.integration

if TYPE_CHECKING:
    from tests.conftest import ClusterHandle

TIMEOUT = httpx.Timeout(5.0)
PREFIX = "torghut_trading_"


def get(sim: TorghutSimulator, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(sim.url + path, timeout=kwargs.pop("timeout", TIMEOUT), **kwargs)


def steer(sim: TorghutSimulator, scenario: str) -> None:
    response = httpx.post(f"{sim.url}/_sim/scenario", json={"scenario": scenario}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.json()["scenario"] == scenario


def tick(sim: TorghutSimulator, count: int = 1) -> None:
    response = httpx.post(f"{sim.url}/_sim/tick", json={"count": count}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text


def scrape(sim: TorghutSimulator) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (name without prefix, sorted labels)."""
    response = get(sim, "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            assert sample.name.startswith(PREFIX), sample.name
            out[(sample.name.removeprefix(PREFIX), tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


@pytest.fixture
def sim() -> Iterator[TorghutSimulator]:
    """No database, no background loop: the test drives ticks over HTTP."""
    with TorghutSimulator(autostart_loop=False, slow_delay_seconds=5.0) as s:
        yield s


@pytest.fixture
def db_url(postgres: PostgresServer) -> Iterator[str]:
    with torghut_db.temporary_database(postgres.dsn(), "sim") as url:
        engine = torghut_db.make_engine(url)
        try:
            torghut_db.create_schema(engine)
        finally:
            engine.dispose()
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = torghut_db.make_engine(db_url)
    yield eng
    eng.dispose()


# ---- shapes ---------------------------------------------------------------------------------------


def test_endpoint_shapes(sim: TorghutSimulator) -> None:
    assert sim.url.startswith("http://127.0.0.1:")
    tick(sim, 3)

    healthz = get(sim, "/healthz")
    assert (healthz.status_code, healthz.json()) == (200, {"status": "ok", "service": "torghut"})

    readyz = get(sim, "/readyz")
    assert readyz.status_code == 200
    assert readyz.json()["status"] == "ok"
    assert all(dep["ok"] for dep in readyz.json()["dependencies"].values())

    runtime = get(sim, "/runtime-readyz")
    assert runtime.status_code == 200
    database = runtime.json()["dependencies"]["database"]
    assert database["schema_current"] is True
    assert database["current_heads"] == sorted(torghut_db.DEFAULT_HEADS)
    assert database["expected_heads"] == list(torghut_db.DEFAULT_HEADS)
    assert database["schema_missing_heads"] == []

    status = get(sim, "/trading/status").json()
    assert {"enabled", "mode", "kill_switch_enabled", "running", "last_run_at", "last_error", "autonomy"} <= set(status)
    assert status["mode"] == "paper"
    assert status["running"] is True
    assert status["autonomy"]["runs_total"] == 3
    assert status["autonomy"]["signals_total"] == 9
    assert status["autonomy"]["patches_total"] == 1

    metrics = get(sim, "/trading/metrics").json()
    assert set(metrics) == {"metrics", "build"}
    assert {"version", "commit", "image_digest", "active_revision"} <= set(metrics["build"])
    assert metrics["build"]["version"] == "v0.42.0"
    assert metrics["build"]["image_digest"].startswith("sha256:")
    assert metrics["build"]["active_revision"] == "torghut-00001"

    executions = get(sim, "/trading/executions").json()
    assert len(executions) == 6
    assert all(e["execution_expected_adapter"] and e["execution_actual_adapter"] for e in executions)
    assert get(sim, "/trading/executions", params={"limit": 2}).json() == executions[:2]
    assert get(sim, "/trading/executions", params={"limit": 0}).status_code == 422
    assert get(sim, "/trading/executions", params={"limit": 501}).status_code == 422
    assert get(sim, "/trading/executions", params={"since": "yesterday"}).status_code == 422
    assert get(sim, "/nope").status_code == 404

    samples = scrape(sim)
    names = {name for name, _ in samples}
    assert names >= TORGHUT_SERIES, TORGHUT_SERIES - names
    assert "runs_total" not in names
    assert "signals_total" not in names
    assert total(samples, "decisions_total") == 6
    assert total(samples, "execution_requests_total", adapter="alpaca") == 3
    assert total(samples, "execution_requests_total", adapter="lean") == 3
    assert total(samples, "no_signal_streak", service="torghut") == 0
    assert ("execution_fallback_total", (("from", "lean"), ("to", "alpaca"))) in samples


def test_set_image_and_build_parsing(sim: TorghutSimulator) -> None:
    digest = "sha256:" + "ab" * 32
    sim.set_image(f"registry.local/lab/torghut:v0.43.1@{digest}", active_revision="torghut-00002")
    build = get(sim, "/trading/metrics").json()["build"]
    assert build["version"] == "v0.43.1"
    assert build["image_digest"] == digest
    assert build["active_revision"] == "torghut-00002"

    response = httpx.post(
        f"{sim.url}/_sim/config", json={"image": "registry.local/lab/torghut:5d1c0f2a9b7e"}, timeout=TIMEOUT
    )
    assert response.status_code == 200
    build = get(sim, "/trading/metrics").json()["build"]
    assert (build["version"], build["commit"], build["image_digest"]) == ("5d1c0f2a9b7e", "5d1c0f2a9b7e", None)
    assert build["active_revision"] == "torghut-00002"

    assert build_from_image(f"torghut@{digest}").version == "sha256-" + "ab" * 6
    assert build_from_image("torghut").version == "unknown"
    assert build_from_image("localhost:5000/torghut").version == "unknown"


def test_control_endpoint_rejects_bad_input(sim: TorghutSimulator) -> None:
    bad = httpx.post(f"{sim.url}/_sim/scenario", json={"scenario": "meltdown"}, timeout=TIMEOUT)
    assert bad.status_code == 400
    assert "meltdown" in bad.json()["detail"]
    junk = httpx.post(f"{sim.url}/_sim/scenario", content=b"{not json", timeout=TIMEOUT)
    assert junk.status_code == 400
    assert sim.scenario == "healthy"
    with pytest.raises(ValueError, match="unknown scenario"):
        sim.set_scenario("meltdown")
    assert get(sim, "/_sim/state").json()["scenarios"] == list(SCENARIOS)


# ---- scenarios ------------------------------------------------------------------------------------


def test_zero_signals_then_recovery(sim: TorghutSimulator) -> None:
    tick(sim, 5)
    before_status = get(sim, "/trading/status").json()["autonomy"]
    before = scrape(sim)

    steer(sim, "zero_signals")
    tick(sim, 4)

    status = get(sim, "/trading/status").json()["autonomy"]
    assert status["runs_total"] == before_status["runs_total"] + 4  # the loop still runs
    assert status["signals_total"] == before_status["signals_total"]  # but nothing comes out
    assert status["no_signal_streak"] == 4
    assert status["last_no_signal_reason"] == "market_closed"
    after = scrape(sim)
    assert total(after, "decisions_total") == total(before, "decisions_total")
    assert total(after, "execution_requests_total") == total(before, "execution_requests_total")
    assert total(after, "no_signal_reason_total", reason="market_closed") == 4
    assert total(after, "no_signal_windows_total") == 4
    assert total(after, "no_signal_streak", service="torghut") == 4
    assert total(after, "no_signal_reason_streak", reason="market_closed") == 4
    assert total(after, "signal_continuity_breach_total") == 1
    assert total(after, "signal_lag_seconds", service="torghut") >= 0
    readyz = get(sim, "/readyz")
    assert (readyz.status_code, readyz.json()["status"]) == (200, "degraded")  # every dependency still ok
    assert all(dep["ok"] for dep in readyz.json()["dependencies"].values())

    httpx.post(f"{sim.url}/_sim/config", json={"no_signal_reason": "no_features"}, timeout=TIMEOUT)
    tick(sim)
    assert total(scrape(sim), "no_signal_reason_total", reason="no_features") == 1

    steer(sim, "healthy")
    tick(sim, 2)
    recovered = scrape(sim)
    assert total(recovered, "no_signal_streak", service="torghut") == 0
    assert total(recovered, "no_signal_reason_streak", reason="market_closed") == 0
    assert total(recovered, "decisions_total") == total(before, "decisions_total") + 4
    assert get(sim, "/trading/status").json()["autonomy"]["signals_total"] == before_status["signals_total"] + 6
    assert get(sim, "/readyz").json()["status"] == "ok"


def fallback_ratio(
    a: dict[tuple[str, tuple[tuple[str, str], ...]], float], b: dict[tuple[str, tuple[tuple[str, str], ...]], float]
) -> float:
    requests = total(b, "execution_requests_total") - total(a, "execution_requests_total")
    fallbacks = total(b, "execution_fallback_total") - total(a, "execution_fallback_total")
    assert requests > 0
    return fallbacks / requests


def test_fallback_storm_ratio(sim: TorghutSimulator) -> None:
    start = scrape(sim)
    tick(sim, 20)
    healthy = scrape(sim)
    assert fallback_ratio(start, healthy) == pytest.approx(0.05)

    steer(sim, "fallback_storm")
    tick(sim, 5)
    storm = scrape(sim)
    assert fallback_ratio(healthy, storm) == pytest.approx(0.75)
    assert total(storm, "execution_fallback_total", **{"from": "lean", "to": "alpaca"}) == 2 + 15
    assert total(storm, "execution_fallback_reason_total", reason="fallback_from_lean_to_alpaca") == 17
    newest = get(sim, "/trading/executions", params={"limit": 4}).json()
    assert sum(e["execution_fallback_count"] for e in newest) == 3
    assert get(sim, "/trading/metrics").json()["metrics"]["execution_fallback_ratio"] > 0.25


def test_schema_not_current(sim: TorghutSimulator) -> None:
    steer(sim, "schema_not_current")
    response = get(sim, "/runtime-readyz")
    assert response.status_code == 503
    database = response.json()["dependencies"]["database"]
    assert database["schema_current"] is False
    assert database["schema_missing_heads"] == [torghut_db.NEXT_HEAD]
    assert torghut_db.NEXT_HEAD in database["expected_heads"]

    steer(sim, "healthy")
    assert get(sim, "/runtime-readyz").status_code == 200

    sim.set_current_heads(["0006_autonomy_ledger_and_execution_route"])
    database = get(sim, "/runtime-readyz").json()["dependencies"]["database"]
    assert database["schema_missing_heads"] == list(torghut_db.DEFAULT_HEADS)
    assert database["schema_unexpected_heads"] == ["0006_autonomy_ledger_and_execution_route"]


def test_slow_responses_exceed_client_timeouts(sim: TorghutSimulator) -> None:
    steer(sim, "slow")
    for path in ("/healthz", "/trading/status", "/metrics"):
        with pytest.raises(httpx.TimeoutException):
            get(sim, path, timeout=httpx.Timeout(0.5))
    # the control surface stays responsive so a test can steer back
    assert get(sim, "/_sim/state", timeout=httpx.Timeout(2.0)).json()["scenario"] == "slow"
    steer(sim, "healthy")
    assert get(sim, "/healthz", timeout=httpx.Timeout(2.0)).status_code == 200


def test_null_routes_in_memory(sim: TorghutSimulator) -> None:
    steer(sim, "null_routes")
    tick(sim)
    newest = get(sim, "/trading/executions", params={"limit": 2}).json()
    assert {(e["execution_expected_adapter"], e["execution_actual_adapter"]) for e in newest} == {
        (None, None),
        ("unknown", "unknown"),
    }


def test_follow_workload_object() -> None:
    target = FollowTarget.parse("torghut/torghut/user-container")
    with TorghutSimulator(autostart_loop=False, follow=target, follow_poll_seconds=3600) as sim:
        digest = "sha256:" + "cd" * 32
        deployment = {
            "metadata": {"name": "torghut", "generation": 4, "annotations": {"deployment.kubernetes.io/revision": "7"}},
            "spec": {
                "replicas": 1,
                "template": {
                    "metadata": {"annotations": {"torghut-sim.proompteng.ai/scenario": "zero_signals"}},
                    "spec": {
                        "containers": [
                            {"name": "sidecar", "image": "busybox:1.36"},
                            {
                                "name": "user-container",
                                "image": f"registry.local/lab/torghut:v0.44.0@{digest}",
                                "env": [
                                    {"name": "TRADING_MODE", "value": "live"},
                                    {"name": "TRADING_KILL_SWITCH_ENABLED", "value": "true"},
                                    {"name": "DB_DSN", "valueFrom": {"secretKeyRef": {"name": "x", "key": "uri"}}},
                                ],
                            },
                        ]
                    },
                },
            },
            "status": {},
        }
        sim.observe_workload_object(deployment)
        build = get(sim, "/trading/metrics").json()["build"]
        assert (build["version"], build["image_digest"], build["active_revision"]) == (
            "v0.44.0",
            digest,
            "torghut-00007",
        )
        status = get(sim, "/trading/status").json()
        assert (status["mode"], status["kill_switch_enabled"]) == ("live", True)
        assert sim.scenario == "zero_signals"
        # the annotation only acts when it changes: a steer over HTTP sticks across polls
        steer(sim, "healthy")
        sim.observe_workload_object(deployment)
        assert get(sim, "/_sim/state").json()["scenario"] == "healthy"
        assert "DB_DSN" not in get(sim, "/_sim/state").json()["followed_env"]


def test_follows_the_image_of_a_real_deployment(cluster: ClusterHandle, kubectl: Kubectl, namespace: str) -> None:
    """Against the session's real API server (the shared `cluster` fixture)."""
    digest_v1, digest_v2 = "sha256:" + "11" * 32, "sha256:" + "22" * 32
    deployment = workloads.deployment("torghut", image=f"registry.local/lab/torghut:v1@{digest_v1}")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["name"] = "user-container"
    container["env"] = [{"name": "TRADING_MODE", "value": "paper"}]
    kubectl.apply(deployment, namespace=namespace)
    target = FollowTarget.parse(f"{namespace}/torghut/user-container")

    def build_of(sim: TorghutSimulator, version: str) -> dict[str, Any]:
        build: dict[str, Any] = get(sim, "/trading/metrics").json()["build"]
        return build if build["version"] == version else {}

    common: dict[str, Any] = {
        "autostart_loop": False,
        "kubeconfig": str(cluster.kubeconfig),
        "follow_poll_seconds": 0.3,
    }
    with (
        TorghutSimulator(follow=target, **common) as sim,
        TorghutSimulator(follow=target, follow_wait_rollout=True, **common) as after_rollout,
    ):
        for s in (sim, after_rollout):
            build = wait_for(partial(build_of, s, "v1"), timeout=30, what="build v1 from the Deployment")
            assert build["image_digest"] == digest_v1

        kubectl(
            "-n",
            namespace,
            "set",
            "image",
            "deployment/torghut",
            f"user-container=registry.local/lab/torghut:v2@{digest_v2}",
        )
        kubectl("-n", namespace, "set", "env", "deployment/torghut", "TRADING_MODE=live")
        kubectl("-n", namespace, "annotate", "deployment/torghut", "torghut-sim.proompteng.ai/scenario=fallback_storm")

        for s in (sim, after_rollout):
            build = wait_for(partial(build_of, s, "v2"), timeout=60, what="build v2 after the image change")
            assert build["image_digest"] == digest_v2
            assert str(build["active_revision"]).startswith("torghut-000")
        wait_for(
            lambda: get(sim, "/_sim/state").json()["scenario"] == "fallback_storm",
            timeout=30,
            what="the scenario annotation to switch the scenario",
        )
        assert get(sim, "/trading/status").json()["mode"] == "live"
        assert get(sim, "/_sim/state").json()["last_follow_error"] is None


# ---- with a database ------------------------------------------------------------------------------


def test_lane_writes_rows_and_executions_come_from_the_db(db_url: str, engine: Engine) -> None:
    with TorghutSimulator(dsn=db_url, tick_seconds=0.1) as sim:

        def six_rows() -> list[dict[str, Any]]:
            got: list[dict[str, Any]] = get(sim, "/trading/executions").json()
            return got if len(got) >= 6 else []

        rows = wait_for(six_rows, timeout=30, what="6 executions from the simulator's lane")
        created = [datetime.fromisoformat(r["created_at"]) for r in rows]
        assert created == sorted(created, reverse=True)  # newest first
        assert all(r["execution_expected_adapter"] and r["execution_actual_adapter"] for r in rows)
        with engine.connect() as conn:
            db_ids = {str(r[0]) for r in conn.execute(text("SELECT id FROM executions"))}
        assert {r["id"] for r in rows} <= db_ids

        symbol = rows[0]["symbol"]
        assert {r["symbol"] for r in get(sim, "/trading/executions", params={"symbol": symbol}).json()} == {symbol}
        since = created[0] - timedelta(microseconds=1)
        recent = get(sim, "/trading/executions", params={"since": since.isoformat()}).json()
        assert recent
        assert all(datetime.fromisoformat(r["created_at"]) >= since for r in recent)
        assert len(get(sim, "/trading/executions", params={"limit": 3}).json()) == 3

        def research_counts() -> dict[str, int]:
            got = torghut_db.research_row_counts(engine)
            return got if got["research_promotions"] >= 2 else {}

        counts = wait_for(research_counts, timeout=30, what="research rows from the lane")
        assert all(counts[t] > 0 for t in torghut_db.RESEARCH_TABLES)
        with engine.connect() as conn:
            # before migration 0011 a held candidate is a promotion row with a deny reason and no approved mode
            held = conn.execute(
                text("SELECT count(*) FROM research_promotions WHERE deny_reason IS NOT NULL AND approved_mode IS NULL")
            ).scalar_one()
        assert held > 0

        # runtime-readyz reads alembic_version
        assert get(sim, "/runtime-readyz").status_code == 200
        torghut_db.set_alembic_heads(engine, ["0007_autonomy_permissions_backfill_routes"])
        database = get(sim, "/runtime-readyz").json()["dependencies"]["database"]
        assert database["current_heads"] == ["0007_autonomy_permissions_backfill_routes"]
        assert database["schema_missing_heads"] == ["0008_order_feed_execution_events"]

        sim.set_scenario("null_routes")
        switched = datetime.now().astimezone()

        def null_rows() -> list[dict[str, Any]]:
            got = get(sim, "/trading/executions", params={"since": switched.isoformat()}).json()
            return [r for r in got if r["execution_actual_adapter"] in (None, "unknown")]

        assert wait_for(null_rows, timeout=30, what="executions with null routes")


def test_research_writes_fail_until_the_grants_exist(db_url: str, engine: Engine) -> None:
    app_url = db_url.replace("postgres@", f"{torghut_db.APP_ROLE}@", 1)
    with TorghutSimulator(dsn=app_url, tick_seconds=0.1) as sim:

        def denied() -> dict[str, Any]:
            got: dict[str, Any] = get(sim, "/_sim/state").json()
            return got if got["research_errors"] >= 2 and got["db_writes"] >= 4 else {}

        state = wait_for(denied, timeout=30, what="trading rows written while research writes are denied")
        assert "permission denied" in state["last_research_error"]
        assert torghut_db.research_row_counts(engine)["research_runs"] == 0
        assert get(sim, "/trading/status").json()["last_error"] is None  # research fails silently

        with engine.begin() as conn:
            conn.exec_driver_sql(sql_pack.pack_files()[0].read_text("utf-8"))

        wait_for(
            lambda: torghut_db.research_row_counts(engine)["research_runs"] >= 2,
            timeout=30,
            what="research rows once torghut_app has its grants",
        )


def test_database_errors_do_not_stop_the_server() -> None:
    dead = "postgresql://postgres@127.0.0.1:1/torghut"  # nothing listens on port 1
    with TorghutSimulator(dsn=dead, tick_seconds=0.1, db_timeout_seconds=1.0) as sim:
        wait_for(lambda: get(sim, "/_sim/state").json()["db_errors"] >= 2, timeout=30, what="failed lane writes")
        assert get(sim, "/healthz").status_code == 200
        runtime = get(sim, "/runtime-readyz")
        assert runtime.status_code == 503
        assert runtime.json()["dependencies"]["database"]["detail"] == "database unavailable"
        assert get(sim, "/readyz").status_code == 503
        assert get(sim, "/trading/executions").status_code == 500
        assert get(sim, "/trading/status").json()["last_error"].startswith("execution persistence failed")
        assert get(sim, "/trading/status").json()["autonomy"]["runs_total"] >= 2


# ---- as a process ---------------------------------------------------------------------------------


def test_runs_as_a_process(tmp_path: Path, db_url: str) -> None:
    ready = tmp_path / "url"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torghut_localstack.simulator",
            "--port",
            "0",
            "--dsn",
            db_url,
            "--tick-seconds",
            "0.2",
            "--ready-file",
            str(ready),
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        url = wait_for(lambda: ready.exists() and ready.read_text().strip(), timeout=30, what="simulator ready file")
        assert httpx.get(f"{url}/healthz", timeout=TIMEOUT).json() == {"status": "ok", "service": "torghut"}
        response = httpx.post(f"{url}/_sim/scenario", json={"scenario": "schema_not_current"}, timeout=TIMEOUT)
        assert response.status_code == 200
        assert httpx.get(f"{url}/runtime-readyz", timeout=TIMEOUT).status_code == 503
        wait_for(
            lambda: len(httpx.get(f"{url}/trading/executions", timeout=TIMEOUT).json()) >= 2,
            timeout=30,
            what="executions written by the simulator process",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.stdout is not None
    assert f"listening on {url}" in proc.stdout.read()
