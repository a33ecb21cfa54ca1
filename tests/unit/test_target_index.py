"""Which daemons a change wakes: Kopf's index of rollouts by target (`app.handlers.rollouts_by_target`) replaces a map
of our own that went stale when a rollout's spec named another target."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest

from torghut_operator.app import handlers
from torghut_operator.app.runtime import Runtime

pytestmark = pytest.mark.unit

# Kopf types its decorated handlers as its callback protocols; the tests call them with what each one reads.
index_of: Any = handlers.rollouts_by_target
deployment_changed: Any = handlers.deployment_changed


def test_a_rollout_is_indexed_by_namespace_kind_and_name_of_its_target() -> None:
    spec: Any = {"target": {"name": "torghut", "container": "torghut", "image": "x"}}
    assert index_of(namespace="trading", uid="u1", spec=spec) == {("trading", "Deployment", "torghut"): "u1"}
    knative: Any = {"target": {"kind": "Service", "name": "torghut-ks"}}
    assert index_of(namespace="trading", uid="u2", spec=knative) == {("trading", "Service", "torghut-ks"): "u2"}


def test_a_target_event_wakes_exactly_the_daemons_the_index_names() -> None:
    runtime = Runtime(reconciler=cast(Any, None), config=cast(Any, None), freshness=cast(Any, None))
    for uid in ("u1", "u2", "u3"):
        runtime.wakers[uid] = asyncio.Event()
    memo = SimpleNamespace(runtime=runtime)
    index = {("trading", "Deployment", "torghut"): ["u1", "u2"], ("trading", "Deployment", "other"): ["u3"]}
    asyncio.run(deployment_changed(namespace="trading", name="torghut", memo=memo, rollouts_by_target=index))
    assert [uid for uid, event in runtime.wakers.items() if event.is_set()] == ["u1", "u2"]
    asyncio.run(deployment_changed(namespace="trading", name="nobody", memo=memo, rollouts_by_target=index))
    assert not runtime.wakers["u3"].is_set()
