-- torghut-rollout: repeatable
--
-- Route/grant pack, file 2 of 4: the execution route provenance columns, added only when missing.
--
-- Adds execution_expected_adapter, execution_actual_adapter (varchar 32), execution_fallback_reason (varchar 128)
-- and execution_fallback_count (bigint NOT NULL DEFAULT 0). Nothing else: the indexes are built concurrently by
-- 0003 and the rows are backfilled in batches by 0004, so this file holds its lock for an instant only.
--
-- Locks: ALTER TABLE ... ADD COLUMN takes ACCESS EXCLUSIVE on public.executions, but on PostgreSQL 11+ adding a
-- nullable column, or one with a constant default, changes only the catalog (no table rewrite, no scan): the lock
-- is held for milliseconds. It must still be granted first, so the migrator runs the file under its lock_timeout
-- and retries: a long transaction on executions makes the file wait briefly and give up, never queue the service's
-- own queries behind it for long. When the four columns exist the DO block takes no lock on the table at all
-- (ADD COLUMN IF NOT EXISTS alone would still take ACCESS EXCLUSIVE).
--
-- A repeatable file: idempotent, re-run whenever it changes and once after the new image is available.
-- Applied inside the migrator's transaction (no BEGIN/COMMIT), sent as one script, so the semicolons inside the
-- dollar-quoted DO body are fine. No percent sign, no bind-parameter syntax.

DO $$
BEGIN
    IF (
        SELECT count(*) FROM pg_catalog.pg_attribute
        WHERE attrelid = CAST('public.executions' AS regclass) AND NOT attisdropped
            AND attname IN ('execution_expected_adapter', 'execution_actual_adapter', 'execution_fallback_reason',
                'execution_fallback_count')
    ) < 4 THEN
        ALTER TABLE public.executions
            ADD COLUMN IF NOT EXISTS execution_expected_adapter varchar(32),
            ADD COLUMN IF NOT EXISTS execution_actual_adapter varchar(32),
            ADD COLUMN IF NOT EXISTS execution_fallback_reason varchar(128),
            ADD COLUMN IF NOT EXISTS execution_fallback_count bigint NOT NULL DEFAULT 0;
    END IF;
END
$$;
