"""Execution route visibility of one target database, all the time (not only during a rollout). Pure but for the
SQL text: the read happens through the read-only PostgresGateway of the gates.

Over the executions created in the last :data:`WINDOW`:

* null rate: expected or actual adapter NULL, empty or ``unknown`` (the preset's definition);
* unknown rate: expected or actual adapter exactly ``unknown`` (the column default at head), a part of the above;
* fallback ratio: both adapters known and different, or a fallback count above 0.

A window without executions has no rates (None), never 0: no data is not a good value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from torghut_operator.core.presets import WINDOW

_UNSET = "({col} IS NULL OR {col} IN ('', 'unknown'))"
_EXPECTED, _ACTUAL = "execution_expected_adapter", "execution_actual_adapter"
ROUTE_STATS_SQL = f"""
SELECT count(*) AS executions,
       count(*) FILTER (WHERE {_UNSET.format(col=_EXPECTED)} OR {_UNSET.format(col=_ACTUAL)}) AS unset,
       count(*) FILTER (WHERE {_EXPECTED} = 'unknown' OR {_ACTUAL} = 'unknown') AS unknown,
       count(*) FILTER (WHERE (NOT {_UNSET.format(col=_EXPECTED)} AND NOT {_UNSET.format(col=_ACTUAL)}
                               AND {_EXPECTED} <> {_ACTUAL})
                           OR execution_fallback_count > 0) AS fallback
FROM executions
WHERE created_at >= now() - interval '{WINDOW}'
""".strip()


@dataclass(frozen=True)
class RouteStats:
    executions: int
    unset: int
    unknown: int
    fallback: int

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RouteStats:
        """From one row of :data:`ROUTE_STATS_SQL`; ValueError for anything but four non-negative counts with the
        parts not above the whole (a malformed answer never becomes a rate)."""
        values = {}
        for key in ("executions", "unset", "unknown", "fallback"):
            raw = row.get(key)
            if isinstance(raw, Decimal) and raw == raw.to_integral_value():
                raw = int(raw)
            if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
                raise ValueError(f"route stats: {key} is {raw!r}, not a count")
            values[key] = raw
        if any(values[k] > values["executions"] for k in ("unset", "unknown", "fallback")):
            raise ValueError(f"route stats: a part exceeds the executions counted: {values}")
        return cls(**values)

    def _share(self, part: int) -> float | None:
        return part / self.executions if self.executions else None

    @property
    def null_rate(self) -> float | None:
        return self._share(self.unset)

    @property
    def unknown_rate(self) -> float | None:
        return self._share(self.unknown)

    @property
    def fallback_ratio(self) -> float | None:
        return self._share(self.fallback)
