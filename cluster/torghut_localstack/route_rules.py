"""Torghut's route-provenance rules, as the service applies them, and the backfill built on them.

The service (``app/trading/route_metadata.py`` of proompteng/lab: ``resolve_order_route_metadata`` then
``normalize_route_provenance``) decides what an execution row records as its expected adapter, actual adapter,
fallback reason and fallback count. This module restates those rules (it does not import or copy the service) so
that the simulator writes what the service writes, and so that the SQL pack's backfill
(``manifests/torghut/0004_route_provenance_backfill.sql``) and the ``route-backfill`` check can be tested against
one reference, row by row. Pure: no I/O.

The service's rules, for a payload ``raw_order`` and no execution client (a backfill has none):

* text values: ``str.strip()`` (Python's whitespace, Unicode included), empty is missing, exactly
  ``alpaca_fallback`` becomes ``alpaca``; case is kept; anything that is not a string is missing;
* expected = the adapter chosen at submit time, else ``_execution_route_expected``
  (``execution_expected_adapter`` is *not* an expected-adapter source);
* actual = first of ``_execution_route_actual``, ``_execution_adapter``, ``execution_actual_adapter``,
  ``_execution_route_expected``, ``execution_expected_adapter``, else expected; no expected: expected = actual;
* reason = ``_execution_fallback_reason``, else ``_fallback_reason``; count = ``_execution_fallback_count`` read
  like Python's ``int()`` (bools, ints, floats truncated, int-like strings);
* no count and expected != actual: count 1 and reason ``fallback_from_<expected>_to_<actual>``; a count <= 0 with
  a reason becomes 1; then missing expected is ``unknown``, expected != actual forces a count of at least 1, a
  positive count without a reason gets the generated one, and count 0 clears the reason.

What the backfill adds, decided here (the service never meets these cases):

* a column that is NULL, empty, whitespace or ``unknown`` is missing (at head the columns are
  ``NOT NULL DEFAULT 'unknown'``);
* a usable expected column is the service's submit-time choice and wins over the markers;
* a usable actual column was written by the service at fill time and is kept (the conservative choice): it takes
  the place of the actual markers, and the expected adapter still falls back to it;
* both columns usable: the row is left as it is (count and reason included), except that a column holding
  ``alpaca_fallback`` (trimmed) becomes ``alpaca``;
* a resolved row gets all four values from the rules: count and reason are recomputed from ``raw_order`` whatever
  the columns held;
* a value longer than its column (adapters varchar(32), reason varchar(128)) or a count above
  :data:`MAX_EXACT_COUNT` leaves the row unchanged: it is *skipped*, counted, and never aborts the backfill;
* nothing at all: ``unknown`` / ``unknown``, count 0, reason NULL.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = [
    "ACTUAL_MARKERS",
    "ALL_MARKERS",
    "EXPECTED_MARKER",
    "INT_WHITESPACE",
    "MAX_EXACT_COUNT",
    "PYTHON_WHITESPACE",
    "UNKNOWN",
    "Backfill",
    "ColumnLimits",
    "Outcome",
    "Route",
    "backfill",
    "coerce_route_int",
    "coerce_route_text",
    "decimal_digit_starts",
    "service_route",
]

UNKNOWN: Final = "unknown"
"""What the columns hold when nothing is known (the column default at head)."""

EXPECTED_MARKER: Final = "_execution_route_expected"
ACTUAL_MARKERS: Final[tuple[str, ...]] = (
    "_execution_route_actual",
    "_execution_adapter",
    "execution_actual_adapter",
    # the client's last_route would come here; a backfill has no client
    "_execution_route_expected",
    "execution_expected_adapter",
)
"""``raw_order`` keys read for the actual adapter, in the service's order."""
REASON_MARKERS: Final[tuple[str, ...]] = ("_execution_fallback_reason", "_fallback_reason")
COUNT_MARKER: Final = "_execution_fallback_count"
ALL_MARKERS: Final[tuple[str, ...]] = (*ACTUAL_MARKERS, *REASON_MARKERS, COUNT_MARKER)

MAX_EXACT_COUNT: Final = 2**53
"""Counts above this are skipped: a JSON number that large is not exact across JSON parsers (the service reads a
float, Postgres' jsonb a decimal), so the backfill cannot know what the service would have stored."""

PYTHON_WHITESPACE: Final = "".join(c for c in map(chr, range(0x110000)) if c.isspace())
"""What ``str.strip()`` removes (29 characters); the SQL spells the same set out."""
INT_WHITESPACE: Final = "".join(c for c in PYTHON_WHITESPACE if c not in "\x1c\x1d\x1e\x1f")
"""What ``int()`` skips around a number: the same minus U+001C..U+001F, which it rejects (found by the property
test: the two sets differ)."""


def decimal_digit_starts() -> tuple[int, ...]:
    """Code points of every Unicode digit zero that ``int()`` accepts; digits 0-9 follow each contiguously (a
    Unicode stability guarantee). The SQL lists the same starts; a unit test keeps them equal."""
    return tuple(cp for cp in range(0x110000) if unicodedata.decimal(chr(cp), None) == 0)


