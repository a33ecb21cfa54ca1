"""judge() and take_measurement(): every verdict path, numeric coercions, and messages that name check, value, judgement and query."""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from decimal import Decimal
from typing import Any

import pytest

from torghut_operator.adapters.http import UnexpectedStatus
from torghut_operator.adapters.measure import take_measurement
from torghut_operator.core.api.spec import Check
from torghut_operator.core.api.status import Verdict
from torghut_operator.core.deadline import Deadline
from torghut_operator.core.jsonpath import parse_json_path, select
from torghut_operator.core.judge import as_number, judge, previous_value
from torghut_operator.core.reading import ProviderError, Reading
from torghut_operator.core.text import format_number, format_value, value_text

pytestmark = pytest.mark.unit

SQL = "SELECT count(*) FILTER (WHERE execution_actual_adapter IS NULL)::float / count(*) AS value FROM executions"


def make_check(**fields: Any) -> Check:
    body: dict[str, Any] = {"name": "route-null-rate", "postgres": {"query": SQL}}
    body.update(fields)
    return Check.model_validate(body)


S, F, INC, E = Verdict.SUCCESSFUL, Verdict.FAILED, Verdict.INCONCLUSIVE, Verdict.ERROR


@pytest.mark.parametrize(
    ("fields", "value", "verdict", "phrase"),
    [
        # thresholds
        ({"max": 0.05}, 0.01, S, "value 0.01 at or below max 0.05"),
        ({"max": 0.05}, 0.05, S, "value 0.05 at or below max 0.05"),  # inclusive
        ({"max": 0.05}, 0.12, F, "value 0.12 above max 0.05"),
        ({"min": 1}, 0, F, "value 0 below min 1"),
        ({"min": 1}, 1, S, "value 1 at or above min 1"),
        ({"min": 1, "max": 5}, 3, S, "value 3 within [1, 5]"),
        ({"min": 1, "max": 5}, 7, F, "value 7 above max 5"),
        ({"min": 1, "max": 5}, 0.5, F, "value 0.5 below min 1"),
        # numbers as the provider typed them: SQL numeric (Decimal), ints vs float thresholds
        ({"max": 0.05}, Decimal("0.01000000"), S, "value 0.01 at or below max 0.05"),
        ({"max": 10}, 2**70, F, "above max 10"),
        # a string is never a number, even a numeric one (from JSON, HTTP or SQL text)
        ({"max": 0.05}, "0.5", E, 'value "0.5" is a string, not a number, needs <= 0.05'),
        ({"max": 0.05}, " 0.01 ", E, "is a string, not a number"),
        ({"min": 0.5}, "1e3", E, 'value "1e3" is a string, not a number'),
        ({"max": 1}, "-Inf", E, "is a string, not a number"),
        ({"max": 0.05}, "NaN", E, "is a string, not a number"),
        # not numbers
        ({"max": 0.05}, True, E, "value true is a bool, not a number, needs <= 0.05"),
        ({"min": 0}, False, E, "value false is a bool, not a number"),
        ({"max": 0.05}, "abc", E, 'value "abc" is a string, not a number'),
        ({"max": 0.05}, [0.01], E, "value [0.01] is a list, not a number"),
        ({"max": 0.05}, {"v": 0.01}, E, 'value {"v":0.01} is an object, not a number'),
        ({"min": 1}, math.inf, E, "value +Inf is not a finite number"),
        ({"max": 1}, -math.inf, E, "value -Inf is not a finite number"),
        ({"max": 1}, Decimal("Infinity"), E, "is not a finite number"),
        # no data, NaN
        ({"max": 0.05}, None, INC, "no data, needs <= 0.05"),
        ({"max": 0.05}, math.nan, INC, "no data (NaN), needs <= 0.05"),
        ({"max": 0.05}, Decimal("NaN"), INC, "no data (NaN)"),
        # CEL: success only
        ({"success_condition": "result < 0.05"}, 0.01, S, 'value 0.01 met successCondition "result < 0.05"'),
        ({"success_condition": "result < 0.05"}, 0.5, F, 'value 0.5 did not meet successCondition "result < 0.05"'),
        ({"success_condition": "result > 0"}, 1, S, "met successCondition"),
        ({"success_condition": "result <= 0.25"}, 0, S, "met successCondition"),  # int result, double literal
        # CEL: failure only
        ({"failure_condition": "result > 0.05"}, 0.5, F, 'value 0.5 met failureCondition "result > 0.05"'),
        ({"failure_condition": "result > 0.05"}, 0, S, 'value 0 did not meet failureCondition "result > 0.05"'),
        # CEL: both
        ({"success_condition": "result < 0.05", "failure_condition": "result > 0.1"}, 0.01, S, "met successCondition"),
        ({"success_condition": "result < 0.05", "failure_condition": "result > 0.1"}, 0.2, F, "met failureCondition"),
        (
            {"success_condition": "result < 0.05", "failure_condition": "result > 0.1"},
            0.07,
            INC,
            'value 0.07 met neither successCondition "result < 0.05" nor failureCondition "result > 0.1"',
        ),
        # failure wins when both are true
        ({"success_condition": "result >= 0", "failure_condition": "result >= 0"}, 1, F, "met failureCondition"),
        # CEL over structures, strings and bools (a bool is fine for CEL)
        ({"success_condition": "result.status == 'ok'"}, {"status": "ok"}, S, 'value {"status":"ok"} met'),
        ({"failure_condition": "result == 'degraded'"}, "degraded", F, 'value "degraded" met failureCondition'),
        ({"success_condition": "result"}, True, S, "value true met successCondition"),
        ({"success_condition": "result"}, False, F, "value false did not meet successCondition"),
        # CEL evaluation errors are Error, never a pass (not even for a failureCondition-only check)
        ({"failure_condition": "result > 0.05"}, "abc", E, 'failureCondition "result > 0.05" failed to evaluate'),
        ({"success_condition": "result.missing > 1"}, {"x": 1}, E, "failed to evaluate"),
        ({"success_condition": "result + 1"}, 1, E, "yielded int 2, not a bool"),
        ({"failure_condition": "result.errors != 0"}, {"x": 1}, E, "failed to evaluate"),
        ({"success_condition": "result < 1"}, math.inf, E, "value +Inf is not a finite number"),
        ({"success_condition": "result < 1"}, math.nan, INC, "no data (NaN)"),
        ({"success_condition": "result < 1"}, None, INC, "no data, needs success: result < 1"),
    ],
)
def test_verdicts(fields: dict[str, Any], value: Any, verdict: Verdict, phrase: str) -> None:
    check = make_check(**fields)
    got, message = judge(check, Reading(value))
    assert got is verdict, message
    assert phrase in message
    assert message.startswith("route-null-rate: ")
    assert message.endswith(f"(postgres: {SQL})")


