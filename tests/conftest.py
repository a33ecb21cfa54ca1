"""Shared fixtures: a Kubernetes cluster, Postgres and Prometheus, all real, started lazily.

`E2E_CLUSTER` picks the cluster for e2e tests:
- unset or `local`: the embedded control plane (etcd, kube-apiserver, controller-manager,
  scheduler, kwok) from `torghut_localstack`, binaries built from Go modules into a cache;
- `kind`: a kind cluster from `kind-config.yaml` (needs Docker), deleted afterwards;
- `existing`: whatever `$KUBECONFIG` points at.

A cluster that can't start makes the e2e tests ERROR with the reason; they never skip (under
`CI`, a skipped e2e test is turned into a failure). The one exception: a test marked
`local_only(reason)` drives what only the embedded control plane has (restarting the API server,
killing the kubelet, the node's teardown); on another cluster it is skipped as not applicable, with
the reason shown, and never in the default local mode.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest

from torghut_localstack import imagebuild, kind, realnode, workloads
from torghut_localstack.binaries import ensure_argocd_binaries, ensure_binaries
from torghut_localstack.cluster import LocalCluster
from torghut_localstack.kubectl import Kubectl
from torghut_localstack.postgres import PostgresServer
from torghut_localstack.prometheus import PrometheusServer

REPO = Path(__file__).resolve().parents[1]
CLUSTER_MODES = ("local", "kind", "existing")
TIERS = ("unit", "integration", "e2e")

_binaries_key = pytest.StashKey["Path | BaseException"]()
_argocd_binaries_key = pytest.StashKey["Path | BaseException"]()


@dataclass(frozen=True)
class ClusterHandle:
    """The cluster under test: `kubeconfig` for clients, `env` for subprocesses (the operator)."""

    mode: str
    kubeconfig: Path
    bin_dir: Path
    local: LocalCluster | None = None
    """The embedded control plane (mode local), for fault tests that restart its components."""
    kind_cluster: kind.KindCluster | None = None
    """The kind cluster (mode kind), for `kind load`."""

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(self) -> Kubectl:
        return Kubectl(self.bin_dir / "kubectl", self.kubeconfig)

    def load_image_archive(self, archive: Path) -> None:
        """Make a docker archive's image available to the nodes that run real containers (the pods of
        `workloads.on_real_node`, which never pull): `ctr images import` into the local real node's containerd,
        `kind load image-archive --name <cluster>` on kind."""
        if self.local is not None:
            self.local.import_image(archive)
        elif self.kind_cluster is not None:
            self.kind_cluster.load_archive(archive)
        else:
            raise RuntimeError(
                f"E2E_CLUSTER={self.mode}: the suite cannot load {archive.name} into a cluster it did not create; "
                "use E2E_CLUSTER=local or kind"
            )

    @property
    def host_address(self) -> str:
        """An address of this host that pods reach and host processes can listen on: the real node's IP on the
        local stack, the `kind` network's gateway on kind (E2E_HOST_ADDRESS for an existing cluster)."""
        if self.local is not None:
            if self.local.node_ip is None:
                raise RuntimeError("the local stack has no real node, so no pod reaches this host")
            return self.local.node_ip
        if self.kind_cluster is not None:
            return self.kind_cluster.host_network[0]
        found = os.environ.get("E2E_HOST_ADDRESS")
        if not found:
            raise RuntimeError(
                "E2E_CLUSTER=existing: set E2E_HOST_ADDRESS to an address of this host the cluster's pods reach "
                "(the in-cluster operator connects to the tests' Postgres, Prometheus and simulator there)"
            )
        return found

    @property
    def host_clients(self) -> list[str]:
        """CIDRs that connections to :attr:`host_address` come from: this host itself and the pods (on kind,
        masqueraded to the nodes' addresses)."""
        own = [f"{self.host_address}/32"]
        if self.local is not None:
            return [*own, realnode.POD_CIDR]
        if self.kind_cluster is not None:
            return [*own, self.kind_cluster.host_network[1], kind.pod_subnet()]
        return [*own, *filter(None, os.environ.get("E2E_HOST_CLIENTS", "").split(","))]

    @property
    def pod_network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        """Where pod IPs come from on the nodes that run real containers (None: not known for `existing`)."""
        if self.local is not None:
            return ipaddress.ip_network(realnode.POD_CIDR)
        if self.kind_cluster is not None:
            return ipaddress.ip_network(kind_pod_subnet())
        return None


