"""Migrate-stage postconditions against a real PostgreSQL 15 loaded with the Torghut-like schema (research tables
on which torghut_app has no privilege, several long Alembic heads)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from torghut_localstack import sql_pack
from torghut_localstack.ports import free_port
from torghut_localstack.postgres import PostgresServer
from torghut_localstack.torghut_db import (
    APP_ROLE,
    DEFAULT_HEADS,
    LATER_RESEARCH_TABLES,
    RESEARCH_TABLES,
    create_database,
    create_schema,
    drop_database,
    make_engine,
)
from torghut_operator.adapters.postgres.engine import pg_engine
from torghut_operator.adapters.postgres.expectations import (
    ALEMBIC_HEADS,
    check_alembic_heads,
    check_grants,
    run_expectations,
)
from torghut_operator.adapters.postgres.migrator import SqlMigrator
from torghut_operator.core.api.spec import Check, Expectations, GrantExpectation
from torghut_operator.core.observations import ExpectationOutcome

pytestmark = pytest.mark.integration

RESEARCH = (*RESEARCH_TABLES, *LATER_RESEARCH_TABLES)
"""Every research_* table of the schema: 0006's five and 0026's four (owned by postgres, which created them)."""
LONG_HEAD = "0012_" + "x" * 123  # 128 characters, the width of alembic_version.version_num
CRUD = ["SELECT", "INSERT", "UPDATE", "DELETE"]


@pytest.fixture
def dsn(postgres: PostgresServer) -> Iterator[str]:
    """A fresh database per test holding the pre-0007 Torghut schema."""
    name = f"expect_{uuid.uuid4().hex[:16]}"
    create_database(postgres.dsn(), name)
    engine = make_engine(postgres.dsn(name))
    try:
        create_schema(engine)
    finally:
        engine.dispose()
    yield postgres.dsn(name)
    drop_database(postgres.dsn(), name)


@pytest.fixture
def role(postgres: PostgresServer, dsn: str) -> Iterator[str]:
    """A role of its own per test (roles are cluster-wide), dropped after the test's database."""
    name = f"app_{uuid.uuid4().hex[:12]}"
    postgres.create_role(name, login=False)
    yield name
    drop_database(postgres.dsn(), dsn.rsplit("/", 1)[1])
    postgres.execute(f'DROP ROLE "{name}"')


def sql(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True, options="-c statement_timeout=10000") as conn:
        for statement in statements:
            conn.execute(statement)


def defaults(grantee: str, privileges: str = "SELECT, INSERT, UPDATE, DELETE") -> str:
    """Default privileges on the tables the research tables' owner (postgres) creates later."""
    return f"ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT {privileges} ON TABLES TO {grantee}"


def grant(role: str, tables: str = "research_*", privileges: list[str] | None = None) -> GrantExpectation:
    return GrantExpectation.model_validate({"role": role, "tables": tables, "privileges": privileges or CRUD})


# -- Alembic heads ----------------------------------------------------------------------------------------------


def test_several_long_heads_present(dsn: str) -> None:
    sql(dsn, f"INSERT INTO alembic_version VALUES ('{LONG_HEAD}')")

    result = check_alembic_heads(dsn, [*DEFAULT_HEADS, LONG_HEAD])

    assert result == ExpectationOutcome(ALEMBIC_HEADS, True, result.message)
    assert LONG_HEAD in result.message


def test_extra_heads_are_allowed_and_named(dsn: str) -> None:
    result = check_alembic_heads(dsn, [DEFAULT_HEADS[0]])

    assert result.passed
    assert f"(and {DEFAULT_HEADS[1]})" in result.message


def test_missing_head_names_missing_and_present(dsn: str) -> None:
    result = check_alembic_heads(dsn, [DEFAULT_HEADS[0], LONG_HEAD])

    assert not result.passed
    assert not result.error
    assert result.message == f"alembic_version lacks {LONG_HEAD}; present: {', '.join(sorted(DEFAULT_HEADS))}"


def test_empty_alembic_version(dsn: str) -> None:
    sql(dsn, "DELETE FROM alembic_version")

    result = check_alembic_heads(dsn, DEFAULT_HEADS)

    assert not result.passed
    assert not result.error
    assert "present: none (empty)" in result.message


