"""A whole Torghut world on one machine, for the demo and the benchmark.

    with World(log=print) as world:           # or World(cluster="kind")
        world.kubectl.apply(rollout, namespace=world.namespace)

`start()` brings up, in order (each step timed in `timings`):

1. the cluster: the embedded control plane (`local`, default) or a kind cluster from `kind-config.yaml`
   (`kind`, needs a container engine: without one the start fails at once with one line);
2. PostgreSQL 15 with a Torghut-like database `torghut` in schema state `schema_state` (`torghut_db`): `head`
   (default: the newest schema, adapters NOT NULL DEFAULT 'unknown', the research tables of migration 0026 on
   which `torghut_app` holds nothing) or `checklist` (before migration 0007: no privilege of `torghut_app` on
   any `research_*` table, no promotion audit columns), owned by the runtime role `torghut_app` as
   CloudNativePG sets it up, and a day-old history of fills whose route columns were never backfilled (NULL,
   or 'unknown' at head);
3. Prometheus;
4. the CRD (server-side apply, waited Established), namespace `torghut` with the Secret `torghut-db-app`
   (key `uri`: the app DSN), the Deployment `torghut` (container `torghut`, `OLD_IMAGE`, env
   `TRADING_MODE=paper`) and the route/grant SQL pack ConfigMap;
5. the Torghut simulator, writing as `torghut_app` and following the Deployment, scraped by Prometheus: with
   `operator_in_cluster`, the Deployment `torghut` runs the simulator's image itself (built without Docker, on the
   real node, Ready through `GET /healthz`, behind the Service `torghut`; a rollout deploys the same image pinned
   by its digest), otherwise a host process following a pause Deployment;
6. the operator: with `operator_in_cluster` (the demo), in the cluster from its image on the real node
   (`incluster.ClusterOperator`: the image built without Docker or found in the cache, imported, installed by
   `kubectl apply -k` of an overlay on manifests/overlays/local), with Postgres, Prometheus and the simulator
   listening on the address pods reach this host at and the target's pods on the real node; otherwise (`make
   bench`, which reads its CPU and memory from /proc) as a host process (`python -m torghut_operator run`).

`stop()` (or leaving the `with` block, Ctrl-C included) stops everything in reverse order; every child
process also gets a kernel signal should this process die, so nothing is left behind.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, TypeVar

from psycopg import sql

from torghut_localstack import imagebuild, images, incluster, kind, realnode, sql_pack, torghut_db, workloads
from torghut_localstack.binaries import ensure_binaries
from torghut_localstack.cluster import LocalCluster
from torghut_localstack.kubectl import Kubectl, KubectlError
from torghut_localstack.ports import HOST, free_port
from torghut_localstack.postgres import PostgresServer
from torghut_localstack.procs import ManagedProcess, start_process
from torghut_localstack.prometheus import PrometheusServer
from torghut_localstack.simulator import FollowTarget, TorghutSimulator
from torghut_localstack.wait import WaitTimeout, wait_for

__all__ = [
    "APP_SECRET_KEY",
    "APP_SECRET_NAME",
    "CRD",
    "DATABASE",
    "KIND_CONFIG",
    "NAMESPACE",
    "NEW_IMAGE",
    "OLD_IMAGE",
    "ClusterMode",
    "OperatorProcess",
    "World",
    "WorldError",
    "target_deployment",
]

REPO: Final = Path(__file__).resolve().parents[2]
CRD: Final = REPO / "crds" / "torghutrollouts.yaml"
CRD_NAME: Final = "torghutrollouts.torghut.proompteng.ai"
KIND_CONFIG: Final = kind.KIND_CONFIG

NAMESPACE: Final = "torghut"
OPERATOR_NAMESPACE: Final = "torghut-rollout-system"
OPERATOR_DEPLOYMENT: Final = "torghut-rollout-operator"
TARGET: Final = "torghut"
CONTAINER: Final = "torghut"
DATABASE: Final = "torghut"
APP_SECRET_NAME: Final = "torghut-db-app"  # noqa: S105 - a Secret's name, not a password
APP_SECRET_KEY: Final = "uri"  # noqa: S105 - a key name

OLD_IMAGE: Final = workloads.PAUSE_IMAGE_PREVIOUS
"""What the Deployment runs before a rollout: a real, small image, so kind runs the same world."""
PAUSE_DIGEST: Final = "sha256:ee6521f290b2168b6e0935a181d4cff9be1ac3f505666ef0e3c98fae8199917a"
NEW_IMAGE: Final = f"{workloads.PAUSE_IMAGE}@{PAUSE_DIGEST}"
"""The image a rollout deploys, pinned by digest as a Torghut release is (registry.k8s.io/pause:3.10)."""

HISTORY_FILLS: Final = 120
"""Fills from before route provenance (route columns NULL, markers in raw_order), a day old."""

_T = TypeVar("_T")

ClusterMode = Literal["local", "kind"]
CLUSTER_MODES: Final[tuple[str, ...]] = ("local", "kind")


class WorldError(RuntimeError):
    """The world could not be built; the message is one line a user can act on."""


def _ignore(_line: str) -> None:
    pass


def target_deployment(
    image: str = OLD_IMAGE, *, name: str = TARGET, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Torghut's Deployment: container `torghut` running `image`, in paper trading mode by default."""
    deployment = workloads.deployment(name, image=image)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["name"] = CONTAINER
    container["env"] = [{"name": k, "value": v} for k, v in (env or {"TRADING_MODE": "paper"}).items()]
    return deployment


