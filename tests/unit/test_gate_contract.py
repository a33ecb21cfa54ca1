"""The fail-closed contract of gates, pure parts: the judge over arbitrary values, the SQL guard, the role
guard, and one deadline per measurement (read, explain, CEL)."""

from __future__ import annotations

import datetime as dt
import math
import re
import threading
import time
from decimal import Decimal
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torghut_operator.adapters.live import PROMOTION_EVIDENCE_SQL, ConfigReads, LiveGates
from torghut_operator.adapters.measure import take_measurement
from torghut_operator.adapters.postgres.gate_queries import role_refusal
from torghut_operator.adapters.postgres.sql_guard import refusal
from torghut_operator.core import presets
from torghut_operator.core.api.spec import Check, TorghutRolloutSpec
from torghut_operator.core.api.status import Verdict
from torghut_operator.core.deadline import Deadline, pending_hooks
from torghut_operator.core.judge import judge
from torghut_operator.core.reading import Reading

pytestmark = pytest.mark.unit

S, F, INC, E = Verdict.SUCCESSFUL, Verdict.FAILED, Verdict.INCONCLUSIVE, Verdict.ERROR
NOW = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and ±Inf included
    | st.decimals()  # NaN, sNaN and ±Infinity included
    | st.text(max_size=20)
    | st.sampled_from(["0.5", "1e3", " 0.01 ", "NaN", "+Inf", "-1", "0x10", "true"])
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
)
bounds = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


def is_real_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def finite_number(value: Any) -> float | int | None:
    """The value as the judge should compare it when it is a real, finite number, else None."""
    if not is_real_number(value):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal) and not value.is_finite():
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def check(**fields: Any) -> Check:
    return Check.model_validate({"name": "gate", "postgres": {"query": "SELECT 1"}, **fields})


@settings(max_examples=400, deadline=None)
@given(value=json_values, low=st.none() | bounds, high=st.none() | bounds)
def test_thresholds_pass_only_real_finite_numbers_within_bounds(
    value: Any, low: float | None, high: float | None
) -> None:
    if low is None and high is None:
        high = 0.0
    if low is not None and high is not None and low > high:
        low, high = high, low
    verdict, message = judge(check(min=low, max=high), Reading(value))
    number = finite_number(value)
    passes = number is not None and (low is None or number >= low) and (high is None or number <= high)
    assert (verdict is S) == passes, message
    if isinstance(value, str):
        assert verdict is E
        assert "is a string, not a number" in message


@settings(max_examples=300, deadline=None)
@given(value=json_values)
def test_a_condition_passes_only_values_that_meet_it(value: Any) -> None:
    verdict, message = judge(check(success_condition="result > 0.5"), Reading(value))
    if verdict is S:
        number = finite_number(value)
        assert number is not None, message
        assert number > 0.5


@settings(max_examples=200, deadline=None)
@given(value=json_values, warnings=st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=3))
def test_an_answer_with_warnings_never_passes(value: Any, warnings: list[str]) -> None:
    verdict, message = judge(check(min=-1e9, max=1e9), Reading(value, warnings=tuple(warnings)))
    assert verdict is INC
    assert "may be partial" in message


