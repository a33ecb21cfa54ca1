"""Each gate provider against the real thing: PostgreSQL 15, Prometheus, and a local HTTP server.

Measurements go through take_measurement, so what is asserted is what the operator would record.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from torghut_localstack.ports import HOST, free_port
from torghut_localstack.postgres import PostgresServer
from torghut_localstack.prometheus import PrometheusServer
from torghut_localstack.wait import NotYet, wait_for
from torghut_operator.adapters.http import HttpGateway
from torghut_operator.adapters.measure import Provider, take_measurement
from torghut_operator.adapters.postgres.gate_queries import PostgresGateway
from torghut_operator.adapters.prometheus import PrometheusGateway
from torghut_operator.core.api.spec import Check
from torghut_operator.core.api.status import Measurement, Verdict
from torghut_operator.core.deadline import Deadline
from torghut_operator.core.reading import ProviderError

pytestmark = pytest.mark.integration

S, F, INC, E = Verdict.SUCCESSFUL, Verdict.FAILED, Verdict.INCONCLUSIVE, Verdict.ERROR
NOW = dt.datetime(2025, 6, 1, 14, 30, tzinfo=dt.UTC)


def check(name: str = "gate", **fields: Any) -> Check:
    return Check.model_validate({"name": name, **fields})


def measure(gate: Check, provider: Provider) -> Measurement:
    return take_measurement(gate, provider, previous=None, now=NOW)


# --- Postgres --------------------------------------------------------------------------------------------------

NULL_RATE = """
SELECT count(*) FILTER (WHERE coalesce(execution_actual_adapter, 'unknown') IN ('', 'unknown'))::float
       / nullif(count(*), 0) AS value,
       count(*) AS samples
FROM executions
"""


@pytest.fixture(scope="module")
def gate_db(postgres: PostgresServer, gate_reader: str) -> str:
    """A database of its own on the session server, with a small executions table: 1 of 4 routes unknown.
    The DSN is the read-only gate role's (gates refuse the superuser)."""
    name = f"gates_{uuid.uuid4().hex[:8]}"
    postgres.create_database(name)
    postgres.execute(
        "CREATE TABLE executions (id serial PRIMARY KEY, symbol text, execution_actual_adapter varchar(32))", name
    )
    postgres.execute(
        "INSERT INTO executions (symbol, execution_actual_adapter) "
        "VALUES ('AAPL', 'alpaca'), ('MSFT', 'alpaca'), ('NVDA', 'lean'), ('TSLA', NULL)",
        name,
    )
    return postgres.dsn(name, user=gate_reader)


@pytest.fixture(scope="module")
def pg(gate_db: str) -> Iterator[PostgresGateway]:
    with PostgresGateway(gate_db, statement_timeout=1.0, connect_timeout=3.0) as gateway:
        yield gateway


def sql_check(query: str, **fields: Any) -> Check:
    return check("route-null-rate", postgres={"query": query}, **fields)


def execution_count(pg: PostgresGateway) -> int:
    rows = pg.query_rows("SELECT count(*) AS n FROM executions")
    return int(rows[0]["n"])


def test_postgres_value_passes(pg: PostgresGateway) -> None:
    measurement = measure(sql_check(NULL_RATE, max=0.3, min_samples=4), pg)
    assert measurement.phase is S, measurement.message
    assert (measurement.value, measurement.samples) == ("0.25", 4)
    assert measurement.message.startswith(
        "route-null-rate: value 0.25 (4 samples) at or below max 0.3 (postgres: SELECT"
    )


def test_postgres_value_fails(pg: PostgresGateway) -> None:
    measurement = measure(sql_check(NULL_RATE, max=0.05), pg)
    assert measurement.phase is F
    assert "value 0.25 (4 samples) above max 0.05" in measurement.message
    assert "FROM executions" in measurement.message


def test_postgres_too_few_samples_is_inconclusive(pg: PostgresGateway) -> None:
    measurement = measure(sql_check(NULL_RATE, max=0.3, min_samples=100), pg)
    assert measurement.phase is INC
    assert "not enough data: 4 samples < minSamples 100" in measurement.message