def test_missing_alembic_version_table(dsn: str) -> None:
    sql(dsn, "DROP TABLE alembic_version")

    result = check_alembic_heads(dsn, DEFAULT_HEADS)

    assert not result.passed
    assert not result.error
    assert "table alembic_version does not exist" in result.message


def test_no_expected_heads_is_not_a_pass(dsn: str) -> None:
    assert not check_alembic_heads(dsn, []).passed


# -- grants -----------------------------------------------------------------------------------------------------


def test_torghut_app_lacks_research_grants_before_0007(dsn: str) -> None:
    result = check_grants(dsn, grant(APP_ROLE))

    assert not result.passed
    assert not result.error
    for table in RESEARCH:
        assert f"{APP_ROLE} lacks SELECT, INSERT, UPDATE, DELETE on {table}" in result.message
    assert f"tables postgres creates later would lack SELECT, INSERT, UPDATE, DELETE for {APP_ROLE}" in result.message
    assert "(0 of 9 tables matching research_* are fine)" in result.message


def test_grants_present(dsn: str, role: str) -> None:
    sql(dsn, *(f'GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO "{role}"' for t in RESEARCH), defaults(f'"{role}"'))

    result = check_grants(dsn, grant(role))

    assert result.passed, result.message
    assert result.message.startswith(
        f"{role} holds SELECT, INSERT, UPDATE, DELETE on all 9 tables matching research_*, and on tables created "
        "later by postgres: "
    )
    assert all(t in result.message for t in RESEARCH)


def test_grants_on_every_table_without_default_privileges_fail_naming_the_owner(dsn: str, role: str) -> None:
    sql(
        dsn,
        *(f'GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO "{role}"' for t in RESEARCH),
        defaults(f'"{role}"', "SELECT, DELETE"),
    )

    result = check_grants(dsn, grant(role))

    assert not result.passed
    assert not result.error
    assert result.message == (
        f"tables postgres creates later would lack INSERT, UPDATE for {role} (no default privileges: ALTER DEFAULT "
        f"PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT ... TO {role}) (9 of 9 tables matching research_* "
        "are fine)"
    )


def test_default_privileges_are_checked_for_every_owner(postgres: PostgresServer, dsn: str, role: str) -> None:
    owner = f"{role}_owner"
    sql(
        dsn,
        f'CREATE ROLE "{owner}" NOLOGIN',
        f'ALTER TABLE research_attempts OWNER TO "{owner}"',
        *(f'GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO "{role}"' for t in RESEARCH),
        defaults(f'"{role}"'),
    )
    try:
        result = check_grants(dsn, grant(role))
        assert not result.passed
        assert f"tables {owner} creates later would lack SELECT, INSERT, UPDATE, DELETE for {role}" in result.message
        assert "tables postgres creates later" not in result.message

        sql(dsn, f'ALTER DEFAULT PRIVILEGES FOR ROLE "{owner}" GRANT ALL ON TABLES TO "{role}"')  # a global entry
        assert check_grants(dsn, grant(role)).passed
    finally:
        sql(dsn, f'DROP OWNED BY "{owner}"')
        postgres.execute(f'DROP ROLE "{owner}"')


def test_partial_grants_name_each_table_and_privilege(dsn: str, role: str) -> None:
    sql(
        dsn,
        *(f'GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO "{role}"' for t in RESEARCH if t != "research_runs"),
        f'GRANT SELECT, DELETE ON research_runs TO "{role}"',
        defaults(f'"{role}"'),
    )

    result = check_grants(dsn, grant(role))

    assert not result.passed
    assert not result.error
    assert result.message == (
        f"{role} lacks INSERT, UPDATE on research_runs (8 of 9 tables matching research_* are fine)"
    )


def test_grants_through_membership_and_public_count(dsn: str, role: str) -> None:
    group = f"{role}_group"
    sql(
        dsn,
        f'CREATE ROLE "{group}" NOLOGIN',
        f'GRANT "{group}" TO "{role}"',
        *(f'GRANT INSERT, UPDATE ON {t} TO "{group}"' for t in RESEARCH),
        *(f"GRANT SELECT ON {t} TO PUBLIC" for t in RESEARCH),
        defaults(f'"{group}"', "INSERT, UPDATE"),
        defaults("PUBLIC", "SELECT"),
    )
    try:
        assert check_grants(dsn, grant(role, privileges=["SELECT", "INSERT", "UPDATE"])).passed
    finally:
        sql(dsn, f'DROP OWNED BY "{group}"', f'DROP ROLE "{group}"')


