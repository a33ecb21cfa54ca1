"""The TorghutRollout spec, parsed once at the edge.

The CRD in ``crds/torghutrollouts.yaml`` is the contract users see; these models mirror it field for field
(``tests/unit/test_crd_drift.py`` keeps the two in step). The API server has already validated what it could;
these models add the rules a schema can't state and turn the body into typed values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from torghut_operator.core.api.durations import Duration
from torghut_operator.core.cel import compile_condition
from torghut_operator.core.jsonpath import parse_json_path
from torghut_operator.core.text import hide_userinfo

TRADING_MODE = "TRADING_MODE"
TRADING_MODES = ("paper", "live")
"""The trading-mode variable promotion steps set, and its values in order of exposure."""

GROUP = "torghut.proompteng.ai"
VERSION = "v1alpha1"
PLURAL = "torghutrollouts"
KIND = "TorghutRollout"


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(
        alias_generator=lambda name: "".join(
            part if i == 0 else part.capitalize() for i, part in enumerate(name.split("_"))
        ),
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class SecretKeyRef(ApiModel):
    """A key of a Secret in the rollout's namespace. Its value is read at use and never written anywhere."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Secret.")
    key: str = Field(min_length=1, max_length=253, description="Key inside the Secret.")


class TargetKind(StrEnum):
    DEPLOYMENT = "Deployment"
    KNATIVE_SERVICE = "Service"


class Target(ApiModel):
    """The workload this rollout changes."""

    kind: TargetKind = Field(
        default=TargetKind.DEPLOYMENT,
        description="Deployment (apps/v1) or Service (serving.knative.dev/v1, Knative).",
    )
    name: str = Field(min_length=1, max_length=253, description="Name of the target in this namespace.")
    container: str = Field(
        min_length=1,
        max_length=63,
        description="Container whose image is rolled out (Knative: user-container).",
    )
    image: str = Field(min_length=1, max_length=512, description="The image to roll out, ideally by digest.")
    on_drift: Literal["Fail", "Wait"] = Field(
        default="Fail",
        description=(
            "When someone else changes the image or a trading variable this rollout set while it verifies or "
            "promotes: Fail (roll back) or Wait (take no measurement until the target is back, then start the "
            "stage's checks over)."
        ),
    )

    @property
    def api_version(self) -> str:
        return "apps/v1" if self.kind is TargetKind.DEPLOYMENT else "serving.knative.dev/v1"


class Database(ApiModel):
    """The Postgres database that migrations change and that Postgres checks query."""

    secret_ref: SecretKeyRef = Field(
        description=(
            "Secret key holding the gate DSN (postgresql://user:pass@host:port/db), for postgres checks, "
            "migrate.expect and promotion evidence; a role that is not a superuser nor a member of "
            "pg_execute_server_program, pg_write_server_files or pg_read_server_files. Never inline."
        )
    )
    ledger_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret key holding the DSN the evidence ledger writes with (schema torghut_rollout). Defaults to "
            "spec.migrate.sql.secretRef, else spec.database.secretRef."
        ),
    )
    statement_timeout: Duration = Field(
        default="10s",
        description="Statement timeout for every gate query (each runs in a read-only transaction).",
    )
    connect_timeout: Duration = Field(default="5s", description="Connection timeout.")


class Prometheus(ApiModel):
    """The Prometheus (or Mimir/Thanos query frontend) that Prometheus checks query."""

    url: str = Field(min_length=1, max_length=2048, description="Base URL, e.g. http://prometheus.monitoring:9090.")
    bearer_token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Optional bearer token sent as Authorization header."
    )


class PostgresProvider(ApiModel):
    query: str = Field(
        min_length=1,
        description=(
            "Read-only SQL run in a READ ONLY transaction with the database's statement timeout. It must return "
            "one row; the column named `value` (or the first column) is the result, an optional column named "
            "`samples` is the sample count judged by minSamples. No row or a NULL value is no data "
            "(Inconclusive), never a pass."
        ),
    )


