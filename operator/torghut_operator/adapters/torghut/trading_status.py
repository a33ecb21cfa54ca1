"""What blocks Torghut's signal path, read from its ``/trading/status`` answer. Pure.

The fields are the service's own (``enabled``, ``kill_switch_enabled``, ``running``, ``last_error``,
``autonomy{runs_total, signals_total, patches_total}``; ``autonomy.last_reason`` or
``autonomy.last_no_signal_reason`` where a version reports the last no-signal reason). Nothing else is
assumed: a field that is missing or has the wrong type is itself named as a block, so a malformed answer
never reads as "nothing blocks".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from torghut_operator.core.text import shorten

STATUS_PATH = "/trading/status"
_ERROR_CHARS = 160


def is_trading_status_url(url: str) -> bool:
    """Whether ``url`` is a service's ``/trading/status`` endpoint (the query string aside)."""
    return urlsplit(url).path.rstrip("/").endswith(STATUS_PATH)


def blocks(status: Any) -> list[str]:
    """Every reason the loop produces no signals, in the order an on-call would check them; empty when the
    answer shows an enabled, running loop with no error that has produced signals."""
    if not isinstance(status, Mapping):
        return [f"malformed {STATUS_PATH} answer: not a JSON object"]
    found: list[str] = []
    enabled = status.get("enabled")
    if enabled is not True:
        found.append("trading disabled (enabled=false)" if enabled is False else _bad("enabled", enabled))
    kill = status.get("kill_switch_enabled")
    if kill is not False:
        found.append("kill switch on (kill_switch_enabled=true)" if kill is True else _bad("kill_switch_enabled", kill))
    running = status.get("running")
    if running is not True:
        found.append("trading loop not running (running=false)" if running is False else _bad("running", running))
    error = status.get("last_error")
    if isinstance(error, str) and error.strip():
        found.append(f"last_error: {shorten(error.strip(), _ERROR_CHARS)}")
    elif error is not None and not isinstance(error, str):
        found.append(_bad("last_error", error))
    autonomy = status.get("autonomy")
    if not isinstance(autonomy, Mapping):
        found.append(_bad("autonomy", autonomy))
        return found
    runs, signals = autonomy.get("runs_total"), autonomy.get("signals_total")
    if not _count(runs):
        found.append(_bad("autonomy.runs_total", runs))
    if not _count(signals):
        found.append(_bad("autonomy.signals_total", signals))
    elif signals == 0:
        reason = autonomy.get("last_reason") or autonomy.get("last_no_signal_reason")
        why = f", last no-signal reason {shorten(str(reason), _ERROR_CHARS)}" if reason else ""
        if isinstance(runs, int) and runs > 0:
            found.append(f"loop running with zero signals (runs_total={runs}, signals_total=0{why})")
        else:
            found.append(f"no loop run yet (runs_total={runs}, signals_total=0{why})")
    return found


def explain(status: Any) -> str | None:
    """``blocked: a; b`` for the verdict message, or None when nothing blocks."""
    found = blocks(status)
    return "blocked: " + "; ".join(found) if found else None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _bad(field: str, value: Any) -> str:
    return f"malformed {STATUS_PATH} answer: {field} is {shorten(repr(value), 40)}"
