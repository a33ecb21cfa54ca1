"""The plugin's views: a rollout as read from the cluster, and what status, list, history and why show of it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from torghut_operator.cli.session import CliError, first_error
from torghut_operator.core.api.durations import parse_duration
from torghut_operator.core.api.spec import TorghutRolloutSpec
from torghut_operator.core.api.status import (
    BackfillStatus,
    CheckStatus,
    Phase,
    TorghutRolloutStatus,
    Verdict,
)
from torghut_operator.core.manifests import ACTION_ANNOTATION
from torghut_operator.core.presets import effective_checks
from torghut_operator.core.timefmt import parse_time, span, utcnow
from torghut_operator.core.troubleshooting import advice_for
from torghut_operator.core.verbs import VERBS, parse_action, verb_applies

MEASUREMENTS_SHOWN = 3
EMPTY = "—"
PHASE_STYLES = {
    Phase.SUCCEEDED: "bold green",
    Phase.FAILED: "bold red",
    Phase.ROLLED_BACK: "bold red",
    Phase.ABORTED: "bold red",
    Phase.ROLLING_BACK: "bold yellow",
    Phase.PAUSED: "bold yellow",
}
VERDICT_STYLES = {
    Verdict.SUCCESSFUL: "green",
    Verdict.FAILED: "red",
    Verdict.ERROR: "red",
    Verdict.INCONCLUSIVE: "yellow",
    Verdict.RUNNING: "cyan",
    Verdict.PENDING: "dim",
}


# ---------------------------------------------------------------------------------------------------------------
# Reading a rollout


@dataclass(frozen=True)
class Rollout:
    """A TorghutRollout as read from the API server, its spec and status parsed."""

    name: str
    namespace: str
    uid: str
    resource_version: str
    created: str | None
    raw: dict[str, Any]
    spec: TorghutRolloutSpec | None
    status: TorghutRolloutStatus
    annotations: dict[str, str]
    spec_error: str | None = None
    """Why the spec does not parse (the operator then fails the rollout and applies no verb)."""

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> Rollout:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name") or "")
        try:
            status = TorghutRolloutStatus.model_validate(obj.get("status") or {})
        except ValidationError as exc:
            raise CliError(
                f'the status of torghutrollout "{name}" is not readable by this plugin (status.{first_error(exc)}); '
                "is the plugin older than the operator?"
            ) from None
        spec: TorghutRolloutSpec | None = None
        spec_error = None
        try:
            spec = TorghutRolloutSpec.model_validate(obj.get("spec") or {})
            effective_checks(spec)  # what the operator validates too (presets)
        except (ValidationError, ValueError) as exc:
            spec, spec_error = None, first_error(exc)
        return cls(
            name=name,
            namespace=str(meta.get("namespace") or ""),
            uid=str(meta.get("uid") or ""),
            resource_version=str(meta.get("resourceVersion") or ""),
            created=meta.get("creationTimestamp"),
            raw=obj,
            spec=spec,
            status=status,
            annotations={str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
            spec_error=spec_error,
        )

    @property
    def raw_spec(self) -> dict[str, Any]:
        spec = self.raw.get("spec")
        return spec if isinstance(spec, dict) else {}

    @property
    def spec_paused(self) -> bool:
        return bool(self.raw_spec.get("paused"))

    @property
    def pending_action(self) -> str | None:
        return self.annotations.get(ACTION_ANNOTATION)

    def status_for_verbs(self) -> TorghutRolloutStatus:
        """The status the operator applies a verb to: a spec it has not seen yet starts a new run (Pending)."""
        if self.spec is not None and self.status.spec_hash != self.spec.spec_hash():
            return TorghutRolloutStatus()
        return self.status

    def refusal(self, verb: str) -> str | None:
        """Why ``verb`` does not apply to this rollout now (the operator's rules), or None."""
        if verb in VERBS and self.spec is None:
            return f"{verb} does not apply: the spec of {self.name} is invalid ({self.spec_error}); fix the spec first"
        return verb_applies(verb, self.status_for_verbs(), spec_paused=self.spec_paused, subject=self.name)

    def applicable_verbs(self) -> list[str]:
        return [v for v in VERBS if self.refusal(v) is None]


# ---------------------------------------------------------------------------------------------------------------
# Rendering (pure: tested with a recording console)


def _t(value: object, style: str = "") -> Text:
    """Plain text (never rich markup: messages may contain [brackets])."""
    return Text(EMPTY if value is None or value == "" else str(value), style=style)


def age(since: str | None, now: datetime) -> str:
    """kubectl's short ages: 45s, 3m20s, 17m, 5h, 3d."""
    if not since:
        return EMPTY
    try:
        seconds = max(0, int((now - parse_time(since)).total_seconds()))
    except ValueError:
        return EMPTY
    return span(seconds)


def when(moment: str | None, now: datetime) -> str:
    if not moment:
        return EMPTY
    try:
        text = parse_time(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except ValueError:
        return moment
    return f"{text} ({age(moment, now)} ago)"


def _phase_text(phase: Phase | str | None) -> Text:
    if not phase:
        return _t(None)
    try:
        style = PHASE_STYLES.get(Phase(phase), "bold cyan")
    except ValueError:
        style = "bold"
    return Text(str(phase), style=style)


def _verdict_text(check: CheckStatus) -> Text:
    text = Text(check.phase.value, style=VERDICT_STYLES.get(check.phase, ""))
    if check.phase is Verdict.INCONCLUSIVE and check.approved:
        text.append(" (approved)")
    if check.dry_run:
        text.append(" (dry run)", style="dim")
    return text


def _section(title: str) -> Text:
    return Text(f"\n{title}", style="bold underline")


WIDE = 160
"""At this width and more every view shows every column; below it, the narrow layouts."""
NARROW = 100
"""Below this width tables drop their least needed columns."""
LABEL_WIDTH = 19
"""The label column of the status and why views ("Awaiting approval" and its padding)."""
DIGEST_SHOWN = 12


def short_image(image: str | None) -> str | None:
    """``registry/lab/torghut@sha256:<64 hex>`` as ``torghut@<first 12 hex>``, ``registry/lab/torghut:v42`` as
    ``torghut:v42``: what tells releases apart in a narrow view (-o wide and -o json show it whole)."""
    if not image:
        return image
    name, at, digest = image.partition("@")
    repository = name.rsplit("/", 1)[-1]
    if not at:
        return repository
    _, colon, hexdigits = digest.partition(":")
    return f"{repository}@{hexdigits[:DIGEST_SHOWN]}" if colon else f"{repository}@{digest[:DIGEST_SHOWN]}"


def _fitted_image(image: str | None, width: int, *, wide: bool) -> str | None:
    """The whole image when it fits on the line (or -o wide asks for it), else the short form."""
    if wide or image is None or len(image) <= width - LABEL_WIDTH:
        return image
    return short_image(image)


def ready_text(s: TorghutRolloutStatus) -> str:
    """The Ready condition as ``False (AwaitingApproval)``; ``—`` before the operator has set it."""
    ready = next((c for c in s.conditions if c.type == "Ready"), None)
    if ready is None:
        return EMPTY
    return f"{ready.status} ({ready.reason})" if ready.reason else ready.status


def _ready_style(s: TorghutRolloutStatus) -> str:
    ready = next((c for c in s.conditions if c.type == "Ready"), None)
    if ready is None:
        return "dim"
    if ready.status == "True":
        return "green"
    return "yellow" if ready.reason in _PROGRESS_REASONS else "red"


def _target_image(r: Rollout) -> str | None:
    s = r.status
    found = s.image or (r.spec.target.image if r.spec is not None else (r.raw_spec.get("target") or {}).get("image"))
    return str(found) if found else None


def _header(r: Rollout, now: datetime, width: int, wide: bool) -> Table:
    s = r.status
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("Name", _t(f"{r.namespace}/{r.name}"))
    grid.add_row("Phase", _phase_text(s.phase))
    grid.add_row("Stage", _t(s.stage))
    grid.add_row("Ready", _t(ready_text(s), _ready_style(s)))
    grid.add_row("Age", _t(age(r.created, now)))
    grid.add_row("Image", _t(_fitted_image(_target_image(r), width, wide=wide)))
    grid.add_row("Previous image", _t(_fitted_image(s.previous_image, width, wide=wide)))
    grid.add_row("Attempt", _t(s.attempt))
    grid.add_row("Message", _t(s.message))
    backfill = s.migration.backfill if s.migration is not None else None
    if backfill is not None:
        grid.add_row("Backfill", backfill_bar(backfill, width))
    if s.failed_stage:
        grid.add_row("Failed stage", _t(s.failed_stage, "red"))
    grid.add_row("Blocked by", _t(f"TorghutRollout {s.blocked_by}" if s.blocked_by else None))
    if s.drift:
        grid.add_row("Drift", _t(f"{s.drift} (no measurement until the target is back)", "bold yellow"))
    if s.awaiting_approval:
        approval = Text("yes", style="bold yellow")
        approval.append(f": kubectl torghut promote {r.name} -n {r.namespace}  (or abort)", style="")
    else:
        approval = Text("no")
    grid.add_row("Awaiting approval", approval)
    if s.phase is Phase.PAUSED:
        by = "spec.paused" if s.paused_by == "spec" else "the pause verb"
        grid.add_row("Paused", _t(f"in {s.paused_from.value if s.paused_from else EMPTY} by {by}"))
    grid.add_row("Started", _t(when(s.started_at, now)))
    if s.completed_at:
        grid.add_row("Completed", _t(when(s.completed_at, now)))
    if s.next_measurement_at and not s.phase.terminal:
        grid.add_row("Next measurement", _t(when(s.next_measurement_at, now).replace(" ago)", ")")))
    if r.pending_action:
        verb, _ = parse_action(r.pending_action)
        grid.add_row("Pending action", _t(f"{verb} (requested; the operator has not handled it yet)", "yellow"))
    verbs = r.applicable_verbs()
    grid.add_row("Verbs now", _t(", ".join(verbs) if verbs else "none (finished)"))
    return grid


BAR_CELLS = 30
"""Cells of the backfill bar at 100 columns and more (20 below)."""


def backfill_bar(backfill: BackfillStatus, width: int) -> Text:
    """Three lines: the file and its table; ``█████░░░░░  45%  450,000 / 1,000,000 rows``; rate, ETA, batch size
    and what throttles it (once finished: the figures of the whole pass)."""
    cells = BAR_CELLS if width >= NARROW else 20
    filled = cells * backfill.percent // 100
    text = Text(f"{backfill.file} on {backfill.table}\n")
    text.append("█" * filled, style="green" if backfill.finished else "cyan")
    text.append("░" * (cells - filled), style="dim")
    text.append(f" {backfill.percent:>3}%", style="bold")
    text.append(f"  {backfill.rows_done:,} / {backfill.rows_total:,} rows\n")
    rate = f"{backfill.rows_per_second:,.0f} rows/s"
    if backfill.finished:
        text.append(f"done in {backfill.batches:,} batches, {rate}", style="green")
        return text
    text.append(rate)
    text.append(f", ETA {span(backfill.eta_seconds)}" if backfill.eta_seconds is not None else ", ETA unknown")
    text.append(f", batch {backfill.batch_size:,}")
    if backfill.throttled:
        text.append(f"; throttled: {backfill.throttled}", style="yellow")
    return text


def _conditions(s: TorghutRolloutStatus, now: datetime) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", expand=False)
    for column in ("Type", "Status", "Reason", "Message", "Since"):
        table.add_column(column, overflow="fold")
    for c in s.conditions:
        style = {"True": "green", "False": "red" if c.reason not in _PROGRESS_REASONS else "yellow"}.get(
            c.status, "dim"
        )
        table.add_row(
            _t(c.type), _t(c.status, style), _t(c.reason), _t(c.message), _t(age(c.last_transition_time, now))
        )
    return table


_PROGRESS_REASONS = frozenset(
    {"Pending", "Progressing", "Migrating", "Deploying", "Verifying", "Promoting", "AwaitingApproval", "Paused"}
)


def _counts(c: CheckStatus) -> str:
    return f"{c.successful}/{c.failed}/{c.inconclusive}/{c.errors}"


def _checks(s: TorghutRolloutStatus, width: int) -> Table:
    narrow = width < NARROW
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold")
    table.add_column("Check", overflow="fold")
    if not narrow:
        table.add_column("Provider", no_wrap=True)
    table.add_column("Verdict", no_wrap=True)
    table.add_column("Counts", no_wrap=True, justify="right")
    table.add_column("Last value", overflow="fold", max_width=24 if not narrow else 12)
    table.add_column("Last message", overflow="fold", min_width=30 if not narrow else 20)
    for c in s.checks:
        last = c.measurements[-1].value if c.measurements else None
        cells = [_t(c.name)] + ([] if narrow else [_t(c.provider)])
        table.add_row(*cells, _verdict_text(c), _t(_counts(c)), _t(last), _t(c.message))
    return table


def _checks_title(s: TorghutRolloutStatus) -> str:
    stages = sorted({c.stage for c in s.checks})
    where = f"stage {', '.join(stages)}; " if stages else ""
    return f"Checks ({where}counts: successful/failed/inconclusive/errors)"


def _measurements(s: TorghutRolloutStatus, now: datetime, keep: int, width: int) -> Table:
    narrow = width < NARROW
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold")
    table.add_column("Check", overflow="fold")
    table.add_column("At", no_wrap=True)
    table.add_column("Verdict", no_wrap=True)
    table.add_column("Value", overflow="fold", max_width=24 if not narrow else 12)
    if not narrow:
        table.add_column("Samples", no_wrap=True)
    table.add_column("Message", overflow="fold")
    for c in s.checks:
        for m in c.measurements[-keep:] if keep > 0 else []:
            cells = [
                _t(c.name),
                _t(age(m.at, now) + " ago"),
                Text(m.phase.value, style=VERDICT_STYLES.get(m.phase, "")),
                _t(m.value),
            ]
            cells += [] if narrow else [_t(m.samples)]
            table.add_row(*cells, _t(m.message))
    return table


def _steps(r: Rollout) -> Table | None:
    steps = (r.raw_spec.get("promotion") or {}).get("steps") or []
    if not steps:
        return None
    s = r.status
    promo = s.promotion
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold")
    for column in ("#", "Step", "State", "Sets", "Gate"):
        table.add_column(column, overflow="fold")
    for i, step in enumerate(steps):
        name = str(step.get("name") or "")
        env = ", ".join(f"{k}={v}" for k, v in sorted((step.get("env") or {}).items()))
        gate = []
        if step.get("requiredPromotion"):
            gate.append(f"{step['requiredPromotion'].get('mode')} promotion row")
        if step.get("requiresApproval"):
            gate.append("approval")
        if promo is not None and name in promo.completed:
            state = Text("done", style="green")
        elif promo is not None and i == promo.step and s.phase in (Phase.PROMOTING, Phase.PAUSED):
            if promo.applied:
                detail = "applied, re-verifying"
            elif s.awaiting_approval:
                detail = "awaiting approval"
            elif promo.approved:
                detail = "approved, applying"
            else:
                detail = promo.message or "applying"
            state = Text(f"current: {detail}", style="bold cyan")
        elif promo is not None and i == promo.step and s.phase.terminal and s.phase is not Phase.SUCCEEDED:
            state = Text(f"stopped ({s.phase.value})", style="red")
        else:
            state = Text("pending", style="dim")
        table.add_row(_t(i + 1), _t(name), state, _t(env), _t(", ".join(gate) or None))
    return table


def _last_action(s: TorghutRolloutStatus, now: datetime) -> Text:
    a = s.last_action
    if a is None:
        return Text("none")
    return Text(f"{a.verb} {when(a.at, now)}: {a.result}")


def render_status(
    r: Rollout,
    *,
    now: datetime | None = None,
    measurements: int = MEASUREMENTS_SHOWN,
    width: int = WIDE,
    wide: bool = False,
) -> Group:
    """Everything ``kubectl torghut status`` shows, as one rich renderable laid out for ``width`` columns."""
    now = now or utcnow()
    s = r.status
    parts: list[RenderableType] = [_header(r, now, width, wide)]
    parts += [_section("Conditions"), _conditions(s, now) if s.conditions else Text("none yet")]
    if s.checks:
        parts += [_section(_checks_title(s)), _checks(s, width)]
    else:
        parts += [_section("Checks"), Text("none measured yet")]
    if any(c.measurements for c in s.checks) and measurements > 0:
        parts += [
            _section(f"Measurements (last {measurements} per check)"),
            _measurements(s, now, measurements, width),
        ]
    steps = _steps(r)
    if steps is not None:
        parts += [_section("Promotion steps"), steps]
    job_logs = s.migration.job_logs if s.migration is not None else None
    if job_logs:
        job = s.migration.job_name if s.migration is not None else None
        parts += [_section(f"Migration Job log ({job or 'the failed pod'}, last lines)"), Text(job_logs)]
    parts += [_section("Last action"), _last_action(s, now)]
    return Group(*parts)


def rollout_row(obj: dict[str, Any], now: datetime) -> dict[str, str]:
    """One line of ``list``, from the raw object (a broken status must not hide the other rollouts)."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") if isinstance(obj.get("status"), dict) else {}
    assert isinstance(status, dict)
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    ready = next(
        (c.get("status") for c in status.get("conditions") or [] if isinstance(c, dict) and c.get("type") == "Ready"),
        None,
    )
    return {
        "namespace": str(meta.get("namespace") or ""),
        "name": str(meta.get("name") or ""),
        "phase": str(status.get("phase") or ""),
        "stage": str(status.get("stage") or ""),
        "image": str(status.get("image") or (spec.get("target") or {}).get("image") or ""),
        "ready": str(ready or ""),
        "age": age(meta.get("creationTimestamp"), now),
        "created": str(meta.get("creationTimestamp") or ""),
        "message": str(status.get("message") or ""),
    }


def render_list(rows: list[dict[str, str]], *, all_namespaces: bool, wide: bool = False) -> Table:
    """kubectl's layout. PHASE, STAGE, READY and AGE never wrap; the name and image fold first when the terminal is
    narrow, and the image is shortened unless -o wide asks for it whole (with the message)."""
    table = Table(box=None, header_style="bold", pad_edge=False, show_edge=False)
    if all_namespaces:
        table.add_column("NAMESPACE", overflow="fold")
    table.add_column("NAME", no_wrap=True)
    for column in ("PHASE", "STAGE", "READY", "AGE"):
        table.add_column(column, no_wrap=True)
    table.add_column("IMAGE", overflow="fold", min_width=10)
    if wide:
        table.add_column("MESSAGE", overflow="fold", min_width=20)
    for row in rows:
        cells = [_t(row["namespace"])] if all_namespaces else []
        cells += [_t(row["name"]), _phase_text(row["phase"] or None), _t(row["stage"])]
        cells += [_t(row["ready"]), _t(row["age"]), _t(row["image"] if wide else short_image(row["image"]))]
        if wide:
            cells.append(_t(row["message"]))
        table.add_row(*cells)
    return table


@dataclass(frozen=True)
class HistoryEntry:
    at: str | None
    source: str  # event, condition, measurement, action
    type: str
    reason: str
    message: str

    def sort_key(self) -> datetime:
        return _moment(self.at)

    def as_json(self) -> dict[str, str | None]:
        return {"at": self.at, "source": self.source, "type": self.type, "reason": self.reason, "message": self.message}


def _moment(at: str | None) -> datetime:
    """A timestamp as a datetime; missing or unreadable ones sort first."""
    try:
        return parse_time(at) if at else datetime.min.replace(tzinfo=UTC)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


def _event_time(event: dict[str, Any]) -> str | None:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        if event.get(key):
            return str(event[key])
    created = (event.get("metadata") or {}).get("creationTimestamp")
    return str(created) if created else None


def _condition_time(at: str, reason: str, floor: str | None, events: list[HistoryEntry]) -> str:
    """Where a condition belongs in the timeline. ``lastTransitionTime`` changes only with the status, not the
    reason (Ready=False since the start, now for AwaitingApproval), and survives a retry: so it is placed no earlier
    than the latest event of its reason, nor than the current attempt's start."""
    candidates = [at, *(e.at for e in events if e.reason == reason and e.at)]
    if floor:
        candidates.append(floor)
    return max(candidates, key=_moment)


def history(r: Rollout, events: list[dict[str, Any]]) -> list[HistoryEntry]:
    """The rollout's timeline, oldest first: its events, the transitions of its conditions, the measurements kept
    in status and the last verb."""
    entries = []
    for e in events:
        count = int(e.get("count") or 1)
        message = str(e.get("message") or "") + (f" (x{count})" if count > 1 else "")
        entries.append(
            HistoryEntry(_event_time(e), "event", str(e.get("type") or ""), str(e.get("reason") or ""), message)
        )
    seen_events = list(entries)
    for c in r.status.conditions:
        at = _condition_time(c.last_transition_time, c.reason, r.status.started_at, seen_events)
        entries.append(HistoryEntry(at, "condition", f"{c.type}={c.status}", c.reason, c.message))
    for check in r.status.checks:
        for m in check.measurements:
            # The operator's message names the value already; without one, the value is the message.
            samples = f" ({m.samples} samples)" if m.samples is not None else ""
            text = m.message or (f"value {m.value}{samples}" if m.value is not None else "no value")
            entries.append(HistoryEntry(m.at, "measurement", m.phase.value, check.name, text))
    a = r.status.last_action
    if a is not None:
        entries.append(HistoryEntry(a.at, "action", "Verb", a.verb, a.result))
    return sorted(entries, key=HistoryEntry.sort_key)


_RETRY = re.compile(r"\bretry(?:ing)?:? \(?attempt (\d+)\)?")


def _starts_attempt(e: HistoryEntry) -> int | None:
    """The attempt an entry starts: a retry (the Pending move, the Verb event or the last action say which
    number), or 1 when a spec change started a new run. None: not a boundary."""
    if e.source == "event" and e.reason == "SpecChanged":
        return 1
    if e.source in ("event", "action"):
        found = _RETRY.search(e.message)
        if found:
            return int(found.group(1))
    return None


@dataclass(frozen=True)
class Attempt:
    """One attempt's part of the timeline; ``new_run``: a spec change started it."""

    number: int
    new_run: bool
    entries: list[HistoryEntry]

    @property
    def started(self) -> str | None:
        return self.entries[0].at if self.entries else None

    @property
    def ended(self) -> str | None:
        return self.entries[-1].at if self.entries else None


def by_attempt(entries: list[HistoryEntry], current: int) -> list[Attempt]:
    """The timeline cut where an attempt starts. The entries before the first boundary belong to the attempt before
    it (events expire after an hour, so the first group may not be attempt 1); with no boundary, all belong to the
    current attempt."""
    groups: list[tuple[int, bool, list[HistoryEntry]]] = []
    first_boundary = next((n for e in entries if (n := _starts_attempt(e)) is not None), None)
    number = current if first_boundary is None else max(1, first_boundary - 1)
    new_run = False
    bucket: list[HistoryEntry] = []
    for e in entries:
        starts = _starts_attempt(e)
        if starts is not None and (starts != number or (e.reason == "SpecChanged" and bucket)):
            if bucket:
                groups.append((number, new_run, bucket))
            number, new_run, bucket = starts, e.reason == "SpecChanged", []
        bucket.append(e)
    if bucket:
        groups.append((number, new_run, bucket))
    return [Attempt(n, run, items) for n, run, items in groups]


def _clock(at: str | None, *, date: bool) -> str:
    if not at:
        return EMPTY
    try:
        return parse_time(at).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ" if date else "%H:%M:%S")
    except ValueError:
        return at


def _between(earlier: str | None, later: str | None) -> str:
    """The time from one entry to the next, as +3m20s."""
    if not earlier or not later:
        return ""
    seconds = (_moment(later) - _moment(earlier)).total_seconds()
    return f"+{span(seconds)}"


def summary_line(r: Rollout, now: datetime) -> Text:
    """One line (folded at spaces when narrow) with what a glance needs: phase, stage, ready and age."""
    s = r.status
    text = Text(f"{r.namespace}/{r.name}", style="bold")
    text.append("\nphase ")
    text.append_text(_phase_text(s.phase))
    text.append(f"  stage {s.stage or EMPTY}  ready ")
    text.append(ready_text(s), style=_ready_style(s))
    text.append(f"  age {age(r.created, now)}")
    return text


def render_history(r: Rollout, entries: list[HistoryEntry], now: datetime, width: int = WIDE) -> Group:
    """The timeline by attempt, oldest first; ``+`` is the time since the entry above it."""
    narrow = width < WIDE
    parts: list[RenderableType] = [summary_line(r, now)]
    attempts = by_attempt(entries, r.status.attempt)
    for i, attempt in enumerate(attempts):
        still = i == len(attempts) - 1 and not r.status.phase.terminal
        end = now.strftime("%Y-%m-%dT%H:%M:%SZ") if still else attempt.ended
        title = f"\nAttempt {attempt.number}" + (" (new run: the spec changed)" if attempt.new_run else "")
        title += (
            f"  {_clock(attempt.started, date=True)}, {span((_moment(end) - _moment(attempt.started)).total_seconds())}"
        )
        title += " so far" if still else ""
        parts.append(Text(title, style="bold underline"))
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold")
        table.add_column("Time", no_wrap=True)
        table.add_column("+", no_wrap=True, justify="right")
        if not narrow:
            table.add_column("Source", no_wrap=True)
        table.add_column("Type", no_wrap=True)
        table.add_column("Reason", overflow="fold")
        table.add_column("Message", overflow="fold")
        previous: str | None = None
        for e in attempt.entries:
            style = (
                "yellow"
                if e.type == "Warning"
                else VERDICT_STYLES.get(Verdict(e.type), "")
                if e.source == "measurement"
                else ""
            )
            cells = [_t(_clock(e.at, date=not narrow)), _t(_between(previous, e.at) or None, "dim")]
            cells += [] if narrow else [_t(e.source)]
            cells += [_t(e.type, style), _t(e.reason), _t(e.message)]
            table.add_row(*cells)
            previous = e.at
        parts.append(table)
    return Group(*parts)


# ---------------------------------------------------------------------------------------------------------------
# Why: what the rollout waits for, or why it stopped


_SEVERITY = {
    Verdict.FAILED: 0,
    Verdict.ERROR: 1,
    Verdict.INCONCLUSIVE: 2,
    Verdict.RUNNING: 3,
    Verdict.PENDING: 4,
}
_ADVISED_CONDITIONS = ("Restored", "Ready", "Promoted", "Migrated", "Deployed", "Verified")


@dataclass(frozen=True)
class Why:
    """The one screen of ``kubectl torghut why``, as data (``-o json`` prints it)."""

    rollout: str
    phase: str
    stage: str
    ready: str
    age: str
    state: str
    """waiting, stopped, paused, finished or running."""
    message: str
    reason: str | None = None
    condition: str | None = None
    since: str | None = None
    check: str | None = None
    verdict: str | None = None
    value: str | None = None
    threshold: str | None = None
    query: str | None = None
    check_message: str | None = None
    check_since: str | None = None
    details: tuple[tuple[str, str], ...] = ()
    means: str | None = None
    do: str | None = None
    next_verbs: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "details"}
        out["details"] = dict(self.details)
        out["next_verbs"] = list(self.next_verbs)
        out["verbs"] = list(self.verbs)
        return out


def _blocking_check(s: TorghutRolloutStatus) -> CheckStatus | None:
    """The check that holds the rollout: the worst verdict that can still block (dry runs and approved Inconclusive
    verdicts cannot), those of the current or failed stage first."""
    stage = s.failed_stage or s.stage
    open_checks = [
        c
        for c in s.checks
        if not c.dry_run and c.phase in _SEVERITY and not (c.phase is Verdict.INCONCLUSIVE and c.approved)
    ]
    if not open_checks:
        return None
    return min(open_checks, key=lambda c: (c.stage != stage, _SEVERITY[c.phase]))


def _verdict_since(c: CheckStatus) -> str | None:
    """When the check's latest verdict began: the first of the latest measurements with that verdict."""
    if not c.measurements:
        return None
    last = c.measurements[-1].phase
    since = c.measurements[-1].at
    for m in reversed(c.measurements):
        if m.phase is not last:
            break
        since = m.at
    return since


def _state(r: Rollout) -> str:
    phase = r.status.phase
    if phase is Phase.SUCCEEDED:
        return "finished"
    if phase.terminal:
        return "stopped"
    if phase is Phase.PAUSED:
        return "paused"
    ready = next((c for c in r.status.conditions if c.type == "Ready"), None)
    if r.status.awaiting_approval or (ready is not None and ready.reason in _WAITING_REASONS):
        return "waiting"
    return "running"


_WAITING_REASONS = frozenset(
    {"AwaitingApproval", "MissingEvidence", "Soaking", "Blocked", "ReconcileError", "TargetDrifted"}
)


def _details(r: Rollout, now: datetime) -> list[tuple[str, str]]:
    s = r.status
    out: list[tuple[str, str]] = []
    if s.blocked_by:
        out.append(("Blocked by", f"TorghutRollout {s.blocked_by}"))
    if s.drift:
        out.append(("Drift", s.drift))
    promo = s.promotion
    if promo is not None and s.phase in (Phase.PROMOTING, Phase.PAUSED) and promo.step_name:
        step_spec = next(
            (
                st
                for st in (r.spec.promotion.steps if r.spec and r.spec.promotion else [])
                if st.name == promo.step_name
            ),
            None,
        )
        state = "applied" if promo.applied else ("approved" if promo.approved else "not applied yet")
        out.append(("Step", f"{promo.step_name} ({state})" + (f": {promo.message}" if promo.message else "")))
        if promo.patched_at:
            out.append(("Env patched", when(promo.patched_at, now)))
        soak = step_spec.required_soak_time if step_spec is not None else None
        if soak and promo.soak_since:
            soaked = (now - _moment(promo.soak_since)).total_seconds()
            left = parse_duration(soak) - soaked
            remaining = f"{span(left)} left" if left > 0 else "done"
            out.append(("Soak", f"{span(soaked)} of {soak} since {_clock(promo.soak_since, date=True)} ({remaining})"))
    backfill = s.migration.backfill if s.migration is not None else None
    if backfill is not None and not backfill.finished:
        # How long ago the last slice reported says whether it still moves (a slice reports every ~10 s).
        out.append(("Backfill", f"{backfill.summary()} (reported {age(backfill.updated_at, now)} ago)"))
    restore = s.restore
    if restore is not None and not restore.empty and s.phase.terminal and s.phase is not Phase.SUCCEEDED:
        env = ", ".join(f"{k}={v}" for k, v in sorted(restore.env.items()))
        unset = ", ".join(f"{k} (unset)" for k in restore.unset)
        before = "; ".join(x for x in (restore.image or "", env, unset) if x)
        out.append(("Restore to", before))
    if r.pending_action:
        verb, _ = parse_action(r.pending_action)
        out.append(("Pending action", f"{verb} (requested; the operator has not handled it yet)"))
    return out


def explain(r: Rollout, now: datetime) -> Why:
    """What the rollout is waiting for or why it stopped, with the troubleshooting table's advice (pure)."""
    s = r.status
    conditions = {c.type: c for c in s.conditions}
    check = _blocking_check(s) if s.phase is not Phase.SUCCEEDED else None
    check_text = f"{check.message} {check.measurements[-1].message if check.measurements else ''}" if check else ""
    chosen, advice = None, None
    for kind in _ADVISED_CONDITIONS:
        c = conditions.get(kind)
        if c is None or c.status == "True" or (kind == "Restored" and not s.phase.terminal):
            continue
        found = advice_for(c.reason, c.type, f"{c.message} {check_text}")
        if found is not None:
            chosen, advice = c, found
            break
    if s.phase is Phase.PAUSED:
        paused = conditions.get("Ready")
        chosen, advice = paused, advice_for("Paused")
    if chosen is None and s.phase is not Phase.SUCCEEDED:
        chosen = conditions.get("Ready")
    verbs = tuple(r.applicable_verbs())
    next_verbs = tuple(v for v in (advice.verbs if advice else ()) if v in verbs)
    message = f"the spec is invalid: {r.spec_error}" if r.spec is None else s.message
    return Why(
        rollout=f"{r.namespace}/{r.name}",
        phase=s.phase.value,
        stage=s.stage,
        ready=ready_text(s),
        age=age(r.created, now),
        state=_state(r),
        message=message,
        reason=(chosen.reason if chosen is not None else None) if s.phase is not Phase.PAUSED else "Paused",
        condition=chosen.type if chosen is not None else None,
        since=chosen.last_transition_time if chosen is not None else None,
        check=check.name if check else None,
        verdict=check.phase.value if check else None,
        value=(check.measurements[-1].value if check and check.measurements else None),
        threshold=check.threshold if check else None,
        query=check.query if check else None,
        check_message=check.message if check else None,
        check_since=_verdict_since(check) if check else None,
        details=tuple(_details(r, now)),
        means=advice.means if advice else None,
        do=advice.do if advice else None,
        next_verbs=next_verbs,
        verbs=verbs,
    )


def _markdown_plain(text: str) -> str:
    """The table's Markdown as terminal text: no backticks or asterisks."""
    return text.replace("`", "").replace("**", "")


def render_why(w: Why, now: datetime, *, name: str, namespace: str) -> Group:
    """One screen: where it stands, the reason and for how long, the check holding it, what to do, which verb."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True, min_width=LABEL_WIDTH - 2)
    grid.add_column(overflow="fold")
    headline = {
        "finished": "finished: nothing to do",
        "stopped": "stopped",
        "paused": "paused",
        "waiting": "waiting",
        "running": "running: nothing holds it",
    }[w.state]
    grid.add_row("Rollout", _t(w.rollout))
    grid.add_row("Phase", _phase_text(w.phase))
    grid.add_row("Stage", _t(w.stage))
    grid.add_row("Ready", _t(w.ready))
    grid.add_row("Age", _t(w.age))
    grid.add_row("State", _t(headline, "bold"))
    grid.add_row("Message", _t(w.message))
    if w.reason:
        where = f" ({w.condition})" if w.condition else ""
        since = f", since {_clock(w.since, date=True)} ({age(w.since, now)})" if w.since else ""
        grid.add_row("Reason", _t(f"{w.reason}{where}{since}", "bold yellow"))
    if w.check:
        grid.add_row("Check", _t(f"{w.check}: {w.verdict}"))
        grid.add_row("Last value", _t(f"{w.value if w.value is not None else 'none'} against {w.threshold}"))
        grid.add_row("Query", _t(w.query))
        if w.check_since:
            grid.add_row("So for", _t(f"{age(w.check_since, now)} (since {_clock(w.check_since, date=True)})"))
        grid.add_row("Check says", _t(w.check_message))
    for label, value in w.details:
        grid.add_row(label, _t(value))
    if w.means:
        grid.add_row("Means", _t(_markdown_plain(w.means)))
    if w.do:
        grid.add_row("Do", _t(_markdown_plain(w.do), "bold"))
    command = f"kubectl torghut {{verb}} {name} -n {namespace}"
    if w.next_verbs:
        grid.add_row("Next", _t("  or  ".join(command.format(verb=v) for v in w.next_verbs), "bold cyan"))
    grid.add_row("Verbs now", _t(", ".join(w.verbs) if w.verbs else "none (finished)"))
    return Group(grid)
