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

from torghut_operator.core.api.spec import Check, TorghutRolloutSpec

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

ROUTE_RULES_CTE = r"""
rules AS (
    -- Python's str.strip() whitespace, the whitespace int() skips (not U+001C to U+001F), the Unicode digit
    -- zeros int() accepts (digits 1-9 follow each), and the lengths of the route columns (NULL: unbounded).
    SELECT
        E'\u0009\u000a\u000b\u000c\u000d\u001c\u001d\u001e\u001f\u0020\u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000' AS ws,
        E'\u0009\u000a\u000b\u000c\u000d\u0020\u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000' AS int_ws,
        (
            SELECT string_agg(chr(z + d), '' ORDER BY z, d)
            FROM unnest(ARRAY[
                48, 1632, 1776, 1984, 2406, 2534, 2662, 2790, 2918, 3046, 3174, 3302, 3430, 3558, 3664, 3792, 3872,
                4160, 4240, 6112, 6160, 6470, 6608, 6784, 6800, 6992, 7088, 7232, 7248, 42528, 43216, 43264, 43472,
                43504, 43600, 44016, 65296, 66720, 68912, 69734, 69872, 69942, 70096, 70384, 70736, 70864, 71248,
                71360, 71472, 71904, 72016, 72784, 73040, 73120, 92768, 92864, 93008, 120782, 120792, 120802,
                120812, 120822, 123200, 123632, 125264, 130032
            ]) AS z
            CROSS JOIN generate_series(0, 9) AS d
        ) AS digits,
        (
            SELECT NULLIF(a.atttypmod, -1) - 4 FROM pg_catalog.pg_attribute AS a
            WHERE a.attrelid = CAST('public.executions' AS regclass)
                AND a.attname = 'execution_expected_adapter' AND NOT a.attisdropped
        ) AS expected_len,
        (
            SELECT NULLIF(a.atttypmod, -1) - 4 FROM pg_catalog.pg_attribute AS a
            WHERE a.attrelid = CAST('public.executions' AS regclass)
                AND a.attname = 'execution_actual_adapter' AND NOT a.attisdropped
        ) AS actual_len,
        (
            SELECT NULLIF(a.atttypmod, -1) - 4 FROM pg_catalog.pg_attribute AS a
            WHERE a.attrelid = CAST('public.executions' AS regclass)
                AND a.attname = 'execution_fallback_reason' AND NOT a.attisdropped
        ) AS reason_len
),
candidates AS MATERIALIZED (
    -- Rows with an adapter column that is missing (NULL, empty, whitespace, unknown) or holds alpaca_fallback.
    -- Every other row has both adapters and is left as it is.
    SELECT
        e.id,
        e.execution_expected_adapter AS cur_expected,
        e.execution_actual_adapter AS cur_actual,
        e.execution_fallback_count AS cur_count,
        e.execution_fallback_reason AS cur_reason,
        NULLIF(btrim(e.execution_expected_adapter, r.ws), '') AS col_expected,
        NULLIF(btrim(e.execution_actual_adapter, r.ws), '') AS col_actual,
        CASE WHEN jsonb_typeof(CAST(e.raw_order AS jsonb)) = 'object' THEN CAST(e.raw_order AS jsonb) END AS raw
    FROM scope AS e
    CROSS JOIN rules AS r
    WHERE e.execution_expected_adapter IS NULL
        OR e.execution_actual_adapter IS NULL
        OR btrim(e.execution_expected_adapter, r.ws) IN ('', 'unknown', 'alpaca_fallback')
        OR btrim(e.execution_actual_adapter, r.ws) IN ('', 'unknown', 'alpaca_fallback')
),
texts AS MATERIALIZED (
    -- Route texts as the service reads them: JSON strings only, trimmed, empty is missing.
    SELECT
        c.*,
        NULLIF(btrim(CASE WHEN jsonb_typeof(c.raw -> '_execution_route_expected') = 'string'
            THEN c.raw ->> '_execution_route_expected' END, r.ws), '') AS t_route_expected,
        NULLIF(btrim(CASE WHEN jsonb_typeof(c.raw -> '_execution_route_actual') = 'string'
            THEN c.raw ->> '_execution_route_actual' END, r.ws), '') AS t_route_actual,
        NULLIF(btrim(CASE WHEN jsonb_typeof(c.raw -> '_execution_adapter') = 'string'
            THEN c.raw ->> '_execution_adapter' END, r.ws), '') AS t_adapter,
        NULLIF(btrim(CASE WHEN jsonb_typeof(c.raw -> 'execution_actual_adapter') = 'string'
            THEN c.raw ->> 'execution_actual_adapter' END, r.ws), '') AS t_response_actual,
        NULLIF(btrim(CASE WHEN jsonb_typeof(c.raw -> 'execution_expected_adapter') = 'string'
            THEN c.raw ->> 'execution_expected_adapter' END, r.ws), '') AS t_response_expected,
        NULLIF(btrim(CASE WHEN jsonb_typeof(c.raw -> '_execution_fallback_reason') = 'string'
            THEN c.raw ->> '_execution_fallback_reason' END, r.ws), '') AS t_reason,
        NULLIF(btrim(CASE WHEN jsonb_typeof(c.raw -> '_fallback_reason') = 'string'
            THEN c.raw ->> '_fallback_reason' END, r.ws), '') AS t_fallback_reason,
        -- The count as Python's int() reads it: Unicode digits and whitespace made ASCII first, then an optional
        -- sign, digits with single underscores between them, at most 4300 digits. JSON numbers are truncated.
        CASE jsonb_typeof(c.raw -> '_execution_fallback_count')
            WHEN 'boolean' THEN CASE WHEN c.raw -> '_execution_fallback_count' = CAST('true' AS jsonb) THEN 1 ELSE 0 END
            WHEN 'number' THEN trunc(CAST(c.raw ->> '_execution_fallback_count' AS numeric))
            WHEN 'string' THEN (
                SELECT CASE
                    WHEN s.v ~ '^ *[+-]?[0-9](_?[0-9])* *$' AND length(translate(s.v, ' +-_', '')) <= 4300
                        THEN CAST(replace(s.v, '_', '') AS numeric)
                END
                FROM (
                    SELECT translate(
                        translate(c.raw ->> '_execution_fallback_count', r.digits,
                            repeat('0123456789', length(r.digits) / 10)),
                        r.int_ws, repeat(' ', length(r.int_ws))
                    ) AS v
                ) AS s
            )
        END AS m_count
    FROM candidates AS c
    CROSS JOIN rules AS r
),
markers AS MATERIALIZED (
    -- alpaca_fallback is alpaca wherever it appears, and a column reading unknown is missing.
    SELECT
        t.*,
        NULLIF(CASE WHEN t.col_expected = 'alpaca_fallback' THEN 'alpaca' ELSE t.col_expected END, 'unknown')
            AS c_expected,
        NULLIF(CASE WHEN t.col_actual = 'alpaca_fallback' THEN 'alpaca' ELSE t.col_actual END, 'unknown')
            AS c_actual,
        CASE WHEN t.t_route_expected = 'alpaca_fallback' THEN 'alpaca' ELSE t.t_route_expected END AS m_route_expected,
        CASE WHEN t.t_route_actual = 'alpaca_fallback' THEN 'alpaca' ELSE t.t_route_actual END AS m_route_actual,
        CASE WHEN t.t_adapter = 'alpaca_fallback' THEN 'alpaca' ELSE t.t_adapter END AS m_adapter,
        CASE WHEN t.t_response_actual = 'alpaca_fallback' THEN 'alpaca' ELSE t.t_response_actual END
            AS m_response_actual,
        CASE WHEN t.t_response_expected = 'alpaca_fallback' THEN 'alpaca' ELSE t.t_response_expected END
            AS m_response_expected,
        CASE WHEN t.t_reason = 'alpaca_fallback' THEN 'alpaca' ELSE t.t_reason END AS m_reason,
        CASE WHEN t.t_fallback_reason = 'alpaca_fallback' THEN 'alpaca' ELSE t.t_fallback_reason END
            AS m_fallback_reason
    FROM texts AS t
),
picked AS MATERIALIZED (
    -- expected: the submit-time column, else _execution_route_expected. actual: the kept column, else the
    -- service's marker order, else expected. No expected: expected = actual.
    SELECT
        m.*,
        COALESCE(m.c_expected, m.m_route_expected, m.c_actual, m.m_route_actual, m.m_adapter, m.m_response_actual,
            m.m_response_expected) AS expected1,
        COALESCE(m.c_actual, m.m_route_actual, m.m_adapter, m.m_response_actual, m.m_route_expected,
            m.m_response_expected, m.c_expected) AS actual1,
        COALESCE(m.m_reason, m.m_fallback_reason) AS reason0
    FROM markers AS m
),
fallback AS MATERIALIZED (
    -- The service's _normalize_fallback_fields.
    SELECT
        p.*,
        CASE
            WHEN p.m_count IS NULL AND p.expected1 <> p.actual1 THEN 1
            WHEN p.m_count <= 0 AND p.reason0 IS NOT NULL THEN 1
            ELSE p.m_count
        END AS count1,
        CASE
            WHEN p.m_count IS NULL AND p.expected1 <> p.actual1
                THEN COALESCE(p.reason0, 'fallback_from_' || p.expected1 || '_to_' || p.actual1)
            ELSE p.reason0
        END AS reason1
    FROM picked AS p
),
normalized AS MATERIALIZED (
    -- The service's normalize_route_provenance.
    SELECT
        f.*,
        COALESCE(f.expected1, 'unknown') AS n_expected,
        COALESCE(f.actual1, f.expected1, 'unknown') AS n_actual,
        CASE
            WHEN COALESCE(f.expected1, 'unknown') <> COALESCE(f.actual1, f.expected1, 'unknown')
                AND GREATEST(COALESCE(f.count1, 0), 0) <= 0 THEN 1
            ELSE GREATEST(COALESCE(f.count1, 0), 0)
        END AS n_count
    FROM fallback AS f
),
resolved AS MATERIALIZED (
    -- Both adapter columns usable: keep the row, only alpaca_fallback in a column becomes alpaca. Otherwise the
    -- rules' values, unless one does not fit its column (or the count is beyond exact JSON numbers): skipped.
    SELECT
        n.id,
        n.cur_expected,
        n.cur_actual,
        n.cur_count,
        n.cur_reason,
        n.c_expected IS NOT NULL AND n.c_actual IS NOT NULL AS both_set,
        n.n_expected,
        n.n_actual,
        n.n_count,
        CASE WHEN n.n_count = 0 THEN NULL
            ELSE COALESCE(n.reason1, 'fallback_from_' || n.n_expected || '_to_' || n.n_actual) END AS n_reason,
        r.expected_len,
        r.actual_len,
        r.reason_len
    FROM normalized AS n
    CROSS JOIN rules AS r
),
outcome AS MATERIALIZED (
    SELECT
        s.*,
        CASE
            WHEN s.both_set THEN 'kept'
            WHEN length(s.n_expected) > s.expected_len OR length(s.n_actual) > s.actual_len
                OR length(s.n_reason) > s.reason_len OR s.n_count > 9007199254740992 THEN 'skipped'
            ELSE 'resolved'
        END AS kind
    FROM resolved AS s
),
backfill AS MATERIALIZED (
    -- One row per candidate: its values after the backfill, and whether they change (changed), stay (unchanged)
    -- or cannot be written (skipped). unknown marks rows left without provenance.
    SELECT
        o.id,
        CASE
            WHEN o.kind = 'kept' AND o.cur_expected IS NOT NULL AND btrim(o.cur_expected, r.ws) = 'alpaca_fallback'
                THEN 'alpaca'
            WHEN o.kind = 'resolved' THEN o.n_expected
            ELSE o.cur_expected
        END AS new_expected,
        CASE
            WHEN o.kind = 'kept' AND o.cur_actual IS NOT NULL AND btrim(o.cur_actual, r.ws) = 'alpaca_fallback'
                THEN 'alpaca'
            WHEN o.kind = 'resolved' THEN o.n_actual
            ELSE o.cur_actual
        END AS new_actual,
        CASE WHEN o.kind = 'resolved' THEN CAST(o.n_count AS bigint) ELSE o.cur_count END AS new_count,
        CASE WHEN o.kind = 'resolved' THEN o.n_reason ELSE o.cur_reason END AS new_reason,
        o.cur_expected,
        o.cur_actual,
        o.cur_count,
        o.cur_reason,
        o.kind = 'skipped' AS skipped,
        o.kind = 'resolved' AND (o.n_expected = 'unknown' OR o.n_actual = 'unknown') AS unknown
    FROM outcome AS o
    CROSS JOIN rules AS r
),
changes AS MATERIALIZED (
    SELECT
        b.*,
        NOT b.skipped AND (b.new_expected, b.new_actual, b.new_count, b.new_reason)
            IS DISTINCT FROM (b.cur_expected, b.cur_actual, b.cur_count, b.cur_reason) AS changed
    FROM backfill AS b
)
""".strip()
"""Torghut's own route-provenance rules in SQL: the CTEs after ``WITH scope AS (...),`` in the SQL pack's backfill
(``manifests/torghut/0004_route_provenance_backfill.sql``; a unit test keeps both identical, and an integration
test compares them with ``torghut_localstack.route_rules`` row by row). The rules read the executions of a CTE
``scope`` that the text using them defines first: the backfill's scope is one batch (``id BETWEEN`` the batch's first
and last key), the check's is the whole table (:data:`ROUTE_SCOPE_ALL_CTE`). ``changes`` has one row per execution
of the scope whose adapter columns are missing or hold ``alpaca_fallback``: ``changed`` (the backfill would write
it), ``skipped`` (a value does not fit its column) and ``unknown`` (left without provenance)."""

