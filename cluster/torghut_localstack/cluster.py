"""A real Kubernetes control plane on 127.0.0.1, without Docker: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok (one simulated node; see `kwok` for what
simulated pods do and the labels that make them fail or never become Ready).

    bin_dir = ensure_binaries()
    with LocalCluster(bin_dir) as cluster:
        subprocess.run(["kubectl", "get", "nodes"], env=cluster.env(), timeout=30)

Each run has fresh certificates, free ports and its own work dir (logs: `<workdir>/logs`).
Components start in order, each with a readiness deadline; one that isn't ready in time fails
the start with its last log lines, and everything started so far is stopped.
"""

from __future__ import annotations

import os
import shutil
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

from torghut_localstack import kwok
from torghut_localstack.kubectl import Kubectl
from torghut_localstack.pki import Pki, kubeconfig, write_pki
from torghut_localstack.ports import HOST, free_port
from torghut_localstack.procs import ManagedProcess, ProcessRecord, start_process
from torghut_localstack.wait import WaitTimeout, wait_for
from torghut_localstack.workloads import condition

NODE_NAME = "kwok-node-0"
SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR = "10.244.0.1/16"
_HTTP_TIMEOUT_S = 5.0
_NODE_CAPACITY = {"cpu": "32", "memory": "256Gi", "pods": "1000"}


class ClusterError(RuntimeError):
    """The cluster could not start; the message names the component and has its last log lines."""


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
        component_timeout: float = 90.0,
        die_with_parent: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.bin_dir = bin_dir
        self.node_name = node_name
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

    def records(self) -> list[ProcessRecord]:
        return [ProcessRecord.of(process) for process in self.processes]

    def detach(self) -> list[ProcessRecord]:
        """Hand the running components over to the caller: `stop()` will no longer touch them."""
        records = self.records()
        self.processes = []
        self._owns_workdir = False
        return records

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
        errors: list[str] = []
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
        pki = write_pki(self.workdir / "pki")
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
    ) -> None:
        started = time.monotonic()
        process = start_process(
            name,
            argv,
            log_path=self.logs_dir / f"{name}.log",
            env=env,
            cwd=self.workdir,
            die_with_parent=self.die_with_parent,
        )
        self.processes.append(process)

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

    def _http_ok(self, url: str, expect: str = "ok") -> bool:
        assert self._http is not None
        response = self._http.get(url)
        return response.status_code == httpx.codes.OK and response.text.strip() == expect

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
        argv = [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://{HOST}:{self.ports['etcd_client']}",
            f"--bind-address={HOST}",
            f"--secure-port={port}",
            f"--advertise-address={HOST}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
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
            "--manage-all-nodes=true",
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
            process = next(p for p in self.processes if p.name == component)
            raise ClusterError(f"{error}\n--- last lines of {process.log_path} ---\n{process.tail()}") from error
