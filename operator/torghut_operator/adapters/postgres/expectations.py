"""Postconditions of the migrate stage (spec.migrate.expect), checked read-only in Postgres.

Every check runs in its own READ ONLY transaction with a statement timeout and is rolled back, with the gate DSN
and its role guard: a role that is a superuser or can reach the server's programs or files is refused before any
check runs (gates.postgres.role_refusal). Fail closed: a
connection error, a timeout, a missing table, a missing role or a pattern that matches no table is never a pass.
A result with ``error=True`` means the check could not be made (worth retrying); ``error=False`` and not passed
means the database definitely does not meet the expectation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa

from torghut_operator.adapters.postgres.engine import describe_db_error, pg_engine, set_local_timeouts
from torghut_operator.adapters.postgres.gate_queries import ROLE_SQL, role_refusal
from torghut_operator.core.api.spec import Check, Expectations, GrantExpectation
from torghut_operator.core.observations import ExpectationOutcome

# Seconds; the defaults of spec.database.connectTimeout and statementTimeout.
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_STATEMENT_TIMEOUT = 10.0

ALEMBIC_HEADS = "alembic-heads"


Db = str | sa.Connection
"""A DSN (a connection is opened and closed per call) or an open connection outside any transaction."""

CheckRunner = Callable[[Check], ExpectationOutcome]
"""Measures and judges one of expect.checks (the gates package owns providers and judgement)."""


def check_alembic_heads(
    db: Db,
    heads: Sequence[str],
    *,
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> ExpectationOutcome:
    """Every revision in ``heads`` is a row of alembic_version (which may hold several heads; other rows may be
    present too). alembic_version is found through the search_path, as Alembic finds it."""
    expected = list(dict.fromkeys(heads))
    if not expected:
        return ExpectationOutcome(ALEMBIC_HEADS, False, "no Alembic heads expected: nothing to prove")

    def query(conn: sa.Connection) -> ExpectationOutcome:
        if not conn.execute(sa.text("SELECT to_regclass('alembic_version') IS NOT NULL")).scalar_one():
            return ExpectationOutcome(
                ALEMBIC_HEADS,
                False,
                f"table alembic_version does not exist (expected heads {', '.join(expected)}): Alembic never ran "
                "on this database, or not with this search_path",
            )
        present = list(conn.execute(sa.text("SELECT version_num FROM alembic_version ORDER BY 1")).scalars())
        missing = [h for h in expected if h not in present]
        if missing:
            return ExpectationOutcome(
                ALEMBIC_HEADS,
                False,
                f"alembic_version lacks {', '.join(missing)}; present: {', '.join(present) or 'none (empty)'}",
            )
        extra = [h for h in present if h not in expected]
        return ExpectationOutcome(
            ALEMBIC_HEADS,
            True,
            f"alembic_version holds {', '.join(expected)}" + (f" (and {', '.join(extra)})" if extra else ""),
        )

    return _run(db, ALEMBIC_HEADS, query, statement_timeout, connect_timeout)


def like_pattern(tables: str) -> str:
    """The LIKE pattern (escape character backslash) for a table pattern where only ``*`` is a wildcard."""
    escaped = tables.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


_ROLE_EXISTS = sa.text("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :role)")
# pg_class, not information_schema: the latter only lists tables the checking role may itself use. Partitions are
# left out (the service reaches them through their parent); views and foreign tables count as tables.
_PRIVILEGES = sa.text(
    "SELECT c.relname, p.privilege, has_table_privilege(:role, c.oid, p.privilege) "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "CROSS JOIN unnest(CAST(:privileges AS text[])) WITH ORDINALITY AS p(privilege, ord) "
    "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition "
    "AND c.relname LIKE :pattern ESCAPE '\\' "
    "ORDER BY c.relname, p.ord"
)


# A table created later in schema public by an owner of the matching tables gets that owner's default privileges:
# its global pg_default_acl entry (else the built-in default, which only names the owner) plus its entry for
# schema public. A grant to PUBLIC or to a role the checked role inherits from counts, as has_table_privilege does.
_DEFAULT_PRIVILEGES = sa.text(
    "WITH owners AS ("
    " SELECT DISTINCT c.relowner AS owner FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition"
    " AND c.relname LIKE :pattern ESCAPE '\\'), "
    "acl AS ("
    " SELECT o.owner, x.grantee, x.privilege_type FROM owners o"
    " CROSS JOIN LATERAL ("
    "  SELECT COALESCE((SELECT d.defaclacl FROM pg_default_acl d WHERE d.defaclrole = o.owner"
    "   AND d.defaclnamespace = 0 AND d.defaclobjtype = 'r'), acldefault('r', o.owner)) AS acl"
    "  UNION ALL SELECT d.defaclacl FROM pg_default_acl d WHERE d.defaclrole = o.owner"
    "   AND d.defaclnamespace = CAST('public' AS regnamespace) AND d.defaclobjtype = 'r') a"
    " CROSS JOIN LATERAL aclexplode(a.acl) x) "
    "SELECT pg_get_userbyid(o.owner), p.privilege, EXISTS ("
    " SELECT 1 FROM acl WHERE acl.owner = o.owner AND acl.privilege_type = p.privilege"
    " AND CASE WHEN acl.grantee = 0 THEN true ELSE pg_has_role(:role, acl.grantee, 'USAGE') END) "
    "FROM owners o CROSS JOIN unnest(CAST(:privileges AS text[])) WITH ORDINALITY AS p(privilege, ord) "
    "ORDER BY 1, p.ord"
)


def check_grants(
    db: Db,
    grant: GrantExpectation,
    *,
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> ExpectationOutcome:
    """``grant.role`` holds every privilege in ``grant.privileges`` (directly, through role membership or PUBLIC)
    on every table of schema public matching ``grant.tables``; at least one table must match. A pattern with ``*``
    also covers the tables created later: the default privileges of every owner of the matching tables must grant
    the same (``ALTER DEFAULT PRIVILEGES FOR ROLE owner IN SCHEMA public GRANT ... TO role``)."""
    name = _grant_name(grant)
    privileges = list(dict.fromkeys(grant.privileges))

    def query(conn: sa.Connection) -> ExpectationOutcome:
        if not conn.execute(_ROLE_EXISTS, {"role": grant.role}).scalar_one():
            return ExpectationOutcome(name, False, f"role {grant.role} does not exist")
        lacking: dict[str, list[str]] = {}
        for table, privilege, granted in conn.execute(
            _PRIVILEGES, {"role": grant.role, "privileges": privileges, "pattern": like_pattern(grant.tables)}
        ):
            missing = lacking.setdefault(table, [])
            if not granted:
                missing.append(privilege)
        if not lacking:
            return ExpectationOutcome(
                name, False, f"no table in schema public matches {grant.tables}: nothing proves the grant"
            )
        future: dict[str, list[str]] = {}
        if "*" in grant.tables:
            for owner, privilege, granted in conn.execute(
                _DEFAULT_PRIVILEGES,
                {"role": grant.role, "privileges": privileges, "pattern": like_pattern(grant.tables)},
            ):
                missing = future.setdefault(owner, [])
                if not granted:
                    missing.append(privilege)
        failing = {t: p for t, p in lacking.items() if p}
        failing_future = {o: p for o, p in future.items() if p}
        if failing or failing_future:
            gaps = [f"{grant.role} lacks {', '.join(p)} on {t}" for t, p in failing.items()]
            gaps += [
                f"tables {owner} creates later would lack {', '.join(p)} for {grant.role} (no default privileges: "
                f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT ... TO {grant.role})"
                for owner, p in failing_future.items()
            ]
            return ExpectationOutcome(
                name,
                False,
                "; ".join(gaps)
                + f" ({len(lacking) - len(failing)} of {len(lacking)} tables matching {grant.tables} are fine)",
            )
        later = f", and on tables created later by {', '.join(future)}" if future else ""
        return ExpectationOutcome(
            name,
            True,
            f"{grant.role} holds {', '.join(privileges)} on all {len(lacking)} tables matching {grant.tables}{later}: "
            + ", ".join(lacking),
        )

    return _run(db, name, query, statement_timeout, connect_timeout)


def run_expectations(
    dsn: str,
    expectations: Expectations,
    *,
    connect_timeout: float,
    statement_timeout: float,
    run_check: CheckRunner | None = None,
) -> list[ExpectationOutcome]:
    """One result per expectation, in spec order: alembic heads (when listed), each grant, each check (measured
    by ``run_check``; without one a check is not passed). All share one connection; when it can't be opened,
    every expectation is an error. Expectations that list nothing yield one failed result: nothing proven."""
    in_postgres = [
        *([ALEMBIC_HEADS] if expectations.alembic_heads else []),
        *(_grant_name(g) for g in expectations.grants),
    ]
    if not in_postgres and not expectations.checks:
        return [ExpectationOutcome("expect", False, "expect lists no alembicHeads, grants or checks: nothing proven")]
    results: list[ExpectationOutcome] = []
    if in_postgres:
        try:
            with _connect(dsn, connect_timeout, statement_timeout) as conn:
                with _read_only(conn, statement_timeout):
                    refused = role_refusal(tuple(conn.exec_driver_sql(ROLE_SQL).one()))
                if refused is not None:
                    return [
                        *(ExpectationOutcome(name, False, refused, True) for name in in_postgres),
                        *(ExpectationOutcome(c.name, False, refused, True) for c in expectations.checks),
                    ]
                if expectations.alembic_heads:
                    results.append(
                        check_alembic_heads(conn, expectations.alembic_heads, statement_timeout=statement_timeout)
                    )
                results.extend(check_grants(conn, g, statement_timeout=statement_timeout) for g in expectations.grants)
        except sa.exc.DBAPIError as exc:
            results = [_could_not_check(n, exc, dsn) for n in in_postgres]
    results.extend(_run_check(check, run_check) for check in expectations.checks)
    return results


def _run_check(check: Check, run_check: CheckRunner | None) -> ExpectationOutcome:
    if run_check is None:
        return ExpectationOutcome(check.name, False, "no runner for expect.checks was given: not measured", True)
    try:
        return run_check(check)
    except Exception as exc:  # noqa: BLE001 - an injected runner's crash must fail the check, never pass it
        return ExpectationOutcome(check.name, False, f"could not measure: {type(exc).__name__}", True)


def _run(
    db: Db,
    name: str,
    query: Callable[[sa.Connection], ExpectationOutcome],
    statement_timeout: float,
    connect_timeout: float,
) -> ExpectationOutcome:
    dsn = db if isinstance(db, str) else None
    try:
        if isinstance(db, str):
            with _connect(db, connect_timeout, statement_timeout) as conn, _read_only(conn, statement_timeout):
                return query(conn)
        with _read_only(db, statement_timeout):
            return query(db)
    except sa.exc.DBAPIError as exc:
        return _could_not_check(name, exc, dsn or "")


def _could_not_check(name: str, exc: sa.exc.DBAPIError, dsn: str) -> ExpectationOutcome:
    failure = describe_db_error(exc, dsn)
    return ExpectationOutcome(name, False, f"could not check: {failure}", True)


def _grant_name(grant: GrantExpectation) -> str:
    return f"grants {grant.role} {grant.tables}"


@contextmanager
def _connect(dsn: str, connect_timeout: float, statement_timeout: float) -> Iterator[sa.Connection]:
    engine = pg_engine(
        dsn,
        connect_timeout=connect_timeout,
        statement_timeout=statement_timeout,
        lock_timeout=statement_timeout,
        application_name="torghut-rollout expect",
    )
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


@contextmanager
def _read_only(conn: sa.Connection, statement_timeout: float) -> Iterator[None]:
    """A READ ONLY transaction with a local statement timeout, always rolled back."""
    if conn.in_transaction():
        raise ValueError("expectations need a connection outside any transaction")
    tx = conn.begin()
    try:
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        set_local_timeouts(conn, statement_timeout=statement_timeout, lock_timeout=statement_timeout)
        yield
    finally:
        tx.rollback()
