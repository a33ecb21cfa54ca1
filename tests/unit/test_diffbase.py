"""The operator keeps no Kopf diff base (settings.NoDiffBase): right only while deletion is its only changing
handler; a handler that needs Kopf to tell a creation from an update must bring a diff base back."""

from __future__ import annotations

from typing import cast

import kopf
import pytest

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
