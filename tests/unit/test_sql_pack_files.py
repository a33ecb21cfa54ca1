"""The route/grant pack's files as the migrator plans them: the split pack lands on a database that applied the old
single backfill file, and each file says how it must run."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from torghut_localstack import sql_pack
from torghut_operator.adapters.postgres.migrator import AppliedRecord, checksum, file_options, plan_files

pytestmark = pytest.mark.unit

PACK = {p.name: p.read_text("utf-8") for p in sql_pack.pack_files()}
OLD_BACKFILL = "0002_route_provenance_backfill.sql"


def test_the_pack_is_four_files_in_order() -> None:
    assert list(PACK) == [
        "0001_research_grants.sql",
        "0002_route_provenance_columns.sql",
        "0003_route_provenance_indexes.sql",
        "0004_route_provenance_backfill.sql",
    ]


def test_the_files_declare_how_they_run() -> None:
    options = {name: file_options(body, name) for name, body in PACK.items()}
    assert all(o.errors == () for o in options.values())
    assert all(o.repeatable for o in options.values())
    assert [n for n, o in options.items() if not o.transactional] == ["0003_route_provenance_indexes.sql"]
    assert {n: o.backfill.table for n, o in options.items() if o.backfill} == {
        "0004_route_provenance_backfill.sql": "public.executions"
    }
    backfill = PACK["0004_route_provenance_backfill.sql"]
    assert "torghut_rollout.batch_first" in backfill
    assert "torghut_rollout.batch_last" in backfill


def _code(body: str) -> str:
    return re.sub(r"--[^\n]*", "", body)


def test_only_the_index_file_builds_indexes_and_only_concurrently() -> None:
    for name, body in PACK.items():
        code = _code(body)
        if name == "0003_route_provenance_indexes.sql":
            statements = [s.strip() for s in code.split(";") if s.strip()]
            assert len(statements) == 2
            assert all(s.startswith("CREATE INDEX CONCURRENTLY IF NOT EXISTS ") for s in statements)
        else:
            assert "CREATE INDEX" not in code.upper(), name
    assert "ALTER TABLE" in _code(PACK["0002_route_provenance_columns.sql"])
    assert "ALTER TABLE" not in _code(PACK["0004_route_provenance_backfill.sql"])


def test_a_database_that_applied_the_old_single_file_takes_the_split_pack() -> None:
    """The old file name sorts before every new one and its checksum is none of theirs: a warning, not an error."""
    at = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    history = [
        AppliedRecord("0001_research_grants.sql", checksum(PACK["0001_research_grants.sql"]), at, "torghut/r1"),
        AppliedRecord(OLD_BACKFILL, "0" * 64, at, "torghut/r1"),
    ]
    plan = plan_files(PACK, history)
    assert plan.ok, plan.errors
    assert [f.name for f in plan.pending] == [
        "0002_route_provenance_columns.sql",
        "0003_route_provenance_indexes.sql",
        "0004_route_provenance_backfill.sql",
    ]
    assert [r.name for r in plan.applied] == ["0001_research_grants.sql"]
    assert plan.warnings == (
        f"{OLD_BACKFILL} (applied 2026-11-20 09:30Z) is no longer in the ConfigMap; it stays applied",
    )
    assert all(name > OLD_BACKFILL for name in PACK if name != "0001_research_grants.sql")
