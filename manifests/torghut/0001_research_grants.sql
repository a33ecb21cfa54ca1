-- Route/grant pack, file 1 of 2: research ledger grants for the runtime role.
--
-- Torghut's runtime role torghut_app had no privilege on the research ledger created by migration
-- 0006, so every research write failed silently. This grants it the same four privileges Torghut's
-- migration 0007 grants, on exactly the five research_* tables.
--
-- Applied by the operator's sql migration mode: once, inside the operator's own transaction
-- (no BEGIN/COMMIT here). GRANT is idempotent, so re-running changes nothing. Fails, and so rolls
-- back, when the role or one of the tables is missing: that is a broken precondition, not a pass.

GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE
    public.research_runs,
    public.research_candidates,
    public.research_fold_metrics,
    public.research_stress_metrics,
    public.research_promotions
TO torghut_app;
