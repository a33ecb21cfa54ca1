"""e2e harness: the CRD installed, the operator running as a process, and per test a Torghut world (a database
with Torghut's schema, a simulator serving its HTTP and metrics, Prometheus scraping it, a target Deployment and
the DSN Secret), all real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ClusterHandle
from torghut_localstack import torghut_db, workloads
from torghut_localstack.cluster import LocalCluster
from torghut_localstack.kubectl import Kubectl, KubectlError
from torghut_localstack.ports import free_port
from torghut_localstack.postgres import PostgresServer
from torghut_localstack.prometheus import PrometheusServer
from torghut_localstack.simulator import FollowTarget, TorghutSimulator
from torghut_localstack.wait import wait_for
from torghut_localstack.world import crd_established

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "torghutrollouts.yaml"
# Real, small images, so the same tests run on kind where containers really start.
OLD_IMAGE = workloads.PAUSE_IMAGE_PREVIOUS
NEW_IMAGE = workloads.PAUSE_IMAGE
APP_PASSWORD = "app-secret-pw"
SERVICE_ACCOUNT = "torghut-rollout-operator"
OPERATOR_NAMESPACE = "torghut-rollout-system"


class OperatorProcess:
    """The operator as a separate process, as it runs in a cluster; restartable and killable. It runs with the
    identity of the ServiceAccount from manifests/, so a permission missing from the RBAC fails a test."""

    def __init__(self, cluster: ClusterHandle, log_dir: Path, kubeconfig: Path) -> None:
        self._env = {
            **cluster.env,
            "KUBECONFIG": str(kubeconfig),
            "TORGHUT_OPERATOR_METRICS_PORT": "0",
            "TORGHUT_OPERATOR_ROUTE_INTERVAL": "2",
            "PYTHONUNBUFFERED": "1",
        }
        self._log_dir = log_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._starts = 0
        self.liveness_port = 0
        self.metrics_port = 0

    @property
    def log_path(self) -> Path:
        return self._log_dir / f"operator-{self._starts}.log"

    def start(self) -> None:
        self._starts += 1
        self.liveness_port = free_port()
        self.metrics_port = free_port()
        env = {**self._env, "TORGHUT_OPERATOR_METRICS_PORT": str(self.metrics_port)}
        cmd = [sys.executable, "-m", "torghut_operator", "run"]
        cmd += ["--liveness", f"http://127.0.0.1:{self.liveness_port}/healthz", "--verbose"]
        cmd += ["--namespace", "e2e-*"]  # the tests' namespaces; others (e.g. admission tests) stay untouched
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._healthy, timeout=60, interval=0.25, what=f"operator liveness on :{self.liveness_port}")

    def _healthy(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(f"operator exited {self._proc.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as when a node dies."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def scrape(self) -> str:
        """The operator's /metrics text."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self._log_dir.glob("operator-*.log")) if p.exists()
        )


@pytest.fixture(autouse=True)
def _cluster_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    """A component of the embedded cluster (etcd ... containerd, the kubelet) that died during a test fails the
    test with its exit and last log lines, instead of a timeout somewhere else."""
    yield
    if "cluster" in request.fixturenames:
        handle: ClusterHandle = request.getfixturevalue("cluster")
        if handle.local is not None:
            handle.local.check_alive()


@pytest.fixture
def local_cluster(cluster: ClusterHandle) -> LocalCluster:
    """The embedded control plane, for tests marked `local_only` (skipped as not applicable under kind)."""
    if cluster.local is None:
        raise RuntimeError(f"this test drives the embedded control plane, and E2E_CLUSTER={cluster.mode} has none")
    return cluster.local


@pytest.fixture(scope="session")
def crd(kubectl: Kubectl) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    # Polled: `kubectl wait` right after the apply can fail before the condition exists at all.
    wait_for(
        lambda: crd_established(kubectl.get("crd", "torghutrollouts.torghut.proompteng.ai")),
        timeout=60,
        what="the TorghutRollout CRD Established",
    )
    # Established is not served yet: discovery and the published OpenAPI schema follow a moment later, and until
    # then `kubectl explain torghutrollout.spec` fails with "couldn't find resource" (the README's install waits
    # for the same thing).
    wait_for(lambda: _explains(kubectl, "torghutrollout.spec"), timeout=60, what="kubectl explain torghutrollout")


def _explains(kubectl: Kubectl, field: str) -> bool:
    try:
        return "DESCRIPTION" in kubectl("explain", field)
    except KubectlError:
        return False


