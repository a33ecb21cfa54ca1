"""A Torghut simulator: the real service's HTTP surfaces and Prometheus series on 127.0.0.1.

Run it as a process::

    python -m torghut_localstack.simulator --port 8181 --dsn postgresql://... \\
        --kubeconfig kubeconfig --follow-deployment torghut/torghut/user-container

or embed it in a test::

    with TorghutSimulator(dsn=url, tick_seconds=0.2) as sim:
        httpx.get(f"{sim.url}/trading/status", timeout=5)

It serves the shapes of Torghut's ``/healthz``, ``/readyz``, ``/runtime-readyz``, ``/trading/status``,
``/trading/metrics``, ``/trading/executions`` and ``/metrics`` (series prefixed ``torghut_trading_``).
A background *trading loop* ticks every ``tick_seconds``: it advances the counters according to the
current scenario and, when a DSN is given, writes executions, trade decisions and a research lane run
into the database, so gates computed from Postgres see real rows.

Scenarios (:data:`SCENARIOS`), steerable in process (:meth:`TorghutSimulator.set_scenario`) or over
HTTP (``POST /_sim/scenario {"scenario": "..."}``):

``healthy``
    loop runs, signals and decisions grow, both adapters recorded, fallback ratio ≈ 0.05.
``zero_signals``
    ``autonomy.runs_total`` still grows but ``signals_total``/``decisions_total`` stop;
    ``no_signal_reason_total{reason}``, ``no_signal_windows_total`` and ``no_signal_streak`` grow.
``fallback_storm``
    every tick 4 lean requests of which 3 fall back to alpaca: fallback/requests = 0.75.
``schema_not_current``
    ``/runtime-readyz`` answers 503: the expected heads gain :data:`~torghut_db.NEXT_HEAD`.
``slow``
    every product endpoint answers only after ``slow_delay_seconds`` (default 15 s).
``null_routes``
    new executions are written with NULL / ``'unknown'`` adapters and no route markers.

Blocked signal paths (``/trading/status`` shows the block; no signals, decisions, orders or lane runs):

``trading_disabled``
    ``enabled: false`` (as with ``TRADING_ENABLED=false``, which also works); the loop does not run.
``kill_switch``
    ``kill_switch_enabled: true`` (as with ``TRADING_KILL_SWITCH_ENABLED=true``); the loop runs, trades nothing.
``loop_stopped``
    ``running: false``: the scheduler is not running; nothing grows.
``loop_error``
    the loop runs but every run fails: ``last_error`` set, ``signals_total`` stays.

Importing this module starts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, Literal, cast, get_args
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from torghut_localstack import route_rules, torghut_db

__all__ = [
    "SCENARIOS",
    "BuildInfo",
    "FollowTarget",
    "Scenario",
    "TorghutSimulator",
    "build_from_image",
    "main",
]

log = logging.getLogger("torghut_localstack.simulator")

Scenario = Literal[
    "healthy",
    "zero_signals",
    "fallback_storm",
    "schema_not_current",
    "slow",
    "null_routes",
    "trading_disabled",
    "kill_switch",
    "loop_stopped",
    "loop_error",
]
BLOCKED: Final[frozenset[str]] = frozenset({"trading_disabled", "kill_switch", "loop_stopped", "loop_error"})
LOOP_ERROR: Final = "signal ingest failed: ClickHouse query timed out after 10s"
"""The ``last_error`` of scenario ``loop_error`` (shaped like the service's own messages)."""
SCENARIOS: Final[tuple[str, ...]] = get_args(Scenario)

SERVICE: Final = "torghut"
STRATEGY_ID: Final = "intraday-momentum-v3"
DEFAULT_IMAGE: Final = (
    "registry.local/lab/torghut:v0.42.0@sha256:" + "4f1c2a9d8e7b6c5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a"
)
SIM_ANNOTATION: Final = "torghut-sim.proompteng.ai/scenario"
"""Annotation on the followed workload (or its pod template) that switches the scenario on change."""

_TRADING_ENV: Final = (
    "TRADING_ENABLED",
    "TRADING_MODE",
    "TRADING_KILL_SWITCH_ENABLED",
    "TRADING_EXECUTION_ADAPTER",
    "TRADING_EXECUTION_FALLBACK_ADAPTER",
    "TRADING_EXECUTION_ADAPTER_POLICY",
    "TRADING_AUTONOMY_ENABLED",
    "TRADING_AUTONOMY_ALLOW_LIVE_PROMOTION",
    "K_REVISION",
    "TORGHUT_COMMIT",
)


# --------------------------------------------------------------------------------------------------
# Build information


@dataclass(frozen=True)
class BuildInfo:
    """What ``/trading/metrics`` reports under ``build`` (plus the full ``image`` reference)."""

    version: str
    commit: str
    image_digest: str | None
    active_revision: str | None
    image: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


_DIGEST_RE: Final = re.compile(r"^sha256:[0-9a-f]{64}$")
_COMMIT_RE: Final = re.compile(r"^[0-9a-f]{7,40}$")


def build_from_image(image: str, *, active_revision: str | None = None, commit: str | None = None) -> BuildInfo:
    """Derive the build of an image reference ``[registry/]repo[:tag][@sha256:...]``.

    ``version`` is the tag (``sha256-<12 hex>`` for a digest-only reference, ``unknown`` otherwise),
    ``image_digest`` the digest or ``None``, ``commit`` the given one, else the tag when it looks like
    a git sha, else ``unknown``.
    """
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else ""
    image_digest = digest if _DIGEST_RE.fullmatch(digest) else None
    if tag:
        version = tag
    elif image_digest:
        version = "sha256-" + image_digest.removeprefix("sha256:")[:12]
    else:
        version = "unknown"
    if commit is None:
        commit = tag if _COMMIT_RE.fullmatch(tag) else "unknown"
    return BuildInfo(
        version=version, commit=commit, image_digest=image_digest, active_revision=active_revision, image=image
    )


@dataclass(frozen=True)
class FollowTarget:
    """A workload whose container image the simulator reports as its build."""

    kind: Literal["Deployment", "Service"]
    namespace: str
    name: str
    container: str

    @classmethod
    def parse(cls, value: str, kind: Literal["Deployment", "Service"] = "Deployment") -> FollowTarget:
        parts = value.split("/")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"expected NAMESPACE/NAME/CONTAINER, got {value!r}")
        return cls(kind=kind, namespace=parts[0], name=parts[1], container=parts[2])


