"""Fixes to Kopf's own behaviour that the operator depends on, each pinned by a test against the pinned Kopf.

**A namespace created while the operator starts is never served** (Kopf 1.45.2, ``--namespace`` patterns). Kopf's
namespace observer lists the namespaces once, then starts a watch that lists them *again* and only then watches
from the second listing's resourceVersion; it revises the served namespaces from the first listing and from watch
events, but throws away every object of the second listing (``process_discovered_namespace_event`` returns early
for listed objects, whose event type is None). A matching namespace created between the two listings is therefore
never served: its rollouts stay untouched until something modifies the namespace itself (in practice: its
deletion), and the liveness probe only notices after its grace. CI met it twice, each time right after the
operator's pod restarted with the node and a test created its namespace in that second.

``serve_listed_namespaces`` makes the second listing count like the first: a listed namespace is revised exactly
as an initial-scan one is (added when it matches and is not being deleted). Revising is idempotent, so a namespace
seen in both listings changes nothing.
"""

from __future__ import annotations

from typing import Any

from kopf._core.reactor import observation

_ORIGINAL = observation.process_discovered_namespace_event


async def _revise_listed_namespaces_too(*, raw_event: Any, namespaces: Any, insights: Any, **kwargs: Any) -> None:
    if raw_event["type"] is not None:
        await _ORIGINAL(raw_event=raw_event, namespaces=namespaces, insights=insights, **kwargs)
        return
    async with insights.revised:
        observation.revise_namespaces(raw_events=[raw_event], insights=insights, namespaces=namespaces)
        insights.revised.notify_all()


def serve_listed_namespaces() -> None:
    """Install the fix (idempotent). Kopf looks the processor up when its namespace observer starts, so this must
    run before the operator does: importing the handlers module does it."""
    observation.process_discovered_namespace_event = _revise_listed_namespaces_too


def listed_namespaces_served() -> bool:
    return observation.process_discovered_namespace_event is _revise_listed_namespaces_too
