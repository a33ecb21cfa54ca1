"""The real node: containerd, kubelet, kube-proxy and CoreDNS on this host, joined to the local control plane.

Everything is started by hand with its own files under `<workdir>/node` (absolute paths everywhere: a relative
kubelet `--root-dir` fails):

- **containerd** (Debian's) with its own config, root, state and socket; the CRI plugin's `sandbox_image` is the
  locally built pause image (`images.pause_image`), so nothing is pulled; `restrict_oom_score_adj = true` because
  this kind of host refuses the sandbox's oom_score_adj of -998 (runc then fails with "can't get final child's PID
  from pipe: EOF").
- **CNI**: one bridge conflist (`cni0`, host-local IPAM on `POD_CIDR` with its data dir here, portmap).
- **kubelet** with its own node certificate (`system:node:<name>` in `system:nodes`), webhook authentication and
  authorization (the API server calls it with a client certificate bound to `system:kubelet-api-admin`), its own
  serving certificate, the label `REAL_NODE_LABEL=real` and the taint `REAL_NODE_TAINT`: pods land here only when
  they tolerate it, so the kwok-simulated suite keeps its pods on the kwok node.
- **kube-proxy** (iptables mode) so pods reach Services, the `kubernetes` Service (the API server) included.
- **CoreDNS** (when built) on the node IP behind the `kube-dns` Service at `CLUSTER_DNS_IP`.

One real node runs per host at a time (kube-proxy's chains, `cni0`, `/kubepods` and `/var/lib/kubelet` are
host-wide): `HOST_LOCK` records the running one; a second start fails naming it, and a stale record (a run that
died without its teardown) is torn down first. `teardown` removes everything the node left on the host: pod
processes and shims, mounts, cgroups, the bridge and veths, the `CNI-*` and `KUBE-*` iptables chains, the kubelet's
host directories, and the sysctls kubelet, kube-proxy and the bridge plugin changed. `leftovers` lists what is
still there (a test asserts it is empty after a stop).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torghut_localstack.procs import ProcessRecord, cmdline, start_time
from torghut_localstack.wait import WaitTimeout, wait_for

NODE_NAME = "real-node-0"
POD_CIDR = "10.245.0.0/16"
CLUSTER_DOMAIN = "cluster.local"
CLUSTER_DNS_IP = "10.0.0.10"
BRIDGE = "cni0"
CNI_BIN_DIR = Path("/usr/lib/cni")
REAL_NODE_LABEL = "torghut.proompteng.ai/node"
REAL_NODE_TAINT = {"key": REAL_NODE_LABEL, "value": "real", "effect": "NoSchedule"}
KUBELET_API_CLIENT = "kube-apiserver-kubelet-client"
KUBE_PROXY_USER = "system:kube-proxy"
COREDNS_USER = "torghut-coredns"
HOST_LOCK = Path("/run/torghut-localstack/real-node.json")

# Sysctls the kubelet (protectKernelDefaults false), kube-proxy and the bridge plugin may change; restored on stop.
SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)
# Host paths the kubelet, containerd and CNI use whatever their flags say; removed on stop if they were not there.
HOST_PATHS = (
    Path("/var/lib/kubelet"),
    Path("/var/log/containers"),
    Path("/var/log/pods"),
    Path("/var/lib/cni"),
    Path("/run/containerd"),
    Path("/opt/containerd"),
)
CGROUP_PARENT = "kubepods"
CHAIN_PREFIXES = ("KUBE-", "CNI-")
IPTABLES_TABLES = ("nat", "filter", "mangle", "raw")
_MNT_DETACH = 2
_TOOL_TIMEOUT_S = 30.0


class RealNodeError(RuntimeError):
    """The node could not start or stop cleanly; the message says what and, for a process, its last log lines."""


class HostBusy(RealNodeError):
    """Another real node runs on this host."""


def node_ip() -> str:
    """The host's primary IPv4 address (the source of its default route); `TORGHUT_NODE_IP` overrides it.

    Pods reach the API server and CoreDNS here, so it must not be a loopback address."""
    chosen = os.environ.get("TORGHUT_NODE_IP")
    if not chosen:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect(("198.51.100.1", 9))  # no packet is sent; the kernel only picks a route
                chosen = str(probe.getsockname()[0])
            except OSError as error:
                raise RealNodeError(
                    f"no default route to pick the node IP from ({error}); set TORGHUT_NODE_IP"
                ) from error
    if chosen.startswith("127."):
        raise RealNodeError(f"node IP {chosen} is a loopback address: pods could not reach it; set TORGHUT_NODE_IP")
    return chosen


def preflight() -> list[str]:
    """What this host lacks to run the node (empty: nothing), each with how to get it."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the real node needs root (containerd, mounts, cgroups, iptables)")
    tools = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "umoci", "skopeo")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    missing += [
        f"{CNI_BIN_DIR}/{plugin}"
        for plugin in ("bridge", "host-local", "portmap")
        if not (CNI_BIN_DIR / plugin).is_file()
    ]
    if missing:
        problems.append(f"missing {', '.join(missing)}: run cluster/install-debian-deps.sh (make deps)")
    return problems