@pytest.mark.parametrize(
    ("samples", "verdict", "phrase"),
    [
        (None, INC, "not enough data: no sample count < minSamples 10, value 0.01, needs <= 0.05"),
        (3, INC, "not enough data: 3 samples < minSamples 10, value 0.01, needs <= 0.05"),
        (0, INC, "not enough data: 0 samples < minSamples 10"),
        (10, S, "value 0.01 (10 samples) at or below max 0.05"),
        (250, S, "(250 samples)"),
    ],
)
def test_min_samples(samples: int | None, verdict: Verdict, phrase: str) -> None:
    got, message = judge(make_check(max=0.05, min_samples=10), Reading(0.01, samples=samples))
    assert got is verdict
    assert phrase in message
    assert "SELECT count(*)" in message


def test_min_samples_guards_conditions_too() -> None:
    check = make_check(success_condition="result >= 0", min_samples=5)
    assert judge(check, Reading(1, samples=4))[0] is INC
    assert judge(check, Reading(1, samples=5))[0] is S


def test_no_samples_needed_without_min_samples() -> None:
    assert judge(make_check(max=0.05), Reading(0.01, samples=None))[0] is S


def test_no_data_is_never_successful_even_when_a_condition_would_pass() -> None:
    # `result == null` would be true for null, but no data is judged before any condition runs.
    got, _ = judge(make_check(success_condition="result == null"), Reading(None))
    assert got is INC


