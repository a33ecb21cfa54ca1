"""The real node runs real containers: a Job's command runs and its logs are read back, an HTTP readiness probe
really probes, pods reach the API server and each other through Services (kube-proxy) and by name (CoreDNS), and
stopping the node leaves nothing on the host. A kubelet that dies is reported with its last log lines.

The same tests run on kind (E2E_CLUSTER=kind): its node carries the real node's label (kind-config.yaml) and the
busybox image is loaded with `kind load image-archive`. What only the embedded node has (killing its kubelet, its
teardown) is `local_only`: skipped there as not applicable, with the reason."""

from __future__ import annotations

import ipaddress
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ClusterHandle
from torghut_localstack import images, realnode, workloads
from torghut_localstack.cluster import ComponentDied, LocalCluster
from torghut_localstack.kubectl import Kubectl, KubectlError
from torghut_localstack.wait import NotYet, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def busybox(cluster: ClusterHandle) -> str:
    """Debian's busybox as an image (built without Docker, cached), loaded into the cluster's real-container
    node(s) the way any archive is: `ctr images import` locally, `kind load image-archive` on kind."""
    image = images.busybox_image()
    cluster.load_image_archive(image.archive)
    return image.reference


@pytest.fixture
def node(local_cluster: LocalCluster) -> LocalCluster:
    """The session's local cluster, with its real node running (for `local_only` tests)."""
    assert local_cluster.node_processes, "the local cluster started without its real node"
    local_cluster.check_alive()
    return local_cluster


def _job(name: str, image: str, script: str) -> dict[str, Any]:
    job = workloads.job(name, image=image)
    job["spec"]["template"]["spec"]["containers"][0]["command"] = ["sh", "-c", script]
    return workloads.on_real_node(job)


def _run_job(kubectl: Kubectl, namespace: str, busybox: str, name: str, script: str) -> tuple[str, float]:
    """Run `script` in a busybox Job on the real node; returns its log and the seconds to Complete."""
    started = time.monotonic()
    kubectl.apply(_job(name, busybox, script), namespace=namespace)
    try:
        workloads.wait_for_condition(kubectl, "job", name, namespace=namespace, type_="Complete", timeout=90)
    except TimeoutError as error:
        raise AssertionError(f"{error}\npods:\n{kubectl('describe', 'pods', '-n', namespace)}") from error
    return kubectl("logs", f"job/{name}", "-n", namespace), time.monotonic() - started


def _web(busybox: str) -> dict[str, Any]:
    """busybox httpd behind an HTTP readiness probe (404 until index.html exists: the probe really probes)."""
    deployment = workloads.deployment("web", image=busybox, replicas=2)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["command"] = ["sh", "-c", "echo served-by-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"]
    container["readinessProbe"] = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
    return workloads.on_real_node(deployment)


def test_a_job_runs_a_real_command_and_its_logs_are_read_back(
    kubectl: Kubectl, namespace: str, cluster: ClusterHandle, busybox: str
) -> None:
    logs, seconds = _run_job(kubectl, namespace, busybox, "hello", "echo hello from $(hostname); uname -s; id -u")

    assert "hello from hello-" in logs
    assert "Linux" in logs
    (pod,) = kubectl.json("get", "pods", "-n", namespace, "-l", "job-name=hello")["items"]
    node = kubectl.json("get", "node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"].get(realnode.REAL_NODE_LABEL) == "real", "the pod ran off the real node"
    if cluster.pod_network is not None:
        assert ipaddress.ip_address(pod["status"]["podIP"]) in cluster.pod_network, pod["status"]
    print(f"Job Complete in {seconds:.1f}s")


def test_a_deployment_with_an_http_readiness_probe_becomes_available(
    kubectl: Kubectl, namespace: str, busybox: str
) -> None:
    started = time.monotonic()
    kubectl.apply(_web(busybox), namespace=namespace)

    deployment = workloads.wait_for_rollout(kubectl, "web", namespace=namespace, timeout=90)

    assert deployment["status"]["availableReplicas"] == 2
    print(f"Deployment Available in {time.monotonic() - started:.1f}s")