class PrometheusProvider(ApiModel):
    query: str = Field(
        min_length=1,
        description=(
            "PromQL instant query returning a scalar or exactly one series. An empty vector is no data "
            "(Inconclusive); several series are an Error."
        ),
    )
    samples_query: str | None = Field(
        default=None,
        description="Optional PromQL whose single value is the sample count judged by minSamples.",
    )
    explain_query: str | None = Field(
        default=None,
        description=(
            "Optional PromQL whose series are quoted in the verdict message when a measurement does not pass, "
            "e.g. the block reasons behind zero signals. With spec.serviceUrl set, the message also names what the "
            "service's /trading/status shows blocks its loop."
        ),
    )


class HttpProvider(ApiModel):
    url: str = Field(min_length=1, max_length=2048, description="URL to GET.")
    json_path: str | None = Field(
        default=None,
        description=(
            "JSONPath into the response body, e.g. $.autonomy.signals_total. Without it the whole body (JSON, "
            "or text) is the result. A path that matches nothing is no data."
        ),
    )
    expected_status: list[int] = Field(
        default_factory=lambda: [200],
        min_length=1,
        description="Status codes that count as an answer; any other status is a Failed measurement.",
    )


class Check(ApiModel):
    """One gate: a provider that measures, and a judgement of the measured value."""

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Unique name of the check within its stage (a DNS label).",
    )
    postgres: PostgresProvider | None = Field(default=None, description="Measure with a read-only SQL query.")
    prometheus: PrometheusProvider | None = Field(default=None, description="Measure with a PromQL query.")
    http: HttpProvider | None = Field(default=None, description="Measure with an HTTP GET.")
    min: float | None = Field(default=None, description="Lowest passing value (inclusive).")
    max: float | None = Field(default=None, description="Highest passing value (inclusive).")
    success_condition: str | None = Field(
        default=None,
        max_length=4096,
        description=(
            "CEL expression over `result` (and `samples`, `previous`); true means Successful. With only a "
            "successCondition, false means Failed; with both conditions and neither true, Inconclusive."
        ),
    )
    failure_condition: str | None = Field(
        default=None, max_length=4096, description="CEL expression over `result`; true means Failed."
    )
    failure_limit: int = Field(
        default=0, ge=0, le=1000, description="Failed measurements tolerated; one more fails the check."
    )
    inconclusive_limit: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Inconclusive measurements tolerated; one more makes the check Inconclusive (waits for a human).",
    )
    consecutive_error_limit: int = Field(
        default=4,
        ge=0,
        le=1000,
        description="Consecutive Error measurements tolerated; one more makes the check Error and the stage fail.",
    )
    min_samples: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="Fewer samples than this make a measurement Inconclusive (not enough data), never a pass.",
    )
    dry_run: bool = Field(default=False, description="Measure and record, but never block or fail the stage.")
    waivable: bool = Field(
        default=True,
        description=(
            "Whether the promote verb may accept an Inconclusive verdict of this check. False for required "
            "evidence: the check must pass on data, or the stage times out."
        ),
    )
    timeout: Duration = Field(default="10s", description="Timeout of one measurement.")

    @model_validator(mode="after")
    def _one_provider_and_a_judgement(self) -> Self:
        providers = [p for p in (self.postgres, self.prometheus, self.http) if p is not None]
        if len(providers) != 1:
            raise ValueError(f"check {self.name!r} needs exactly one of postgres, prometheus, http")
        thresholds = self.min is not None or self.max is not None
        conditions = self.success_condition is not None or self.failure_condition is not None
        if not thresholds and not conditions:
            raise ValueError(f"check {self.name!r} needs a judgement: min/max or successCondition/failureCondition")
        if thresholds and conditions:
            raise ValueError(f"check {self.name!r}: use min/max or CEL conditions, not both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"check {self.name!r}: min {self.min} is above max {self.max}")
        # Typos surface in status before a rollout starts, not as Error measurements halfway through it.
        for condition in (self.success_condition, self.failure_condition):
            if condition is not None:
                compile_condition(condition)
        if self.http is not None and self.http.json_path is not None:
            parse_json_path(self.http.json_path)
        return self

    @property
    def provider(self) -> Literal["postgres", "prometheus", "http"]:
        if self.postgres is not None:
            return "postgres"
        if self.prometheus is not None:
            return "prometheus"
        return "http"

    @property
    def query_text(self) -> str:
        """What the check asks, as shown in verdicts, status, events and the evidence (an HTTP URL without its
        userinfo: see ``hide_userinfo``)."""
        if self.postgres is not None:
            return self.postgres.query
        if self.prometheus is not None:
            return self.prometheus.query
        assert self.http is not None
        return hide_userinfo(self.http.url) + (f" {self.http.json_path}" if self.http.json_path else "")

    @property
    def threshold_text(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f">= {self.min:g}")
        if self.max is not None:
            parts.append(f"<= {self.max:g}")
        if self.success_condition is not None:
            parts.append(f"success: {self.success_condition}")
        if self.failure_condition is not None:
            parts.append(f"failure: {self.failure_condition}")
        return ", ".join(parts)


class Toleration(ApiModel):
    """A pod toleration (core/v1 Toleration), e.g. to run the migration on the nodes the service runs on."""

    key: str | None = Field(default=None, max_length=316, description="Taint key; empty with Exists: every taint.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, max_length=63, description="Taint value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect; empty: all effects."
    )
    toleration_seconds: int | None = Field(default=None, description="How long a NoExecute taint is tolerated.")


class MigrationJob(ApiModel):
    """The application's own migration command, run as a Kubernetes Job owned by the rollout."""

    image: str | None = Field(default=None, max_length=512, description="Image; defaults to spec.target.image.")
    command: list[str] = Field(
        min_length=1,
        description="Command, e.g. [/opt/venv/bin/alembic, -c, /app/alembic.ini, upgrade, heads].",
    )
    args: list[str] = Field(default_factory=list, description="Arguments.")
    dsn_env: str = Field(
        default="DB_DSN",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable that receives the DSN from spec.database.secretRef.",
    )
    backoff_limit: int = Field(default=6, ge=0, le=20, description="Job backoffLimit.")
    active_deadline: Duration = Field(default="15m", description="Job activeDeadlineSeconds, as a duration.")
    service_account_name: str | None = Field(default=None, description="ServiceAccount of the Job's pod.")
    pod_labels: dict[str, str] = Field(default_factory=dict, description="Extra labels on the Job's pod.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="nodeSelector of the Job's pod.")
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Tolerations of the Job's pod."
    )


class ConfigMapRef(ApiModel):
    name: str = Field(min_length=1, max_length=253, description="Name of the ConfigMap in this namespace.")


class BackfillSpec(ApiModel):
    """How backfill files (header ``-- torghut-rollout: backfill table=...``) run: keyset batches, each its own
    short transaction, throttled while the database is under pressure."""

    batch_duration: Duration = Field(
        default="100ms", description="Target duration of one batch; the batch size adapts to it."
    )
    pause: Duration = Field(default="0s", description="Sleep between two batches.")
    max_transaction_age: Duration = Field(
        default="60s",
        description="Wait between batches while another transaction has been open longer than this.",
    )
    max_replica_lag: Duration = Field(
        default="10s", description="Wait between batches while a replica's replay lag is above this."
    )


class SqlMigration(ApiModel):
    """Ordered SQL files applied by the operator itself: each once, in its own transaction, under an advisory
    lock, recorded with a checksum in torghut_rollout.sql_migrations. Files whose header has the line
    ``-- torghut-rollout: repeatable`` are applied again when they change and run once more after the new image is
    available (the deploy stage's catch-up). ``-- torghut-rollout: backfill table=...`` files run in keyset
    batches, each its own transaction (``backfill``); ``-- torghut-rollout: no-transaction`` files run statement by
    statement outside a transaction. Every statement waits at most ``lock_timeout`` for a lock."""

    config_map_ref: ConfigMapRef = Field(
        description="ConfigMap whose keys ending in .sql are applied in lexical order."
    )
    secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "DSN used to apply the files, when they need more than spec.database's role (e.g. GRANTs: "
            "torghut-db-superuser/uri). Defaults to spec.database.secretRef."
        ),
    )
    lock_timeout: Duration = Field(
        default="2s",
        description=(
            "lock_timeout of every statement of the files: a DDL statement waiting longer for a lock gives up "
            "(so it never queues the service's queries behind it) and is retried."
        ),
    )
    lock_retries: int = Field(
        default=5,
        ge=0,
        le=20,
        description="Retries, with backoff and jitter, of a statement that hit lockTimeout; then the stage fails.",
    )
    backfill: BackfillSpec | None = Field(
        default=None, description="Batching and throttling of backfill files; defaults when absent."
    )


