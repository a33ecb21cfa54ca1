"""`torghut-localstack` (or `python -m torghut_localstack`): the local cluster from the shell.

    up      build/verify the binaries, start the cluster (control plane, kwok node, real node) detached,
            print KUBECONFIG
    status  are the recorded components still running, is the API server ready
    smoke   a Deployment becomes Available and a Job completes on the running cluster (kwok and real node)
    down    stop exactly the recorded processes, remove what the real node left on the host, remove the state

State lives in `$TORGHUT_LOCALSTACK_DIR` (default `<repo>/.local/cluster`): `state.json` with
each component's PID, command line and start time, and `run/` (certificates, kubeconfig,
etcd data, logs, the real node's files). `down` only signals a PID whose command line and start time still
match, then runs the real node's teardown (`realnode.teardown`: pods, mounts, cgroups, bridge, iptables chains,
sysctls) from the snapshot it took of the host at `up`. `up --no-real-node` leaves the real node out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from torghut_localstack.binaries import ensure_binaries
from torghut_localstack.cluster import ClusterError, LocalCluster
from torghut_localstack.images import busybox_image
from torghut_localstack.kubectl import Kubectl, KubectlError
from torghut_localstack.procs import ProcessRecord, deferred_signals
from torghut_localstack.realnode import NodeLayout, RealNodeError, teardown
from torghut_localstack.smoke import run_smoke

REPO_ROOT = Path(__file__).resolve().parents[2]
STATE_VERSION = 1


@dataclass(frozen=True)
class State:
    """What `up` leaves behind for `status`, `smoke` and `down`."""

    kubeconfig: Path
    bin_dir: Path
    server: str
    started_at: str
    processes: list[ProcessRecord]
    node_root: Path | None = None
    """The real node's files (None: started without it); `down` tears the node down from there."""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "kubeconfig": str(self.kubeconfig),
            "bin_dir": str(self.bin_dir),
            "server": self.server,
            "started_at": self.started_at,
            "processes": [record.to_json() for record in self.processes],
            "node_root": str(self.node_root) if self.node_root else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        return cls(
            Path(data["kubeconfig"]),
            Path(data["bin_dir"]),
            str(data["server"]),
            str(data["started_at"]),
            [ProcessRecord.from_json(item) for item in data["processes"]],
            Path(data["node_root"]) if data.get("node_root") else None,
        )


def state_dir() -> Path:
    return Path(os.environ.get("TORGHUT_LOCALSTACK_DIR") or REPO_ROOT / ".local" / "cluster")


def _state_file() -> Path:
    return state_dir() / "state.json"


def _run_dir() -> Path:
    return state_dir() / "run"


def load_state() -> State | None:
    try:
        return State.from_json(json.loads(_state_file().read_text()))
    except FileNotFoundError:
        return None


def _say(message: str) -> None:
    print(message, flush=True)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _stop_recorded(state: State) -> bool:
    """Stop the recorded processes, then tear the real node down; False if the teardown left something."""
    for record in reversed(state.processes):
        if record.stop():
            _say(f"stopped {record.name} (pid {record.pid})")
        else:
            _say(f"{record.name} (pid {record.pid}) was not running (or the PID is no longer it): left alone")
    if state.node_root is None or not NodeLayout(state.node_root).snapshot_file.exists():
        return True
    try:
        teardown(NodeLayout(state.node_root))
    except RealNodeError as error:
        _say(str(error))
        return False
    _say("removed what the real node left on the host (pods, mounts, cgroups, cni0, iptables chains, sysctls)")
    return True


def _remove_state() -> None:
    shutil.rmtree(_run_dir(), ignore_errors=True)
    _state_file().unlink(missing_ok=True)
    directory = state_dir()
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


