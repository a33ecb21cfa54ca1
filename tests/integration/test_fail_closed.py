"""Bad answers, writing queries and slow servers, through the real gateways and take_measurement.

Every row of README's answer -> verdict table has a case here: a real socket server on 127.0.0.1 returns the
crafted answer (or trickles, or hangs), a real PostgreSQL 15 runs the SQL. None of them may ever pass.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from torghut_localstack.ports import HOST
from torghut_localstack.postgres import PostgresServer
from torghut_localstack.wait import wait_for
from torghut_operator.adapters.http import HttpGateway
from torghut_operator.adapters.measure import Provider, take_measurement
from torghut_operator.adapters.postgres.gate_queries import PostgresGateway
from torghut_operator.adapters.prometheus import PrometheusGateway
from torghut_operator.core.api.spec import Check
from torghut_operator.core.api.status import Measurement, Verdict
from torghut_operator.core.deadline import pending_hooks

pytestmark = pytest.mark.integration

S, F, INC, E = Verdict.SUCCESSFUL, Verdict.FAILED, Verdict.INCONCLUSIVE, Verdict.ERROR
NOW = dt.datetime(2025, 6, 1, 14, 30, tzinfo=dt.UTC)


def measure(check: Check, provider: Provider) -> Measurement:
    return take_measurement(check, provider, previous=None, now=NOW)


# --- a server that answers whatever a test crafted, or trickles, or hangs: one thread, asyncio --------------


def vector(*values: Any, **extra: Any) -> dict[str, Any]:
    result = [{"metric": {"job": f"j{i}"}, "value": [1700000000.5, v]} for i, v in enumerate(values)]
    return {"status": "success", "data": {"resultType": "vector", "result": result}, **extra}


PROMETHEUS_ANSWERS: dict[str, tuple[int, bytes]] = {
    "ok": (200, json.dumps(vector("0.1")).encode()),
    "status-error": (200, b'{"status":"error","errorType":"execution","error":"query timed out in expression"}'),
    "string": (200, b'{"status":"success","data":{"resultType":"string","result":[1700000000,"0.1"]}}'),
    "matrix": (
        200,
        b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"0.1"]]}]}}',
    ),
    "unknown-type": (200, b'{"status":"success","data":{"resultType":"histogram","result":[]}}'),
    "warnings": (200, json.dumps(vector("0.1", warnings=["partial response: store-2 unreachable"])).encode()),
    "infos": (200, json.dumps(vector("0.1", infos=["PromQL info: metric might not be a counter"])).encode()),
    "nan": (200, json.dumps(vector("NaN")).encode()),
    "inf": (200, json.dumps(vector("+Inf")).encode()),
    "not-a-number": (200, json.dumps(vector("abc")).encode()),
    "json-number": (200, json.dumps(vector(0.1)).encode()),
    "not-json": (200, b"<html>proxy login</html>"),
    "no-status": (200, b'{"data":{"resultType":"vector","result":[]}}'),
    "http-503": (503, b'{"status":"error","errorType":"unavailable","error":"too many queries"}'),
    "empty": (200, json.dumps(vector()).encode()),
    "two-series": (200, json.dumps(vector("0.1", "0.2")).encode()),
}

HTTP_ANSWERS: dict[str, tuple[int, bytes]] = {
    "numeric-string": (200, b'{"v":"0.5"}'),
    "object": (200, b'{"v":{"a":1}}'),
    "list": (200, b'{"v":[0.1]}'),
    "bool": (200, b'{"v":true}'),
    "null": (200, b'{"v":null}'),
    "number": (200, b'{"v":0.1}'),
    "nan-literal": (200, b'{"v":NaN}'),
    "huge": (200, b'{"v":1e400}'),
    "text": (200, b"ok"),
    "empty": (200, b""),
    "status-503": (503, b'{"v":0.1}'),
    "latin1": (200, b'{"v":"\xe9"}'),
    "too-big": (200, b'{"v":"' + b"x" * (5 * 1024 * 1024) + b'"}'),
}


class CraftedServer:
    """HTTP/1.1 on 127.0.0.1 in one thread (asyncio), so 200 open connections add no threads of their own.

    ``/prom/<case>/api/v1/query`` and ``/http/<case>`` answer the crafted body; ``/trickle...`` sends its
    status line a byte every 100 ms forever; ``/hang...`` reads the request and never answers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="crafted-server", daemon=True)
        self.port = 0
        self.stopping: asyncio.Event | None = None

    def __enter__(self) -> CraftedServer:
        self.thread.start()
        server = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        self.port = server.sockets[0].getsockname()[1]
        self._server = server
        return self

    def __exit__(self, *_: object) -> None:
        async def stop() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def _start(self) -> asyncio.Server:
        return await asyncio.start_server(self._handle, HOST, 0, backlog=512)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode().split("?", 1)[0]
            if path.startswith("/trickle") or path.endswith("/trickle/api/v1/query"):
                for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" * 1000:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.1)
            elif path.startswith("/hang") or path.endswith("/hang/api/v1/query"):
                await reader.read()  # until the client goes away
            else:
                kind, case = path.strip("/").split("/")[:2]
                status, body = (PROMETHEUS_ANSWERS if kind == "prom" else HTTP_ANSWERS)[case]
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture(scope="module")
def crafted() -> Iterator[CraftedServer]:
    with CraftedServer() as server:
        yield server


