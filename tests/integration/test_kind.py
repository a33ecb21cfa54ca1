"""kind-config.yaml loaded and validated by kind's own code, and images loaded by kind's own `load image-archive`,
without a container engine.

kind's config loader is an internal package of its module (`sigs.k8s.io/kind/pkg/internal/apis/config/encoding`),
which no other module may import, and its public API validates a config only on the way to a provider. So these
tests run the kind binary itself (v0.29.0, built from its module by cluster/build-binaries.sh) with the very
command line the e2e suite uses, `kind create cluster --config kind-config.yaml ...`, and a stub `docker` first on
PATH: it answers what kind asks before provisioning (`docker -v` for provider detection, `docker info`, an empty
`docker ps`, the node image "present") and refuses the first provisioning step (`docker network ls`). kind loads
the file (strict decoding: an unknown field is an error), applies its defaults, validates it, and only then
provisions. So our file must fail at provisioning, and broken copies of it must fail with kind's config errors
before the stub is ever asked to provision. For `kind load image-archive`, the stub shows one node whose
`docker exec` reaches a real (bare) containerd, so kind's own import lands the busybox archive in it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ClusterHandle
from torghut_localstack import images, kind
from torghut_localstack.binaries import pinned_versions
from torghut_localstack.procs import start_process
from torghut_localstack.wait import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STUB_DOCKER = """#!/bin/sh
# A container engine that is not there: enough for kind to detect a docker provider, nothing more. With
# STUB_NODES set, those are the cluster's node containers, and `docker exec` into them reaches the containerd at
# $STUB_CONTAINERD, so `kind load image-archive` runs its own import against a real containerd.
echo "$*" >> "$STUB_LOG"
case "$1" in
  -v) echo "Docker version 27.5.1, build torghut-stub"; exit 0 ;;
  info) echo '{"CgroupDriver":"systemd","CgroupVersion":"2","MemoryLimit":true,"PidsLimit":true,"CPUShares":true}'
        exit 0 ;;
  ps) [ -n "$STUB_NODES" ] && echo "$STUB_NODES"; exit 0 ;;
  inspect) case "$*" in *io.x-k8s.kind.role*) echo control-plane ;; esac; exit 0 ;;
  exec) if [ -n "$STUB_NODES" ]; then
          shift
          while [ "$1" = --privileged ] || [ "$1" = -i ]; do shift; done
          shift  # the node container
          case "$1 $2 $3" in
            "containerd config dump") printf 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n'
                                       printf 'snapshotter = "overlayfs"\n'; exit 0 ;;
          esac
          if [ "$1" = ctr ]; then shift; exec ctr --address "$STUB_CONTAINERD" "$@"; fi
        fi ;;
esac
echo "torghut stub docker: no container engine here (docker $*)" >&2
exit 1
"""
PROVISIONING_ERROR = "failed to ensure docker network"
"""What kind says when the stub refuses its first provisioning step (docker network ls)."""


@dataclass(frozen=True)
class KindRun:
    returncode: int
    output: str
    docker_calls: list[str]

    @property
    def provisioned(self) -> bool:
        """kind got past its config and asked the engine for the node image."""
        return any(call.startswith("inspect --type=image") for call in self.docker_calls)

    def describe(self) -> str:
        calls = "\n".join(f"  docker {call}" for call in self.docker_calls) or "  (none)"
        return f"kind exited {self.returncode}:\n{self.output.strip()}\ndocker calls:\n{calls}"


@pytest.fixture(scope="module")
def kind_binary(binaries: Path) -> Path:
    """The kind that cluster/build-binaries.sh builds and caches; never skipped: a missing one fails here."""
    binary = binaries / "kind"
    assert binary.is_file(), f"cluster/build-binaries.sh did not build {binary}"
    version = subprocess.run([str(binary), "version"], capture_output=True, text=True, timeout=30, check=True).stdout
    assert pinned_versions()["KIND_VERSION"] in version, f"{binary} is {version!r}, not the pinned kind"
    return binary


def _stub_environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This process's environment with the stub docker first on PATH, no provider forced, its calls logged."""
    stub_dir = tmp_path / "stub-bin"
    stub_dir.mkdir(exist_ok=True)
    (stub_dir / "docker").write_text(STUB_DOCKER)
    (stub_dir / "docker").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("KIND_EXPERIMENTAL_PROVIDER", "KIND_CLUSTER_NAME")}
    env.update(PATH=f"{stub_dir}{os.pathsep}{env.get('PATH', '')}", HOME=str(tmp_path), **extra)
    env["STUB_LOG"] = str(tmp_path / "docker-calls.log")
    return env


