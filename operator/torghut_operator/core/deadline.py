"""One deadline per measurement, and the one watchdog that enforces it on blocking I/O.

A measurement (provider read, explainQuery, CEL judgement) runs in the caller's thread: no thread per read, so
a flood of slow checks can't grow the process's threads (the caller is already one of the operator's bounded
worker threads). Each I/O step takes its timeout from ``Deadline.remaining()``; what a timeout can't bound (a
server that trickles one byte at a time, a socket that hangs mid-answer) is cut by the watchdog, which calls the
cancel hook a provider registered with ``Deadline.on_expiry`` (shut the socket down) when the deadline passes.

The watchdog is one daemon thread, started when a hook is registered and gone when none is pending, so the
thread count returns to its baseline once the measurements end.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torghut_operator.core.reading import ProviderError

log = logging.getLogger(__name__)


class DeadlineExceeded(ProviderError):
    """Raised by code that notices its measurement's deadline has passed. A ProviderError, so code that only
    knows those still fails closed (Error)."""


@dataclass(frozen=True)
class Deadline:
    """``at`` on the ``time.monotonic()`` clock; ``label`` is the budget as the user wrote it (``10s``)."""

    at: float
    label: str

    @classmethod
    def after(cls, seconds: float, label: str | None = None) -> Deadline:
        return cls(time.monotonic() + seconds, label or f"{seconds:g}s")

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def check(self, doing: str = "") -> None:
        """Raise DeadlineExceeded when the deadline has passed."""
        if self.expired():
            raise DeadlineExceeded(
                f"no answer within the check's timeout of {self.label}" + (f" ({doing})" if doing else "")
            )

    def timeout(self, cap: float | None = None) -> float:
        """A positive timeout for the next blocking call: what is left, at most ``cap``. Raises
        DeadlineExceeded when nothing is left (a zero timeout means "no timeout" to several libraries)."""
        left = self.remaining()
        if left <= 0:
            self.check()
            left = 1e-3
        return min(left, cap) if cap is not None else left

    @contextmanager
    def on_expiry(self, cancel: Callable[[], None]) -> Iterator[None]:
        """Within the block, ``cancel()`` is called (from the watchdog thread) if the deadline passes. It must
        be quick and thread-safe, e.g. ``socket.shutdown``, which wakes a thread blocked reading it."""
        token = _WATCHDOG.register(self.at, cancel)
        try:
            yield
        finally:
            _WATCHDOG.unregister(token)


class _Watchdog:
    """A heap of (when, token) and the hooks by token; one thread sleeps until the earliest and fires it."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._hooks: dict[int, Callable[[], None]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def register(self, at: float, cancel: Callable[[], None]) -> int:
        with self._lock:
            token = next(self._ids)
            self._hooks[token] = cancel
            heapq.heappush(self._heap, (at, token))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="gate-deadline-watchdog", daemon=True)
                self._thread.start()
            self._lock.notify()
            return token

    def unregister(self, token: int) -> None:
        with self._lock:
            self._hooks.pop(token, None)
            self._lock.notify()

    def pending(self) -> int:
        with self._lock:
            return len(self._hooks)

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._heap and self._heap[0][1] not in self._hooks:
                    heapq.heappop(self._heap)  # unregistered: drop lazily
                if not self._heap:
                    self._thread = None  # nothing pending: end, a new register starts another
                    return
                at, token = self._heap[0]
                wait = at - time.monotonic()
                if wait > 0:
                    self._lock.wait(wait)
                    continue
                heapq.heappop(self._heap)
                cancel = self._hooks.pop(token)
            try:
                cancel()
            except Exception:  # a hook that fails must not stop the others
                log.exception("deadline cancel hook failed")


_WATCHDOG = _Watchdog()


def pending_hooks() -> int:
    """Cancel hooks registered and not yet fired or released (for tests and diagnostics)."""
    return _WATCHDOG.pending()
