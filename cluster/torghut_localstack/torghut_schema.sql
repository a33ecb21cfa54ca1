-- State (a), "checklist": a Torghut-like schema as it stands BEFORE Torghut's migration 0007
-- (0007_autonomy_permissions_backfill_routes), the state the owners' checklist describes. For tests and
-- the demo. The newest state (b) is this file plus torghut_schema_head.sql (see torghut_db.create_schema).
--
--  * executions: every column of the real model, with the route-provenance columns present but
--    nullable and never backfilled (historical rows only carry route markers in raw_order)
--  * trade_decisions
--  * the research ledger created by 0006 (five research_* tables, no foreign keys), plus the four research
--    tables of 0026 (research_attempts, research_cost_calibrations, research_sequential_trials,
--    research_validation_tests), so "every research_* table" means more than 0007's five; research_promotions
--    WITHOUT decision_action / decision_rationale / evidence_bundle (those arrive in migration 0011)
--  * no index on executions that leads with created_at (the real chain never creates one)
--  * alembic_version widened to VARCHAR(128) (the rows, i.e. the heads, are written by the loader)
--  * the runtime role torghut_app, which may use executions / trade_decisions / alembic_version
--    but has NO privilege on the research_* tables (the bug 0007 fixes)
--
-- Loaded by torghut_localstack.torghut_db.create_schema() into an empty database. Every statement
-- is idempotent (IF NOT EXISTS) so loading twice is harmless.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'torghut_app') THEN
        CREATE ROLE torghut_app LOGIN PASSWORD 'torghut-app-local';
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL;  -- created concurrently by another database of the same cluster
END
$$;

CREATE TABLE IF NOT EXISTS alembic_version (
    version_num varchar(128) NOT NULL,
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

CREATE TABLE IF NOT EXISTS trade_decisions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    strategy_id varchar(64) NOT NULL,
    alpaca_account_label varchar(64) NOT NULL DEFAULT 'paper',
    symbol varchar(32) NOT NULL,
    timeframe varchar(16) NOT NULL,
    decision_json json NOT NULL,
    rationale text,
    decision_hash varchar(64),
    status varchar(32) NOT NULL DEFAULT 'planned',
    created_at timestamptz NOT NULL DEFAULT now(),
    executed_at timestamptz
);
CREATE INDEX IF NOT EXISTS ix_trade_decisions_created_at ON trade_decisions (created_at);
CREATE INDEX IF NOT EXISTS ix_trade_decisions_status ON trade_decisions (status);
CREATE INDEX IF NOT EXISTS ix_trade_decisions_symbol ON trade_decisions (symbol);

CREATE TABLE IF NOT EXISTS executions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    trade_decision_id uuid REFERENCES trade_decisions (id) ON DELETE SET NULL,
    alpaca_account_label varchar(64) NOT NULL DEFAULT 'paper',
    alpaca_order_id varchar(128) NOT NULL,
    client_order_id varchar(128),
    symbol varchar(32) NOT NULL,
    side varchar(8) NOT NULL,
    order_type varchar(32) NOT NULL,
    time_in_force varchar(16) NOT NULL,
    submitted_qty numeric(20, 8) NOT NULL,
    filled_qty numeric(20, 8) NOT NULL DEFAULT 0,
    avg_fill_price numeric(20, 8),
    status varchar(32) NOT NULL,
    execution_expected_adapter varchar(32),
    execution_actual_adapter varchar(32),
    execution_fallback_reason varchar(128),
    execution_fallback_count bigint NOT NULL DEFAULT 0,
    execution_correlation_id varchar(128),
    execution_idempotency_key varchar(128),
    raw_order jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    last_update_at timestamptz,
    CONSTRAINT uq_executions_account_order_id UNIQUE (alpaca_account_label, alpaca_order_id)
);
CREATE INDEX IF NOT EXISTS ix_executions_expected_adapter ON executions (execution_expected_adapter);
CREATE INDEX IF NOT EXISTS ix_executions_actual_adapter ON executions (execution_actual_adapter);
CREATE INDEX IF NOT EXISTS ix_executions_symbol ON executions (symbol);
CREATE INDEX IF NOT EXISTS ix_executions_trade_decision_id ON executions (trade_decision_id);

-- Research ledger (migration 0006): string business keys, no foreign keys.
CREATE TABLE IF NOT EXISTS research_runs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    run_id varchar(64) NOT NULL UNIQUE,
    status varchar(32) NOT NULL DEFAULT 'running',
    strategy_id varchar(64),
    strategy_name varchar(255),
    strategy_type varchar(128),
    strategy_version varchar(64),
    code_commit varchar(128),
    feature_version varchar(64),
    dataset_version varchar(64),
    dataset_from timestamptz,
    dataset_to timestamptz,
    runner_version varchar(64),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ix_research_runs_status ON research_runs (status);
CREATE INDEX IF NOT EXISTS ix_research_runs_created_at ON research_runs (created_at);