def test_postgres_first_column_numeric_and_cel(pg: PostgresGateway) -> None:
    # No column named value: the first column is the value; numeric(20,8) arrives as a Decimal.
    measurement = measure(sql_check("SELECT 0.5::numeric(20,8), 'x' AS other", success_condition="result > 0"), pg)
    assert measurement.phase is S
    assert measurement.value == "0.5"


def test_postgres_samples_first_and_dsn_forms(gate_db: str) -> None:
    # postgres:// and query parameters are accepted; `samples` is never mistaken for the value.
    dsn = gate_db.replace("postgresql://", "postgres://", 1) + "?sslmode=disable"
    with PostgresGateway(dsn, statement_timeout=1, connect_timeout=2) as gateway:
        reading = gateway.read(sql_check("SELECT 40 AS samples, 0.02 AS rate", max=0.05), Deadline.after(5))
    assert (reading.value, reading.samples) == (0.02, 40)


def test_postgres_no_rows_is_inconclusive(pg: PostgresGateway) -> None:
    measurement = measure(sql_check("SELECT 1 AS value FROM executions WHERE symbol = 'NONE'", min=0), pg)
    assert measurement.phase is INC
    assert "no data (query returned no rows)" in measurement.message


def test_postgres_null_is_inconclusive(pg: PostgresGateway) -> None:
    measurement = measure(sql_check("SELECT max(id) AS value FROM executions WHERE false", min=0), pg)
    assert measurement.phase is INC
    assert "no data (value is NULL)" in measurement.message


def test_postgres_several_rows_is_an_error(pg: PostgresGateway) -> None:
    measurement = measure(sql_check("SELECT id AS value FROM executions", min=0), pg)
    assert measurement.phase is E
    assert "more than one row" in measurement.message


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("INSERT INTO executions (symbol) VALUES ('EVIL') RETURNING id", "INSERT is refused"),
        ("DELETE FROM executions RETURNING id", "DELETE is refused"),
        ("UPDATE executions SET symbol = 'X' RETURNING id", "UPDATE is refused"),
        ("WITH gone AS (DELETE FROM executions RETURNING 1) SELECT count(*) FROM gone", "data-modifying WITH"),
        ("SELECT 1; COMMIT; DELETE FROM executions", "must be a single statement; 3 were given"),
        ("COMMIT", "transaction control is refused"),
        ("SELECT set_config('transaction_read_only', 'off', true)", "function set_config() is refused"),
        ("CREATE TABLE evil (x int)", "CREATE TABLE is refused"),
    ],
)
def test_postgres_write_is_refused(pg: PostgresGateway, query: str, reason: str) -> None:
    before = execution_count(pg)
    measurement = measure(sql_check(query, min=0), pg)
    assert measurement.phase is E
    assert reason in measurement.message
    assert execution_count(pg) == before == 4


def test_postgres_statement_timeout_is_an_error(pg: PostgresGateway) -> None:
    started = time.monotonic()
    measurement = measure(sql_check("SELECT pg_sleep(5) IS NULL AS value", min=0), pg)
    elapsed = time.monotonic() - started
    assert measurement.phase is E
    assert "statement timeout: the query ran longer than 1s" in measurement.message
    assert elapsed < 4


def test_postgres_percent_and_colon_literals(pg: PostgresGateway) -> None:
    query = "SELECT count(*) AS value FROM executions WHERE symbol LIKE '%A' AND '12:30' <> ':x'"
    measurement = measure(sql_check(query, min=2, max=2), pg)
    assert measurement.phase is S, measurement.message  # NVDA, TSLA


def test_postgres_syntax_error_is_an_error(pg: PostgresGateway) -> None:
    measurement = measure(sql_check("SELEC 1", min=0), pg)
    assert measurement.phase is E
    assert 'the query does not parse: syntax error at or near "SELEC"' in measurement.message
    unknown = measure(sql_check("SELECT no_such_column FROM executions", min=0), pg)
    assert unknown.phase is E
    assert 'column "no_such_column" does not exist [SQLSTATE 42703]' in unknown.message