def test_no_data_message_carries_the_provider_detail() -> None:
    _, message = judge(make_check(max=0.05), Reading(None, detail="query returned no rows"))
    assert "no data (query returned no rows)" in message


def test_samples_and_previous_reach_cel() -> None:
    check = make_check(success_condition="samples >= 100 && (previous == null || result <= previous)")
    assert judge(check, Reading(0.01, samples=120), previous=None)[0] is S
    assert judge(check, Reading(0.01, samples=120), previous=0.02)[0] is S
    assert judge(check, Reading(0.03, samples=120), previous=0.02)[0] is F


def test_long_query_is_shortened_in_messages() -> None:
    long_sql = "SELECT 1 AS value\n" + "\n".join(f"  -- line {n} of a long comment" for n in range(100))
    check = make_check(max=2, postgres={"query": long_sql})
    _, message = judge(check, Reading(1))
    assert len(message) < 320
    assert message.endswith("…)")
    assert "\n" not in message


def test_long_values_are_shortened_in_messages() -> None:
    _, message = judge(make_check(success_condition="size(result) > 0"), Reading(list(range(1000))))
    assert "value [0,1,2," in message
    assert "…" in message
    assert len(message) < 400


@pytest.mark.parametrize("provider", ["prometheus", "http"])
def test_message_names_other_providers(provider: str) -> None:
    body: dict[str, Any] = {
        "prometheus": {"query": "sum(rate(torghut_trading_decisions_total[5m]))"},
        "http": {"url": "http://torghut:8181/trading/status", "json_path": "$.autonomy.signals_total"},
    }
    check = Check.model_validate({"name": "signals", provider: body[provider], "min": 1})
    _, message = judge(check, Reading(0))
    assert message == f"signals: value 0 below min 1 ({provider}: {check.query_text})"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1),
        (0.5, 0.5),
        (Decimal("0.25"), 0.25),
        (2**70, 2**70),
        (math.inf, math.inf),
        ("0.5", None),
        ("12", None),
        ("+Inf", None),
        (True, None),
        (False, None),
        ("", None),
        ("abc", None),
        ("1_000", None),
        (None, None),
        ([1], None),
    ],
)
def test_as_number(value: Any, expected: float | None) -> None:
    assert as_number(value) == expected


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (0.12, "0.12"),
        (12.0, "12"),
        (0.1 + 0.2, "0.3"),
        (1e-7, "1e-07"),
        (1234567.5, "1234567.5"),
        (1e20, "1e+20"),
        (-2.5, "-2.5"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_format_number(number: float, text: str) -> None:
    assert format_number(number) == text


def test_format_value() -> None:
    assert format_value(None) == "null"
    assert format_value(True) == "true"
    assert format_value(7) == "7"
    assert format_value(Decimal("0.50000000")) == "0.5"
    assert format_value("ok") == '"ok"'
    assert format_value({"a": [1, 2.5]}) == '{"a":[1,2.5]}'
    assert format_value("x" * 500, limit=20).endswith("…")


# --- take_measurement: timeout, exceptions, the recorded value ------------------------------------------------

NOW = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


class FakeProvider:
    """Returns a reading, raises, or blocks until released (a hung provider). A hung one is released by the
    deadline's watchdog, as the real gateways cut their sockets; ``ignore_deadline`` makes it answer late."""

    def __init__(
        self,
        reading: Reading | None = None,
        error: BaseException | None = None,
        hang: bool = False,
        late: float = 0.0,
    ) -> None:
        self.reading = reading
        self.error = error
        self.release = threading.Event()
        self.hang = hang
        self.late = late
        self.calls = 0

    def read(self, check: Check, deadline: Deadline) -> Reading:
        self.calls += 1
        if self.hang:
            with deadline.on_expiry(self.release.set):
                self.release.wait(30)
        if self.late:
            self.release.wait(self.late)
        if self.error is not None:
            raise self.error
        assert self.reading is not None
        return self.reading


def test_measurement_successful() -> None:
    provider = FakeProvider(Reading(0.01, samples=40))
    measurement = take_measurement(make_check(max=0.05), provider, previous=None, now=NOW)
    assert measurement.phase is S
    assert measurement.value == "0.01"
    assert measurement.samples == 40
    assert measurement.at.startswith("2025-01-02T03:04:0")
    assert measurement.at.endswith("Z")
    assert measurement.message.startswith("route-null-rate: value 0.01 (40 samples) at or below max 0.05")
    assert provider.calls == 1


def test_measurement_naive_now_is_utc() -> None:
    measurement = take_measurement(
        make_check(max=1), FakeProvider(Reading(0)), previous=None, now=NOW.replace(tzinfo=None)
    )
    assert measurement.at.startswith("2025-01-02T03:04:0")
    assert measurement.at.endswith("Z")


def test_hung_provider_is_an_error_after_the_check_timeout() -> None:
    provider = FakeProvider(Reading(0.0), hang=True)
    started = time.monotonic()
    measurement = take_measurement(make_check(max=1, timeout="200ms"), provider, previous=None, now=NOW)
    elapsed = time.monotonic() - started
    provider.release.set()
    assert measurement.phase is E
    assert "no answer within the check's timeout of 200ms" in measurement.message
    assert measurement.value is None
    assert 0.15 < elapsed < 5


def test_provider_that_answers_after_the_deadline_is_an_error() -> None:
    provider = FakeProvider(Reading(0.0), late=0.3)
    measurement = take_measurement(make_check(max=1, timeout="100ms"), provider, previous=None, now=NOW)
    assert measurement.phase is E
    assert "no answer within the check's timeout of 100ms" in measurement.message
    assert measurement.value is None


def test_provider_error_is_an_error() -> None:
    provider = FakeProvider(error=ProviderError("cannot connect to postgres at db:5432/torghut: refused"))
    measurement = take_measurement(make_check(max=0.05), provider, previous=None, now=NOW)
    assert measurement.phase is E
    assert measurement.message == (
        f"route-null-rate: error: cannot connect to postgres at db:5432/torghut: refused, needs <= 0.05 (postgres: {SQL})"
    )


@pytest.mark.parametrize(
    "error",
    [RuntimeError("boom"), KeyError("value"), ZeroDivisionError(), AssertionError("x"), SystemExit(3)],
)
def test_unexpected_exceptions_fail_closed(error: BaseException) -> None:
    measurement = take_measurement(make_check(max=0.05), FakeProvider(error=error), previous=None, now=NOW)
    assert measurement.phase is E
    assert "unexpected " in measurement.message
    assert type(error).__name__ in measurement.message


def test_unexpected_exception_text_loses_url_credentials() -> None:
    provider = FakeProvider(error=RuntimeError("failed for postgresql://app:hunter2@db:5432/torghut"))
    measurement = take_measurement(make_check(max=0.05), provider, previous=None, now=NOW)
    assert "hunter2" not in measurement.message
    assert "postgresql://***@db:5432/torghut" in measurement.message


def test_provider_returning_garbage_is_an_error() -> None:
    class Garbage:
        def read(self, check: Check, deadline: Deadline) -> Reading:
            return 0.01  # type: ignore[return-value]

    measurement = take_measurement(make_check(max=0.05), Garbage(), previous=None, now=NOW)
    assert measurement.phase is E
    assert "not a Reading" in measurement.message


def test_unexpected_http_status_is_failed_not_error() -> None:
    check = Check.model_validate(
        {"name": "runtime-ready", "http": {"url": "http://torghut/runtime-readyz"}, "success_condition": "true"}
    )
    provider = FakeProvider(error=UnexpectedStatus(503, [200], "http://torghut/runtime-readyz"))
    measurement = take_measurement(check, provider, previous=None, now=NOW)
    assert measurement.phase is F
    assert measurement.message == "runtime-ready: HTTP 503, expected 200 (http: http://torghut/runtime-readyz)"


def test_no_data_measurement() -> None:
    measurement = take_measurement(
        make_check(max=0.05), FakeProvider(Reading(None, detail="query returned no rows")), previous=None, now=NOW
    )
    assert measurement.phase is INC
    assert measurement.value is None
    assert "no data (query returned no rows)" in measurement.message


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.12, "0.12"),
        (12.0, "12"),
        (7, "7"),
        (Decimal("0.50000000"), "0.5"),
        (True, "true"),
        ("ok", "ok"),
        ({"a": [1, 2.5]}, '{"a":[1,2.5]}'),
        (math.nan, "NaN"),
        (None, None),
    ],
)
def test_value_text(value: Any, text: str | None) -> None:
    assert value_text(value) == text


