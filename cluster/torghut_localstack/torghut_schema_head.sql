-- State (b), "head": what Torghut's later migrations change on top of state (a) (torghut_schema.sql).
-- Loaded after torghut_schema.sql by torghut_db.create_schema(state="head"). Idempotent. Facts from the real
-- chain (proompteng/lab services/torghut/migrations/versions):
--
--  * 0007 backfilled the route columns and granted torghut_app SELECT/INSERT/UPDATE/DELETE on the five
--    research tables of 0006; later the route columns became NOT NULL DEFAULT 'unknown' (what was still
--    NULL became 'unknown', the "missing" value from then on)
--  * 0011_autonomy_lifecycle_and_promotion_audit adds research_promotions.decision_action (NOT NULL
--    DEFAULT 'hold'), decision_rationale, evidence_bundle and the research_candidates lifecycle columns
--  * 0026_strategy_factory_research_objects adds research_attempts, research_validation_tests,
--    research_sequential_trials, research_cost_calibrations (created in torghut_schema.sql, as the research
--    branch can run ahead of 0007), and NO migration grants torghut_app anything on them
--  * 0045 adds ix_executions_trade_decision_id (already in state (a) here); still no index on executions that
--    leads with created_at
--  * extensions pgcrypto (0059, 0076) and vector (0017) are created by create_schema where available

UPDATE executions SET execution_expected_adapter = 'unknown' WHERE execution_expected_adapter IS NULL;
UPDATE executions SET execution_actual_adapter = 'unknown' WHERE execution_actual_adapter IS NULL;
ALTER TABLE executions
    ALTER COLUMN execution_expected_adapter SET DEFAULT 'unknown',
    ALTER COLUMN execution_expected_adapter SET NOT NULL,
    ALTER COLUMN execution_actual_adapter SET DEFAULT 'unknown',
    ALTER COLUMN execution_actual_adapter SET NOT NULL;

-- 0011
ALTER TABLE research_candidates
    ADD COLUMN IF NOT EXISTS lifecycle_role varchar(32) NOT NULL DEFAULT 'challenger',
    ADD COLUMN IF NOT EXISTS lifecycle_status varchar(32) NOT NULL DEFAULT 'evaluated',
    ADD COLUMN IF NOT EXISTS metadata_bundle jsonb,
    ADD COLUMN IF NOT EXISTS recommendation_bundle jsonb;
ALTER TABLE research_promotions
    ADD COLUMN IF NOT EXISTS decision_action varchar(32) NOT NULL DEFAULT 'hold',
    ADD COLUMN IF NOT EXISTS decision_rationale text,
    ADD COLUMN IF NOT EXISTS evidence_bundle jsonb,
    ADD COLUMN IF NOT EXISTS recommendation_trace_id varchar(64),
    ADD COLUMN IF NOT EXISTS successor_candidate_id varchar(64),
    ADD COLUMN IF NOT EXISTS rollback_candidate_id varchar(64);
CREATE INDEX IF NOT EXISTS ix_research_promotions_action ON research_promotions (decision_action);

-- 0026
ALTER TABLE research_runs
    ADD COLUMN IF NOT EXISTS discovery_mode varchar(64),
    ADD COLUMN IF NOT EXISTS generator_family varchar(128);
-- The four research tables of 0026 are in torghut_schema.sql: both states hold them (several heads).

-- 0007's grants on the ledger of 0006 (and nothing on the tables of 0026)
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE
    research_runs, research_candidates, research_fold_metrics, research_stress_metrics, research_promotions
    TO torghut_app;
REVOKE ALL PRIVILEGES ON TABLE
    research_attempts, research_validation_tests, research_sequential_trials, research_cost_calibrations
    FROM torghut_app;