def kind_pod_subnet(config: Path = kind.KIND_CONFIG) -> str:
    """`networking.podSubnet` of kind-config.yaml."""
    return kind.pod_subnet(config)


def _cluster_mode() -> str:
    mode = os.environ.get("E2E_CLUSTER") or "local"
    if mode not in CLUSTER_MODES:
        raise pytest.UsageError(f"E2E_CLUSTER={mode!r}: use one of {', '.join(CLUSTER_MODES)}")
    return mode


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (`timeout`, a cancelled CI job) ends the run like Ctrl-C, so session fixtures
    # still tear down and stop their servers. (If pytest is SIGKILLed, the kernel kills them.)
    signal.signal(signal.SIGTERM, _terminate)


@pytest.hookimpl(trylast=True)  # after -m/-k deselection, so only selected tests count
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Build or verify the binaries before any test runs when an e2e test is selected (and Argo CD when a
    selected test uses `argocd_binaries`).

    Done here, not in a fixture, so a cold build (minutes) doesn't eat a test's timeout. A
    failure is kept and raised by the `binaries` fixture, so every e2e test errors with it.
    """
    untiered = [item.nodeid for item in items if not any(item.get_closest_marker(t) for t in TIERS)]
    if untiered:
        raise pytest.UsageError(f"tests without a tier marker ({', '.join(TIERS)}): {', '.join(untiered[:5])}")
    _skip_local_only_on_kind(items)
    if config.option.collectonly:
        return
    need_cluster = any(item.get_closest_marker("e2e") for item in items)
    need_argocd = any("argocd_binaries" in getattr(item, "fixturenames", ()) for item in items)
    if not need_cluster and not need_argocd:
        return
    capture = config.pluginmanager.getplugin("capturemanager")

    def show(line: str) -> None:
        if line.endswith(" cached"):
            return
        with capture.global_and_fixture_disabled():
            sys.stdout.write(f"{line}\n")
            sys.stdout.flush()

    if need_cluster:
        _cluster_mode()
        try:
            config.stash[_binaries_key] = ensure_binaries(on_line=show)
        except (subprocess.SubprocessError, OSError, RuntimeError) as error:
            config.stash[_binaries_key] = error
    if any("operator" in getattr(item, "fixturenames", ()) for item in items):
        try:  # the e2e tier's operator image: minutes cold, so also here (the fixture then finds it cached)
            built = imagebuild.build_image(imagebuild.OPERATOR, log=show)
            show(f"operator image {built.ref}")
        except (subprocess.SubprocessError, OSError, RuntimeError) as error:
            show(f"the operator image could not be built here ({error}); the `operator` fixture will say why")
    if need_argocd:
        try:  # Argo CD and kustomize: about 10 min cold, so also here and not in a fixture
            config.stash[_argocd_binaries_key] = ensure_argocd_binaries(on_line=show)
        except (subprocess.SubprocessError, OSError, RuntimeError) as error:
            config.stash[_argocd_binaries_key] = error


def _not_applicable_on_kind(item: pytest.Item) -> str | None:
    """The skip reason of a `local_only` test on a cluster the suite did not build (E2E_CLUSTER=kind or existing),
    else None (it runs)."""
    marker = item.get_closest_marker("local_only")
    mode = _cluster_mode()
    if marker is None or mode == "local":
        return None
    if len(marker.args) != 1 or not isinstance(marker.args[0], str):
        raise pytest.UsageError(
            f"{item.nodeid}: local_only takes one reason, e.g. local_only('restarts the API server')"
        )
    return f"not applicable on {mode}: {marker.args[0]}"


def _skip_local_only_on_kind(items: list[pytest.Item]) -> None:
    for item in items:
        reason = _not_applicable_on_kind(item)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # Not applicable (a local_only test on kind) is a stated fact, not a missing tool: it stays a skip under CI.
    if report.skipped and _not_applicable_on_kind(item) is not None:
        return report
    if report.skipped and os.environ.get("CI") and item.get_closest_marker("e2e") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"e2e tests must not skip in CI, but {item.nodeid} skipped: {report.longrepr}"
    return report


@pytest.fixture(scope="session")
def binaries(pytestconfig: pytest.Config) -> Path:
    """The folder with etcd, kube-apiserver, ..., kubectl and kwok."""
    found = pytestconfig.stash.get(_binaries_key, None)
    if found is None:
        found = ensure_binaries()
    if isinstance(found, BaseException):
        raise RuntimeError(f"the control-plane binaries could not be built: {found}") from found
    return found


@pytest.fixture(scope="session")
def argocd_binaries(pytestconfig: pytest.Config) -> Path:
    """The folder with `argocd` (every Argo CD component and the CLI) and `kustomize` (cluster/build-argocd.sh)."""
    found = pytestconfig.stash.get(_argocd_binaries_key, None)
    if found is None:
        found = ensure_argocd_binaries()
    if isinstance(found, BaseException):
        raise RuntimeError(f"Argo CD and kustomize could not be built: {found}") from found
    return found


@pytest.fixture(scope="session")
def cluster(binaries: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHandle]:
    """The cluster chosen by E2E_CLUSTER, up and with a Ready node."""
    mode = _cluster_mode()
    if mode == "local":
        # Under pytest's basetemp, so the logs of the last runs stay for a post-mortem.
        with LocalCluster(binaries, tmp_path_factory.mktemp("local-cluster")) as local:
            yield ClusterHandle(mode, local.kubeconfig, binaries, local)
    elif mode == "kind":
        yield from _kind_cluster(binaries, tmp_path_factory.mktemp("kind"))
    else:
        kubeconfig = os.environ.get("KUBECONFIG", "")
        if not kubeconfig or not Path(kubeconfig).is_file():
            raise RuntimeError(f"E2E_CLUSTER=existing needs KUBECONFIG to name a file (it is {kubeconfig!r})")
        handle = ClusterHandle(mode, Path(kubeconfig), binaries)
        handle.kubectl()("get", "--raw", "/readyz", timeout=30)
        yield handle


def _kind_cluster(binaries: Path, workdir: Path) -> Iterator[ClusterHandle]:
    with kind.cluster(binaries, workdir, prefix="torghut-e2e") as created:
        yield ClusterHandle("kind", created.kubeconfig, binaries, kind_cluster=created)


@pytest.fixture(scope="session")
def kubectl(cluster: ClusterHandle) -> Kubectl:
    """`kubectl(*args, stdin=None, timeout=None) -> stdout` against the cluster; raises KubectlError."""
    return cluster.kubectl()


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test (with its default ServiceAccount), deleted afterwards. Named
    `e2e-<test>-<random>`, the namespaces the e2e operator watches; a module that must stay out of the
    operator's sight sets `NAMESPACE_PREFIX`."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    prefix = getattr(request.module, "NAMESPACE_PREFIX", "e2e")
    name = workloads.unique_name(f"{prefix}-{stem}")
    kubectl.apply(workloads.namespace(name))
    workloads.wait_for_service_account(kubectl, name)
    yield name
    kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=false")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL 15 server for the session (superuser `postgres`, trust auth on 127.0.0.1)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def prometheus() -> Iterator[PrometheusServer]:
    """A Prometheus for the session scraping every 1 s; add targets with `set_targets`."""
    with PrometheusServer() as server:
        yield server


GATE_READER = "gate_reader"


@pytest.fixture(scope="session")
def gate_reader(postgres: PostgresServer) -> str:
    """A login role that can read every table and nothing else (pg_read_all_data): what a gate DSN should be.
    Gates refuse the session server's superuser. Use it as ``postgres.dsn(database, user=gate_reader)``."""
    postgres.create_role(GATE_READER)
    postgres.execute(f"GRANT pg_read_all_data TO {GATE_READER}")
    return GATE_READER
