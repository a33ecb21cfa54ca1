"""The rollout on real containers: the operator installed in the cluster from its image (`kubectl apply -k` of an
overlay on manifests/overlays/local), the simulator as a Deployment behind a real readiness probe and a Service,
the migration Job running the Torghut-shaped Alembic chain in the simulator's image against the real Postgres,
and the operator's container killed with SIGKILL mid-verify (the kubelet restarts it; the rollout still succeeds).

Postgres and Prometheus listen on the real node's IP here, the address pods reach the host on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ClusterHandle
from tests.e2e.conftest import (
    APP_PASSWORD,
    OPERATOR_NAMESPACE,
    REPO,
    container_pid,
    grant_rollout_namespace,
    pod_ready,
)
from torghut_localstack import imagebuild, incluster, torghut_db, workloads
from torghut_localstack.cluster import LocalCluster
from torghut_localstack.kubectl import Kubectl, KubectlError
from torghut_localstack.postgres import PostgresServer
from torghut_localstack.prometheus import PrometheusServer
from torghut_localstack.realnode import REAL_NODE_LABEL, REAL_NODE_TAINT
from torghut_localstack.wait import wait_for
from torghut_localstack.world import SIM_PORT, follower_rbac, simulator_target

pytestmark = pytest.mark.e2e

# Outside the host operator's `e2e-*` namespaces: only the in-cluster operator drives these rollouts.
NAMESPACE_PREFIX = "incluster"
POD_NETWORK = "10.245.0.0/16"
BEFORE_ROUTE_GRANT = "0026_strategy_factory_research_objects"
ALEMBIC_INI = REPO / "cluster" / "torghut_localstack" / "torghut_migrations" / "alembic.ini"
MIGRATE_COMMAND = ["alembic", "-c", "/app/alembic.ini", "upgrade", "heads"]
NODE_SELECTOR = {REAL_NODE_LABEL: REAL_NODE_TAINT["value"]}
TOLERATIONS = [{**REAL_NODE_TAINT, "operator": "Equal"}]

TIMES: dict[str, float] = {}


def _timed(name: str, start: float) -> None:
    TIMES[name] = round(time.monotonic() - start, 1)
    print(f"in-cluster timing: {name} {TIMES[name]} s", file=sys.stderr)


@dataclass(frozen=True)
class Images:
    operator: str
    simulator: str
    simulator_next: str


@pytest.fixture(scope="module")
def local(cluster: ClusterHandle) -> LocalCluster:
    if cluster.local is None or cluster.local.node_ip is None:
        raise RuntimeError(f"the in-cluster rollout needs the local stack's real node (E2E_CLUSTER={cluster.mode})")
    return cluster.local


@pytest.fixture(scope="module")
def built(local: LocalCluster) -> Images:
    """Both images built (or found in the cache) and imported; the simulator's also under a second tag, the
    rollout's "new" image."""
    operator = imagebuild.build_image(imagebuild.OPERATOR)
    simulator = imagebuild.build_image(imagebuild.SIMULATOR)
    start = time.monotonic()
    local.import_image(operator.docker_archive)
    local.import_image(simulator.docker_archive)
    _timed("image import (operator + simulator)", start)
    following = f"{simulator.ref}-next"
    local.tag_image(simulator.ref, following)
    return Images(operator.ref, simulator.ref, following)


@pytest.fixture(scope="module")
def pg(local: LocalCluster) -> Iterator[PostgresServer]:
    assert local.node_ip is not None
    with PostgresServer(extra_listen=[local.node_ip], client_networks=[POD_NETWORK, f"{local.node_ip}/32"]) as s:
        yield s


@pytest.fixture(scope="module")
def prom(local: LocalCluster) -> Iterator[PrometheusServer]:
    assert local.node_ip is not None
    with PrometheusServer(host=local.node_ip) as server:
        yield server


def overlay(directory: Path, image: str, namespace: str) -> Path:
    """A kustomization on manifests/overlays/local: the built image, one replica pinned to the real node, used as
    imported, watching only `namespace`."""
    return incluster.overlay(directory, image, args=["--log-format=json", "--verbose", f"--namespace={namespace}"])