def test_query_rows_binds_parameters_read_only(pg: PostgresGateway) -> None:
    rows = pg.query_rows(
        "SELECT symbol FROM executions WHERE execution_actual_adapter = :adapter AND symbol LIKE 'A%' ORDER BY id",
        {"adapter": "alpaca"},
    )
    assert rows == [{"symbol": "AAPL"}]
    with pytest.raises(ProviderError, match="DELETE is refused"):
        pg.query_rows("DELETE FROM executions WHERE symbol = :s RETURNING id", {"s": "AAPL"})
    with pytest.raises(ProviderError, match="more than 2 rows"):
        pg.query_rows("SELECT id FROM executions", max_rows=2)


def test_postgres_unreachable_is_an_error_without_secrets() -> None:
    password = "S3cret-Unreachable-pw"
    dsn = f"postgresql://torghut_app:{password}@{HOST}:{free_port()}/torghut"
    gateway = PostgresGateway(dsn, statement_timeout=1, connect_timeout=2)
    started = time.monotonic()
    measurement = measure(sql_check("SELECT 1 AS value", min=0), gateway)
    assert measurement.phase is E
    assert f"cannot connect to postgres at {HOST}:" in measurement.message
    assert password not in measurement.message
    assert dsn not in measurement.message
    assert time.monotonic() - started < 8
    assert password not in repr(gateway)


@pytest.fixture(scope="module")
def secured_postgres() -> Iterator[PostgresServer]:
    """A server of its own that checks passwords (the session one trusts loopback), with a read-only role
    ``reader`` (password ``Re4der-Secret-pw``)."""
    with PostgresServer(password="Sup3r-Secret-pw") as server:
        server.create_role("reader", password="Re4der-Secret-pw")
        yield server


def test_postgres_auth_failure_is_an_error_without_secrets(secured_postgres: PostgresServer) -> None:
    wrong = "Wr0ng-Secret-pw"
    dsn = secured_postgres.dsn(user="reader", password=wrong)
    with PostgresGateway(dsn, statement_timeout=1, connect_timeout=2) as gateway:
        with pytest.raises(ProviderError) as caught:
            gateway.read(sql_check("SELECT 1 AS value", min=0), Deadline.after(5))
        message = str(caught.value)
        assert "password authentication failed" in message
        assert wrong not in message
        assert dsn not in message
        assert caught.value.__cause__ is None
        assert caught.value.__suppress_context__
    right = secured_postgres.dsn(user="reader", password="Re4der-Secret-pw")
    with PostgresGateway(right, statement_timeout=1, connect_timeout=2) as gateway:
        assert measure(sql_check("SELECT 1 AS value", min=1), gateway).phase is S


# --- Prometheus ------------------------------------------------------------------------------------------------


class Exporter:
    """A /metrics endpoint with Torghut's metric names, scraped by the session Prometheus as its own job."""

    def __init__(self, prometheus: PrometheusServer) -> None:
        self.job = f"gates-{uuid.uuid4().hex[:8]}"
        registry = CollectorRegistry()
        self.lag = Gauge("torghut_trading_signal_lag_seconds", "lag", ["service"], registry=registry)
        self.requests = Counter("torghut_trading_execution_requests", "requests", ["adapter"], registry=registry)
        self.decisions = Counter("torghut_trading_decisions", "decisions", registry=registry)
        self.lag.labels(service="torghut").set(1.5)
        self.requests.labels(adapter="alpaca").inc(30)
        self.requests.labels(adapter="lean").inc(10)
        self.decisions.inc(25)
        self.port = free_port()
        self.server, self.thread = start_http_server(self.port, addr=HOST, registry=registry)
        prometheus.set_targets(self.job, [f"{HOST}:{self.port}"])
        self.prometheus = prometheus

    def selector(self, metric: str) -> str:
        return f'{metric}{{job="{self.job}"}}'

    def wait_scraped(self, gateway: PrometheusGateway) -> None:
        def scraped() -> bool:
            value, _ = gateway.instant(f"count({self.selector('torghut_trading_execution_requests_total')})")
            if value != 2:
                raise NotYet(f"count of scraped series is {value}")
            return True

        wait_for(scraped, timeout=45, interval=0.5, what=f"Prometheus to scrape job {self.job}")

    def close(self) -> None:
        self.prometheus.remove_targets(self.job)
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def prom(prometheus: PrometheusServer) -> Iterator[PrometheusGateway]:
    exporter = Exporter(prometheus)
    gateway = PrometheusGateway(prometheus.url, bearer_token=None, timeout=5)
    try:
        exporter.wait_scraped(gateway)
        gateway.exporter = exporter  # type: ignore[attr-defined]
        yield gateway
    finally:
        gateway.close()
        exporter.close()