SIM_PORT: Final = 8181
"""Where the simulator listens in its container (and its Service's port)."""


def simulator_target(
    image: str,
    namespace: str,
    *,
    env: Mapping[str, str] | None = None,
    expected_heads: Sequence[str] = (),
    tick_seconds: float = 0.5,
) -> dict[str, Any]:
    """Torghut's Deployment running the simulator's image, as the service runs: on the real node, `DB_DSN` from the
    app Secret, Ready through `GET /healthz`, and reporting as its build the image its own Deployment declares
    (`--follow-deployment`, which needs `follower_rbac`)."""
    deployment = workloads.on_real_node(target_deployment(image, env=env))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container.pop("command", None)
    container["args"] = [
        "--host=0.0.0.0",
        f"--port={SIM_PORT}",
        f"--tick-seconds={tick_seconds}",
        f"--follow-deployment={namespace}/{TARGET}/{CONTAINER}",
        *([f"--expected-heads={','.join(expected_heads)}"] if expected_heads else []),
    ]
    container["env"].append(
        {"name": "DB_DSN", "valueFrom": {"secretKeyRef": {"name": APP_SECRET_NAME, "key": APP_SECRET_KEY}}}
    )
    container["ports"] = [{"name": "http", "containerPort": SIM_PORT}]
    container["readinessProbe"] = {
        "httpGet": {"path": "/healthz", "port": SIM_PORT},
        "periodSeconds": 1,
        "failureThreshold": 2,
    }
    return deployment


def follower_rbac(namespace: str) -> list[dict[str, Any]]:
    """The simulator reads its own Deployment (`--follow-deployment`) as the namespace's default account."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "sim-follow"},
        "rules": [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "sim-follow"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "sim-follow"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}],
    }
    return [role, binding]


def crd_established(crd: Mapping[str, Any] | None) -> bool:
    found = workloads.condition(crd, "Established") if crd is not None else None
    return found is not None and found.get("status") == "True"


def app_secret(dsn: str) -> dict[str, Any]:
    """The CloudNativePG-style app Secret; the operator reads key `uri` and never logs it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": APP_SECRET_NAME},
        "type": "Opaque",
        "stringData": {APP_SECRET_KEY: dsn},
    }


# --------------------------------------------------------------------------------------------------
# The operator process


