"""Promotion evidence against a real PostgreSQL 15 with Torghut's research_promotions: only an approved row for
this release counts (mode, no deny reason, created since the attempt started or within the window, the named
candidate); every other row is named in the refusal, never a pass."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.conftest import GATE_READER
from torghut_localstack.postgres import PostgresServer
from torghut_localstack.torghut_db import create_database, create_schema, drop_database, make_engine
from torghut_operator.adapters.live import PROMOTION_EVIDENCE_SQL, promotion_evidence_verdict
from torghut_operator.adapters.postgres.gate_queries import PostgresGateway
from torghut_operator.core.observations import PromotionEvidence
from torghut_operator.core.planner import CheckPromotionEvidence
from torghut_operator.core.timefmt import format_time

STARTED = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def dsn(postgres: PostgresServer) -> Iterator[str]:
    """The database, as its superuser (to write the rows)."""
    name = f"evidence_{uuid.uuid4().hex[:16]}"
    create_database(postgres.dsn(), name)
    engine = make_engine(postgres.dsn(name))
    try:
        create_schema(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM research_promotions"))
    finally:
        engine.dispose()
    yield postgres.dsn(name)
    drop_database(postgres.dsn(), name)


def add_row(dsn: str, *, candidate: str, mode: str, at: datetime, deny: str | None = None) -> None:
    engine = make_engine(dsn)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO research_promotions (candidate_id, requested_mode, approved_mode, deny_reason,"
                    " created_at) VALUES (:c, :m, :m, :d, :t)"
                ),
                {"c": candidate, "m": mode, "d": deny, "t": at},
            )
    finally:
        engine.dispose()


def evidence(dsn: str, request: CheckPromotionEvidence) -> PromotionEvidence:
    """Read as a gate reads: a read-only role (the gates refuse a superuser)."""
    params = {"mode": request.mode, "since": request.since, "candidate": request.candidate_id}
    reader = dsn.replace("postgresql://postgres@", f"postgresql://{GATE_READER}@")
    with PostgresGateway(reader, statement_timeout=5, connect_timeout=5) as gateway:
        rows = gateway.query_rows(PROMOTION_EVIDENCE_SQL, params)
    return promotion_evidence_verdict(request, rows[0] if rows else None)


pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("gate_reader")]


def test_an_approval_older_than_the_attempt_another_candidate_or_a_denial_never_opens_a_step(dsn: str) -> None:
    add_row(dsn, candidate="cand-1", mode="live", at=STARTED - timedelta(days=3))  # an old release's approval
    add_row(dsn, candidate="cand-2", mode="live", at=STARTED + timedelta(minutes=5))  # another candidate
    add_row(dsn, candidate="cand-1", mode="live", at=STARTED + timedelta(minutes=6), deny="drawdown")
    add_row(dsn, candidate="cand-1", mode="paper", at=STARTED + timedelta(minutes=7))  # another mode
    request = CheckPromotionEvidence("live", format_time(STARTED), "cand-1")
    found = evidence(dsn, request)
    assert not found.found
    assert found.message == (
        "no approved research_promotions row for mode live created since 2026-12-01T12:00:00.000Z for candidate "
        "cand-1 (seen: 1 older than that, 1 for another candidate, 1 denied)"
    )
    add_row(dsn, candidate="cand-1", mode="live", at=STARTED + timedelta(minutes=8))
    assert evidence(dsn, request) == PromotionEvidence(
        True,
        "1 approved research_promotions row for mode live created since 2026-12-01T12:00:00.000Z for candidate cand-1",
    )


def test_a_window_admits_an_approval_given_just_before_the_attempt(dsn: str) -> None:
    add_row(dsn, candidate="cand-1", mode="paper", at=STARTED - timedelta(minutes=30))
    assert not evidence(dsn, CheckPromotionEvidence("paper", format_time(STARTED))).found
    assert evidence(dsn, CheckPromotionEvidence("paper", format_time(STARTED - timedelta(hours=1)))).found


def test_without_a_candidate_any_fresh_approved_row_for_the_mode_counts(dsn: str) -> None:
    add_row(dsn, candidate="cand-9", mode="paper", at=STARTED + timedelta(seconds=1))
    assert evidence(dsn, CheckPromotionEvidence("paper", format_time(STARTED))).found
    assert not evidence(dsn, CheckPromotionEvidence("live", format_time(STARTED))).found


@pytest.mark.parametrize("row", [None, {"matching": None}, {"matching": "x", "older": 0}])
def test_an_unexpected_answer_is_never_evidence(row: dict[str, object] | None) -> None:
    assert not promotion_evidence_verdict(CheckPromotionEvidence("live", "2026-12-01T12:00:00.000Z"), row).found
