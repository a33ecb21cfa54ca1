"""Small workloads for smoke tests, and waits on their status, usable on kwok and on kind.

Each manifest behaves the same on both: under kwok the pod labels of `torghut_localstack.kwok`
decide the outcome; on a real kubelet the command or readiness probe does.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from torghut_localstack.kubectl import Kubectl, KubectlError
from torghut_localstack.kwok import FAIL_LABEL, NEVER_READY_LABEL
from torghut_localstack.realnode import REAL_NODE_LABEL, REAL_NODE_TAINT
from torghut_localstack.wait import NotYet, wait_for

PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
PAUSE_IMAGE_PREVIOUS = "registry.k8s.io/pause:3.9"
BUSYBOX_IMAGE = "busybox:1.36.1"


def unique_name(prefix: str) -> str:
    """`prefix-xxxxxx`, a valid DNS-1123 label for prefixes of up to 55 lowercase characters."""
    return f"{prefix}-{secrets.token_hex(3)}"


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def deployment(
    name: str,
    *,
    image: str = PAUSE_IMAGE,
    replicas: int = 1,
    never_ready: bool = False,
    progress_deadline_seconds: int | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A Deployment of `image`; `never_ready` pods run but never pass readiness."""
    selector = {"app": name}
    pod_labels = {**selector, **(labels or {})}
    container: dict[str, Any] = {"name": "app", "image": image}
    if never_ready:
        pod_labels[NEVER_READY_LABEL] = "true"
        container["readinessProbe"] = {"exec": {"command": ["/bin/false"]}, "periodSeconds": 1}
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": selector},
        "template": {"metadata": {"labels": pod_labels}, "spec": {"containers": [container]}},
    }
    if progress_deadline_seconds is not None:
        spec["progressDeadlineSeconds"] = progress_deadline_seconds
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": spec}


def job(name: str, *, fail: bool = False, image: str = BUSYBOX_IMAGE, backoff_limit: int = 0) -> dict[str, Any]:
    """A Job of one pod that exits 0, or 1 with `fail`."""
    pod_labels = {"app": name}
    if fail:
        pod_labels[FAIL_LABEL] = "true"
    container = {"name": "main", "image": image, "command": ["sh", "-c", "exit 1" if fail else "exit 0"]}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {"restartPolicy": "Never", "containers": [container]},
            },
        },
    }


def condition(obj: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    """The status condition of type `kind`, if any."""
    for item in obj.get("status", {}).get("conditions") or []:
        if item.get("type") == kind:
            return dict(item)
    return None


def summarize_conditions(obj: Mapping[str, Any]) -> str:
    items = obj.get("status", {}).get("conditions") or []
    return ", ".join(f"{c.get('type')}={c.get('status')}({c.get('reason', '')})" for c in items) or "no conditions"


def wait_for_condition(
    kubectl: Kubectl,
    kind: str,
    name: str,
    *,
    namespace: str,
    type_: str,
    status: str = "True",
    reason: str | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Wait until `kind/name` has condition `type_`=`status` (and `reason`); returns the object."""

    def check() -> dict[str, Any]:
        obj = kubectl.get(kind, name, namespace=namespace)
        if obj is None:
            raise NotYet(f"{kind}/{name} does not exist")
        found = condition(obj, type_)
        if found and found.get("status") == status and (reason is None or found.get("reason") == reason):
            return obj
        raise NotYet(summarize_conditions(obj))

    wanted = f"{type_}={status}" + (f" ({reason})" if reason else "")
    what = f"{kind}/{name} in {namespace} to be {wanted}"
    return wait_for(check, timeout=timeout, interval=0.5, what=what, retry_on=(KubectlError,))


def wait_for_rollout(kubectl: Kubectl, name: str, *, namespace: str, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until Deployment `name` has rolled out its current template and is Available."""

    def check() -> dict[str, Any]:
        obj = kubectl.get("deployment", name, namespace=namespace)
        if obj is None:
            raise NotYet(f"deployment/{name} does not exist")
        status, wanted = obj.get("status", {}), obj["spec"].get("replicas", 1)
        available = condition(obj, "Available")
        done = (
            status.get("observedGeneration", 0) >= obj["metadata"]["generation"]
            and status.get("updatedReplicas", 0) == wanted
            and status.get("availableReplicas", 0) == wanted
            and status.get("replicas", 0) == wanted
            and available is not None
            and available.get("status") == "True"
        )
        if done:
            return obj
        counts = {key: status.get(key, 0) for key in ("replicas", "updatedReplicas", "availableReplicas")}
        raise NotYet(f"{counts}, want {wanted}; {summarize_conditions(obj)}")

    what = f"deployment/{name} in {namespace} to roll out"
    return wait_for(check, timeout=timeout, interval=0.5, what=what, retry_on=(KubectlError,))


def wait_for_service_account(kubectl: Kubectl, namespace: str, *, timeout: float = 30.0) -> None:
    """New namespaces get their `default` ServiceAccount asynchronously; pods need it."""
    wait_for(
        lambda: kubectl.get("serviceaccount", "default", namespace=namespace),
        timeout=timeout,
        what=f"ServiceAccount default in {namespace}",
        retry_on=(KubectlError,),
    )


def on_real_node(manifest: dict[str, Any], *, image: str | None = None) -> dict[str, Any]:
    """`manifest` (a Deployment or Job) with its pods pinned to the real node: its label as node selector, its
    taint tolerated, and every container's image (optionally replaced by `image`) used as imported, never pulled."""
    pod = manifest["spec"]["template"]["spec"]
    pod["nodeSelector"] = {REAL_NODE_LABEL: REAL_NODE_TAINT["value"]}
    pod["tolerations"] = [{**REAL_NODE_TAINT, "operator": "Equal"}]
    for container in pod["containers"]:
        if image is not None:
            container["image"] = image
        container["imagePullPolicy"] = "Never"
    return manifest


def service(name: str, *, port: int, target_port: int) -> dict[str, Any]:
    """A ClusterIP Service in front of the pods labelled `app: name`."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": port, "targetPort": target_port}]},
    }
