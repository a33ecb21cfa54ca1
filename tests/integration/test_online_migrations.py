"""Online SQL files on a real PostgreSQL 15: DDL under lock_timeout with retries, no-transaction files and invalid
concurrent indexes, and batched backfills that resume where they stopped (kill -9, Postgres restarted), fail naming
the row, and wait while the database is under pressure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from torghut_localstack.postgres import PostgresServer
from torghut_localstack.torghut_db import create_database, drop_database
from torghut_localstack.wait import wait_for
from torghut_operator.adapters.postgres.migrator import BackfillSettings, SqlErrorKind, SqlMigrator

pytestmark = pytest.mark.integration

ROLLOUT = "torghut/rollout-1"
ROWS = 2_000

TABLE = {
    "0001_items.sql": (
        "CREATE TABLE items (id bigint PRIMARY KEY, v int NOT NULL);\n"
        f"INSERT INTO items SELECT g, g FROM generate_series(1, {ROWS}) AS g;\n"
        # one row per (batch, id) the backfill touched: a row touched twice is a duplicate key
        "CREATE TABLE touched (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());\n"
    ),
}
BACKFILL = """-- torghut-rollout: repeatable
-- torghut-rollout: backfill table=public.items
INSERT INTO touched (id)
SELECT id FROM items
WHERE id BETWEEN CAST(current_setting('torghut_rollout.batch_first') AS bigint)
    AND CAST(current_setting('torghut_rollout.batch_last') AS bigint);
UPDATE items SET v = -v
WHERE id BETWEEN CAST(current_setting('torghut_rollout.batch_first') AS bigint)
    AND CAST(current_setting('torghut_rollout.batch_last') AS bigint);
