"""CEL conditions: compile-time errors, numbers across int and double, results that are not a bool."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from torghut_operator.core.cel import ConditionEvaluationError, compile_condition

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("expr", "variables", "expected"),
    [
        # int vs double, both ways (cel-python alone rejects these)
        ("result > 0", {"result": 0.5}, True),
        ("result <= 0.25", {"result": 0}, True),
        ("result <= 0.25", {"result": 1}, False),
        ("result < 1", {"result": 0.999}, True),
        ("result >= 1.0", {"result": 1}, True),
        ("result == 1", {"result": 1.0}, True),
        ("result != 1", {"result": 1.5}, True),
        ("result in [1, 2]", {"result": 2.0}, True),
        ("result in [0.5, 2.5]", {"result": 2}, False),
        ("result * 100 > 5", {"result": 0.1}, True),
        ("result / 2 == 0.25", {"result": 0.5}, True),
        ("result - 1 < 0.5", {"result": 1}, True),
        ("7 / 2 == 3", {"result": 0}, True),  # int / int stays integer division (CEL)
        ("result > 0.1", {"result": Decimal("0.5")}, True),
        ("result > 1.0", {"result": 2**70}, True),  # beyond int64 -> double
        # strings, bools, structures
        ("result == 'ok'", {"result": "ok"}, True),
        ("result.startsWith('deg')", {"result": "degraded"}, True),
        ("result == true", {"result": True}, True),
        ("result == 1", {"result": True}, False),  # a bool is not the number 1
        ("result == 'a'", {"result": 1}, False),  # values of different kinds are unequal
        ("result != null", {"result": 0.5}, True),
        ("result != 0", {"result": False}, True),
        (
            "result.status == 'ok' && result.autonomy.signals_total > 0",
            {"result": {"status": "ok", "autonomy": {"signals_total": 3}}},
            True,
        ),
        ("has(result.missing)", {"result": {"present": 1}}, False),
        ("result.x == null", {"result": {"x": None}}, True),
        ("size(result) == 2 && result.all(x, x > 0.5)", {"result": [1, 2]}, True),
        ("result.exists(x, x == 'b')", {"result": ["a", "b"]}, True),
        ("result.map(x, x * 2)[1] == 4", {"result": [1, 2]}, True),
        ("result.filter(x, x > 1).size() == 1", {"result": [1, 2]}, True),
        ("type(result) == double", {"result": 1.5}, True),
        ("int(result) == 3", {"result": 3.7}, True),
        # samples and previous
        ("samples >= 10", {"result": 1, "samples": 12}, True),
        ("samples != null && samples >= 10", {"result": 1, "samples": None}, False),
        ("previous == null || result >= previous", {"result": 1, "previous": None}, True),
        ("previous == null || result >= previous", {"result": 1, "previous": 1.5}, False),
        ("result > previous", {"result": 2.5, "previous": 2}, True),
        ("result < timestamp('2030-01-01T00:00:00Z')", {"result": dt.datetime(2025, 1, 1, tzinfo=dt.UTC)}, True),
    ],
)
def test_evaluates(expr: str, variables: dict[str, Any], expected: bool) -> None:
    assert compile_condition(expr).evaluate(**variables) is expected


@pytest.mark.parametrize(
    ("expr", "variables", "reason"),
    [
        ("result", {"result": 5}, "yielded int 5, not a bool"),
        ("result + 1", {"result": 0.5}, "yielded double 1.5, not a bool"),
        ("result", {"result": "yes"}, "not a bool"),
        ("result > 1", {"result": "abc"}, "no matching overload for > on string and int"),
        ("result > 0", {"result": True}, "no matching overload for > on bool and int"),
        ("samples >= 10", {"result": 1, "samples": None}, "no matching overload for >= on null and int"),
        ("result.missing > 1", {"result": {"x": 1}}, "missing"),
        # an error is never absorbed into false by (in)equality, so `!=` can't turn it into a pass
        ("result.missing == 'x'", {"result": {"x": 1}}, "missing"),
        ("result.missing != 'x'", {"result": {"x": 1}}, "missing"),
        ("1 / result == 1", {"result": 0}, "divide by zero"),
        ("result > 0", {"result": object()}, "can't be used in a CEL condition"),
    ],
)
def test_evaluation_errors(expr: str, variables: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConditionEvaluationError) as caught:
        compile_condition(expr).evaluate(**variables)
    assert reason in caught.value.reason
    assert repr(expr) in str(caught.value)
    assert "activation" not in str(caught.value)  # cel-python's dump of every variable stays out


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("result >", "does not parse: unexpected end of expression at line 1 column 8"),
        ("result > > 1", "unexpected '>'"),
        ("result # 1", "unexpected character '#'"),
        ("resutl > 0", "unknown name 'resutl'; a condition can use result, samples, previous"),
        ("x.all(y, y > 0)", "unknown name 'x'"),
        ("sizee(result) > 0", "unknown function 'sizee'"),
        ("result.lenght() > 0", "unknown function 'lenght'"),
        ("", "empty"),
        ("   ", "empty"),
        ("result > 0 || " * 400 + "true", "longer than 4096"),
    ],
)
def test_compile_errors(expr: str, reason: str) -> None:
    with pytest.raises(ValueError, match="CEL condition") as caught:
        compile_condition(expr)
    assert reason in str(caught.value)


def test_macro_variables_are_known_names() -> None:
    condition = compile_condition("result.exists(row, row.adapter == 'lean') && result.all(r, has(r.adapter))")
    assert condition.evaluate(result=[{"adapter": "lean"}, {"adapter": "alpaca"}])


def test_never_python_eval() -> None:
    # Python syntax and builtins are not CEL: no __import__, no attribute walking into Python objects.
    with pytest.raises(ValueError, match="unknown function"):
        compile_condition("__import__('os').system('true') == 0")
    with pytest.raises(ConditionEvaluationError):
        compile_condition("result.__class__ == null").evaluate(result={"a": 1})


def test_compiled_condition_is_reusable() -> None:
    condition = compile_condition("result < 0.05")
    assert condition.evaluate(result=0.01)
    assert not condition.evaluate(result=0.5)
    assert compile_condition("result < 0.05") is condition  # cached by source
