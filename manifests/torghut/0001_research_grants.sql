-- torghut-rollout: repeatable
--
-- Route/grant pack, file 1 of 2: research ledger grants for the runtime role.
--
-- Torghut's runtime role torghut_app had no privilege on the research ledger, so every research write failed
-- silently, and the service keeps adding research_* tables (migration 0026 adds four, and no migration grants
-- anything on them). This grants SELECT, INSERT, UPDATE, DELETE to torghut_app
--   1. on every table of schema public whose name starts with research_ now, and
--   2. on every table created later in schema public by the owners of those tables or by the database owner
--      (ALTER DEFAULT PRIVILEGES FOR ROLE ... IN SCHEMA public), so the next research table is covered as soon
--      as the service's own migration creates it.
--
-- A repeatable file: re-run after the new image is available (the rollout's catch-up) and whenever it changes.
-- GRANT and ALTER DEFAULT PRIVILEGES are idempotent. Fails, and so rolls back, when the role torghut_app is
-- missing, when there is no research_* table at all (a broken precondition, not a pass) or when the migration role
-- may not act for an owner (ALTER DEFAULT PRIVILEGES FOR ROLE needs membership in that role).
--
-- Applied inside the operator's own transaction (no BEGIN/COMMIT). The DO body is dollar-quoted: the file is sent
-- as one script, so its semicolons are fine (psql handles them too). No percent sign (the LIKE wildcard is avoided
-- on purpose) and no bind-parameter syntax.

DO $$
DECLARE
    research regclass;
    owner_role name;
    granted integer := 0;
BEGIN
    FOR research IN
        SELECT CAST(c.oid AS regclass)
        FROM pg_catalog.pg_class AS c
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition
            AND left(c.relname, 9) = 'research_'
        ORDER BY c.relname
    LOOP
        EXECUTE 'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE ' || CAST(research AS text) || ' TO torghut_app';
        granted := granted + 1;
    END LOOP;
    IF granted = 0 THEN
        RAISE EXCEPTION 'no research_* table in schema public: nothing to grant torghut_app';
    END IF;

    FOR owner_role IN
        SELECT pg_catalog.pg_get_userbyid(c.relowner)
        FROM pg_catalog.pg_class AS c
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition
            AND left(c.relname, 9) = 'research_'
        UNION
        SELECT pg_catalog.pg_get_userbyid(d.datdba) FROM pg_catalog.pg_database AS d
        WHERE d.datname = current_database()
    LOOP
        EXECUTE 'ALTER DEFAULT PRIVILEGES FOR ROLE ' || quote_ident(owner_role)
            || ' IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO torghut_app';
    END LOOP;
END
$$;