@dataclass(frozen=True)
class NodeLayout:
    """Where the node keeps its files: everything under `root` (absolute)."""

    root: Path

    def __post_init__(self) -> None:
        if not self.root.is_absolute():
            raise ValueError(f"the node's root must be absolute, got {self.root}")

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd" / "config.toml"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_data_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def snapshot_file(self) -> Path:
        return self.root / "host-snapshot.json"

    def config(self, name: str) -> Path:
        return self.root / "config" / name


# -- configuration documents (pure) --------------------------------------------------------------------------------
def containerd_config(layout: NodeLayout, sandbox_image: str) -> str:
    """containerd 1.6's config (version 2): own root, state and socket; runc's state under ours, not /run."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{layout.containerd_root}"
state = "{layout.containerd_state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "{layout.containerd_socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{layout.root / "containerd" / "opt"}"

[{cri}]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{layout.containerd_state / "runc"}"

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{layout.cni_conf_dir}"
  max_conf_num = 1
"""


def cni_conflist(layout: NodeLayout) -> dict[str, Any]:
    """Bridge + host-local + portmap: pods on `POD_CIDR` behind `cni0`, masqueraded out, reachable from the host."""
    return {
        "cniVersion": "1.0.0",
        "name": "torghut-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.cni_data_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(
    layout: NodeLayout, *, ip: str, port: int, healthz_port: int, ca_cert: Path, dns: bool
) -> dict[str, Any]:
    """The kubelet's KubeletConfiguration: webhook authn/authz, cgroupfs, relaxed eviction and image GC."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": ip,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(layout.pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(layout.pki / "kubelet-serving.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "imageServiceEndpoint": f"unix://{layout.containerd_socket}",
        # containerd 1.6 does not report its cgroup driver; this host is cgroup v1 with a v2 hierarchy beside it.
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "podLogsDir": str(layout.pod_logs),
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [CLUSTER_DNS_IP] if dns else [],
        "resolvConf": "/etc/resolv.conf",
        "registerWithTaints": [REAL_NODE_TAINT],
        # A busy shared disk must not evict the tests' pods, nor image GC remove the imported images.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        # The e2e tier reads the operator's whole log (no secret may appear in it): no rotation within a run.
        "containerLogMaxSize": "500Mi",
        "maxPods": 110,
        # The e2e tier kills the operator's container (SIGKILL, as a node failure would) a dozen times a run; the
        # default crash-loop backoff (10 s doubling to 5 min) would turn each later restart into minutes of waiting.
        # Alpha in 1.33 (KEP-4603): restarts back off at most 1 s here.
        "featureGates": {"KubeletCrashLoopBackOffMax": True},
        "crashLoopBackOff": {"maxContainerRestartPeriod": "1s"},
    }


def kube_proxy_config(*, kubeconfig: Path, hostname: str, healthz_port: int, metrics_port: int) -> dict[str, Any]:
    """kube-proxy in iptables mode; conntrack sysctls and localhost NodePorts left alone (no host-wide sysctl)."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": hostname,
        "clusterCIDR": POD_CIDR,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": False, "syncPeriod": "30s", "minSyncPeriod": "0s"},
    }