def test_value_text_is_bounded() -> None:
    text = value_text(list(range(1000)))
    assert text is not None
    assert len(text) == 256
    assert text.endswith("…")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.12, 0.12), (7, 7), (True, True), ("ok", "ok"), ({"a": [1, 2.5]}, {"a": [1, 2.5]}), ("12 apples", "12 apples")],
)
def test_previous_value_round_trips(value: Any, expected: Any) -> None:
    measurement = take_measurement(
        make_check(success_condition="true"), FakeProvider(Reading(value)), previous=None, now=NOW
    )
    assert previous_value(measurement) == expected


def test_previous_value_reaches_the_condition() -> None:
    check = make_check(success_condition="previous == null || result <= previous")
    first = take_measurement(check, FakeProvider(Reading(0.02)), previous=None, now=NOW)
    second = take_measurement(check, FakeProvider(Reading(0.03)), previous=previous_value(first), now=NOW)
    assert (first.phase, second.phase) == (S, F)
    assert previous_value(None) is None


# --- the HTTP provider's JSONPath subset (pure) -------------------------------------------------------------

STATUS = {"autonomy": {"signals_total": 7, "runs_total": 0}, "items": [{"a-b": 1}, {"a-b": None}], "x.y": "dot"}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$", STATUS),
        ("$.autonomy.signals_total", 7),
        ("$.autonomy.runs_total", 0),  # a zero is a value, not "no match"
        ("$['autonomy']['signals_total']", 7),
        ('$["x.y"]', "dot"),
        ("$.items[0].a-b", 1),
        ("$.items[-1]['a-b']", None),  # JSON null: no data
        ("$.items[2]", None),
        ("$.autonomy.missing", None),
        ("$.autonomy[0]", None),  # an index selects only from an array
        ("$.items.a-b", None),  # a key selects only from an object
    ],
)
def test_json_path_select(path: str, expected: Any) -> None:
    assert select(STATUS, parse_json_path(path)) == expected


