"""SqlMigrator against a real PostgreSQL 15: exactly-once, in order, atomically per file, under the advisory lock."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from torghut_localstack.ports import free_port
from torghut_localstack.postgres import PostgresServer
from torghut_localstack.torghut_db import create_database, drop_database
from torghut_localstack.wait import wait_for
from torghut_operator.adapters.postgres.migrator import LOCK_KEY, SqlErrorKind, SqlMigrator, checksum

pytestmark = pytest.mark.integration

ROLLOUT = "torghut/rollout-1"
FILES = {
    "0010_third.sql": "INSERT INTO order_log (file) VALUES ('0010');\n",
    "0001_first.sql": "CREATE TABLE order_log (seq bigserial PRIMARY KEY, file text NOT NULL);\n",
    "0002_second.sql": "INSERT INTO order_log (file) VALUES ('0002');\n",
    "README.md": "not SQL; ignored",
}


@pytest.fixture
def dsn(postgres: PostgresServer) -> Iterator[str]:
    """A fresh, empty database per test."""
    name = f"sqlmig_{uuid.uuid4().hex[:16]}"
    create_database(postgres.dsn(), name)
    yield postgres.dsn(name)
    drop_database(postgres.dsn(), name)


def migrator(
    dsn: str, *, lock_timeout: float = 10.0, statement_timeout: float | None = 30.0, **options: Any
) -> SqlMigrator:
    return SqlMigrator(
        dsn, connect_timeout=5.0, lock_timeout=lock_timeout, statement_timeout=statement_timeout, **options
    )


def rows(dsn: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, connect_timeout=5, options="-c statement_timeout=10000") as conn:
        return conn.execute(query).fetchall()


def order_log(dsn: str) -> list[str]:
    return [r[0] for r in rows(dsn, "SELECT file FROM order_log ORDER BY seq")]


def history_names(dsn: str) -> list[str]:
    return [r[0] for r in rows(dsn, "SELECT name FROM torghut_rollout.sql_migrations ORDER BY name")]


def exists(dsn: str, relation: str) -> bool:
    return bool(rows(dsn, f"SELECT to_regclass('{relation}') IS NOT NULL")[0][0])


@pytest.fixture
def lock_holder(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A session holding the migrators' advisory lock, as another operator would."""
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True, application_name="other-operator") as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
        yield conn


def test_files_apply_in_lexical_order_exactly_once(dsn: str) -> None:
    assert migrator(dsn).history() == []

    result = migrator(dsn).apply(FILES, rollout=ROLLOUT)

    assert result.ok, result.error
    assert [r.name for r in result.applied] == ["0001_first.sql", "0002_second.sql", "0010_third.sql"]
    assert result.skipped == ()
    assert result.pending == ()
    assert result.warnings == ()
    assert order_log(dsn) == ["0002", "0010"]
    history = migrator(dsn).history()
    assert [(r.name, r.checksum, r.applied_by) for r in history] == [
        (name, checksum(FILES[name]), ROLLOUT) for name in ("0001_first.sql", "0002_second.sql", "0010_third.sql")
    ]
    assert all(r.duration_ms is not None and r.duration_ms >= 0 for r in history)
    assert all(r.applied_at.tzinfo is not None for r in history)
    assert [f.name for f in result.status_files()] == [r.name for r in history]


def test_second_apply_is_a_no_op_and_a_new_file_applies_alone(dsn: str) -> None:
    assert migrator(dsn).apply(FILES, rollout=ROLLOUT).ok
    first_history = migrator(dsn).history()

    again = migrator(dsn).apply(FILES, rollout="torghut/rollout-2")
    assert again.ok
    assert again.applied == ()
    assert [r.name for r in again.skipped] == ["0001_first.sql", "0002_second.sql", "0010_third.sql"]
    assert order_log(dsn) == ["0002", "0010"]
    assert migrator(dsn).history() == first_history

    more = migrator(dsn).apply(
        {**FILES, "0011_fourth.sql": "INSERT INTO order_log (file) VALUES ('0011');"}, rollout="torghut/rollout-2"
    )
    assert more.ok
    assert [r.name for r in more.applied] == ["0011_fourth.sql"]
    assert order_log(dsn) == ["0002", "0010", "0011"]
    assert migrator(dsn).history()[-1].applied_by == "torghut/rollout-2"


