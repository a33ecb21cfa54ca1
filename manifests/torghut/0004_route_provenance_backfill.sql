-- torghut-rollout: repeatable
-- torghut-rollout: backfill table=public.executions
--
-- Route/grant pack, file 4 of 4: execution route provenance, backfilled by Torghut's own rules, one batch at a time.
--
-- A backfill file: the migrator runs it once per batch of public.executions, keyset by the primary key id in
-- ascending order, each batch in its own short transaction in which it first sets (transaction-local) the settings
-- torghut_rollout.batch_first and torghut_rollout.batch_last to the batch's first and last id. The statement reads
-- and updates only the rows with id BETWEEN those two (CTE scope: the UPDATE joins its rows by id), so it holds
-- ROW EXCLUSIVE on the table (which blocks no insert, update or read of the service) and row locks on one batch's
-- changed rows, for one batch's time. Progress is committed with each batch: a killed migrator resumes at the next
-- batch. Run outside the migrator (psql -f) the file fails at once: the two settings are unset.
--
-- A repeatable file: re-applied whenever its checksum changes (that is how a corrected backfill ships) and
-- re-run once after the new image is available (the rollout's catch-up), so rows the old image wrote between the
-- migration and the rollout get their provenance too. Safe to run any number of times: a run that finds nothing
-- to change updates no row.
--
-- The columns come from 0002 and their indexes from 0003. This file sets execution_expected_adapter,
-- execution_actual_adapter, execution_fallback_count and execution_fallback_reason to what the service itself
-- (app/trading/route_metadata.py) would have written for the row's raw_order. The rules, and the reference they
-- are tested against row by row, are in cluster/torghut_localstack/route_rules.py. In short:
--     * text markers: JSON strings only, trimmed as Python's str.strip() does, empty is missing, case kept,
--       exactly alpaca_fallback becomes alpaca
--     * expected: the column when usable (the submit-time choice), else raw_order._execution_route_expected
--     * actual: the column when usable (kept: written at fill time), else the first of _execution_route_actual,
--       _execution_adapter, execution_actual_adapter, _execution_route_expected, execution_expected_adapter,
--       else expected. No expected at all: expected = actual.
--     * count and reason from _execution_fallback_count (read like Python's int()) and
--       _execution_fallback_reason / _fallback_reason, normalised as the service does
--     * nothing known: unknown / unknown, count 0, reason NULL
--     * a column that is NULL, empty, whitespace or unknown is missing. Both adapter columns usable: the row is
--       kept, except that alpaca_fallback in a column becomes alpaca.
--     * a value longer than its column (or a count above 2^53) leaves that row unchanged (skipped) instead of
--       aborting the file. The route-backfill check reports skipped rows, count and share.
--     * updated_at is not touched (the backfill is metadata, not a broker update).
--
-- No BEGIN/COMMIT (the migrator owns each batch's transaction), no CREATE INDEX CONCURRENTLY. No semicolon inside
-- the statement, no percent sign, no bind-parameter syntax.

-- The UPDATE joins the changed rows by id only, on purpose: a second BETWEEN on e would give e the planner's
-- estimate of a batch range inside one histogram bucket of the uuid key (1 row: uuid ranges are not interpolated),
-- and the planner would then loop over e and rescan the materialized changes for each row, quadratic in the batch
-- size. Without it the changed rows drive the join and each looks its row up by the primary key.
--
-- The route rules (every CTE after scope): the same text is the core of the torghut-completion preset's
-- route-backfill check (torghut_operator.presets.ROUTE_RULES_CTE, kept identical by a unit test), whose scope is
-- the whole table.
WITH
scope AS (
    -- This batch: the executions between the batch's first and last id (set by the migrator).
    SELECT * FROM public.executions AS x
    WHERE x.id BETWEEN CAST(current_setting('torghut_rollout.batch_first') AS uuid)
        AND CAST(current_setting('torghut_rollout.batch_last') AS uuid)
),
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
UPDATE public.executions AS e
SET
    execution_expected_adapter = c.new_expected,
    execution_actual_adapter = c.new_actual,
    execution_fallback_count = c.new_count,
    execution_fallback_reason = c.new_reason
FROM changes AS c
WHERE c.id = e.id AND c.changed;
