"""The kind command lines the e2e suite and the demo run, and kind-config.yaml's promises to the suite: its node
takes the pods of `workloads.on_real_node`, and its pod subnet is the one the tests check pod IPs against."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from tests.conftest import kind_pod_subnet
from torghut_localstack import kind, realnode, workloads

pytestmark = pytest.mark.unit

KIND = Path("/cache/bin/kind")


def test_create_writes_its_own_kubeconfig_from_kind_config_and_waits_for_the_node() -> None:
    argv = kind.create_command(KIND, "torghut-e2e-abc123", kubeconfig=Path("/run/kubeconfig"))

    assert argv == [
        "/cache/bin/kind", "create", "cluster", "--name", "torghut-e2e-abc123", "--config", str(kind.KIND_CONFIG),
        "--kubeconfig", "/run/kubeconfig", "--wait", "180s",
    ]  # fmt: skip
    assert kind.KIND_CONFIG.name == "kind-config.yaml"
    assert kind.KIND_CONFIG.is_file()


def test_delete_names_the_cluster_and_its_kubeconfig() -> None:
    argv = kind.delete_command(KIND, "torghut-e2e-abc123", kubeconfig=Path("/run/kubeconfig"))

    assert argv == [
        "/cache/bin/kind",
        "delete",
        "cluster",
        "--name",
        "torghut-e2e-abc123",
        "--kubeconfig",
        "/run/kubeconfig",
    ]


def test_an_image_archive_is_loaded_into_the_named_cluster() -> None:
    argv = kind.load_archive_command(KIND, "torghut-e2e-abc123", Path("/cache/images/torghut-busybox-0123.tar"))

    assert argv == [
        "/cache/bin/kind", "load", "image-archive", "/cache/images/torghut-busybox-0123.tar",
        "--name", "torghut-e2e-abc123",
    ]  # fmt: skip


def test_kind_s_node_takes_the_pods_made_for_the_real_node() -> None:
    config = yaml.safe_load(kind.KIND_CONFIG.read_text())
    (node,) = config["nodes"]
    pod = workloads.on_real_node(workloads.job("probe"))["spec"]["template"]["spec"]

    assert node["role"] == "control-plane"  # one node: kind lifts the control-plane taint, every pod runs here
    assert pod["nodeSelector"].items() <= node["labels"].items()
    assert node["labels"] == {realnode.REAL_NODE_LABEL: "real"}
    # no taint; the one kubelet change is the crash-loop backoff cap the local real node has too
    (patch,) = config["kubeadmConfigPatches"]
    assert yaml.safe_load(patch) == {
        "kind": "KubeletConfiguration",
        "crashLoopBackOff": {"maxContainerRestartPeriod": "1s"},
    }
    assert config["featureGates"] == {"KubeletCrashLoopBackOffMax": True}
    assert "taints" not in node


def test_the_pod_subnet_is_stated_and_apart_from_the_local_real_node_s() -> None:
    subnet = ipaddress.ip_network(kind_pod_subnet())

    assert subnet == ipaddress.ip_network("10.244.0.0/16")  # kind's default, written down for the tests
    assert not subnet.overlaps(ipaddress.ip_network(realnode.POD_CIDR))


def test_without_a_container_engine_kind_is_refused_in_one_line() -> None:
    assert kind.engine_problem({"PATH": "/nonexistent"}) == "kind needs a container engine, but `docker` is not on PATH"
    assert kind.engine_problem({"PATH": "/nonexistent", "KIND_EXPERIMENTAL_PROVIDER": "podman"}) == (
        "kind needs a container engine, but `podman` is not on PATH"
    )