class GrantExpectation(ApiModel):
    role: str = Field(min_length=1, max_length=63, description="Role that must hold the privileges.")
    tables: str = Field(
        min_length=1,
        max_length=128,
        description=(
            "Table name pattern in schema public; * matches any characters (e.g. research_*). A pattern with * also "
            "covers tables created later: the owners' default privileges must grant the same."
        ),
    )
    privileges: list[Literal["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"]] = Field(
        min_length=1, description="Privileges required on every matching table."
    )


class Expectations(ApiModel):
    """Postconditions checked in Postgres before the migrate stage passes."""

    alembic_heads: list[str] = Field(
        default_factory=list, description="Revisions that must all be present in alembic_version."
    )
    grants: list[GrantExpectation] = Field(default_factory=list, description="Privileges that must be held.")
    checks: list[Check] = Field(
        default_factory=list, description="Further checks, each judged once on a single measurement."
    )


class Migrate(ApiModel):
    """The migrate stage: run a Job or apply SQL files (at most one), then check expectations."""

    job: MigrationJob | None = Field(default=None, description="Run the app's migration command as a Job.")
    sql: SqlMigration | None = Field(default=None, description="Apply SQL files from a ConfigMap.")
    expect: Expectations | None = Field(default=None, description="Postconditions checked after migrating.")

    @model_validator(mode="after")
    def _one_mode(self) -> Self:
        if self.job is not None and self.sql is not None:
            raise ValueError("migrate takes one of job or sql, not both")
        if self.job is None and self.sql is None and self.expect is None:
            raise ValueError("migrate needs job, sql or expect")
        return self