def test_a_pod_reaches_the_api_server_through_the_kubernetes_service(
    kubectl: Kubectl, namespace: str, busybox: str
) -> None:
    token = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    script = (
        "wget -q -O- --no-check-certificate https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version;"
        f' wget -q -O- --no-check-certificate --header "Authorization: Bearer $(cat {token})"'
        " https://kubernetes.default.svc/api/v1/namespaces/$NS/serviceaccounts/default || echo forbidden-as-expected"
    )
    job = _job("api", busybox, script)
    job["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
    ]
    kubectl.apply(job, namespace=namespace)
    workloads.wait_for_condition(kubectl, "job", "api", namespace=namespace, type_="Complete", timeout=90)
    logs = kubectl("logs", "job/api", "-n", namespace)

    server = kubectl.json("version", "-o", "json")["serverVersion"]["gitVersion"]
    assert f'"gitVersion": "{server}"' in logs, logs
    # The ServiceAccount's token reached the API server by name (CoreDNS) and was authenticated (403, not 401).
    assert "forbidden-as-expected" in logs, logs


def test_a_pod_reaches_a_service_by_its_dns_name(kubectl: Kubectl, namespace: str, busybox: str) -> None:
    kubectl.apply(_web(busybox), workloads.service("web", port=80, target_port=8080), namespace=namespace)
    workloads.wait_for_rollout(kubectl, "web", namespace=namespace, timeout=90)
    cluster_ip = kubectl.json("get", "service", "web", "-n", namespace)["spec"]["clusterIP"]

    logs, _ = _run_job(
        kubectl,
        namespace,
        busybox,
        "client",
        f"nslookup web.{namespace}.svc.cluster.local; wget -q -O- http://web/",
    )

    assert cluster_ip in logs, logs
    assert "served-by-web-" in logs, logs


def test_kubectl_exec_reaches_a_container(kubectl: Kubectl, namespace: str, busybox: str) -> None:
    kubectl.apply(_web(busybox), namespace=namespace)
    workloads.wait_for_rollout(kubectl, "web", namespace=namespace, timeout=90)

    out = kubectl("exec", "-n", namespace, "deployment/web", "--", "cat", "/www/index.html")

    assert out.startswith("served-by-web-")


@pytest.fixture
def kubelet_restored(node: LocalCluster) -> Iterator[None]:
    yield
    node.restart_component("kubelet")


@pytest.mark.local_only(
    "kills the kubelet of the embedded real node and reads its log (kind's kubelet runs inside its node container)"
)
def test_a_kubelet_that_dies_fails_with_its_last_log_lines(
    kubectl: Kubectl, namespace: str, node: LocalCluster, kubelet_restored: None
) -> None:
    kubelet = next(p for p in node.node_processes if p.name == "kubelet")
    os.kill(kubelet.pid, signal.SIGKILL)
    wait_for(lambda: not kubelet.running(), timeout=10, what="the kubelet to exit")

    with pytest.raises(ComponentDied) as died:
        node.check_alive()

    message = str(died.value)
    assert f"kubelet (pid {kubelet.pid}) exited with code -9" in message
    assert f"last lines of {kubelet.log_path}" in message
    assert kubelet.tail(3).splitlines()[-1] in message


@pytest.fixture
def node_restarted(node: LocalCluster) -> Iterator[None]:
    yield
    if not node.node_processes:
        node.start_node()


@pytest.mark.local_only(
    "stops the embedded real node and inspects the host it ran on (kind's node is a container, removed whole)"
)
def test_stopping_the_node_leaves_nothing_on_the_host(
    kubectl: Kubectl, namespace: str, node: LocalCluster, node_restarted: None, busybox: str
) -> None:
    # Something to clean up: running pods (mounts, cgroups, veths), a Service (kube-proxy's chains).
    kubectl.apply(_web(busybox), workloads.service("web", port=80, target_port=8080), namespace=namespace)
    workloads.wait_for_rollout(kubectl, "web", namespace=namespace, timeout=90)
    layout = node.node_layout
    snapshot = realnode.load_snapshot(layout)
    pids = [p.pid for p in node.node_processes]
    assert realnode.leftovers(layout, snapshot), "a running node should show up as leftovers"

    node.stop_node()

    assert realnode.leftovers(layout, snapshot) == []
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)

    node.start_node()  # the rest of the session keeps its node

    def pod_running_again() -> bool:
        pods = kubectl.json("get", "pods", "-n", namespace, "-l", "app=web")["items"]
        ready = [pod for pod in pods if (workloads.condition(pod, "Ready") or {}).get("status") == "True"]
        if len(ready) < 2:
            raise NotYet(f"{len(ready)} of the web pods Ready")
        return True

    wait_for(pod_running_again, timeout=90, what="the web pods Ready again", retry_on=(KubectlError,))
