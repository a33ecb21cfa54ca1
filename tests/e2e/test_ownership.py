"""The operator owns the target fields it writes (server-side apply, field manager ``torghut-rollout-operator``)
and nothing else; someone else changing them under a verification is drift, never evidence. Against the real API
server and the real operator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from tests.conftest import ClusterHandle
from tests.e2e.conftest import NEW_IMAGE, OLD_IMAGE, World, rollout_manifest
from torghut_localstack import workloads
from torghut_localstack.kubectl import Kubectl
from torghut_localstack.wait import wait_for
from torghut_operator.adapters.kube import KubeGateway
from torghut_operator.adapters.kubeapi import KubeApi
from torghut_operator.core.api.spec import Target
from torghut_operator.core.errors import TemporaryError
from torghut_operator.core.ownership import FIELD_MANAGER, container_apply, field_owners

pytestmark = pytest.mark.e2e

GIT = "argocd-controller"  # what Argo CD's server-side apply calls itself
TARGET = Target(name="torghut", container="torghut", image=NEW_IMAGE)


def _deployment(image: str, env: dict[str, str]) -> dict[str, Any]:
    labels = {"app": "torghut"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "torghut", "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "torghut",
                            "image": image,
                            "env": [{"name": k, "value": v} for k, v in env.items()],
                        }
                    ]
                },
            },
        },
    }


def _apply_as(kubectl: Kubectl, manager: str, namespace: str, doc: dict[str, Any]) -> None:
    kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        f"--field-manager={manager}",
        "-n",
        namespace,
        "-f",
        "-",
        stdin=json.dumps(doc),
    )


def _with_managers(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    obj: dict[str, Any] = kubectl.json("get", "deployment", "torghut", "-n", namespace, "--show-managed-fields")
    return obj


def _container(kubectl: Kubectl, namespace: str) -> tuple[dict[str, Any], dict[str, Any]]:
    obj = _with_managers(kubectl, namespace)
    return obj, obj["spec"]["template"]["spec"]["containers"][0]


def _managers_of(obj: dict[str, Any], field: str) -> set[str]:
    """``manager/operation`` of every owner of the torghut container's ``image`` or ``env:<NAME>`` value."""
    return {
        label.split(" (")[0] + "/" + label.split(" (")[1].split(" ")[0]
        for label in field_owners(obj, "torghut").get(field, ())
    }