def test_changed_checksum_is_a_hard_error_that_applies_nothing(dsn: str) -> None:
    assert migrator(dsn).apply(FILES, rollout=ROLLOUT).ok
    changed = {**FILES, "0002_second.sql": FILES["0002_second.sql"].replace("\n", "\r\n")}
    changed["0011_new.sql"] = "INSERT INTO order_log (file) VALUES ('0011');"

    result = migrator(dsn).apply(changed, rollout=ROLLOUT)

    assert result.error is not None
    assert result.error.kind is SqlErrorKind.PLAN_REJECTED
    assert not result.error.retryable
    assert "0002_second.sql" in result.error.message
    assert checksum(FILES["0002_second.sql"])[:12] in result.error.message
    assert checksum(changed["0002_second.sql"])[:12] in result.error.message
    assert result.applied == ()
    assert result.pending == ("0011_new.sql",)
    assert order_log(dsn) == ["0002", "0010"]
    assert "0011_new.sql" not in history_names(dsn)


REPEATABLE = {
    "0001_first.sql": FILES["0001_first.sql"],
    "0002_backfill.sql": (
        "-- torghut-rollout: repeatable\n"
        "-- fills the rows that have no label yet\n"
        "UPDATE order_log SET file = 'wrong' WHERE file = 'unlabelled';\n"
    ),
}


def test_a_corrected_repeatable_backfill_ships_by_changing_the_file(dsn: str) -> None:
    """The way to fix a backfill that was applied wrong: change the repeatable file; the next apply runs it again
    (a versioned file would be a hard error) and the history records the new checksum."""
    assert migrator(dsn).apply(REPEATABLE, rollout=ROLLOUT).ok
    rows(dsn, "INSERT INTO order_log (file) VALUES ('unlabelled') RETURNING seq")
    assert migrator(dsn).apply(REPEATABLE, rollout=ROLLOUT).applied == ()  # unchanged: not run again
    corrected = {
        **REPEATABLE,
        "0002_backfill.sql": REPEATABLE["0002_backfill.sql"].replace("'wrong'", "'right'"),
    }

    result = migrator(dsn).apply(corrected, rollout="torghut/fix")

    assert result.ok, result.error
    assert [r.name for r in result.applied] == ["0002_backfill.sql"]
    assert [r.name for r in result.skipped] == ["0001_first.sql"]
    assert order_log(dsn) == ["right"]
    [record] = [r for r in migrator(dsn).history() if r.name == "0002_backfill.sql"]
    assert (record.checksum, record.applied_by) == (checksum(corrected["0002_backfill.sql"]), "torghut/fix")
    assert history_names(dsn) == ["0001_first.sql", "0002_backfill.sql"]  # one row per file, updated


def test_catch_up_runs_every_repeatable_file_again_and_nothing_else(dsn: str) -> None:
    files = {**REPEATABLE, "0003_versioned.sql": "INSERT INTO order_log (file) VALUES ('once');\n"}
    first = migrator(dsn).apply(files, rollout=ROLLOUT)
    assert first.ok
    before = {r.name: r.applied_at for r in migrator(dsn).history()}
    rows(dsn, "INSERT INTO order_log (file) VALUES ('unlabelled') RETURNING seq")  # written after the migration

    caught_up = migrator(dsn).apply(files, rollout=ROLLOUT, catch_up=True)

    assert caught_up.ok, caught_up.error
    assert [r.name for r in caught_up.applied] == ["0002_backfill.sql"]
    assert sorted(r.name for r in caught_up.skipped) == ["0001_first.sql", "0003_versioned.sql"]
    assert order_log(dsn) == ["once", "wrong"]  # the versioned file did not run twice
    after = {r.name: r.applied_at for r in migrator(dsn).history()}
    assert after["0002_backfill.sql"] > before["0002_backfill.sql"]
    assert after["0003_versioned.sql"] == before["0003_versioned.sql"]
    assert [f.name for f in caught_up.status_files()] == ["0001_first.sql", "0002_backfill.sql", "0003_versioned.sql"]


