"""kind, for machines with a container engine: the e2e suite's and the demo's other cluster.

The command lines live here, built by small pure functions (unit-tested), so the e2e fixture, the demo and the
integration test that loads `kind-config.yaml` with kind's own code run the same ones. `kind` itself is built
from its Go module by `cluster/build-binaries.sh` (`<bin dir>/kind`).

kind's node carries the real node's label (`kind-config.yaml`), so workloads made with `workloads.on_real_node`
schedule on it unchanged; images reach it with `kind load image-archive`, as `ctr images import` brings them to
the local real node.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from torghut_localstack import workloads

KIND_CONFIG: Final = Path(__file__).resolve().parents[2] / "kind-config.yaml"
CREATE_WAIT: Final = "180s"
"""`kind create cluster --wait`: the control-plane node Ready."""
_CREATE_TIMEOUT_S: Final = 600.0
_DELETE_TIMEOUT_S: Final = 300.0
_LOAD_TIMEOUT_S: Final = 300.0


def provider(environ: Mapping[str, str] | None = None) -> str:
    """The container engine kind drives: `docker`, or `KIND_EXPERIMENTAL_PROVIDER` (e.g. `podman`)."""
    env = os.environ if environ is None else environ
    return env.get("KIND_EXPERIMENTAL_PROVIDER") or "docker"


def pod_subnet(config: Path = KIND_CONFIG) -> str:
    """`networking.podSubnet` of kind-config.yaml: where kind's pod IPs come from."""
    return str(yaml.safe_load(config.read_text())["networking"]["podSubnet"])


class KindError(RuntimeError):
    """kind could not create, load into or delete a cluster; the message names the command and kind's error."""


def create_command(
    kind: Path, name: str, *, kubeconfig: Path, config: Path = KIND_CONFIG, wait: str = CREATE_WAIT
) -> list[str]:
    """`kind create cluster` for cluster `name` from `config`, its kubeconfig written to `kubeconfig` (never the
    user's ~/.kube/config)."""
    return [str(kind), "create", "cluster", "--name", name, "--config", str(config), "--kubeconfig", str(kubeconfig),
            "--wait", wait]  # fmt: skip


def delete_command(kind: Path, name: str, *, kubeconfig: Path) -> list[str]:
    return [str(kind), "delete", "cluster", "--name", name, "--kubeconfig", str(kubeconfig)]


def load_archive_command(kind: Path, name: str, archive: Path) -> list[str]:
    """`kind load image-archive`: a docker archive into every node of cluster `name` (containerd's k8s.io
    namespace, where the kubelet finds it; pods use `imagePullPolicy: Never`)."""
    return [str(kind), "load", "image-archive", str(archive), "--name", name]


def engine_problem(environ: Mapping[str, str] | None = None) -> str | None:
    """Why kind can't create a cluster here (no container engine, or one that does not answer), else None."""
    env = os.environ if environ is None else environ
    engine = provider(env)
    binary = shutil.which(engine, path=env.get("PATH"))
    if binary is None:
        return f"kind needs a container engine, but `{engine}` is not on PATH"
    try:
        done = subprocess.run([binary, "info"], capture_output=True, text=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return f"kind needs a container engine, but `{engine} info` did not answer within 20s"
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"kind needs a running container engine, but `{engine} info` failed: {detail}"
    return None


def run(argv: Sequence[str], *, timeout: float) -> str:
    """Run a kind command; its stdout, or KindError with the exit code and kind's last lines."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise KindError(f"{' '.join(argv)} did not finish within {timeout:.0f}s") from error
    if done.returncode != 0:
        detail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:]) or "no output"
        raise KindError(f"{' '.join(argv)} failed ({done.returncode}):\n{detail}")
    return done.stdout


@dataclass(frozen=True)
class KindCluster:
    """A running kind cluster: its name (for `kind load`) and its kubeconfig."""

    kind: Path
    name: str
    kubeconfig: Path

    def load_archive(self, archive: Path) -> None:
        """Load a docker archive (e.g. `images.busybox_image().archive`) into every node."""
        run(load_archive_command(self.kind, self.name, archive), timeout=_LOAD_TIMEOUT_S)

    @functools.cached_property
    def host_network(self) -> tuple[str, str]:
        """(gateway, subnet) of the container engine's `kind` network: pods reach this host at the gateway, and
        their traffic to it comes from the nodes' addresses in the subnet (kindnet masquerades it). Read once."""
        template = "{{range .IPAM.Config}}{{.Gateway}} {{.Subnet}}\n{{end}}"
        out = run([provider(), "network", "inspect", "kind", "--format", template], timeout=30)
        for line in out.splitlines():
            gateway, _, subnet = line.strip().partition(" ")
            if gateway and ":" not in gateway:  # the IPv4 pair
                return gateway, subnet
        raise KindError(f"the `kind` network has no IPv4 gateway: {out.strip()!r}")

    def nodes(self) -> list[str]:
        return run([str(self.kind), "get", "nodes", "--name", self.name], timeout=30).split()

    def tag_image(self, source: str, tag: str) -> None:
        """Name an image loaded into every node `tag` too (the node's `ctr images tag --force`)."""
        for node in self.nodes():
            run([provider(), "exec", node, "ctr", "-n", "k8s.io", "images", "tag", "--force", source, tag], timeout=60)

    def digest_of(self, reference: str) -> str:
        """The digest (`sha256:...`) of a loaded image, as the first node's containerd knows it."""
        node = self.nodes()[0]
        out = run([provider(), "exec", node, "ctr", "-n", "k8s.io", "images", "ls", f"name=={reference}"], timeout=60)
        for line in out.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[0] == reference:
                return fields[2]
        raise KindError(f"{reference} is not loaded into kind node {node}:\n{out}")

    def kill_container(self, node: str, container_id: str) -> None:
        """SIGKILL a container's init process on a node (as a node failure would), through the node's crictl."""
        script = f"kill -9 $(crictl inspect --output go-template --template '{{{{.info.pid}}}}' {container_id})"
        run([provider(), "exec", node, "sh", "-c", script], timeout=30)


@contextmanager
def cluster(bin_dir: Path, workdir: Path, *, prefix: str, config: Path = KIND_CONFIG) -> Iterator[KindCluster]:
    """A kind cluster from `config` for the block (a unique name from `prefix`, so parallel runs don't collide),
    deleted afterwards, also when its creation failed half-way. Without a container engine: KindError at once."""
    problem = engine_problem()
    if problem is not None:
        raise KindError(problem)
    kind = bin_dir / "kind"
    if not kind.is_file():
        raise KindError(f"{kind} is missing: cluster/build-binaries.sh builds it (make binaries)")
    handle = KindCluster(kind, workloads.unique_name(prefix), workdir / "kind-kubeconfig")
    try:
        run(create_command(kind, handle.name, kubeconfig=handle.kubeconfig, config=config), timeout=_CREATE_TIMEOUT_S)
        yield handle
    finally:
        subprocess.run(
            delete_command(kind, handle.name, kubeconfig=handle.kubeconfig),
            capture_output=True,
            timeout=_DELETE_TIMEOUT_S,
            check=False,
        )