"""


@pytest.fixture
def dsn(postgres: PostgresServer) -> Iterator[str]:
    name = f"online_{uuid.uuid4().hex[:16]}"
    create_database(postgres.dsn(), name)
    yield postgres.dsn(name)
    drop_database(postgres.dsn(), name)


def migrator(dsn: str, **options: Any) -> SqlMigrator:
    options.setdefault("backfill", BackfillSettings(initial_batch=100, max_batch=400, batch_duration=0.05))
    options.setdefault("connect_timeout", 5.0)
    return SqlMigrator(dsn, lock_timeout=2.0, statement_timeout=30.0, **options)


def one(dsn: str, query: str) -> Any:
    with psycopg.connect(dsn, connect_timeout=5, options="-c statement_timeout=10000") as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return row[0]


def progress(dsn: str, name: str = "0002_backfill.sql", run: str = "apply") -> tuple[Any, ...]:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT rows_done, rows_total, batches, last_key, finished_at IS NOT NULL FROM torghut_rollout.sql_runs "
            "WHERE run = %s AND name = %s",
            [run, name],
        ).fetchone()
        assert row is not None
        return tuple(row)


def assert_every_row_once(dsn: str) -> None:
    assert one(dsn, "SELECT count(*) FROM touched") == ROWS
    assert one(dsn, "SELECT count(*) FROM items WHERE v > 0") == 0  # each row negated exactly once


# -- no-transaction files and concurrent indexes ---------------------------------------------------------------


def test_a_no_transaction_file_builds_an_index_concurrently_and_rebuilds_an_invalid_one(dsn: str) -> None:
    assert migrator(dsn).apply(TABLE, rollout=ROLLOUT).ok
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE items SET v = 1 WHERE id IN (1, 2)")  # a duplicate: the unique build fails
    index = (
        "-- torghut-rollout: no-transaction\n"
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS ux_items_v ON public.items (v);\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_items_id_v ON public.items (id, v);\n"
    )
    files = {**TABLE, "0002_index.sql": index}

    failed = migrator(dsn).apply(files, rollout=ROLLOUT)

    assert failed.error is not None
    assert failed.error.kind is SqlErrorKind.FILE_FAILED
    assert "0002_index.sql statement 1 of 2 failed: 23505" in failed.error.message
    # the failed concurrent build left an INVALID index that IF NOT EXISTS alone would silently keep
    assert one(dsn, "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = 'ux_items_v'::regclass")

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE items SET v = 2 WHERE id = 2")
    fixed = migrator(dsn).apply(files, rollout=ROLLOUT)

    assert fixed.ok, fixed.error
    assert [r.name for r in fixed.applied] == ["0002_index.sql"]
    assert one(dsn, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'ux_items_v'::regclass")
    assert one(dsn, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_items_id_v'::regclass")


def test_a_concurrent_index_in_a_transactional_file_is_refused_by_postgres(dsn: str) -> None:
    result = migrator(dsn).apply(
        {**TABLE, "0002_index.sql": "CREATE INDEX CONCURRENTLY ix ON items (v);\n"}, rollout=ROLLOUT
    )
    assert result.error is not None
    assert "cannot run inside a transaction block" in result.error.message


def test_bad_directives_reject_the_plan(dsn: str) -> None:
    result = migrator(dsn).apply(
        {
            "0001_a.sql": "-- torghut-rollout: backfill table=items\nUPDATE items SET v = 1;\n",
            "0002_b.sql": "-- torghut-rollout: repetable\nSELECT 1;\n",
        },
        rollout=ROLLOUT,
    )
    assert result.error is not None
    assert result.error.kind is SqlErrorKind.PLAN_REJECTED
    assert "must restrict each batch" in result.error.message
    assert "unknown directive '-- torghut-rollout: repetable'" in result.error.message


# -- batched backfills ------------------------------------------------------------------------------------------


def test_a_backfill_runs_in_batches_across_calls_and_touches_every_row_once(dsn: str) -> None:
    files = {**TABLE, "0002_backfill.sql": BACKFILL}
    first = migrator(dsn).apply(files, rollout=ROLLOUT, budget=0.0)
    assert first.ok
    assert first.in_progress
    assert first.backfill is not None
    assert first.backfill.rows_total == ROWS
    assert first.backfill.rows_done == 0
    assert "0002_backfill.sql" in first.pending

    calls = 1
    seen = [0]
    while True:
        result = migrator(dsn).apply(files, rollout=ROLLOUT, budget=0.2)
        calls += 1
        assert result.ok, result.error
        assert result.backfill is not None
        assert result.backfill.rows_done >= seen[-1]  # never goes back
        seen.append(result.backfill.rows_done)
        if not result.in_progress:
            break
        assert calls < 200

    assert result.backfill.finished
    assert result.backfill.rows_done == ROWS == result.backfill.rows_total
    assert [r.name for r in result.applied] == ["0002_backfill.sql"]
    assert_every_row_once(dsn)
    done, total, batches, last_key, finished = progress(dsn)
    assert (done, total, finished, last_key) == (ROWS, ROWS, True, str(ROWS))
    assert batches == result.backfill.batches > 1
    # applied: nothing more to do; the history has it
    again = migrator(dsn).apply(files, rollout=ROLLOUT)
    assert again.ok
    assert again.applied == ()
    assert again.backfill is None


def test_the_batch_size_follows_the_target_duration(dsn: str) -> None:
    slow = BACKFILL.replace(
        "UPDATE items",
        "SELECT pg_sleep(0.002 * count(*)) FROM touched WHERE id BETWEEN "
        "CAST(current_setting('torghut_rollout.batch_first') AS bigint) AND "
        "CAST(current_setting('torghut_rollout.batch_last') AS bigint);\nUPDATE items",
        1,
    )
    settings = BackfillSettings(initial_batch=20, min_batch=10, max_batch=1000, batch_duration=0.2)
    result = migrator(dsn, backfill=settings).apply({**TABLE, "0002_backfill.sql": slow}, rollout=ROLLOUT)
    assert result.ok, result.error
    assert result.backfill is not None
    # 2 ms a row: 200 ms batches hold about 100 rows (fewer when the machine is busy: each batch's own overhead
    # counts too); from 20 the size doubles towards that and stays near it, far from both 20 and the 1000 ceiling
    assert 40 <= result.backfill.batch_size <= 200, result.backfill


def test_a_killed_migrator_resumes_at_the_next_batch_and_runs_no_batch_twice(dsn: str) -> None:
    files = {
        **TABLE,
        "0002_backfill.sql": BACKFILL.replace(
            "UPDATE items SET v = -v",
            # while the stall flag is set, batch 4 sleeps long enough to be killed in the middle of it
            "SELECT pg_sleep(CASE WHEN EXISTS (SELECT 1 FROM stall) AND (SELECT count(*) FROM touched) > 300 "
            "THEN 30 ELSE 0 END);\nUPDATE items SET v = -v",
        ),
    }
    setup = {**TABLE, "0001_items.sql": TABLE["0001_items.sql"] + "CREATE TABLE stall AS SELECT 1 AS on;\n"}
    files["0001_items.sql"] = setup["0001_items.sql"]
    assert migrator(dsn).apply(setup, rollout=ROLLOUT).ok
    script = (
        "import sys\n"
        "from torghut_operator.adapters.postgres.migrator import BackfillSettings, SqlMigrator\n"
        "m = SqlMigrator(sys.argv[1], connect_timeout=5, lock_timeout=2, statement_timeout=None, "
        "backfill=BackfillSettings(initial_batch=100, min_batch=100, max_batch=100))\n"
        f"m.apply({files!r}, rollout='killed')\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, dsn])
    try:
        wait_for(
            lambda: one(
                dsn,
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(CASE%' AND wait_event = 'PgSleep'",
            ),
            timeout=30,
            interval=0.05,
            what="the migrator sleeping inside batch 4",
        )
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    done_before, _, batches_before, _, _ = progress(dsn)
    assert (done_before, batches_before) == (300, 3)  # three batches committed, the fourth never was
    with psycopg.connect(dsn, autocommit=True) as conn:  # the dead client's backend and its advisory lock go
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(CASE%' "
            "AND pid <> pg_backend_pid()"
        )

        conn.execute("DELETE FROM stall")
    result = migrator(dsn).apply(files, rollout=ROLLOUT)
    assert result.ok, result.error
    assert result.backfill is not None
    assert result.backfill.finished
    assert_every_row_once(dsn)
    done, _, batches, _, _ = progress(dsn)
    assert done == ROWS
    assert batches > batches_before


def test_a_failing_row_fails_the_stage_naming_its_key_and_finished_batches_stay_done(dsn: str) -> None:
    files = {
        **TABLE,
        "0002_backfill.sql": BACKFILL.replace("SET v = -v", "SET v = -v / (v - 1234)"),
    }
    result = migrator(dsn, backfill=BackfillSettings(initial_batch=100, min_batch=100, max_batch=100)).apply(
        files, rollout=ROLLOUT
    )
    assert result.error is not None
    assert result.error.kind is SqlErrorKind.FILE_FAILED
    assert not result.error.retryable
    assert "failed in batch 13 (the row with id = 1234): 22012 division by zero" in result.error.message
    assert "the 12 batch(es) before it (1200 rows) stay done" in result.error.message
    assert progress(dsn)[:3] == (1200, ROWS, 12)
    assert one(dsn, "SELECT count(*) FROM touched") == 1200


def test_postgres_restarted_mid_backfill_is_retryable_and_resumes() -> None:
    with PostgresServer() as server:
        create_database(server.dsn(), "restart")
        dsn = server.dsn("restart")
        # 20 batches of 100 rows, each at least 20 ms: a 0.1 s budget cannot finish them
        files = {
            **TABLE,
            "0002_backfill.sql": BACKFILL.replace(
                "INSERT INTO touched", "SELECT pg_sleep(0.02);\nINSERT INTO touched", 1
            ),
        }
        fixed = BackfillSettings(initial_batch=100, min_batch=100, max_batch=100)
        # On a loaded machine the first turn's budget can run out before its first batch (the
        # schema file and the backfill's setup come first): turn again until a batch is done.
        deadline = time.monotonic() + 60
        while True:
            first = migrator(dsn, backfill=fixed).apply(files, rollout=ROLLOUT, budget=0.1)
            assert first.in_progress, first.error
            assert first.backfill is not None
            if first.backfill.rows_done > 0 or time.monotonic() > deadline:
                break
        assert 0 < first.backfill.rows_done < ROWS
        with server.down():
            during = migrator(dsn, connect_timeout=2.0).apply(files, rollout=ROLLOUT, budget=0.1)
        assert during.error is not None
        assert during.error.retryable, during.error
        after = migrator(dsn).apply(files, rollout=ROLLOUT)
        assert after.ok, after.error
        assert after.backfill is not None
        assert after.backfill.finished
        assert_every_row_once(dsn)


def test_the_backfill_waits_while_ddl_queues_for_the_table(dsn: str) -> None:
    files = {**TABLE, "0002_backfill.sql": BACKFILL}
    assert migrator(dsn).apply(TABLE, rollout=ROLLOUT).ok
    with psycopg.connect(dsn) as reader, psycopg.connect(dsn, autocommit=True) as ddl:
        reader.execute("SELECT count(*) FROM items")  # ACCESS SHARE, held
        queued = threading.Thread(
            target=ddl.execute, args=("BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE; COMMIT",)
        )
        queued.start()
        wait_for(
            lambda: one(dsn, "SELECT count(*) FROM pg_locks WHERE relation = 'items'::regclass AND NOT granted"),
            timeout=10,
            interval=0.05,
            what="the DDL queued behind the reader",
        )
        result = migrator(dsn).apply(files, rollout=ROLLOUT, budget=0.5)
        reader.rollback()
        queued.join(timeout=10)

    assert result.ok
    assert result.in_progress
    assert result.backfill is not None
    assert result.backfill.throttled == "1 lock wait(s) on public.items"
    assert result.backfill.rows_done == 0
    finished = migrator(dsn).apply(files, rollout=ROLLOUT)
    assert finished.ok
    assert finished.backfill is not None
    assert finished.backfill.finished
    assert_every_row_once(dsn)


def test_the_backfill_waits_while_a_long_transaction_is_open(dsn: str) -> None:
    files = {**TABLE, "0002_backfill.sql": BACKFILL}
    assert migrator(dsn).apply(TABLE, rollout=ROLLOUT).ok
    with psycopg.connect(dsn) as report:
        report.execute("SELECT 1")
        pid = report.info.backend_pid
        wait_for(
            lambda: one(
                dsn, f"SELECT xact_start < clock_timestamp() - interval '0.3 s' FROM pg_stat_activity WHERE pid = {pid}"
            ),
            timeout=10,
            interval=0.05,
            what="the report's transaction to age",
        )
        settings = BackfillSettings(initial_batch=100, max_transaction_age=0.3, throttle_poll=0.05)
        result = migrator(dsn, backfill=settings).apply(files, rollout=ROLLOUT, budget=0.3)
    assert result.in_progress
    assert result.backfill is not None
    assert result.backfill.throttled == f"transaction(s) open longer than 0.3s (pid {pid})"


def test_a_catch_up_pass_runs_each_repeatable_file_once_across_its_slices(dsn: str) -> None:
    counter = "-- torghut-rollout: repeatable\nUPDATE runs SET n = n + 1;\n"
    files = {
        **TABLE,
        "0002_backfill.sql": BACKFILL,
        "0003_counter.sql": counter,
        "0000_runs.sql": "CREATE TABLE runs (n int NOT NULL);\nINSERT INTO runs VALUES (0);\n",
    }
    assert migrator(dsn).apply(files, rollout=ROLLOUT).ok
    assert one(dsn, "SELECT n FROM runs") == 1
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE touched")
        conn.execute("UPDATE items SET v = -v")

    slices = 0
    while True:
        budget = 0.0 if slices == 0 else 0.05
        result = migrator(dsn).apply(files, rollout=ROLLOUT, catch_up=True, run="pass-1", budget=budget)
        slices += 1
        assert result.ok, result.error
        if not result.in_progress:
            break
    assert slices > 1
    assert one(dsn, "SELECT n FROM runs") == 2  # once in the pass, however many slices it took
    assert_every_row_once(dsn)
    again = migrator(dsn).apply(files, rollout=ROLLOUT, catch_up=True, run="pass-1")
    assert again.ok
    assert again.applied == ()
    assert one(dsn, "SELECT n FROM runs") == 2