# --------------------------------------------------------------------------------------------------
# Prometheus series


class _Metrics:
    """The ``torghut_trading_*`` series in a private registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = "torghut_trading_"
        self.decisions = Counter(p + "decisions", "Trade decisions produced.", registry=r)
        self.orders_submitted = Counter(p + "orders_submitted", "Orders submitted to the broker.", registry=r)
        self.orders_rejected = Counter(p + "orders_rejected", "Orders rejected.", registry=r)
        self.reconcile_updates = Counter(p + "reconcile_updates", "Order reconcile updates.", registry=r)
        self.no_signal_windows = Counter(p + "no_signal_windows", "Windows without any signal.", registry=r)
        self.continuity_breach = Counter(p + "signal_continuity_breach", "Signal continuity breaches.", registry=r)
        self.execution_requests = Counter(
            p + "execution_requests", "Execution requests by adapter.", ["adapter"], registry=r
        )
        self.execution_fallback = Counter(
            p + "execution_fallback", "Execution fallbacks between adapters.", ["from", "to"], registry=r
        )
        self.execution_fallback_reason = Counter(
            p + "execution_fallback_reason", "Execution fallbacks by reason.", ["reason"], registry=r
        )
        self.no_signal_reason = Counter(
            p + "no_signal_reason", "Windows without signal by reason.", ["reason"], registry=r
        )
        self.strategy_events = Counter(p + "strategy_events", "Strategy events.", ["strategy_id"], registry=r)
        self.strategy_errors = Counter(p + "strategy_errors", "Strategy errors.", ["strategy_id"], registry=r)
        self.no_signal_streak = Gauge(
            p + "no_signal_streak", "Consecutive windows without signal.", ["service"], registry=r
        )
        self.no_signal_reason_streak = Gauge(
            p + "no_signal_reason_streak", "Consecutive windows without signal by reason.", ["reason"], registry=r
        )
        self.signal_lag = Gauge(p + "signal_lag_seconds", "Age of the newest signal.", ["service"], registry=r)
        self.feature_staleness = Gauge(p + "feature_staleness_ms_p95", "Feature staleness p95 (ms).", registry=r)
        self.capital_daily_loss = Gauge(p + "capital_daily_loss_ratio", "Daily loss / capital.", registry=r)

    def init_series(self, reasons: Sequence[str]) -> None:
        """Create the labelled series at zero so that ``rate()`` sees them from the first scrape."""
        for adapter in torghut_db.ADAPTERS:
            self.execution_requests.labels(adapter=adapter)
        self.execution_fallback.labels("lean", "alpaca")
        self.execution_fallback_reason.labels(reason="fallback_from_lean_to_alpaca")
        for reason in reasons:
            self.no_signal_reason.labels(reason=reason)
            self.no_signal_reason_streak.labels(reason=reason).set(0)
        self.strategy_events.labels(strategy_id=STRATEGY_ID)
        self.strategy_errors.labels(strategy_id=STRATEGY_ID)
        self.no_signal_streak.labels(service=SERVICE).set(0)
        self.signal_lag.labels(service=SERVICE).set(0.5)
        self.feature_staleness.set(850)
        self.capital_daily_loss.set(0.002)


# --------------------------------------------------------------------------------------------------
# Simulator


@dataclass
class _State:
    scenario: Scenario
    ticks: int = 0
    runs_total: int = 0
    signals_total: int = 0
    patches_total: int = 0
    decisions_total: int = 0
    orders_submitted_total: int = 0
    requests: dict[str, int] = field(default_factory=dict)
    fallbacks_total: int = 0
    no_signal_streak: int = 0
    no_signal_windows_total: int = 0
    last_run_at: datetime | None = None
    last_signal_at: datetime | None = None
    last_error: str | None = None
    last_research_run_id: str | None = None
    db_writes: int = 0
    db_errors: int = 0
    last_db_error: str | None = None
    research_errors: int = 0
    last_research_error: str | None = None
    follow_errors: int = 0
    last_follow_error: str | None = None
    followed_env: dict[str, str] = field(default_factory=dict)
    followed_annotation: str | None = None


@dataclass(frozen=True)
class _ExecutionPlan:
    markers: Mapping[str, object]
    adapters: Literal["null", "unknown", "resolved"]
    symbol: str


@dataclass(frozen=True)
class _TickPlan:
    at: datetime
    executions: tuple[_ExecutionPlan, ...]
    research_status: str
    research_candidates: int
    decision_action: str
    research: bool = True


class TorghutSimulator:
    """The simulator: an HTTP server and a trading loop on background threads.

    ``port=0`` picks a free port (read :attr:`port` / :attr:`url` after :meth:`start`). With ``dsn``,
    ``/runtime-readyz`` reads ``alembic_version``, ``/trading/executions`` reads ``executions`` and the
    loop writes rows each tick; without it everything is in memory. With ``follow``, the build reflects
    the image of that workload's container, read through the Kubernetes API every
    ``follow_poll_seconds``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        dsn: str | None = None,
        scenario: Scenario = "healthy",
        tick_seconds: float = 1.0,
        image: str = DEFAULT_IMAGE,
        active_revision: str | None = "torghut-00001",
        commit: str | None = None,
        expected_heads: Sequence[str] = torghut_db.DEFAULT_HEADS,
        slow_delay_seconds: float = 15.0,
        no_signal_reason: str = "market_closed",
        trading_mode: str = "paper",
        follow: FollowTarget | None = None,
        kubeconfig: str | None = None,
        follow_poll_seconds: float = 1.0,
        follow_wait_rollout: bool = False,
        db_timeout_seconds: float = 5.0,
        api_timeout_seconds: float = 5.0,
        autostart_loop: bool = True,
    ) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; expected one of {', '.join(SCENARIOS)}")
        if tick_seconds <= 0:
            raise ValueError("tick_seconds must be > 0")
        self._host = host
        self._requested_port = port
        self._dsn = dsn
        self._tick_seconds = tick_seconds
        self._slow_delay = slow_delay_seconds
        self._no_signal_reason = no_signal_reason
        self._expected_heads: tuple[str, ...] = tuple(expected_heads)
        self._current_heads: tuple[str, ...] = tuple(expected_heads)
        self._trading_mode = trading_mode
        self._follow = follow
        self._kubeconfig = kubeconfig
        self._follow_poll = follow_poll_seconds
        self._follow_wait_rollout = follow_wait_rollout
        self._db_timeout = db_timeout_seconds
        self._api_timeout = api_timeout_seconds
        self._autostart_loop = autostart_loop
        self._build = build_from_image(image, active_revision=active_revision, commit=commit)
        self._commit_override = commit

        self._lock = threading.RLock()
        self._state = _State(scenario=scenario)
        self._memory_executions: deque[dict[str, Any]] = deque(maxlen=1000)
        self._metrics = _Metrics()
        self._streak_reasons: set[str] = {no_signal_reason, "market_closed", "no_features"}
        self._metrics.init_series(sorted(self._streak_reasons))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: _Server | None = None
        self._engine: Engine | None = None
        self._started_at = datetime.now(UTC)
        self._last_warnings: dict[str, str] = {}

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def scenario(self) -> Scenario:
        with self._lock:
            return self._state.scenario

    def start(self) -> TorghutSimulator:
        """Bind the port and start the server, the trading loop and the follower threads."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._stop.clear()
        if self._dsn:
            timeout_ms = int(self._db_timeout * 1000)
            self._engine = torghut_db.make_engine(
                self._dsn,
                connect_timeout=self._db_timeout,
                statement_timeout_ms=timeout_ms,
                lock_timeout_ms=timeout_ms,
                pool_size=4,
            )
        self._server = _Server((self._host, self._requested_port), self)
        self._spawn("torghut-sim-http", self._serve)
        if self._autostart_loop:
            self._spawn("torghut-sim-loop", self._run_loop)
        if self._follow is not None:
            self._spawn("torghut-sim-follow", self._run_follower)
        log.info("torghut simulator listening on %s (scenario %s)", self.url, self.scenario)
        return self

    def stop(self) -> None:
        """Stop every thread (slow responses are cut short) and release the port."""
        self._stop.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> TorghutSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _serve(self) -> None:
        server = self._server
        if server is not None:
            server.serve_forever(poll_interval=0.1)

    # ---- steering ----------------------------------------------------------------------------

    def set_scenario(self, name: str) -> None:
        """Switch scenario; readiness and slowness change at once, counters from the next tick."""
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}; expected one of {', '.join(SCENARIOS)}")
        with self._lock:
            if self._state.scenario != name:
                log.info("scenario %s -> %s", self._state.scenario, name)
            self._state.scenario = cast(Scenario, name)

    def set_image(self, image: str, *, active_revision: str | None = None, commit: str | None = None) -> None:
        """Report ``image`` as the deployed build (what ``--follow-deployment`` does automatically)."""
        with self._lock:
            revision = active_revision if active_revision is not None else self._build.active_revision
            self._build = build_from_image(image, active_revision=revision, commit=commit)

    def set_build(self, **fields: str | None) -> None:
        """Override fields of the build (``version``, ``commit``, ``image_digest``, ``active_revision``)."""
        with self._lock:
            self._build = replace(self._build, **fields)  # type: ignore[arg-type]

    @property
    def build(self) -> BuildInfo:
        with self._lock:
            return self._build

    def set_expected_heads(self, heads: Sequence[str]) -> None:
        """The Alembic heads the running image expects."""
        with self._lock:
            self._expected_heads = tuple(heads)

    def set_current_heads(self, heads: Sequence[str]) -> None:
        """The heads reported as present without a DSN (with a DSN they come from ``alembic_version``)."""
        with self._lock:
            self._current_heads = tuple(heads)

    def set_trading_mode(self, mode: str) -> None:
        with self._lock:
            self._trading_mode = mode

    def set_no_signal_reason(self, reason: str) -> None:
        with self._lock:
            self._no_signal_reason = reason

    def snapshot(self) -> dict[str, Any]:
        """The simulator's internal state (also ``GET /_sim/state``)."""
        with self._lock:
            s = self._state
            return {
                "scenario": s.scenario,
                "scenarios": list(SCENARIOS),
                "ticks": s.ticks,
                "tick_seconds": self._tick_seconds,
                "runs_total": s.runs_total,
                "signals_total": s.signals_total,
                "patches_total": s.patches_total,
                "decisions_total": s.decisions_total,
                "execution_requests_total": dict(s.requests),
                "execution_fallback_total": s.fallbacks_total,
                "no_signal_streak": s.no_signal_streak,
                "db": self._dsn is not None,
                "db_writes": s.db_writes,
                "db_errors": s.db_errors,
                "last_db_error": s.last_db_error,
                "research_errors": s.research_errors,
                "last_research_error": s.last_research_error,
                "last_research_run_id": s.last_research_run_id,
                "follow": asdict(self._follow) if self._follow else None,
                "follow_errors": s.follow_errors,
                "last_follow_error": s.last_follow_error,
                "followed_env": dict(s.followed_env),
                "build": self._build.as_json(),
                "expected_heads": list(self._effective_expected_heads()),
                "trading_mode": self._trading_mode,
            }

    # ---- trading loop ------------------------------------------------------------------------

    def _run_loop(self) -> None:
        while not self._stop.wait(self._tick_seconds):
            try:
                self.tick()
            except Exception:  # keep the loop alive whatever happens
                log.exception("trading loop tick failed")

    def tick(self) -> None:
        """Run one trading-loop iteration now (the loop thread calls this every ``tick_seconds``)."""
        plan = self._advance()
        if self._engine is not None:
            self._write(plan)
        else:
            self._remember(plan)

    def _advance(self) -> _TickPlan:
        now = datetime.now(UTC)
        m = self._metrics
        with self._lock:
            s = self._state
            s.ticks += 1
            scenario = s.scenario
            env = s.followed_env
            disabled = scenario == "trading_disabled" or not _env_bool(env, "TRADING_ENABLED", True)
            if disabled or scenario == "loop_stopped":  # no loop run at all
                return _TickPlan(now, (), "skipped", 0, "hold", research=False)
            s.runs_total += 1
            s.last_run_at = now
            if scenario == "loop_error":
                s.last_error = LOOP_ERROR
                return _TickPlan(now, (), "failed", 0, "hold", research=False)
            s.last_error = None  # a run that gets this far did not fail (a failed write below sets it again)
            if scenario == "kill_switch" or _env_bool(env, "TRADING_KILL_SWITCH_ENABLED", False):
                return _TickPlan(now, (), "skipped", 0, "hold", research=False)
            reason = self._no_signal_reason
            executions: list[_ExecutionPlan] = []
            symbols = torghut_db.SYMBOLS
            sym = symbols[s.ticks % len(symbols)]
            if scenario == "zero_signals":
                self._streak_reasons.add(reason)
                s.no_signal_streak += 1
                s.no_signal_windows_total += 1
                m.no_signal_windows.inc()
                m.no_signal_reason.labels(reason=reason).inc()
                m.no_signal_streak.labels(service=SERVICE).set(s.no_signal_streak)
                m.no_signal_reason_streak.labels(reason=reason).set(s.no_signal_streak)
                if s.no_signal_streak == 3:
                    m.continuity_breach.inc()
                lag = (now - (s.last_signal_at or self._started_at)).total_seconds()
                m.signal_lag.labels(service=SERVICE).set(round(lag, 3))
                if reason == "no_features":
                    m.feature_staleness.set(round(lag * 1000))
                return _TickPlan(now, (), "no_signal", 0, "hold")

            # every other scenario trades
            if s.no_signal_streak:
                s.no_signal_streak = 0
                m.no_signal_streak.labels(service=SERVICE).set(0)
                for known in self._streak_reasons:
                    m.no_signal_reason_streak.labels(reason=known).set(0)
            signals = 3
            s.signals_total += signals
            s.last_signal_at = now
            m.strategy_events.labels(strategy_id=STRATEGY_ID).inc(signals)
            m.signal_lag.labels(service=SERVICE).set(0.4 + (s.ticks % 5) / 10)
            m.feature_staleness.set(850 + (s.ticks % 7) * 10)
            if scenario == "fallback_storm":
                executions = [
                    _ExecutionPlan(torghut_db.ROUTE_MARKER_PRESETS["lean_fallback"], "resolved", sym),
                    _ExecutionPlan(torghut_db.ROUTE_MARKER_PRESETS["lean_fallback"], "resolved", sym),
                    _ExecutionPlan(torghut_db.ROUTE_MARKER_PRESETS["lean_fallback"], "resolved", sym),
                    _ExecutionPlan(torghut_db.ROUTE_MARKER_PRESETS["lean"], "resolved", sym),
                ]
            elif scenario == "null_routes":
                executions = [
                    _ExecutionPlan({}, "null", sym),
                    _ExecutionPlan({}, "unknown", sym),
                ]
            else:
                lean = "lean_fallback" if s.ticks % 10 == 0 else "lean"
                executions = [
                    _ExecutionPlan(torghut_db.ROUTE_MARKER_PRESETS["alpaca"], "resolved", sym),
                    _ExecutionPlan(torghut_db.ROUTE_MARKER_PRESETS[lean], "resolved", sym),
                ]
            n = len(executions)
            s.decisions_total += n
            s.orders_submitted_total += n
            m.decisions.inc(n)
            m.orders_submitted.inc(n)
            m.reconcile_updates.inc(n)
            for ex in executions:
                raw = route_rules.service_route(dict(ex.markers))
                requested = (raw.expected or "alpaca") if ex.adapters == "resolved" else "alpaca"
                m.execution_requests.labels(adapter=requested).inc()
                s.requests[requested] = s.requests.get(requested, 0) + 1
                if ex.adapters == "resolved" and raw.is_fallback and raw.expected and raw.actual:
                    m.execution_fallback.labels(raw.expected, raw.actual).inc()
                    m.execution_fallback_reason.labels(reason=raw.fallback_reason or "unknown").inc()
                    s.fallbacks_total += 1
            action = "promote" if s.runs_total % 3 == 0 else "hold"
            if action == "promote":
                s.patches_total += 1
            return _TickPlan(now, tuple(executions), "completed", 2, action)

    def _remember(self, plan: _TickPlan) -> None:
        """Without a database: keep executions in memory, in the ``/trading/executions`` shape."""
        for ex in plan.executions:
            route = route_rules.service_route(dict(ex.markers)) if ex.adapters == "resolved" else None
            unknown = "unknown" if ex.adapters == "unknown" else None
            with self._lock:
                self._memory_executions.appendleft(
                    {
                        "id": str(uuid.uuid4()),
                        "trade_decision_id": str(uuid.uuid4()),
                        "symbol": ex.symbol,
                        "side": "buy",
                        "order_type": "market",
                        "time_in_force": "day",
                        "submitted_qty": 10.0,
                        "filled_qty": 10.0,
                        "avg_fill_price": 187.25,
                        "execution_expected_adapter": route.expected if route else unknown,
                        "execution_actual_adapter": route.actual if route else unknown,
                        "execution_fallback_reason": route.fallback_reason if route else None,
                        "execution_fallback_count": route.fallback_count if route else 0,
                        "status": "filled",
                        "created_at": _iso(plan.at),
                        "last_update_at": _iso(plan.at),
                        "alpaca_order_id": str(uuid.uuid4()),
                        "alpaca_account_label": "paper",
                    }
                )

    def _write(self, plan: _TickPlan) -> None:
        """Write the tick's rows. Trading rows and the research run use separate transactions, so a
        research write failing (e.g. no grant) does not lose the fills. Errors are logged and counted;
        the next tick tries again."""
        engine = self._engine
        assert engine is not None
        try:
            if plan.executions:
                with engine.begin() as conn:
                    for ex in plan.executions:
                        decision_id = torghut_db.insert_trade_decision(
                            conn, symbol=ex.symbol, strategy_id=STRATEGY_ID, created_at=plan.at
                        )
                        torghut_db.insert_execution(
                            conn,
                            markers=ex.markers,
                            adapters=ex.adapters,
                            created_at=plan.at,
                            symbol=ex.symbol,
                            trade_decision_id=decision_id,
                        )
            self._last_warnings.pop("trading", None)
            with self._lock:
                self._state.db_writes += len(plan.executions)
        except (SQLAlchemyError, OSError) as exc:
            message = _short_error(exc)
            self._warn_changed("trading", "trading write failed (will retry next tick): %s", message)
            with self._lock:
                self._state.db_errors += 1
                self._state.last_db_error = message
                self._state.last_error = f"execution persistence failed: {message}"
        if not plan.research:
            return
        try:
            seeded = torghut_db.seed_research_run(
                engine,
                status=plan.research_status,
                candidates=plan.research_candidates,
                folds=2,
                stress_cases=("spread_widening",),
                decision_action=plan.decision_action,
                approved_mode="paper",
                created_at=plan.at,
            )
            self._last_warnings.pop("research", None)
            with self._lock:
                self._state.last_research_run_id = seeded.run_id
        except (SQLAlchemyError, OSError) as exc:
            message = _short_error(exc)
            self._warn_changed("research", "research ledger write failed (will retry next tick): %s", message)
            with self._lock:
                self._state.research_errors += 1
                self._state.last_research_error = message

    def _warn_changed(self, key: str, fmt: str, message: str) -> None:
        """Log at WARNING when a failure's message changes, at DEBUG while it repeats."""
        level = logging.DEBUG if self._last_warnings.get(key) == message else logging.WARNING
        self._last_warnings[key] = message
        log.log(level, fmt, message)

    # ---- following the deployed image ------------------------------------------------------

    def _run_follower(self) -> None:
        target = self._follow
        assert target is not None
        client: Any = None
        while not self._stop.is_set():
            try:
                if client is None:
                    client = _kube_client(self._kubeconfig)
                self._observe_workload(client, target)
                with self._lock:
                    self._state.last_follow_error = None
            except Exception as exc:  # noqa: BLE001 - API, network or config: keep polling
                message = _short_error(exc)
                log.debug("reading %s %s/%s failed: %s", target.kind, target.namespace, target.name, message)
                with self._lock:
                    self._state.follow_errors += 1
                    self._state.last_follow_error = message
            self._stop.wait(self._follow_poll)
        if client is not None:
            client.close()

    def _observe_workload(self, client: Any, target: FollowTarget) -> None:
        from kubernetes import client as k8s  # noqa: PLC0415 - heavy, only a follower needs it

        timeout = (self._api_timeout, self._api_timeout)
        if target.kind == "Deployment":
            obj = k8s.AppsV1Api(client).read_namespaced_deployment(
                target.name, target.namespace, _request_timeout=timeout
            )
            body: Any = client.sanitize_for_serialization(obj)
        else:
            body = k8s.CustomObjectsApi(client).get_namespaced_custom_object(
                "serving.knative.dev", "v1", target.namespace, "services", target.name, _request_timeout=timeout
            )
        self.observe_workload_object(body)

    def observe_workload_object(self, body: Mapping[str, Any]) -> None:
        """Take the build, trading env and scenario annotation from a Deployment / Knative Service
        object (as the API returns it) of the followed target; the follower calls this every poll."""
        target = self._follow
        if target is None:
            raise RuntimeError("no follow target configured")
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        template = spec.get("template") or {}
        pod_spec = template.get("spec") or {}
        containers = pod_spec.get("containers") or []
        container = next((c for c in containers if c.get("name") == target.container), None)
        if container is None:
            raise LookupError(f"container {target.container!r} not found in {target.kind} {target.name}")
        if target.kind == "Deployment" and self._follow_wait_rollout:
            replicas = int(spec.get("replicas", 1))
            done = (
                int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
                and int(status.get("updatedReplicas") or 0) >= replicas
            )
            if not done:
                return
        env = {
            e["name"]: str(e["value"])
            for e in container.get("env") or []
            if e.get("name") in _TRADING_ENV and e.get("value") is not None
        }
        revision = env.get("K_REVISION")
        if revision is None and target.kind == "Service":
            revision = status.get("latestReadyRevisionName") or status.get("latestCreatedRevisionName")
        if revision is None:
            annotations = meta.get("annotations") or {}
            rev = annotations.get("deployment.kubernetes.io/revision")
            revision = f"{target.name}-{int(rev):05d}" if rev and str(rev).isdigit() else None
        annotation = ((template.get("metadata") or {}).get("annotations") or {}).get(SIM_ANNOTATION) or (
            meta.get("annotations") or {}
        ).get(SIM_ANNOTATION)
        with self._lock:
            image = str(container.get("image") or "")
            commit = self._commit_override or env.get("TORGHUT_COMMIT")
            new_build = build_from_image(image, active_revision=revision, commit=commit)
            if new_build != self._build:
                log.info("following %s/%s: build %s", target.namespace, target.name, new_build.as_json())
                self._build = new_build
            self._state.followed_env = env
            if env.get("TRADING_MODE"):
                self._trading_mode = env["TRADING_MODE"]
            if annotation != self._state.followed_annotation:
                self._state.followed_annotation = annotation
                if annotation in SCENARIOS:
                    self._state.scenario = cast(Scenario, annotation)

    # ---- HTTP views --------------------------------------------------------------------------

    def _effective_expected_heads(self) -> tuple[str, ...]:
        heads = self._expected_heads
        if self._state.scenario == "schema_not_current" and torghut_db.NEXT_HEAD not in heads:
            heads = (*heads, torghut_db.NEXT_HEAD)
        return heads

    def is_slow(self) -> bool:
        with self._lock:
            return self._state.scenario == "slow"

    def slow_wait(self) -> None:
        """Delay a response in the ``slow`` scenario (cut short by :meth:`stop`)."""
        self._stop.wait(self._slow_delay)

    def view_healthz(self) -> tuple[int, Any]:
        return 200, {"status": "ok", "service": SERVICE}

    def _db_ping(self) -> dict[str, Any]:
        if self._engine is None:
            return {"ok": True, "detail": "ok"}
        try:
            with self._engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except (SQLAlchemyError, OSError) as exc:
            return {"ok": False, "detail": f"postgres error: {_short_error(exc)}"}
        return {"ok": True, "detail": "ok"}

    def view_readyz(self) -> tuple[int, Any]:
        postgres = self._db_ping()
        with self._lock:
            streak = self._state.no_signal_streak
        scheduler = {"ok": True, "detail": "ok" if streak == 0 else f"no signals for {streak} windows"}
        dependencies = {
            "postgres": postgres,
            "clickhouse": {"ok": True, "detail": "ok"},
            "alpaca": {"ok": True, "detail": "ok"},
        }
        # Torghut reports "degraded" while signals are missing even with every dependency ok.
        status = "ok" if postgres["ok"] and streak == 0 else "degraded"
        code = 200 if postgres["ok"] else 503
        return code, {"status": status, "scheduler": scheduler, "dependencies": dependencies}

    def view_runtime_readyz(self) -> tuple[int, Any]:
        with self._lock:
            expected = list(self._effective_expected_heads())
            current_mem = list(self._current_heads)
        database: dict[str, Any]
        if self._engine is not None:
            try:
                with self._engine.connect() as conn:
                    rows = conn.execute(text("SELECT version_num FROM alembic_version ORDER BY version_num"))
                    current = [str(r[0]) for r in rows]
            except (SQLAlchemyError, OSError) as exc:
                database = {
                    "ok": False,
                    "detail": "database unavailable",
                    "error": _short_error(exc),
                    "schema_current": False,
                    "current_heads": [],
                    "schema_current_heads": [],
                    "expected_heads": expected,
                    "schema_missing_heads": expected,
                    "schema_unexpected_heads": [],
                }
                return 503, {"status": "not_ready", "dependencies": {"database": database}}
        else:
            current = sorted(current_mem)
        missing = [h for h in expected if h not in current]
        unexpected = [h for h in current if h not in expected]
        schema_current = not missing and not unexpected
        database = {
            "ok": schema_current,
            "detail": "ok" if schema_current else "database contract failed",
            "schema_current": schema_current,
            "current_heads": current,
            "schema_current_heads": current,
            "expected_heads": expected,
            "schema_missing_heads": missing,
            "schema_unexpected_heads": unexpected,
            "schema_head_count_expected": len(expected),
            "schema_head_count_current": len(current),
            "schema_head_delta_count": len(missing) + len(unexpected),
        }
        body = {"status": "ok" if schema_current else "not_ready", "dependencies": {"database": database}}
        return (200 if schema_current else 503), body

    def view_trading_status(self) -> tuple[int, Any]:
        with self._lock:
            s = self._state
            env = s.followed_env
            return 200, {
                "enabled": _env_bool(env, "TRADING_ENABLED", True) and s.scenario != "trading_disabled",
                "mode": self._trading_mode,
                "kill_switch_enabled": _env_bool(env, "TRADING_KILL_SWITCH_ENABLED", False)
                or s.scenario == "kill_switch",
                "running": not self._stop.is_set() and s.scenario != "loop_stopped",
                "last_run_at": _iso(s.last_run_at),
                "last_error": s.last_error,
                "execution": {
                    "adapter": env.get("TRADING_EXECUTION_ADAPTER", "alpaca"),
                    "fallback_adapter": env.get("TRADING_EXECUTION_FALLBACK_ADAPTER", "alpaca"),
                    "policy": env.get("TRADING_EXECUTION_ADAPTER_POLICY", "all"),
                },
                "autonomy": {
                    "enabled": _env_bool(env, "TRADING_AUTONOMY_ENABLED", True),
                    "runs_total": s.runs_total,
                    "signals_total": s.signals_total,
                    "patches_total": s.patches_total,
                    "last_run_at": _iso(s.last_run_at),
                    "last_signal_at": _iso(s.last_signal_at),
                    "no_signal_streak": s.no_signal_streak,
                    "last_no_signal_reason": self._no_signal_reason if s.no_signal_streak else None,
                    "last_research_run_id": s.last_research_run_id,
                },
            }

    def view_trading_metrics(self) -> tuple[int, Any]:
        with self._lock:
            s = self._state
            requests = sum(s.requests.values())
            metrics = {
                "decisions_total": s.decisions_total,
                "orders_submitted_total": s.orders_submitted_total,
                "orders_rejected_total": 0,
                "execution_requests_total": dict(s.requests),
                "execution_fallback_total": s.fallbacks_total,
                "execution_fallback_ratio": round(s.fallbacks_total / requests, 4) if requests else 0.0,
                "no_signal_windows_total": s.no_signal_windows_total,
                "no_signal_streak": s.no_signal_streak,
                "autonomy_runs_total": s.runs_total,
                "autonomy_signals_total": s.signals_total,
                "autonomy_patches_total": s.patches_total,
            }
            return 200, {"metrics": metrics, "build": self._build.as_json()}

    def view_trading_executions(self, query: Mapping[str, list[str]]) -> tuple[int, Any]:
        symbol = (query.get("symbol") or [""])[-1] or None
        since_raw = (query.get("since") or [""])[-1] or None
        limit_raw = (query.get("limit") or ["200"])[-1]
        try:
            limit = int(limit_raw)
        except ValueError:
            return 422, _validation_error("limit", "Input should be a valid integer")
        if not 1 <= limit <= 500:
            return 422, _validation_error("limit", "Input should be between 1 and 500")
        since: datetime | None = None
        if since_raw:
            try:
                since = datetime.fromisoformat(since_raw.replace("Z", "+00:00").replace(" ", "+"))
            except ValueError:
                return 422, _validation_error("since", "Input should be a valid datetime")
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
        if self._engine is None:
            with self._lock:
                rows = [
                    r
                    for r in self._memory_executions
                    if (symbol is None or r["symbol"] == symbol)
                    and (since is None or datetime.fromisoformat(r["created_at"]) >= since)
                ]
            return 200, rows[:limit]
        sql = (
            "SELECT id, trade_decision_id, symbol, side, order_type, time_in_force, submitted_qty,"
            " filled_qty, avg_fill_price, execution_expected_adapter, execution_actual_adapter,"
            " execution_fallback_reason, execution_fallback_count, status, created_at, last_update_at,"
            " alpaca_order_id, alpaca_account_label FROM executions"
        )
        where: list[str] = []
        params: dict[str, Any] = {"limit": limit}
        if symbol:
            where.append("symbol = :symbol")
            params["symbol"] = symbol
        if since:
            where.append("created_at >= :since")
            params["since"] = since
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT :limit"
        try:
            with self._engine.connect() as conn:
                result = conn.execute(text(sql), params)
                out = [{k: _jsonable(v) for k, v in row._mapping.items()} for row in result]
        except (SQLAlchemyError, OSError) as exc:
            log.warning("/trading/executions failed: %s", _short_error(exc))
            return 500, {"detail": "database error"}
        return 200, out

    def view_metrics(self) -> bytes:
        return generate_latest(self._metrics.registry)


