"""Judging one reading of a check: pure, no I/O.

``judge(check, reading, previous) -> (Verdict, message)``. Only ``Successful`` lets a stage advance, and it is
returned only when a value was measured and passed the check's judgement:

* the provider flagged its answer as possibly partial (``reading.warnings``) -> Inconclusive, warnings quoted;
* no data (``reading.value is None``, or a NaN) -> Inconclusive ``no data``;
* ``minSamples`` set and the sample count missing or below it -> Inconclusive ``not enough data``;
* thresholds (``min``/``max``, inclusive): the value must be a real number as the provider typed it (int,
  float, Decimal). A string is never a number, even ``"0.5"`` (a JSON or HTTP string is text: a provider that
  means a number sends one), a bool is not a number, a structure is not: Error naming the type. ±Inf is
  Error; inside -> Successful, outside -> Failed;
* CEL (Argo Rollouts semantics): failureCondition true -> Failed (failure wins when both are true);
  successCondition true -> Successful; both defined and neither true -> Inconclusive; only a
  successCondition and it is false -> Failed; only a failureCondition and it is false -> Successful;
  a condition that can't be evaluated, or a non-finite number -> Error. Evaluation stops when the
  measurement's ``deadline`` passes (Error).

Every message names the check, the value, the threshold or condition, and the (shortened) query, e.g.
``route-null-rate: value 0.12 above max 0.05 (postgres: SELECT ...)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from torghut_operator.core.api.spec import Check
from torghut_operator.core.api.status import Measurement, Verdict
from torghut_operator.core.cel import ConditionEvaluationError, compile_condition
from torghut_operator.core.deadline import Deadline
from torghut_operator.core.reading import Reading
from torghut_operator.core.text import format_value, shorten

QUERY_LIMIT = 200
"""Queries are shortened to about this many characters in messages."""


def judge(
    check: Check, reading: Reading, previous: Any | None = None, deadline: Deadline | None = None
) -> tuple[Verdict, str]:
    """The verdict on one reading of ``check`` and a message naming check, value, judgement and query.

    ``previous`` is the previous measured value of this check (for CEL's ``previous``), or None. ``deadline``
    bounds CEL evaluation (DeadlineExceeded when it passes)."""
    value = reading.value
    if reading.warnings:
        quoted = "; ".join(reading.warnings)
        what = f"answer came with warnings, it may be partial: {quoted}"
        if value is not None:
            what += f" (value {format_value(value)})"
        return Verdict.INCONCLUSIVE, _message(check, what, f"needs {judgement_text(check)}")
    if value is None or _is_nan(value):
        return Verdict.INCONCLUSIVE, _message(check, _no_data(reading, value), f"needs {judgement_text(check)}")
    shown = _value_part(value, reading.samples)
    if check.min_samples is not None and (reading.samples is None or reading.samples < check.min_samples):
        have = "no sample count" if reading.samples is None else f"{reading.samples} samples"
        return Verdict.INCONCLUSIVE, _message(
            check,
            f"not enough data: {have} < minSamples {check.min_samples}",
            f"value {format_value(value)}, needs {judgement_text(check)}",
        )
    if check.min is not None or check.max is not None:
        return _judge_thresholds(check, value, shown)
    if check.success_condition is not None or check.failure_condition is not None:
        return _judge_conditions(check, value, shown, reading.samples, previous, deadline)
    return Verdict.ERROR, _message(check, shown, "the check has no judgement (min/max or conditions)")


# --- thresholds --------------------------------------------------------------------------------------------


def as_number(value: Any) -> int | float | None:
    """``value`` as a number when the provider typed it as one: int, float or Decimal. A bool is not a number,
    and neither is any string, even ``"0.5"``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, Decimal):
        try:
            return float(value)
        except (InvalidOperation, ValueError):  # a signalling NaN
            return math.nan
    return None


