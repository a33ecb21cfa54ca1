"""The real node's configuration documents: absolute paths under the node's own root, the settings this kind of
host needs (restrict_oom_score_adj, cgroupfs, no cgroup-v1 failure), webhook auth on the kubelet, a taint that keeps
the kwok-simulated suite off the node, and the iptables parsing the teardown relies on."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from torghut_localstack import realnode, workloads
from torghut_localstack.procs import ProcessRecord
from torghut_localstack.realnode import HostSnapshot, NodeLayout

pytestmark = pytest.mark.unit

ROOT = Path("/srv/run/node")
LAYOUT = NodeLayout(ROOT)


def _paths(value: object) -> list[str]:
    if isinstance(value, dict):
        return [p for item in value.values() for p in _paths(item)]
    if isinstance(value, list):
        return [p for item in value for p in _paths(item)]
    return [value] if isinstance(value, str) and value.startswith("/") else []


def test_the_layout_refuses_a_relative_root() -> None:
    with pytest.raises(ValueError, match="absolute"):
        NodeLayout(Path("run/node"))


def test_containerd_keeps_its_state_under_the_node_root_and_never_pulls_the_sandbox() -> None:
    config = tomllib.loads(realnode.containerd_config(LAYOUT, "localhost/torghut-pause:abc"))
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]

    assert config["version"] == 2
    assert cri["sandbox_image"] == "localhost/torghut-pause:abc"
    assert cri["restrict_oom_score_adj"] is True
    assert cri["netns_mounts_under_state_dir"] is True
    runc = cri["containerd"]["runtimes"]["runc"]["options"]
    assert runc == {"SystemdCgroup": False, "Root": str(LAYOUT.containerd_state / "runc")}
    assert cri["cni"]["conf_dir"] == str(LAYOUT.cni_conf_dir)
    owned = [p for p in _paths(config) if p != str(realnode.CNI_BIN_DIR)]
    assert owned
    assert all(Path(p).is_relative_to(ROOT) for p in owned), owned


def test_the_cni_bridge_keeps_its_leases_under_the_node_root() -> None:
    bridge, portmap = realnode.cni_conflist(LAYOUT)["plugins"]

    assert bridge["bridge"] == realnode.BRIDGE
    assert bridge["ipam"]["dataDir"] == str(LAYOUT.cni_data_dir)
    assert bridge["ipam"]["ranges"] == [[{"subnet": realnode.POD_CIDR}]]
    assert portmap["type"] == "portmap"


def test_the_kubelet_authenticates_and_authorizes_by_webhook_and_is_tainted() -> None:
    config = realnode.kubelet_config(
        LAYOUT, ip="192.0.2.2", port=20250, healthz_port=20248, ca_cert=Path("/srv/run/pki/ca.crt"), dns=True
    )

    assert config["authentication"]["anonymous"] == {"enabled": False}
    assert config["authentication"]["webhook"] == {"enabled": True}
    assert config["authorization"] == {"mode": "Webhook"}
    assert config["readOnlyPort"] == 0
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["failCgroupV1"] is False
    assert config["clusterDNS"] == [realnode.CLUSTER_DNS_IP]
    assert config["registerWithTaints"] == [realnode.REAL_NODE_TAINT]
    assert config["containerRuntimeEndpoint"] == f"unix://{LAYOUT.containerd_socket}"
    # a container the e2e tier kills comes back within a second, however often it was killed before
    assert config["featureGates"] == {"KubeletCrashLoopBackOffMax": True}
    assert config["crashLoopBackOff"] == {"maxContainerRestartPeriod": "1s"}
    assert all(Path(p).is_absolute() for p in _paths(config))


def test_kube_proxy_leaves_the_hosts_conntrack_and_localnet_sysctls_alone() -> None:
    config = realnode.kube_proxy_config(
        kubeconfig=Path("/k"), hostname=realnode.NODE_NAME, healthz_port=1, metrics_port=2
    )

    assert config["mode"] == "iptables"
    assert config["conntrack"]["maxPerCore"] == 0
    assert config["iptables"]["localhostNodePorts"] is False


def test_the_dns_service_points_at_coredns_on_the_host() -> None:
    service, endpoints = realnode.dns_service("192.0.2.2", 5353)

    assert service["spec"]["clusterIP"] == realnode.CLUSTER_DNS_IP
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {5353}
    assert endpoints["endpoints"] == [{"addresses": ["192.0.2.2"], "conditions": {"ready": True}}]
    assert endpoints["metadata"]["labels"]["kubernetes.io/service-name"] == "kube-dns"


@pytest.mark.parametrize(
    ("rule", "jumps"),
    [
        (["-A", "POSTROUTING", "-s", "10.245.0.7/32", "-j", "CNI-abc"], True),
        (["-A", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"], True),
        (["-A", "POSTROUTING", "-g", "CNI-abc"], True),
        (["-A", "POSTROUTING", "-j", "MASQUERADE"], False),
        (["-A", "INPUT", "-m", "comment", "--comment", "CNI-abc", "-j", "ACCEPT"], False),
    ],
)
def test_the_teardown_finds_the_jumps_into_the_nodes_chains(rule: list[str], jumps: bool) -> None:
    assert realnode._jumps_to(rule, ["CNI-abc", "KUBE-SERVICES"]) is jumps


def test_the_host_snapshot_survives_a_round_trip_through_json() -> None:
    snapshot = HostSnapshot(
        {"net.ipv4.ip_forward": "0"},
        ["/run/containerd"],
        ["iptables/nat/KUBE-X"],
        ["/sys/fs/cgroup/cpu/kubepods"],
        True,
    )

    assert HostSnapshot.from_json(snapshot.to_json()) == snapshot


def test_a_workload_on_the_real_node_tolerates_its_taint_and_never_pulls() -> None:
    job = workloads.on_real_node(workloads.job("j"), image="localhost/torghut-busybox:abc")
    pod = job["spec"]["template"]["spec"]

    assert pod["nodeSelector"] == {realnode.REAL_NODE_LABEL: "real"}
    assert pod["tolerations"] == [{**realnode.REAL_NODE_TAINT, "operator": "Equal"}]
    assert pod["containers"][0]["image"] == "localhost/torghut-busybox:abc"
    assert pod["containers"][0]["imagePullPolicy"] == "Never"


@pytest.fixture
def host_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    lock = tmp_path / "run" / "real-node.json"
    monkeypatch.setattr(realnode, "HOST_LOCK", lock)
    monkeypatch.setattr(HostSnapshot, "take", classmethod(lambda cls: HostSnapshot({}, [], [], [], False)))
    return lock


def test_a_second_node_on_the_host_is_refused_while_the_first_ones_owner_runs(host_lock: Path, tmp_path: Path) -> None:
    realnode.claim_host(NodeLayout(tmp_path / "first"))

    with pytest.raises(realnode.HostBusy, match=r"another real node runs on this host .* files in .*first"):
        realnode.claim_host(NodeLayout(tmp_path / "second"))


def test_a_dead_nodes_claim_is_torn_down_before_the_host_is_claimed_again(
    host_lock: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = ProcessRecord("containerd", 999_999, ["containerd"], 1)
    snapshot = HostSnapshot({"net.ipv4.ip_forward": "0"}, [], [], [], False)
    host_lock.parent.mkdir(parents=True)
    host_lock.write_text(json.dumps(realnode.HostClaim(str(tmp_path / "old"), (dead,), snapshot).to_json()))
    torn_down: list[tuple[Path, HostSnapshot | None]] = []
    monkeypatch.setattr(realnode, "teardown", lambda layout, snap=None: torn_down.append((layout.root, snap)))

    realnode.claim_host(NodeLayout(tmp_path / "new"))

    assert torn_down == [(tmp_path / "old", snapshot)]
    claim = realnode.HostClaim.from_json(json.loads(host_lock.read_text()))
    assert claim.root == str(tmp_path / "new")