# --------------------------------------------------------------------------------------------------
# HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: TorghutSimulator) -> None:
        self.sim = sim
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "torghut-simulator/1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        sim = self.server.sim
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        if path == "/_sim/state":
            self._json(200, sim.snapshot())
            return
        views: dict[str, Callable[[], tuple[int, Any]]] = {
            "/healthz": sim.view_healthz,
            "/readyz": sim.view_readyz,
            "/runtime-readyz": sim.view_runtime_readyz,
            "/trading/status": sim.view_trading_status,
            "/trading/metrics": sim.view_trading_metrics,
            "/trading/executions": lambda: sim.view_trading_executions(parse_qs(parts.query)),
        }
        if path not in views and path != "/metrics":
            self._json(404, {"detail": "Not Found"})
            return
        if sim.is_slow():
            sim.slow_wait()
        if path == "/metrics":
            self._send(200, sim.view_metrics(), CONTENT_TYPE_LATEST)
            return
        code, body = views[path]()
        self._json(code, body)

    def do_POST(self) -> None:
        sim = self.server.sim
        path = urlsplit(self.path).path.rstrip("/")
        try:
            length = int(self.headers.get("Content-Length") or 0)
            payload = json.loads(self.rfile.read(length) or b"{}") if length else {}
            if not isinstance(payload, dict):
                raise ValueError("expected a JSON object")
        except ValueError as exc:
            self._json(400, {"detail": f"invalid JSON body: {exc}"})
            return
        try:
            if path == "/_sim/scenario":
                sim.set_scenario(str(payload.get("scenario")))
            elif path == "/_sim/config":
                _apply_config(sim, payload)
            elif path == "/_sim/tick":
                for _ in range(int(payload.get("count", 1))):
                    sim.tick()
            else:
                self._json(404, {"detail": "Not Found"})
                return
        except (ValueError, TypeError) as exc:
            self._json(400, {"detail": str(exc)})
            return
        self._json(200, sim.snapshot())

    def _json(self, code: int, body: Any) -> None:
        self._send(code, json.dumps(body, default=_jsonable).encode(), "application/json")

    def _send(self, code: int, data: bytes, content_type: str) -> None:
        try:
            self.send_response(code, HTTPStatus(code).phrase)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("client went away before the response")


