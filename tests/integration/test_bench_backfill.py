"""`make bench-backfill` end to end at a tiny size: it loads, backfills both ways under the writer loop and prints its
table. Figures only: no timing is asserted."""

from __future__ import annotations

import re

import pytest

from torghut_localstack import bench_backfill
from torghut_localstack.postgres import PostgresServer

pytestmark = pytest.mark.integration


def test_the_bench_backfills_both_ways_and_prints_its_table(
    postgres: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench_backfill.main(["--rows", "2000", "--idle-seconds", "0.5", "--admin-dsn", postgres.dsn()]) == 0

    out = capsys.readouterr().out
    assert "rows 2,000 (1,800 need the backfill)" in out  # 90 % of the rows have NULL route columns
    for label in ("backfill total (s)", "writer p99 (ms)", "writer max (ms)", "lock timeouts (1s)"):
        assert label in out
    for phase in ("idle A", "batched", "idle B", "single UPDATE"):
        assert phase in out
    assert "writer p99 during / idle: batched " in out
    assert "batched total / single UPDATE: " in out
    # the seeded rows plus what the idle writers inserted (old-image rows, NULL route columns)
    updated = re.search(r"single UPDATE: one UPDATE of ([0-9,]+) rows in one transaction", out)
    assert updated is not None
    assert int(updated.group(1).replace(",", "")) >= 1_800
    assert "same rows after both: yes" in out  # the batches wrote exactly what the single statement wrote
    assert "last writer error" not in out


def test_a_server_setting_reaches_the_server_the_bench_starts(capsys: pytest.CaptureFixture[str]) -> None:
    """`--pg-setting shared_buffers=16MB`: the bench's own server runs with it and the printed settings say so."""
    argv = ["--rows", "500", "--idle-seconds", "0.2", "--pg-setting", "shared_buffers=16MB"]
    assert bench_backfill.main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"server settings: .*shared_buffers=16MB", out), out[-2000:]
    assert "same rows after both: yes" in out


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--pg-setting", "shared_buffers"], "--pg-setting takes NAME=VALUE"),
        (["--pg-setting", "=16MB"], "--pg-setting takes NAME=VALUE"),
        (["--admin-dsn", "postgresql://x@127.0.0.1/postgres", "--pg-setting", "a=b"], "not to --admin-dsn's"),
    ],
)
def test_a_bad_server_setting_is_refused_before_anything_starts(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        bench_backfill.main(argv)
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err
