-- The evidence ledger, version 1: every measurement the operator judged and every stage decision it took, kept
-- for good (status keeps only the last few). Applied by torghut_operator.evidence.ledger.Ledger.ensure_schema()
-- in one transaction together with its row in torghut_rollout.ledger_schema_version.
--
-- The UNIQUE keys make recording idempotent: an operator restarted between writing the status and recording its
-- evidence records the same rows again, and INSERT ... ON CONFLICT DO NOTHING stores nothing twice.

CREATE TABLE torghut_rollout.measurements (
    id bigserial PRIMARY KEY,
    rollout_uid text NOT NULL,
    rollout_name text NOT NULL,
    namespace text NOT NULL,
    attempt integer NOT NULL,
    spec_hash text NOT NULL,
    stage text NOT NULL,
    check_name text NOT NULL,
    provider text NOT NULL,
    query_hash text NOT NULL,
    query text NOT NULL,
    value text,
    threshold text NOT NULL,
    verdict text NOT NULL,
    message text NOT NULL DEFAULT '',
    measured_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT measurements_once UNIQUE (rollout_uid, attempt, check_name, measured_at),
    CONSTRAINT measurements_query_hash_is_sha256 CHECK (query_hash ~ '^[0-9a-f]{64}$')
);
CREATE INDEX measurements_by_rollout_time ON torghut_rollout.measurements (rollout_uid, measured_at);

COMMENT ON TABLE torghut_rollout.measurements IS
    'Every measurement of a TorghutRollout check: value, threshold, verdict and query (query_hash = sha256 hex of query)';

CREATE TABLE torghut_rollout.stage_decisions (
    id bigserial PRIMARY KEY,
    rollout_uid text NOT NULL,
    rollout_name text NOT NULL,
    namespace text NOT NULL,
    attempt integer NOT NULL,
    spec_hash text NOT NULL,
    from_phase text NOT NULL,
    to_phase text NOT NULL,
    stage text NOT NULL,
    reason text NOT NULL,
    message text NOT NULL DEFAULT '',
    decided_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT stage_decisions_once UNIQUE (rollout_uid, attempt, to_phase, decided_at)
);
CREATE INDEX stage_decisions_by_rollout_time ON torghut_rollout.stage_decisions (rollout_uid, decided_at);

COMMENT ON TABLE torghut_rollout.stage_decisions IS
    'Every phase transition of a TorghutRollout: from, to, the stage it concerned, why, and when';
