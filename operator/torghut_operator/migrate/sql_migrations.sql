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