def prom_check(**fields: Any) -> Check:
    return Check.model_validate({"name": "fallback-ratio", "prometheus": {"query": "sum(x)"}, **fields})


@pytest.mark.parametrize(
    ("case", "verdict", "phrase"),
    [
        ("ok", S, "value 0.1 at or below max 0.25"),
        ("status-error", E, 'answered status "error": execution: query timed out in expression'),
        ("string", E, "returned a string (resultType string)"),
        ("matrix", E, "range vector (resultType matrix)"),
        ("unknown-type", E, 'unknown resultType "histogram"'),
        ("warnings", INC, "answer came with warnings, it may be partial: partial response: store-2 unreachable"),
        ("infos", S, "value 0.1 at or below max 0.25"),
        ("nan", INC, "no data (NaN"),
        ("inf", E, "value +Inf is not a finite number"),
        ("not-a-number", E, 'sample value "abc" is not a number'),
        ("json-number", E, "sample value 0.1 is not a string-encoded float"),
        ("not-json", E, "did not answer like a Prometheus query API"),
        ("no-status", E, "did not answer like a Prometheus query API"),
        ("http-503", E, "answered HTTP 503: unavailable: too many queries"),
        ("empty", INC, "no data (empty vector"),
        ("two-series", E, "the query returned 2 series, expected one"),
    ],
)
def test_prometheus_answer_is_validated_before_it_is_judged(
    crafted: CraftedServer, case: str, verdict: Verdict, phrase: str
) -> None:
    with PrometheusGateway(f"{crafted.url}/prom/{case}", bearer_token=None, timeout=5) as gateway:
        measurement = measure(prom_check(max=0.25), gateway)
    assert (measurement.phase, phrase in measurement.message) == (verdict, True), measurement.message


def test_prometheus_warnings_in_the_samples_query_make_it_inconclusive(crafted: CraftedServer) -> None:
    check = prom_check(max=0.25, min_samples=1)
    check = check.model_copy(update={"prometheus": check.prometheus.model_copy(update={"samples_query": "sum(y)"})})  # type: ignore[union-attr]
    with PrometheusGateway(f"{crafted.url}/prom/warnings", bearer_token=None, timeout=5) as gateway:
        measurement = measure(check, gateway)
    assert measurement.phase is INC
    assert "store-2 unreachable" in measurement.message


def http_check(crafted: CraftedServer, case: str, json_path: str | None = "$.v", **fields: Any) -> Check:
    spec: dict[str, Any] = {"url": f"{crafted.url}/http/{case}"}
    if json_path:
        spec["json_path"] = json_path
    return Check.model_validate({"name": "signals", "http": spec, **fields})


