-- Route/grant pack, file 2 of 2: execution route provenance.
--
-- 1. Make sure the route columns and their indexes exist (Torghut's migration 0006 added them,
--    nullable, plus execution_fallback_count NOT NULL DEFAULT 0).
-- 2. Backfill execution_expected_adapter / execution_actual_adapter from the route markers kept in
--    raw_order, normalize alpaca_fallback to alpaca, and record fallbacks.
--
-- Rules (the same as torghut_localstack.torghut_db.resolve_route)
--  * a value counts only if, trimmed and lower-cased, it matches ^[a-z][a-z0-9_.-]{0,31}$ and is not
--    'unknown' (NULL, '', 'unknown' and junk are "missing")
--  * a valid value already in a column wins over the markers (Torghut wrote it at fill time)
--  * expected = first of raw_order._execution_route_expected, raw_order.execution_expected_adapter
--  * actual = first of raw_order._execution_route_actual, raw_order._execution_adapter,
--    raw_order.execution_actual_adapter
--  * alpaca_fallback becomes alpaca
--  * no expected marker at all: expected = actual, unless the actual marker was alpaca_fallback
--    (then the expected adapter is unknowable and stays as it is)
--  * expected <> actual: execution_fallback_count at least 1 and, when empty,
--    execution_fallback_reason = fallback_from_<expected>_to_<actual>
--  * rows without any usable marker are left alone (NULL or 'unknown' stays, and keeps counting
--    in the route null rate: the backfill never invents provenance)
--  * updated_at is not touched (the backfill is metadata, not a broker update)
--
-- Only rows whose values actually change are updated, so a second run updates zero rows.
-- Applied by the operator's sql migration mode, once, inside the operator's own transaction (no
-- BEGIN/COMMIT, no CREATE INDEX CONCURRENTLY). The statements contain no bind-parameter syntax,
-- no percent sign and no semicolon inside a statement, so any executor can run them.

ALTER TABLE public.executions ADD COLUMN IF NOT EXISTS execution_expected_adapter varchar(32);
ALTER TABLE public.executions ADD COLUMN IF NOT EXISTS execution_actual_adapter varchar(32);
ALTER TABLE public.executions ADD COLUMN IF NOT EXISTS execution_fallback_reason varchar(128);
ALTER TABLE public.executions ADD COLUMN IF NOT EXISTS execution_fallback_count bigint NOT NULL DEFAULT 0;

CREATE INDEX IF NOT EXISTS ix_executions_expected_adapter
    ON public.executions (execution_expected_adapter);
CREATE INDEX IF NOT EXISTS ix_executions_actual_adapter
    ON public.executions (execution_actual_adapter);

