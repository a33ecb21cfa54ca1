"""What Kopf does with each rollout event. The operator keeps no Kopf diff base (settings.NoDiffBase): right only
while deletion is its only changing handler; a handler that needs Kopf to tell a creation from an update must bring a
diff base back. Deletion is handled only once asked, and the database timers run only for rollouts with a database."""

from __future__ import annotations

from typing import Any, cast

import kopf
import pytest
from kopf._core.intents.causes import ChangingCause, SpawningCause

from torghut_operator.app.settings import DIFF_BASE_ANNOTATION, NoDiffBase

pytestmark = pytest.mark.unit


def test_the_operator_keeps_no_diff_base_because_deletion_is_its_only_changing_handler() -> None:
    import torghut_operator.app.handlers  # noqa: F401, PLC0415 (registers the handlers)

    changing = list(kopf.get_default_registry()._changing.get_all_handlers())
    assert [(h.id, h.reason.value if h.reason else None) for h in changing] == [("finalize", "delete")], (
        "a create/update/resume/field handler needs Kopf's diff base: replace NoDiffBase in settings.py"
    )


def test_no_diff_base_is_built_read_or_written_even_for_a_rollout_that_carries_an_old_one() -> None:
    storage = NoDiffBase()
    raw = {"metadata": {"name": "r", "annotations": {DIFF_BASE_ANNOTATION: '{"spec": {}}'}}, "spec": {"a": 1}}
    body = kopf.Body(cast(kopf.RawBody, raw))
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None
    patch = kopf.Patch()
    storage.store(body=body, patch=patch, essence=cast(kopf.BodyEssence, {"spec": {"a": 1}}))
    assert not patch, "nothing is written to the rollout"


def _causes(meta: dict[str, object], spec: dict[str, object] | None = None) -> tuple[ChangingCause, SpawningCause]:
    """Kopf's changing and spawning causes of a MODIFIED event of a rollout with this metadata (and spec)."""
    import logging  # noqa: PLC0415

    from kopf._cogs.structs import bodies, ephemera, patches, references  # noqa: PLC0415
    from kopf._core.intents import causes  # noqa: PLC0415

    from torghut_operator.app.settings import FINALIZER  # noqa: PLC0415
    from torghut_operator.core.api.spec import GROUP, PLURAL, VERSION  # noqa: PLC0415

    raw = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TorghutRollout", "metadata": {"name": "r", **meta}}
    if spec is not None:
        raw["spec"] = spec
    body = bodies.Body(cast(bodies.RawBody, raw))
    resource = references.Resource(GROUP, VERSION, PLURAL, namespaced=True)
    common: dict[str, Any] = {
        "logger": logging.getLogger("test"),
        "indices": {},
        "memo": ephemera.Memo(),
        "resource": resource,
        "patch": patches.Patch(),
    }
    event = cast(bodies.RawEvent, {"type": "MODIFIED", "object": raw})
    changing = causes.detect_changing_cause(finalizer=FINALIZER, raw_event=event, body=body, **common)
    spawning = causes.detect_spawning_cause(body=body, reset=False, **common)
    return changing, spawning


def test_kopf_skips_its_change_handling_of_a_rollout_until_deletion_is_asked_and_the_daemon_keeps_the_finalizer() -> (
    None
):
    import torghut_operator.app.handlers  # noqa: F401, PLC0415 (registers the handlers)
    from torghut_operator.app.settings import FINALIZER  # noqa: PLC0415

    registry = kopf.get_default_registry()
    changing, spawning = _causes({"finalizers": [FINALIZER], "resourceVersion": "2"})
    assert not registry._changing.prematch(cause=changing), "an ordinary event is not a change Kopf handles"
    assert registry._spawning.requires_finalizer(cause=spawning), "the daemon still keeps the finalizer on"
    deleting, _ = _causes({"finalizers": [FINALIZER], "deletionTimestamp": "2026-12-03T18:00:00Z"})
    assert registry._changing.prematch(cause=deleting)
    assert registry._changing.requires_finalizer(cause=deleting), "the deletion handler runs before the rollout goes"
    assert [h.id for h in registry._changing.get_handlers(cause=deleting)] == ["finalize"]


def _spawned(spec: dict[str, object]) -> list[str]:
    """The daemon and timers Kopf runs for a rollout with this spec."""
    import torghut_operator.app.handlers  # noqa: F401, PLC0415 (registers the handlers)
    from torghut_operator.app.settings import FINALIZER  # noqa: PLC0415

    _, spawning = _causes({"finalizers": [FINALIZER], "resourceVersion": "2"}, spec)
    return sorted(str(h.id) for h in kopf.get_default_registry()._spawning.get_handlers(cause=spawning))


def test_a_rollout_without_a_database_gets_its_daemon_and_no_route_or_report_timer() -> None:
    assert _spawned({"target": {"name": "web"}}) == ["drive"]
    with_database = {"target": {"name": "torghut"}, "database": {"secretRef": {"name": "db", "key": "uri"}}}
    assert _spawned(with_database) == ["drive", "refresh_report", "route_visibility"]
