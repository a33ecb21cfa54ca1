"""Taking one measurement: read a provider under the check's timeout, then judge. Fails closed.

``take_measurement`` never raises and never returns Successful unless a provider returned a value that
passed the judgement:

* the provider runs in a worker thread and is abandoned when ``check.timeout`` passes (even when the
  library's own timeout fails): Error ``no answer within ...``;
* ``ProviderError`` -> Error; ``UnexpectedStatus`` (an HTTP status not in ``expectedStatus``) -> Failed;
* any other exception from the provider or the judge -> Error (a bug is never a pass);
* otherwise ``judge`` decides (see ``gates.judge``).

``Measurement.value`` is the value as text (numbers compact, strings as they are, JSON for structures,
shortened to 256 characters); ``at`` is RFC 3339 UTC, when the measurement finished.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
from decimal import Decimal
from typing import Any, Protocol

from torghut_operator.api.durations import parse_duration
from torghut_operator.api.spec import Check
from torghut_operator.api.status import Measurement, Verdict
from torghut_operator.gates.http import UnexpectedStatus
from torghut_operator.gates.judge import format_number, judge, judgement_text, query_part, shorten, to_json
from torghut_operator.gates.reading import ProviderError, Reading
from torghut_operator.timefmt import format_time

VALUE_TEXT_LIMIT = 256
_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")


class Provider(Protocol):
    """Something that measures a check: PostgresGateway, PrometheusGateway, HttpGateway, or a fake.

    ``read`` is synchronous (called from a worker thread), returns a Reading (value None = no data) and raises
    ProviderError, with a secret-free message, when it can't measure."""

    def read(self, check: Check) -> Reading: ...


def take_measurement(check: Check, provider: Provider, *, previous: Any | None, now: dt.datetime) -> Measurement:
    """Measure ``check`` with ``provider`` and judge it. ``previous``: the check's previous value (for CEL's
    ``previous``), e.g. ``previous_value(last_measurement)``. ``now``: when the measurement starts (a naive
    datetime is taken as UTC); ``at`` is ``now`` plus the time it took."""
    started = time.monotonic()

    def finish(verdict: Verdict, message: str, reading: Reading | None = None) -> Measurement:
        at = _utc(now) + dt.timedelta(seconds=time.monotonic() - started)
        return Measurement(
            phase=verdict,
            at=rfc3339(at),
            value=value_text(reading.value) if reading is not None else None,
            samples=reading.samples if reading is not None else None,
            message=message,
        )

    try:
        timeout = parse_duration(check.timeout)
        reading = _read_within(check, provider, timeout)
    except UnexpectedStatus as error:
        return finish(Verdict.FAILED, f"{check.name}: {error} ({query_part(check)})")
    except ProviderError as error:
        return finish(Verdict.ERROR, _error_message(check, str(error)))
    except Exception as error:  # noqa: BLE001 - fail closed: an unexpected exception is an Error, never a pass
        return finish(Verdict.ERROR, _error_message(check, _unexpected(error)))
    try:
        if not isinstance(reading, Reading):
            raise TypeError(f"provider returned {type(reading).__name__}, not a Reading")
        verdict, message = judge(check, reading, previous)
    except Exception as error:  # noqa: BLE001 - fail closed
        return finish(Verdict.ERROR, _error_message(check, _unexpected(error)))
    if reading.explain and verdict is not Verdict.SUCCESSFUL:
        message = f"{message}; {reading.explain}"
    return finish(verdict, message, reading)


class _Outcome:
    def __init__(self) -> None:
        self.reading: Reading | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


def _read_within(check: Check, provider: Provider, timeout: float) -> Reading:
    """``provider.read(check)`` in a daemon thread; ProviderError when it takes longer than ``timeout``.

    A hung read is abandoned, not killed (Python can't kill threads): the thread ends when the provider's own
    timeouts fire, and being a daemon it never blocks the process from exiting."""
    outcome = _Outcome()

    def run() -> None:
        try:
            outcome.reading = provider.read(check)
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            outcome.error = error
        finally:
            outcome.done.set()

    worker = threading.Thread(target=run, name=f"measure-{check.name}", daemon=True)
    worker.start()
    if not outcome.done.wait(timeout):
        raise ProviderError(f"no answer within the check's timeout of {check.timeout}")
    if isinstance(outcome.error, Exception):
        raise outcome.error
    if outcome.error is not None:  # SystemExit, KeyboardInterrupt... raised in the worker: not ours to honour
        raise RuntimeError(f"the provider raised {type(outcome.error).__name__}") from outcome.error
    if outcome.reading is None:
        raise ProviderError("the provider returned nothing")
    return outcome.reading


def _error_message(check: Check, what: str) -> str:
    return f"{check.name}: error: {what}, needs {judgement_text(check)} ({query_part(check)})"


def _unexpected(error: BaseException) -> str:
    # Providers map their errors to secret-free ProviderErrors; anything else is shown short and without
    # URL credentials, in case a library put them in its message.
    text = _USERINFO.sub("***@", str(error))
    return shorten(f"unexpected {type(error).__name__}: {text}" if text else f"unexpected {type(error).__name__}", 300)


def value_text(value: Any) -> str | None:
    """A measured value as text for status and the ledger: ``0.12``, ``12``, ``true``, strings as they are,
    JSON for structures; at most VALUE_TEXT_LIMIT characters."""
    if value is None:
        return None
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float | Decimal):
        text = format_number(float(value))
    elif isinstance(value, str):
        text = value
    else:
        text = to_json(value)
    return text if len(text) <= VALUE_TEXT_LIMIT else text[: VALUE_TEXT_LIMIT - 1] + "…"


def previous_value(measurement: Measurement | None) -> Any | None:
    """The value of a recorded measurement, back as a value for CEL's ``previous``: JSON when the text is
    JSON (numbers, bools, structures), else the text. None without a measurement or a value."""
    if measurement is None or measurement.value is None:
        return None
    try:
        return json.loads(measurement.value)
    except ValueError:
        return measurement.value


def rfc3339(moment: dt.datetime) -> str:
    """``2025-01-02T03:04:05.678Z`` (UTC, milliseconds: two measurements of a check a second apart must never
    share a time, which is their identity in the evidence ledger)."""
    return format_time(_utc(moment))


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