def _not_a_number(value: Any) -> str:
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def _judge_thresholds(check: Check, value: Any, shown: str) -> tuple[Verdict, str]:
    number = as_number(value)
    needs = f"needs {judgement_text(check)}"
    if number is None:
        return Verdict.ERROR, _message(check, f"{shown} is {_not_a_number(value)}, not a number", needs)
    if math.isnan(number):
        return Verdict.INCONCLUSIVE, _message(check, "no data (NaN)", needs)
    if math.isinf(number):
        return Verdict.ERROR, _message(check, f"{shown} is not a finite number", needs)
    low, high = check.min, check.max
    if low is not None and number < low:
        return Verdict.FAILED, _message(check, f"{shown} below min {format_value(low)}")
    if high is not None and number > high:
        return Verdict.FAILED, _message(check, f"{shown} above max {format_value(high)}")
    if low is not None and high is not None:
        where = f"within [{format_value(low)}, {format_value(high)}]"
    elif low is not None:
        where = f"at or above min {format_value(low)}"
    else:
        where = f"at or below max {format_value(high)}"
    return Verdict.SUCCESSFUL, _message(check, f"{shown} {where}")


# --- CEL conditions ----------------------------------------------------------------------------------------


def _judge_conditions(
    check: Check, value: Any, shown: str, samples: int | None, previous: Any | None, deadline: Deadline | None
) -> tuple[Verdict, str]:
    if isinstance(value, float | Decimal) and math.isinf(value):
        return Verdict.ERROR, _message(check, f"{shown} is not a finite number", f"needs {judgement_text(check)}")
    outcomes: dict[str, bool] = {}
    for kind, source in (("failureCondition", check.failure_condition), ("successCondition", check.success_condition)):
        if source is None:
            continue
        try:
            outcomes[kind] = compile_condition(source).evaluate(
                result=value, samples=samples, previous=previous, deadline=deadline
            )
        except ConditionEvaluationError as error:
            return Verdict.ERROR, _message(
                check, f"{shown}: {kind} {_quote(source)} failed to evaluate: {error.reason}"
            )
        except ValueError as error:  # the expression does not compile (the spec should have caught it)
            return Verdict.ERROR, _message(check, f"{shown}: {kind} is invalid: {error}")
    failure, success = outcomes.get("failureCondition"), outcomes.get("successCondition")
    failure_text = f"failureCondition {_quote(check.failure_condition or '')}"
    success_text = f"successCondition {_quote(check.success_condition or '')}"
    if failure:
        return Verdict.FAILED, _message(check, f"{shown} met {failure_text}")
    if success:
        return Verdict.SUCCESSFUL, _message(check, f"{shown} met {success_text}")
    if failure is not None and success is not None:
        return Verdict.INCONCLUSIVE, _message(check, f"{shown} met neither {success_text} nor {failure_text}")
    if success is not None:
        return Verdict.FAILED, _message(check, f"{shown} did not meet {success_text}")
    return Verdict.SUCCESSFUL, _message(check, f"{shown} did not meet {failure_text}")


# --- text ----------------------------------------------------------------------------------------------------


def previous_value(measurement: Measurement | None) -> Any | None:
    """The value of a recorded measurement, back as a value for CEL's ``previous``: JSON when the text is
    JSON (numbers, bools, structures), else the text. None without a measurement or a value."""
    if measurement is None or measurement.value is None:
        return None
    try:
        return json.loads(measurement.value)
    except ValueError:
        return measurement.value


def last_value(measurements: Sequence[Measurement]) -> Any | None:
    """:func:`previous_value` of the newest measurement that has a value and is no error (CEL's ``previous``)."""
    return previous_value(
        next((m for m in reversed(measurements) if m.value is not None and m.phase is not Verdict.ERROR), None)
    )


def query_part(check: Check) -> str:
    """``postgres: SELECT ...`` with the query shortened to about QUERY_LIMIT characters."""
    return f"{check.provider}: {shorten(check.query_text, QUERY_LIMIT)}"


def _message(check: Check, what: str, extra: str = "") -> str:
    return f"{check.name}: {what}{', ' + extra if extra else ''} ({query_part(check)})"


def judgement_text(check: Check) -> str:
    """The threshold or conditions of ``check``, as shown in messages."""
    return check.threshold_text or "a judgement"


def _value_part(value: Any, samples: int | None) -> str:
    return f"value {format_value(value)}" + (f" ({samples} samples)" if samples is not None else "")


def _no_data(reading: Reading, value: Any) -> str:
    if value is not None:
        return "no data (NaN)"
    return f"no data ({reading.detail})" if reading.detail else "no data"


def _quote(source: str) -> str:
    return json.dumps(shorten(source, QUERY_LIMIT), ensure_ascii=False)


def _is_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, Decimal):
        return value.is_nan()
    return False
