"""The operator as users run it: a pod of its Deployment, from its image, under its ServiceAccount.

Installed by `kubectl apply --server-side -k` of an overlay written to a work dir (`overlay`): the image built by
`imagebuild` and loaded into the cluster, one replica (pinned to the real node on the local stack), the image used
as imported (`imagePullPolicy: Never`), the namespaces it watches, extra environment, and a readiness probe every
second so a test or the demo sees it Ready at once. `ClusterOperator` waits for it, kills its container with
SIGKILL through the node's runtime (as a node failure would; the kubelet starts it again in the same pod), scrapes
its metrics through the API server's pod proxy and keeps the log of every container it killed.

The demo and the e2e tier use it; `make bench` keeps the operator as a host process (`world.OperatorProcess`) so it
can read its CPU time and peak memory from /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import yaml

from torghut_localstack import images
from torghut_localstack.kubectl import Kubectl, KubectlError
from torghut_localstack.realnode import REAL_NODE_LABEL, REAL_NODE_TAINT
from torghut_localstack.wait import WaitTimeout, wait_for

REPO: Final = Path(__file__).resolve().parents[2]
IMAGE_NAME: Final = "ghcr.io/proompteng/torghut-rollout-operator"
"""The image name manifests/base uses; an overlay's `images:` entry replaces it with the built one."""
METRICS_PORT: Final = 9090
REAL_NODE_POD: Final[Mapping[str, Any]] = {
    "nodeSelector": {REAL_NODE_LABEL: REAL_NODE_TAINT["value"]},
    "tolerations": [{**REAL_NODE_TAINT, "operator": "Equal"}],
}
"""Pod placement on the real node (the local stack's; kind's node carries the label and no taint)."""

KillContainer = Callable[[str, str], None]
"""`kill(node_name, container_id)`: SIGKILL the container's init process on that node."""


class ClusterOperatorError(RuntimeError):
    """The in-cluster operator did not become Ready, or could not be reached; the message shows its pod."""


def overlay(
    directory: Path,
    image: str,
    *,
    base: Path = REPO / "manifests" / "overlays" / "local",
    namespace: str | None = None,
    name_suffix: str | None = None,
    args: Sequence[str] = ("--log-format=full",),
    env: Mapping[str, str] | None = None,
    pin_to_real_node: bool = True,
) -> Path:
    """Write `directory/kustomization.yaml`: `base` with the built `image`, one replica, `args` and `env` for the
    operator's container; under `namespace` and with `name_suffix` when given (a second install beside another)."""
    name, _, tag = image.rpartition(":")
    container = "/spec/template/spec/containers/0"
    patch: list[dict[str, Any]] = [
        {"op": "replace", "path": "/spec/replicas", "value": 1},
        {"op": "replace", "path": f"{container}/imagePullPolicy", "value": "Never"},
        {"op": "replace", "path": f"{container}/args", "value": list(args)},
        {"op": "replace", "path": f"{container}/readinessProbe/initialDelaySeconds", "value": 1},
        {"op": "replace", "path": f"{container}/readinessProbe/periodSeconds", "value": 1},
    ]
    patch += [
        {"op": "add", "path": f"{container}/env/-", "value": {"name": k, "value": v}} for k, v in (env or {}).items()
    ]
    if pin_to_real_node:
        patch += [{"op": "add", "path": f"/spec/template/spec/{k}", "value": v} for k, v in REAL_NODE_POD.items()]
    kustomization: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(base, directory)],
    }
    if namespace is not None:
        kustomization["namespace"] = namespace
    if name_suffix is not None:
        kustomization["nameSuffix"] = name_suffix
    kustomization["images"] = [{"name": IMAGE_NAME, "newName": name, "newTag": tag}]
    kustomization["patches"] = [{"target": {"group": "apps", "kind": "Deployment"}, "patch": yaml.safe_dump(patch)}]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return directory


