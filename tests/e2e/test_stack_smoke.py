"""The cluster the e2e suite runs on behaves like Kubernetes: workloads roll out, Jobs finish or
fail, stuck rollouts miss their deadline, and the node stays Ready."""

from __future__ import annotations

import datetime
import time
from typing import Any

import pytest

from torghut_localstack import workloads
from torghut_localstack.kubectl import Kubectl, KubectlError
from torghut_localstack.wait import NotYet, wait_for

pytestmark = pytest.mark.e2e


def _pod_images(kubectl: Kubectl, namespace: str, app: str) -> list[str]:
    pods = kubectl.json("get", "pods", "-n", namespace, "-l", f"app={app}")["items"]
    return sorted(pod["spec"]["containers"][0]["image"] for pod in pods if not pod["metadata"].get("deletionTimestamp"))


def test_deployment_becomes_available_then_rolls_to_a_new_image(kubectl: Kubectl, namespace: str) -> None:
    old, new = workloads.PAUSE_IMAGE_PREVIOUS, workloads.PAUSE_IMAGE
    kubectl.apply(workloads.deployment("web", image=old, replicas=2), namespace=namespace)
    workloads.wait_for_rollout(kubectl, "web", namespace=namespace)

    kubectl("set", "image", "deployment/web", f"app={new}", "-n", namespace)
    rolled = workloads.wait_for_rollout(kubectl, "web", namespace=namespace)

    assert rolled["spec"]["template"]["spec"]["containers"][0]["image"] == new
    assert rolled["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"

    def only_new_pods() -> list[str]:
        images = _pod_images(kubectl, namespace, "web")
        if images != [new, new]:
            raise NotYet(f"pod images {images}")
        return images

    wait_for(only_new_pods, timeout=60, what="the old pods to be replaced", retry_on=(KubectlError,))


def test_job_completes(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(workloads.job("migrate"), namespace=namespace)

    job = workloads.wait_for_condition(kubectl, "job", "migrate", namespace=namespace, type_="Complete")

    assert job["status"]["succeeded"] == 1
    assert workloads.condition(job, "Failed") is None


def test_job_whose_pods_carry_the_failure_label_fails(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(workloads.job("migrate", fail=True), namespace=namespace)

    job = workloads.wait_for_condition(
        kubectl, "job", "migrate", namespace=namespace, type_="Failed", reason="BackoffLimitExceeded"
    )

    assert job["status"].get("succeeded", 0) == 0
    (pod,) = kubectl.json("get", "pods", "-n", namespace, "-l", "job-name=migrate")["items"]
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 1


def test_deployment_whose_pods_never_become_ready_misses_its_progress_deadline(
    kubectl: Kubectl, namespace: str
) -> None:
    kubectl.apply(workloads.deployment("stuck", never_ready=True, progress_deadline_seconds=5), namespace=namespace)

    stuck = workloads.wait_for_condition(
        kubectl,
        "deployment",
        "stuck",
        namespace=namespace,
        type_="Progressing",
        status="False",
        reason="ProgressDeadlineExceeded",
    )

    assert stuck["status"].get("availableReplicas", 0) == 0
    available = workloads.condition(stuck, "Available")
    assert available is not None
    assert available["status"] == "False"
    (pod,) = kubectl.json("get", "pods", "-n", namespace, "-l", "app=stuck")["items"]
    assert pod["status"]["phase"] == "Running"
    ready = workloads.condition(pod, "Ready")
    assert ready is not None
    assert ready["status"] == "False"


def _node_ready(node: dict[str, Any]) -> bool:
    ready = workloads.condition(node, "Ready")
    return ready is not None and ready.get("status") == "True"


def test_node_stays_ready_for_over_a_minute(kubectl: Kubectl) -> None:
    observe_s = 65.0
    started = time.monotonic()

    def ready_throughout() -> bool:
        nodes = kubectl.json("get", "nodes")["items"]
        not_ready = [node["metadata"]["name"] for node in nodes if not _node_ready(node)]
        assert nodes, "the cluster has no nodes"
        assert not not_ready, f"NotReady after {time.monotonic() - started:.0f}s: {not_ready}"
        return time.monotonic() - started >= observe_s

    # Only a failing kubectl call is retried; a NotReady node (AssertionError) fails at once.
    wait_for(
        ready_throughout,
        timeout=observe_s + 30,
        interval=5,
        what=f"the nodes to stay Ready for {observe_s:.0f}s",
        retry_on=(KubectlError,),
    )

    # The heartbeat is alive too: each node's lease was renewed within its duration.
    now = datetime.datetime.now(datetime.UTC)
    for lease in kubectl.json("get", "leases", "-n", "kube-node-lease")["items"]:
        renewed = datetime.datetime.fromisoformat(lease["spec"]["renewTime"].replace("Z", "+00:00"))
        age = (now - renewed).total_seconds()
        assert age <= lease["spec"]["leaseDurationSeconds"], f"lease {lease['metadata']['name']} is {age:.0f}s old"
