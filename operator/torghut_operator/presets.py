"""Built-in check packs. A check in spec.verify.checks with the same name as a preset's check replaces it, so
every default is overridable (copy the check from ``kubectl get torghutrollout -o yaml`` status and change it).

``torghut-completion`` turns the Torghut owners' rollout checklist into gates: route provenance and its
backfill, grants on the research tables, research writes, signal throughput, execution fallback ratio, and the
service's own endpoints. Checks that need fresh data (new executions, new research runs, signals) treat "none
yet" as Inconclusive and keep measuring (a generous inconclusiveLimit); only verify.timeout turns a lasting
"none yet" into a failure. Nothing here ever passes on missing data.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from torghut_operator.api.spec import Check, TorghutRolloutSpec

WINDOW = "15 minutes"
"""How far back the window queries look. No index of Torghut's executions leads with created_at (not at 0006, not
at head) and none can bound "the last 15 minutes" (ids are uuid v4, alpaca_order_id is the broker's uuid): the
window query is one sequential scan reading no other table (`make bench-sql` measures it at 10 M rows)."""

NOT_YET_LIMIT = 20
"""Inconclusive measurements ("no new data yet") tolerated by the data-sufficiency checks."""

# Written so the per-column adapter indexes serve it (a COALESCE over the column would hide them).
_UNSET = "({col} IS NULL OR {col} IN ('', 'unknown'))"
ROUTE_NULL_RATE_SQL = f"""
SELECT
  AVG(CASE WHEN {_UNSET.format(col="execution_expected_adapter")}
            OR {_UNSET.format(col="execution_actual_adapter")} THEN 1.0 ELSE 0.0 END) AS value,
  COUNT(*) AS samples
FROM executions
WHERE created_at >= now() - interval '{WINDOW}'
""".strip()

ROUTE_BACKFILL_SQL = f"""
SELECT COUNT(*) AS value
FROM executions
WHERE ({_UNSET.format(col="execution_expected_adapter")} OR {_UNSET.format(col="execution_actual_adapter")})
  AND raw_order IS NOT NULL
  AND raw_order::jsonb ?| ARRAY['_execution_route_expected', 'execution_expected_adapter',
                                '_execution_route_actual', '_execution_adapter', 'execution_actual_adapter']
""".strip()

RESEARCH_GRANTS_SQL = """
WITH research AS (
  SELECT c.oid, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname LIKE 'research\\_%'
), wanted AS (SELECT unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) AS privilege),
missing AS (
  SELECT r.relname || ' lacks ' || w.privilege AS gap FROM research r CROSS JOIN wanted w
  WHERE NOT has_table_privilege('torghut_app', r.oid, w.privilege)
)
SELECT CASE WHEN (SELECT COUNT(*) FROM research) = 0 THEN 'no research_* tables in schema public'
            ELSE COALESCE((SELECT string_agg(gap, ', ' ORDER BY gap) FROM missing), '') END AS value
""".strip()

RESEARCH_WRITES_SQL = f"""
SELECT COUNT(*) AS value
FROM research_runs r
WHERE r.created_at >= now() - interval '{WINDOW}'
  AND EXISTS (SELECT 1 FROM research_candidates c WHERE c.run_id = r.run_id)
  AND EXISTS (
    SELECT 1 FROM research_promotions p JOIN research_candidates c ON c.candidate_id = p.candidate_id
    WHERE c.run_id = r.run_id AND p.decision_action IS NOT NULL
      AND COALESCE(NULLIF(p.approve_reason, ''), NULLIF(p.deny_reason, ''), NULLIF(p.decision_rationale, ''))
          IS NOT NULL)
