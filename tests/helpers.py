"""Test data shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

TORGHUT_SERIES = frozenset(
    {
        # counters (as exposed, with _total)
        "decisions_total",
        "orders_submitted_total",
        "orders_rejected_total",
        "reconcile_updates_total",
        "no_signal_windows_total",
        "signal_continuity_breach_total",
        "execution_requests_total",
        "execution_fallback_total",
        "execution_fallback_reason_total",
        "no_signal_reason_total",
        "strategy_events_total",
        "strategy_errors_total",
        # gauges
        "no_signal_streak",
        "no_signal_reason_streak",
        "signal_lag_seconds",
        "feature_staleness_ms_p95",
        "capital_daily_loss_ratio",
    }
)
"""Torghut's own series (torghut.md section 4), without the `torghut_trading_` prefix."""