WITH raw AS (
    -- Only rows that may need work: a missing, non-normalized or alpaca_fallback adapter, or a
    -- fallback without its count/reason. Rows already complete are skipped without reading raw_order.
    SELECT
        e.id,
        e.execution_expected_adapter AS cur_expected,
        e.execution_actual_adapter AS cur_actual,
        e.execution_fallback_count AS cur_count,
        e.execution_fallback_reason AS cur_reason,
        lower(btrim(e.execution_expected_adapter)) AS c_expected,
        lower(btrim(e.execution_actual_adapter)) AS c_actual,
        lower(btrim(e.raw_order ->> '_execution_route_expected')) AS m_route_expected,
        lower(btrim(e.raw_order ->> 'execution_expected_adapter')) AS m_response_expected,
        lower(btrim(e.raw_order ->> '_execution_route_actual')) AS m_route_actual,
        lower(btrim(e.raw_order ->> '_execution_adapter')) AS m_adapter,
        lower(btrim(e.raw_order ->> 'execution_actual_adapter')) AS m_response_actual
    FROM public.executions AS e
    WHERE e.execution_expected_adapter IS NULL
        OR e.execution_actual_adapter IS NULL
        OR e.execution_expected_adapter !~ '^[a-z][a-z0-9_.-]{0,31}$'
        OR e.execution_actual_adapter !~ '^[a-z][a-z0-9_.-]{0,31}$'
        OR e.execution_expected_adapter IN ('unknown', 'alpaca_fallback')
        OR e.execution_actual_adapter IN ('unknown', 'alpaca_fallback')
        OR (
            e.execution_expected_adapter <> e.execution_actual_adapter
            AND (
                e.execution_fallback_count < 1
                OR NULLIF(btrim(e.execution_fallback_reason), '') IS NULL
            )
        )
),
valid AS (
    SELECT
        id,
        cur_expected,
        cur_actual,
        cur_count,
        cur_reason,
        CASE WHEN c_expected ~ '^[a-z][a-z0-9_.-]{0,31}$' AND c_expected <> 'unknown'
            THEN c_expected END AS c_expected,
        CASE WHEN c_actual ~ '^[a-z][a-z0-9_.-]{0,31}$' AND c_actual <> 'unknown'
            THEN c_actual END AS c_actual,
        CASE WHEN m_route_expected ~ '^[a-z][a-z0-9_.-]{0,31}$' AND m_route_expected <> 'unknown'
            THEN m_route_expected END AS m_route_expected,
        CASE WHEN m_response_expected ~ '^[a-z][a-z0-9_.-]{0,31}$' AND m_response_expected <> 'unknown'
            THEN m_response_expected END AS m_response_expected,
        CASE WHEN m_route_actual ~ '^[a-z][a-z0-9_.-]{0,31}$' AND m_route_actual <> 'unknown'
            THEN m_route_actual END AS m_route_actual,
        CASE WHEN m_adapter ~ '^[a-z][a-z0-9_.-]{0,31}$' AND m_adapter <> 'unknown'
            THEN m_adapter END AS m_adapter,
        CASE WHEN m_response_actual ~ '^[a-z][a-z0-9_.-]{0,31}$' AND m_response_actual <> 'unknown'
            THEN m_response_actual END AS m_response_actual
    FROM raw
),
picked AS (
    SELECT
        id,
        cur_expected,
        cur_actual,
        cur_count,
        cur_reason,
        COALESCE(c_expected, m_route_expected, m_response_expected) AS expected_raw,
        COALESCE(c_actual, m_route_actual, m_adapter, m_response_actual) AS actual_raw
    FROM valid
),
resolved AS (
    SELECT
        id,
        cur_expected,
        cur_actual,
        cur_count,
        cur_reason,
        CASE
            WHEN expected_raw = 'alpaca_fallback' THEN 'alpaca'
            WHEN expected_raw IS NOT NULL THEN expected_raw
            WHEN actual_raw <> 'alpaca_fallback' THEN actual_raw
        END AS expected,
        CASE WHEN actual_raw = 'alpaca_fallback' THEN 'alpaca' ELSE actual_raw END AS actual
    FROM picked
),
target AS (
    SELECT
        id,
        cur_expected,
        cur_actual,
        cur_count,
        cur_reason,
        COALESCE(expected, cur_expected) AS new_expected,
        COALESCE(actual, cur_actual) AS new_actual,
        CASE
            WHEN expected <> actual THEN GREATEST(cur_count, 1)
            ELSE cur_count
        END AS new_count,
        CASE
            WHEN expected <> actual AND NULLIF(btrim(cur_reason), '') IS NULL
                THEN 'fallback_from_' || expected || '_to_' || actual
            ELSE cur_reason
        END AS new_reason
    FROM resolved
)
UPDATE public.executions AS e
SET
    execution_expected_adapter = t.new_expected,
    execution_actual_adapter = t.new_actual,
    execution_fallback_count = t.new_count,
    execution_fallback_reason = t.new_reason
FROM target AS t
WHERE t.id = e.id
    AND (
        t.cur_expected IS DISTINCT FROM t.new_expected
        OR t.cur_actual IS DISTINCT FROM t.new_actual
        OR t.cur_count IS DISTINCT FROM t.new_count
        OR t.cur_reason IS DISTINCT FROM t.new_reason
    );
