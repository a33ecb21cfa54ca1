"""A real Kubernetes control plane on 127.0.0.1, without Docker: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok (one simulated node; see `kwok` for what
simulated pods do and the labels that make them fail or never become Ready), and a real node
(`realnode`: containerd, kubelet, kube-proxy, CoreDNS) that runs real containers.

    bin_dir = ensure_binaries()
    with LocalCluster(bin_dir) as cluster:
        subprocess.run(["kubectl", "get", "nodes"], env=cluster.env(), timeout=30)

Each run has fresh certificates, free ports and its own work dir (logs: `<workdir>/logs`).
Components start in order, each with a readiness deadline; one that isn't ready in time fails
the start with its last log lines, and everything started so far is stopped.

The real node is tainted (`realnode.REAL_NODE_TAINT`): pods run there only when they tolerate the
taint (`workloads.on_real_node`); the others land on the kwok node as before. With the real node,
kube-apiserver listens on every address (pods reach it at the node IP through the `kubernetes`
Service) while the kubeconfig keeps using 127.0.0.1. `real_node=False` leaves it out, for a
second cluster on a host where one real node already runs (one per host).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

from torghut_localstack import images, kwok, realnode
from torghut_localstack.kubectl import Kubectl
from torghut_localstack.pki import Pki, client_kubeconfig, issue, kubeconfig, write_pki
from torghut_localstack.ports import HOST, free_port
from torghut_localstack.procs import ManagedProcess, ProcessRecord, start_process
from torghut_localstack.realnode import NodeLayout, RealNodeError
from torghut_localstack.wait import WaitTimeout, wait_for
from torghut_localstack.workloads import condition

NODE_NAME = "kwok-node-0"
REAL_NODE_NAME = realnode.NODE_NAME
REAL_NODE_COMPONENTS = ("containerd", "kubelet", "kube-proxy", "coredns")
SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR = "10.244.0.1/16"
_HTTP_TIMEOUT_S = 5.0
_NODE_CAPACITY = {"cpu": "32", "memory": "256Gi", "pods": "1000"}


class ClusterError(RuntimeError):
    """The cluster could not start; the message names the component and has its last log lines."""


class ComponentDied(ClusterError):
    """A component of a running cluster exited; the message has its exit and last log lines."""


class _ProcessExited(Exception):
    """Readiness can't come any more: the process is gone (never retried)."""


def _node_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "node-role.kubernetes.io/agent": "",
            },
        },
        "status": {"capacity": _NODE_CAPACITY, "allocatable": _NODE_CAPACITY},
    }