def test_pattern_matching_no_table_fails(dsn: str) -> None:
    result = check_grants(dsn, grant(APP_ROLE, tables="reserch_*"))

    assert not result.passed
    assert not result.error
    assert "no table in schema public matches reserch_*" in result.message


def test_missing_role_fails_clearly(dsn: str) -> None:
    result = check_grants(dsn, grant("no_such_role"))

    assert not result.passed
    assert not result.error
    assert result.message == "role no_such_role does not exist"


def test_pattern_wildcards_are_only_stars(dsn: str, role: str) -> None:
    sql(
        dsn,
        "CREATE TABLE researchxruns (id int)",  # `_` must not match any character
        'CREATE TABLE "pct%done" (id int)',
        "CREATE TABLE pctxdone (id int)",  # `%` must not match anything
        "CREATE SCHEMA other",
        "CREATE TABLE other.research_elsewhere (id int)",  # other schemas don't count
        *(f'GRANT SELECT ON {t} TO "{role}"' for t in RESEARCH),
        f'GRANT SELECT ON "pct%done" TO "{role}"',
        defaults(f'"{role}"', "SELECT"),
    )

    research = check_grants(dsn, grant(role, privileges=["SELECT"]))
    assert research.passed, research.message
    assert "researchxruns" not in research.message
    assert "research_elsewhere" not in research.message

    percent = check_grants(dsn, grant(role, tables="pct%*", privileges=["SELECT"]))
    assert percent.passed, percent.message
    assert "pctxdone" not in percent.message

    exact = check_grants(dsn, grant(role, tables="researchxruns", privileges=["SELECT"]))
    assert exact.message == f"{role} lacks SELECT on researchxruns (0 of 1 tables matching researchxruns are fine)"


