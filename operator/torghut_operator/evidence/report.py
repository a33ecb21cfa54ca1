"""The evidence report: one Markdown document a reviewer pastes into the release PR.

:func:`render_report` is pure and deterministic (same input, same text): the rollout's header, a verdict table of
every check, the timeline of stage decisions, every measurement of the current run from the ledger, the Torghut
facts the owners' checklist asks for (route null rate, research table writes, the first lane runs with their gate
decisions and patch artifacts) and the full text of every query.

The facts are values of `evidence.facts`, gathered by `adapters.postgres.torghut_facts`; nothing here reads a
database.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from torghut_operator.core.api.spec import TorghutRolloutSpec
from torghut_operator.core.api.status import CheckStatus, Measurement, TorghutRolloutStatus, Verdict
from torghut_operator.core.presets import effective_checks
from torghut_operator.core.records import DecisionRecord, LedgerMeasurement, MeasurementRecord, query_hash
from torghut_operator.core.text import shorten
from torghut_operator.core.timefmt import parse_time
from torghut_operator.evidence.facts import (
    LANE_RUNS,
    REFRESH_HOURS,
    TableUnavailable,
    TorghutFacts,
    Unavailable,
)

EMPTY = "—"
QUERY_CHARS = 72
VALUE_CHARS = 40
MESSAGE_CHARS = 160
MAX_MEASUREMENT_ROWS = 200
"""Measurements listed (the newest); the ledger keeps them all."""


# ---------------------------------------------------------------------------------------------------------------
# Markdown


_TAG_LIKE = re.compile(r"<(?=[A-Za-z/!?])")


def cell(text: str | None, limit: int = MESSAGE_CHARS) -> str:
    """Plain text for a table cell: one line, shortened, ``|`` escaped, nothing that reads as an HTML tag."""
    if text is None or not text.strip():
        return EMPTY
    return _TAG_LIKE.sub("&lt;", shorten(text, limit)).replace("|", "\\|")


def code(text: str | None, limit: int | None = None, *, in_table: bool = True) -> str:
    """``text`` as a code span (one line, shortened to ``limit``); in a table cell ``|`` is escaped as GFM wants
    even inside code spans."""
    if text is None or text == "":
        return EMPTY
    flat = " ".join(text.split()) if limit is None else shorten(text, limit)
    if in_table:
        flat = flat.replace("|", "\\|")
    ticks = "`" * (max((len(run) for run in re.findall(r"`+", flat)), default=0) + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{ticks}{pad}{flat}{pad}{ticks}"


def _value(value: str | None) -> str:
    """A measured value: none is "—", an empty string (a real value, e.g. no missing grants) is *empty*."""
    return "*empty*" if value == "" else code(value, VALUE_CHARS)


def _fence(text: str, language: str = "") -> str:
    ticks = "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{ticks}{language}\n{text.rstrip()}\n{ticks}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _time(moment: datetime | str | None) -> str:
    if moment is None:
        return EMPTY
    value = parse_time(moment) if isinstance(moment, str) else moment
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _verdict(check: CheckStatus) -> str:
    text = check.phase.value
    if check.phase is Verdict.INCONCLUSIVE and check.approved:
        text += " (approved)"
    if check.dry_run:
        text += " (dry run)"
    return text


def render_report(
    *,
    name: str,
    namespace: str,
    spec: TorghutRolloutSpec | None,
    status: TorghutRolloutStatus,
    measurements: Sequence[MeasurementRecord],
    decisions: Sequence[DecisionRecord],
    facts: TorghutFacts | None,
) -> str:
    """The evidence report of the rollout ``namespace/name`` as Markdown.

    ``measurements`` and ``decisions`` come from the ledger (any order, any run); the report shows the measurements
    of the current run (status' spec hash and attempt) and the decisions of the current spec (every attempt).
    ``facts`` None: not collected."""
    current = [
        r
        for r in measurements
        if r.rollout.attempt == status.attempt and r.rollout.spec_hash == (status.spec_hash or r.rollout.spec_hash)
    ]
    current.sort(key=lambda r: (r.measurement.measured_at, r.measurement.check_name))
    timeline = [r for r in decisions if r.rollout.spec_hash == (status.spec_hash or r.rollout.spec_hash)]
    timeline.sort(key=lambda r: r.decision.decided_at)
    checks = _check_rows(spec, status, current)

    lines = [f"# TorghutRollout evidence: {namespace}/{name}", ""]
    lines += _header(name, namespace, spec, status)
    lines += ["", "## Verdicts", ""]
    lines += _verdicts(checks, current)
    lines += ["", "## Timeline", ""]
    lines += _timeline(timeline, len(decisions) - len(timeline))
    lines += ["", "## Measurements", ""]
    lines += _measurements(current, len(measurements) - len(current), status)
    lines += ["", "## Torghut facts", ""]
    lines += _facts(facts)
    if checks:
        lines += ["", "## Queries", ""]
        lines += _queries(checks)
    return "\n".join(lines).rstrip() + "\n"


@dataclass(frozen=True)
class _CheckRow:
    check: CheckStatus
    from_ledger: bool = False
    """Only the ledger knows this check (its stage has left status): counts and verdict are its measurements'."""


def _check_rows(
    spec: TorghutRolloutSpec | None, status: TorghutRolloutStatus, current: Sequence[MeasurementRecord]
) -> list[_CheckRow]:
    """Every check of the run, by stage: those of earlier stages (promotion steps replace the checks in status)
    from the ledger, then those in status, then the spec's verify checks never measured (Pending)."""
    in_status = {(c.stage, c.name) for c in status.checks}
    ledger: dict[tuple[str, str], list[LedgerMeasurement]] = {}
    for r in current:
        ledger.setdefault((r.measurement.stage, r.measurement.check_name), []).append(r.measurement)
    rows = [_CheckRow(_from_ledger(ms), True) for key, ms in ledger.items() if key not in in_status]
    rows += [_CheckRow(c) for c in status.checks]
    if spec is not None:
        known = in_status | set(ledger)
        rows += [
            _CheckRow(
                CheckStatus(
                    name=c.name,
                    stage="verify",
                    provider=c.provider,
                    query=c.query_text,
                    threshold=c.threshold_text,
                    dry_run=c.dry_run,
                )
            )
            for c in effective_checks(spec)
            if ("verify", c.name) not in known
        ]
    return rows


def _from_ledger(measurements: Sequence[LedgerMeasurement]) -> CheckStatus:
    last = measurements[-1]
    verdicts = [m.verdict for m in measurements]
    return CheckStatus(
        name=last.check_name,
        stage=last.stage,
        provider=last.provider,
        query=last.query,
        threshold=last.threshold,
        phase=Verdict(last.verdict),
        successful=verdicts.count(Verdict.SUCCESSFUL.value),
        failed=verdicts.count(Verdict.FAILED.value),
        inconclusive=verdicts.count(Verdict.INCONCLUSIVE.value),
        errors=verdicts.count(Verdict.ERROR.value),
    )


def _header(name: str, namespace: str, spec: TorghutRolloutSpec | None, status: TorghutRolloutStatus) -> list[str]:
    target = EMPTY
    if spec is not None:
        t = spec.target
        target = f"{t.kind.value} {code(t.name)}, container {code(t.container)}"
    rows = [
        ["Rollout", code(f"{namespace}/{name}")],
        ["Target", target],
        ["Image", code(status.image or (spec.target.image if spec is not None else None))],
        ["Previous image", code(status.previous_image)],
        ["Phase", f"**{status.phase.value}**"],
        ["Stage", cell(status.stage)],
        ["Attempt", str(status.attempt)],
        ["Spec hash", code(status.spec_hash)],
        ["Started", _time(status.started_at)],
        ["Completed", _time(status.completed_at)],
        ["Message", cell(status.message, 400)],
    ]
    if status.failed_stage:
        rows.append(["Failed stage", cell(status.failed_stage)])
    if status.migration is not None:
        m = status.migration
        applied = ", ".join(f"{f.name} ({f.checksum[:12]})" for f in m.applied)
        parts = [m.mode or EMPTY, m.job_name and f"Job {m.job_name}", m.message, applied and f"applied: {applied}"]
        rows.append(["Migration", cell("; ".join(p for p in parts if p), 400)])
    if status.promotion is not None and spec is not None and spec.promotion is not None:
        p = status.promotion
        steps = " → ".join(step.name for step in spec.promotion.steps)
        done = " → ".join(p.completed) or "none"
        rows.append(
            [
                "Promotion",
                cell(f"step {p.step + 1}/{len(spec.promotion.steps)} {p.step_name} of {steps}; passed: {done}"),
            ]
        )
    return _table(["Field", "Value"], rows)


def _last(check: CheckStatus, records: Sequence[MeasurementRecord]) -> Measurement | None:
    """The newest measurement of ``check``, from status or from its ``records`` in the ledger."""
    newest = [r.measurement for r in records]
    in_status = check.measurements[-1] if check.measurements else None
    if newest and (in_status is None or newest[-1].measured_at > parse_time(in_status.at)):
        m = newest[-1]
        return Measurement(phase=Verdict(m.verdict), at=_time(m.measured_at), value=m.value, message=m.message)
    return in_status


def _verdicts(rows: Sequence[_CheckRow], current: Sequence[MeasurementRecord]) -> list[str]:
    if not rows:
        return ["No checks."]
    lines = []
    for row in rows:
        c = row.check
        mine = [r for r in current if r.measurement.check_name == c.name and r.measurement.stage == c.stage]
        last = _last(c, mine)
        counts = f"{c.successful} ok / {c.failed} failed / {c.inconclusive} inconclusive / {c.errors} error"
        if mine and not row.from_ledger:
            counts += f" ({len(mine)} in ledger)"
        lines.append(
            [
                c.name,
                cell(c.stage),
                c.provider,
                f"{c.phase.value} (last measurement)" if row.from_ledger else _verdict(c),
                _value(last.value) if last is not None else EMPTY,
                code(c.threshold),
                counts,
                code(c.query, QUERY_CHARS),
            ]
        )
    return _table(["Check", "Stage", "Provider", "Verdict", "Last value", "Threshold", "Measurements", "Query"], lines)


def _timeline(records: Sequence[DecisionRecord], omitted: int) -> list[str]:
    lines: list[str] = []
    if records:
        rows = [
            [
                _time(r.decision.decided_at),
                str(r.rollout.attempt),
                f"{r.decision.from_phase} → {r.decision.to_phase}",
                cell(r.decision.stage),
                cell(r.decision.reason),
                cell(r.decision.message),
            ]
            for r in records
        ]
        lines += _table(["Time", "Attempt", "Transition", "Stage", "Reason", "Message"], rows)
    else:
        lines.append("No stage decisions recorded in the ledger.")
    if omitted:
        lines += ["", f"{omitted} decision(s) of earlier specs are not shown."]
    return lines


def _measurements(records: Sequence[MeasurementRecord], other_runs: int, status: TorghutRolloutStatus) -> list[str]:
    lines = [f"Attempt {status.attempt}, spec {code(status.spec_hash, in_table=False)}:", ""]
    if not records:
        lines.append("No measurements recorded in the ledger for this run.")
    else:
        shown = records[-MAX_MEASUREMENT_ROWS:]
        if len(records) > len(shown):
            lines += [f"The {len(records) - len(shown)} oldest measurement(s) are not shown (see the ledger).", ""]
        rows = [
            [
                _time(r.measurement.measured_at),
                r.measurement.check_name,
                r.measurement.verdict,
                _value(r.measurement.value),
                cell(r.measurement.message),
            ]
            for r in shown
        ]
        lines += _table(["Time", "Check", "Verdict", "Value", "Message"], rows)
    if other_runs:
        lines += ["", f"{other_runs} measurement(s) of other attempts or specs are not shown."]
    return lines


def _facts(facts: TorghutFacts | None) -> list[str]:
    if facts is None:
        return ["Not collected."]
    lines = [f"Window: since {_time(facts.since)} (collected {_time(facts.collected_at)}).", ""]
    route = facts.route_null_rate
    if isinstance(route, Unavailable):
        text = str(route)
    elif route.rate is None:
        text = "no executions in the window (no data, not a pass)"
    else:
        text = (
            f"**{route.rate:.2%}** ({route.unset} of {route.executions} executions without an expected or actual "
            "adapter)"
        )
    lines += [f"- Execution route null rate: {text}", ""]

    lines += ["### Research table writes", ""]
    if isinstance(facts.research_writes, Unavailable):
        lines.append(str(facts.research_writes))
    elif not facts.research_writes:
        lines.append("No research_* table in schema public.")
    else:
        rows = []
        for writes in facts.research_writes:
            if isinstance(writes, TableUnavailable):
                rows.append([writes.table, cell(str(writes)), EMPTY])
            else:
                rows.append([writes.table, str(writes.in_window), str(writes.total)])
        lines += _table(["Table", "Rows in window", "Rows in total"], rows)

    lines += ["", f"### First {LANE_RUNS} lane runs", ""]
    runs = facts.lane_runs
    if isinstance(runs, Unavailable):
        lines.append(str(runs))
        return lines
    seen = f"Lane runs seen since {_time(facts.since)}: **{len(runs)} of {LANE_RUNS}**"
    if len(runs) < LANE_RUNS:
        seen += (
            f" (not all yet: the operator refreshes this report until {LANE_RUNS} exist, for at most "
            f"{REFRESH_HOURS} h after the run ended)"
        )
    lines += [seen + ".", ""]
    if not runs:
        lines.append("No lane run in the window.")
    else:
        rows = []
        for run in runs:
            first = [code(run.run_id), _time(run.created_at), cell(run.status), cell(run.strategy_id)]
            if not run.decisions:
                rows.append([*first, "no candidates", EMPTY, EMPTY, EMPTY, EMPTY])
            for d in run.decisions:
                rows.append(
                    [
                        *first,
                        code(d.candidate_id),
                        cell(d.decision_action or "no promotion row"),
                        cell(d.approved_mode),
                        cell(d.reason),
                        code(d.patch_ref),
                    ]
                )
        lines += _table(
            [
                "Run",
                "Created",
                "Status",
                "Strategy",
                "Candidate",
                "Decision",
                "Approved mode",
                "Reason",
                "Patch artifact",
            ],
            rows,
        )
    return lines


def _queries(rows: Sequence[_CheckRow]) -> list[str]:
    lines: list[str] = []
    seen: set[tuple[str, str]] = set()
    for row in rows:
        c = row.check
        digest = query_hash(c.query)
        if (c.name, digest) in seen:
            continue
        seen.add((c.name, digest))
        language = {"postgres": "sql", "prometheus": "promql"}.get(c.provider, "")
        lines += [
            f"<details><summary>{c.name} ({c.provider}, sha256 {digest[:12]})</summary>",
            "",
            _fence(c.query, language),
            "",
            "</details>",
            "",
        ]
    return lines


# ---------------------------------------------------------------------------------------------------------------
# Pull request body

PR_BODY_LIMIT = 65_536
"""GitHub refuses a pull request body of this many characters or more."""
_TRIM_ORDER = ("Queries", "Measurements", "Timeline", "Verdicts", "Torghut facts")
"""Sections shortened first to last when the report is too long for a pull request: the full text of queries
and every measurement are in the ConfigMap and the ledger; the facts the checklist asks for go last."""


def fit_for_pr(markdown: str, limit: int = PR_BODY_LIMIT) -> str:
    """``markdown`` as a pull request body: unchanged when shorter than ``limit`` characters, else sections
    shortened in :data:`_TRIM_ORDER` (each keeps its heading, its first lines and a note saying what was left out
    and where to read it), then, should that not do, cut at a line with the same note. Always < ``limit``."""
    if len(markdown) < limit:
        return markdown
    head, *rest = markdown.split("\n## ")
    sections = {s.split("\n", 1)[0]: s for s in rest}
    budget = limit - 1
    for title in _TRIM_ORDER:
        if title not in sections:
            continue
        for keep in (40, 12, 4, 0):
            sections[title] = _shorten_section(sections[title], keep)
            if len(_join(head, sections)) <= budget:
                return _join(head, sections)
    text = _join(head, sections)
    note = "\n\n_Cut to fit a pull request: `kubectl torghut report NAME` prints the whole report._\n"
    cut = text[: budget - len(note)]
    return cut[: cut.rfind("\n") if "\n" in cut else len(cut)] + note


def _shorten_section(section: str, keep: int) -> str:
    title, _, body = section.partition("\n")
    lines = body.strip("\n").split("\n")
    marker = "_Shortened to fit a pull request"
    lines = [line for line in lines if not line.startswith(marker)]
    if len(lines) <= keep:
        return section
    left_out = len(lines) - keep
    note = f"{marker}: {left_out} line(s) left out; `kubectl torghut report NAME` prints them._"
    kept = lines[:keep]
    if kept and kept[-1].lstrip().startswith(("<details>", "```", "<summary>")):
        kept = kept[:-1]  # never leave a code fence or a details block open
    opened = sum(line.startswith("```") for line in kept) % 2
    if opened:
        kept.append("```")
    if sum("<details>" in line for line in kept) > sum("</details>" in line for line in kept):
        kept.append("</details>")
    return "\n".join([title, "", *kept, "", note]).rstrip() + "\n"


def _join(head: str, sections: dict[str, str]) -> str:
    return "\n## ".join([head, *sections.values()]).rstrip() + "\n"
