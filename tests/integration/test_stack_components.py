"""The local stack's servers answer through the same clients the operator uses, and its process
handling never leaves a process behind nor touches one it didn't start."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from prometheus_api_client import PrometheusConnect
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from torghut_localstack import workloads
from torghut_localstack.ports import free_port
from torghut_localstack.postgres import PostgresServer
from torghut_localstack.procs import ProcessRecord, run_streaming, start_process
from torghut_localstack.prometheus import PrometheusError, PrometheusServer
from torghut_localstack.wait import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def metrics_endpoint() -> Iterator[tuple[str, CollectorRegistry]]:
    """A /metrics endpoint on 127.0.0.1 served from a thread; yields ("host:port", registry)."""
    registry = CollectorRegistry()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"127.0.0.1:{port}", registry
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_prometheus_returns_a_scraped_sample(
    prometheus: PrometheusServer, metrics_endpoint: tuple[str, CollectorRegistry]
) -> None:
    address, registry = metrics_endpoint
    Gauge("torghut_smoke_gauge", "a constant", registry=registry).set(42)
    Counter("torghut_smoke_events", "counted events", registry=registry).inc(3)
    prometheus.set_targets("smoke-sample", [address], labels={"service": "smoke"})
    client = PrometheusConnect(url=prometheus.url, timeout=5)

    result = wait_for(
        lambda: client.custom_query('torghut_smoke_gauge{job="smoke-sample"}'),
        timeout=30,
        what="the first scraped sample of torghut_smoke_gauge",
    )

    (sample,) = result
    assert sample["metric"]["service"] == "smoke"
    assert sample["metric"]["instance"] == address
    assert float(sample["value"][1]) == 42.0
    (events,) = client.custom_query('torghut_smoke_events_total{job="smoke-sample"}')
    assert float(events["value"][1]) == 3.0
    prometheus.remove_targets("smoke-sample")


def test_prometheus_evaluates_rules_and_refuses_a_bad_file(
    prometheus: PrometheusServer, metrics_endpoint: tuple[str, CollectorRegistry]
) -> None:
    address, registry = metrics_endpoint
    Gauge("torghut_rule_input", "rule input", registry=registry).set(21)
    prometheus.set_targets("smoke-rules", [address])
    prometheus.set_rules(
        "smoke", "groups:\n- name: smoke\n  rules:\n  - record: torghut:rule_output\n    expr: torghut_rule_input * 2\n"
    )
    client = PrometheusConnect(url=prometheus.url, timeout=5)

    (sample,) = wait_for(
        lambda: client.custom_query('torghut:rule_output{job="smoke-rules"}'), timeout=30, what="the recorded series"
    )
    assert float(sample["value"][1]) == 42.0

    with pytest.raises(PrometheusError, match="reload failed"):
        prometheus.set_rules("broken", "groups:\n- name: broken\n  rules:\n  - record: x\n    expr: 'sum('\n")
    prometheus.reload()  # the bad file was taken back, so the config still loads
    prometheus.remove_targets("smoke-rules")


def test_postgres_answers_through_sqlalchemy_and_psycopg(postgres: PostgresServer) -> None:
    role, database = workloads.unique_name("app").replace("-", "_"), workloads.unique_name("db").replace("-", "_")
    postgres.create_role(role, password="s3cret:/@")
    postgres.create_database(database, owner=role)
    url = postgres.url(database, user=role, password="s3cret:/@")
    assert url.startswith("postgresql+psycopg://")

    engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("CREATE TABLE t (v int)"))
            conn.execute(sqlalchemy.text("INSERT INTO t VALUES (7)"))
            who = conn.execute(sqlalchemy.text("SELECT current_user, current_database()")).one()
            version = conn.execute(sqlalchemy.text("SHOW server_version")).scalar_one()
    finally:
        engine.dispose()
    assert tuple(who) == (role, database)
    assert version.startswith("15.")

    with psycopg.connect(postgres.dsn(database), connect_timeout=5) as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [(7,)]


def test_postgres_with_password_auth_refuses_a_wrong_password() -> None:
    with PostgresServer(password="right") as server:
        with psycopg.connect(server.dsn(), connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(server.dsn(password="wrong"), connect_timeout=5)
        pid = server._process.pid if server._process else -1
    assert not Path(f"/proc/{pid}/cmdline").exists() or not Path(f"/proc/{pid}/cmdline").read_bytes()


def test_a_recorded_process_is_only_stopped_while_it_is_still_the_same_one(tmp_path: Path) -> None:
    process = start_process("sleeper", ["sleep", "60"], log_path=tmp_path / "sleeper.log")
    try:
        record = ProcessRecord.of(process)
        reused = dataclasses.replace(record, start_time=record.start_time + 1)
        other_command = dataclasses.replace(record, argv=["sleep", "61"])

        assert not reused.stop()
        assert not other_command.stop()
        assert process.running()

        assert record.stop()
        process.popen.wait(10)
        assert not record.is_running()
    finally:
        process.stop()


def test_a_timed_out_command_leaves_no_grandchild(tmp_path: Path) -> None:
    lines: list[str] = []
    with pytest.raises(subprocess.TimeoutExpired):
        run_streaming(["bash", "-c", "sleep 60 & echo child=$!; wait"], timeout=1, on_line=lines.append)

    child = int(lines[0].removeprefix("child="))

    def gone() -> bool:
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        return state in ("Z", "X")

    wait_for(gone, timeout=10, what=f"the grandchild sleep (pid {child}) to be gone")