class LocalCluster:
    """The control plane. `kubeconfig` (admin, certificates embedded) is valid after `start()`.

    `workdir`: None → a temp dir deleted on `stop()`; a given dir is kept (its owner cleans up).
    `die_with_parent`: components get SIGTERM if this Python process dies; `torghut-localstack
    up` turns it off and calls `detach()` so the cluster outlives the command.
    """

    def __init__(
        self,
        bin_dir: Path,
        workdir: Path | None = None,
        *,
        node_name: str = NODE_NAME,
        real_node: bool = True,
        component_timeout: float = 90.0,
        die_with_parent: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.bin_dir = bin_dir
        self.node_name = node_name
        self.real_node = real_node
        self.node_ip: str | None = None
        self.node_processes: list[ManagedProcess] = []
        self.images: dict[str, images.Image] = {}
        """The images imported into the real node, by short name (`pause`, `busybox`)."""
        self._node_claimed = False
        self._imported: list[Path] = []
        self._tags: dict[str, str] = {}
        self._pki: Pki | None = None
        self.component_timeout = component_timeout
        self.die_with_parent = die_with_parent
        self._log = log or (lambda _message: None)
        self._workdir = workdir
        self._owns_workdir = workdir is None
        self.processes: list[ManagedProcess] = []
        self.timings: dict[str, float] = {}
        self.ports: dict[str, int] = {}
        self._http: httpx.Client | None = None

    # -- public helpers ----------------------------------------------------------------------
    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise ClusterError("the cluster has no work dir until start()")
        return self._workdir

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{HOST}:{self.ports['apiserver']}"

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "logs"

    def env(self) -> dict[str, str]:
        """os.environ with KUBECONFIG pointing at this cluster, for subprocesses."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(self) -> Kubectl:
        return Kubectl(self.bin_dir / "kubectl", self.kubeconfig)

    @property
    def node_layout(self) -> NodeLayout:
        return NodeLayout(self.workdir.resolve() / "node")

    def records(self) -> list[ProcessRecord]:
        return [ProcessRecord.of(process) for process in [*self.processes, *self.node_processes]]

    def detach(self) -> list[ProcessRecord]:
        """Hand the running components over to the caller: `stop()` will no longer touch them (the caller
        stops the records, then runs `realnode.teardown` on `node_layout` if `real_node`)."""
        records = self.records()
        self.processes = []
        self.node_processes = []
        self._node_claimed = False
        self._owns_workdir = False
        return records

    def import_image(self, archive: Path) -> str:
        """Import a docker archive into the real node's containerd (pods then use imagePullPolicy Never). The
        node remembers it: a restarted node (`start_node`) imports it again, so its pods start again."""
        if not self.node_processes:
            raise ClusterError("this cluster has no real node to import images into")
        out = images.import_archive(self.node_layout.containerd_socket, archive)
        if archive not in self._imported:
            self._imported.append(archive)
        return out

    def tag_image(self, source: str, tag: str) -> None:
        """Give an image of the real node's containerd another name (`ctr images tag --force`), e.g. the node's
        own pause image as `registry.k8s.io/pause:3.9`; kept across a node restart like `import_image`."""
        if not self.node_processes:
            raise ClusterError("this cluster has no real node to tag images in")
        images.tag(self.node_layout.containerd_socket, source, tag)
        self._tags[tag] = source

    def check_alive(self) -> None:
        """Raise ComponentDied naming every component that exited, with its last log lines."""
        dead = [p for p in [*self.processes, *self.node_processes] if not p.running()]
        if dead:
            raise ComponentDied(
                "\n".join(f"{p.describe_exit()}\n--- last lines of {p.log_path} ---\n{p.tail(25)}" for p in dead)
            )

    def restart_component(self, name: str) -> None:
        """Start an exited (or stopped) component again with the same command line, and wait until it is ready
        (for the kubelet: the node Ready again). For fault tests."""
        group = self.node_processes if name in REAL_NODE_COMPONENTS else self.processes
        index, process = next((i, p) for i, p in enumerate(group) if p.name == name)
        process.stop()
        fresh = group[index] = process.respawn()

        def ready() -> bool:
            if name == "kubelet":
                healthz = f"http://{HOST}:{self.ports['kubelet_healthz']}/healthz"
                return self._http_ok(healthz) and self._real_node_ready() is not None
            if name == "containerd":
                return self._containerd_answers()
            if name == "kube-proxy":
                return self._http_status(f"http://{HOST}:{self.ports['kube_proxy_healthz']}/healthz")
            return True

        def check() -> bool:
            if not fresh.running():
                raise _ProcessExited(fresh.describe_exit())
            return bool(ready())

        try:
            wait_for(
                check, timeout=self.component_timeout, what=f"{name} ready again", retry_on=(httpx.HTTPError, OSError)
            )
        except (WaitTimeout, _ProcessExited) as error:
            raise ClusterError(f"{name} not ready again: {error}\n--- last lines ---\n{fresh.tail()}") from error

    def restart_apiserver(self) -> float:
        """Stop kube-apiserver and start it again (same flags, port and etcd data); returns the seconds it was
        unavailable. For fault tests: every client's watch and request breaks meanwhile."""
        index, process = next((i, p) for i, p in enumerate(self.processes) if p.name == "kube-apiserver")
        started = time.monotonic()
        process.stop()
        fresh = self.processes[index] = process.respawn()

        def ready() -> bool:
            if not fresh.running():
                raise _ProcessExited(fresh.describe_exit())
            return self._http_ok(f"{self.server}/readyz")

        wait_for(ready, timeout=self.component_timeout, what="kube-apiserver /readyz", retry_on=(httpx.HTTPError,))
        return time.monotonic() - started

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> LocalCluster:
        if self.processes:
            raise ClusterError("already started")
        started = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop every component this object started (newest first). Safe to call twice."""
        errors = self._stop_node()
        for process in reversed(self.processes):
            try:
                process.stop()
            except (OSError, subprocess.TimeoutExpired) as error:  # stop the others, report at the end
                errors.append(f"{process.name}: {error}")
        self.processes = []
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._owns_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        if errors:
            raise ClusterError("could not stop: " + "; ".join(errors))

    def stop_node(self) -> None:
        """Stop the real node alone and remove everything it left on the host (the control plane keeps running)."""
        errors = self._stop_node()
        if errors:
            raise ClusterError("could not stop the real node: " + "; ".join(errors))

    def start_node(self) -> None:
        """Start the real node again after `stop_node` (same name: the Node object is reused)."""
        if self.node_processes:
            raise ClusterError("the real node already runs")
        assert self._pki is not None
        try:
            self._step("real node", lambda: self._start_real_node(self._pki_or_fail()))
        except BaseException:
            self._stop_node()
            raise

    def _pki_or_fail(self) -> Pki:
        if self._pki is None:
            raise ClusterError("the cluster is not started")
        return self._pki

    def _stop_node(self) -> list[str]:
        errors: list[str] = []
        for process in reversed(self.node_processes):
            try:
                process.stop()
            except (OSError, subprocess.TimeoutExpired) as error:
                errors.append(f"{process.name}: {error}")
        self.node_processes = []
        if self._node_claimed:
            try:
                realnode.teardown(self.node_layout)
            except (RealNodeError, OSError) as error:
                errors.append(str(error))
            self._node_claimed = False
        return errors

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- start sequence ----------------------------------------------------------------------
    def _start(self) -> None:
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="torghut-cluster-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.real_node:
            problems = realnode.preflight()
            if problems:
                raise ClusterError(
                    "cannot start the real node: " + "; ".join(problems) + " (or start without it: real_node=False, "
                    "`torghut-localstack up --no-real-node`, `demo --no-real-node`)"
                )
            try:
                self.node_ip = realnode.node_ip()
                realnode.claim_host(self.node_layout)  # fails fast when another real node runs here
            except RealNodeError as error:
                raise ClusterError(str(error)) from error
            self._node_claimed = True
        pki = self._pki = write_pki(self.workdir / "pki", extra_ips=(self.node_ip,) if self.node_ip else ())
        issue(pki, *self._kubelet_client_pair, common_name=realnode.KUBELET_API_CLIENT)
        for name in ("etcd_client", "etcd_peer", "apiserver", "controller_manager", "scheduler", "kwok"):
            self.ports[name] = free_port()
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig(self.server, pki), sort_keys=False))
        self.kubeconfig.chmod(0o600)
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        self._http = httpx.Client(verify=context, timeout=_HTTP_TIMEOUT_S)

        self._start_etcd()
        self._start_apiserver(pki)
        self._start_controller_manager(pki)
        self._start_scheduler(pki)
        self._start_kwok()
        self._step("node Ready", self._create_node_and_wait)
        self._step("default ServiceAccount", self._wait_for_default_service_account)
        if self.real_node:
            self._step("real node", lambda: self._start_real_node(pki))

    @property
    def _kubelet_client_pair(self) -> tuple[Path, Path]:
        return (
            self.workdir / "pki" / "apiserver-kubelet-client.crt",
            self.workdir / "pki" / "apiserver-kubelet-client.key",
        )

    def _step(self, what: str, action: Callable[[], None]) -> None:
        started = time.monotonic()
        action()
        self.timings[what] = time.monotonic() - started
        self._log(f"{what} in {self.timings[what]:.1f}s")

    def _launch(
        self,
        name: str,
        argv: Sequence[str],
        ready: Callable[[], bool],
        what: str,
        env: Mapping[str, str] | None = None,
        *,
        group: list[ManagedProcess] | None = None,
    ) -> ManagedProcess:
        started = time.monotonic()
        process = start_process(
            name,
            argv,
            log_path=self.logs_dir / f"{name}.log",
            env=env,
            cwd=self.workdir,
            die_with_parent=self.die_with_parent,
        )
        (self.processes if group is None else group).append(process)

        def check() -> bool:
            if not process.running():
                raise _ProcessExited(process.describe_exit())
            return ready()

        try:
            wait_for(
                check,
                timeout=self.component_timeout,
                what=f"{name}: {what}",
                retry_on=(httpx.HTTPError, ValueError, KeyError),
            )
        except (WaitTimeout, _ProcessExited) as error:
            raise ClusterError(
                f"{name} not ready: {error}\n--- last lines of {process.log_path} ---\n{process.tail()}"
            ) from error
        self.timings[name] = time.monotonic() - started
        self._log(f"{name} ready in {self.timings[name]:.1f}s (pid {process.pid})")
        return process

    def _http_ok(self, url: str, expect: str = "ok") -> bool:
        assert self._http is not None
        response = self._http.get(url)
        return response.status_code == httpx.codes.OK and response.text.strip() == expect

    def _http_status(self, url: str) -> bool:
        assert self._http is not None
        return self._http.get(url).status_code == httpx.codes.OK

    def _start_etcd(self) -> None:
        client = f"http://{HOST}:{self.ports['etcd_client']}"
        peer = f"http://{HOST}:{self.ports['etcd_peer']}"
        argv = [
            str(self.bin_dir / "etcd"),
            "--name=default",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]

        def ready() -> bool:
            assert self._http is not None
            return bool(self._http.get(f"{client}/health").json().get("health") == "true")

        self._launch("etcd", argv, ready, f"{client}/health")

    def _start_apiserver(self, pki: Pki) -> None:
        port = self.ports["apiserver"]
        kubelet_cert, kubelet_key = self._kubelet_client_pair
        # With a real node, pods reach the API server at the node IP (the `kubernetes` Service's endpoint).
        bind, advertise = ("0.0.0.0", self.node_ip) if self.node_ip else (HOST, HOST)  # noqa: S104
        argv = [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://{HOST}:{self.ports['etcd_client']}",
            f"--bind-address={bind}",
            f"--secure-port={port}",
            f"--advertise-address={advertise}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            f"--kubelet-client-certificate={kubelet_cert}",
            f"--kubelet-client-key={kubelet_key}",
            f"--kubelet-certificate-authority={pki.ca_cert}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
        ]
        self._launch("kube-apiserver", argv, lambda: self._http_ok(f"{self.server}/readyz"), "/readyz")

    def _component_flags(self, port: int, pki: Pki) -> list[str]:
        return [
            f"--kubeconfig={self.kubeconfig}",
            f"--bind-address={HOST}",
            f"--secure-port={port}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
            "--leader-elect=false",
        ]

    def _start_controller_manager(self, pki: Pki) -> None:
        port = self.ports["controller_manager"]
        argv = [
            str(self.bin_dir / "kube-controller-manager"),
            *self._component_flags(port, pki),
            f"--root-ca-file={pki.ca_cert}",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
        ]
        url = f"https://{HOST}:{port}/healthz"
        self._launch("kube-controller-manager", argv, lambda: self._http_ok(url), url)

    def _start_scheduler(self, pki: Pki) -> None:
        port = self.ports["scheduler"]
        argv = [str(self.bin_dir / "kube-scheduler"), *self._component_flags(port, pki)]
        url = f"https://{HOST}:{port}/healthz"
        self._launch("kube-scheduler", argv, lambda: self._http_ok(url), url)

    def _start_kwok(self) -> None:
        stages = self.workdir / "kwok-stages.yaml"
        stages.write_text(kwok.stages_yaml())
        home = self.workdir / "kwok-home"  # keeps a developer's ~/.kwok/kwok.yaml out of the run
        home.mkdir(exist_ok=True)
        address = f"{HOST}:{self.ports['kwok']}"
        argv = [
            str(self.bin_dir / "kwok"),
            f"--kubeconfig={self.kubeconfig}",
            # Only the simulated nodes: the real node's kubelet reports its own status.
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-lease-duration-seconds=40",
            f"--server-address={address}",
            f"--cidr={POD_CIDR}",
            f"--config={stages}",
        ]
        url = f"http://{address}/healthz"
        assert self._http is not None
        http = self._http
        self._launch(
            "kwok",
            argv,
            lambda: http.get(url).status_code == httpx.codes.OK,
            url,
            env={**os.environ, "HOME": str(home)},
        )

    def _api(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> httpx.Response:
        assert self._http is not None
        return self._http.request(method, f"{self.server}{path}", json=body)

    def _create_node_and_wait(self) -> None:
        response = self._api("POST", "/api/v1/nodes", _node_manifest(self.node_name))
        if response.status_code not in (httpx.codes.CREATED, httpx.codes.CONFLICT):
            raise ClusterError(f"creating node {self.node_name}: {response.status_code} {response.text}")

        def ready() -> Mapping[str, Any] | None:
            ready_condition = condition(self._api("GET", f"/api/v1/nodes/{self.node_name}").json(), "Ready")
            return ready_condition if ready_condition and ready_condition.get("status") == "True" else None

        self._wait_with_logs(ready, f"node {self.node_name} to be Ready", "kwok")

    def _wait_for_default_service_account(self) -> None:
        def exists() -> bool:
            path = "/api/v1/namespaces/default/serviceaccounts/default"
            return self._api("GET", path).status_code == httpx.codes.OK

        self._wait_with_logs(exists, "ServiceAccount default/default", "kube-controller-manager")

    def _wait_with_logs(self, fn: Callable[[], object], what: str, component: str) -> None:
        try:
            wait_for(fn, timeout=self.component_timeout, what=what, retry_on=(httpx.HTTPError, ValueError))
        except WaitTimeout as error:
            process = next(p for p in [*self.processes, *self.node_processes] if p.name == component)
            raise ClusterError(f"{error}\n--- last lines of {process.log_path} ---\n{process.tail()}") from error

    # -- the real node ---------------------------------------------------------------------------
    def _apply(self, obj: Mapping[str, Any]) -> None:
        """Server-side apply of one object (created, or updated to this content: a restarted node moves CoreDNS)."""
        kind, meta = obj["kind"], obj["metadata"]
        collection = {
            "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            "Service": f"/api/v1/namespaces/{meta.get('namespace')}/services",
            "EndpointSlice": f"/apis/discovery.k8s.io/v1/namespaces/{meta.get('namespace')}/endpointslices",
        }[kind]
        assert self._http is not None
        response = self._http.patch(
            f"{self.server}{collection}/{meta['name']}",
            params={"fieldManager": "torghut-localstack", "force": "true"},
            headers={"Content-Type": "application/apply-patch+yaml"},
            content=json.dumps(obj),
        )
        if response.status_code not in (httpx.codes.OK, httpx.codes.CREATED):
            raise ClusterError(f"applying {kind} {meta['name']}: {response.status_code} {response.text}")

    def _containerd_answers(self) -> bool:
        with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as probe:
            try:
                probe.connect(str(self.node_layout.containerd_socket))
            except OSError:
                return False
        return True

    def _real_node_ready(self) -> Mapping[str, Any] | None:
        response = self._api("GET", f"/api/v1/nodes/{REAL_NODE_NAME}")
        if response.status_code != httpx.codes.OK:  # not registered yet
            return None
        ready_condition = condition(response.json(), "Ready")
        return ready_condition if ready_condition and ready_condition.get("status") == "True" else None

    def _node_kubeconfig(self, name: str, user: str, organization: str | None = None) -> Path:
        layout = self.node_layout
        cert, key = layout.pki / f"{name}.crt", layout.pki / f"{name}.key"
        issue(self._pki_or_fail(), cert, key, common_name=user, organization=organization)
        path = layout.config(f"{name}.kubeconfig")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            yaml.safe_dump(client_kubeconfig(self.server, self._pki_or_fail().ca_cert, cert, key, user=user))
        )
        path.chmod(0o600)
        return path

    def _start_real_node(self, pki: Pki) -> None:
        if not self._node_claimed:
            try:
                realnode.claim_host(self.node_layout)
            except RealNodeError as error:
                raise ClusterError(str(error)) from error
            self._node_claimed = True
        layout, ip = self.node_layout, self.node_ip
        assert ip is not None
        for directory in (layout.containerd_root, layout.containerd_state, layout.cni_conf_dir, layout.pod_logs):
            directory.mkdir(parents=True, exist_ok=True)
        for name in ("kubelet", "kubelet_healthz", "kube_proxy_healthz", "kube_proxy_metrics"):
            self.ports[name] = free_port()
        issue(pki, layout.pki / "kubelet-serving.crt", layout.pki / "kubelet-serving.key",
              common_name=f"system:node:{REAL_NODE_NAME}", organization="system:nodes", server=True,
              dns_names=(REAL_NODE_NAME,), ips=(ip,))  # fmt: skip
        kubelet_kubeconfig = self._node_kubeconfig("kubelet", f"system:node:{REAL_NODE_NAME}", "system:nodes")
        proxy_kubeconfig = self._node_kubeconfig("kube-proxy", realnode.KUBE_PROXY_USER)
        for obj in (realnode.kubelet_api_binding(), *realnode.coredns_rbac()):
            self._apply(obj)

        def build_images() -> None:
            self.images["pause"] = images.pause_image(self.bin_dir / "pause")
            self.images["busybox"] = images.busybox_image()

        self._step("node images built (or cached)", build_images)
        layout.containerd_config.write_text(realnode.containerd_config(layout, self.images["pause"].reference))
        (layout.cni_conf_dir / "10-torghut.conflist").write_text(json.dumps(realnode.cni_conflist(layout), indent=2))
        containerd = self._launch(
            "containerd",
            ["containerd", f"--config={layout.containerd_config}", "--log-level=warn"],
            self._containerd_answers,
            str(layout.containerd_socket),
            group=self.node_processes,
        )
        realnode.record_containerd(layout, ProcessRecord.of(containerd))

        def import_images() -> None:
            for image in self.images.values():
                images.import_archive(layout.containerd_socket, image.archive)
            for archive in self._imported:  # what earlier users of this node imported and tagged
                images.import_archive(layout.containerd_socket, archive)
            for tag, source in self._tags.items():
                images.tag(layout.containerd_socket, source, tag)

        self._step("node images imported", import_images)

        dns = (self.bin_dir / "coredns").is_file()
        config = layout.config("kubelet.yaml")
        config.write_text(yaml.safe_dump(realnode.kubelet_config(
            layout, ip=ip, port=self.ports["kubelet"], healthz_port=self.ports["kubelet_healthz"],
            ca_cert=pki.ca_cert, dns=dns,
        )))  # fmt: skip
        kubelet_argv = [
            str(self.bin_dir / "kubelet"),
            f"--config={config}",
            f"--kubeconfig={kubelet_kubeconfig}",
            f"--root-dir={layout.kubelet_root}",
            f"--cert-dir={layout.pki}",
            f"--hostname-override={REAL_NODE_NAME}",
            f"--node-ip={ip}",
            f"--node-labels={realnode.REAL_NODE_LABEL}=real",
        ]
        healthz = f"http://{HOST}:{self.ports['kubelet_healthz']}/healthz"
        self._launch("kubelet", kubelet_argv, lambda: self._http_ok(healthz), healthz, group=self.node_processes)
        self._step(
            "real node Ready",
            lambda: self._wait_with_logs(self._real_node_ready, f"node {REAL_NODE_NAME} Ready", "kubelet"),
        )

        proxy_config = layout.config("kube-proxy.yaml")
        proxy_config.write_text(yaml.safe_dump(realnode.kube_proxy_config(
            kubeconfig=proxy_kubeconfig, hostname=REAL_NODE_NAME,
            healthz_port=self.ports["kube_proxy_healthz"], metrics_port=self.ports["kube_proxy_metrics"],
        )))  # fmt: skip
        proxy_healthz = f"http://{HOST}:{self.ports['kube_proxy_healthz']}/healthz"
        self._launch(
            "kube-proxy",
            [str(self.bin_dir / "kube-proxy"), f"--config={proxy_config}"],
            lambda: self._http_status(proxy_healthz),
            proxy_healthz,
            group=self.node_processes,
        )
        if dns:
            self._start_coredns(ip)

    def _start_coredns(self, ip: str) -> None:
        layout = self.node_layout
        for name in ("coredns", "coredns_health", "coredns_ready"):
            self.ports[name] = free_port()
        corefile = layout.config("Corefile")
        corefile.write_text(realnode.corefile(
            ip=ip, port=self.ports["coredns"], health_port=self.ports["coredns_health"],
            ready_port=self.ports["coredns_ready"], kubeconfig=self._node_kubeconfig("coredns", realnode.COREDNS_USER),
        ))  # fmt: skip
        ready = f"http://{HOST}:{self.ports['coredns_ready']}/ready"
        self._launch(
            "coredns",
            [str(self.bin_dir / "coredns"), "-conf", str(corefile)],
            lambda: self._http_status(ready),
            ready,
            group=self.node_processes,
        )
        for obj in realnode.dns_service(ip, self.ports["coredns"]):
            self._apply(obj)