# ---------------------------------------------------------------------------------------------------------------
# The service's coercions


def coerce_route_text(value: object) -> str | None:
    """A route text as the service reads it: strings only, stripped, empty is missing, ``alpaca_fallback`` is
    ``alpaca``; case is kept."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    return "alpaca" if text == "alpaca_fallback" else text


def coerce_route_int(value: object) -> int | None:
    """A fallback count as the service reads it: bool, int, float (truncated), or a string ``int()`` accepts
    (Unicode digits, underscores and surrounding whitespace included); anything else is missing.

    One deviation, because JSON allows it and the service would crash on it: a non-finite float (``1e400``
    parses to infinity) is returned as a count above :data:`MAX_EXACT_COUNT`, so the row is skipped."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return MAX_EXACT_COUNT + 1 if value > 0 else 0
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class Route:
    """The route provenance of one execution row: its four columns."""

    expected: str | None
    actual: str | None
    fallback_count: int = 0
    fallback_reason: str | None = None

    @property
    def is_fallback(self) -> bool:
        return self.expected is not None and self.actual is not None and self.expected != self.actual

    @property
    def unknown(self) -> bool:
        """No provenance: an adapter is unknown (or missing)."""
        return self.expected in (None, UNKNOWN) or self.actual in (None, UNKNOWN)


def service_route(
    raw_order: object,
    *,
    expected_adapter: str | None = None,
    actual_adapter: str | None = None,
) -> Route:
    """What the service records for a payload, without an execution client.

    ``expected_adapter``: the adapter chosen at submit time. ``actual_adapter``: an actual adapter already known
    for the row (the backfill's kept column); it takes the place of the actual markers. A ``raw_order`` that is not
    a JSON object carries no markers."""
    order: Mapping[str, object] = raw_order if isinstance(raw_order, dict) else {}
    expected = coerce_route_text(expected_adapter) or coerce_route_text(order.get(EXPECTED_MARKER))
    actual = coerce_route_text(actual_adapter)
    for key in ACTUAL_MARKERS:
        actual = actual or coerce_route_text(order.get(key))
    actual = actual or expected
    if expected is None:
        expected = actual
    reason = None
    for key in REASON_MARKERS:
        reason = reason or coerce_route_text(order.get(key))
    count = coerce_route_int(order.get(COUNT_MARKER))
    # the service's _normalize_fallback_fields
    if count is None and expected and actual and expected != actual:
        count = 1
        if reason is None:
            reason = f"fallback_from_{expected}_to_{actual}"
    if count is not None and count <= 0 and reason is not None:
        count = 1
    # the service's normalize_route_provenance
    final_expected = coerce_route_text(expected) or UNKNOWN
    final_actual = coerce_route_text(actual) or final_expected
    final_count = 0 if count is None else max(0, count)
    final_reason = coerce_route_text(reason)
    if final_expected != final_actual and final_count <= 0:
        final_count = 1
    if final_count > 0 and final_reason is None:
        final_reason = f"fallback_from_{final_expected}_to_{final_actual}"
    if final_count == 0:
        final_reason = None
    return Route(final_expected, final_actual, final_count, final_reason)


# ---------------------------------------------------------------------------------------------------------------
# The backfill


@dataclass(frozen=True)
class ColumnLimits:
    """Column lengths (characters; None: unbounded), as the SQL reads them from the catalog."""

    expected: int | None = 32
    actual: int | None = 32
    reason: int | None = 128


class Outcome(StrEnum):
    UNCHANGED = "unchanged"
    CHANGED = "changed"
    SKIPPED = "skipped"
    """A value does not fit its column: the row is left as it is."""


@dataclass(frozen=True)
class Backfill:
    route: Route
    """The row after the backfill (the row as it was, unless ``outcome`` is CHANGED)."""
    outcome: Outcome


def _column(value: str | None) -> str | None:
    text = coerce_route_text(value)
    return None if text == UNKNOWN else text


def _kept(value: str | None) -> str | None:
    return "alpaca" if value is not None and value.strip() == "alpaca_fallback" else value


def _fits(text: str | None, limit: int | None) -> bool:
    return text is None or limit is None or len(text) <= limit


def backfill(row: Route, raw_order: object, limits: ColumnLimits = ColumnLimits()) -> Backfill:
    """What the backfill does to one execution row (see the module docstring for the rules)."""
    expected, actual = _column(row.expected), _column(row.actual)
    if expected is not None and actual is not None:
        new = Route(_kept(row.expected), _kept(row.actual), row.fallback_count, row.fallback_reason)
    else:
        new = service_route(raw_order, expected_adapter=expected, actual_adapter=actual)
        fits = (
            _fits(new.expected, limits.expected)
            and _fits(new.actual, limits.actual)
            and _fits(new.fallback_reason, limits.reason)
            and new.fallback_count <= MAX_EXACT_COUNT
        )
        if not fits:
            return Backfill(row, Outcome.SKIPPED)
    return Backfill(new, Outcome.UNCHANGED if new == row else Outcome.CHANGED)
