"""The live implementation of the reconciler's ``Gates`` seam: resolves Secrets, builds gateways, measures,
migrates and checks postconditions against the real database, Prometheus and HTTP endpoints."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from torghut_operator.adapters.http import HttpGateway
from torghut_operator.adapters.measure import Explain, Provider, take_measurement
from torghut_operator.adapters.prometheus import PrometheusGateway
from torghut_operator.adapters.torghut import trading_status
from torghut_operator.core.api.durations import parse_duration
from torghut_operator.core.api.spec import BackfillSpec, Check, TorghutRolloutSpec
from torghut_operator.core.api.status import BackfillStatus, Measurement, TorghutRolloutStatus, Verdict
from torghut_operator.core.deadline import Deadline
from torghut_operator.core.observations import ExpectationOutcome, PromotionEvidence, SqlOutcome
from torghut_operator.core.planner import CheckPromotionEvidence, Event
from torghut_operator.core.reading import ProviderError
from torghut_operator.core.records import (
    DecisionRecord,
    MeasurementRecord,
    RolloutRef,
    status_measurements,
    transitions,
)
from torghut_operator.core.route_stats import ROUTE_STATS_SQL, RouteStats
from torghut_operator.core.timefmt import format_time, utcnow
from torghut_operator.evidence.facts import TorghutFacts, facts_since, lane_runs_seen
from torghut_operator.evidence.report import render_report

if TYPE_CHECKING:  # the Postgres adapters load SQLAlchemy, psycopg and pglast: imported where first needed
    from torghut_operator.adapters.postgres.gate_queries import PostgresGateway
    from torghut_operator.adapters.postgres.ledger import Ledger
    from torghut_operator.adapters.postgres.migrator import BackfillProgress, BackfillSettings, SqlMigrationResult

EXPLAIN_LIMIT = 8
"""Series of an explainQuery quoted in a verdict message."""
BACKFILL_SLICE = 10.0
"""Seconds of backfill batches one apply_sql call may run; then it returns the progress (status, metrics, the
plugin's bar see it) and the planner calls again a second later, where it stopped."""
STATUS_TIMEOUT = 10.0
"""Ceiling of the /trading/status read that explains a signal verdict (the measurement's deadline is lower)."""

PROMOTION_EVIDENCE_SQL = """
WITH approved AS (
  SELECT candidate_id, created_at >= CAST(:since AS timestamptz) AS fresh
  FROM research_promotions
  WHERE approved_mode = :mode AND COALESCE(btrim(deny_reason), '') = ''
)
SELECT
  COUNT(*) FILTER (WHERE fresh AND (CAST(:candidate AS text) IS NULL OR candidate_id = CAST(:candidate AS text)))
    AS matching,
  COUNT(*) FILTER (WHERE NOT fresh) AS older,
  COUNT(*) FILTER (WHERE fresh AND CAST(:candidate AS text) IS NOT NULL
                   AND candidate_id IS DISTINCT FROM CAST(:candidate AS text)) AS other_candidate,
  (SELECT COUNT(*) FROM research_promotions
   WHERE approved_mode = :mode AND COALESCE(btrim(deny_reason), '') <> '') AS denied
FROM approved
""".strip()
"""Evidence for a promotion step: approved rows for the mode since the attempt started (or the spec's window), for
the named candidate; the other counts only explain a refusal."""


K = TypeVar("K")
V = TypeVar("V")


class _Cache(Generic[K, V]):
    """A small LRU of gateways, so engines and HTTP clients are reused across turns."""

    def __init__(self, size: int, close: Callable[[V], None]) -> None:
        self._items: OrderedDict[K, V] = OrderedDict()
        self._size = size
        self._close = close
        self._lock = threading.Lock()

    def get(self, key: K, build: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = self._items[key] = build()
            while len(self._items) > self._size:
                _, old = self._items.popitem(last=False)
                self._close(old)
            return value


def _close(gateway: Any) -> None:
    gateway.close()


class ConfigReads(Protocol):
    """What the gates read from the cluster, from their worker threads (``adapters.kube.BlockingReads``)."""

    def read_secret_value(self, namespace: str, name: str, key: str) -> str: ...

    def read_config_map(self, namespace: str, name: str) -> dict[str, str]: ...


class LiveGates:
    """``denied_functions``: function patterns gate SQL may not call, on top of the built-in denylist."""

    def __init__(self, kube: ConfigReads, *, denied_functions: tuple[str, ...] = ()) -> None:
        self._kube = kube
        self._denied_functions = denied_functions
        self._postgres: _Cache[tuple[str, float, float], PostgresGateway] = _Cache(32, _close)
        self._prometheus: _Cache[tuple[str, str | None, float], PrometheusGateway] = _Cache(32, PrometheusGateway.close)
        self._http: _Cache[float, HttpGateway] = _Cache(8, HttpGateway.close)
        self._ledgers: _Cache[str, Ledger] = _Cache(32, _close)

    # --- connections ---

    def _dsn(self, spec: TorghutRolloutSpec, namespace: str) -> str:
        """The gate DSN (spec.database.secretRef): every gate read, migrate.expect, promotion evidence."""
        if spec.database is None:
            raise ProviderError("spec.database is not set")
        ref = spec.database.secret_ref
        return self._kube.read_secret_value(namespace, ref.name, ref.key)

    def _ledger_dsn(self, spec: TorghutRolloutSpec, namespace: str) -> str:
        """The ledger writes, so it needs a role that may: spec.database.ledgerSecretRef, else the migration
        DSN (spec.migrate.sql.secretRef), else the gate DSN."""
        if spec.database is None:
            raise ProviderError("spec.database is not set")
        ref = spec.database.ledger_secret_ref
        if ref is None and spec.migrate is not None and spec.migrate.sql is not None:
            ref = spec.migrate.sql.secret_ref
        ref = ref or spec.database.secret_ref
        return self._kube.read_secret_value(namespace, ref.name, ref.key)

    def _postgres_gateway(self, spec: TorghutRolloutSpec, namespace: str) -> PostgresGateway:
        from torghut_operator.adapters.postgres.gate_queries import PostgresGateway  # noqa: PLC0415 (heavy)

        assert spec.database is not None
        dsn = self._dsn(spec, namespace)
        statement = parse_duration(spec.database.statement_timeout)
        connect = parse_duration(spec.database.connect_timeout)
        return self._postgres.get(
            (dsn, statement, connect),
            lambda: PostgresGateway(
                dsn, statement_timeout=statement, connect_timeout=connect, denied_functions=self._denied_functions
            ),
        )

    def _provider(self, check: Check, spec: TorghutRolloutSpec, namespace: str) -> Provider:
        timeout = parse_duration(check.timeout)
        if check.postgres is not None:
            return self._postgres_gateway(spec, namespace)
        if check.prometheus is not None:
            return self._prometheus_gateway(spec, namespace, timeout)
        return self._http.get(timeout, lambda: HttpGateway(timeout=timeout))

    def _prometheus_gateway(self, spec: TorghutRolloutSpec, namespace: str, timeout: float) -> PrometheusGateway:
        if spec.prometheus is None:
            raise ProviderError("spec.prometheus is not set")
        token = None
        if spec.prometheus.bearer_token_secret_ref is not None:
            ref = spec.prometheus.bearer_token_secret_ref
            token = self._kube.read_secret_value(namespace, ref.name, ref.key)
        url = spec.prometheus.url
        return self._prometheus.get(
            (url, token, timeout), lambda: PrometheusGateway(url, bearer_token=token, timeout=timeout)
        )

    # --- the Gates seam ---

    def measure(self, check: Check, spec: TorghutRolloutSpec, namespace: str, previous: Any | None) -> Measurement:
        """One measurement within one deadline (check.timeout): Secrets, connect, query, explain, judge."""
        now = utcnow()
        try:
            deadline = Deadline.after(parse_duration(check.timeout), check.timeout)
            provider = self._provider(check, spec, namespace)
        except Exception as exc:  # noqa: BLE001 (fail closed: no provider is an Error measurement)
            return Measurement(phase=Verdict.ERROR, at=format_time(now), message=f"{check.name}: {exc}")
        explain: Explain | None = None
        query = check.prometheus.explain_query if check.prometheus is not None else None
        if query and isinstance(provider, PrometheusGateway):
            gateway = provider
            service_url = spec.service_url

            def explain(deadline: Deadline) -> str:
                parts = [self._explain(gateway, query, deadline)]
                if service_url:  # the service's own view of its signal path names the block
                    parts.append(self._status_blocks(service_url, deadline))
                return "; ".join(parts)

        return take_measurement(check, provider, previous=previous, now=now, explain=explain, deadline=deadline)

    def _status_blocks(self, service_url: str, deadline: Deadline) -> str:
        url = service_url.rstrip("/") + trading_status.STATUS_PATH
        probe = Check.model_validate({"name": "trading-status", "http": {"url": url}, "successCondition": "true"})
        try:
            # the measurement's deadline bounds the GET; the gateway's own timeout is only a ceiling
            reading = self._http.get(STATUS_TIMEOUT, lambda: HttpGateway(timeout=STATUS_TIMEOUT)).read(probe, deadline)
        except ProviderError as exc:
            return f"{trading_status.STATUS_PATH}: {exc}"
        return reading.explain or f"{trading_status.STATUS_PATH}: nothing blocks the loop"

    @staticmethod
    def _explain(provider: PrometheusGateway, query: str, deadline: Deadline) -> str:
        try:
            series = provider.series(query, limit=EXPLAIN_LIMIT, deadline=deadline)
        except ProviderError as exc:
            return f"explain: {exc}"
        if not series:
            return "explain: no series"
        return "explain: " + ", ".join(f"{labels} {value}" for labels, value in series)

    def apply_sql(
        self, spec: TorghutRolloutSpec, namespace: str, rollout: str, *, catch_up: bool = False, run: str | None = None
    ) -> SqlOutcome:
        """Apply spec.migrate.sql's files for at most one slice of backfill batches (BACKFILL_SLICE); a backfill that
        is not done comes back in progress and resumes on the next call. ``run`` (catch-up only) names the run and
        attempt of the rollout, so each repeatable file runs once per catch-up however many slices it takes."""
        assert spec.migrate is not None
        assert spec.migrate.sql is not None
        assert spec.database is not None
        sql = spec.migrate.sql
        from torghut_operator.adapters.postgres.migrator import SqlMigrator  # noqa: PLC0415 (heavy)

        files = self._kube.read_config_map(namespace, sql.config_map_ref.name)
        ref = sql.secret_ref or spec.database.secret_ref
        migrator = SqlMigrator(
            self._kube.read_secret_value(namespace, ref.name, ref.key),
            connect_timeout=parse_duration(spec.database.connect_timeout),
            lock_timeout=parse_duration(sql.lock_timeout),
            statement_timeout=None,
            lock_retries=sql.lock_retries,
            backfill=backfill_settings(sql.backfill),
        )
        result = migrator.apply(
            files,
            rollout=f"{namespace}/{rollout}",
            catch_up=catch_up,
            run=f"catch-up {namespace}/{rollout} {run}" if catch_up and run is not None else None,
            budget=BACKFILL_SLICE,
        )
        return sql_outcome(result, at=utcnow())

    def check_expectations(self, spec: TorghutRolloutSpec, namespace: str) -> tuple[ExpectationOutcome, ...]:
        assert spec.migrate is not None
        from torghut_operator.adapters.postgres.expectations import run_expectations  # noqa: PLC0415 (heavy)

        assert spec.migrate.expect is not None
        assert spec.database is not None
        dsn = self._dsn(spec, namespace)

        def run_check(check: Check) -> ExpectationOutcome:
            m = self.measure(check, spec, namespace, None)
            return ExpectationOutcome(check.name, m.phase is Verdict.SUCCESSFUL, m.message, m.phase is Verdict.ERROR)

        results = run_expectations(
            dsn,
            spec.migrate.expect,
            connect_timeout=parse_duration(spec.database.connect_timeout),
            statement_timeout=parse_duration(spec.database.statement_timeout),
            run_check=run_check,
        )
        return tuple(results)

    def promotion_evidence(
        self, spec: TorghutRolloutSpec, namespace: str, request: CheckPromotionEvidence
    ) -> PromotionEvidence:
        params = {"mode": request.mode, "since": request.since, "candidate": request.candidate_id}
        try:
            rows = self._postgres_gateway(spec, namespace).query_rows(PROMOTION_EVIDENCE_SQL, params)
        except ProviderError as exc:
            return PromotionEvidence(False, f"could not read research_promotions: {exc}")
        return promotion_evidence_verdict(request, rows[0] if rows else None)

    def route_stats(self, spec: TorghutRolloutSpec, namespace: str) -> RouteStats:
        """The target database's route statistics of the last 15 minutes, through the read-only gate gateway
        (ProviderError when it can't be read; ValueError for a malformed answer)."""
        rows = self._postgres_gateway(spec, namespace).query_rows(ROUTE_STATS_SQL, max_rows=1)
        if len(rows) != 1:
            raise ProviderError(f"route statistics: expected one row, got {len(rows)}")
        return RouteStats.from_row(rows[0])

    # --- evidence ---

    def _ledger(self, spec: TorghutRolloutSpec, namespace: str) -> Ledger:
        from torghut_operator.adapters.postgres.ledger import Ledger  # noqa: PLC0415 (heavy)

        assert spec.database is not None
        dsn = self._ledger_dsn(spec, namespace)
        return self._ledgers.get(
            dsn,
            lambda: Ledger(
                dsn,
                connect_timeout=parse_duration(spec.database.connect_timeout) if spec.database else 5.0,
                statement_timeout=parse_duration(spec.database.statement_timeout) if spec.database else 10.0,
            ),
        )

    def record_evidence(
        self,
        spec: TorghutRolloutSpec,
        namespace: str,
        rollout: RolloutRef,
        before: TorghutRolloutStatus,
        after: TorghutRolloutStatus,
        events: tuple[Event, ...],
    ) -> None:
        ledger = self._ledger(spec, namespace)
        ledger.ensure_schema()
        ledger.record(rollout, measurements=status_measurements(after), decisions=transitions(before, after, events))

    def report(
        self, spec: TorghutRolloutSpec, namespace: str, rollout: RolloutRef, status: TorghutRolloutStatus
    ) -> str:
        return self.report_with_lane_runs(spec, namespace, rollout, status)[0]

    def report_with_lane_runs(
        self, spec: TorghutRolloutSpec, namespace: str, rollout: RolloutRef, status: TorghutRolloutStatus
    ) -> tuple[str, int | None]:
        """The report, and how many lane runs since the deploy it shows (None: they could not be read)."""
        measurements: list[MeasurementRecord] = []
        decisions: list[DecisionRecord] = []
        facts: TorghutFacts | None = None
        if spec.database is not None:
            from torghut_operator.adapters.postgres.torghut_facts import collect_torghut_facts  # noqa: PLC0415

            ledger = self._ledger(spec, namespace)
            measurements, decisions = ledger.measurements(rollout.uid), ledger.decisions(rollout.uid)
            since = facts_since(status) or utcnow()
            facts = collect_torghut_facts(
                self._dsn(spec, namespace),
                since=since,
                connect_timeout=parse_duration(spec.database.connect_timeout),
                statement_timeout=parse_duration(spec.database.statement_timeout),
            )
        text = render_report(
            name=rollout.name,
            namespace=namespace,
            spec=spec,
            status=status,
            measurements=measurements,
            decisions=decisions,
            facts=facts,
        )
        return text, lane_runs_seen(facts)


def backfill_settings(spec: BackfillSpec | None) -> BackfillSettings:
    """The migrator's batching and throttling from spec.migrate.sql.backfill (its defaults when absent)."""
    from torghut_operator.adapters.postgres.migrator import BackfillSettings  # noqa: PLC0415 (heavy)

    spec = spec or BackfillSpec()
    return BackfillSettings(
        batch_duration=parse_duration(spec.batch_duration),
        pause=parse_duration(spec.pause),
        max_transaction_age=parse_duration(spec.max_transaction_age),
        max_replica_lag=parse_duration(spec.max_replica_lag),
    )


def backfill_status(progress: BackfillProgress, *, at: datetime) -> BackfillStatus:
    """The migrator's progress as status.migration.backfill, recorded at ``at``."""
    eta = progress.eta_seconds
    return BackfillStatus(
        file=progress.file,
        table=progress.table,
        rows_done=progress.rows_done,
        rows_total=max(progress.rows_total, progress.rows_done),
        batches=progress.batches,
        batch_size=progress.batch_size,
        rows_per_second=round(progress.rows_per_second, 1) if math.isfinite(progress.rows_per_second) else 0.0,
        eta_seconds=math.ceil(eta) if eta is not None and math.isfinite(eta) and eta >= 0 else None,
        throttled=progress.throttled or None,
        finished=progress.finished,
        updated_at=format_time(at),
    )


def sql_outcome(result: SqlMigrationResult, *, at: datetime) -> SqlOutcome:
    error = result.error
    return SqlOutcome(
        applied=tuple(result.status_files()),
        applied_now=tuple(r.name for r in result.applied),
        skipped=tuple(r.name for r in result.skipped),
        error=None if error is None else error.message,
        retryable=error is not None and error.retryable,
        backfill=None if result.backfill is None else backfill_status(result.backfill, at=at),
        in_progress=result.in_progress,
    )


def promotion_evidence_verdict(request: CheckPromotionEvidence, row: dict[str, Any] | None) -> PromotionEvidence:
    """Found only with at least one matching row; the message names what was looked for and what was seen."""
    wanted = f"approved research_promotions row for mode {request.mode} created since {request.since}"
    if request.candidate_id is not None:
        wanted += f" for candidate {request.candidate_id}"
    if row is None:
        return PromotionEvidence(False, f"no {wanted}: the query returned no row")
    try:
        counts = {key: int(row[key]) for key in ("matching", "older", "other_candidate", "denied")}
    except (KeyError, TypeError, ValueError):
        return PromotionEvidence(False, f"no {wanted}: unexpected answer from the database")
    if counts["matching"] > 0:
        return PromotionEvidence(True, f"{counts['matching']} {wanted}")
    seen = [
        f"{counts['older']} older than that",
        f"{counts['other_candidate']} for another candidate",
        f"{counts['denied']} denied",
    ]
    return PromotionEvidence(False, f"no {wanted} (seen: {', '.join(seen)})")
