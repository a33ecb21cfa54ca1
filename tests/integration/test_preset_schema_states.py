"""Every check of the `torghut-completion` preset, measured with the real providers against a real PostgreSQL 15
database in both of Torghut's schema states, the real Prometheus scraping the simulator, and the simulator's HTTP.

State `checklist` (before migration 0007) lacks research_promotions.decision_action (migration 0011): the check that
reads it is an Error naming the column and the migration, never a crash and never a pass. State `head` lacks the
grants on the research tables of migration 0026. Everything else behaves the same on both."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from torghut_localstack import torghut_db
from torghut_localstack.ports import HOST
from torghut_localstack.postgres import PostgresServer
from torghut_localstack.prometheus import PrometheusServer
from torghut_localstack.simulator import DEFAULT_IMAGE, TorghutSimulator
from torghut_localstack.wait import NotYet, wait_for
from torghut_operator.adapters.http import HttpGateway
from torghut_operator.adapters.measure import Provider, take_measurement
from torghut_operator.adapters.postgres.gate_queries import PostgresGateway
from torghut_operator.adapters.prometheus import PrometheusGateway
from torghut_operator.core.api.spec import Check, TorghutRolloutSpec
from torghut_operator.core.api.status import Measurement, Verdict
from torghut_operator.core.presets import RESEARCH_GRANTS_SQL, torghut_completion

pytestmark = pytest.mark.integration

M0011 = "0011_autonomy_lifecycle_and_promotion_audit"


@dataclass
class Stack:
    state: torghut_db.SchemaState
    postgres: PostgresGateway
    prometheus: PrometheusGateway
    http: HttpGateway
    simulator: TorghutSimulator
    spec: TorghutRolloutSpec
    admin_dsn: str

    def provider(self, check: Check) -> Provider:
        if check.postgres is not None:
            return self.postgres
        if check.prometheus is not None:
            return self.prometheus
        return self.http

    def measure(self, check: Check) -> Measurement:
        return take_measurement(check, self.provider(check), previous=None, now=dt.datetime.now(dt.UTC))

    def settle(self, check: Check, verdict: Verdict, timeout: float = 60) -> Measurement:
        """Measure until the verdict is ``verdict`` (data needs a few loop ticks and scrapes)."""

        def attempt() -> Measurement:
            m = self.measure(check)
            if m.phase is not verdict:
                raise NotYet(f"{m.phase.value}: {m.message}")
            return m

        return wait_for(attempt, timeout=timeout, interval=0.5, what=f"{check.name} {verdict.value}")


@pytest.fixture(params=torghut_db.SCHEMA_STATES)
def stack(
    request: pytest.FixtureRequest, postgres: PostgresServer, prometheus: PrometheusServer, gate_reader: str
) -> Iterator[Stack]:
    state: torghut_db.SchemaState = request.param
    with torghut_db.temporary_database(postgres.dsn(), f"preset_{state}") as url:
        engine = torghut_db.make_engine(url)
        try:
            torghut_db.create_schema(engine, state=state)
            # a day-old history of fills written before route provenance, route markers only in raw_order
            torghut_db.seed_executions(
                engine, 16, created_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=1), route_markers="lean_fallback"
            )
        finally:
            engine.dispose()
        dsn = "postgresql://" + url.split("://", 1)[1]
        job = f"preset-{state}"
        with TorghutSimulator(dsn=dsn, tick_seconds=0.3, expected_heads=torghut_db.heads_of(state)) as sim:
            prometheus.set_targets(job, [f"{HOST}:{sim.port}"])
            prometheus.wait_for_targets(job, timeout=30)
            spec = TorghutRolloutSpec.model_validate(
                {
                    "target": {"kind": "Deployment", "name": "torghut", "container": "torghut", "image": DEFAULT_IMAGE},
                    "database": {"secretRef": {"name": "torghut-db-app", "key": "uri"}},
                    "prometheus": {"url": prometheus.url},
                    "serviceUrl": sim.url,
                    "presets": ["torghut-completion"],
                }
            )
            with (
                # gates read as a read-only role (they refuse the superuser the simulator writes with)
                PostgresGateway(
                    dsn.replace("postgresql://postgres@", f"postgresql://{gate_reader}@"),
                    statement_timeout=10,
                    connect_timeout=5,
                ) as pg,
                PrometheusGateway(prometheus.url, bearer_token=None, timeout=5) as prom,
                HttpGateway(timeout=5) as http,
            ):
                yield Stack(state, pg, prom, http, sim, spec, dsn)
            prometheus.remove_targets(job)


def test_every_preset_check_gives_its_verdict_on_both_schema_states(stack: Stack) -> None:
    checks = {c.name: c for c in torghut_completion(stack.spec)}
    schema_too_old = stack.state == "checklist"
    expected = {
        "route-null-rate": Verdict.SUCCESSFUL,  # the service's fresh fills carry both adapters
        "route-backfill": Verdict.FAILED,  # the history is not backfilled (no SQL pack here)
        "research-grants": Verdict.FAILED,
        "research-writes": Verdict.ERROR if schema_too_old else Verdict.SUCCESSFUL,
        "signal-throughput": Verdict.SUCCESSFUL,
        "fallback-ratio": Verdict.SUCCESSFUL,
        "healthz": Verdict.SUCCESSFUL,
        "schema-current": Verdict.SUCCESSFUL,
        "build-rolled-out": Verdict.SUCCESSFUL,
        "trading-status": Verdict.SUCCESSFUL,
        "executions-api": Verdict.SUCCESSFUL,
    }
    assert set(checks) == set(expected), "a preset check without an expectation here"
    seen = {name: stack.settle(checks[name], verdict) for name, verdict in expected.items()}

    # the whole value (status keeps 256 characters of it); no default privileges on either state yet
    grants = str(stack.postgres.query_rows(RESEARCH_GRANTS_SQL)[0]["value"])
    assert "research_attempts lacks" in grants
    assert "new tables of postgres lack INSERT" in grants
    if schema_too_old:  # before 0007: nothing on the ledger of 0006
        for table in torghut_db.RESEARCH_TABLES:
            assert f"{table} lacks INSERT" in grants
        message = seen["research-writes"].message
        assert f"schema lacks research_promotions.decision_action (added by Torghut migration {M0011})" in message
        assert "SQLSTATE 42703" in message
    else:  # head: 0007 granted the ledger of 0006, nobody granted the tables of 0026
        assert "research_runs" not in grants
        for table in torghut_db.LATER_RESEARCH_TABLES:
            assert f"{table} lacks SELECT" in grants
    assert float(seen["route-backfill"].value or 0) >= 16


def test_a_missing_table_is_an_error_naming_the_table_and_its_migration(stack: Stack) -> None:
    check = Check.model_validate(
        {
            "name": "attempts",
            "postgres": {"query": "SELECT count(*) AS value FROM research_attempts"},
            "successCondition": "result >= 0",
        }
    )
    assert stack.measure(check).phase is Verdict.SUCCESSFUL  # both states hold the tables of 0026
    engine = torghut_db.make_engine(stack.admin_dsn)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE research_attempts")
    finally:
        engine.dispose()
    measured = stack.measure(check)
    assert measured.phase is Verdict.ERROR
    assert (
        "schema lacks table research_attempts (added by Torghut migration 0026_strategy_factory_research_objects)"
        in measured.message
    )