@pytest.fixture
def installed_operator(kubectl: Kubectl) -> Iterator[None]:
    """After the test, the operator Deployment goes back to manifests/overlays/local's zero replicas, so the host
    operator of the rest of the session stays the only one."""
    yield
    kubectl("scale", "deployment/torghut-rollout-operator", "-n", OPERATOR_NAMESPACE, "--replicas=0")


def prepare_database(pg: PostgresServer, database: str) -> str:
    """A database owned by torghut_app at 0026 (the chain itself, as the app role), and the app DSN pods use."""
    pg.create_role(torghut_db.APP_ROLE, password=APP_PASSWORD)  # the module's own server: a new role
    pg.create_database(database, owner=torghut_db.APP_ROLE)
    local_dsn = pg.dsn(database, user=torghut_db.APP_ROLE, password=APP_PASSWORD)
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ALEMBIC_INI), "upgrade", BEFORE_ROUTE_GRANT],
        env={**os.environ, "DB_DSN": local_dsn},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return local_dsn


def operator_pod(kubectl: Kubectl) -> dict[str, Any]:
    pods = kubectl.json("get", "pods", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/component=operator")["items"]
    running = [p for p in pods if p.get("metadata", {}).get("deletionTimestamp") is None]
    assert len(running) == 1, [p["metadata"]["name"] for p in pods]
    return dict(running[0])


def ready_operator(kubectl: Kubectl) -> dict[str, Any] | None:
    pod = operator_pod(kubectl)
    return pod if pod_ready(pod) else None


def test_a_rollout_on_real_containers_survives_its_operator_killed_mid_verify(
    local: LocalCluster,
    built: Images,
    pg: PostgresServer,
    prom: PrometheusServer,
    kubectl: Kubectl,
    namespace: str,
    tmp_path: Path,
    installed_operator: None,
) -> None:
    node_ip = local.node_ip
    assert node_ip is not None
    database = namespace.replace("-", "_")[:60]
    local_dsn = prepare_database(pg, database)
    pod_dsn = local_dsn.replace(f"@{pg.host}:", f"@{node_ip}:", 1)
    grant_rollout_namespace(kubectl, namespace)
    kubectl.apply(workloads.namespace("torghut"))  # the overlay's rollout namespace
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "torghut-db-app"},
        "stringData": {"uri": pod_dsn},
    }
    service = workloads.service("torghut", port=SIM_PORT, target_port=SIM_PORT)
    kubectl.apply(secret, *follower_rbac(namespace), service, namespace=namespace)

    # The simulator on the real node, Ready through its /healthz.
    start = time.monotonic()
    kubectl.apply(simulator_target(built.simulator, namespace), namespace=namespace)
    workloads.wait_for_rollout(kubectl, "torghut", namespace=namespace, timeout=120)
    _timed("simulator Deployment Available", start)
    # Prometheus (a host process) scrapes the Service's ClusterIP: kube-proxy's rules cover the host's own
    # traffic too, and the address stays when the rollout replaces the pod.
    cluster_ip = kubectl.json("get", "service", "torghut", "-n", namespace)["spec"]["clusterIP"]
    prom.set_targets(namespace, [f"{cluster_ip}:{SIM_PORT}"])
    prom.wait_for_targets(namespace, timeout=60)

    # The operator in the cluster, from its image, under its ServiceAccount.
    start = time.monotonic()
    kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-k",
        str(overlay(tmp_path / "overlay", built.operator, namespace)),
    )
    first = wait_for(
        lambda: ready_operator(kubectl),
        timeout=180,
        interval=0.5,
        what="the in-cluster operator Ready",
    )
    _timed("operator Ready after apply -k", start)
    assert first["spec"]["nodeName"], "scheduled"
    assert first["spec"]["serviceAccountName"] == "torghut-rollout-operator"
    assert first["spec"]["containers"][0]["image"] == built.operator

    sim_url = f"http://torghut.{namespace}.svc.cluster.local:{SIM_PORT}"
    checks = [
        {"name": "both-heads", "postgres": {"query": "SELECT COUNT(*) AS value FROM alembic_version"}, "min": 2},
        {
            "name": "sim-metrics",
            "prometheus": {"query": f'sum(up{{job="{namespace}"}})'},
            "successCondition": "result >= 1",
        },
        {
            "name": "sim-healthz",
            "http": {"url": f"{sim_url}/healthz", "jsonPath": "$.status"},
            "successCondition": 'result == "ok"',
        },
    ]
    rollout = {
        "apiVersion": "torghut.proompteng.ai/v1alpha1",
        "kind": "TorghutRollout",
        "metadata": {"name": "real", "namespace": namespace},
        "spec": {
            "target": {"kind": "Deployment", "name": "torghut", "container": "torghut", "image": built.simulator_next},
            "database": {"secretRef": {"name": "torghut-db-app", "key": "uri"}},
            "prometheus": {"url": f"http://{node_ip}:{prom.port}"},
            "migrate": {
                "job": {
                    "image": built.simulator,
                    "command": MIGRATE_COMMAND,
                    "backoffLimit": 0,
                    "nodeSelector": NODE_SELECTOR,
                    "tolerations": TOLERATIONS,
                }
            },
            "verify": {"interval": "2s", "count": 10, "checks": checks},
        },
    }
    start = time.monotonic()
    kubectl.apply(rollout, namespace=namespace)

    def phase() -> str | None:
        obj = kubectl.get("torghutrollout", "real", namespace=namespace) or {}
        return (obj.get("status") or {}).get("phase")

    def logs() -> str:
        try:
            return kubectl("logs", "-n", OPERATOR_NAMESPACE, "deploy/torghut-rollout-operator", "--tail=60")
        except KubectlError as error:
            return f"(no operator log: {error})"

    try:
        wait_for(lambda: phase() == "Verifying", timeout=240, interval=0.5, what="the rollout Verifying")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{kubectl.get('torghutrollout', 'real', namespace=namespace)}\n{logs()}") from exc
    _timed("apply to Verifying (migration Job + Deployment rollout)", start)

    # kill -9 of the operator's container, found through the node's containerd.
    container_id = first["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    pid = container_pid(local.node_layout.containerd_socket, container_id)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: (p := operator_pod(kubectl))["status"]["containerStatuses"][0]["restartCount"] >= 1 and pod_ready(p),
        timeout=180,
        interval=0.5,
        what="the operator restarted by the kubelet and Ready",
    )
    _timed("operator Ready again after kill -9", killed)

    try:
        wait_for(
            lambda: phase() in ("Succeeded", "Failed", "RolledBack", "Aborted"),
            timeout=240,
            interval=0.5,
            what="the rollout finished",
        )
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{kubectl.get('torghutrollout', 'real', namespace=namespace)}\n{logs()}") from exc
    final = kubectl.get("torghutrollout", "real", namespace=namespace)
    assert final is not None
    assert final["status"]["phase"] == "Succeeded", final["status"]
    _timed("rollout end to end (with the kill)", start)

    # Nothing twice: one migration Job, one pod of it, the Deployment changed once.
    jobs = kubectl.json("get", "jobs", "-n", namespace)["items"]
    assert len(jobs) == 1, [j["metadata"]["name"] for j in jobs]
    assert jobs[0]["status"].get("succeeded") == 1
    assert jobs[0]["spec"]["template"]["spec"]["containers"][0]["image"] == built.simulator
    deployment = kubectl.get("deployment", "torghut", namespace=namespace)
    assert deployment is not None
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == built.simulator_next
    assert deployment["metadata"]["generation"] == 2, deployment["metadata"]
    engine = torghut_db.make_engine(pg.url(database))
    try:
        assert torghut_db.alembic_heads(engine) == sorted(torghut_db.HEAD_HEADS)
    finally:
        engine.dispose()
    print(f"in-cluster timings: {TIMES}", file=sys.stderr)
