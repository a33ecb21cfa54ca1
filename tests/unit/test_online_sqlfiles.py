"""The pure parts of online migrations: header directives, the batch size rule, the retry backoff."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from torghut_operator.adapters.postgres.migrator import (
    BackfillSettings,
    BackfillTarget,
    backoff,
    file_options,
    next_batch_size,
    plan_files,
    split_statements,
)

pytestmark = pytest.mark.unit

BATCHED = "current_setting('torghut_rollout.batch_first') current_setting('torghut_rollout.batch_last')"


def test_directives_are_read_from_the_header_only() -> None:
    options = file_options(
        "-- torghut-rollout: repeatable\n-- torghut-rollout: backfill table=public.executions key=id\n"
        f"SELECT 1; -- {BATCHED}\n-- torghut-rollout: no-transaction\n"
    )
    assert options.repeatable
    assert options.transactional  # the directive after the first statement is a comment, not a directive
    assert options.backfill == BackfillTarget(table="public.executions", key="id")
    assert options.errors == ()


@pytest.mark.parametrize(
    ("header", "error"),
    [
        ("-- torghut-rollout: repeatble", "unknown directive '-- torghut-rollout: repeatble'"),
        ("-- torghut-rollout: backfill", "must read '-- torghut-rollout: backfill table=<schema.table>"),
        ("-- torghut-rollout: backfill table=t colour=red", "must read"),
        ("-- torghut-rollout: backfill table=t key=", "must read"),
        ("-- torghut-rollout: backfill table=t\n-- torghut-rollout: no-transaction", "cannot be no-transaction"),
        ("-- torghut-rollout: no-transaction extra", "unknown directive"),
    ],
)
def test_bad_directives_say_what_is_wrong(header: str, error: str) -> None:
    options = file_options(f"{header}\nSELECT 1; -- {BATCHED}\n", "0004_x.sql")
    assert any(error in e and e.startswith("0004_x.sql: ") for e in options.errors), options.errors


def test_a_backfill_that_ignores_its_batch_is_refused_before_anything_runs() -> None:
    plan = plan_files({"0001_b.sql": "-- torghut-rollout: backfill table=t\nUPDATE t SET x = 1;\n"}, [])
    assert not plan.ok
    assert "torghut_rollout.batch_first or torghut_rollout.batch_last" in plan.errors[0]


def test_statements_split_as_postgres_parses_them() -> None:
    sql = "CREATE INDEX CONCURRENTLY a ON t (x);\nDO $$ BEGIN PERFORM 1; END $$;\n-- done\nSELECT ';';"
    assert split_statements(sql) == [
        "CREATE INDEX CONCURRENTLY a ON t (x)",
        "DO $$ BEGIN PERFORM 1; END $$",
        "SELECT ';'",  # a comment between statements is not part of either
    ]


SETTINGS = BackfillSettings(batch_duration=0.1, min_batch=10, max_batch=50_000)


@given(size=st.integers(min_value=10, max_value=50_000), elapsed=st.floats(min_value=0.0, max_value=1e4))
def test_the_batch_size_moves_towards_the_target_at_most_twofold(size: int, elapsed: float) -> None:
    following = next_batch_size(size, elapsed, SETTINGS)
    assert SETTINGS.min_batch <= following <= SETTINGS.max_batch
    assert following <= max(size * 2, SETTINGS.min_batch)
    assert following >= min(size // 2, SETTINGS.max_batch)
    if elapsed > SETTINGS.batch_duration * 1.01:
        assert following <= size  # too slow: never larger
    if elapsed < SETTINGS.batch_duration * 0.99:
        assert following >= size  # fast: never smaller


def test_the_batch_size_settles_where_batches_take_the_target_time() -> None:
    size, per_row = 1000, 0.0002  # 0.2 ms a row: 500 rows make a 100 ms batch
    for _ in range(20):
        size = next_batch_size(size, size * per_row, SETTINGS)
    assert size == 500


@given(attempt=st.integers(min_value=0, max_value=30), seed=st.integers())
def test_backoff_is_exponential_capped_and_jittered(attempt: int, seed: int) -> None:
    wait = backoff(attempt, random.Random(seed))
    ceiling = min(10.0, 0.5 * 2**attempt)
    assert ceiling / 2 <= wait <= ceiling
