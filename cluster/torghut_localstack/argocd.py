"""A real Argo CD on the local stack: its CRDs and minimal objects on a running cluster, then Redis, the repo server,
the application controller and the API server as local processes, and a `git daemon` on loopback serving one bare
repository that the caller writes.

    argo_bin = ensure_argocd_binaries()
    with LocalCluster(bin_dir) as cluster, ArgoCD(cluster.kubectl(), argo_bin, workdir) as argocd:
        argocd.repo.push(directory, "deploy v2")
        argocd.kubectl.apply(application)          # repoURL: argocd.repo.url
        argocd.refresh("torghut")                  # what a webhook does after a push
        argocd.cli("app", "actions", "run", "torghut", "promote", "--kind", "TorghutRollout", ...)

Argo CD v3.2.11, one binary for every component (cluster/build-argocd.sh). The components run the way Argo CD's
own Procfile runs them: `ARGOCD_FAKE_IN_CLUSTER=true` with KUBECONFIG maps `https://kubernetes.default.svc` to the
kubeconfig's cluster, so no cluster Secret or ServiceAccount is needed. The API server runs insecure with
authentication disabled on 127.0.0.1 only (the CLI needs no login). A bare process does not read
`timeout.reconciliation` from argocd-cm: `ARGOCD_RECONCILIATION_TIMEOUT` goes to the controller (its resync) and
the repo server (its revision cache), or a push waits out the 3-minute cache. Every process is started by this
object, recorded by PID and stopped by PID; nothing else is touched.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from torghut_localstack.kubectl import Kubectl, KubectlError
from torghut_localstack.ports import HOST, free_port
from torghut_localstack.procs import ManagedProcess, ProcessRecord, start_process
from torghut_localstack.wait import WaitTimeout, wait_for

NAMESPACE = "argocd"
ARGOCD_MODULE = "github.com/argoproj/argo-cd/v3"
GO_MODULE_DIR = Path(__file__).resolve().parents[1] / "argocd"
REPO = Path(__file__).resolve().parents[2]
PROJECT_ARGOCD_CM = REPO / "manifests" / "argocd" / "argocd-cm.yaml"
FIELD_MANAGER = "torghut-rollout-operator"
REFRESH_ANNOTATION = "argocd.argoproj.io/refresh"
_PART_OF = {"app.kubernetes.io/part-of": "argocd"}
_HTTP_TIMEOUT_S = 5.0


class ArgoCDError(RuntimeError):
    """Argo CD could not start; the message names the component and has its last log lines."""


class _ProcessExited(Exception):
    """Readiness can't come any more: the process is gone (never retried)."""


def module_dir() -> Path:
    """Argo CD's module in the Go module cache (the one cluster/argocd pins), for its CRD manifests."""
    done = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", ARGOCD_MODULE],
        cwd=GO_MODULE_DIR,
        env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = Path(done.stdout.strip())
    if done.returncode != 0 or not (found / "manifests" / "crds").is_dir():
        raise ArgoCDError(f"cannot find {ARGOCD_MODULE}'s module directory: {done.stderr.strip() or found}")
    return found


def base_objects() -> list[dict[str, Any]]:
    """The objects Argo CD's processes read at start, minimal: created (never client-side applied), so the project's
    argocd-cm.yaml can then be merged in with server-side apply without deleting anything."""

    def configmap(name: str, data: Mapping[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/name": name, **_PART_OF}},
            "data": dict(data),
        }

    return [
        configmap("argocd-cm", {}),
        configmap("argocd-rbac-cm", {"policy.default": "role:admin"}),
        configmap("argocd-cmd-params-cm", {}),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "argocd-secret",
                "namespace": NAMESPACE,
                "labels": {"app.kubernetes.io/name": "argocd-secret", **_PART_OF},
            },
            "type": "Opaque",
            "stringData": {"server.secretkey": secrets.token_urlsafe(32)},
        },
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "AppProject",
            "metadata": {"name": "default", "namespace": NAMESPACE},
            "spec": {
                "sourceRepos": ["*"],
                "destinations": [{"server": "*", "namespace": "*"}],
                "clusterResourceWhitelist": [{"group": "*", "kind": "*"}],
            },
        },
    ]


def application_manifest(name: str, repo_url: str, path: str, namespace: str) -> dict[str, Any]:
    """An Application as the README recommends for TorghutRollouts: automated sync with self-heal, server-side
    apply and server-side diff (without it a TorghutRollout applied server-side stays OutOfSync forever). No
    resources finalizer: deleting the Application leaves the objects."""
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "annotations": {"argocd.argoproj.io/compare-options": "ServerSideDiff=true"},
        },
        "spec": {
            "project": "default",
            "source": {"repoURL": repo_url, "targetRevision": "main", "path": path},
            "destination": {"server": "https://kubernetes.default.svc", "namespace": namespace},
            "syncPolicy": {"automated": {"prune": True, "selfHeal": True}, "syncOptions": ["ServerSideApply=true"]},
        },
    }