def _apply_config(sim: TorghutSimulator, payload: Mapping[str, Any]) -> None:
    if "scenario" in payload:
        sim.set_scenario(str(payload["scenario"]))
    if "image" in payload:
        sim.set_image(
            str(payload["image"]),
            active_revision=payload.get("active_revision"),
            commit=payload.get("commit"),
        )
    else:
        fields = {k: payload[k] for k in ("version", "commit", "image_digest", "active_revision") if k in payload}
        if fields:
            sim.set_build(**fields)
    if "expected_heads" in payload:
        sim.set_expected_heads([str(h) for h in payload["expected_heads"]])
    if "current_heads" in payload:
        sim.set_current_heads([str(h) for h in payload["current_heads"]])
    if "trading_mode" in payload:
        sim.set_trading_mode(str(payload["trading_mode"]))
    if "no_signal_reason" in payload:
        sim.set_no_signal_reason(str(payload["no_signal_reason"]))


# --------------------------------------------------------------------------------------------------
# helpers


def _kube_client(kubeconfig: str | None) -> Any:
    from kubernetes import client as k8s_client  # noqa: PLC0415 - heavy, only a follower needs it
    from kubernetes import config as k8s_config  # noqa: PLC0415 - heavy, only a follower needs it

    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):  # a pod: its ServiceAccount
        configuration = k8s_client.Configuration()
        load_incluster: Any = k8s_config.load_incluster_config
        load_incluster(client_configuration=configuration)
        return k8s_client.ApiClient(configuration)
    loader: Any = k8s_config.new_client_from_config
    return loader(config_file=kubeconfig)