CREATE TABLE IF NOT EXISTS research_candidates (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    run_id varchar(64) NOT NULL,
    candidate_id varchar(64) NOT NULL UNIQUE,
    candidate_hash varchar(128),
    parameter_set jsonb,
    decision_count bigint NOT NULL DEFAULT 0,
    trade_count bigint NOT NULL DEFAULT 0,
    promotion_target varchar(16),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ix_research_candidates_run_id ON research_candidates (run_id);

CREATE TABLE IF NOT EXISTS research_fold_metrics (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    candidate_id varchar(64) NOT NULL,
    fold_name varchar(128) NOT NULL,
    fold_order bigint NOT NULL DEFAULT 0,
    train_start timestamptz NOT NULL,
    train_end timestamptz NOT NULL,
    test_start timestamptz NOT NULL,
    test_end timestamptz NOT NULL,
    decision_count bigint NOT NULL DEFAULT 0,
    trade_count bigint NOT NULL DEFAULT 0,
    gross_pnl numeric(20, 8),
    net_pnl numeric(20, 8),
    max_drawdown numeric(20, 8),
    cost_bps numeric(20, 8),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ix_research_fold_metrics_candidate ON research_fold_metrics (candidate_id);

CREATE TABLE IF NOT EXISTS research_stress_metrics (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    candidate_id varchar(64) NOT NULL,
    stress_case varchar(64) NOT NULL,
    metric_bundle jsonb,
    pessimistic_pnl_delta numeric(20, 8),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ix_research_stress_metrics_candidate ON research_stress_metrics (candidate_id);

CREATE TABLE IF NOT EXISTS research_promotions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    candidate_id varchar(64) NOT NULL,
    requested_mode varchar(16),
    approved_mode varchar(16),
    approver varchar(128),
    approver_role varchar(64),
    approve_reason text,
    deny_reason text,
    paper_candidate_patch_ref varchar(255),
    effective_time timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ix_research_promotions_candidate ON research_promotions (candidate_id);
CREATE INDEX IF NOT EXISTS ix_research_promotions_created_at ON research_promotions (created_at);

-- Research tables of migration 0026 (strategy factory); no Torghut migration grants anything on them.
CREATE TABLE IF NOT EXISTS research_attempts (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    attempt_id varchar(64) NOT NULL UNIQUE,
    run_id varchar(64) NOT NULL,
    candidate_hash varchar(128),
    generator_family varchar(128),
    attempt_stage varchar(64) NOT NULL,
    status varchar(32) NOT NULL,
    reason_codes jsonb,
    artifact_ref varchar(255),
    metadata_bundle jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ix_research_attempts_run_id ON research_attempts (run_id);

CREATE TABLE IF NOT EXISTS research_validation_tests (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    candidate_id varchar(64) NOT NULL,
    test_name varchar(64) NOT NULL,
    status varchar(32) NOT NULL,
    metric_bundle jsonb,
    artifact_ref varchar(255),
    computed_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT uq_research_validation_tests_candidate_name UNIQUE (candidate_id, test_name)
);

CREATE TABLE IF NOT EXISTS research_sequential_trials (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    candidate_id varchar(64) NOT NULL,
    trial_stage varchar(32) NOT NULL,
    account varchar(64) NOT NULL,
    start_at timestamptz NOT NULL,
    last_update_at timestamptz NOT NULL,
    sample_count bigint NOT NULL DEFAULT 0,
    confidence_sequence_lower numeric(20, 8),
    confidence_sequence_upper numeric(20, 8),
    posterior_edge_mean numeric(20, 8),
    posterior_edge_lower numeric(20, 8),
    status varchar(32) NOT NULL,
    reason_codes jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT uq_research_sequential_trials_candidate_stage_account UNIQUE (candidate_id, trial_stage, account)
);

CREATE TABLE IF NOT EXISTS research_cost_calibrations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    calibration_id varchar(64) NOT NULL UNIQUE,
    scope_type varchar(64) NOT NULL,
    scope_id varchar(128) NOT NULL,
    window_start timestamptz,
    window_end timestamptz,
    modeled_slippage_bps numeric(20, 8),
    realized_slippage_bps numeric(20, 8),
    modeled_shortfall_bps numeric(20, 8),
    realized_shortfall_bps numeric(20, 8),
    calibration_error_bundle jsonb,
    status varchar(32) NOT NULL,
    computed_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The runtime role may use the trading tables (it always could) ...
GRANT USAGE ON SCHEMA public TO torghut_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE executions, trade_decisions TO torghut_app;
GRANT SELECT ON TABLE alembic_version TO torghut_app;
-- ... but not the research ledger: that is what the route/grant pack (and Torghut's 0007) fix.
REVOKE ALL PRIVILEGES ON TABLE
    research_runs, research_candidates, research_fold_metrics, research_stress_metrics,
    research_promotions, research_attempts, research_cost_calibrations, research_sequential_trials,
    research_validation_tests
    FROM torghut_app;