def test_a_failing_catch_up_rolls_its_file_back(dsn: str) -> None:
    assert migrator(dsn).apply(REPEATABLE, rollout=ROLLOUT).ok
    rows(dsn, "INSERT INTO order_log (file) VALUES ('unlabelled') RETURNING seq")
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        conn.execute("ALTER TABLE order_log ADD CONSTRAINT no_wrong CHECK (file <> 'wrong') NOT VALID")

    result = migrator(dsn).apply(REPEATABLE, rollout=ROLLOUT, catch_up=True)

    assert result.error is not None
    assert result.error.kind is SqlErrorKind.FILE_FAILED
    assert result.error.file == "0002_backfill.sql"
    assert not result.error.retryable
    assert order_log(dsn) == ["unlabelled"]


def test_failing_file_leaves_no_trace_and_earlier_files_stay(dsn: str) -> None:
    files = {
        "0001_first.sql": FILES["0001_first.sql"],
        "0002_broken.sql": (
            "INSERT INTO order_log (file) VALUES ('0002');\n"
            "CREATE TABLE half_done (id int);\n"
            "\n"
            "SELECT * FROM no_such_table;\n"
        ),
        "0003_after.sql": "INSERT INTO order_log (file) VALUES ('0003');",
    }

    result = migrator(dsn).apply(files, rollout=ROLLOUT)

    assert result.error is not None
    assert result.error.kind is SqlErrorKind.FILE_FAILED
    assert result.error.file == "0002_broken.sql"
    assert result.error.sqlstate == "42P01"
    assert 'relation "no_such_table" does not exist' in result.error.message
    assert "at line 4" in result.error.message
    assert not result.error.retryable
    assert [r.name for r in result.applied] == ["0001_first.sql"]
    assert result.pending == ("0002_broken.sql", "0003_after.sql")
    assert history_names(dsn) == ["0001_first.sql"]
    assert order_log(dsn) == []
    assert not exists(dsn, "half_done")

    files["0002_broken.sql"] = "INSERT INTO order_log (file) VALUES ('0002');"
    fixed = migrator(dsn).apply(files, rollout=ROLLOUT)
    assert fixed.ok, fixed.error
    assert [r.name for r in fixed.applied] == ["0002_broken.sql", "0003_after.sql"]
    assert order_log(dsn) == ["0002", "0003"]


def test_concurrent_applies_apply_each_file_exactly_once(dsn: str, lock_holder: psycopg.Connection[Any]) -> None:
    files = {
        "0001_counter.sql": "CREATE TABLE counter (file text NOT NULL);",
        **{f"{i:04d}_count.sql": f"INSERT INTO counter VALUES ('{i:04d}');" for i in range(2, 6)},
    }
    waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(migrator(dsn, lock_timeout=60).apply, files, rollout=f"r{i}") for i in range(2)]
        # Both migrators are queued on the lock before it is released, so they really race for it.
        wait_for(lambda: rows(dsn, waiting)[0][0] == 2, timeout=30, what="both migrators waiting on the lock")
        lock_holder.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
        results = [f.result(timeout=60) for f in futures]

    assert all(r.ok for r in results), [r.error for r in results]
    assert sorted(len(r.applied) for r in results) == [0, 5]
    assert sorted(len(r.skipped) for r in results) == [0, 5]
    assert rows(dsn, "SELECT file, count(*) FROM counter GROUP BY file ORDER BY file") == [
        (f"{i:04d}", 1) for i in range(2, 6)
    ]
    assert history_names(dsn) == sorted(files)


