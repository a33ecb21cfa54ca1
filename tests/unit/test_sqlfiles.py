"""The pure half of the SQL-file migrator (adapters.postgres.migrator): planning, checksums, the transaction-control scan, redaction."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from torghut_operator.adapters.postgres.engine import redact
from torghut_operator.adapters.postgres.migrator import (
    LOCK_KEY,
    AppliedRecord,
    SqlMigrator,
    checksum,
    is_repeatable,
    plan_files,
    transaction_control,
)
from torghut_operator.core.api.status import AppliedFile

pytestmark = pytest.mark.unit

AT = datetime(2026, 11, 24, 12, 30, 5, 123456, tzinfo=UTC)
A = "CREATE TABLE a (id int);\n"
B = "CREATE TABLE b (id int);\n"
C = "INSERT INTO a VALUES (1);\n"


def rec(name: str, content: str) -> AppliedRecord:
    return AppliedRecord(name=name, checksum=checksum(content), applied_at=AT, applied_by="ns/r")


def test_lock_key_is_derived_from_the_table_name() -> None:
    digest = hashlib.sha256(b"torghut_rollout.sql_migrations").digest()
    assert int.from_bytes(digest[:8], "big", signed=True) == LOCK_KEY
    assert -(2**63) <= LOCK_KEY < 2**63


def test_checksum_is_of_the_exact_bytes() -> None:
    assert checksum(A) == hashlib.sha256(A.encode()).hexdigest()
    assert checksum("SELECT 1;\n") != checksum("SELECT 1;\r\n")
    assert checksum("SELECT 1;\n") != checksum("SELECT 1;")
    assert checksum("SELECT 'é';") == hashlib.sha256("SELECT 'é';".encode()).hexdigest()


@pytest.mark.parametrize(
    ("files", "history", "pending", "applied", "missing", "ignored"),
    [
        pytest.param({}, [], [], [], [], [], id="nothing"),
        pytest.param({"0002_b.sql": B, "0001_a.sql": A}, [], ["0001_a.sql", "0002_b.sql"], [], [], [], id="fresh"),
        pytest.param(
            {"10.sql": B, "9.sql": A, "09.sql": C}, [], ["09.sql", "10.sql", "9.sql"], [], [], [], id="lexical-order"
        ),
        pytest.param(
            {"0001_a.sql": A, "README.md": "docs", "0002_b.SQL": B, "notes.sql.txt": C},
            [],
            ["0001_a.sql"],
            [],
            [],
            ["0002_b.SQL", "README.md", "notes.sql.txt"],
            id="only-dot-sql-keys",
        ),
        pytest.param(
            {"0001_a.sql": A, "0002_b.sql": B},
            [rec("0001_a.sql", A)],
            ["0002_b.sql"],
            ["0001_a.sql"],
            [],
            [],
            id="one-applied",
        ),
        pytest.param(
            {"0001_a.sql": A, "0002_b.sql": B},
            [rec("0001_a.sql", A), rec("0002_b.sql", B)],
            [],
            ["0001_a.sql", "0002_b.sql"],
            [],
            [],
            id="all-applied",
        ),
        pytest.param(
            {"0003_c.sql": C},
            [rec("0001_a.sql", A), rec("0002_b.sql", B)],
            ["0003_c.sql"],
            [],
            ["0001_a.sql", "0002_b.sql"],
            [],
            id="pruned-files-are-a-warning",
        ),
        pytest.param({"0001_a.sql": ""}, [], ["0001_a.sql"], [], [], [], id="empty-file"),
    ],
)
def test_plan(
    files: dict[str, str],
    history: list[AppliedRecord],
    pending: list[str],
    applied: list[str],
    missing: list[str],
    ignored: list[str],
) -> None:
    plan = plan_files(files, history)
    assert plan.ok, plan.errors
    assert [f.name for f in plan.pending] == pending
    assert all(f.content == files[f.name] and f.checksum == checksum(f.content) for f in plan.pending)
    assert [r.name for r in plan.applied] == applied
    assert [r.name for r in plan.missing] == missing
    assert list(plan.ignored) == ignored
    assert len(plan.warnings) == len(missing)
    for name, warning in zip(missing, plan.warnings, strict=True):
        assert name in warning
        assert "no longer in the ConfigMap" in warning


@pytest.mark.parametrize(
    ("files", "history", "fragments"),
    [
        pytest.param(
            {"0001_a.sql": A + "-- edited\n"},
            [rec("0001_a.sql", A)],
            ["0001_a.sql", checksum(A)[:12], checksum(A + "-- edited\n")[:12], "must never change"],
            id="checksum-changed",
        ),
        pytest.param(
            {"0001_a.sql": A.replace("\n", "\r\n")},
            [rec("0001_a.sql", A)],
            ["0001_a.sql", checksum(A)[:12]],
            id="line-endings-are-a-change",
        ),
        pytest.param(
            {"0001_a.sql": A, "0002_b.sql": B, "0003_c.sql": C},
            [rec("0001_a.sql", A), rec("0003_c.sql", C)],
            ["0002_b.sql", "sorts before 0003_c.sql"],
            id="out-of-order",
        ),
        pytest.param(
            {"0002_renamed.sql": A},
            [rec("0001_a.sql", A)],
            ["0002_renamed.sql", "0001_a.sql", "run twice"],
            id="renamed",
        ),
        pytest.param(
            {"0001_a.sql": "BEGIN;\nCREATE TABLE a (id int);\nCOMMIT;\n"},
            [],
            ["0001_a.sql line 1: BEGIN", "0001_a.sql line 3: COMMIT"],
            id="transaction-control",
        ),
    ],
)
def test_plan_errors(files: dict[str, str], history: list[AppliedRecord], fragments: list[str]) -> None:
    plan = plan_files(files, history)
    assert not plan.ok
    text = "\n".join(plan.errors)
    for fragment in fragments:
        assert fragment in text


def test_every_error_is_reported_at_once() -> None:
    plan = plan_files({"0001_a.sql": A + " ", "0002_b.sql": "COMMIT;"}, [rec("0001_a.sql", A), rec("0000_x.sql", "x")])
    assert len(plan.errors) == 2


def test_identical_content_under_two_present_names_is_fine() -> None:
    plan = plan_files({"0001_grant.sql": A, "0002_grant_again.sql": A}, [rec("0001_grant.sql", A)])
    assert plan.ok
    assert [f.name for f in plan.pending] == ["0002_grant_again.sql"]


@pytest.mark.parametrize(
    ("sql", "found"),
    [
        ("CREATE TABLE t (id int);", []),
        ("begin;", [(1, "BEGIN")]),
        ("BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE; SELECT 1;", [(1, "BEGIN")]),
        ("SELECT 1;\n\n  start transaction;", [(3, "START TRANSACTION")]),
        ("SELECT 1; COMMIT", [(1, "COMMIT")]),
        ("SELECT 1;\nCommit Work;", [(2, "COMMIT")]),
        ("END;", [(1, "END")]),
        ("ABORT;", [(1, "ABORT")]),
        ("ROLLBACK;", [(1, "ROLLBACK")]),
        ("ROLLBACK AND CHAIN;", [(1, "ROLLBACK")]),
        ("PREPARE TRANSACTION 'x';", [(1, "PREPARE TRANSACTION")]),
        ("COMMIT PREPARED 'x';", [(1, "COMMIT")]),
        ("SAVEPOINT s; SELECT 1; ROLLBACK TO SAVEPOINT s; ROLLBACK TO s; RELEASE SAVEPOINT s;", []),
        ("PREPARE q AS SELECT 1;", []),
        ("-- COMMIT;\nSELECT 1; /* COMMIT; /* nested */ still; COMMIT; */ SELECT 2;", []),
        ("SELECT 'x; COMMIT'; SELECT 'it''s; commit';", []),
        ("SELECT E'\\'; commit;'; SELECT 1;", []),
        ("SELECT e'it\\'s'; COMMIT;", [(1, "COMMIT")]),
        ('SELECT 1 AS "a;commit"; SELECT 2 AS "x"";commit";', []),
        ("DO $$ BEGIN PERFORM 1; COMMIT; END $$;", []),
        ("DO $body$ BEGIN RAISE NOTICE '$$'; END; $body$; COMMIT;", [(1, "COMMIT")]),
        ("SELECT $1; COMMIT;", [(1, "COMMIT")]),
        ("CREATE TABLE a$b (end$ int); commit;", [(1, "COMMIT")]),
        ("CREATE RULE r AS ON INSERT TO t DO INSTEAD (INSERT INTO u VALUES (1); INSERT INTO v VALUES (2));", []),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT CASE WHEN true THEN 1 END;\n"
            "  SELECT 2;\nEND;\nCOMMIT;",
            [(6, "COMMIT")],
        ),
        (
            "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); END; SELECT 1;",
            [],
        ),
        ("SELECT CASE WHEN x THEN 1 END FROM t; END;", [(1, "END")]),
        ("SELECT 'unterminated; COMMIT;", []),
    ],
)
def test_transaction_control(sql: str, found: list[tuple[int, str]]) -> None:
    assert transaction_control(sql) == found


@pytest.mark.parametrize(
    ("text", "dsn", "leaked"),
    [
        (
            'missing "=" after "postgresql://torghut:s3cr%40t@db:5432/torghut" in connection info string',
            "postgresql://torghut:s3cr%40t@db:5432/torghut",
            ["s3cr", "postgresql://torghut:s3cr"],
        ),
        ("password was s3cr@t and s3cr%40t", "postgresql://torghut:s3cr%40t@db/torghut", ["s3cr"]),
        ("in host=db password=hunter2 dbname=x", "host=db password=hunter2 dbname=x", ["hunter2"]),
        ("other postgres://u:pw@h/db", "not a dsn at all", ["pw@"]),
    ],
)
def test_redact(text: str, dsn: str, leaked: list[str]) -> None:
    cleaned = redact(text, dsn)
    for secret in leaked:
        assert secret not in cleaned
    assert "***" in cleaned


def test_redact_leaves_plain_messages_alone() -> None:
    assert redact('relation "t" does not exist', "postgresql://u:p@h/db") == 'relation "t" does not exist'


def test_applied_record_in_status() -> None:
    assert rec("0001_a.sql", A).as_status() == AppliedFile(
        name="0001_a.sql", checksum=checksum(A), applied_at="2026-11-24T12:30:05Z"
    )


@pytest.mark.parametrize(("connect", "lock", "statement"), [(0, 1, 1), (1, 0, 1), (1, 1, 0), (-1, 1, None)])
def test_migrator_rejects_non_positive_timeouts(connect: float, lock: float, statement: float | None) -> None:
    with pytest.raises(ValueError, match="positive"):
        SqlMigrator("postgresql://h/db", connect_timeout=connect, lock_timeout=lock, statement_timeout=statement)


def test_migrator_does_not_connect_when_built() -> None:
    SqlMigrator("postgresql://nowhere.invalid/db", connect_timeout=1, lock_timeout=1, statement_timeout=None)


# --- repeatable files ----------------------------------------------------------------------------------------

R1 = "-- torghut-rollout: repeatable\n-- a backfill\nUPDATE a SET id = id;\n"
R2 = "-- torghut-rollout: repeatable\n-- a backfill, corrected\nUPDATE a SET id = id + 0;\n"


@pytest.mark.parametrize(
    ("content", "repeatable"),
    [
        (R1, True),
        ("\n\n   -- torghut-rollout: repeatable   \nSELECT 1;\n", True),
        ("-- header\n--\n-- torghut-rollout: repeatable\nSELECT 1;\n", True),
        ("SELECT 1;\n-- torghut-rollout: repeatable\n", False),  # not in the header
        ("-- torghut-rollout: Repeatable\nSELECT 1;\n", False),
        ("-- torghut-rollout: repeatable later\nSELECT 1;\n", False),
        ("/* -- torghut-rollout: repeatable */ SELECT 1;\n", False),
        ("", False),
    ],
)
def test_repeatable_marker_is_a_header_line(content: str, repeatable: bool) -> None:
    assert is_repeatable(content) is repeatable


def test_a_changed_repeatable_file_is_applied_again_instead_of_an_error() -> None:
    plan = plan_files({"0001_a.sql": A, "0002_r.sql": R2}, [rec("0001_a.sql", A), rec("0002_r.sql", R1)])
    assert plan.ok, plan.errors
    assert [f.name for f in plan.pending] == ["0002_r.sql"]
    assert [r.name for r in plan.applied] == ["0001_a.sql"]


def test_an_unchanged_repeatable_file_runs_again_only_on_catch_up() -> None:
    files = {"0001_a.sql": A, "0002_r.sql": R1}
    history = [rec("0001_a.sql", A), rec("0002_r.sql", R1)]
    assert plan_files(files, history).pending == ()
    caught_up = plan_files(files, history, catch_up=True)
    assert caught_up.ok
    assert [f.name for f in caught_up.pending] == ["0002_r.sql"]  # never the versioned file
    assert [r.name for r in caught_up.applied] == ["0001_a.sql"]


def test_a_changed_versioned_file_is_still_an_error_and_names_the_way_out() -> None:
    plan = plan_files({"0001_a.sql": B}, [rec("0001_a.sql", A)], catch_up=True)
    assert not plan.ok
    assert "torghut-rollout: repeatable" in plan.errors[0]


def test_a_repeatable_file_may_not_hold_transaction_control_either() -> None:
    bad = R1 + "COMMIT;\n"
    plan = plan_files({"0002_r.sql": bad}, [rec("0002_r.sql", R1)])
    assert plan.errors == (
        "0002_r.sql line 4: COMMIT inside a file is not allowed; each file already runs in its "
        "own transaction, committed together with its history row",
    )