def promql(gateway: PrometheusGateway, template: str) -> str:
    exporter: Exporter = gateway.exporter  # type: ignore[attr-defined]
    return template.format(job=exporter.job)


def prom_check(query: str, **fields: Any) -> Check:
    return check("signal-lag", prometheus={"query": query}, **fields)


def test_prometheus_single_series_passes_and_fails(prom: PrometheusGateway) -> None:
    query = promql(prom, 'torghut_trading_signal_lag_seconds{{job="{job}",service="torghut"}}')
    passed = measure(prom_check(query, max=5), prom)
    assert passed.phase is S, passed.message
    assert passed.value == "1.5"
    assert passed.message == f"signal-lag: value 1.5 at or below max 5 (prometheus: {query})"
    failed = measure(prom_check(query, max=1), prom)
    assert failed.phase is F
    assert "value 1.5 above max 1" in failed.message


def test_prometheus_aggregate_with_cel_and_samples(prom: PrometheusGateway) -> None:
    ratio = promql(
        prom,
        'sum(torghut_trading_execution_requests_total{{job="{job}",adapter!="alpaca"}})'
        ' / sum(torghut_trading_execution_requests_total{{job="{job}"}})',
    )
    samples = promql(prom, 'sum(torghut_trading_decisions_total{{job="{job}"}})')
    gate = check(
        "fallback-ratio",
        prometheus={"query": ratio, "samples_query": samples},
        success_condition="result <= 0.25",
        min_samples=20,
    )
    measurement = measure(gate, prom)
    assert measurement.phase is S, measurement.message
    assert (measurement.value, measurement.samples) == ("0.25", 25)
    too_few = measure(gate.model_copy(update={"min_samples": 100}), prom)
    assert too_few.phase is INC
    assert "25 samples < minSamples 100" in too_few.message


def test_prometheus_scalar(prom: PrometheusGateway) -> None:
    measurement = measure(prom_check("scalar(vector(3)) * 2", min=6, max=6), prom)
    assert measurement.phase is S, measurement.message
    assert measurement.value == "6"


def test_prometheus_empty_vector_is_inconclusive(prom: PrometheusGateway) -> None:
    query = promql(prom, 'torghut_trading_no_signal_streak{{job="{job}"}}')
    measurement = measure(prom_check(query, max=3), prom)
    assert measurement.phase is INC
    assert "no data (empty vector: no series matched)" in measurement.message


def test_prometheus_nan_is_inconclusive(prom: PrometheusGateway) -> None:
    measurement = measure(prom_check("scalar(vector(0)) / 0 - scalar(vector(0)) / 0", max=3), prom)
    assert measurement.phase is INC
    assert "no data (NaN" in measurement.message


def test_prometheus_several_series_is_an_error(prom: PrometheusGateway) -> None:
    query = promql(prom, 'torghut_trading_execution_requests_total{{job="{job}"}}')
    measurement = measure(prom_check(query, min=0), prom)
    assert measurement.phase is E
    assert "the query returned 2 series, expected one" in measurement.message
    assert 'adapter="alpaca"' in measurement.message
    assert 'adapter="lean"' in measurement.message


def test_prometheus_bad_promql_is_an_error(prom: PrometheusGateway) -> None:
    measurement = measure(prom_check("sum(rate(torghut_trading_decisions_total[5m]", min=0), prom)
    assert measurement.phase is E
    assert "answered HTTP 400: bad_data:" in measurement.message


def test_prometheus_range_vector_is_an_error(prom: PrometheusGateway) -> None:
    query = promql(prom, 'torghut_trading_decisions_total{{job="{job}"}}[1m]')
    measurement = measure(prom_check(query, min=0), prom)
    assert measurement.phase is E
    assert "range vector" in measurement.message