def test_lock_wait_is_bounded_and_names_the_holder(dsn: str, lock_holder: psycopg.Connection[Any]) -> None:
    result = migrator(dsn, lock_timeout=0.3, advisory_timeout=0.3).apply(FILES, rollout=ROLLOUT)

    assert result.error is not None
    assert result.error.kind is SqlErrorKind.LOCK_TIMEOUT
    assert result.error.retryable
    assert result.error.sqlstate == "55P03"
    holder_pid = lock_holder.info.backend_pid
    assert f"held by pid {holder_pid} (other-operator)" in result.error.message
    assert str(LOCK_KEY) in result.error.message
    assert result.applied == ()
    assert not exists(dsn, "torghut_rollout.sql_migrations")
    assert not exists(dsn, "order_log")


def test_ddl_lock_wait_is_retried_with_backoff_then_fails_naming_the_blocker(dsn: str) -> None:
    assert migrator(dsn).apply({"0001_t.sql": "CREATE TABLE t (id int);"}, rollout=ROLLOUT).ok
    waits: list[float] = []
    with psycopg.connect(dsn, connect_timeout=5, application_name="trading-report") as reader:
        reader.execute("SELECT * FROM t")  # an open transaction holding ACCESS SHARE on t
        result = migrator(dsn, lock_timeout=0.3, lock_retries=2, sleep=waits.append).apply(
            {"0001_t.sql": "CREATE TABLE t (id int);", "0002_alter.sql": "ALTER TABLE t ADD COLUMN x int;"},
            rollout=ROLLOUT,
        )
        blocker = reader.info.backend_pid
        reader.rollback()

    assert result.error is not None
    assert result.error.kind is SqlErrorKind.LOCK_TIMEOUT
    assert result.error.file == "0002_alter.sql"
    assert result.error.sqlstate == "55P03"
    assert not result.error.retryable  # the retry budget is spent: the stage fails, saying who blocked it
    assert "waited for a lock 3 time(s), 0.3s each" in result.error.message
    assert f"blocked by pid {blocker} (trading-report, idle in transaction: SELECT * FROM t)" in result.error.message
    # exponential backoff with jitter between the attempts: half to full of 0.5 s, then of 1 s
    assert len(waits) == 2
    assert 0.25 <= waits[0] <= 0.5
    assert 0.5 <= waits[1] <= 1.0
    assert history_names(dsn) == ["0001_t.sql"]
    assert [r[0] for r in rows(dsn, "SELECT column_name FROM information_schema.columns WHERE table_name = 't'")] == [
        "id"
    ]


def test_ddl_applies_once_the_blocking_transaction_ends_during_the_backoff(dsn: str) -> None:
    assert migrator(dsn).apply({"0001_t.sql": "CREATE TABLE t (id int);"}, rollout=ROLLOUT).ok
    with psycopg.connect(dsn, connect_timeout=5) as reader:
        reader.execute("SELECT * FROM t")
        result = migrator(dsn, lock_timeout=0.3, lock_retries=3, sleep=lambda _s: reader.rollback()).apply(
            {"0001_t.sql": "CREATE TABLE t (id int);", "0002_alter.sql": "ALTER TABLE t ADD COLUMN x int;"},
            rollout=ROLLOUT,
        )

    assert result.ok, result.error
    assert [r.name for r in result.applied] == ["0002_alter.sql"]
    assert history_names(dsn) == ["0001_t.sql", "0002_alter.sql"]


def test_statement_timeout_bounds_a_file(dsn: str) -> None:
    result = migrator(dsn, statement_timeout=0.2).apply(
        {"0001_slow.sql": "CREATE TABLE slow (id int);\nSELECT pg_sleep(10);"}, rollout=ROLLOUT
    )

    assert result.error is not None
    assert result.error.kind is SqlErrorKind.FILE_FAILED
    assert result.error.sqlstate == "57014"
    assert "statement timeout" in result.error.message
    assert not exists(dsn, "slow")
    assert history_names(dsn) == []


def test_transaction_control_inside_a_file_is_refused_before_running(dsn: str) -> None:
    result = migrator(dsn).apply(
        {"0001_wrapped.sql": "BEGIN;\nCREATE TABLE wrapped (id int);\nCOMMIT;\n"}, rollout=ROLLOUT
    )

    assert result.error is not None
    assert result.error.kind is SqlErrorKind.PLAN_REJECTED
    assert "0001_wrapped.sql line 3: COMMIT" in result.error.message
    assert not exists(dsn, "wrapped")
    assert history_names(dsn) == []