@pytest.mark.parametrize(
    ("case", "json_path", "verdict", "phrase"),
    [
        ("number", "$.v", S, "value 0.1 at or below max 1"),
        ("numeric-string", "$.v", E, 'value "0.5" is a string, not a number'),
        ("object", "$.v", E, 'value {"a":1} is an object, not a number'),
        ("list", "$.v", E, "value [0.1] is a list, not a number"),
        ("bool", "$.v", E, "value true is a bool, not a number"),
        ("null", "$.v", INC, "no data (jsonPath $.v matched nothing)"),
        ("number", "$.missing", INC, "no data (jsonPath $.missing matched nothing)"),
        ("text", "$.v", E, "body is not JSON (application/json)"),
        ("nan-literal", "$.v", E, "body is not JSON (application/json): NaN is not JSON"),
        ("huge", "$.v", E, "value +Inf is not a finite number"),
        ("text", None, E, 'value "ok" is a string, not a number'),
        ("empty", None, INC, "no data (HTTP 200 with an empty body)"),
        ("status-503", "$.v", F, "HTTP 503, expected 200"),
        ("latin1", "$.v", E, "body is not UTF-8 text"),
        ("too-big", "$.v", E, "body larger than 4 MiB"),
    ],
)
def test_http_answer_is_validated_before_it_is_judged(
    crafted: CraftedServer, case: str, json_path: str | None, verdict: Verdict, phrase: str
) -> None:
    with HttpGateway(timeout=5) as gateway:
        measurement = measure(http_check(crafted, case, json_path, max=1), gateway)
    assert (measurement.phase, phrase in measurement.message) == (verdict, True), measurement.message


@pytest.mark.parametrize("mode", ["trickle", "hang"])
def test_a_trickling_or_hanging_server_is_an_error_at_the_deadline(crafted: CraftedServer, mode: str) -> None:
    # The gateways would wait 30 s per socket operation; the check allows 500 ms for the whole measurement.
    checks: list[tuple[Check, Provider]] = [
        (
            Check.model_validate({"name": "h", "http": {"url": f"{crafted.url}/{mode}"}, "min": 0, "timeout": "500ms"}),
            HttpGateway(timeout=30),
        ),
        (prom_check(min=0, timeout="500ms"), PrometheusGateway(f"{crafted.url}/{mode}", bearer_token=None, timeout=30)),
    ]
    for check, provider in checks:
        started = time.monotonic()
        measurement = measure(check, provider)
        elapsed = time.monotonic() - started
        assert measurement.phase is E
        assert "no answer within the check's timeout of 500ms" in measurement.message
        assert elapsed < 5.0, "bounded by the deadline, not by the gateway's 30 s or the server's hang"


# --- Postgres: the answer's type, and queries that would write ----------------------------------------------


@pytest.fixture(scope="module")
def guarded_db(postgres: PostgresServer, gate_reader: str) -> str:
    """A database with dblink installed, a table of 3 rows and a sequence; yields its name."""
    name = f"guard_{uuid.uuid4().hex[:8]}"
    postgres.create_database(name)
    postgres.execute("CREATE EXTENSION dblink", name)
    postgres.execute("CREATE TABLE victims (id int PRIMARY KEY)", name)
    postgres.execute("INSERT INTO victims VALUES (1), (2), (3)", name)
    postgres.execute("CREATE SEQUENCE ticket", name)
    postgres.execute(f"GRANT USAGE ON SEQUENCE ticket TO {gate_reader}", name)
    return name


