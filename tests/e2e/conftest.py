"""e2e harness: the CRD installed, the operator running in the cluster from its image (on the real node, under
its ServiceAccount, installed by `kubectl apply -k` of an overlay on manifests/base), and per test a Torghut world
(a database with Torghut's schema, a simulator serving its HTTP and metrics, Prometheus scraping it, a target
Deployment whose pods run on the real node, and the DSN Secret), all real.

Postgres, Prometheus and the simulator are host processes listening on the address pods reach this host at (the
real node's IP; the `kind` network's gateway on kind), so the in-cluster operator reaches them as it would reach
the real service's."""

from __future__ import annotations

import json
import math
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ClusterHandle
from torghut_localstack import imagebuild, incluster, torghut_db, workloads
from torghut_localstack.cluster import LocalCluster
from torghut_localstack.kubectl import Kubectl, KubectlError
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
RELEASE_IMAGE = "registry.k8s.io/pause:3.8"
"""A third image for tests that need two releases after the first."""
APP_PASSWORD = "app-secret-pw"
SERVICE_ACCOUNT = "torghut-rollout-operator"
OPERATOR_NAMESPACE = "torghut-rollout-system"
E2E_OPERATOR_NAMESPACE = "torghut-rollout-e2e"
"""The e2e tier's operator: manifests/base under this namespace and a `-e2e` name suffix, so the tests that
install manifests/overlays/local themselves (test_install, test_in_cluster, Argo CD's) never touch it."""
E2E_SUFFIX = "-e2e"
E2E_OPERATOR = SERVICE_ACCOUNT + E2E_SUFFIX
SUPERUSER_PASSWORD = "e2e-superuser-pw"
REAL_NODE_POD = incluster.REAL_NODE_POD
"""Pod placement on the real node (the local stack's; kind's node carries the label), for migration Jobs."""
InClusterOperator = incluster.ClusterOperator
container_pid = incluster.containerd_pid
pod_ready = incluster.pod_ready


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


def grant_rollout_namespace(
    kubectl: Kubectl,
    namespace: str,
    *,
    operator_namespace: str = OPERATOR_NAMESPACE,
    service_account: str = SERVICE_ACCOUNT,
) -> None:
    """The Role a real install binds in each namespace where rollouts run (manifests/base/rollout-namespace),
    bound to the ServiceAccount of the operator that drives them there."""
    rendered = list(yaml.safe_load_all(kubectl("kustomize", str(REPO / "manifests" / "base" / "rollout-namespace"))))
    for doc in rendered:
        doc["metadata"]["name"] = service_account  # the Role and its binding, named after their operator
        if doc["kind"] == "RoleBinding":
            doc["roleRef"]["name"] = service_account
            doc["subjects"] = [{"kind": "ServiceAccount", "name": service_account, "namespace": operator_namespace}]
    kubectl.apply(*rendered, namespace=namespace)


@pytest.fixture(scope="session")
def host_address(cluster: ClusterHandle) -> str:
    """Where pods reach this host: Postgres, Prometheus, the simulator and the tests' own servers listen here."""
    return cluster.host_address


@pytest.fixture(scope="session")
def postgres(cluster: ClusterHandle) -> Iterator[PostgresServer]:
    """The session's PostgreSQL 15, on the address pods reach (password auth for the superuser too, since the
    operator's pods connect with the DSNs the tests hand it)."""
    with PostgresServer(
        host=cluster.host_address, password=SUPERUSER_PASSWORD, client_networks=cluster.host_clients
    ) as server:
        yield server


@pytest.fixture(scope="session")
def prometheus(cluster: ClusterHandle) -> Iterator[PrometheusServer]:
    """The session's Prometheus (scraping every 1 s), on the address pods reach."""
    with PrometheusServer(host=cluster.host_address) as server:
        yield server


@pytest.fixture(scope="session")
def node_images(cluster: ClusterHandle) -> None:
    """The images the tests' pods name (the target's pause images, busybox for migration Jobs) in the
    real node's containerd, as tags of the images the node was started with: nothing is ever pulled. (kind's node
    has pause 3.10 and pulls the rest.)"""
    local = cluster.local
    if local is None:
        return
    wanted = {
        local.images["pause"].reference: [OLD_IMAGE, NEW_IMAGE, RELEASE_IMAGE],
        local.images["busybox"].reference: [f"docker.io/library/{workloads.BUSYBOX_IMAGE}"],
    }
    for source, tags in wanted.items():
        for tag in tags:
            local.tag_image(source, tag)


