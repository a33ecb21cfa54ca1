"""The evidence report as a reviewer reads it, and the ledger rows the reconciler derives from status (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from torghut_operator.core.api.spec import TorghutRolloutSpec
from torghut_operator.core.api.status import (
    CheckStatus,
    Condition,
    LastAction,
    Measurement,
    MigrationStatus,
    Phase,
    TorghutRolloutStatus,
    Verdict,
)
from torghut_operator.core.observations import Observations, TargetState
from torghut_operator.core.planner import Event, plan
from torghut_operator.core.presets import effective_checks
from torghut_operator.core.records import (
    DecisionRecord,
    LedgerDecision,
    LedgerMeasurement,
    MeasurementRecord,
    RolloutRef,
    query_hash,
    status_measurements,
    transitions,
)
from torghut_operator.core.text import shorten
from torghut_operator.core.timefmt import format_time
from torghut_operator.evidence.facts import (
    GateDecision,
    LaneRun,
    RouteNullRate,
    TableUnavailable,
    TableWrites,
    TorghutFacts,
    Unavailable,
    facts_since,
    lane_runs_seen,
)
from torghut_operator.evidence.report import PR_BODY_LIMIT, cell, code, fit_for_pr, render_report

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
NEW = "registry/torghut@sha256:new"
OLD = "registry/torghut@sha256:old"
HASH = "0123456789abcdef"
REF = RolloutRef(uid="uid-1", name="release-42", namespace="torghut", attempt=2, spec_hash=HASH)
LONG_SQL = (
    "SELECT string_agg(relname || ' lacks ' || privilege, ', ')   AS value\n"
    "FROM research_tables   WHERE NOT has_table_privilege('torghut_app', oid, privilege)"
)


def make_spec() -> TorghutRolloutSpec:
    return TorghutRolloutSpec.model_validate(
        {
            "target": {"name": "torghut", "container": "user-container", "image": NEW},
            "database": {"secretRef": {"name": "torghut-db-app", "key": "uri"}},
            "prometheus": {"url": "http://prometheus:9090"},
            "verify": {
                "checks": [
                    {"name": "route-null-rate", "postgres": {"query": "SELECT 0"}, "max": 0},
                    {"name": "never-measured", "postgres": {"query": "SELECT 1"}, "min": 1},
                ]
            },
        }
    )


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def check(name: str, phase: Verdict, *, value: str | None = "0", query: str = "SELECT 0", **fields: Any) -> CheckStatus:
    base: dict[str, Any] = {
        "name": name,
        "stage": "verify",
        "provider": "postgres",
        "query": query,
        "threshold": "<= 0",
        "phase": phase,
        "message": f"{name} {phase.value}",
        "measurements": [Measurement(phase=phase, at=format_time(at(5)), value=value, message="m")],
    }
    base.update(fields)
    return CheckStatus(**base)


def make_status(**fields: Any) -> TorghutRolloutStatus:
    base: dict[str, Any] = {
        "phase": Phase.FAILED,
        "spec_hash": HASH,
        "attempt": 2,
        "image": NEW,
        "previous_image": OLD,
        "started_at": format_time(at(0)),
        "completed_at": format_time(at(9)),
        "message": "verify failed (GateFailed): route-null-rate Failed | value 0.25",
        "failed_stage": "verify",
        "migration": MigrationStatus(mode="job", job_name="release-42-migrate-01234567-2", message="Job completed"),
        "checks": [
            check("route-null-rate", Verdict.FAILED, value="0.25", failed=1, successful=2),
            check("research-grants", Verdict.SUCCESSFUL, value="", query=LONG_SQL, successful=3),
            check("research-writes", Verdict.INCONCLUSIVE, value=None, approved=True, inconclusive=4),
            check("schema-current", Verdict.ERROR, value=None, provider="http", errors=5, consecutive_errors=5),
            check("fallback-ratio", Verdict.RUNNING, value="a|b`c", provider="prometheus", successful=1),
            check("signal-throughput", Verdict.SUCCESSFUL, value="12", dry_run=True, successful=3),
        ],
    }
    base.update(fields)
    return TorghutRolloutStatus(**base)


def measured(
    name: str, minutes: float, verdict: str, value: str | None, *, ref: RolloutRef = REF, stage: str = "verify"
) -> MeasurementRecord:
    m = LedgerMeasurement(
        stage=stage,
        check_name=name,
        provider="postgres",
        query="SELECT 0",
        threshold="<= 0",
        verdict=verdict,
        measured_at=at(minutes),
        value=value,
        message=f"{name} at {minutes}",
    )
    return MeasurementRecord(rollout=ref, measurement=m, query_hash=m.query_hash, recorded_at=at(minutes))


def decided(minutes: float, from_: str, to: str, stage: str, reason: str, message: str) -> DecisionRecord:
    d = LedgerDecision(
        from_phase=from_, to_phase=to, stage=stage, reason=reason, decided_at=at(minutes), message=message
    )
    return DecisionRecord(rollout=REF, decision=d, recorded_at=at(minutes))


FACTS = TorghutFacts(
    since=at(0),
    collected_at=at(10),
    route_null_rate=RouteNullRate(executions=8, unset=1),
    research_writes=(
        TableWrites("research_runs", 3, 7),
        TableWrites("research_candidates", 6, 14),
        TableUnavailable("research_fold_metrics", "permission denied for table research_fold_metrics (42501)"),
        TableWrites("research_stress_metrics", 0, 0),
        TableWrites("research_promotions", 6, 14),
    ),
    lane_runs=(
        LaneRun(
            run_id="run-1",
            status="completed",
            strategy_id="intraday-momentum-v3",
            created_at=at(1),
            decisions=(
                GateDecision(
                    "run-1-c01",
                    decision_action="promote",
                    requested_mode="paper",
                    approved_mode="paper",
                    approve_reason="walk_forward_and_stress_gates_passed",
                    patch_ref="autonomy/patches/run-1-c01.yaml",
                ),
                GateDecision("run-1-c02", decision_action="hold", deny_reason="fold pnl | dispersion"),
                GateDecision("run-1-c03"),
            ),
        ),
        LaneRun(run_id="run-2", status="running", strategy_id=None, created_at=at(2)),
    ),
)


def report(**overrides: Any) -> str:
    args: dict[str, Any] = {
        "name": "release-42",
        "namespace": "torghut",
        "spec": make_spec(),
        "status": make_status(),
        "measurements": [
            measured("route-null-rate", 7, "Failed", "0.25"),
            measured("route-null-rate", 3, "Successful", "0"),
            measured("route-null-rate", 5, "Successful", "0"),
            measured(
                "route-null-rate", 1, "Successful", "0", ref=RolloutRef("uid-1", "release-42", "torghut", 1, HASH)
            ),
        ],
        "decisions": [
            decided(9, "Verifying", "Failed", "verify", "GateFailed", "route-null-rate Failed"),
            decided(2, "Pending", "Migrating", "migrate", "Migrating", "migrating (job)"),
            decided(4, "Deploying", "Verifying", "deploy", "Verifying", "available; verifying 6 check(s)"),
            decided(3, "Migrating", "Deploying", "migrate", "MigrationJobSucceeded", "deploying"),
        ],
        "facts": FACTS,
    }
    args.update(overrides)
    return render_report(**args)


# --- the report ----------------------------------------------------------------------------------------------


def test_header_names_the_rollout_images_phase_and_run() -> None:
    text = report()
    assert text.startswith("# TorghutRollout evidence: torghut/release-42\n\n| Field | Value |\n|---|---|\n")
    for row in (
        "| Rollout | `torghut/release-42` |",
        "| Target | Deployment `torghut`, container `user-container` |",
        f"| Image | `{NEW}` |",
        f"| Previous image | `{OLD}` |",
        "| Phase | **Failed** |",
        "| Attempt | 2 |",
        f"| Spec hash | `{HASH}` |",
        "| Started | 2026-11-24 12:00:00Z |",
        "| Completed | 2026-11-24 12:09:00Z |",
        "| Message | verify failed (GateFailed): route-null-rate Failed \\| value 0.25 |",
        "| Failed stage | verify |",
        "| Migration | job; Job release-42-migrate-01234567-2; Job completed |",
    ):
        assert row in text, row


def test_verdict_table_has_a_row_per_check_in_every_verdict() -> None:
    text = report()
    header = "| Check | Stage | Provider | Verdict | Last value | Threshold | Measurements | Query |"
    assert header in text
    rows = text.split(header)[1].split("\n\n")[0].splitlines()[2:]
    assert [r.split(" | ")[0] for r in rows] == [
        "| route-null-rate",
        "| research-grants",
        "| research-writes",
        "| schema-current",
        "| fallback-ratio",
        "| signal-throughput",
        "| never-measured",
    ]
    assert rows[0] == (
        "| route-null-rate | verify | postgres | Failed | `0.25` | `<= 0` "
        "| 2 ok / 1 failed / 0 inconclusive / 0 error (3 in ledger) | `SELECT 0` |"
    )
    assert "| research-writes | verify | postgres | Inconclusive (approved) | — |" in rows[2]
    assert "| schema-current | verify | http | Error | — |" in rows[3]
    assert "0 ok / 0 failed / 0 inconclusive / 5 error |" in rows[3]
    assert "| fallback-ratio | verify | prometheus | Running | ``a\\|b`c`` |" in rows[4]
    assert "| signal-throughput | verify | postgres | Successful (dry run) | `12` |" in rows[5]
    assert rows[6] == (
        "| never-measured | verify | postgres | Pending | — | `>= 1` "
        "| 0 ok / 0 failed / 0 inconclusive / 0 error | `SELECT 1` |"
    )


def test_long_queries_are_one_line_shortened_and_escaped() -> None:
    row = next(r for r in report().splitlines() if r.startswith("| research-grants "))
    expected = "SELECT string_agg(relname \\|\\| ' lacks ' \\|\\| privilege, ', ') AS value FRO…"
    assert row.endswith(f"| `{expected}` |")
    assert "| Successful | *empty* | `<= 0` |" in row  # an empty string is a value, not "no value"


def test_full_queries_follow_with_their_hash() -> None:
    text = report()
    digest = query_hash(LONG_SQL)[:12]
    assert f"<details><summary>research-grants (postgres, sha256 {digest})</summary>\n\n```sql\n{LONG_SQL}\n```" in text
    assert text.count("<details>") == 7


def test_timeline_is_ordered_by_time() -> None:
    text = report()
    assert (
        "| Time | Attempt | Transition | Stage | Reason | Message |\n|---|---|---|---|---|---|\n"
        "| 2026-11-24 12:02:00Z | 2 | Pending → Migrating | migrate | Migrating | migrating (job) |\n"
        "| 2026-11-24 12:03:00Z | 2 | Migrating → Deploying | migrate | MigrationJobSucceeded | deploying |\n"
        "| 2026-11-24 12:04:00Z | 2 | Deploying → Verifying | deploy | Verifying | available; verifying 6 check(s) |\n"
        "| 2026-11-24 12:09:00Z | 2 | Verifying → Failed | verify | GateFailed | route-null-rate Failed |\n"
    ) in text


def test_measurements_of_the_current_run_in_time_order() -> None:
    text = report()
    assert "Attempt 2, spec `0123456789abcdef`:" in text
    assert (
        "| Time | Check | Verdict | Value | Message |\n|---|---|---|---|---|\n"
        "| 2026-11-24 12:03:00Z | route-null-rate | Successful | `0` | route-null-rate at 3 |\n"
        "| 2026-11-24 12:05:00Z | route-null-rate | Successful | `0` | route-null-rate at 5 |\n"
        "| 2026-11-24 12:07:00Z | route-null-rate | Failed | `0.25` | route-null-rate at 7 |\n"
    ) in text
    assert "1 measurement(s) of other attempts or specs are not shown." in text


def test_checks_of_earlier_stages_come_from_the_ledger() -> None:
    status = make_status(
        phase=Phase.PROMOTING,
        checks=[check("route-null-rate", Verdict.RUNNING, stage="promote:canary", successful=1)],
    )
    records = [
        measured("route-null-rate", 3, "Successful", "0"),
        measured("route-null-rate", 4, "Inconclusive", None),
        measured("route-null-rate", 5, "Successful", "0"),
        measured("route-null-rate", 8, "Successful", "0", stage="promote:canary"),
    ]
    text = report(status=status, measurements=records)
    assert (
        "| route-null-rate | verify | postgres | Successful (last measurement) | `0` | `<= 0` "
        "| 2 ok / 0 failed / 1 inconclusive / 0 error | `SELECT 0` |\n"
        "| route-null-rate | promote:canary | postgres | Running | `0` | `<= 0` "
        "| 1 ok / 0 failed / 0 inconclusive / 0 error (1 in ledger) | `SELECT 0` |\n"
        "| never-measured | verify | postgres | Pending |"
    ) in text


def test_torghut_facts() -> None:
    text = report()
    assert "Window: since 2026-11-24 12:00:00Z (collected 2026-11-24 12:10:00Z)." in text
    assert "- Execution route null rate: **12.50%** (1 of 8 executions without an expected or actual adapter)" in text
    assert (
        "| Table | Rows in window | Rows in total |\n|---|---|---|\n"
        "| research_runs | 3 | 7 |\n"
        "| research_candidates | 6 | 14 |\n"
        "| research_fold_metrics | unavailable: permission denied for table research_fold_metrics (42501) | — |\n"
        "| research_stress_metrics | 0 | 0 |\n"
        "| research_promotions | 6 | 14 |\n"
    ) in text
    assert (
        "| Run | Created | Status | Strategy | Candidate | Decision | Approved mode | Reason | Patch artifact |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        "| `run-1` | 2026-11-24 12:01:00Z | completed | intraday-momentum-v3 | `run-1-c01` | promote | paper "
        "| walk_forward_and_stress_gates_passed | `autonomy/patches/run-1-c01.yaml` |\n"
        "| `run-1` | 2026-11-24 12:01:00Z | completed | intraday-momentum-v3 | `run-1-c02` | hold | — "
        "| fold pnl \\| dispersion | — |\n"
        "| `run-1` | 2026-11-24 12:01:00Z | completed | intraday-momentum-v3 | `run-1-c03` | no promotion row | — "
        "| — | — |\n"
        "| `run-2` | 2026-11-24 12:02:00Z | running | — | no candidates | — | — | — | — |\n"
    ) in text


def test_facts_unavailable_or_missing() -> None:
    down = Unavailable('relation "executions" does not exist (42P01)')
    facts = TorghutFacts(at(0), at(10), down, down, down)
    text = report(facts=facts)
    assert '- Execution route null rate: unavailable: relation "executions" does not exist (42P01)' in text
    assert text.count('unavailable: relation "executions" does not exist (42P01)') == 3
    no_rows = TorghutFacts(at(0), at(10), RouteNullRate(0, 0), (), ())
    text = report(facts=no_rows)
    assert "- Execution route null rate: no executions in the window (no data, not a pass)" in text
    assert "No lane run in the window." in text
    assert "## Torghut facts\n\nNot collected." in report(facts=None)


def test_empty_ledger_and_no_spec() -> None:
    text = report(spec=None, status=TorghutRolloutStatus(), measurements=[], decisions=[], facts=None)
    assert "| Target | — |" in text
    assert "| Phase | **Pending** |" in text
    assert "No checks." in text
    assert "No stage decisions recorded in the ledger." in text
    assert "No measurements recorded in the ledger for this run." in text
    assert "## Queries" not in text


def test_output_is_deterministic_whatever_the_input_order() -> None:
    first = report()
    again = report(
        measurements=list(reversed([measured("route-null-rate", m, "Successful", "0") for m in (3, 5)])),
    )
    assert first == report()
    assert again == report(measurements=[measured("route-null-rate", m, "Successful", "0") for m in (3, 5)])


def test_cell_and_code_escaping() -> None:
    assert cell("a | b\n  c") == "a \\| b c"
    assert cell("<script>x</script> <= 3") == "&lt;script>x&lt;/script> <= 3"
    assert cell("  ") == "—"
    assert code("x|y") == "`x\\|y`"
    assert code("x|y", in_table=False) == "`x|y`"
    assert code("uses `ticks`") == "`` uses `ticks` ``"
    assert code("a``b") == "```a``b```"
    assert shorten("abcdef", 4) == "abc…"
    assert shorten("a\n\tb", 10) == "a b"


# --- ledger rows from status ---------------------------------------------------------------------------------


def test_status_measurements_become_ledger_rows_oldest_first() -> None:
    status = make_status(
        checks=[
            check(
                "b",
                Verdict.RUNNING,
                measurements=[Measurement(phase=Verdict.SUCCESSFUL, at="2026-11-24T12:05:00.25Z", value="1")],
            ),
            check(
                "a",
                Verdict.RUNNING,
                measurements=[Measurement(phase=Verdict.ERROR, at="2026-11-24T12:04:00Z", message="boom")],
            ),
        ]
    )
    rows = status_measurements(status)
    assert [(r.check_name, r.verdict, r.value) for r in rows] == [("a", "Error", None), ("b", "Successful", "1")]
    assert rows[1].measured_at == datetime(2026, 11, 24, 12, 5, 0, 250000, tzinfo=UTC)
    assert rows[0].query_hash == query_hash("SELECT 0")
    assert rows[0].message == "boom"


def test_rows_need_aware_times() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        LedgerDecision("Pending", "Migrating", "migrate", "Migrating", datetime(2026, 1, 1))


def planned(status: TorghutRolloutStatus, **obs: Any) -> tuple[TorghutRolloutStatus, tuple[Event, ...]]:
    spec = make_spec()
    result = plan(spec, effective_checks(spec), status, Observations(now=T0, **obs), name="release-42")
    return result.status, result.events


def test_transitions_from_a_real_planner_step() -> None:
    before = TorghutRolloutStatus()
    after, events = planned(before, target=TargetState(exists=True, image=OLD, rolled_out=True))
    assert transitions(before, after, events) == [
        LedgerDecision("Pending", "Deploying", "deploy", "Deploying", T0, f"deploying {NEW}")
    ]
    assert transitions(after, after, ()) == []


def test_retry_moves_twice_and_says_it_was_a_verb() -> None:
    spec = make_spec()
    failed = TorghutRolloutStatus(
        phase=Phase.FAILED,
        spec_hash=spec.spec_hash(),
        image=NEW,
        previous_image=OLD,
        phase_started_at=format_time(T0 - timedelta(hours=1)),
    )
    after, events = planned(failed, verb="retry", target=TargetState(exists=True, image=OLD, rolled_out=True))
    assert after.attempt == 2
    assert [(d.from_phase, d.to_phase, d.stage, d.reason) for d in transitions(failed, after, events)] == [
        ("Failed", "Pending", "", "Verb"),
        ("Pending", "Deploying", "deploy", "Deploying"),
    ]


def test_a_failure_names_its_reason_and_the_stage_it_failed() -> None:
    before = make_status(
        phase=Phase.VERIFYING, stage="verify", last_action=LastAction(verb="pause", at="x", result="y")
    )
    after = before.model_copy(
        update={"phase": Phase.ROLLING_BACK, "stage": "rollback", "phase_started_at": format_time(T0), "message": "m"}
    )
    events = (
        Event("Warning", "GateFailed", "route-null-rate Failed"),
        Event("Warning", "RollingBack", "Verifying -> RollingBack: verify failed; restoring old"),
    )
    assert transitions(before, after, events) == [
        LedgerDecision("Verifying", "RollingBack", "verify", "GateFailed", T0, "verify failed; restoring old")
    ]
    # without phase events, a changed phase is still one decision
    assert transitions(before, after) == [LedgerDecision("Verifying", "RollingBack", "verify", "RollingBack", T0, "m")]


# --- lane runs after the deploy, and the pull request body ------------------------------------------------------


def test_the_report_says_how_many_lane_runs_it_saw_and_that_it_keeps_watching() -> None:
    assert isinstance(FACTS.lane_runs, tuple)
    text = report()
    assert f"Lane runs seen since {at(0).strftime('%Y-%m-%d %H:%M:%SZ')}: **2 of 3** (not all yet" in text
    assert lane_runs_seen(FACTS) == 2
    three = TorghutFacts(
        at(0), at(10), FACTS.route_null_rate, FACTS.research_writes, (*FACTS.lane_runs, FACTS.lane_runs[0])
    )
    done = report(facts=three)
    assert "**3 of 3**." in done
    assert "not all yet" not in done
    assert lane_runs_seen(TorghutFacts(at(0), at(1), RouteNullRate(0, 0), (), Unavailable("x"))) is None


def test_lane_runs_are_counted_from_the_deploy_not_from_the_start() -> None:
    status = TorghutRolloutStatus(started_at=format_time(at(0)))
    assert facts_since(status) == at(0)
    deployed = Condition(type="Deployed", status="True", last_transition_time=format_time(at(4)), reason="Deployed")
    assert facts_since(status.model_copy(update={"conditions": [deployed]})) == at(4)
    assert facts_since(TorghutRolloutStatus()) is None


def huge_status() -> TorghutRolloutStatus:
    long = "route-null-rate: value 0.5 above max 0 " + "x" * 900
    checks = [
        CheckStatus(
            name=f"check-{i:03d}",
            stage="verify",
            provider="postgres",
            query="SELECT " + "y" * 3000,
            threshold="max 0",
            measurements=[
                Measurement(phase=Verdict.FAILED, at=format_time(at(j)), value="0.5", message=long) for j in range(10)
            ],
        )
        for i in range(400)
    ]
    return TorghutRolloutStatus(phase=Phase.FAILED, message="m" * 5000, checks=checks)


def test_a_huge_report_fits_a_pull_request_and_keeps_its_sections_and_the_facts() -> None:
    text = report(status=huge_status())
    assert len(text) > PR_BODY_LIMIT
    body = fit_for_pr(text)
    assert len(body) < PR_BODY_LIMIT
    for heading in ("# TorghutRollout evidence: torghut/release-42", "## Verdicts", "## Torghut facts"):
        assert heading in body
    assert "Execution route null rate" in body
    assert "Shortened to fit a pull request" in body
    assert body.count("```") % 2 == 0, "no code fence left open"
    assert body.count("<details>") == body.count("</details>")


def test_a_report_that_fits_is_left_as_it_is() -> None:
    text = report()
    assert fit_for_pr(text) == text


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=3000), st.integers(200, 2000))
def test_any_text_comes_out_under_the_limit(text: str, limit: int) -> None:
    assert len(fit_for_pr(text, limit)) < limit
