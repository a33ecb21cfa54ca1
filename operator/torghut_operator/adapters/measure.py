"""Taking one measurement: read a provider, maybe explain, judge; all within one deadline. Fails closed.

``take_measurement`` never raises and never returns Successful unless a provider returned a value that
passed the judgement, all before the deadline:

* one deadline, ``check.timeout`` from the start, covers the provider read (connect, query, body), the
  optional explanation and the judgement (CEL). Past it the measurement is an Error ``no answer within the
  check's timeout of ...``, whatever was measured: a late answer is never judged;
* the read runs in the caller's thread, no thread is spawned: providers bound every blocking call by the time
  left and register a cancel hook with the deadline's watchdog (see ``gates.deadline``), so the worker comes
  back at the deadline and a flood of slow checks can't grow the process's threads;
* ``ProviderError`` -> Error; ``UnexpectedStatus`` (an HTTP status not in ``expectedStatus``) -> Failed;
* any other exception from the provider or the judge -> Error (a bug is never a pass);
* otherwise ``judge`` decides (see ``gates.judge``).

A provider's ``note`` (the Postgres column ``detail``) follows the verdict message after ``; ``.

``Measurement.value`` is the value as text (numbers compact, strings as they are, JSON for structures,
shortened to 256 characters); ``at`` is RFC 3339 UTC, when the measurement finished.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any, Protocol

from torghut_operator.adapters.http import UnexpectedStatus
from torghut_operator.core.api.durations import parse_duration
from torghut_operator.core.api.spec import Check
from torghut_operator.core.api.status import Measurement, Verdict
from torghut_operator.core.deadline import Deadline, DeadlineExceeded
from torghut_operator.core.judge import judge, judgement_text, query_part
from torghut_operator.core.reading import ProviderError, Reading
from torghut_operator.core.text import hide_userinfo, shorten, value_text
from torghut_operator.core.timefmt import format_time

NOTE_LIMIT = 400
"""A provider's note (e.g. the Postgres column ``detail``) is shortened to this many characters in a message."""


class Provider(Protocol):
    """Something that measures a check: PostgresGateway, PrometheusGateway, HttpGateway, or a fake.

    ``read`` is synchronous, runs in the caller's thread, returns a Reading (value None = no data) and raises
    ProviderError, with a secret-free message, when it can't measure. It must come back by ``deadline``: every
    blocking call's timeout comes from ``deadline.timeout()``, and what a timeout can't bound is cut by a hook
    registered with ``deadline.on_expiry``. (An answer that comes later anyway is an Error, never judged.)"""

    def read(self, check: Check, deadline: Deadline) -> Reading: ...


Explain = Callable[[Deadline], str]
"""Text appended to the message of a measurement that did not pass (e.g. the series of an explainQuery)."""


def take_measurement(
    check: Check,
    provider: Provider,
    *,
    previous: Any | None,
    now: dt.datetime,
    explain: Explain | None = None,
    deadline: Deadline | None = None,
) -> Measurement:
    """Measure ``check`` with ``provider`` and judge it. ``previous``: the check's previous value (for CEL's
    ``previous``), e.g. ``previous_value(last_measurement)``. ``now``: when the measurement starts (a naive
    datetime is taken as UTC); ``at`` is ``now`` plus the time it took. ``explain``: called for a measurement
    that did not pass, within the same deadline. ``deadline``: by default ``check.timeout`` from now."""
    started = time.monotonic()

    def finish(verdict: Verdict, message: str, reading: Reading | None = None) -> Measurement:
        at = _utc(now) + dt.timedelta(seconds=time.monotonic() - started)
        if reading is not None and reading.note:
            message = f"{message}; {shorten(reading.note, NOTE_LIMIT)}"
        return Measurement(
            phase=verdict,
            at=rfc3339(at),
            value=value_text(reading.value) if reading is not None else None,
            samples=reading.samples if reading is not None else None,
            message=message,
        )

    try:
        if deadline is None:
            deadline = Deadline.after(parse_duration(check.timeout), check.timeout)
        reading = provider.read(check, deadline)
        if not isinstance(reading, Reading):
            raise TypeError(f"provider returned {type(reading).__name__}, not a Reading")
        deadline.check("reading")
        verdict, message = judge(check, reading, previous, deadline)
        if explain is not None and verdict is not Verdict.SUCCESSFUL:
            message = f"{message}; {explain(deadline)}"
        deadline.check("explaining" if explain is not None and verdict is not Verdict.SUCCESSFUL else "judging")
    except DeadlineExceeded as error:
        return finish(Verdict.ERROR, _error_message(check, str(error)))
    except UnexpectedStatus as error:
        return finish(Verdict.FAILED, f"{check.name}: {error} ({query_part(check)})")
    except ProviderError as error:
        if deadline is not None and deadline.expired():  # a timeout the deadline caused: say so
            return finish(
                Verdict.ERROR, _error_message(check, f"no answer within the check's timeout of {deadline.label}")
            )
        return finish(Verdict.ERROR, _error_message(check, str(error)))
    except Exception as error:  # noqa: BLE001 - fail closed: an unexpected exception is an Error, never a pass
        return finish(Verdict.ERROR, _error_message(check, _unexpected(error)))
    except BaseException as error:  # SystemExit from a provider is not ours to honour
        if isinstance(error, KeyboardInterrupt):
            raise
        return finish(Verdict.ERROR, _error_message(check, _unexpected(error)))
    if reading.explain and verdict is not Verdict.SUCCESSFUL:
        message = f"{message}; {reading.explain}"
    return finish(verdict, message, reading)


def _error_message(check: Check, what: str) -> str:
    return f"{check.name}: error: {what}, needs {judgement_text(check)} ({query_part(check)})"


def _unexpected(error: BaseException) -> str:
    # Providers map their errors to secret-free ProviderErrors; anything else is shown short and without
    # URL credentials, in case a library put them in its message.
    text = hide_userinfo(str(error))
    return shorten(f"unexpected {type(error).__name__}: {text}" if text else f"unexpected {type(error).__name__}", 300)


def rfc3339(moment: dt.datetime) -> str:
    """``2025-01-02T03:04:05.678Z`` (UTC, milliseconds: two measurements of a check a second apart must never
    share a time, which is their identity in the evidence ledger)."""
    return format_time(_utc(moment))


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