def _iso(ts: datetime | None) -> str | None:
    return ts.astimezone(UTC).isoformat() if ts is not None else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _env_bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key)
    if raw is None:
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _validation_error(name: str, message: str) -> dict[str, Any]:
    return {"detail": [{"type": "value_error", "loc": ["query", name], "msg": message}]}


def _short_error(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:300]


# --------------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m torghut_localstack.simulator", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8181, help="port to bind; 0 picks a free one (default 8181)")
    p.add_argument(
        "--dsn",
        default=os.environ.get("DB_DSN") or None,
        help="Postgres URL of the Torghut database (optional; default $DB_DSN, as the service reads it)",
    )
    p.add_argument("--scenario", choices=SCENARIOS, default="healthy")
    p.add_argument("--tick-seconds", type=float, default=1.0, help="trading loop period (default 1)")
    p.add_argument("--image", default=DEFAULT_IMAGE, help="image reported as the build unless following")
    p.add_argument("--active-revision", default="torghut-00001")
    p.add_argument("--commit", default=None, help="commit reported in the build")
    p.add_argument(
        "--expected-heads",
        default=",".join(torghut_db.DEFAULT_HEADS),
        help="comma-separated Alembic heads the image expects",
    )
    p.add_argument("--slow-delay-seconds", type=float, default=15.0, help="delay in the slow scenario")
    p.add_argument("--no-signal-reason", default="market_closed", help="reason in the zero_signals scenario")
    p.add_argument("--trading-mode", default="paper")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig for --follow-*")
    follow = p.add_mutually_exclusive_group()
    follow.add_argument("--follow-deployment", metavar="NAMESPACE/NAME/CONTAINER", default=None)
    follow.add_argument("--follow-knative-service", metavar="NAMESPACE/NAME/CONTAINER", default=None)
    p.add_argument("--follow-poll-seconds", type=float, default=1.0)
    p.add_argument(
        "--follow-wait-rollout",
        action="store_true",
        help="switch the build only once the Deployment rollout is observed complete",
    )
    p.add_argument("--ready-file", type=Path, default=None, help="write the URL here once listening")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    follow: FollowTarget | None = None
    if args.follow_deployment:
        follow = FollowTarget.parse(args.follow_deployment, "Deployment")
    elif args.follow_knative_service:
        follow = FollowTarget.parse(args.follow_knative_service, "Service")
    sim = TorghutSimulator(
        host=args.host,
        port=args.port,
        dsn=args.dsn,
        scenario=args.scenario,
        tick_seconds=args.tick_seconds,
        image=args.image,
        active_revision=args.active_revision,
        commit=args.commit,
        expected_heads=[h for h in args.expected_heads.split(",") if h],
        slow_delay_seconds=args.slow_delay_seconds,
        no_signal_reason=args.no_signal_reason,
        trading_mode=args.trading_mode,
        follow=follow,
        kubeconfig=args.kubeconfig,
        follow_poll_seconds=args.follow_poll_seconds,
        follow_wait_rollout=args.follow_wait_rollout,
    )
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    sim.start()
    print(f"torghut simulator listening on {sim.url}", flush=True)
    if args.ready_file is not None:
        tmp = args.ready_file.with_suffix(args.ready_file.suffix + ".tmp")
        tmp.write_text(sim.url + "\n")
        tmp.replace(args.ready_file)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
