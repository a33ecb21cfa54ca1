"""The verbs (abort, retry, promote, pause, resume): when each applies, in one place.

A verb is requested by setting the annotation ``torghut.proompteng.ai/action`` to ``<verb>`` or
``<verb>:<nonce>``. The operator's planner applies it and records ``status.lastAction``; the kubectl plugin refuses
a verb that can't apply *before* writing the annotation. Both ask :func:`verb_applies`, so the plugin never promises
what the operator would refuse, and the operator never refuses what the plugin let through.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from datetime import datetime

from torghut_operator.core.api.status import TERMINAL_PHASES, Phase, TorghutRolloutStatus
from torghut_operator.core.timefmt import format_time

VERBS: tuple[str, ...] = ("abort", "retry", "promote", "pause", "resume")
"""The verbs, in the order help texts list them."""

RETRYABLE_PHASES = frozenset({Phase.FAILED, Phase.ROLLED_BACK, Phase.ABORTED})
"""Phases a retry starts over from (a new attempt)."""

APPLIES_TO: dict[str, str] = {
    "abort": "abort applies while a rollout runs or is paused",
    "retry": "retry applies to Failed, RolledBack or Aborted",
    "promote": "promote accepts Inconclusive checks or approves a promotion step that awaits approval",
    "pause": "pause applies while a rollout runs",
    "resume": "resume applies to a Paused rollout",
}
"""When each verb applies, in one clause (quoted in refusals and help texts)."""

SUBJECT = "the rollout"


def _terminal_text() -> str:
    names = [p.value for p in Phase if p in TERMINAL_PHASES]
    return ", ".join(names[:-1]) + " or " + names[-1]


def verb_applies(
    verb: str, status: TorghutRolloutStatus, *, spec_paused: bool = False, subject: str = SUBJECT
) -> str | None:
    """None when ``verb`` would change a rollout whose status is ``status``; otherwise the one-line reason it
    doesn't, naming the rollout as ``subject`` (e.g. "nothing to retry: release-42 is Succeeded (retry applies
    to Failed, RolledBack or Aborted)").

    ``spec_paused`` is the rollout's ``spec.paused``: a rollout paused by its spec is resumed by editing the
    spec, not by the verb. ``verb`` is matched as given (lower case, no nonce; see :func:`parse_action`).
    """
    phase = status.phase
    is_ = f"{subject} is {phase.value}"
    if verb not in VERBS:
        return f"unknown verb {verb!r}; use one of {', '.join(VERBS)}"
    if verb == "pause":
        if phase.terminal:
            return f"nothing to pause: {is_} ({APPLIES_TO['pause']})"
        if phase is Phase.PAUSED:
            return f"already paused: {is_} (by {'spec.paused' if status.paused_by == 'spec' else 'the pause verb'})"
        if phase is Phase.ROLLING_BACK:
            return "a rollback is not paused: it restores the previous image"
        return None
    if verb == "resume":
        if phase is not Phase.PAUSED:
            return f"nothing to resume: {is_} ({APPLIES_TO['resume']})"
        if spec_paused:
            return "spec.paused is true: set it to false to resume"
        return None
    if verb == "abort":
        if phase.terminal:
            return f"nothing to abort: {is_} ({APPLIES_TO['abort']}, not once it is {_terminal_text()})"
        return None
    if verb == "retry":
        if phase not in RETRYABLE_PHASES:
            return f"nothing to retry: {is_} ({APPLIES_TO['retry']})"
        return None
    # promote: the planner approves the current promotion step, or accepts Inconclusive verdicts, whenever the
    # status awaits approval; otherwise nothing.
    if not status.awaiting_approval:
        blocked = next((c for c in status.conditions if c.type == "Promoted" and c.reason == "MissingEvidence"), None)
        if blocked is not None and phase is Phase.PROMOTING:
            return f"promote cannot waive required evidence: {blocked.message}"
        return f"nothing awaits approval: {is_} ({APPLIES_TO['promote']})"
    return None


def parse_action(value: str) -> tuple[str, str | None]:
    """The verb (lower case) and the nonce (None when absent) of an action annotation's value."""
    verb, sep, nonce = value.partition(":")
    return verb.strip().lower(), (nonce if sep else None)


def action_value(verb: str, now: datetime) -> str:
    """The annotation value requesting ``verb`` with a nonce (the time), so repeating a verb is a new request."""
    return f"{verb}:{format_time(now)}"


_REFUSALS = (
    "unknown verb ",
    "nothing to ",
    "nothing awaits ",
    "already ",
    "a rollback is not ",
    "spec.paused is ",
    "promote cannot waive ",
)


def is_refusal(result: str) -> bool:
    """Whether a ``status.lastAction.result`` says the verb changed nothing (a text of :func:`verb_applies`, or
    of the planner's own refusals)."""
    return result.startswith(_REFUSALS)