ROUTE_SCOPE_ALL_CTE = "scope AS (SELECT * FROM public.executions AS x)"
"""The scope of the ``route-backfill`` check: every execution. (Referenced once, so PostgreSQL inlines it: the plan
is the plain scan of ``public.executions``.)"""

ROUTE_BACKFILL_SQL = (
    "WITH\n"
    + ROUTE_SCOPE_ALL_CTE
    + ",\n"
    + ROUTE_RULES_CTE
    + """
SELECT
    count(*) FILTER (WHERE c.changed) AS value,
    count(*) FILTER (WHERE c.unknown) || ' of ' || t.total || ' executions ('
        || round(100.0 * count(*) FILTER (WHERE c.unknown) / GREATEST(t.total, 1), 2)
        || ' percent) have no route marker and stay unknown/unknown, '
        || count(*) FILTER (WHERE c.skipped) || ' ('
        || round(100.0 * count(*) FILTER (WHERE c.skipped) / GREATEST(t.total, 1), 2)
        || ' percent) are skipped: a route value longer than its column' AS detail
FROM (SELECT count(*) AS total FROM public.executions) AS t
LEFT JOIN changes AS c ON true
GROUP BY t.total"""
)
"""Executions the backfill would still change (0 once it ran, whatever the data); the rows it leaves unknown or
skips are reported in the message (column ``detail``), never failed: they carry nothing to derive a route from."""