class Deploy(ApiModel):
    progress_deadline: Duration = Field(
        default="10m", description="The new image must be fully available within this time."
    )


class Verify(ApiModel):
    """Measurements taken after deploy; every check must pass before the rollout advances."""

    initial_delay: Duration = Field(default="0s", description="Wait before the first measurement.")
    interval: Duration = Field(default="30s", description="Time between measurements of a check.")
    count: int = Field(default=3, ge=1, le=1000, description="Measurements per check.")
    timeout: Duration | None = Field(
        default=None,
        description="The stage fails when its checks have not passed by then (e.g. Inconclusive for too long).",
    )
    checks: list[Check] = Field(default_factory=list, description="The checks, all of which must pass.")


class RequiredPromotion(ApiModel):
    """Evidence in research_promotions that a step needs before it may change the trading mode: an approved row
    for this release, not any approval from any time."""

    mode: Literal["paper", "live"] = Field(
        description=(
            "An approved research_promotions row (approved_mode = this, no deny_reason) must exist, created after "
            "this attempt started (or within `window`)."
        )
    )
    candidate_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Only a row for this research candidate (research_promotions.candidate_id) counts.",
    )
    window: Duration | None = Field(
        default=None,
        description=(
            "Rows created within this duration before the check count too, even before the attempt started "
            "(e.g. an approval given just before the release). Absent: only rows created after the attempt started."
        ),
    )


class PromotionStep(ApiModel):
    """One trading-mode step, e.g. paper -> 0.10x canary -> live."""

    name: str = Field(
        min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", description="Name of the step."
    )
    env: dict[str, Annotated[str, Field(max_length=1024)]] = Field(
        min_length=1,
        max_length=32,
        description="Environment set on the target container for this step, e.g. TRADING_MODE: live.",
    )
    required_promotion: RequiredPromotion | None = Field(
        default=None, description="research_promotions evidence required before the step is applied."
    )
    requires_approval: bool = Field(
        default=False, description="Wait for the promote verb (after the evidence exists) before applying the step."
    )
    required_soak_time: Duration | None = Field(
        default=None,
        description=(
            "Time the previous stage (verify, or the previous step) must have stayed verified before this step may "
            "be applied, as Kargo's requiredSoakTime."
        ),
    )
    checks: list[Check] = Field(
        default_factory=list,
        description="Checks re-verified after the step is applied (verify.count/interval); none means verify.checks.",
    )

    @property
    def trading_mode(self) -> str | None:
        return self.env.get(TRADING_MODE)

    @model_validator(mode="after")
    def _live_needs_evidence(self) -> Self:
        mode = self.trading_mode
        if mode is not None and mode not in TRADING_MODES:
            raise ValueError(f"promotion step {self.name}: {TRADING_MODE} must be one of {', '.join(TRADING_MODES)}")
        if mode == "live" and (self.required_promotion is None or self.required_promotion.mode != "live"):
            raise ValueError(
                f"promotion step {self.name} turns on live trading: it needs requiredPromotion with mode live"
            )
        return self