def test_prometheus_series_explains(prom: PrometheusGateway) -> None:
    query = promql(prom, 'torghut_trading_execution_requests_total{{job="{job}"}}')
    top = prom.series(query, limit=1)
    assert len(top) == 1
    labels, value = top[0]
    assert labels.startswith('torghut_trading_execution_requests_total{adapter="alpaca",')
    assert value == "30"
    assert [value for _, value in prom.series(query, limit=8)] == ["30", "10"]
    assert prom.series("scalar(vector(2.5))", limit=8) == [("", "2.5")]
    assert prom.series(promql(prom, 'torghut_trading_no_signal_streak{{job="{job}"}}'), limit=8) == []


def test_prometheus_unreachable_is_an_error() -> None:
    gateway = PrometheusGateway(f"http://{HOST}:{free_port()}", bearer_token="tok-Secret-123", timeout=2)
    started = time.monotonic()
    measurement = measure(prom_check("up", min=1), gateway)
    assert measurement.phase is E
    assert "cannot reach prometheus" in measurement.message
    assert "Connection refused" in measurement.message
    assert "tok-Secret-123" not in measurement.message
    assert time.monotonic() - started < 5


# --- HTTP (and a fake Prometheus API for the bearer token) ------------------------------------------------------


class TorghutLike(BaseHTTPRequestHandler):
    """Endpoints shaped like Torghut's, plus a slow one and a Prometheus API that wants a bearer token."""

    release = threading.Event()
    seen_authorization: list[str] = []

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/trading/status":
            self.reply(200, {"enabled": True, "mode": "paper", "autonomy": {"runs_total": 12, "signals_total": 7}})
        elif path == "/runtime-readyz":
            self.reply(503, {"status": "degraded", "dependencies": {"database": {"schema_current": False}}})
        elif path == "/healthz-text":
            self.reply(200, "ok", content_type="text/plain")
        elif path == "/empty":
            self.reply(200, "", content_type="text/plain")
        elif path == "/slow":
            self.release.wait(10)  # a server that takes too long; released at teardown
            self.reply(200, {"late": True})
        elif path == "/private/status":  # Basic auth, as a URL's user:password@ sends it
            expected = "Basic " + base64.b64encode(b"ops:hunter2").decode()
            if self.headers.get("Authorization") != expected:
                self.reply(401, "unauthorized", content_type="text/plain")
            else:
                self.reply(200, {"mode": "paper", "signals_total": 7})
        elif path == "/api/v1/query":
            auth = self.headers.get("Authorization", "")
            self.seen_authorization.append(auth)
            if auth != "Bearer good-token":
                self.reply(401, "unauthorized", content_type="text/plain")
            else:
                result = [{"metric": {}, "value": [1700000000, "3"]}]
                self.reply(200, {"status": "success", "data": {"resultType": "vector", "result": result}})
        else:
            self.reply(404, {"error": "not found"})

    def reply(self, status: int, body: Any, *, content_type: str = "application/json") -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def web() -> Iterator[str]:
    server = ThreadingHTTPServer((HOST, 0), TorghutLike)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="torghut-like-http", daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        TorghutLike.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def http() -> Iterator[HttpGateway]:
    with HttpGateway(timeout=2) as gateway:
        yield gateway


def http_check(url: str, json_path: str | None = None, **fields: Any) -> Check:
    spec: dict[str, Any] = {"url": url}
    if json_path is not None:
        spec["json_path"] = json_path
    return check("signals", http=spec, **fields)


def test_http_json_path_passes_and_fails(web: str, http: HttpGateway) -> None:
    passed = measure(http_check(f"{web}/trading/status", "$.autonomy.signals_total", min=1), http)
    assert passed.phase is S, passed.message
    assert passed.value == "7"
    assert passed.message == f"signals: value 7 at or above min 1 (http: {web}/trading/status $.autonomy.signals_total)"
    failed = measure(http_check(f"{web}/trading/status", "$['autonomy']['signals_total']", min=10), http)
    assert failed.phase is F
    assert "value 7 below min 10" in failed.message


def test_http_credentials_in_the_url_authenticate_and_are_never_shown(web: str, http: HttpGateway) -> None:
    """What a measurement says goes to status, events and the evidence: the URL there has no password."""
    private = web.replace("http://", "http://ops:hunter2@") + "/private/status"
    passed = measure(http_check(private, "$.signals_total", min=1), http)
    assert passed.phase is S, passed.message
    assert (
        passed.message
        == f"signals: value 7 at or above min 1 (http: {web.replace('http://', 'http://***@')}/private/status $.signals_total)"
    )
    refused = measure(http_check(private.replace("hunter2", "wrong-hunter3"), "$.signals_total", min=1), http)
    assert refused.phase is F
    assert "hunter" not in refused.message
    assert "HTTP 401" in refused.message