# --- the SQL guard ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "VALUES (1)",
        "TABLE executions",
        "WITH a AS (SELECT 1 AS v) SELECT v FROM a",
        "SELECT 1 UNION ALL SELECT 2",
        "SELECT pg_sleep(0.1), lower('X'), has_table_privilege('torghut_app', 'executions', 'SELECT')",
        *(getattr(presets, name) for name in dir(presets) if name.endswith("_SQL")),
        re.sub(r"(?<!:):[a-z_]+", "'paper'", PROMOTION_EVIDENCE_SQL),  # parameters inlined, as query_rows does
    ],
)
def test_reads_and_the_operators_own_queries_are_accepted(sql: str) -> None:
    assert refusal(sql) is None


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("COPY (SELECT 1) TO PROGRAM 'id'", "COPY is refused"),
        ("DELETE FROM t", "DELETE is refused"),
        ("MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE", "MERGE is refused"),
        ("SET statement_timeout = 0", "SET is refused"),
        ("CALL p()", "CALL is refused"),
        ("LOCK t", "LOCK is refused"),
        ("BEGIN", "transaction control is refused"),
        ("EXPLAIN ANALYZE DELETE FROM t", "EXPLAIN is refused"),
        ("CREATE TABLE x (i int)", "CREATE TABLE is refused"),
        ("DROP TABLE x", "DROP is refused"),
        ("SELECT 1; SELECT 2", "a single statement; 2 were given"),
        ("", "the query is empty"),
        ("SELEC 1", "does not parse"),
        ("WITH w AS (UPDATE t SET a = 1 RETURNING a) SELECT * FROM w", "data-modifying WITH (UPDATE)"),
        ("SELECT * INTO copy FROM t", "SELECT INTO is refused"),
        ("SELECT * FROM t FOR NO KEY UPDATE", "FOR UPDATE/FOR SHARE is refused"),
        ("SELECT (SELECT nextval('s'))", "function nextval() is refused"),
        ("SELECT * FROM t WHERE a IN (SELECT setval('s', 1))", "function setval() is refused"),
        ("SELECT public.dblink_exec('x', 'DELETE FROM t')", "function public.dblink_exec() is refused"),
        ("SELECT \"DBLINK\"('x', 'y')", "function DBLINK() is refused"),
        ("SELECT lo_export(1, '/tmp/x')", "function lo_export() is refused"),
        ("SELECT pg_read_file('/etc/passwd')", "function pg_read_file() is refused"),
        ("SELECT pg_terminate_backend(1)", "function pg_terminate_backend() is refused"),
        ("SELECT pg_catalog.set_config('transaction_read_only', 'off', true)", "set_config() is refused"),
        ("SELECT pg_try_advisory_lock(1)", "function pg_try_advisory_lock() is refused"),
        ("SELECT txid_current()", "function txid_current() is refused"),
        ("SELECT pg_notify('c', 'x')", "function pg_notify() is refused"),
        ("SELECT query_to_xml('DELETE FROM t', true, true, '')", "function query_to_xml() is refused"),
    ],
)
def test_anything_but_a_plain_read_is_refused_with_the_reason(sql: str, reason: str) -> None:
    found = refusal(sql)
    assert found is not None
    assert reason in found


def test_the_extra_denylist_adds_names_and_prefixes() -> None:
    assert refusal("SELECT audit_write(1)", ["audit_*"]) == (
        "function audit_write() is refused: it is on the operator's denylist"
    )
    assert refusal("SELECT my_fn()", ["MY_FN"]) is not None
    assert refusal("SELECT my_fn()", ["other"]) is None


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (("reader", False, False, False, False), None),
        (("postgres", True, True, True, True), "gate DSN role postgres is a superuser"),
        (("ops", False, True, False, False), "gate DSN role ops is a member of pg_execute_server_program"),
        (("ops", False, False, True, False), "is a member of pg_write_server_files"),
        (("ops", False, False, False, True), "is a member of pg_read_server_files"),
        (None, "could not determine the gate DSN's role"),
        (("x",), "could not determine"),
    ],
)
def test_role_guard(row: tuple[Any, ...] | None, reason: str | None) -> None:
    found = role_refusal(row)
    assert (found is None) if reason is None else (found is not None and reason in found)


# --- one deadline per measurement ---------------------------------------------------------------------------


class Instant:
    def __init__(self, value: Any) -> None:
        self.value = value

    def read(self, check: Check, deadline: Deadline) -> Reading:
        return Reading(self.value)


class Late:
    """Answers after the deadline, ignoring it (a provider that doesn't keep the contract)."""

    def read(self, check: Check, deadline: Deadline) -> Reading:
        time.sleep(deadline.remaining() + 0.05)  # the test's own stand-in for a slow provider
        return Reading(0.0)


@settings(max_examples=200, deadline=None)
@given(value=json_values)
def test_take_measurement_never_raises_and_records_any_value(value: Any) -> None:
    measurement = take_measurement(check(max=1), Instant(value), previous=None, now=NOW)
    assert measurement.phase in (S, F, INC, E)
    assert measurement.value is None or len(measurement.value) <= 256


def test_a_late_answer_is_an_error_never_judged() -> None:
    measurement = take_measurement(check(max=1, timeout="100ms"), Late(), previous=None, now=NOW)
    assert measurement.phase is E
    assert "no answer within the check's timeout of 100ms" in measurement.message
    assert measurement.value is None