@pytest.fixture(scope="session")
def operator_kubeconfig(
    cluster: ClusterHandle, kubectl: Kubectl, crd: None, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A kubeconfig for the operator's ServiceAccount, installed from manifests/overlays/local (the same base
    and RBAC a real install uses)."""
    kubectl.apply(workloads.namespace("torghut"))  # the overlay's rollout namespace
    kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "manifests" / "overlays" / "local"))
    token = kubectl("create", "token", SERVICE_ACCOUNT, "-n", OPERATOR_NAMESPACE, "--duration=24h").strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    cluster_entry = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster_entry],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": cluster_entry["name"], "user": SERVICE_ACCOUNT}}],
        "current-context": "operator",
    }
    path = tmp_path_factory.mktemp("operator-identity") / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def grant_rollout_namespace(kubectl: Kubectl, namespace: str) -> None:
    """The Role a real install binds in each namespace where rollouts run (manifests/base/rollout-namespace)."""
    rendered = kubectl("kustomize", str(REPO / "manifests" / "base" / "rollout-namespace"))
    kubectl("apply", "-n", namespace, "-f", "-", stdin=rendered)


@pytest.fixture(scope="session")
def operator(
    cluster: ClusterHandle, crd: None, operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"), operator_kubeconfig)
    proc.start()
    yield proc
    proc.stop()


@dataclass
class World:
    """One test's Torghut: its namespace, database (in schema state ``schema_state``), simulator and helpers to
    drive rollouts."""

    namespace: str
    kubectl: Kubectl
    postgres: PostgresServer
    prometheus: PrometheusServer
    operator: OperatorProcess
    database: str
    dsn: str
    simulator: TorghutSimulator
    schema_state: torghut_db.SchemaState = "head"
    created: list[str] = field(default_factory=list)

    @property
    def engine_url(self) -> str:
        return self.postgres.url(self.database)

    def apply(self, *docs: dict[str, Any]) -> None:
        self.kubectl.apply(*docs, namespace=self.namespace)

    def rollout(self, name: str) -> dict[str, Any]:
        obj = self.kubectl.get("torghutrollout", name, namespace=self.namespace)
        assert obj is not None, f"TorghutRollout {name} not found"
        return obj

    def wait_phase(self, name: str, *phases: str, timeout: float = 120) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            obj = self.rollout(name)
            status = obj.get("status") or {}
            return obj if status.get("phase") in phases else None

        def last() -> str:
            status = self.rollout(name).get("status") or {}
            return f"phase={status.get('phase')} message={status.get('message')!r}"

        try:
            return wait_for(check, timeout=timeout, interval=0.5, what=f"{name} in {phases}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\nlast: {last()}\noperator log:\n{self.operator.tail()}") from exc

    def deployment_image(self, name: str = "torghut", container: str = "torghut") -> str:
        obj = self.kubectl.get("deployment", name, namespace=self.namespace)
        assert obj is not None
        found = [c for c in obj["spec"]["template"]["spec"]["containers"] if c["name"] == container]
        return str(found[0]["image"])

    def events(self, name: str) -> list[dict[str, Any]]:
        out = self.kubectl.json(
            "get", "events", "-n", self.namespace, "--field-selector", f"involvedObject.name={name}"
        )
        return list(out.get("items", []))


def target_deployment(image: str = OLD_IMAGE, *, name: str = "torghut") -> dict[str, Any]:
    deployment = workloads.deployment(name, image=image)
    deployment["spec"]["template"]["spec"]["containers"][0]["name"] = "torghut"
    deployment["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "TRADING_MODE", "value": "paper"}]
    return deployment


def rollout_manifest(name: str, world: World, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "target": {"kind": "Deployment", "name": "torghut", "container": "torghut", "image": NEW_IMAGE},
        "database": {"secretRef": {"name": "torghut-db-app", "key": "uri"}},
        "prometheus": {"url": world.prometheus.url},
        "verify": {"interval": "1s", "count": 2, "checks": []},
    }
    body.update(spec)
    return {
        "apiVersion": "torghut.proompteng.ai/v1alpha1",
        "kind": "TorghutRollout",
        "metadata": {"name": name, "namespace": world.namespace},
        "spec": body,
    }


@pytest.fixture
def schema_state() -> torghut_db.SchemaState:
    """The Torghut schema of the test's database: ``head`` (the newest); a test parametrizes ``schema_state``
    with ``checklist`` for the state before migration 0007."""
    return "head"


@pytest.fixture
def world(
    schema_state: torghut_db.SchemaState,
    namespace: str,
    kubectl: Kubectl,
    postgres: PostgresServer,
    prometheus: PrometheusServer,
    operator: OperatorProcess,
    cluster: ClusterHandle,
) -> Iterator[World]:
    grant_rollout_namespace(kubectl, namespace)
    database = namespace.replace("-", "_")[:60]
    postgres.create_database(database)
    engine = torghut_db.make_engine(postgres.dsn(database))
    try:
        torghut_db.create_schema(engine, state=schema_state)
    finally:
        engine.dispose()
    postgres.execute(f"ALTER ROLE {torghut_db.APP_ROLE} WITH LOGIN PASSWORD '{APP_PASSWORD}'")
    postgres.execute(f"ALTER DATABASE {database} OWNER TO {torghut_db.APP_ROLE}")
    postgres.execute(f"GRANT ALL ON SCHEMA public TO {torghut_db.APP_ROLE}", database)
    for table in ("executions", "trade_decisions", "alembic_version"):
        postgres.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {torghut_db.APP_ROLE}", database)
    app_dsn = postgres.dsn(database, user=torghut_db.APP_ROLE, password=APP_PASSWORD)
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "torghut-db-app", "namespace": namespace},
            "stringData": {"uri": app_dsn},
        },
        target_deployment(),
        namespace=namespace,
    )
    workloads.wait_for_rollout(kubectl, "torghut", namespace=namespace)
    simulator = TorghutSimulator(
        dsn=postgres.dsn(database),
        image=OLD_IMAGE,
        follow=FollowTarget.parse(f"{namespace}/torghut/torghut"),
        kubeconfig=str(cluster.kubeconfig),
        tick_seconds=0.5,
        expected_heads=torghut_db.heads_of(schema_state),
    ).start()
    prometheus.set_targets(namespace, [f"127.0.0.1:{simulator.port}"])
    prometheus.wait_for_targets(namespace, timeout=30)
    world = World(namespace, kubectl, postgres, prometheus, operator, database, app_dsn, simulator, schema_state)
    try:
        yield world
    finally:
        simulator.stop()
        prometheus.remove_targets(namespace)
        assert APP_PASSWORD not in operator.logs(), "the DSN password leaked into the operator log"


def as_yaml(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)[:4000]
