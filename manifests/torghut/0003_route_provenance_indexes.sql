-- torghut-rollout: repeatable
-- torghut-rollout: no-transaction
--
-- Route/grant pack, file 3 of 4: the indexes on the route provenance columns, built without blocking writes.
--
-- CREATE INDEX CONCURRENTLY takes SHARE UPDATE EXCLUSIVE on public.executions: inserts, updates, deletes and
-- reads (ROW EXCLUSIVE, ROW SHARE, ACCESS SHARE) go on while the index builds, only other DDL, VACUUM and
-- another concurrent build wait. It cannot run inside a transaction block, hence the no-transaction header: the
-- migrator runs the statements one by one in autocommit, each under its lock_timeout with retries, and writes the
-- history row after the last one.
--
-- Idempotent: IF NOT EXISTS skips an index that exists. A build that failed midway leaves an INVALID index of
-- that name, which IF NOT EXISTS would keep: the migrator drops such an index concurrently and builds it again.
-- No DO block: a concurrent build cannot run inside a function.
--
-- Statements separated by semicolons at the end of lines, no percent sign, no bind-parameter syntax.

CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_executions_expected_adapter
    ON public.executions (execution_expected_adapter);

CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_executions_actual_adapter
    ON public.executions (execution_actual_adapter);