def cmd_up(args: argparse.Namespace) -> int:
    state = load_state()
    if state is not None:
        if all(record.is_running() for record in state.processes):
            _say(f"already up: export KUBECONFIG={state.kubeconfig}")
            return 0
        _say("found a stale state; cleaning it up first")
        _stop_recorded(state)
        _remove_state()

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    started = time.monotonic()
    bin_dir = ensure_binaries(on_line=lambda line: _say(f"  {line}"))
    build_s = time.monotonic() - started

    shutil.rmtree(_run_dir(), ignore_errors=True)
    cluster = LocalCluster(
        bin_dir, _run_dir(), real_node=args.real_node, die_with_parent=False, log=lambda line: _say(f"  {line}")
    )
    _say(f"starting the control plane in {_run_dir()} ...")
    try:
        cluster.start()
    except KeyboardInterrupt:
        _say("interrupted: every component started so far was stopped")
        _remove_state()
        return 130
    except ClusterError as error:
        _say(f"cluster failed to start (all its processes were stopped):\n{error}")
        _say(f"logs: {cluster.logs_dir}")
        return 1
    with deferred_signals():
        state = State(
            cluster.kubeconfig,
            bin_dir,
            cluster.server,
            datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            cluster.detach(),
            cluster.node_layout.root if args.real_node else None,
        )
        _state_file().write_text(json.dumps(state.to_json(), indent=2) + "\n")
    _say(f"binaries: {build_s:.1f}s; cluster start: {cluster.timings['total']:.1f}s")
    _say(f"API server {cluster.server}; logs in {cluster.logs_dir}")
    _say(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


def cmd_down(_args: argparse.Namespace) -> int:
    state = load_state()
    if state is None:
        _say("no cluster recorded; nothing to stop")
    elif not _stop_recorded(state):
        _say(f"state kept in {state_dir()} so that `down` can try again")
        return 1
    _remove_state()
    return 0


def cmd_status(_args: argparse.Namespace) -> int:
    state = load_state()
    if state is None:
        _say("down (no state)")
        return 1
    healthy = True
    for record in state.processes:
        running = record.is_running()
        healthy &= running
        _say(f"{record.name:<24} pid {record.pid:<8} {'running' if running else 'NOT RUNNING'}")
    if healthy:
        kubectl = Kubectl(state.bin_dir / "kubectl", state.kubeconfig, timeout=15)
        try:
            _say(f"API server {state.server} /readyz: {kubectl('get', '--raw', '/readyz').strip()}")
            _say(kubectl("get", "nodes").rstrip())
        except KubectlError as error:
            _say(str(error))
            healthy = False
    _say(f"started at {state.started_at}; export KUBECONFIG={state.kubeconfig}")
    return 0 if healthy else 1


def cmd_smoke(_args: argparse.Namespace) -> int:
    state = load_state()
    if state is None:
        _say("no cluster is up: run `torghut-localstack up` first")
        return 1
    kubectl = Kubectl(state.bin_dir / "kubectl", state.kubeconfig)
    started = time.monotonic()
    image = busybox_image().reference if state.node_root is not None else None
    run_smoke(kubectl, log=lambda line: _say(f"  {line}"), real_node_image=image)
    _say(f"smoke passed in {time.monotonic() - started:.1f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="torghut-localstack", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler, text in (
        ("up", cmd_up, "build/verify the binaries and start the cluster detached"),
        ("down", cmd_down, "stop the recorded processes and remove the state"),
        ("status", cmd_status, "show the recorded processes and API server readiness"),
        ("smoke", cmd_smoke, "a Deployment becomes Available and a Job completes (and one on the real node)"),
    ):
        command = commands.add_parser(name, help=text)
        command.set_defaults(handler=handler)
        if name == "up":
            command.add_argument(
                "--no-real-node",
                dest="real_node",
                action="store_false",
                help="leave out the real node (containerd, kubelet, kube-proxy, CoreDNS); kwok's node only",
            )
    args = parser.parse_args(argv)
    try:
        result: int = args.handler(args)
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