""".strip()

_ADAPTER_SET = "has(e.{f}) && e.{f} != null && !(e.{f} in ['', 'unknown'])"
_ADAPTER_UNSET = "!has(e.{f}) || e.{f} == null || e.{f} in ['', 'unknown']"
_ROUTE_SET = " && ".join(_ADAPTER_SET.format(f=f) for f in ("execution_expected_adapter", "execution_actual_adapter"))
_ROUTE_UNSET = " || ".join(
    _ADAPTER_UNSET.format(f=f) for f in ("execution_expected_adapter", "execution_actual_adapter")
)
EXECUTIONS_SUCCESS = f"size(result) > 0 && result.all(e, {_ROUTE_SET})"
EXECUTIONS_FAILURE = f"size(result) > 0 && result.exists(e, {_ROUTE_UNSET})"

TRADING_STATUS_SUCCESS = (
    "result.enabled == true && result.kill_switch_enabled == false && result.running == true"
    " && (!has(result.last_error) || result.last_error == null || result.last_error == '')"
    " && result.autonomy.signals_total > 0"
)
TRADING_STATUS_FAILURE = "result.enabled == false || result.kill_switch_enabled == true"
"""Trading switched off or the kill switch on: a decision, not a delay; fails at once. Anything else that blocks
(loop not running, last_error, no signals yet) is "not yet" until verify.timeout."""

SIGNAL_THROUGHPUT_PROMQL = "sum(increase(torghut_trading_decisions_total[5m]))"
NO_SIGNAL_REASONS_PROMQL = "sum by (reason) (increase(torghut_trading_no_signal_reason_total[5m])) > 0"
FALLBACK_RATIO_PROMQL = (
    "sum(increase(torghut_trading_execution_fallback_total[15m]))"
    " / sum(increase(torghut_trading_execution_requests_total[15m]))"
)


def _cel_string(text: str) -> str:
    return json.dumps(text)


def _build_condition(image: str) -> str:
    """The service reports the image being rolled out: by digest when the image names one, else by its tag.
    An image with neither can't be proven, so the check can't pass."""
    name, _, digest = image.partition("@")
    if digest:
        return f"has(result.image_digest) && result.image_digest == {_cel_string(digest)}"
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        return f"has(result.version) && result.version == {_cel_string(last.split(':', 1)[1])}"
    return "false"


def torghut_completion(spec: TorghutRolloutSpec) -> list[Check]:
    base = (spec.service_url or "").rstrip("/")
    image = spec.target.image
    raw: list[dict[str, object]] = [
        {
            "name": "route-null-rate",
            "postgres": {"query": ROUTE_NULL_RATE_SQL},
            "max": 0,
            "minSamples": 3,
            "inconclusiveLimit": NOT_YET_LIMIT,
        },
        {"name": "route-backfill", "postgres": {"query": ROUTE_BACKFILL_SQL}, "max": 0},
        {"name": "research-grants", "postgres": {"query": RESEARCH_GRANTS_SQL}, "successCondition": 'result == ""'},
        {
            "name": "research-writes",
            "postgres": {"query": RESEARCH_WRITES_SQL},
            "successCondition": "result >= 1",
            "failureCondition": "false",
            "inconclusiveLimit": NOT_YET_LIMIT,
        },
        {
            "name": "signal-throughput",
            "prometheus": {"query": SIGNAL_THROUGHPUT_PROMQL, "explainQuery": NO_SIGNAL_REASONS_PROMQL},
            "successCondition": "result > 0",
            "failureCondition": "false",
            "inconclusiveLimit": NOT_YET_LIMIT,
        },
        {
            "name": "fallback-ratio",
            "prometheus": {"query": FALLBACK_RATIO_PROMQL},
            "max": 0.25,
            "inconclusiveLimit": NOT_YET_LIMIT,
        },
        {
            "name": "healthz",
            "http": {"url": f"{base}/healthz", "jsonPath": "$.status"},
            "successCondition": 'result == "ok"',
        },
        {
            "name": "schema-current",
            "http": {
                "url": f"{base}/runtime-readyz",
                "jsonPath": "$.dependencies.database.schema_current",
                "expectedStatus": [200, 503],
            },
            "successCondition": "result == true",
        },
        {
            "name": "build-rolled-out",
            "http": {"url": f"{base}/trading/metrics", "jsonPath": "$.build"},
            "successCondition": _build_condition(image),
        },
        {
            "name": "trading-status",
            "http": {"url": f"{base}/trading/status"},
            "successCondition": TRADING_STATUS_SUCCESS,
            "failureCondition": TRADING_STATUS_FAILURE,
            "inconclusiveLimit": NOT_YET_LIMIT,
        },
        {
            "name": "executions-api",
            "http": {"url": f"{base}/trading/executions?limit=20"},
            "successCondition": EXECUTIONS_SUCCESS,
            "failureCondition": EXECUTIONS_FAILURE,
            "inconclusiveLimit": NOT_YET_LIMIT,
        },
    ]
    return [Check.model_validate(c) for c in raw]


PRESETS: dict[str, Callable[[TorghutRolloutSpec], list[Check]]] = {"torghut-completion": torghut_completion}


def effective_checks(spec: TorghutRolloutSpec) -> list[Check]:
    """The verify checks of ``spec``: presets first, in order, then the spec's own; same name, the spec wins."""
    own = {c.name: c for c in spec.verify.checks}
    merged: dict[str, Check] = {}
    for preset in spec.presets:
        for check in PRESETS[preset](spec):
            merged[check.name] = own.get(check.name, check)
    for check in spec.verify.checks:
        merged.setdefault(check.name, check)
    return list(merged.values())