@pytest.mark.parametrize(
    "path", ["autonomy.signals_total", "$..signals_total", "$.items[*]", "$.a[?(@.b)]", "$.", "$[1:2]"]
)
def test_json_path_rejects_what_it_does_not_support(path: str) -> None:
    with pytest.raises(ValueError, match="JSONPath"):
        parse_json_path(path)


def test_an_http_checks_credentials_never_reach_what_is_shown() -> None:
    """Status, events, the evidence and the CLI show ``query_text``: the URL's userinfo is ``***`` there."""
    url = "https://ops:hunter2@torghut.trading/trading/status"
    gate = Check.model_validate({"name": "mode", "http": {"url": url, "json_path": "$.mode"}, "min": 1})
    assert gate.query_text == "https://***@torghut.trading/trading/status $.mode"
    assert gate.http is not None
    assert gate.http.url == url, "the request itself still carries them"
    token_only = Check.model_validate({"name": "up", "http": {"url": "http://ghp_s3cr3t@torghut/healthz"}, "min": 1})
    assert token_only.query_text == "http://***@torghut/healthz"
    measurement = take_measurement(gate, FakeProvider(Reading(0)), previous=None, now=NOW)
    assert measurement.phase is F
    assert "hunter2" not in measurement.message
    assert "https://***@torghut.trading/trading/status" in measurement.message