def victims(postgres: PostgresServer, database: str) -> int:
    with psycopg.connect(postgres.dsn(database), connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM victims").fetchone()
        assert row is not None
        return int(row[0])


def sql_check(query: str, **fields: Any) -> Check:
    return Check.model_validate({"name": "route-null-rate", "postgres": {"query": query}, **fields})


@pytest.mark.parametrize(
    ("query", "verdict", "phrase"),
    [
        ("SELECT 0.1::numeric(20,8) AS value", S, "value 0.1 at or below max 1"),
        ("SELECT 'NaN'::numeric AS value", INC, "no data (NaN)"),
        ("SELECT 'NaN'::float8 AS value", INC, "no data (NaN)"),
        ("SELECT 'Infinity'::numeric AS value", E, "value +Inf is not a finite number"),
        ("SELECT '-Infinity'::float8 AS value", E, "value -Inf is not a finite number"),
        ("SELECT '0.5'::text AS value", E, 'value "0.5" is a string, not a number'),
        ("SELECT true AS value", E, "value true is a bool, not a number"),
        ("SELECT '{\"v\": 1}'::jsonb AS value", E, 'value {"v":1} is an object, not a number'),
        ("SELECT 1 AS value WHERE false", INC, "no data (query returned no rows)"),
        ("SELECT NULL::numeric AS value", INC, "no data (value is NULL)"),
        ("SELECT id AS value FROM victims", E, "more than one row"),
    ],
)
def test_postgres_answer_is_validated_before_it_is_judged(
    postgres: PostgresServer, guarded_db: str, gate_reader: str, query: str, verdict: Verdict, phrase: str
) -> None:
    with PostgresGateway(postgres.dsn(guarded_db, user=gate_reader), statement_timeout=5, connect_timeout=5) as pg:
        measurement = measure(sql_check(query, max=1), pg)
    assert (measurement.phase, phrase in measurement.message) == (verdict, True), measurement.message


@pytest.mark.parametrize(
    ("query", "phrase"),
    [
        ("COPY (SELECT 1) TO PROGRAM 'touch {marker}'", "COPY is refused"),
        ("COPY victims TO '{marker}'", "COPY is refused"),
        (
            "SELECT dblink_exec('dbname={db} user=postgres host=127.0.0.1 port={port}', 'DELETE FROM victims')",
            "function dblink_exec() is refused: it opens a session of its own",
        ),
        (
            "SELECT count(*) FROM dblink('dbname={db} user=postgres host=127.0.0.1 port={port}', "
            "'DELETE FROM victims RETURNING id') AS gone(id int)",
            "function dblink() is refused",
        ),
        ("WITH gone AS (DELETE FROM victims RETURNING id) SELECT count(*) FROM gone", "data-modifying WITH (DELETE)"),
        ("SELECT id INTO stolen FROM victims", "SELECT INTO is refused"),
        ("SELECT nextval('ticket')", "function nextval() is refused"),
        ("SELECT id FROM victims FOR UPDATE", "FOR UPDATE/FOR SHARE is refused"),
        ("SELECT pg_advisory_lock(42)", "function pg_advisory_lock() is refused"),
        ("DO $$ BEGIN DELETE FROM victims; END $$", "DO is refused"),
    ],
)
@pytest.mark.parametrize("as_superuser", [False, True], ids=["reader", "superuser"])
def test_a_gate_query_cannot_write(
    postgres: PostgresServer,
    guarded_db: str,
    gate_reader: str,
    tmp_path: Path,
    query: str,
    phrase: str,
    as_superuser: bool,
) -> None:
    # Whoever the DSN is: even the superuser's DSN (refused anyway, see below) never gets to run these.
    marker = tmp_path / "written"
    sql = query.format(marker=marker, db=guarded_db, port=postgres.port)
    dsn = postgres.dsn(guarded_db) if as_superuser else postgres.dsn(guarded_db, user=gate_reader)
    with PostgresGateway(dsn, statement_timeout=5, connect_timeout=5) as pg:
        measurement = measure(sql_check(sql, min=0), pg)
    assert measurement.phase is E
    assert phrase in measurement.message
    assert victims(postgres, guarded_db) == 3
    assert not marker.exists()
    with psycopg.connect(postgres.dsn(guarded_db), connect_timeout=5) as conn:
        assert conn.execute("SELECT to_regclass('stolen')").fetchone() == (None,)
        assert conn.execute("SELECT last_value, is_called FROM ticket").fetchone() == (1, False)


def test_a_superuser_dsn_is_refused_before_the_query_runs(postgres: PostgresServer, guarded_db: str) -> None:
    with PostgresGateway(postgres.dsn(guarded_db), statement_timeout=5, connect_timeout=5) as pg:
        measurement = measure(sql_check("SELECT count(*) AS value FROM victims", min=0), pg)
    assert measurement.phase is E
    assert (
        "gate DSN role postgres is a superuser: gates refuse to run as a role that can write; use a read-only role"
        in measurement.message
    )


def test_a_member_of_pg_write_server_files_is_refused(postgres: PostgresServer, guarded_db: str) -> None:
    role = f"writer_{uuid.uuid4().hex[:8]}"
    postgres.create_role(role)
    postgres.execute(f"GRANT pg_write_server_files TO {role}")
    postgres.execute(f"GRANT SELECT ON victims TO {role}", guarded_db)
    with PostgresGateway(postgres.dsn(guarded_db, user=role), statement_timeout=5, connect_timeout=5) as pg:
        measurement = measure(sql_check("SELECT count(*) AS value FROM victims", min=0), pg)
    assert measurement.phase is E
    assert f"gate DSN role {role} is a member of pg_write_server_files" in measurement.message
    assert victims(postgres, guarded_db) == 3


def test_the_operator_denylist_refuses_more_functions(
    postgres: PostgresServer, guarded_db: str, gate_reader: str
) -> None:
    dsn = postgres.dsn(guarded_db, user=gate_reader)
    with PostgresGateway(dsn, statement_timeout=5, connect_timeout=5, denied_functions=("pg_sleep*",)) as pg:
        measurement = measure(sql_check("SELECT pg_sleep(0) IS NULL AS value", success_condition="result"), pg)
    assert measurement.phase is E
    assert "function pg_sleep() is refused: it is on the operator's denylist" in measurement.message


# --- 200 slow checks at once: Errors at their deadline, and no thread left behind ---------------------------


def test_200_slow_measurements_end_at_their_deadline_and_leave_no_threads(
    crafted: CraftedServer, postgres: PostgresServer, guarded_db: str, gate_reader: str
) -> None:
    http = HttpGateway(timeout=30)
    prometheus = PrometheusGateway(f"{crafted.url}/hang", bearer_token=None, timeout=30)
    pg = PostgresGateway(postgres.dsn(guarded_db, user=gate_reader), statement_timeout=30, connect_timeout=10)
    work: list[tuple[Check, Provider]] = []
    for i in range(200):
        if i % 10 == 0:  # 20 sessions sleeping in Postgres
            work.append((sql_check("SELECT pg_sleep(30) IS NULL AS value", min=0, timeout="1s"), pg))
        elif i % 3 == 0:
            work.append((prom_check(min=0, timeout="1s"), prometheus))
        else:
            mode = "trickle" if i % 2 else "hang"
            url = f"{crafted.url}/{mode}/{i}"
            work.append((Check.model_validate({"name": "h", "http": {"url": url}, "min": 0, "timeout": "1s"}), http))
    baseline = threading.active_count()

    def timed(item: tuple[Check, Provider]) -> tuple[Measurement, float]:
        started = time.monotonic()
        measurement = measure(*item)
        return measurement, time.monotonic() - started

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=200, thread_name_prefix="flood") as pool:
        results = list(pool.map(timed, work))
    total = time.monotonic() - started

    assert [m.phase for m, _ in results] == [E] * 200
    assert all("no answer within the check's timeout of 1s" in m.message for m, _ in results), {
        m.message for m, _ in results
    }
    slowest = max(elapsed for _, elapsed in results)
    print(f"200 slow checks, 1 s deadlines: slowest {slowest:.2f} s, all {total:.2f} s")
    # generous bounds for a loaded 2-core machine; without the deadline each would take 30 s or hang forever
    assert slowest < 10.0, f"slowest measurement took {slowest:.2f}s for a 1s deadline"
    assert total < 20.0

    def back_to_baseline() -> bool:
        return threading.active_count() <= baseline and pending_hooks() == 0

    wait_for(back_to_baseline, timeout=10, interval=0.1, what=f"thread count back to {baseline}")

    def sessions_gone() -> bool:
        with psycopg.connect(postgres.dsn(guarded_db), connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'torghut-rollout-gates' "
                "AND query LIKE '%pg_sleep(30)%' AND state = 'active'"
            ).fetchone()
        return row is not None and row[0] == 0

    # statement_timeout was cut to the time left, so Postgres stops the sleeps itself.
    wait_for(sessions_gone, timeout=10, interval=0.2, what="the sleeping gate sessions to end")
    for gateway in (http, prometheus, pg):
        gateway.close()