def test_files_run_verbatim(dsn: str) -> None:
    """Percent signs, escape strings, DO blocks and SQL-standard function bodies reach Postgres untouched."""
    files = {
        "0001_shapes.sql": (
            "CREATE TABLE shapes (v text);\n"
            "INSERT INTO shapes VALUES ('100%'), (E'it\\'s; %s'), ($q$dollar; COMMIT$q$);\n"
            "DO $$ BEGIN INSERT INTO shapes VALUES ('from DO'); END $$;\n"
            "CREATE FUNCTION shape_count() RETURNS bigint LANGUAGE sql\n"
            "BEGIN ATOMIC\n  SELECT count(*) FROM shapes;\nEND;\n"
            "-- a trailing comment; COMMIT;\n"
        ),
        "0002_empty.sql": "",
        "0003_comment_only.sql": "-- nothing to do\n",
    }

    result = migrator(dsn).apply(files, rollout=ROLLOUT)

    assert result.ok, result.error
    assert sorted(r[0] for r in rows(dsn, "SELECT v FROM shapes")) == sorted(
        ["100%", "it's; %s", "dollar; COMMIT", "from DO"]
    )
    assert rows(dsn, "SELECT shape_count()") == [(4,)]
    assert history_names(dsn) == sorted(files)


def test_each_file_starts_from_a_fresh_session(dsn: str) -> None:
    files = {
        "0001_leaky.sql": "CREATE SCHEMA side; SET search_path = side; CREATE TEMP TABLE scratch (id int);",
        "0002_next.sql": "CREATE TABLE where_am_i (id int); CREATE TABLE scratch (id int);",
    }

    result = migrator(dsn).apply(files, rollout=ROLLOUT)

    assert result.ok, result.error
    assert exists(dsn, "public.where_am_i")
    assert exists(dsn, "public.scratch")
    assert not exists(dsn, "side.where_am_i")


def test_pruned_files_are_a_warning(dsn: str) -> None:
    assert migrator(dsn).apply(FILES, rollout=ROLLOUT).ok
    result = migrator(dsn).apply({"0011_next.sql": "INSERT INTO order_log (file) VALUES ('0011');"}, rollout=ROLLOUT)

    assert result.ok
    assert [r.name for r in result.applied] == ["0011_next.sql"]
    assert len(result.warnings) == 3
    assert "0001_first.sql" in result.warnings[0]


def test_database_errors_never_show_the_password(postgres: PostgresServer, dsn: str) -> None:
    role, secret = f"mig_{uuid.uuid4().hex[:8]}", "S3cret-Pa55"
    postgres.create_role(role, password=secret)
    try:
        wrong = dsn.replace(f"{postgres.superuser}@", f"{role}:{secret}-wrong@", 1)
        # trust auth on loopback lets anyone in; a missing database is an error libpq reports with the DSN's parts
        missing_db = wrong.rsplit("/", 1)[0] + "/no_such_database"
        result = migrator(missing_db).apply(FILES, rollout=ROLLOUT)
        assert result.error is not None
        assert result.error.kind is SqlErrorKind.DATABASE
        assert "no_such_database" in result.error.message
        assert secret not in result.error.message

        bad_uri = f"postgresql://{role}:{secret}@127.0.0.1:{postgres.port}/db?no_such_option=1"
        result = migrator(bad_uri).apply(FILES, rollout=ROLLOUT)
        assert result.error is not None
        assert secret not in result.error.message
    finally:
        postgres.execute(f'DROP ROLE "{role}"')


def test_unreachable_server_is_a_retryable_database_error() -> None:
    port = free_port()  # nothing listens there
    result = migrator(f"postgresql://u:pw@127.0.0.1:{port}/db").apply(FILES, rollout=ROLLOUT)

    assert result.error is not None
    assert result.error.kind is SqlErrorKind.DATABASE
    assert result.error.retryable
    assert result.pending == ("0001_first.sql", "0002_second.sql", "0010_third.sql")