def test_explain_is_called_for_a_measurement_that_did_not_pass_within_the_same_deadline() -> None:
    calls: list[float] = []

    def explain(deadline: Deadline) -> str:
        calls.append(deadline.remaining())
        return "explain: reason{x} 3"

    failed = take_measurement(check(max=1), Instant(2), previous=None, now=NOW, explain=explain)
    assert failed.phase is F
    assert failed.message.endswith("; explain: reason{x} 3")
    assert 0 < calls[0] <= 10
    passed = take_measurement(check(max=1), Instant(0), previous=None, now=NOW, explain=explain)
    assert passed.phase is S
    assert len(calls) == 1


def test_a_slow_explanation_makes_the_measurement_an_error() -> None:
    def explain(deadline: Deadline) -> str:
        time.sleep(deadline.remaining() + 0.05)
        return "explain: late"

    measurement = take_measurement(check(max=1, timeout="100ms"), Instant(2), previous=None, now=NOW, explain=explain)
    assert measurement.phase is E
    assert "no answer within the check's timeout of 100ms (explaining)" in measurement.message


def test_a_heavy_condition_is_stopped_at_the_deadline() -> None:
    heavy = check(success_condition="result.all(x, result.all(y, x + y >= 0))", timeout="300ms")
    started = time.monotonic()
    measurement = take_measurement(heavy, Instant(list(range(5000))), previous=None, now=NOW)
    elapsed = time.monotonic() - started
    assert measurement.phase is E
    # On a loaded machine the deadline may pass while the 5000 values are still being converted for CEL.
    assert re.search(
        r"(CEL evaluation|preparing CEL variables) ran past the check's timeout of 300ms", measurement.message
    )
    assert elapsed < 10, "stopped at the deadline, not after the 25 M comparisons the condition asks for"


def test_a_measurement_spawns_no_thread_and_leaves_no_hook() -> None:
    class Watcher:
        def read(self, check: Check, deadline: Deadline) -> Reading:
            released = threading.Event()
            with deadline.on_expiry(released.set):
                released.wait(5)
            return Reading(0.0)

    before = threading.active_count()
    measurement = take_measurement(check(max=1, timeout="100ms"), Watcher(), previous=None, now=NOW)
    assert measurement.phase is E
    deadline = time.monotonic() + 5
    while (threading.active_count() > before or pending_hooks()) and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    assert threading.active_count() <= before
    assert pending_hooks() == 0


# --- which DSN the ledger writes with -----------------------------------------------------------------------


class Secrets:
    """A KubeGateway stand-in: the value of a Secret key is its name/key, and every read is recorded."""

    def __init__(self) -> None:
        self.read: list[str] = []

    def read_secret_value(self, namespace: str, name: str, key: str) -> str:
        self.read.append(f"{name}/{key}")
        return f"postgresql://{name}@db/torghut"


def rollout_spec(**fields: Any) -> TorghutRolloutSpec:
    body: dict[str, Any] = {
        "target": {"name": "torghut", "container": "torghut", "image": "registry/torghut@sha256:" + "0" * 64},
        "database": {"secretRef": {"name": "reader", "key": "uri"}},
        "verify": {"checks": [{"name": "one", "postgres": {"query": "SELECT 1"}, "min": 1}]},
        **fields,
    }
    return TorghutRolloutSpec.model_validate(body)


@pytest.mark.parametrize(
    ("fields", "ledger"),
    [
        ({}, "reader/uri"),
        (
            {"migrate": {"sql": {"configMapRef": {"name": "pack"}, "secretRef": {"name": "owner", "key": "uri"}}}},
            "owner/uri",
        ),
        (
            {
                "database": {
                    "secretRef": {"name": "reader", "key": "uri"},
                    "ledgerSecretRef": {"name": "ledger", "key": "dsn"},
                },
                "migrate": {"sql": {"configMapRef": {"name": "pack"}, "secretRef": {"name": "owner", "key": "uri"}}},
            },
            "ledger/dsn",
        ),
    ],
)
def test_the_ledger_writes_with_its_own_dsn_and_gates_read_with_the_gate_dsn(
    fields: dict[str, Any], ledger: str
) -> None:
    secrets = Secrets()
    gates = LiveGates(cast(ConfigReads, secrets))
    spec = rollout_spec(**fields)
    assert gates._ledger_dsn(spec, "torghut") == f"postgresql://{ledger.split('/', maxsplit=1)[0]}@db/torghut"
    assert gates._dsn(spec, "torghut") == "postgresql://reader@db/torghut"
    assert secrets.read == [ledger, "reader/uri"]
