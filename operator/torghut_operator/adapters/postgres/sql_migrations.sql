-- The history of SQL files applied by the TorghutRollout operator (spec.migrate.sql).
-- One row per file, inserted in the same transaction as the file itself: a row exists if and only if the
-- file's statements are committed. Created by the operator under its advisory lock, only when missing.
CREATE SCHEMA IF NOT EXISTS torghut_rollout;

CREATE TABLE IF NOT EXISTS torghut_rollout.sql_migrations (
    name text PRIMARY KEY,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text,
    duration_ms integer
);

COMMENT ON TABLE torghut_rollout.sql_migrations IS
    'SQL files applied by the TorghutRollout operator; checksum is the sha256 (hex) of the file''s exact UTF-8 bytes';

-- Runs of files that take more than one transaction: a batched backfill (its progress, committed with each batch,
-- so a killed operator resumes at the next batch) and each file of a catch-up pass (so the slices of one pass run a
-- file once). run is 'apply' for a file's own application, or the catch-up pass's identity.
CREATE TABLE IF NOT EXISTS torghut_rollout.sql_runs (
    run text NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_by text,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    backfill_table text,
    last_key text,
    rows_done bigint NOT NULL DEFAULT 0,
    rows_total bigint NOT NULL DEFAULT 0,
    batches bigint NOT NULL DEFAULT 0,
    batch_size integer,
    PRIMARY KEY (run, name)
);

COMMENT ON TABLE torghut_rollout.sql_runs IS
    'Progress of batched backfills and of catch-up passes of the TorghutRollout operator; last_key is the last key '
    'of the last committed batch (text)';