def test_http_whole_json_body_with_cel(web: str, http: HttpGateway) -> None:
    gate = http_check(
        f"{web}/trading/status", success_condition="result.mode == 'paper' && result.autonomy.runs_total > 0"
    )
    measurement = measure(gate, http)
    assert measurement.phase is S, measurement.message
    assert measurement.value is not None
    assert json.loads(measurement.value)["mode"] == "paper"


def test_http_unexpected_status_is_failed(web: str, http: HttpGateway) -> None:
    measurement = measure(http_check(f"{web}/runtime-readyz", "$.status", success_condition="result == 'ok'"), http)
    assert measurement.phase is F
    assert measurement.message == f"signals: HTTP 503, expected 200 (http: {web}/runtime-readyz $.status)"


def test_http_expected_status_can_include_503(web: str, http: HttpGateway) -> None:
    gate = check(
        "readyz-body",
        http={
            "url": f"{web}/runtime-readyz",
            "json_path": "$.dependencies.database.schema_current",
            "expected_status": [200, 503],
        },
        success_condition="result == true",
    )
    measurement = measure(gate, http)
    assert measurement.phase is F  # answered, and the body says the schema is not current
    assert "value false did not meet successCondition" in measurement.message


def test_http_json_path_without_match_is_inconclusive(web: str, http: HttpGateway) -> None:
    measurement = measure(http_check(f"{web}/trading/status", "$.autonomy.patches_total", min=0), http)
    assert measurement.phase is INC
    assert "no data (jsonPath $.autonomy.patches_total matched nothing)" in measurement.message


def test_http_text_body(web: str, http: HttpGateway) -> None:
    measurement = measure(http_check(f"{web}/healthz-text", success_condition="result == 'ok'"), http)
    assert measurement.phase is S, measurement.message
    assert measurement.value == "ok"
    empty = measure(http_check(f"{web}/empty", success_condition="result == 'ok'"), http)
    assert empty.phase is INC


def test_http_json_path_on_text_is_an_error(web: str, http: HttpGateway) -> None:
    measurement = measure(http_check(f"{web}/healthz-text", "$.status", min=0), http)
    assert measurement.phase is E
    assert "body is not JSON (text/plain)" in measurement.message


def test_http_slow_beyond_gateway_timeout_is_an_error(web: str) -> None:
    with HttpGateway(timeout=0.5) as gateway:
        started = time.monotonic()
        measurement = measure(http_check(f"{web}/slow", min=0), gateway)
    assert measurement.phase is E
    assert "no complete answer within 0.5s" in measurement.message
    assert time.monotonic() - started < 3


def test_http_slow_beyond_check_timeout_is_an_error(web: str, http: HttpGateway) -> None:
    # The gateway would wait 2 s; the check allows 300 ms and take_measurement stops waiting then.
    started = time.monotonic()
    measurement = measure(http_check(f"{web}/slow", min=0, timeout="300ms"), http)
    assert measurement.phase is E
    assert "no answer within the check's timeout of 300ms" in measurement.message
    assert time.monotonic() - started < 1.5


def test_http_unreachable_is_an_error(http: HttpGateway) -> None:
    measurement = measure(http_check(f"http://{HOST}:{free_port()}/healthz", min=0), http)
    assert measurement.phase is E
    assert "ConnectError" in measurement.message


def test_prometheus_bearer_token_is_sent_and_never_shown(web: str) -> None:
    with PrometheusGateway(web, bearer_token="good-token", timeout=2) as gateway:
        measurement = measure(prom_check("torghut_trading_decisions_total", min=3, max=3), gateway)
    assert measurement.phase is S, measurement.message
    assert "Bearer good-token" in TorghutLike.seen_authorization
    with PrometheusGateway(web, bearer_token="bad-Secret-token", timeout=2) as gateway:
        denied = measure(prom_check("torghut_trading_decisions_total", min=3), gateway)
    assert denied.phase is E
    assert "answered HTTP 401" in denied.message
    assert "bad-Secret-token" not in denied.message