def corefile(*, ip: str, port: int, health_port: int, ready_port: int, kubeconfig: Path) -> str:
    """CoreDNS answering for the cluster domain only (nothing leaves the machine, so no forwarding)."""
    return f""".:{port} {{
    bind {ip}
    errors
    health 127.0.0.1:{health_port}
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"""


def coredns_rbac() -> list[dict[str, Any]]:
    """What CoreDNS's kubernetes plugin reads, granted to its client certificate's user."""
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": COREDNS_USER},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        },
        _cluster_role_binding(COREDNS_USER, COREDNS_USER),
    ]


def kubelet_api_binding() -> dict[str, Any]:
    """The API server's kubelet client (logs, exec, port-forward) may use the kubelet API."""
    return _cluster_role_binding(KUBELET_API_CLIENT, "system:kubelet-api-admin")


def _cluster_role_binding(user: str, role: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": f"torghut-localstack:{user}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }


def dns_service(ip: str, port: int) -> list[dict[str, Any]]:
    """`kube-system/kube-dns` at CLUSTER_DNS_IP, its endpoint CoreDNS on the host (no selector: a manual slice)."""
    ports = [("dns", "UDP"), ("dns-tcp", "TCP")]
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            "spec": {
                "clusterIP": CLUSTER_DNS_IP,
                "ports": [{"name": name, "protocol": proto, "port": 53, "targetPort": port} for name, proto in ports],
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kube-dns-host",
                "namespace": "kube-system",
                "labels": {
                    "kubernetes.io/service-name": "kube-dns",
                    "endpointslice.kubernetes.io/managed-by": "torghut-localstack",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
            "ports": [{"name": name, "protocol": proto, "port": port} for name, proto in ports],
        },
    ]


# -- the host: what the node changes and how it is put back --------------------------------------------------------
def _run(argv: list[str], *, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=_TOOL_TIMEOUT_S, check=False)
    if check and done.returncode != 0:
        raise RealNodeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _read_sysctl(name: str) -> str | None:
    try:
        return _sysctl_path(name).read_text().strip()
    except OSError:
        return None


def _chains(binary: str, table: str) -> list[str]:
    out = _run([binary, "-w", "5", "-t", table, "-S"], check=False)
    return [line.split()[1] for line in out.splitlines() if line.startswith("-N ")]


def _our_chains(binary: str, table: str) -> list[str]:
    return [chain for chain in _chains(binary, table) if chain.startswith(CHAIN_PREFIXES)]


def _iptables_binaries() -> list[str]:
    return [binary for binary in ("iptables", "ip6tables") if shutil.which(binary)]


def _cgroup_mounts() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, named ones, and the unified v2 one)."""
    return [mount for mount, fstype in _mounts() if fstype in ("cgroup", "cgroup2")]


def _unescape(field_: str) -> str:
    return field_.encode().decode("unicode_escape") if "\\" in field_ else field_


def _mounts() -> list[tuple[Path, str]]:
    """(mount point, fs type) of this mount namespace, in mount order."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        found.append((Path(_unescape(left.split()[4])), right.split()[0]))
    return found