class OperatorProcess:
    """`python -m torghut_operator run` as a child process with its liveness endpoint and metrics port.

    Restartable (`start` after `stop`/`kill`); each start logs to `operator-<n>.log` in `log_dir`.
    """

    def __init__(
        self,
        kubeconfig: Path,
        log_dir: Path,
        *,
        verbose: bool = False,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 90.0,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.verbose = verbose
        self.extra_env = dict(env or {})
        self.start_timeout = start_timeout
        self.liveness_port = 0
        self.metrics_port = 0
        self._process: ManagedProcess | None = None
        self._starts = 0

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("operator not started")
        return self._process.pid

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self._starts}.log"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.metrics_port}/metrics"

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def start(self) -> OperatorProcess:
        if self.running():
            raise RuntimeError("operator already running")
        self._starts += 1
        self.liveness_port, self.metrics_port = free_port(), free_port()
        liveness = f"http://{HOST}:{self.liveness_port}/healthz"
        argv = [sys.executable, "-m", "torghut_operator", "run", "--liveness", liveness, "--log-format", "full"]
        if self.verbose:
            argv.append("--verbose")
        env = {
            **os.environ,
            **self.extra_env,
            "KUBECONFIG": str(self.kubeconfig),
            "TORGHUT_OPERATOR_METRICS_PORT": str(self.metrics_port),
            "PYTHONUNBUFFERED": "1",
        }
        process = self._process = start_process("torghut-operator", argv, log_path=self.log_path, env=env)

        def healthy() -> bool:
            if not process.running():
                raise WorldError(f"the operator exited with code {process.popen.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(liveness, timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        try:
            wait_for(
                healthy, timeout=self.start_timeout, interval=0.25, what=f"operator liveness {liveness}", retry_on=()
            )
        except WaitTimeout as error:
            self.stop()
            raise WorldError(
                f"the operator did not become live within {self.start_timeout:.0f}s; see {self.log_path}"
            ) from error
        return self

    def stop(self) -> None:
        """SIGTERM (Kopf stops its daemons), SIGKILL after 20 s. Safe to call twice."""
        if self._process is not None:
            self._process.stop(timeout=20.0)

    def kill(self) -> None:
        """SIGKILL, as when a node dies."""
        if self._process is not None and self._process.running():
            self._process.stop_signal = signal.SIGKILL
            self._process.stop(timeout=10.0)

    def peak_rss_kib(self) -> int | None:
        """VmHWM of the process (its peak resident memory), in KiB; None if it is gone."""
        return _proc_status_kib(self.pid, "VmHWM")

    def rss_kib(self) -> int | None:
        return _proc_status_kib(self.pid, "VmRSS")

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the process used so far; None if it is gone."""
        try:
            raw = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        fields = raw[raw.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def tail(self, lines: int = 40) -> str:
        return self._process.tail(lines) if self._process is not None else ""

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("operator-*.log")))


def _proc_status_kib(pid: int, field: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return None


# --------------------------------------------------------------------------------------------------
# Watching the API


WATCH_REQUEST_TIMEOUT: Final = (5.0, 75.0)
"""(connect, read) seconds of a list or watch request; the read bound exceeds a watch's own timeout."""


@dataclass(frozen=True)
class WatchEvent:
    """One object as a watch delivered it: `at` is `time.time()` when it was received."""

    at: float
    type: str
    """ADDED, MODIFIED, DELETED, or EXISTING for the objects of the initial list."""
    obj: dict[str, Any]


def kube_client(kubeconfig: Path) -> Any:
    """A `kubernetes.client.ApiClient` for `kubeconfig` (close it when done)."""
    from kubernetes import config  # noqa: PLC0415 - heavy; only watchers need it

    loader: Any = config.new_client_from_config  # the client's own annotations are partial
    return loader(config_file=str(kubeconfig))


def watch(list_fn: Callable[..., Any], *args: Any, deadline: float, **kwargs: Any) -> Iterator[WatchEvent]:
    """List, then watch from that list's resourceVersion until `deadline` (`time.monotonic()`).

    `list_fn` is a list method of the `kubernetes` client (e.g. `CoreV1Api(c).list_namespaced_config_map`) and
    `args`/`kwargs` its arguments (namespace, selectors). Objects come as the API's JSON (camelCase dicts). A
    watch that expires (410 Gone) lists again and yields the current objects as EXISTING.
    """
    from kubernetes import watch as k8s_watch  # noqa: PLC0415
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    class RawWatch(k8s_watch.Watch):
        """Events as the API's JSON only: the client would also build a model of every object (a JSON dump and a
        walk of the model classes per event), CPU a benchmark's recorder takes from what it measures."""

        def get_return_type(self, func: Any) -> None:
            return None

    while time.monotonic() < deadline:
        response = list_fn(*args, _request_timeout=WATCH_REQUEST_TIMEOUT, _preload_content=False, **kwargs)
        try:
            listing = json.loads(response.data)
        finally:
            response.release_conn()
        received = time.time()
        version = str(listing["metadata"]["resourceVersion"])
        for item in listing.get("items") or []:
            yield WatchEvent(received, "EXISTING", item)
        expired = False
        while not expired and (remaining := deadline - time.monotonic()) > 0:
            stream: Any = RawWatch()  # type: ignore[no-untyped-call]  # the client's own annotations are partial
            try:
                for event in stream.stream(
                    list_fn,
                    *args,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=max(1, int(min(60.0, remaining))),
                    _request_timeout=WATCH_REQUEST_TIMEOUT,
                    **kwargs,
                ):
                    obj = event["raw_object"]
                    version = str(obj.get("metadata", {}).get("resourceVersion") or version)
                    if event["type"] != "BOOKMARK":
                        yield WatchEvent(time.time(), str(event["type"]), obj)
                    if time.monotonic() >= deadline:
                        return
            except ApiException as error:
                if error.status != 410:
                    raise
                expired = True
            finally:
                stream.stop()


# --------------------------------------------------------------------------------------------------
# kind


@contextmanager
def kind_cluster(bin_dir: Path, workdir: Path) -> Iterator[kind.KindCluster]:
    """A kind cluster from kind-config.yaml for the block, deleted afterwards."""
    try:
        with kind.cluster(bin_dir, workdir, prefix="torghut-demo") as created:
            yield created
    except kind.KindError as error:
        first, newline, rest = str(error).partition("\n")
        hint = "; run without --cluster kind to use the embedded control plane"
        raise WorldError(f"{first}{hint}{newline}{rest}") from error


# --------------------------------------------------------------------------------------------------
# The world


@dataclass(frozen=True)
class Database:
    """The Torghut database: `admin_dsn` (superuser, for fixtures) and `app_dsn` (torghut_app, in the Secret)."""

    name: str
    admin_dsn: str
    app_dsn: str
    app_password: str


class World:
    """Cluster, Postgres, Prometheus, the simulator and the operator; see the module docstring.

    `workdir`: None → a temp dir, removed on a clean `stop()` and kept (for its logs) after a failure.
    `namespace`: where the Torghut target lives. `tick_seconds`: the simulator's trading-loop period.
    `target_env`: the env of Torghut's container (default `TRADING_MODE=paper`).
    `schema_state`: the Torghut database's schema, `head` (default) or `checklist` (see `torghut_db`).
    `operator_env`: extra environment for the operator process.
    `real_node`: the local cluster starts its real node (containerd, kubelet, ...); False where one already runs on
    this host (one per host), e.g. the demo started from inside the e2e session.
    `operator_in_cluster`: the operator runs in the cluster from its image, the target's pods on the real node
    (needs the real node, or kind); otherwise the operator is a host process and the target's pods kwok's.
    """

    def __init__(
        self,
        *,
        cluster: ClusterMode = "local",
        workdir: Path | None = None,
        namespace: str = NAMESPACE,
        tick_seconds: float = 0.5,
        target_env: Mapping[str, str] | None = None,
        operator_verbose: bool = False,
        operator_env: Mapping[str, str] | None = None,
        schema_state: torghut_db.SchemaState = "head",
        real_node: bool = True,
        operator_in_cluster: bool = False,
        log: Callable[[str], None] = _ignore,
    ) -> None:
        if cluster not in CLUSTER_MODES:
            raise WorldError(f"unknown cluster {cluster!r}: use one of {', '.join(CLUSTER_MODES)}")
        if operator_in_cluster and cluster == "local" and not real_node:
            raise WorldError("the operator can run in the cluster only on a real node: drop --no-real-node")
        self.operator_in_cluster = operator_in_cluster
        self.old_image: str = OLD_IMAGE
        """What Torghut's Deployment runs before a rollout (in the cluster: the simulator's image)."""
        self.new_image: str = NEW_IMAGE
        """The image a rollout deploys (in the cluster: the simulator's image pinned by its own digest)."""
        self.cluster_mode: ClusterMode = cluster
        self.schema_state: torghut_db.SchemaState = schema_state
        self.real_node = real_node
        self.namespace = namespace
        self.tick_seconds = tick_seconds
        self.target_env = dict(target_env or {"TRADING_MODE": "paper"})
        self.operator_verbose = operator_verbose
        self.operator_env = dict(operator_env or {})
        self._log = log
        self._workdir = workdir
        self._owns_workdir = workdir is None
        self._stack: ExitStack | None = None
        self.timings: dict[str, float] = {}
        self._kubeconfig: Path | None = None
        self._kubectl: Kubectl | None = None
        self._postgres: PostgresServer | None = None
        self._prometheus: PrometheusServer | None = None
        self._simulator: TorghutSimulator | None = None
        self._service_url: str | None = None
        self._operator: OperatorProcess | incluster.ClusterOperator | None = None
        self._database: Database | None = None
        self._local: LocalCluster | None = None
        self._kind: kind.KindCluster | None = None
        self._host = HOST
        """Where Postgres, Prometheus and the simulator listen: 127.0.0.1, or where pods reach this host."""
        self._host_clients: list[str] = []

    # -- accessors (valid after start) -------------------------------------------------------
    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise WorldError("the world has no work dir until start()")
        return self._workdir

    @property
    def kept_workdir(self) -> Path | None:
        """The work dir (logs of every component) while it exists: after a failed start or `stop(keep_workdir=True)`."""
        return self._workdir

    @property
    def kubeconfig(self) -> Path:
        return _started(self._kubeconfig)

    @property
    def kubectl(self) -> Kubectl:
        return _started(self._kubectl)

    @property
    def postgres(self) -> PostgresServer:
        return _started(self._postgres)

    @property
    def prometheus(self) -> PrometheusServer:
        return _started(self._prometheus)

    @property
    def simulator(self) -> TorghutSimulator:
        """The simulator as a process of this host (`operator_in_cluster` off)."""
        if self._simulator is None and self._service_url is not None:
            raise WorldError("the simulator runs in the cluster (Deployment torghut), not as a process of this host")
        return _started(self._simulator)

    @property
    def service_url(self) -> str:
        """Where Torghut's HTTP surfaces answer the operator: the Service `torghut` by its cluster DNS name when the
        simulator runs in the cluster, else the simulator process's URL."""
        if self._service_url is not None:
            return self._service_url
        return self.simulator.url

    @property
    def operator(self) -> OperatorProcess | incluster.ClusterOperator:
        if self._operator is None:
            raise WorldError("the world is not started")
        return self._operator

    @property
    def operator_process(self) -> OperatorProcess:
        """The operator as a host process (`operator_in_cluster` off): its PID, CPU time and memory."""
        operator = self.operator
        if not isinstance(operator, OperatorProcess):
            raise WorldError("the operator runs in the cluster, not as a process of this host")
        return operator

    @property
    def database(self) -> Database:
        return _started(self._database)

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> World:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(keep_workdir=exc is not None)

    def start(self) -> World:
        if self._stack is not None:
            raise WorldError("already started")
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="torghut-world-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._stack = ExitStack()
        started = time.monotonic()
        try:
            self._start()
        except BaseException:
            # Keep the logs of whatever started; a failure before anything ran (no kind here) leaves nothing.
            self.stop(keep_workdir=any(self.workdir.iterdir()))
            raise
        self.timings["total"] = time.monotonic() - started
        return self

    def stop(self, *, keep_workdir: bool = False) -> None:
        """Stop everything started, newest first. Safe to call twice."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
        if self._owns_workdir and self._workdir is not None and not keep_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def _step(self, what: str, action: Callable[[], None]) -> None:
        started = time.monotonic()
        action()
        self.timings[what] = time.monotonic() - started
        self._log(f"{what} in {self.timings[what]:.1f}s")

    def _start(self) -> None:
        bin_dir = Path()

        def show(line: str) -> None:
            if not line.endswith(" cached"):
                self._log(line)

        def binaries() -> None:
            nonlocal bin_dir
            bin_dir = ensure_binaries(on_line=show)

        self._step("binaries", binaries)
        self._step("cluster", lambda: self._start_cluster(bin_dir))
        self._step("postgres", self._start_postgres)
        self._step("prometheus", self._start_prometheus)
        self._step("CRD and Torghut workload", self._install)
        self._step("simulator", self._start_simulator)
        self._step("operator", self._start_operator)

    def _enter(self, cm: Any) -> Any:
        assert self._stack is not None
        return self._stack.enter_context(cm)

    def _start_cluster(self, bin_dir: Path) -> None:
        if self.cluster_mode == "local":
            cluster: LocalCluster = self._enter(
                LocalCluster(bin_dir, self.workdir / "cluster", real_node=self.real_node)
            )
            self._local = cluster
            self._kubeconfig = cluster.kubeconfig
            if self.operator_in_cluster:
                assert cluster.node_ip is not None
                self._host, self._host_clients = cluster.node_ip, [f"{cluster.node_ip}/32", realnode.POD_CIDR]
        else:
            created: kind.KindCluster = self._enter(kind_cluster(bin_dir, self.workdir))
            self._kind = created
            self._kubeconfig = created.kubeconfig
            if self.operator_in_cluster:
                gateway, subnet = created.host_network
                self._host, self._host_clients = gateway, [f"{gateway}/32", subnet, kind.pod_subnet()]
        self._kubectl = Kubectl(bin_dir / "kubectl", self.kubeconfig)

    def _start_postgres(self) -> None:
        if self.operator_in_cluster:  # the operator's pod connects: password auth, the superuser's too
            server = PostgresServer(
                host=self._host, password=secrets.token_urlsafe(18), client_networks=self._host_clients
            )
        else:
            server = PostgresServer()
        postgres: PostgresServer = self._enter(server)
        self._postgres = postgres
        postgres.create_database(DATABASE)
        engine = torghut_db.make_engine(postgres.dsn(DATABASE))
        try:
            torghut_db.create_schema(engine, state=self.schema_state)
            torghut_db.seed_executions(
                engine,
                HISTORY_FILLS,
                null_adapters=True,
                created_at=datetime.now(UTC) - timedelta(days=1),
                step=timedelta(minutes=5),
                seed=7,
            )
        finally:
            engine.dispose()
        password = secrets.token_urlsafe(18)
        role = sql.Identifier(torghut_db.APP_ROLE)
        postgres.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(role, sql.Literal(password)))
        postgres.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(DATABASE), role))
        # As CloudNativePG and Alembic leave it: the runtime role owns the tables (so it may migrate them) ...
        postgres.execute(
            sql.SQL(
                "DO $$ DECLARE t text; BEGIN FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "LOOP EXECUTE format('ALTER TABLE public.%I OWNER TO {}', t); END LOOP; END $$"
            ).format(role),
            DATABASE,
        )
        # ... but holds no privilege on the research ledger (before 0007: none of it; at head: the tables of 0026).
        ungranted = torghut_db.ungranted_research_tables(self.schema_state)
        tables = sql.SQL(", ").join(sql.Identifier("public", t) for t in ungranted)
        postgres.execute(sql.SQL("REVOKE ALL PRIVILEGES ON TABLE {} FROM {}").format(tables, role), DATABASE)
        self._database = Database(
            name=DATABASE,
            admin_dsn=postgres.dsn(DATABASE),
            app_dsn=postgres.dsn(DATABASE, user=torghut_db.APP_ROLE, password=password),
            app_password=password,
        )

    def _start_prometheus(self) -> None:
        self._prometheus = self._enter(PrometheusServer(host=self._host))

    def _install(self) -> None:
        kubectl = self.kubectl
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD), timeout=60)
        # Not `kubectl wait`: right after the apply the CRD may have no status yet, and kubectl wait then fails
        # ("status.conditions accessor error") instead of waiting.
        wait_for(
            lambda: crd_established(kubectl.get("crd", CRD_NAME)),
            timeout=60,
            what=f"CRD {CRD_NAME} Established",
            retry_on=(KubectlError,),
        )
        if self.operator_in_cluster:
            self._simulator_images()
        self.add_target(self.namespace)

    def _simulator_images(self) -> None:
        """The simulator's image (built without Docker, or found in the cache) on the node, which never pulls: the
        old image under its tag, the new one the same image pinned by its own digest (as a Torghut release is)."""
        built = imagebuild.build_image(imagebuild.SIMULATOR, log=self._log)
        repository = built.ref.rpartition(":")[0]
        if self._local is not None:
            self._local.import_image(built.docker_archive)
            digest = images.digest_of(self._local.node_layout.containerd_socket, built.ref)
            self._local.tag_image(built.ref, f"{repository}@{digest}")
        else:
            assert self._kind is not None
            self._kind.load_archive(built.docker_archive)
            digest = self._kind.digest_of(built.ref)
            self._kind.tag_image(built.ref, f"{repository}@{digest}")
        self.old_image, self.new_image = built.ref, f"{repository}@{digest}"

    def add_target(
        self, namespace: str, *, env: Mapping[str, str] | None = None, sql_pack_configmap: bool = True
    ) -> None:
        """Namespace `namespace` with the app Secret, Torghut's Deployment (Available) and the SQL pack."""
        kubectl = self.kubectl
        kubectl.apply(workloads.namespace(namespace))
        workloads.wait_for_service_account(kubectl, namespace, timeout=60)
        docs = [app_secret(self.database.app_dsn)]
        if self.operator_in_cluster:
            heads = torghut_db.heads_of(self.schema_state)
            target = simulator_target(
                self.old_image,
                namespace,
                env=env or self.target_env,
                expected_heads=heads,
                tick_seconds=self.tick_seconds,
            )
            docs += [*follower_rbac(namespace), workloads.service(TARGET, port=SIM_PORT, target_port=SIM_PORT), target]
        else:
            docs.append(target_deployment(env=env or self.target_env))
        if sql_pack_configmap:
            docs.append(sql_pack.configmap_manifest())
        kubectl.apply(*docs, namespace=namespace)
        workloads.wait_for_rollout(kubectl, TARGET, namespace=namespace, timeout=180)

    def _start_simulator(self) -> None:
        if self.operator_in_cluster:
            self._scrape_simulator_in_cluster()
            return
        # The simulator's own log goes to a file: its warnings (research writes denied before the grant
        # migration, which is the point) are the app's business, not the terminal's.
        logger = logging.getLogger("torghut_localstack.simulator")
        handler = logging.FileHandler(self.workdir / "simulator.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        assert self._stack is not None
        self._stack.callback(logger.removeHandler, handler)
        self._stack.callback(handler.close)
        simulator = TorghutSimulator(
            host=self._host,
            dsn=self.database.app_dsn,
            image=OLD_IMAGE,
            expected_heads=torghut_db.heads_of(self.schema_state),
            follow=FollowTarget.parse(f"{self.namespace}/{TARGET}/{CONTAINER}"),
            kubeconfig=str(self.kubeconfig),
            tick_seconds=self.tick_seconds,
        )
        self._simulator = self._enter(simulator)
        self.prometheus.set_targets(self.namespace, [f"{self._host}:{simulator.port}"])
        self.prometheus.wait_for_targets(self.namespace, timeout=60)

    def _scrape_simulator_in_cluster(self) -> None:
        """The simulator is Torghut's Deployment itself (Ready through its probe, see `add_target`): Prometheus, a
        host process, scrapes its Service's ClusterIP (kube-proxy's rules cover this host's own traffic, and the
        address stays while a rollout replaces the pod); the operator calls it by its cluster DNS name."""
        pods = self.kubectl.json("get", "pods", "-n", self.namespace, "-l", f"app={TARGET}")["items"]
        for pod in pods:
            self._log(
                f"simulator pod {self.namespace}/{pod['metadata']['name']} on node {pod['spec'].get('nodeName')} "
                f"(image {pod['spec']['containers'][0]['image']}, readiness GET /healthz)"
            )
        service = self.kubectl.json("get", "service", TARGET, "-n", self.namespace)
        self.prometheus.set_targets(self.namespace, [f"{service['spec']['clusterIP']}:{SIM_PORT}"])
        self.prometheus.wait_for_targets(self.namespace, timeout=60)
        self._service_url = f"http://{TARGET}.{self.namespace}.svc.cluster.local:{SIM_PORT}"
        assert self._stack is not None
        self._stack.callback(self._save_simulator_log)

    def _save_simulator_log(self) -> None:
        """The simulator containers' log into `simulator.log` of the work dir (kept after a failure)."""
        try:
            text = self.kubectl("logs", f"deployment/{TARGET}", "-n", self.namespace, "--all-containers", timeout=30)
        except KubectlError as error:
            text = f"(no log of deployment/{TARGET}: {error})\n"
        (self.workdir / "simulator.log").write_text(text)

    def _start_operator(self) -> None:
        if self.operator_in_cluster:
            self._start_operator_in_cluster()
            return
        operator = OperatorProcess(
            self.kubeconfig, self.workdir / "operator", verbose=self.operator_verbose, env=self.operator_env
        )
        assert self._stack is not None
        self._stack.callback(operator.stop)
        self._operator = operator.start()

    def _start_operator_in_cluster(self) -> None:
        built = imagebuild.build_image(imagebuild.OPERATOR, log=self._log)
        if self._local is not None:
            self._local.import_image(built.docker_archive)
            kill: incluster.KillContainer | None = incluster.kill_on_host(self._local.node_layout.containerd_socket)
        else:
            assert self._kind is not None
            self._kind.load_archive(built.docker_archive)
            kill = self._kind.kill_container
        args = ["--log-format=full", *(["--verbose"] if self.operator_verbose else [])]
        overlay = incluster.overlay(
            self.workdir / "operator" / "overlay",
            built.ref,
            args=args,
            env=self.operator_env,
            pin_to_real_node=self._local is not None,
        )
        operator = incluster.ClusterOperator(
            self.kubectl,
            namespace=OPERATOR_NAMESPACE,
            deployment=OPERATOR_DEPLOYMENT,
            overlay_dir=overlay,
            log_dir=self.workdir / "operator",
            kill_container=kill,
        )
        assert self._stack is not None
        self._stack.callback(operator.save_logs)
        try:
            self._operator = operator.install()
            pod = operator.pod()
        except incluster.ClusterOperatorError as error:
            raise WorldError(str(error)) from error
        self._log(
            f"operator pod {OPERATOR_NAMESPACE}/{pod['metadata']['name']} Ready on node {pod['spec']['nodeName']} "
            f"(image {built.ref}, ServiceAccount {pod['spec']['serviceAccountName']})"
        )


def _started(value: _T | None) -> _T:
    if value is None:
        raise WorldError("the world is not started")
    return value