def _established(crd: Mapping[str, Any] | None) -> bool:
    conditions = ((crd or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def _git(*args: str, cwd: Path | None = None, timeout: float = 60) -> str:
    argv = ["git", "-c", "user.name=torghut-e2e", "-c", "user.email=e2e@torghut.invalid", *args]
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


class GitServer:
    """`git daemon` on 127.0.0.1 serving the bare repository `deploy.git` (branch main) at `url`."""

    def __init__(self, workdir: Path, *, die_with_parent: bool = True) -> None:
        self.root = workdir / "git"
        self.bare = self.root / "deploy.git"
        self.work = workdir / "git-work"
        self.port = 0
        self.die_with_parent = die_with_parent
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"git://{HOST}:{self.port}/deploy.git"

    def start(self, log_dir: Path, timeout: float = 30) -> ManagedProcess:
        self.root.mkdir(parents=True, exist_ok=True)
        _git("init", "--quiet", "--bare", "--initial-branch=main", str(self.bare))
        _git("init", "--quiet", "--initial-branch=main", str(self.work))
        _git("remote", "add", "origin", str(self.bare), cwd=self.work)
        self.port = free_port()
        argv = [
            "git",
            "daemon",
            "--export-all",
            "--reuseaddr",
            "--informative-errors",
            f"--base-path={self.root}",
            f"--listen={HOST}",
            f"--port={self.port}",
            str(self.root),
        ]
        self.process = start_process(
            "git-daemon", argv, log_path=log_dir / "git-daemon.log", die_with_parent=self.die_with_parent
        )
        process = self.process

        def listening() -> bool:
            if not process.running():
                raise _ProcessExited(process.describe_exit())
            with socket.create_connection((HOST, self.port), timeout=1):
                return True

        wait_for(listening, timeout=timeout, what=f"git daemon on {HOST}:{self.port}", retry_on=(OSError,))
        return process

    def push(self, source: Path, message: str) -> str:
        """Make the repository's tree exactly `source` (a directory), commit and push to main; returns the commit."""
        for entry in self.work.iterdir():
            if entry.name == ".git":
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        shutil.copytree(source, self.work, dirs_exist_ok=True)
        _git("add", "--all", cwd=self.work)
        _git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.work)
        _git("push", "--quiet", "origin", "HEAD:main", cwd=self.work)
        return _git("rev-parse", "HEAD", cwd=self.work).strip()


class ArgoCD:
    """Argo CD on a running cluster reached through `kubectl` (admin). `bin_dir` holds `argocd` and `kustomize`.

    `workdir`: None → a temp dir deleted on `stop()`. `reconciliation`: Argo CD's polling interval (the default
    120 s plus jitter makes a push wait minutes; `refresh` makes it seconds).
    """

    def __init__(
        self,
        kubectl: Kubectl,
        bin_dir: Path,
        workdir: Path | None = None,
        *,
        reconciliation: str = "15s",
        component_timeout: float = 90.0,
        die_with_parent: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.kubectl = kubectl
        self.bin_dir = bin_dir
        self.reconciliation = reconciliation
        self.component_timeout = component_timeout
        self.die_with_parent = die_with_parent
        self._log = log or (lambda _message: None)
        self._workdir = workdir
        self._owns_workdir = workdir is None
        self.processes: list[ManagedProcess] = []
        self.ports: dict[str, int] = {}
        self.timings: dict[str, float] = {}
        self.git: GitServer | None = None
        self._http = httpx.Client(timeout=_HTTP_TIMEOUT_S)

    # -- public helpers ----------------------------------------------------------------------
    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise ArgoCDError("no work dir until start()")
        return self._workdir

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def server(self) -> str:
        """The API server's address for `argocd --server ... --plaintext`."""
        return f"{HOST}:{self.ports['server']}"

    @property
    def repo(self) -> GitServer:
        if self.git is None:
            raise ArgoCDError("the git server starts with start()")
        return self.git

    def peak_rss_mib(self) -> dict[str, float]:
        """Each running process's peak resident memory so far (VmHWM), in MiB."""
        peaks: dict[str, float] = {}
        for process in self.processes:
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peaks[process.name] = int(line.split()[1]) / 1024
        return peaks

    def records(self) -> list[ProcessRecord]:
        return [ProcessRecord.of(process) for process in self.processes]

    def cli(self, *args: str, timeout: float = 60) -> str:
        """The `argocd` CLI against the API server (no login: auth is disabled); returns stdout, raises on failure."""
        argv = [str(self.bin_dir / "argocd"), "--server", self.server, "--plaintext"]
        argv += ["--config", str(self.workdir / "cli-config"), *args]
        env = {**os.environ, "ARGOCD_BINARY_NAME": "argocd"}
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        if done.returncode != 0:
            raise ArgoCDError(f"argocd {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def resource_tree(self, name: str) -> dict[str, Any]:
        """The Application's resource tree from the API server, with each resource's health as Argo CD assesses it.

        Argo CD 3 no longer writes resource health into the Application's `.status.resources[]` (argocd-cm
        `controller.resource.health.persist` defaults to false): the tree, from Redis, is where it is.
        """
        response = self._http.get(f"http://{self.server}/api/v1/applications/{name}/resource-tree")
        response.raise_for_status()
        tree: dict[str, Any] = response.json()
        return tree

    def resource_health(self, app: str, kind: str, name: str) -> str | None:
        """The health Argo CD reports for one resource of Application `app` (its resource tree), or None."""
        for node in self.resource_tree(app).get("nodes") or []:
            if node.get("kind") == kind and node.get("name") == name:
                health = node.get("health") or {}
                return str(health["status"]) if "status" in health else None
        return None

    def application(self, name: str) -> dict[str, Any] | None:
        """The Application as the API server returns it (fast enough to poll every 0.1 s), or None."""
        response = self._http.get(f"http://{self.server}/api/v1/applications/{name}")
        if response.status_code == httpx.codes.NOT_FOUND:
            return None
        if response.status_code == httpx.codes.FORBIDDEN and "not found" in response.text:
            return None
        response.raise_for_status()
        app: dict[str, Any] = response.json()
        return app

    def refresh(self, name: str) -> None:
        """Ask Argo CD to compare `name` with Git now (what a webhook does after a push)."""
        self.kubectl(
            "annotate", "applications.argoproj.io", name, "-n", NAMESPACE, "--overwrite", f"{REFRESH_ANNOTATION}=normal"
        )

    def apply_project_config(self, path: Path = PROJECT_ARGOCD_CM) -> None:
        """The project's argocd-cm.yaml merged into argocd-cm with server-side apply, as the README says to."""
        self.kubectl("apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", str(path))

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ArgoCD:
        if self.processes:
            raise ArgoCDError("already started")
        started = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop every process this object started (newest first). Safe to call twice."""
        errors: list[str] = []
        for process in reversed(self.processes):
            try:
                process.stop()
            except (OSError, subprocess.TimeoutExpired) as error:
                errors.append(f"{process.name}: {error}")
        self.processes = []
        self._http.close()
        if self._owns_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        if errors:
            raise ArgoCDError("could not stop: " + "; ".join(errors))

    def __enter__(self) -> ArgoCD:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- start sequence ----------------------------------------------------------------------
    def _start(self) -> None:
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="torghut-argocd-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "tmp").mkdir(exist_ok=True)
        for name in ("redis", "repo_server", "repo_metrics", "controller_metrics", "server", "server_metrics"):
            self.ports[name] = free_port()
        self._step("CRDs and objects", self._install)
        self._start_redis()
        self._start_repo_server()
        self._start_controller()
        self._start_server()
        self.git = GitServer(self.workdir, die_with_parent=self.die_with_parent)
        started = time.monotonic()
        self.processes.append(self.git.start(self.logs_dir))
        self.timings["git-daemon"] = time.monotonic() - started

    def _step(self, what: str, action: Callable[[], None]) -> None:
        started = time.monotonic()
        action()
        self.timings[what] = time.monotonic() - started
        self._log(f"argocd: {what} in {self.timings[what]:.1f}s")

    def _install(self) -> None:
        crds = module_dir() / "manifests" / "crds"
        for name in ("application-crd.yaml", "appproject-crd.yaml"):
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds / name))
        for crd in ("applications.argoproj.io", "appprojects.argoproj.io"):
            # Polled: `kubectl wait` right after the apply fails while the CRD has no conditions yet.
            wait_for(
                functools.partial(self._crd_established, crd),
                timeout=60,
                what=f"CRD {crd} Established",
                retry_on=(KubectlError,),
            )
        if self.kubectl.get("namespace", NAMESPACE) is None:
            self.kubectl("create", "namespace", NAMESPACE)
        for obj in base_objects():
            self._create(obj)
        self.apply_project_config()

    def _crd_established(self, name: str) -> bool:
        return _established(self.kubectl.get("crd", name))

    def _create(self, obj: Mapping[str, Any]) -> None:
        """`kubectl create`, tolerating an object that already exists (a second start on the same cluster)."""
        try:
            self.kubectl("create", "-f", "-", stdin=json.dumps(obj))
        except KubectlError as error:
            if "AlreadyExists" not in error.detail:
                raise

    def _env(self, binary_name: str) -> dict[str, str]:
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubectl.kubeconfig),
            "ARGOCD_BINARY_NAME": binary_name,
            "ARGOCD_FAKE_IN_CLUSTER": "true",
            "ARGOCD_RECONCILIATION_TIMEOUT": self.reconciliation,
            "ARGOCD_RECONCILIATION_JITTER": "0s",
            "ARGOCD_GPG_ENABLED": "false",
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "TMPDIR": str(self.workdir / "tmp"),
            "HOME": str(self.workdir),
        }

    def _launch(
        self, name: str, argv: Sequence[str], ready: Callable[[], bool], what: str, env: Mapping[str, str] | None
    ) -> None:
        started = time.monotonic()
        process = start_process(
            name, argv, log_path=self.logs_dir / f"{name}.log", env=env, cwd=self.workdir,
            die_with_parent=self.die_with_parent,
        )  # fmt: skip
        self.processes.append(process)

        def check() -> bool:
            if not process.running():
                raise _ProcessExited(process.describe_exit())
            return ready()

        try:
            wait_for(check, timeout=self.component_timeout, what=f"{name}: {what}", retry_on=(httpx.HTTPError, OSError))
        except (WaitTimeout, _ProcessExited) as error:
            raise ArgoCDError(
                f"{name} not ready: {error}\n--- last lines of {process.log_path} ---\n{process.tail()}"
            ) from error
        self.timings[name] = time.monotonic() - started
        self._log(f"argocd: {name} ready in {self.timings[name]:.1f}s (pid {process.pid})")

    def _healthz(self, url: str) -> bool:
        return self._http.get(url).status_code == httpx.codes.OK

    def _start_redis(self) -> None:
        port = self.ports["redis"]
        redis = shutil.which("redis-server")
        if redis is None:
            raise ArgoCDError("redis-server is not on PATH (Debian: apt-get install redis-server; .ci/run does)")
        argv = [redis, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.workdir), "--daemonize", "no", "--protected-mode", "yes"]

        def pong() -> bool:
            with socket.create_connection((HOST, port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")

        self._launch("redis", argv, pong, f"PING on {HOST}:{port}", None)

    def _start_repo_server(self) -> None:
        metrics = self.ports["repo_metrics"]
        argv = [
            str(self.bin_dir / "argocd"),
            "--address", HOST,
            "--port", str(self.ports["repo_server"]),
            "--disable-tls",
            "--redis", f"{HOST}:{self.ports['redis']}",
            "--metrics-address", HOST,
            "--metrics-port", str(metrics),
        ]  # fmt: skip
        if shutil.which("git") is None:
            raise ArgoCDError("git is not on PATH (Debian: apt-get install git; .ci/run does)")
        url = f"http://{HOST}:{metrics}/healthz?full=true"
        self._launch("argocd-repo-server", argv, lambda: self._healthz(url), url, self._env("argocd-repo-server"))

    def _start_controller(self) -> None:
        metrics = self.ports["controller_metrics"]
        argv = [
            str(self.bin_dir / "argocd"),
            "--kubeconfig", str(self.kubectl.kubeconfig),
            "--namespace", NAMESPACE,
            "--repo-server", f"{HOST}:{self.ports['repo_server']}",
            "--repo-server-plaintext",
            "--redis", f"{HOST}:{self.ports['redis']}",
            "--metrics-port", str(metrics),
        ]  # fmt: skip
        url = f"http://{HOST}:{metrics}/healthz"
        self._launch(
            "argocd-application-controller",
            argv,
            lambda: self._healthz(url),
            url,
            self._env("argocd-application-controller"),
        )

    def _start_server(self) -> None:
        port = self.ports["server"]
        argv = [
            str(self.bin_dir / "argocd"),
            "--kubeconfig", str(self.kubectl.kubeconfig),
            "--namespace", NAMESPACE,
            "--insecure",
            "--disable-auth",
            "--address", HOST,
            "--port", str(port),
            "--metrics-address", HOST,
            "--metrics-port", str(self.ports["server_metrics"]),
            "--dex-server", "",
            "--repo-server", f"{HOST}:{self.ports['repo_server']}",
            "--repo-server-plaintext",
            "--redis", f"{HOST}:{self.ports['redis']}",
            "--staticassets", str(self.workdir / "no-static-assets"),
        ]  # fmt: skip
        url = f"http://{HOST}:{port}/healthz"
        self._launch("argocd-server", argv, lambda: self._healthz(url), url, self._env("argocd-server"))