@pytest.fixture
def run_kind(tmp_path: Path, kind_binary: Path) -> Callable[[list[str]], KindRun]:
    """Run a kind command line against the stub docker (no nodes)."""
    env = _stub_environment(tmp_path)
    log = Path(env["STUB_LOG"])

    def run(argv: list[str]) -> KindRun:
        log.write_text("")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)
        return KindRun(done.returncode, done.stdout + done.stderr, log.read_text().splitlines())

    return run


def _create(kind_binary: Path, tmp_path: Path, config: Path) -> list[str]:
    return kind.create_command(kind_binary, "torghut-config-check", kubeconfig=tmp_path / "kubeconfig", config=config)


def test_kind_loads_and_validates_kind_config_and_fails_only_at_provisioning(
    kind_binary: Path, tmp_path: Path, run_kind: Callable[[list[str]], KindRun]
) -> None:
    run = run_kind(_create(kind_binary, tmp_path, kind.KIND_CONFIG))

    assert run.returncode != 0, f"the stub engine cannot host a cluster, yet kind succeeded\n{run.describe()}"
    assert PROVISIONING_ERROR in run.output, f"kind-config.yaml failed before provisioning:\n{run.describe()}"
    assert 'Creating cluster "torghut-config-check"' in run.output, run.describe()  # printed after validation
    image = yaml.safe_load(kind.KIND_CONFIG.read_text())["nodes"][0]["image"]
    assert f"inspect --type=image {image}" in run.docker_calls, f"kind did not provision {image}\n{run.describe()}"


def test_the_pinned_node_image_is_kind_s_own_default(
    kind_binary: Path, tmp_path: Path, run_kind: Callable[[list[str]], KindRun]
) -> None:
    default = run_kind([str(kind_binary), "create", "cluster", "--name", "torghut-default-check"])
    asked = [call.removeprefix("inspect --type=image ") for call in default.docker_calls if "--type=image" in call]

    ours = yaml.safe_load(kind.KIND_CONFIG.read_text())["nodes"][0]["image"]
    assert asked == [ours], f"kind {pinned_versions()['KIND_VERSION']} defaults to {asked}; kind-config.yaml: {ours}"


def _misspelled_labels(config: dict[str, Any]) -> None:
    config["nodes"][0]["lables"] = config["nodes"][0].pop("labels")


def _workers_only(config: dict[str, Any]) -> None:
    config["nodes"][0]["role"] = "worker"


def _bad_pod_subnet(config: dict[str, Any]) -> None:
    config["networking"]["podSubnet"] = "10.244.0.0/33"


def _other_api_version(config: dict[str, Any]) -> None:
    config["apiVersion"] = "kind.x-k8s.io/v1alpha3"


@pytest.mark.parametrize(
    ("breakage", "kind_says"),
    [
        (_misspelled_labels, "field lables not found in type v1alpha4.Node"),  # strict decoding
        (_workers_only, "must have at least one control-plane node"),  # Validate
        (_bad_pod_subnet, "invalid pod subnet"),  # Validate
        (_other_api_version, "unknown apiVersion: kind.x-k8s.io/v1alpha3"),  # the loader's version switch
    ],
    ids=["misspelled-labels", "no-control-plane", "bad-pod-subnet", "old-api-version"],
)
def test_a_broken_copy_fails_with_kind_s_config_error_before_provisioning(
    breakage: Callable[[dict[str, Any]], None],
    kind_says: str,
    kind_binary: Path,
    tmp_path: Path,
    run_kind: Callable[[list[str]], KindRun],
) -> None:
    config = yaml.safe_load(kind.KIND_CONFIG.read_text())
    breakage(config)
    broken = tmp_path / "kind-config.yaml"
    broken.write_text(yaml.safe_dump(config))

    run = run_kind(_create(kind_binary, tmp_path, broken))

    assert run.returncode != 0, run.describe()
    assert kind_says in run.output, f"expected kind's config error {kind_says!r}\n{run.describe()}"
    assert not run.provisioned, f"kind went on to provision a broken config\n{run.describe()}"