class Promotion(ApiModel):
    """Ordered trading-mode steps after verify. No step is skipped; each is refused (Blocked, MissingEvidence)
    until the previous step's gates passed and its required evidence exists."""

    steps: list[PromotionStep] = Field(min_length=1, max_length=10, description="The steps, in order.")
    allow_unordered: bool = Field(
        default=False,
        description=(
            "Allow steps out of exposure order. By default a step may not set TRADING_MODE live before a step set "
            "it to paper, nor go back from live to paper."
        ),
    )

    @model_validator(mode="after")
    def _ordered_by_exposure(self) -> Self:
        if self.allow_unordered:
            return self
        modes = [(s.name, s.trading_mode) for s in self.steps if s.trading_mode is not None]
        seen_paper = False
        for index, (name, mode) in enumerate(modes):
            if mode == "paper" and any(m == "live" for _, m in modes[:index]):
                raise ValueError(f"promotion step {name} goes back from live to paper (set allowUnordered to allow it)")
            if mode == "live" and not seen_paper:
                raise ValueError(
                    f"promotion step {name} reaches live before any paper step (set allowUnordered to allow it)"
                )
            seen_paper = seen_paper or mode == "paper"
        return self


class Rollback(ApiModel):
    on_failure: bool = Field(
        default=True,
        description=(
            "On a failed stage after deploy, restore the previous image and wait for it. The trading env a "
            "promotion step set is restored on every failure, whatever this says."
        ),
    )