def test_0007s_grants_are_not_enough_and_the_sql_pack_makes_the_grants_pass(dsn: str) -> None:
    """The migrate stage end to end: Torghut's 0007 grants on five tables leave 0026's tables and every later one
    out, and the check names them; the pack's grant file covers both."""
    migrator = SqlMigrator(dsn, connect_timeout=5, lock_timeout=5, statement_timeout=30)
    patch = "".join(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO {APP_ROLE};\n" for t in RESEARCH_TABLES)
    assert migrator.apply({"0000_torghut_0007_grants.sql": patch}, rollout="torghut/r").ok

    partial = check_grants(dsn, grant(APP_ROLE))
    assert not partial.passed
    for table in LATER_RESEARCH_TABLES:
        assert f"{APP_ROLE} lacks SELECT, INSERT, UPDATE, DELETE on {table}" in partial.message
    assert "tables postgres creates later would lack" in partial.message

    pack = {p.name: p.read_text("utf-8") for p in sql_pack.pack_files()}
    applied = migrator.apply({"0000_torghut_0007_grants.sql": patch, **pack}, rollout="torghut/r")
    assert applied.ok, applied.error

    assert check_grants(dsn, grant(APP_ROLE)).passed


# -- errors, timeouts, read-only ---------------------------------------------------------------------------------


def test_statement_timeout_is_an_error_never_a_pass(dsn: str) -> None:
    with psycopg.connect(dsn, connect_timeout=5) as blocker:
        blocker.execute("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
        result = check_alembic_heads(dsn, DEFAULT_HEADS, statement_timeout=0.3)
        blocker.rollback()

    assert not result.passed
    assert result.error
    assert result.message.startswith("could not check: ")
    assert "timeout" in result.message


def test_unreachable_database_is_an_error_without_the_password() -> None:
    dsn = f"postgresql://torghut_app:S3cret@127.0.0.1:{free_port()}/torghut"

    for result in (check_alembic_heads(dsn, DEFAULT_HEADS), check_grants(dsn, grant(APP_ROLE))):
        assert not result.passed
        assert result.error
        assert "S3cret" not in result.message


def test_checks_run_read_only_on_a_given_connection(dsn: str) -> None:
    engine = pg_engine(dsn, connect_timeout=5, statement_timeout=5, lock_timeout=5, application_name="test")
    try:
        with engine.connect() as conn:
            assert check_alembic_heads(conn, DEFAULT_HEADS).passed
            assert not conn.in_transaction()
            conn.execute(sa.text("SELECT 1"))
            with pytest.raises(ValueError, match="outside any transaction"):
                check_grants(conn, grant(APP_ROLE))
    finally:
        engine.dispose()


# -- all expectations -------------------------------------------------------------------------------------------


def expectations(**fields: Any) -> Expectations:
    return Expectations.model_validate(fields)


def sql_check(name: str) -> dict[str, Any]:
    return {"name": name, "postgres": {"query": "SELECT 1"}, "min": 1}


def reader(dsn: str, gate_reader: str) -> str:
    """The same database through the read-only gate role (run_expectations refuses a superuser)."""
    return dsn.replace("postgresql://postgres@", f"postgresql://{gate_reader}@", 1)


def test_run_expectations_one_result_each_in_order(dsn: str, gate_reader: str) -> None:
    seen: list[Check] = []

    def runner(check: Check) -> ExpectationOutcome:
        seen.append(check)
        return ExpectationOutcome(check.name, True, "measured 1 >= 1")

    results = run_expectations(
        reader(dsn, gate_reader),
        expectations(
            alembicHeads=list(DEFAULT_HEADS),
            grants=[grant(APP_ROLE).model_dump(by_alias=True), grant("nobody_here").model_dump(by_alias=True)],
            checks=[sql_check("route-null-rate")],
        ),
        connect_timeout=5,
        statement_timeout=5,
        run_check=runner,
    )

    assert [(r.name, r.passed, r.error) for r in results] == [
        (ALEMBIC_HEADS, True, False),
        (f"grants {APP_ROLE} research_*", False, False),
        ("grants nobody_here research_*", False, False),
        ("route-null-rate", True, False),
    ]
    assert [c.name for c in seen] == ["route-null-rate"]


def test_run_expectations_fails_closed(dsn: str) -> None:
    def crashing(check: Check) -> ExpectationOutcome:
        raise RuntimeError("boom")

    without_runner = run_expectations(
        dsn, expectations(checks=[sql_check("a")]), connect_timeout=5, statement_timeout=5
    )
    assert [(r.passed, r.error) for r in without_runner] == [(False, True)]

    crashed = run_expectations(
        dsn, expectations(checks=[sql_check("a")]), connect_timeout=5, statement_timeout=5, run_check=crashing
    )
    assert [(r.passed, r.error) for r in crashed] == [(False, True)]

    nothing = run_expectations(dsn, expectations(), connect_timeout=5, statement_timeout=5)
    assert [(r.name, r.passed) for r in nothing] == [("expect", False)]


def test_run_expectations_refuses_a_superuser_dsn(dsn: str) -> None:
    # The gate DSN's role is checked before any postcondition: a superuser could write through COPY whatever
    # the transaction says, so every expectation is an error naming the reason, none passes.
    results = run_expectations(
        dsn,
        expectations(alembicHeads=list(DEFAULT_HEADS), checks=[sql_check("a")]),
        connect_timeout=5,
        statement_timeout=5,
        run_check=lambda check: ExpectationOutcome(check.name, True, "measured"),
    )
    assert [(r.name, r.passed, r.error) for r in results] == [(ALEMBIC_HEADS, False, True), ("a", False, True)]
    assert all("gate DSN role postgres is a superuser" in r.message for r in results)


def test_run_expectations_unreachable_database() -> None:
    dsn = f"postgresql://u:S3cret@127.0.0.1:{free_port()}/torghut"

    results = run_expectations(
        dsn,
        expectations(alembicHeads=["a"], grants=[grant(APP_ROLE).model_dump(by_alias=True)]),
        connect_timeout=2,
        statement_timeout=2,
    )

    assert [(r.name, r.passed, r.error) for r in results] == [
        (ALEMBIC_HEADS, False, True),
        (f"grants {APP_ROLE} research_*", False, True),
    ]
    assert all("S3cret" not in r.message for r in results)