def test_kind_accepts_the_load_and_delete_command_lines(
    kind_binary: Path, tmp_path: Path, run_kind: Callable[[list[str]], KindRun]
) -> None:
    archive = tmp_path / "image.tar"
    archive.write_bytes(b"")

    load = run_kind(kind.load_archive_command(kind_binary, "torghut-absent", archive))
    delete = run_kind(kind.delete_command(kind_binary, "torghut-absent", kubeconfig=tmp_path / "kubeconfig"))

    # Parsed and run up to the engine: the stub has no nodes for the cluster.
    assert 'no nodes found for cluster "torghut-absent"' in load.output, load.describe()
    assert delete.returncode == 0, delete.describe()
    assert "ps -a --filter label=io.x-k8s.kind.cluster=torghut-absent --format {{.Names}}" in delete.docker_calls


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Path]:
    """A bare containerd (no CRI, nothing on the host outside its own folder), standing in for the containerd of a
    kind node; yields its socket. Needs root and Debian's containerd, as the real node does."""
    short = Path(tempfile.mkdtemp(prefix="kind-ctrd-", dir="/tmp"))  # a socket path has at most 107 bytes
    config = short / "config.toml"
    config.write_text(
        f'version = 2\nroot = "{short / "root"}"\nstate = "{short / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",'
        ' "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",'
        ' "io.containerd.snapshotter.v1.zfs"]\n'
        f'[grpc]\n  address = "{short / "containerd.sock"}"\n'
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{short / "opt"}"\n'
    )
    socket = short / "containerd.sock"
    try:
        process = start_process(
            "containerd", ["containerd", f"--config={config}"], log_path=tmp_path / "containerd.log"
        )
    except FileNotFoundError as error:
        shutil.rmtree(short)
        raise AssertionError("containerd is not installed (cluster/install-debian-deps.sh installs it)") from error
    try:
        answers = ["ctr", f"--address={socket}", "version"]
        wait_for(
            lambda: (
                process.running()
                and subprocess.run(answers, capture_output=True, timeout=10, check=False).returncode == 0
            ),
            timeout=30,
            what=f"containerd answering on {socket}",
        )
        yield socket
    finally:
        process.stop()
        shutil.rmtree(short, ignore_errors=True)


def test_kind_load_image_archive_puts_the_image_where_the_kubelet_finds_it(
    kind_binary: Path, tmp_path: Path, containerd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ClusterHandle.load_image_archive on kind runs kind's own `load image-archive`: it finds the cluster's nodes,
    reads their containerd's snapshotter and pipes the archive into `ctr -n k8s.io images import` inside each node,
    here a real containerd behind the stub."""
    image = images.busybox_image()
    name = "torghut-loaded"
    env = _stub_environment(tmp_path, STUB_NODES=f"{name}-control-plane", STUB_CONTAINERD=str(containerd))
    for key in ("KIND_EXPERIMENTAL_PROVIDER", "KIND_CLUSTER_NAME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # kind runs with this process's environment, as in the e2e fixture
    kubeconfig = tmp_path / "kubeconfig"
    handle = ClusterHandle(
        "kind", kubeconfig, kind_binary.parent, kind_cluster=kind.KindCluster(kind_binary, name, kubeconfig)
    )

    handle.load_image_archive(image.archive)

    calls = Path(env["STUB_LOG"]).read_text()
    assert f"ps -a --filter label=io.x-k8s.kind.cluster={name}" in calls, calls
    assert "ctr --namespace=k8s.io images import --all-platforms --digests --snapshotter=overlayfs -" in calls, calls
    assert image.reference in images.imported(containerd), f"{image.reference} not in the node's k8s.io images"


LOCAL_ONLY = [
    "tests/e2e/test_faults.py::test_the_api_server_restarted_mid_verify",
    "tests/e2e/test_real_node.py::test_a_kubelet_that_dies_fails_with_its_last_log_lines",
    "tests/e2e/test_real_node.py::test_stopping_the_node_leaves_nothing_on_the_host",
]


def test_local_only_tests_are_reported_not_applicable_under_kind_even_in_ci(tmp_path: Path) -> None:
    env = {**os.environ, "E2E_CLUSTER": "kind", "CI": "1"}
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", f"--basetemp={tmp_path}", *LOCAL_ONLY]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=REPO, env=env, check=False)

    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "3 skipped" in done.stdout, done.stdout[-4000:]
    assert done.stdout.count("not applicable on kind: ") == 3, done.stdout[-4000:]