@pytest.fixture(scope="session")
def operator_image(cluster: ClusterHandle) -> str:
    """The operator's image, built without Docker (or found in the build cache) and loaded into the cluster."""
    built = imagebuild.build_image(imagebuild.OPERATOR)
    cluster.load_image_archive(built.docker_archive)
    return built.ref


@pytest.fixture(scope="session")
def operator(
    cluster: ClusterHandle,
    kubectl: Kubectl,
    crd: None,
    operator_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[InClusterOperator]:
    """The operator in the cluster for the whole session: manifests/base under its own namespace and a `-e2e` name
    suffix (tests that install manifests/overlays/local themselves never touch it), watching `e2e-*`."""
    work = tmp_path_factory.mktemp("operator")
    overlay = incluster.overlay(
        work / "overlay",
        operator_image,
        base=REPO / "manifests" / "base",
        namespace=E2E_OPERATOR_NAMESPACE,
        name_suffix=E2E_SUFFIX,
        args=["--verbose", "--namespace=e2e-*"],
        env={"TORGHUT_OPERATOR_ROUTE_INTERVAL": "2"},
        pin_to_real_node=cluster.local is not None,
    )
    kill: incluster.KillContainer | None = None
    if cluster.local is not None:
        kill = incluster.kill_on_host(cluster.local.node_layout.containerd_socket)
    elif cluster.kind_cluster is not None:
        kill = cluster.kind_cluster.kill_container
    running = InClusterOperator(
        kubectl,
        namespace=E2E_OPERATOR_NAMESPACE,
        deployment=E2E_OPERATOR,
        overlay_dir=overlay,
        log_dir=work / "logs",
        kill_container=kill,
    ).install()
    yield running
    running.stop()


@dataclass
class World:
    """One test's Torghut: its namespace, database (in schema state ``schema_state``), simulator and helpers to
    drive rollouts."""

    namespace: str
    kubectl: Kubectl
    postgres: PostgresServer
    prometheus: PrometheusServer
    operator: InClusterOperator
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
    """The rollout's target: a Deployment whose pod runs on the real node (the pause image, old or new tag)."""
    deployment = workloads.deployment(name, image=image)
    pod = deployment["spec"]["template"]["spec"]
    pod["containers"][0]["name"] = "torghut"
    pod["containers"][0]["env"] = [{"name": "TRADING_MODE", "value": "paper"}]
    pod.update(json.loads(json.dumps(REAL_NODE_POD)))
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
    operator: InClusterOperator,
    cluster: ClusterHandle,
    node_images: None,
) -> Iterator[World]:
    started = time.monotonic()
    marks: list[tuple[str, float]] = []

    def mark(what: str) -> None:
        marks.append((what, round(time.monotonic() - started, 1)))

    operator.start()  # Ready (a test before may have stopped the real node it runs on, and started it again)
    mark("operator ready")
    grant_rollout_namespace(kubectl, namespace, operator_namespace=E2E_OPERATOR_NAMESPACE, service_account=E2E_OPERATOR)
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
    mark("database and objects")
    workloads.wait_for_rollout(kubectl, "torghut", namespace=namespace)
    mark("target available")
    simulator = TorghutSimulator(
        host=cluster.host_address,
        dsn=postgres.dsn(database),
        image=OLD_IMAGE,
        follow=FollowTarget.parse(f"{namespace}/torghut/torghut"),
        kubeconfig=str(cluster.kubeconfig),
        tick_seconds=0.5,
        expected_heads=torghut_db.heads_of(schema_state),
    ).start()
    prometheus.set_targets(namespace, [urllib.parse.urlsplit(simulator.url).netloc])
    prometheus.wait_for_targets(namespace, timeout=30)
    mark("simulator scraped")
    if marks[-1][1] > 20:
        print(f"\nworld setup was slow: {marks}")
    if operator.unexpected_restarts:
        print(f"\nthe operator restarted on its own so far: {operator.unexpected_restarts}")
    world = World(namespace, kubectl, postgres, prometheus, operator, database, app_dsn, simulator, schema_state)
    try:
        yield world
    finally:
        simulator.stop()
        prometheus.remove_targets(namespace)
        since = math.ceil(time.monotonic() - started) + 5  # this test's part of the running container's log
        assert APP_PASSWORD not in operator.logs(since_seconds=since), "the DSN password leaked into the operator log"


def as_yaml(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)[:4000]