def containerd_pid(socket: Path, container_id: str) -> int:
    """The host PID of a container's init process, from a containerd's task list (namespace k8s.io)."""
    out = subprocess.run(
        [images.CTR, f"--address={socket}", "-n", images.K8S_NAMESPACE, "tasks", "ls"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    for line in out.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == container_id:
            return int(fields[1])
    raise ClusterOperatorError(f"container {container_id} is not among containerd's tasks:\n{out}")


def kill_on_host(socket: Path) -> KillContainer:
    """Kill a container of the local stack's real node: its containerd runs on this host, so does its process."""

    def kill(_node: str, container_id: str) -> None:
        os.kill(containerd_pid(socket, container_id), signal.SIGKILL)

    return kill


def pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


class ClusterOperator:
    """The operator's Deployment `deployment` in `namespace`, installed from `overlay_dir` (see `overlay`).

    `kill` SIGKILLs the container through `kill_container`; `start` waits until it is Ready again (after a kill:
    restarted); the logs of killed containers are saved in `log_dir` so `logs` returns every one of them."""

    def __init__(
        self,
        kubectl: Kubectl,
        *,
        namespace: str,
        deployment: str,
        overlay_dir: Path,
        log_dir: Path,
        kill_container: KillContainer | None = None,
        ready_timeout: float = 180.0,
    ) -> None:
        self._kubectl = kubectl
        self.namespace = namespace
        self.deployment = deployment
        self._overlay_dir = overlay_dir
        self.log_dir = log_dir
        self._kill_container = kill_container
        self._ready_timeout = ready_timeout
        self._kills = 0
        self._restarts_at_kill: int | None = None
        self._restarts_seen = 0
        self.unexpected_restarts: list[str] = []
        """One line per restart nobody asked for (the container's last state), its log saved as restarted-N.log."""

    @property
    def log_path(self) -> Path:
        """Where `save_logs` writes the logs of every container of the operator (killed ones first)."""
        return self.log_dir / "operator.log"

    def install(self) -> ClusterOperator:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._kubectl("apply", "--server-side", "--force-conflicts", "-k", str(self._overlay_dir), timeout=120)
        self.start()
        return self

    def _pods(self) -> list[dict[str, Any]]:
        found = self._kubectl.json("get", "pods", "-n", self.namespace, "-l", "app.kubernetes.io/component=operator")
        return [p for p in found["items"] if p.get("metadata", {}).get("deletionTimestamp") is None]

    def pod(self) -> dict[str, Any]:
        pods = self._pods()
        if len(pods) != 1:
            raise ClusterOperatorError(f"expected one operator pod, found {[p['metadata']['name'] for p in pods]}")
        return pods[0]

    @staticmethod
    def _container(pod: Mapping[str, Any]) -> dict[str, Any]:
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        return dict(statuses[0])

    def start(self) -> None:
        """Wait until the operator's pod is Ready (after `kill`: its container started again)."""
        after = self._restarts_at_kill

        def running() -> dict[str, Any] | None:
            pods = self._pods()
            if len(pods) != 1:
                return None
            restarts = int(self._container(pods[0]).get("restartCount", 0))
            if after is not None and restarts <= after:
                return None
            return pods[0] if pod_ready(pods[0]) else None

        try:
            pod = wait_for(running, timeout=self._ready_timeout, interval=0.2, what="the in-cluster operator Ready")
        except WaitTimeout as error:
            raise ClusterOperatorError(f"{error}\n{self.describe()}") from error
        status = self._container(pod)
        restarts = int(status.get("restartCount", 0))
        if after is not None:  # the killed container's whole log, before a later kill replaces it
            self._kills += 1
            previous = self._logs_of(pod["metadata"]["name"], previous=True)
            (self.log_dir / f"killed-{self._kills:03d}.log").write_text(previous)
            self._restarts_at_kill = None
        elif restarts > self._restarts_seen:  # restarted by the kubelet (liveness, OOM, a crash): say why
            last = (status.get("lastState") or {}).get("terminated") or {}
            line = f"restart {restarts}: {last.get('reason')} (exit {last.get('exitCode')}) at {last.get('finishedAt')}"
            self.unexpected_restarts.append(line)
            previous = self._logs_of(pod["metadata"]["name"], previous=True)
            (self.log_dir / f"restarted-{restarts:03d}.log").write_text(f"{line}\n{previous}")
        self._restarts_seen = restarts

    def kill(self) -> None:
        """SIGKILL the operator's process: no chance to clean up, as when a node dies. `start` waits for the
        kubelet to start it again."""
        if self._kill_container is None:
            raise ClusterOperatorError("this cluster gives no way to reach the operator's node to kill it")
        pod = self.pod()
        status = self._container(pod)
        container_id = str(status.get("containerID", "")).partition("://")[2]
        if not container_id or "running" not in status.get("state", {}):
            raise ClusterOperatorError(f"the operator's container is not running:\n{self.describe()}")
        self._restarts_at_kill = int(status.get("restartCount", 0))
        self._kill_container(str(pod["spec"]["nodeName"]), container_id)

    def stop(self) -> None:
        """Save the logs and scale the Deployment to 0."""
        self.save_logs()
        self._kubectl("scale", f"deployment/{self.deployment}", "-n", self.namespace, "--replicas=0")

    def scrape(self) -> str:
        """The operator's /metrics text, through the API server's pod proxy."""
        name = self.pod()["metadata"]["name"]
        return self._kubectl(
            "get", "--raw", f"/api/v1/namespaces/{self.namespace}/pods/{name}:{METRICS_PORT}/proxy/metrics"
        )

    def _logs_of(self, pod: str, *, previous: bool = False, tail: int | None = None, since: int | None = None) -> str:
        args = ["logs", pod, "-n", self.namespace, "-c", "operator"]
        if previous:
            args.append("--previous")
        if tail is not None:
            args.append(f"--tail={tail}")
        if since is not None:
            args.append(f"--since={since}s")
        try:
            return self._kubectl(*args)
        except KubectlError as error:
            return f"(no log: {error})"

    def tail(self, lines: int = 60) -> str:
        try:
            pods = self._pods()
        except KubectlError as error:
            return f"(no operator pod: {error})"
        return self._logs_of(pods[0]["metadata"]["name"], tail=lines) if pods else "(no operator pod)"

    def logs(self, *, since_seconds: int | None = None) -> str:
        """Every container's log: the killed ones' and the running one's (of its last `since_seconds` only)."""
        kept = [p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*-[0-9][0-9][0-9].log"))]
        try:
            pods = self._pods()
        except KubectlError:
            pods = []
        current = [self._logs_of(pods[0]["metadata"]["name"], since=since_seconds)] if pods else []
        return "\n".join([*kept, *current])

    def save_logs(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text(self.logs())

    def describe(self) -> str:
        try:
            pods = self._kubectl("get", "pods", "-n", self.namespace, "-o", "wide")
            events = self._kubectl("get", "events", "-n", self.namespace, "--sort-by=.lastTimestamp")
        except KubectlError as error:
            return f"(could not describe the operator: {error})"
        return f"{pods}\n{events[-3000:]}\n--- log ---\n{self.tail()}"