RESEARCH_GRANTS_SQL = """
WITH research AS (
  SELECT c.oid, c.relname, c.relowner FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname LIKE 'research\\_%'
), wanted AS (SELECT unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) AS privilege),
missing AS (
  SELECT r.relname || ' lacks ' || w.privilege AS gap FROM research r CROSS JOIN wanted w
  WHERE NOT has_table_privilege('torghut_app', r.oid, w.privilege)
),
-- Tables created later by an owner of the research tables: the owner's default privileges for schema public
-- (its global entry, else the built-in default, plus its entry for public).
defaults AS (
  SELECT o.relowner, x.grantee, x.privilege_type
  FROM (SELECT DISTINCT relowner FROM research) o
  CROSS JOIN LATERAL (
    SELECT COALESCE((SELECT d.defaclacl FROM pg_default_acl d WHERE d.defaclrole = o.relowner
                       AND d.defaclnamespace = 0 AND d.defaclobjtype = 'r'), acldefault('r', o.relowner)) AS acl
    UNION ALL
    SELECT d.defaclacl FROM pg_default_acl d WHERE d.defaclrole = o.relowner
      AND d.defaclnamespace = CAST('public' AS regnamespace) AND d.defaclobjtype = 'r'
  ) a
  CROSS JOIN LATERAL aclexplode(a.acl) x
),
missing_defaults AS (
  SELECT 'new tables of ' || pg_get_userbyid(o.relowner) || ' lack ' || w.privilege AS gap
  FROM (SELECT DISTINCT relowner FROM research) o CROSS JOIN wanted w
  WHERE NOT EXISTS (
    SELECT 1 FROM defaults d WHERE d.relowner = o.relowner AND d.privilege_type = w.privilege
      AND CASE WHEN d.grantee = 0 THEN true ELSE pg_has_role('torghut_app', d.grantee, 'USAGE') END)
)
SELECT CASE WHEN (SELECT COUNT(*) FROM research) = 0 THEN 'no research_* tables in schema public'
            ELSE COALESCE((SELECT string_agg(gap, ', ' ORDER BY gap)
                           FROM (SELECT gap FROM missing UNION ALL SELECT gap FROM missing_defaults) g), '') END AS value
""".strip()
"""Empty when ``torghut_app`` holds the four privileges on every research table now and on the ones their owners
create later (default privileges); else each gap, e.g. ``research_attempts lacks INSERT`` or
``new tables of torghut_app lack INSERT``."""

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
# Fresh rows: those within the window of the newest one (the API answers newest first). History the backfill
# could not derive (no route marker at all) stays 'unknown' and is reported by route-backfill; it must not fail
# the executions-api check of a correct release.
_FRESH = (
    "(has(result[0].created_at) ? result.filter(e, has(e.created_at) &&"
    " timestamp(e.created_at) >= timestamp(result[0].created_at) - duration('900s')) : result)"
)
EXECUTIONS_SUCCESS = f"size(result) > 0 && {_FRESH}.all(e, {_ROUTE_SET})"
EXECUTIONS_FAILURE = f"size(result) > 0 && {_FRESH}.exists(e, {_ROUTE_UNSET})"

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


def _research_writes(mode: str) -> dict[str, object]:
    """Research rows are required evidence: never waivable by promote. Lenient waits for the first lane run
    (Inconclusive, then Failed after NOT_YET_LIMIT measurements); Strict fails the first measurement without them."""
    check: dict[str, object] = {
        "name": "research-writes",
        "postgres": {"query": RESEARCH_WRITES_SQL},
        "successCondition": "result >= 1",
        "waivable": False,
    }
    if mode == "Strict":
        return check
    return {**check, "failureCondition": "false", "inconclusiveLimit": NOT_YET_LIMIT}


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
        _research_writes(spec.research_mode),
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