def test_the_operator_takes_only_the_image_and_the_variables_it_sets_and_keeps_them(
    cluster: ClusterHandle, kubectl: Kubectl, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _apply_as(kubectl, GIT, namespace, _deployment(OLD_IMAGE, {"TRADING_MODE": "paper", "LOG_LEVEL": "info"}))
    api = _api(cluster, monkeypatch)
    gateway = KubeGateway(api)

    _run(api, gateway.set_target_image(namespace, TARGET, NEW_IMAGE))
    obj, container = _container(kubectl, namespace)
    assert container["image"] == NEW_IMAGE
    assert _managers_of(obj, "image") == {f"{FIELD_MANAGER}/Apply"}
    assert _managers_of(obj, "env:LOG_LEVEL") == {f"{GIT}/Apply"}

    _run(api, gateway.set_target_env(namespace, TARGET, {"TRADING_MODE": "live", "TRADING_CAPITAL_FRACTION": "0.10"}))
    obj, container = _container(kubectl, namespace)
    assert container["image"] == NEW_IMAGE, "an env write released the image the operator owned"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env == {"TRADING_MODE": "live", "LOG_LEVEL": "info", "TRADING_CAPITAL_FRACTION": "0.10"}
    assert _managers_of(obj, "env:TRADING_MODE") == {f"{FIELD_MANAGER}/Apply"}

    _run(api, gateway.set_target_env(namespace, TARGET, {"TRADING_MODE": "paper", "TRADING_CAPITAL_FRACTION": None}))
    obj, container = _container(kubectl, namespace)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env == {"TRADING_MODE": "paper", "LOG_LEVEL": "info"}, "a variable the rollout added was not removed"
    assert container["image"] == NEW_IMAGE

    # Git applies its manifest again (as Argo CD's sync does): the fields it still owns stay its own.
    _apply_as(kubectl, GIT, namespace, _deployment(OLD_IMAGE, {"TRADING_MODE": "paper", "LOG_LEVEL": "debug"}))
    obj, container = _container(kubectl, namespace)
    assert {e["name"]: e.get("value") for e in container["env"]}["LOG_LEVEL"] == "debug"


def test_an_apply_to_a_version_that_changed_since_it_was_read_is_refused(
    cluster: ClusterHandle, kubectl: Kubectl, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _apply_as(kubectl, GIT, namespace, _deployment(OLD_IMAGE, {}))
    api = _api(cluster, monkeypatch)
    gateway = KubeGateway(api)
    read, _ = _container(kubectl, namespace)
    kubectl("set", "image", "deployment/torghut", f"torghut={OLD_IMAGE}-x", "-n", namespace)
    body = container_apply(read, "torghut", image=NEW_IMAGE)
    with pytest.raises(TemporaryError, match="changed concurrently"):
        _run(api, gateway._apply_deployment(namespace, "torghut", body, "set image"))
    _, container = _container(kubectl, namespace)
    assert container["image"] == f"{OLD_IMAGE}-x"


T = TypeVar("T")


def _api(cluster: ClusterHandle, monkeypatch: pytest.MonkeyPatch) -> KubeApi:
    """The operator's own API session, logged in from the cluster's kubeconfig as the operator would be."""
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return KubeApi()


def _run(api: KubeApi, call: Coroutine[Any, Any, T]) -> T:
    """One gateway call on a loop of its own (the session opens on that loop, so it is closed with it)."""

    async def once() -> T:
        try:
            return await call
        finally:
            await api.close()

    return asyncio.run(once())


class _RacedGateway(KubeGateway):
    """Someone else writes the Deployment between the gateway's read and its write, ``races`` times."""

    def __init__(self, api: Any, kubectl: Kubectl, races: int) -> None:
        super().__init__(api)
        self.kubectl, self.races, self.reads = kubectl, races, 0

    async def get_target(self, namespace: str, target: Target) -> dict[str, Any] | None:
        obj = await super().get_target(namespace, target)
        self.reads += 1
        if self.reads <= self.races:
            self.kubectl("annotate", "--overwrite", "deployment/torghut", f"race={self.reads}", "-n", namespace)
        return obj


def test_a_write_raced_by_another_writer_reads_again_and_keeps_their_change(
    cluster: ClusterHandle, kubectl: Kubectl, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _apply_as(kubectl, GIT, namespace, _deployment(OLD_IMAGE, {"TRADING_MODE": "paper"}))
    # Rolled out first: the Deployment controller's own status writes would race the gateway too.
    workloads.wait_for_rollout(kubectl, "torghut", namespace=namespace)
    api = _api(cluster, monkeypatch)
    gateway = _RacedGateway(api, kubectl, races=2)
    _run(api, gateway.set_target_image(namespace, TARGET, NEW_IMAGE))
    obj, container = _container(kubectl, namespace)
    assert container["image"] == NEW_IMAGE
    assert obj["metadata"]["annotations"]["race"] == "2", "the other writer's change was lost"
    assert gateway.reads >= 3

    # A writer that never stops racing: the write gives up with a retryable error and changes nothing.
    always = _RacedGateway(api, kubectl, races=100)
    with pytest.raises(TemporaryError, match="changed concurrently"):
        _run(api, always.set_target_env(namespace, TARGET, {"TRADING_MODE": "live"}))
    _, container = _container(kubectl, namespace)
    assert {e["name"]: e.get("value") for e in container["env"]} == {"TRADING_MODE": "paper"}


def _long_verification(world: World, name: str, **target: Any) -> dict[str, Any]:
    check = {"name": "db-up", "postgres": {"query": "SELECT 1 AS value"}, "min": 1}
    return rollout_manifest(
        name,
        world,
        target={"kind": "Deployment", "name": "torghut", "container": "torghut", "image": NEW_IMAGE, **target},
        verify={"interval": "1s", "count": 60, "checks": [check]},
    )


def _measurements(world: World, name: str) -> int:
    checks = world.rollout(name)["status"].get("checks") or []
    return sum(len(c.get("measurements") or []) for c in checks)


def test_an_image_changed_under_a_verification_fails_it_naming_who_and_restores(world: World) -> None:
    world.apply(_long_verification(world, "drift-fail"))
    wait_for(lambda: _measurements(world, "drift-fail") >= 1, timeout=90, what="first measurement")
    world.kubectl("set", "image", "deployment/torghut", "torghut=registry.local/someone-else:1", "-n", world.namespace)
    done = world.wait_phase("drift-fail", "RolledBack", "Failed", timeout=60)
    verified = next(c for c in done["status"]["conditions"] if c["type"] == "Verified")
    assert verified["reason"] == "TargetDrifted"
    assert "image is registry.local/someone-else:1 instead of" in verified["message"]
    assert "kubectl-set (Update" in verified["message"]
    assert done["status"]["phase"] == "RolledBack"
    assert world.deployment_image() == OLD_IMAGE
    assert "TargetDrifted" in [e["reason"] for e in world.events("drift-fail")]
    # The restore took the image back under the operator's field manager.
    obj = _with_managers(world.kubectl, world.namespace)
    assert f"{FIELD_MANAGER}/Apply" in _managers_of(obj, "image")


def test_on_drift_wait_pauses_the_evidence_until_the_target_is_back(world: World) -> None:
    check = {"name": "db-up", "postgres": {"query": "SELECT 1 AS value"}, "min": 1}
    doc = rollout_manifest(
        "drift-wait",
        world,
        target={"kind": "Deployment", "name": "torghut", "container": "torghut", "image": NEW_IMAGE, "onDrift": "Wait"},
        verify={"interval": "1s", "count": 4, "checks": [check]},
    )
    world.apply(doc)
    wait_for(lambda: _measurements(world, "drift-wait") >= 1, timeout=90, what="first measurement")
    world.kubectl("set", "image", "deployment/torghut", "torghut=registry.local/someone-else:1", "-n", world.namespace)
    waiting = wait_for(
        lambda: world.rollout("drift-wait")["status"].get("drift") or None,
        timeout=30,
        what="drift seen",
    )
    assert "kubectl-set" in waiting
    assert world.rollout("drift-wait")["status"]["phase"] == "Verifying"
    world.kubectl("set", "image", "deployment/torghut", f"torghut={NEW_IMAGE}", "-n", world.namespace)
    done = world.wait_phase("drift-wait", "Succeeded", timeout=90)
    assert "drift" not in done["status"] or done["status"]["drift"] is None
    reasons = [e["reason"] for e in world.events("drift-wait")]
    assert "TargetDrifted" in reasons
    assert "DriftResolved" in reasons
    # The evidence that passed was all taken after the target came back: the checks started over.
    (state,) = done["status"]["checks"]
    assert state["successful"] == 4


def test_a_write_from_a_stale_base_reads_again_and_keeps_the_change_made_since(
    cluster: ClusterHandle, kubectl: Kubectl, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn's image patch starts from the target it read (no second GET); when someone changed the Deployment
    since, the real API server refuses the stale base (its resourceVersion) and the write reads again."""
    _apply_as(kubectl, GIT, namespace, _deployment(OLD_IMAGE, {"TRADING_MODE": "paper"}))
    workloads.wait_for_rollout(kubectl, "torghut", namespace=namespace)
    api = _api(cluster, monkeypatch)
    gateway = _RacedGateway(api, kubectl, races=0)
    stale = kubectl.get("deployment", "torghut", namespace=namespace)
    assert stale is not None
    kubectl("annotate", "--overwrite", "deployment/torghut", "since=1", "-n", namespace)
    _run(api, gateway.set_target_image(namespace, TARGET, NEW_IMAGE, stale))
    obj, container = _container(kubectl, namespace)
    assert container["image"] == NEW_IMAGE
    assert obj["metadata"]["annotations"]["since"] == "1"
    assert gateway.reads >= 1, "the stale base was refused, then the write read the Deployment again"
    # A current base: no read at all. The Deployment controller writes the object's status on its own schedule
    # (several times a second while it rolls a change out, now and then after), so a base read just before a
    # write can still be stale by the time of the write, and the write then reads again, as it must (CI saw it
    # twice). Shown as: of a few writes, each from a base read just before it, at least one needed no read; a
    # gateway that always read again would fail this.
    reads_per_write = []
    for image in (OLD_IMAGE, NEW_IMAGE, OLD_IMAGE, NEW_IMAGE):
        workloads.wait_for_rollout(kubectl, "torghut", namespace=namespace)
        before = gateway.reads
        current = kubectl.get("deployment", "torghut", namespace=namespace)
        _run(api, gateway.set_target_image(namespace, TARGET, image, current))
        _, container = _container(kubectl, namespace)
        assert container["image"] == image
        reads_per_write.append(gateway.reads - before)
        if reads_per_write[-1] == 0:
            break
    assert 0 in reads_per_write, f"every write from a current base read again: {reads_per_write}"