@dataclass(frozen=True)
class HostSnapshot:
    """The host before the node started: what teardown puts back, and what it may remove."""

    sysctls: dict[str, str]
    existing_paths: list[str]
    existing_chains: list[str]
    """`binary/table/chain` of KUBE-*/CNI-* chains that were already there (left alone)."""
    existing_cgroups: list[str]
    bridge_existed: bool

    @classmethod
    def take(cls) -> HostSnapshot:
        sysctls = {name: value for name in SYSCTLS if (value := _read_sysctl(name)) is not None}
        chains = [
            f"{binary}/{table}/{chain}"
            for binary in _iptables_binaries()
            for table in IPTABLES_TABLES
            for chain in _our_chains(binary, table)
        ]
        return cls(
            sysctls,
            [str(path) for path in HOST_PATHS if path.exists() or path.is_symlink()],
            chains,
            [str(mount / CGROUP_PARENT) for mount in _cgroup_mounts() if (mount / CGROUP_PARENT).is_dir()],
            Path(f"/sys/class/net/{BRIDGE}").exists(),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "sysctls": self.sysctls,
            "existing_paths": self.existing_paths,
            "existing_chains": self.existing_chains,
            "existing_cgroups": self.existing_cgroups,
            "bridge_existed": self.bridge_existed,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HostSnapshot:
        return cls(
            {str(k): str(v) for k, v in data["sysctls"].items()},
            [str(p) for p in data["existing_paths"]],
            [str(c) for c in data["existing_chains"]],
            [str(c) for c in data["existing_cgroups"]],
            bool(data["bridge_existed"]),
        )


@dataclass(frozen=True)
class HostClaim:
    """The host lock's content: whose node runs here, and the host as it was before.

    `owners`: the process that claimed the host, then the node's containerd; the claim is alive while any of them
    runs (`up` detaches and exits, containerd stays). The snapshot is kept here too, so a dead run's leftovers
    can be removed even when its work dir is gone."""

    root: str
    owners: tuple[ProcessRecord, ...]
    snapshot: HostSnapshot

    def alive(self) -> ProcessRecord | None:
        return next((owner for owner in self.owners if owner.is_running()), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "owners": [owner.to_json() for owner in self.owners],
            "snapshot": self.snapshot.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HostClaim:
        owners = tuple(ProcessRecord.from_json(owner) for owner in data["owners"])
        return cls(str(data["root"]), owners, HostSnapshot.from_json(data["snapshot"]))


def _this_process() -> ProcessRecord:
    pid = os.getpid()
    started = start_time(pid)
    assert started is not None
    return ProcessRecord("torghut-localstack", pid, cmdline(pid) or [], started)


def _read_claim() -> HostClaim | None:
    try:
        return HostClaim.from_json(json.loads(HOST_LOCK.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as error:  # being written by another start right now
        raise HostBusy(f"another real node is being started on this host ({HOST_LOCK}: {error})") from error


def claim_host(layout: NodeLayout) -> HostSnapshot:
    """Take the host for this node: refuse if another node's owner runs, tear a dead one's leftovers down, then
    snapshot the host and write the claim (created exclusively: two starts cannot both win). Returns the snapshot
    (also saved in the layout, for `teardown`)."""
    for _ in range(2):
        HOST_LOCK.parent.mkdir(parents=True, exist_ok=True)  # a stale claim's teardown removes it
        try:
            descriptor = os.open(HOST_LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            claim = _read_claim()
            if claim is None:
                continue
            owner = claim.alive()
            if owner is not None:
                raise HostBusy(
                    f"another real node runs on this host ({owner.name} pid {owner.pid}, files in {claim.root}); "
                    "one runs per host: stop it first (make cluster-down), or start this cluster without its real "
                    "node (real_node=False, --no-real-node)"
                ) from None
            teardown(NodeLayout(Path(claim.root)), claim.snapshot)
            HOST_LOCK.unlink(missing_ok=True)
            continue
        snapshot = HostSnapshot.take()
        with os.fdopen(descriptor, "w") as handle:
            handle.write(json.dumps(HostClaim(str(layout.root), (_this_process(),), snapshot).to_json()))
        layout.root.mkdir(parents=True, exist_ok=True)
        layout.snapshot_file.write_text(json.dumps(snapshot.to_json(), indent=2))
        return snapshot
    raise HostBusy(f"could not claim the host for the real node: {HOST_LOCK} keeps coming back")


def record_containerd(layout: NodeLayout, containerd: ProcessRecord) -> None:
    """Add the running containerd to the claim's owners: it keeps the claim alive after this process exits."""
    claim = _read_claim()
    if claim is None or claim.root != str(layout.root):
        raise RealNodeError(f"{HOST_LOCK} no longer names this node ({layout.root})")
    updated = HostClaim(claim.root, (*claim.owners, containerd), claim.snapshot)
    partial = HOST_LOCK.with_suffix(".tmp")
    partial.write_text(json.dumps(updated.to_json()))
    partial.replace(HOST_LOCK)


def _release_host(layout: NodeLayout) -> None:
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
        if HostClaim.from_json(json.loads(HOST_LOCK.read_text())).root == str(layout.root):
            HOST_LOCK.unlink()
            with contextlib.suppress(OSError):
                HOST_LOCK.parent.rmdir()


def _pod_pids() -> set[int]:
    pids: set[int] = set()
    for mount in _cgroup_mounts():
        parent = mount / CGROUP_PARENT
        if parent.is_dir():
            for procs in parent.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(line) for line in procs.read_text().split())
    return pids


def _shim_pids(layout: NodeLayout) -> set[int]:
    """containerd-shim processes of this node's containerd (their `-address` is our socket)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = cmdline(int(entry.name)) or []
            if argv and "containerd-shim" in argv[0] and str(layout.containerd_socket) in argv:
                pids.add(int(entry.name))
    return pids


def _shim_sockets(layout: NodeLayout) -> list[Path]:
    """The shims' sockets (`/run/containerd/s/<hash>`), named in each task bundle's `address` file."""
    sockets = []
    for address in (layout.containerd_state / "io.containerd.runtime.v2.task").glob("*/*/address"):
        with contextlib.suppress(OSError):
            sockets.append(Path(address.read_text().strip().removeprefix("unix://")))
    return sockets


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _all_gone(pids: set[int]) -> bool:
    return not any(_alive(pid) for pid in pids)


def _mounts_under(paths: list[Path]) -> list[Path]:
    found = [mount for mount, _ in _mounts() if any(mount == p or p in mount.parents for p in paths)]
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def _unmount(paths: list[Path]) -> list[str]:
    libc = ctypes.CDLL(None, use_errno=True)
    errors = []
    for _ in range(5):  # mounts stacked on one point come off one at a time
        mounts = _mounts_under(paths)
        if not mounts:
            return []
        for mount in mounts:
            if libc.umount2(str(mount).encode(), _MNT_DETACH) != 0:
                errors.append(f"umount {mount}: {os.strerror(ctypes.get_errno())}")
    return errors + [f"still mounted: {mount}" for mount in _mounts_under(paths)]


def _remove_cgroups(snapshot: HostSnapshot) -> list[str]:
    errors = []
    for mount in _cgroup_mounts():
        parent = mount / CGROUP_PARENT
        if not parent.is_dir() or str(parent) in snapshot.existing_cgroups:
            continue
        directories = sorted((p for p in parent.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for directory in [*directories, parent]:
            try:
                wait_for(
                    functools.partial(_rmdir, directory), timeout=10, what=f"rmdir {directory}", retry_on=(OSError,)
                )
            except WaitTimeout as error:
                errors.append(str(error))
    return errors


def _rmdir(directory: Path) -> bool:
    with contextlib.suppress(FileNotFoundError):
        directory.rmdir()
    return True


def _remove_links(snapshot: HostSnapshot) -> list[str]:
    errors = []
    bridge = Path(f"/sys/class/net/{BRIDGE}")
    if bridge.exists():
        for port in (bridge / "brif").iterdir() if (bridge / "brif").is_dir() else []:
            with contextlib.suppress(RealNodeError):
                _run(["ip", "link", "delete", port.name])
        if not snapshot.bridge_existed:
            try:
                _run(["ip", "link", "delete", BRIDGE])
            except RealNodeError as error:
                errors.append(str(error))
    return errors


def _remove_chains(snapshot: HostSnapshot) -> list[str]:
    """Delete the KUBE-*/CNI-* chains the node created: jumps to them first, then their rules, then the chains."""
    errors = []
    for binary in _iptables_binaries():
        for table in IPTABLES_TABLES:
            ours = [c for c in _our_chains(binary, table) if f"{binary}/{table}/{c}" not in snapshot.existing_chains]
            if not ours:
                continue
            for line in _run([binary, "-w", "5", "-t", table, "-S"], check=False).splitlines():
                parts = shlex.split(line)
                if parts[:1] == ["-A"] and parts[1] not in ours and _jumps_to(parts, ours):
                    with contextlib.suppress(RealNodeError):
                        _run([binary, "-w", "5", "-t", table, "-D", *parts[1:]])
            for chain in ours:
                _run([binary, "-w", "5", "-t", table, "-F", chain], check=False)
            for chain in ours:
                try:
                    _run([binary, "-w", "5", "-t", table, "-X", chain])
                except RealNodeError as error:
                    errors.append(str(error))
    return errors


def _jumps_to(rule: list[str], chains: list[str]) -> bool:
    return any(flag in ("-j", "-g") and target in chains for flag, target in itertools.pairwise(rule))


def _restore_sysctls(snapshot: HostSnapshot) -> list[str]:
    errors = []
    for name, value in snapshot.sysctls.items():
        if _read_sysctl(name) != value:
            try:
                _sysctl_path(name).write_text(value)
            except OSError as error:
                errors.append(f"restore {name}={value}: {error}")
    return errors


def _remove_host_paths(snapshot: HostSnapshot) -> list[str]:
    errors = []
    for path in HOST_PATHS:
        if str(path) not in snapshot.existing_paths and (path.exists() or path.is_symlink()):
            try:
                _rmtree(path)
            except OSError as error:
                errors.append(f"remove {path}: {error}")
    return errors


def _rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)


def load_snapshot(layout: NodeLayout) -> HostSnapshot:
    return HostSnapshot.from_json(json.loads(layout.snapshot_file.read_text()))


def teardown(layout: NodeLayout, snapshot: HostSnapshot | None = None) -> None:
    """Remove everything the node left on the host, after its processes (kubelet, containerd, ...) were stopped.
    `snapshot`: the host before the node (default: the one saved in the layout).

    Raises RealNodeError listing what could not be removed (after trying everything)."""
    snapshot = snapshot or load_snapshot(layout)
    sockets = _shim_sockets(layout)
    # Containers, then their shims: once no process holds a pod's network namespace and its bind mount is gone,
    # the kernel deletes the pod's veth pair.
    for find in (_pod_pids, lambda: _shim_pids(layout)):
        pids = find()
        _kill_all(pids)
        with contextlib.suppress(WaitTimeout):
            wait_for(functools.partial(_all_gone, pids), timeout=15, what="pod processes to exit")
    new_paths = [path for path in HOST_PATHS if str(path) not in snapshot.existing_paths]
    errors = _unmount([layout.root, *new_paths])
    for path in sockets:
        path.unlink(missing_ok=True)
    errors += _remove_cgroups(snapshot)
    errors += _remove_links(snapshot)
    errors += _remove_chains(snapshot)
    errors += _restore_sysctls(snapshot)
    errors += _remove_host_paths(snapshot)
    _release_host(layout)
    if errors:
        raise RealNodeError("the real node's teardown left things behind:\n" + "\n".join(errors))


def leftovers(layout: NodeLayout, snapshot: HostSnapshot) -> list[str]:
    """What the node left on the host that was not there before it started (empty after a clean teardown)."""
    found = [f"process {pid} in a pod cgroup" for pid in sorted(_pod_pids())]
    found += [f"containerd-shim pid {pid}" for pid in sorted(_shim_pids(layout))]
    new_paths = [path for path in HOST_PATHS if str(path) not in snapshot.existing_paths]
    found += [f"mount {mount}" for mount in _mounts_under([layout.root, *new_paths])]
    found += [
        f"cgroup {mount / CGROUP_PARENT}"
        for mount in _cgroup_mounts()
        if (mount / CGROUP_PARENT).exists() and str(mount / CGROUP_PARENT) not in snapshot.existing_cgroups
    ]
    if not snapshot.bridge_existed and Path(f"/sys/class/net/{BRIDGE}").exists():
        found.append(f"bridge {BRIDGE}")
    found += [f"veth {link.name}" for link in Path("/sys/class/net").iterdir() if link.name.startswith("veth")]
    found += [
        f"iptables chain {key}"
        for binary in _iptables_binaries()
        for table in IPTABLES_TABLES
        for chain in _our_chains(binary, table)
        if (key := f"{binary}/{table}/{chain}") not in snapshot.existing_chains
    ]
    found += [
        f"sysctl {name}={_read_sysctl(name)} (was {value})"
        for name, value in snapshot.sysctls.items()
        if _read_sysctl(name) != value
    ]
    found += [f"path {path}" for path in new_paths if path.exists() or path.is_symlink()]
    with contextlib.suppress(FileNotFoundError):
        if HostClaim.from_json(json.loads(HOST_LOCK.read_text())).root == str(layout.root):
            found.append(f"host claim {HOST_LOCK}")
    return found