class TorghutRolloutSpec(ApiModel):
    target: Target = Field(description="The workload to roll out.")
    database: Database | None = Field(default=None, description="Postgres for migrations and checks.")
    prometheus: Prometheus | None = Field(default=None, description="Prometheus for checks.")
    service_url: str | None = Field(
        default=None,
        max_length=2048,
        description=(
            "Base URL of the rolled-out service's HTTP surface, used by presets "
            "(Torghut: http://torghut.torghut.svc.cluster.local)."
        ),
    )
    migrate: Migrate | None = Field(default=None, description="The migrate stage; skipped when absent.")
    deploy: Deploy = Field(default_factory=Deploy, description="The deploy stage.")
    verify: Verify = Field(default_factory=Verify, description="The verify stage.")
    presets: list[Literal["torghut-completion"]] = Field(
        default_factory=list,
        description="Built-in check packs added to verify; a check of the same name in verify.checks wins.",
    )
    promotion: Promotion | None = Field(default=None, description="Trading-mode promotion after verify.")
    rollback: Rollback = Field(default_factory=Rollback, description="What happens on failure.")
    paused: bool = Field(default=False, description="Pause the rollout where it stands (like the pause verb).")
    research_mode: Literal["Lenient", "Strict"] = Field(
        default="Lenient",
        description=(
            "How the torghut-completion preset judges missing research writes: Lenient waits for them (Inconclusive, "
            "never waivable by promote; verify.timeout fails it), Strict fails the check."
        ),
    )
    on_delete: Literal["Restore", "Orphan"] = Field(
        default="Restore",
        description=(
            "Deleting a rollout that has changed its target: Restore puts the previous image and trading env back "
            "first (a finalizer holds the deletion until then, at most deploy.progressDeadline); Orphan leaves the "
            "target as it is, with a Warning event saying so."
        ),
    )

    def all_checks(self) -> list[Check]:
        """Every check the spec names: verify, migrate expectations and promotion steps."""
        expect = self.migrate.expect.checks if self.migrate and self.migrate.expect else []
        steps = [c for step in self.promotion.steps for c in step.checks] if self.promotion else []
        return [*self.verify.checks, *expect, *steps]

    @model_validator(mode="after")
    def _dependencies(self) -> Self:
        checks = self.all_checks()
        if (self.migrate is not None or any(c.postgres for c in checks)) and self.database is None:
            raise ValueError("migrate and postgres checks need spec.database")
        if any(c.prometheus for c in checks) and self.prometheus is None:
            raise ValueError("prometheus checks need spec.prometheus")
        if "torghut-completion" in self.presets:
            missing = [
                name
                for name, value in (
                    ("database", self.database),
                    ("prometheus", self.prometheus),
                    ("serviceUrl", self.service_url),
                )
                if value is None
            ]
            if missing:
                raise ValueError(f"preset torghut-completion needs spec.{', spec.'.join(missing)}")
        if len(set(self.presets)) != len(self.presets):
            raise ValueError("presets must not repeat")
        if not self.verify.checks and not self.presets:
            raise ValueError("verify needs at least one check or preset: a rollout never passes without evidence")
        lists = {"verify.checks": self.verify.checks}
        if self.migrate and self.migrate.expect:
            lists["migrate.expect.checks"] = self.migrate.expect.checks
        if self.promotion is not None:
            if self.database is None and any(s.required_promotion for s in self.promotion.steps):
                raise ValueError("promotion steps with requiredPromotion need spec.database")
            steps = [s.name for s in self.promotion.steps]
            if len(set(steps)) != len(steps):
                raise ValueError("promotion step names must be unique")
            lists.update({f"promotion step {s.name} checks": s.checks for s in self.promotion.steps})
        for where, items in lists.items():
            names = [c.name for c in items]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{where} names must be unique: {', '.join(duplicates)}")
        return self

    _hash: str | None = PrivateAttr(default=None)
    """`spec_hash()` once computed (the model is frozen; `model_copy` forgets it)."""

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copy = super().model_copy(update=update, deep=deep)
        copy._hash = None
        return copy

    def spec_hash(self) -> str:
        """Identity of one run of this rollout: changes when anything but `paused` or `onDelete` changes. Computed
        once per parsed spec: a turn's planner asks for it at every step."""
        if self._hash is None:
            self._hash = self._compute_hash()
        return self._hash

    def _compute_hash(self) -> str:
        data: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude={"paused", "on_delete"})
        sql = (data.get("migrate") or {}).get("sql")
        if sql is not None:
            # Fields added after a spec was written leave its hash alone while they hold their defaults, so an
            # operator upgrade never starts every rollout over.
            for key, default in _HASH_NEUTRAL_SQL_DEFAULTS.items():
                if sql.get(key) == default:
                    del sql[key]
        job = (data.get("migrate") or {}).get("job")
        if job is not None:  # added with issue 11: empty, they leave the hash as it was
            for key in ("nodeSelector", "tolerations"):
                if not job.get(key):
                    job.pop(key, None)
        if data["target"].get("onDrift") == "Fail":  # added with issue 15: at its default, the hash stays as it was
            del data["target"]["onDrift"]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


_HASH_NEUTRAL_SQL_DEFAULTS: dict[str, Any] = {
    info.alias or name: info.default
    for name, info in SqlMigration.model_fields.items()
    if name in ("lock_timeout", "lock_retries", "backfill")
}
"""spec.migrate.sql fields added after specs were written (issue 10), with their defaults: at these values they
leave the spec hash as it was before them."""


def target_key(namespace: str, spec: TorghutRolloutSpec | Mapping[str, Any]) -> tuple[str, str, str]:
    """(namespace, kind, name) of a rollout's target, from its model or its raw ``spec`` (a watch event's, another
    rollout's): two rollouts with the same key drive the same workload."""
    if isinstance(spec, TorghutRolloutSpec):
        return namespace, spec.target.kind.value, spec.target.name
    target = spec.get("target") or {}
    return namespace, str(target.get("kind", TargetKind.DEPLOYMENT.value)), str(target.get("name", ""))
