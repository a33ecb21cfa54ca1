"""Polling with a deadline: the one place in the local stack that sleeps.

Everything that waits for a process, an endpoint or a Kubernetes object goes through
`wait_for`, so a timeout always says what was awaited and what was last observed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_NOTHING = object()
_MAX_SEEN_CHARS = 2000


class NotYet(Exception):
    """Raise from a polled callable to say "not yet, and here is what I saw" (always retried)."""


class WaitTimeout(TimeoutError):
    """`wait_for` ran out of time; the message names the goal and the last observation."""

    def __init__(self, what: str, timeout: float, attempts: int, last_seen: str) -> None:
        super().__init__(
            f"timed out after {timeout:.1f}s ({attempts} attempts) waiting for {what}; last saw: {last_seen}"
        )
        self.what = what
        self.timeout = timeout
        self.last_seen = last_seen


def _describe(value: object) -> str:
    text = repr(value)
    if len(text) > _MAX_SEEN_CHARS:
        text = text[:_MAX_SEEN_CHARS] + f"... ({len(text)} chars)"
    return text


def wait_for(
    fn: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.25,
    what: str,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> T:
    """Call `fn` until it returns a truthy value and return that value.

    An exception of a `retry_on` type, or `NotYet`, counts as "not yet" and is remembered; any
    other exception propagates at once (with `retry_on=()` an AssertionError fails at once).
    After `timeout` seconds `WaitTimeout` is raised with `what` and the last return value
    or exception, chained to that exception. `fn` runs at least once, and once more at the
    deadline, so a slow poll never loses its last chance.
    """
    deadline = time.monotonic() + timeout
    attempts = 0
    last: object = _NOTHING
    last_error: BaseException | None = None
    retry_on = (NotYet, *retry_on)
    while True:
        attempts += 1
        try:
            value = fn()
        except retry_on as error:
            last, last_error = error, error
        else:
            if value:
                return value
            last, last_error = value, None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if isinstance(last, BaseException):
                seen = f"{type(last).__name__}: {last}"
                if len(seen) > _MAX_SEEN_CHARS:
                    seen = seen[:_MAX_SEEN_CHARS] + "..."
            else:
                seen = _describe(last)
            raise WaitTimeout(what, timeout, attempts, seen) from last_error
        time.sleep(min(interval, remaining))
