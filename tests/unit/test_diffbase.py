"""The operator builds Kopf's diff base (the essence of a rollout that tells a spec change from a status write)
without deep-copying status and managedFields; it must be exactly Kopf's own essence, whatever the object holds."""

from __future__ import annotations

import copy
from typing import Any

import kopf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torghut_operator.app.settings import LeanDiffBaseStorage, NoDiffBase
from torghut_operator.core.api.spec import GROUP

pytestmark = pytest.mark.unit

KEY = "last-handled-configuration"
scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)
annotation_keys = st.sampled_from(
    [
        "a",
        "team/x",
        f"{GROUP}/action",
        f"{GROUP}/{KEY}",
        "kopf.zalando.org/last-handled-configuration",
        "kubectl.kubernetes.io/last-applied-configuration",
    ]
)


@st.composite
def rollouts(draw: st.DrawFn) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "r", "namespace": "torghut", "uid": draw(st.text(max_size=6))}
    if draw(st.booleans()):
        metadata["labels"] = draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3))
    if draw(st.booleans()):
        metadata["annotations"] = draw(st.dictionaries(annotation_keys, st.text(max_size=5), max_size=4))
    if draw(st.booleans()):
        metadata["managedFields"] = draw(st.lists(values, max_size=3))
    body: dict[str, Any] = {"apiVersion": f"{GROUP}/v1alpha1", "kind": "TorghutRollout", "metadata": metadata}
    if draw(st.booleans()):
        body["spec"] = draw(st.dictionaries(st.text(max_size=5), values, max_size=4))
    if draw(st.booleans()):
        body["status"] = draw(st.dictionaries(st.text(max_size=5), values, max_size=4))
    return body


@settings(max_examples=300)
@given(rollouts())
def test_the_lean_essence_is_kopfs_essence_and_leaves_the_object_alone(raw: dict[str, Any]) -> None:
    kopfs = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key=KEY)
    lean = LeanDiffBaseStorage(prefix=GROUP, key=KEY)
    before = copy.deepcopy(raw)
    assert lean.build(body=kopf.Body(raw)) == kopfs.build(body=kopf.Body(raw))  # type: ignore[arg-type]
    assert raw == before


def test_the_essence_drops_status_and_managed_fields_and_keeps_spec_labels_and_annotations() -> None:
    raw = {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "TorghutRollout",
        "metadata": {"name": "r", "labels": {"a": "1"}, "annotations": {"team/x": "y"}, "managedFields": [{"m": 1}]},
        "spec": {"target": {"image": "new"}},
        "status": {"checks": [{"measurements": list(range(100))}]},
    }
    essence = LeanDiffBaseStorage(prefix=GROUP, key=KEY).build(body=kopf.Body(raw))  # type: ignore[arg-type]
    assert essence == {
        "spec": {"target": {"image": "new"}},
        "metadata": {"labels": {"a": "1"}, "annotations": {"team/x": "y"}},
    }


def test_the_operator_keeps_no_diff_base_because_deletion_is_its_only_changing_handler() -> None:
    """NoDiffBase is right only while no handler needs Kopf to tell a creation from an update (on.create,
    on.update, on.resume, on.field): adding one needs a diff base again (LeanDiffBaseStorage, as before)."""
    import torghut_operator.app.handlers  # noqa: F401, PLC0415 (registers the handlers)

    changing = list(kopf.get_default_registry()._changing.get_all_handlers())
    assert [(h.id, h.reason.value if h.reason else None) for h in changing] == [("finalize", "delete")]
    storage = NoDiffBase(prefix=GROUP, key=KEY)
    body = kopf.Body({"metadata": {"name": "r", "annotations": {f"{GROUP}/{KEY}": "{}"}}, "spec": {}})
    assert storage.fetch(body=body) is None, "an old rollout's diff base is not read either"
