"""`make bench`: how fast the operator turns observable evidence into the next stage, and what it costs.

    python -m torghut_localstack.bench [--sequential 12] [--parallel 50]

On the local stack (`torghut_localstack.world`), with watches on the rollouts, their Jobs and the target
Deployments recording when each change reached a client:

(a) stage-advance latency: from a stage's completion becoming observable to the status showing the next phase
    (Job Complete → Deploying, Deployment available with the new image → Verifying, the last measurement's
    `at` → Succeeded), over every transition of `--sequential` rollouts run one after another;
(b) operator overhead of a whole rollout: wall time (apply → Succeeded seen) minus what the rollout had to wait
    for (the Job from creation to Complete, the Deployment from the image patch to available, and verify's
    initialDelay + (count-1) x interval);
(c) the same with `--parallel` rollouts at once (one namespace and Deployment each; one shared simulator and
    database), plus the operator's peak memory (VmHWM).

It prints the figures, and ratios (overhead / wall, parallel / sequential, latency / API round trip) that mean
more than absolute numbers on a noisy machine; it asserts nothing. Exit status 1 if a rollout did not succeed.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from torghut_localstack import workloads
from torghut_localstack.wait import WaitTimeout, wait_for
from torghut_localstack.world import (
    APP_SECRET_KEY,
    APP_SECRET_NAME,
    CONTAINER,
    NEW_IMAGE,
    OLD_IMAGE,
    TARGET,
    World,
    WorldError,
    app_secret,
    kube_client,
    target_deployment,
    watch,
)
from torghut_operator.core.api.spec import GROUP, KIND, PLURAL, VERSION
from torghut_operator.core.manifests import MANAGED_BY

TERMINAL: Final = frozenset({"Succeeded", "Failed", "RolledBack", "Aborted"})
VERIFY: Final[Mapping[str, str | int]] = {"initialDelay": "0s", "interval": "1s", "count": 2}
MIGRATE_JOB: Final = {
    "image": workloads.BUSYBOX_IMAGE,
    "command": ["sh", "-c", "echo migrated"],
    "backoffLimit": 0,
}
ROLLOUT: Final = "bench"
SEQUENTIAL_TIMEOUT: Final = 120.0
PARALLEL_TIMEOUT: Final = 300.0
REQUEST_TIMEOUT: Final = (5.0, 30.0)
FLOOR_ANNOTATION: Final = "bench.torghut.proompteng.ai/floor"


# --------------------------------------------------------------------------------------------------
# Recording what the watches saw


Key = tuple[str, str, str]
"""(kind, namespace, name)"""


@dataclass
class Recorder:
    """Every object version the watches delivered, with its receive time; `changed` wakes waiters."""

    events: dict[Key, list[tuple[float, dict[str, Any]]]] = field(default_factory=lambda: defaultdict(list))
    changed: threading.Condition = field(default_factory=threading.Condition)
    stopping: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def record(self, kind: str, at: float, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        with self.changed:
            self.events[(kind, str(meta.get("namespace")), str(meta.get("name")))].append((at, obj))
            self.changed.notify_all()

    def history(self, kind: str, namespace: str, name: str) -> list[tuple[float, dict[str, Any]]]:
        with self.changed:
            return list(self.events.get((kind, namespace, name), []))

    def latest(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.history(kind, namespace, name)
        return found[-1][1] if found else None

    def wait(self, predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Block until `predicate()` holds, re-checked on every recorded change; TimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.errors:
                    problems = "; ".join(self.errors) or "no watch error"
                    raise TimeoutError(f"gave up after {timeout - remaining:.0f}s waiting for {what} ({problems})")
                self.changed.wait(remaining)

    def follow(
        self, kind: str, kubeconfig: Path, make_list: Callable[[Any], Callable[..., Any]], **kwargs: Any
    ) -> None:
        """Start a daemon thread recording every `kind` object cluster-wide until `stopping` is set."""

        def run() -> None:
            api = kube_client(kubeconfig)
            try:
                for event in watch(make_list(api), deadline=math.inf, **kwargs):
                    if self.stopping.is_set():
                        return
                    self.record(kind, event.at, event.obj)
            except Exception as error:  # noqa: BLE001 - reported once the run ends
                if not self.stopping.is_set():
                    with self.changed:
                        self.errors.append(f"{kind} watch: {type(error).__name__}: {error}")
                        self.changed.notify_all()
            finally:
                api.close()

        threading.Thread(target=run, name=f"watch-{kind}", daemon=True).start()


def start_recording(world: World) -> Recorder:
    from kubernetes import client  # noqa: PLC0415 - heavy

    recorder = Recorder()
    selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
    recorder.follow(
        "rollout",
        world.kubeconfig,
        lambda api: client.CustomObjectsApi(api).list_cluster_custom_object,
        group=GROUP,
        version=VERSION,
        plural=PLURAL,
    )
    recorder.follow(
        "job", world.kubeconfig, lambda api: client.BatchV1Api(api).list_job_for_all_namespaces, label_selector=selector
    )
    recorder.follow(
        "deployment", world.kubeconfig, lambda api: client.AppsV1Api(api).list_deployment_for_all_namespaces
    )
    return recorder


# --------------------------------------------------------------------------------------------------
# Rollouts


@dataclass(frozen=True)
class Workload:
    """What each rollout of a phase does. `torghut`: a migration Job and one check per provider (Postgres,
    Prometheus, HTTP), count 2; `peer`: the shape of the peer's benchmark (Argo Rollouts, a canary with one `web`
    analysis step): no migration, one HTTP check, count 3, interval 1 s."""

    name: str
    migrate: bool
    checks: Callable[[World], list[dict[str, Any]]]
    verify: Mapping[str, str | int]

    @property
    def verify_wait(self) -> float:
        """initialDelay + (count - 1) x interval: the time verify takes whatever the operator does."""
        delay = float(str(self.verify.get("initialDelay", "0s")).removesuffix("s"))
        interval = float(str(self.verify["interval"]).removesuffix("s"))
        return delay + (int(self.verify["count"]) - 1) * interval


def _torghut_checks(world: World) -> list[dict[str, Any]]:
    return [
        {"name": "executions-written", "postgres": {"query": "SELECT count(*) AS value FROM executions"}, "min": 1},
        {
            "name": "decisions-flowing",
            "prometheus": {"query": "sum(torghut_trading_decisions_total)"},
            "successCondition": "result > 0",
        },
        _healthz(world),
    ]


def _healthz(world: World) -> dict[str, Any]:
    return {
        "name": "healthz",
        "http": {"url": f"{world.simulator.url}/healthz", "jsonPath": "$.status"},
        "successCondition": 'result == "ok"',
    }


WORKLOADS: Final[Mapping[str, Workload]] = {
    "peer": Workload("peer", migrate=False, checks=lambda w: [_healthz(w)], verify={"interval": "1s", "count": 3}),
    "torghut": Workload("torghut", migrate=True, checks=_torghut_checks, verify=VERIFY),
}


def rollout_manifest(world: World, namespace: str, workload: Workload = WORKLOADS["torghut"]) -> dict[str, Any]:
    """The rollout of `workload` in `namespace`: the new image, then its checks."""
    spec: dict[str, Any] = {
        "target": {"kind": "Deployment", "name": TARGET, "container": CONTAINER, "image": NEW_IMAGE},
        "verify": {**workload.verify, "checks": workload.checks(world)},
    }
    if workload.migrate:
        spec["database"] = {"secretRef": {"name": APP_SECRET_NAME, "key": APP_SECRET_KEY}}
        spec["prometheus"] = {"url": world.prometheus.url}
        spec["migrate"] = {"job": MIGRATE_JOB}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": ROLLOUT, "namespace": namespace},
        "spec": spec,
    }


class Cluster:
    """The few API calls the benchmark makes itself, each with a timeout."""

    def __init__(self, world: World) -> None:
        from kubernetes import client  # noqa: PLC0415

        self.api = kube_client(world.kubeconfig)
        # Typed as Any: the client's annotations want its model classes, these calls send plain manifests.
        self.core: Any = client.CoreV1Api(self.api)
        self.apps: Any = client.AppsV1Api(self.api)
        self.custom: Any = client.CustomObjectsApi(self.api)

    def close(self) -> None:
        self.api.close()

    def create_targets(self, world: World, namespaces: Sequence[str], recorder: Recorder) -> None:
        """Namespaces, each with the app Secret and an Available Deployment (all created first, then waited)."""
        for ns in namespaces:
            self.core.create_namespace(workloads.namespace(ns), _request_timeout=REQUEST_TIMEOUT)
        for ns in namespaces:  # pods can't be created before the namespace's default ServiceAccount exists
            wait_for(
                self._service_account_check(ns), timeout=120, interval=0.05, what=f"ServiceAccount default in {ns}"
            )
        secret = app_secret(world.database.app_dsn)
        for ns in namespaces:
            self.core.create_namespaced_secret(ns, secret, _request_timeout=REQUEST_TIMEOUT)
            self.apps.create_namespaced_deployment(ns, target_deployment(), _request_timeout=REQUEST_TIMEOUT)
        recorder.wait(
            lambda: all(_available(recorder.latest("deployment", ns, TARGET), None) for ns in namespaces),
            timeout=180,
            what=f"{len(namespaces)} target Deployments available",
        )

    def _service_account_check(self, namespace: str) -> Callable[[], bool]:
        def exists() -> bool:
            found = self.core.list_namespaced_service_account(
                namespace, field_selector="metadata.name=default", _request_timeout=REQUEST_TIMEOUT
            )
            return bool(found.items)

        return exists

    def create_rollout(self, world: World, namespace: str, workload: Workload) -> float:
        """Create the rollout; returns when the API server accepted it (`time.time()`)."""
        manifest = rollout_manifest(world, namespace, workload)
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, manifest, _request_timeout=REQUEST_TIMEOUT
        )
        return time.time()

    def writes_seen(self, recorder: Recorder, namespace: str, count: int = 30) -> list[float]:
        """Seconds from sending a write (an annotation of the target Deployment) to the benchmark's own watch
        delivering it: the floor of a stage advance, which needs at least this (the operator's status write, seen
        through a watch) plus the watch delivering the stage's completion to the operator."""
        out = []
        for i in range(count):
            mark = f"{i}-{time.time_ns()}"

            def marked(obj: Mapping[str, Any] | None, mark: str = mark) -> bool:
                return ((obj or {}).get("metadata", {}).get("annotations") or {}).get(FLOOR_ANNOTATION) == mark

            started = time.time()
            self.apps.patch_namespaced_deployment(
                TARGET,
                namespace,
                {"metadata": {"annotations": {FLOOR_ANNOTATION: mark}}},
                _request_timeout=REQUEST_TIMEOUT,
            )
            recorder.wait(
                lambda: marked(recorder.latest("deployment", namespace, TARGET)), timeout=30, what="a write seen"
            )
            seen = next(at for at, obj in recorder.history("deployment", namespace, TARGET) if marked(obj))
            out.append(seen - started)
        return out

    def round_trips(self, namespace: str, count: int = 30) -> list[float]:
        """Seconds of `count` GETs of the app Secret: the machine's API latency, as a yardstick."""
        return [self.round_trip(namespace) for _ in range(count)]

    def round_trip(self, namespace: str) -> float:
        """Seconds of one GET of the app Secret in `namespace`."""
        started = time.perf_counter()
        self.core.read_namespaced_secret(APP_SECRET_NAME, namespace, _request_timeout=REQUEST_TIMEOUT)
        return time.perf_counter() - started


def _available(obj: Mapping[str, Any] | None, image: str | None) -> bool:
    """Deployment `obj` rolled out its current template (with `image` in the target container, if given)."""
    if obj is None:
        return False
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if image is not None:
        containers = spec.get("template", {}).get("spec", {}).get("containers") or []
        if not any(c.get("name") == CONTAINER and c.get("image") == image for c in containers):
            return False
    wanted = int(spec.get("replicas", 1))
    available = workloads.condition(obj, "Available")
    return (
        int(status.get("observedGeneration") or 0) >= int(obj["metadata"].get("generation") or 0)
        and int(status.get("updatedReplicas") or 0) == wanted
        and int(status.get("availableReplicas") or 0) == wanted
        and int(status.get("replicas") or 0) == wanted
        and available is not None
        and available.get("status") == "True"
    )


def _phase(obj: Mapping[str, Any] | None) -> str:
    return str(((obj or {}).get("status") or {}).get("phase") or "Pending")


def wait_all_terminal(recorder: Recorder, namespaces: Sequence[str], timeout: float) -> None:
    recorder.wait(
        lambda: all(_phase(recorder.latest("rollout", ns, ROLLOUT)) in TERMINAL for ns in namespaces),
        timeout=timeout,
        what=f"{len(namespaces)} rollout(s) to end",
    )


# --------------------------------------------------------------------------------------------------
# Analysis


@dataclass(frozen=True)
class RolloutFigures:
    namespace: str
    phase: str
    message: str
    transitions: dict[str, float]
    """transition name -> seconds from the evidence being observable to the next phase being seen"""
    wall: float
    waited: float
    parts: dict[str, float] = field(default_factory=dict)
    """where the overhead went: stretch name -> seconds beyond what the rollout had to wait for"""

    @property
    def overhead(self) -> float:
        return self.wall - self.waited


def _first(events: Iterable[tuple[float, dict[str, Any]]], predicate: Callable[[dict[str, Any]], bool]) -> float | None:
    return next((at for at, obj in events if predicate(obj)), None)


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def analyse(recorder: Recorder, namespace: str, applied_at: float, verify_wait: float) -> RolloutFigures:
    rollout = recorder.history("rollout", namespace, ROLLOUT)
    final = rollout[-1][1] if rollout else {}
    status = final.get("status") or {}
    phase = _phase(final)

    def seen(wanted: str) -> float | None:
        return _first(rollout, lambda obj: _phase(obj) == wanted)

    transitions: dict[str, float] = {}
    job_name = (status.get("migration") or {}).get("jobName")
    job = recorder.history("job", namespace, job_name) if job_name else []
    job_created = job[0][0] if job else None
    job_done = _first(job, lambda obj: (workloads.condition(obj, "Complete") or {}).get("status") == "True")
    deploying = seen("Deploying")
    if job_done is not None and deploying is not None:
        transitions["Job Complete → Deploying"] = deploying - job_done

    deployment = recorder.history("deployment", namespace, TARGET)
    patched = _first(
        deployment,
        lambda obj: any(c.get("image") == NEW_IMAGE for c in obj["spec"]["template"]["spec"]["containers"]),
    )
    available = _first(deployment, lambda obj: _available(obj, NEW_IMAGE))
    verifying = seen("Verifying")
    if available is not None and verifying is not None:
        transitions["Deployment available → Verifying"] = verifying - available

    parts: dict[str, float] = {}
    first_patch = job_created if job_created is not None else patched
    if first_patch is not None:
        parts["apply → first write to the cluster"] = first_patch - applied_at
        # ... of which: Kopf's own first write (its finalizer), then the daemon's first turn to its status write.
        adopted = _first(rollout, lambda obj: bool(obj["metadata"].get("finalizers")))
        first_status = _first(rollout, lambda obj: bool(obj.get("status")))
        if adopted is not None:
            parts["apply → finalizer (Kopf)"] = adopted - applied_at
            if first_status is not None:
                parts["finalizer → first status write"] = first_status - adopted
    if job_done is not None and patched is not None:
        parts["Job Complete → image patched"] = patched - job_done
    if available is not None and verifying is not None:
        parts["Deployment available → Verifying"] = verifying - available

    succeeded = seen("Succeeded")
    if succeeded is not None:
        done = next(obj for at, obj in rollout if at == succeeded and _phase(obj) == "Succeeded")
        stamps = [m["at"] for c in done["status"].get("checks") or [] for m in c.get("measurements") or []]
        if stamps:
            transitions["last measurement → Succeeded"] = succeeded - max(_epoch(s) for s in stamps)
            parts["last measurement → Succeeded"] = transitions["last measurement → Succeeded"]
            times = sorted({_epoch(s) for s in stamps})
            if verifying is not None:
                parts["Verifying → measurements done, beyond the intervals"] = max(
                    0.0, times[-1] - verifying - verify_wait
                )

    end = succeeded if succeeded is not None else (rollout[-1][0] if rollout else applied_at)
    waited = verify_wait
    if job_created is not None and job_done is not None:
        waited += job_done - job_created
    if patched is not None and available is not None:
        waited += available - patched
    return RolloutFigures(
        namespace, phase, str(status.get("message") or ""), transitions, end - applied_at, waited, parts
    )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Row:
    label: str
    values: list[float]
    unit: str
    """ms, s or %"""

    def cells(self) -> list[str]:
        if not self.values:
            return [self.label, self.unit, "0", "—", "—", "—"]
        scale = {"ms": 1000.0, "s": 1.0, "%": 100.0}[self.unit]
        fmt = "{:.0f}" if self.unit == "ms" else "{:.2f}" if self.unit == "s" else "{:.1f}"
        stats = (statistics.median(self.values), percentile(self.values, 99), max(self.values))
        return [self.label, self.unit, str(len(self.values)), *(fmt.format(v * scale) for v in stats)]


# --------------------------------------------------------------------------------------------------
# Write conflicts, CPU profile


WRITE_VERBS: Final = frozenset({"PATCH", "APPLY", "PUT", "UPDATE"})
READ_RESOURCES: Final = frozenset({PLURAL, "deployments"})


def api_writes(world: World) -> Counter[str]:
    """Write requests the API server answered so far, by any client, per `resource[/subresource] verb code`:
    `apiserver_request_total` of its own /metrics."""
    return count_writes(world.kubectl("get", "--raw", "/metrics", timeout=60))


def operator_metrics(world: World) -> str | None:
    """The operator's own /metrics text; None when it can't be read."""
    try:
        with urllib.request.urlopen(world.operator_process.metrics_url, timeout=10) as answer:  # noqa: S310 (loopback)
            return str(answer.read().decode())
    except OSError:
        return None


LOOP_LAG: Final = "torghut_rollout_operator_loop_lag_seconds"


def loop_lag_buckets(metrics: str) -> dict[float, float]:
    """The operator's event-loop lag histogram in /metrics text: upper bound (seconds; inf for +Inf) → cumulative
    count of looks."""
    found: dict[float, float] = {}
    prefix = f'{LOOP_LAG}_bucket{{le="'
    for line in metrics.splitlines():
        if line.startswith(prefix):
            bound, _, value = line[len(prefix) :].partition('"} ')
            found[float(bound)] = float(value)
    return found


def bucket_quantile(before: Mapping[float, float], after: Mapping[float, float], q: float) -> float | None:
    """The upper bound of the bucket holding the ``q`` quantile (0..1) of the looks between two readings of a
    histogram (inf: beyond the last bound); None without looks."""
    deltas = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    total = deltas[-1][1] if deltas else 0.0
    if total <= 0:
        return None
    return next(bound for bound, cumulative in deltas if cumulative >= q * total)


def count_turns(metrics: str) -> int:
    """The sum of ``torghut_rollout_reconciles_total`` over its results in /metrics text."""
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in metrics.splitlines()
        if line.startswith("torghut_rollout_reconciles_total{")
    )


def count_writes(metrics: str) -> Counter[str]:
    """`apiserver_request_total` series of a write verb in /metrics text, per `resource[/subresource] verb code`,
    leaving out the status writes of built-in workloads (kwok's and the controllers', never the operator's); and the
    GETs of rollouts and Deployments (only the operator GETs them here: the others list and watch)."""
    found: Counter[str] = Counter()
    for line in metrics.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        body = line[line.index("{") + 1 : line.rindex("}")]
        labels = dict(part.split("=", 1) for part in body.replace('"', "").split(",") if "=" in part)
        if labels.get("subresource") == "status" and labels.get("resource") != PLURAL:
            continue
        read = (
            labels.get("verb") == "GET" and labels.get("resource") in READ_RESOURCES and not labels.get("subresource")
        )
        if labels.get("verb") in WRITE_VERBS or read:
            resource = labels.get("resource", "?") + (f"/{labels['subresource']}" if labels.get("subresource") else "")
            found[f"{resource} {labels['verb']} {labels.get('code')}"] += int(float(line.rsplit(" ", 1)[1]))
    return found


def conflicts(writes: Counter[str]) -> Counter[str]:
    """The writes answered 409 Conflict or 422 (a failed precondition or JSON-patch test)."""
    return Counter({key: n for key, n in writes.items() if key.endswith((" 409", " 422"))})


class RoundTrips:
    """GETs of the app Secret in one namespace every ``interval`` seconds, on a thread, while a phase runs: the API
    round trip under that phase's own load (the yardstick is taken on a quiet cluster, after the sequential phase)."""

    def __init__(self, cluster: Cluster, namespace: str, interval: float = 0.1) -> None:
        self.samples: list[float] = []
        self._cluster, self._namespace, self._interval = cluster, namespace, interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="round trips", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):  # the pace of the samples, not a synchronisation
            try:
                self.samples.append(self._cluster.round_trip(self._namespace))
            except Exception:  # noqa: BLE001, S112 (a failed GET is no round trip; the phase reports what failed)
                continue

    def stop(self) -> list[float]:
        self._stopping.set()
        self._thread.join(timeout=sum(REQUEST_TIMEOUT) + 5)
        return list(self.samples)


@contextmanager
def collector_paused() -> Iterator[None]:
    """The benchmark's own cyclic garbage collector off while its threads stamp what the watches deliver (as
    ``timeit`` does): a full collection of the history it records (100,000-220,000 objects by the 50-at-once phase)
    held every one of its threads for 40-130 ms, a stall its stamps would have charged to the operator. Reference
    counting still frees everything not in a cycle; one collection runs before and one after."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.collect()


class Profiler:
    """py-spy sampling the operator (without pausing it) into an SVG flame graph and raw stacks for the top list."""

    def __init__(self, pid: int, out_dir: Path, label: str) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.svg = out_dir / f"operator-{label}.svg"
        self.raw = out_dir / f"operator-{label}.txt"
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if spy is None:
            raise WorldError("py-spy is missing: make deps installs it from the lock file")
        common = [spy, "record", "--pid", str(pid), "--rate", "50", "--gil", "--nonblocking"]
        self.processes = [
            subprocess.Popen(
                [*common, "--format", fmt, "--output", str(path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for fmt, path in (("flamegraph", self.svg), ("raw", self.raw))
        ]

    def stop(self) -> list[tuple[str, float]]:
        """Stop sampling, write both files; the five functions with the most samples on CPU (share of all)."""
        for process in self.processes:
            process.send_signal(signal.SIGINT)
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        return top_functions(self.raw.read_text() if self.raw.exists() else "")


def top_functions(raw: str, count: int = 5) -> list[tuple[str, float]]:
    """From py-spy's raw (collapsed) stacks: the `count` leaf functions with the most samples, as shares."""
    self_samples: dict[str, int] = defaultdict(int)
    total = 0
    for line in raw.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        name, _, where = leaf.partition(" (")
        file = where.rstrip(")").rsplit(":", 1)[0]
        short = "/".join(Path(file).parts[-2:]) if file else "?"
        self_samples[f"{name} ({short})"] += int(samples)
        total += int(samples)
    ranked = sorted(self_samples.items(), key=lambda item: -item[1])[:count]
    return [(name, n / total) for name, n in ranked] if total else []


# --------------------------------------------------------------------------------------------------
# Phases


@dataclass
class Phase:
    workload: str
    scale: int
    """1: rollouts one after another; n: n rollouts applied at once"""
    figures: list[RolloutFigures]
    cpu_seconds: float | None
    peak_rss_kib: int | None
    makespan: float
    writes: Counter[str]
    top: list[tuple[str, float]] = field(default_factory=list)
    profile: Path | None = None
    log_lines: int | None = None
    """lines the operator logged during the phase (at its default level)"""
    turns: int | None = None
    """reconcile turns the operator took during the phase (its own metric)"""
    loop_lag_p99: float | None = None
    """upper bound (s) of the bucket holding the p99 of the operator's event-loop lag during the phase (its own
    histogram: how late a timer due every 0.1 s ran)"""
    round_trips: list[float] = field(default_factory=list)
    """seconds of the GETs sampled every 0.1 s during the phase (``RoundTrips``): the API's latency under its load"""

    @property
    def turns_per_rollout(self) -> float | None:
        return None if self.turns is None else self.turns / max(len(self.figures), 1)

    @property
    def log_lines_per_rollout(self) -> float | None:
        return None if self.log_lines is None else self.log_lines / max(len(self.figures), 1)

    @property
    def advances(self) -> list[float]:
        return [v for f in self.figures for v in f.transitions.values()]

    @property
    def done(self) -> int:
        return sum(f.phase == "Succeeded" for f in self.figures)

    @property
    def conflicts(self) -> Counter[str]:
        return conflicts(self.writes)

    @property
    def status_writes_per_rollout(self) -> float:
        done = sum(n for key, n in self.writes.items() if key.startswith(f"{PLURAL}/status ") and key.endswith(" 200"))
        return done / max(len(self.figures), 1)

    @property
    def gets_per_rollout(self) -> float:
        """GETs of a rollout or a Deployment (its target) per rollout: what the turns did not read from the watch."""
        reads = {f"{resource} GET" for resource in READ_RESOURCES}
        done = sum(n for key, n in self.writes.items() if key.rsplit(" ", 1)[0] in reads)
        return done / max(len(self.figures), 1)

    @property
    def cpu_per_rollout(self) -> float | None:
        return None if self.cpu_seconds is None else self.cpu_seconds / max(len(self.figures), 1)


def run_phase(
    world: World,
    cluster: Cluster,
    recorder: Recorder,
    workload: Workload,
    namespaces: Sequence[str],
    *,
    at_once: bool,
    console: Console,
    profile_dir: Path | None = None,
) -> Phase:
    """Targets first (not measured), then the rollouts: one after another, or all at once."""
    started = time.monotonic()
    cluster.create_targets(world, namespaces, recorder)
    console.print(f"  {len(namespaces)} targets Available in {time.monotonic() - started:.1f}s")
    operator = world.operator_process
    cpu_before, writes_before, lines_before = operator.cpu_seconds(), api_writes(world), _lines(operator.log_path)
    metrics_before = operator_metrics(world)
    label = f"{workload.name}-{len(namespaces)}"
    figures = []
    with collector_paused():
        profiler = Profiler(operator.pid, profile_dir, label) if profile_dir is not None else None
        round_trips = RoundTrips(cluster, namespaces[0])
        try:
            if at_once:
                applied = {ns: cluster.create_rollout(world, ns, workload) for ns in namespaces}
                wait_all_terminal(recorder, namespaces, PARALLEL_TIMEOUT * max(1, len(namespaces) // 50))
                figures = [analyse(recorder, ns, applied[ns], workload.verify_wait) for ns in namespaces]
                first = min(applied.values())
                makespan = max(applied[f.namespace] + f.wall for f in figures) - first
            else:
                first = time.time()
                for ns in namespaces:
                    at = cluster.create_rollout(world, ns, workload)
                    wait_all_terminal(recorder, [ns], SEQUENTIAL_TIMEOUT)
                    figures.append(analyse(recorder, ns, at, workload.verify_wait))
                makespan = time.time() - first
        finally:
            top = profiler.stop() if profiler is not None else []
            rtts = round_trips.stop()
    cpu_after, metrics_after = operator.cpu_seconds(), operator_metrics(world)
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    turns = lag99 = None
    if metrics_before is not None and metrics_after is not None:
        turns = count_turns(metrics_after) - count_turns(metrics_before)
        lag99 = bucket_quantile(loop_lag_buckets(metrics_before), loop_lag_buckets(metrics_after), 0.99)
    return Phase(
        workload.name,
        len(namespaces) if at_once else 1,
        figures,
        cpu,
        operator.peak_rss_kib(),
        makespan,
        api_writes(world) - writes_before,
        top,
        profiler.svg if profiler is not None else None,
        _lines(operator.log_path) - lines_before,
        turns,
        lag99,
        rtts,
    )


def _lines(path: Path) -> int:
    with path.open("rb") as log:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: log.read(1 << 16), b""))


def run_workload(
    workload: Workload, sequential: int, scales: Sequence[int], profile_at: int, out_dir: Path, console: Console
) -> tuple[list[Phase], list[float], list[float], int | None]:
    """One operator (its own world) through `sequential` rollouts one at a time, then each scale at once."""
    console.print(f"[bold]{workload.name}[/]: a fresh world and operator ...")
    log = lambda line: console.print(f"  [dim]{line}[/]", highlight=False)  # noqa: E731
    with World(tick_seconds=1.0, real_node=False, log=log) as world:
        idle = world.operator_process.peak_rss_kib()
        recorder = start_recording(world)
        cluster = Cluster(world)
        phases = []
        try:
            seq = [f"bench-{workload.name}-seq-{i:03d}" for i in range(sequential)]
            console.print(f"  {sequential} rollouts one after another ...")
            phases.append(run_phase(world, cluster, recorder, workload, seq, at_once=False, console=console))
            with collector_paused():
                rtt = cluster.round_trips(seq[0])
                floor = cluster.writes_seen(recorder, seq[0])
            for scale in scales:
                names = [f"bench-{workload.name}-x{scale}-{i:03d}" for i in range(scale)]
                console.print(f"  {scale} rollouts at once ...")
                profile = out_dir if scale == profile_at else None
                phase = run_phase(
                    world, cluster, recorder, workload, names, at_once=True, console=console, profile_dir=profile
                )
                phases.append(phase)
        finally:
            recorder.stopping.set()
            cluster.close()
        for error in recorder.errors:
            console.print(f"[yellow]note:[/] {error}")
    return phases, rtt, floor, idle


# --------------------------------------------------------------------------------------------------
# Soak: memory over many rollouts


SOAK_VERIFY: Final[Mapping[str, str | int]] = {"interval": "1s", "count": 1}
SOAK_WARM_UP: Final = 100
"""Rollouts before the reference RSS is taken (imports, caches and pools filled by then)."""


@dataclass
class Soak:
    rss_mib: list[tuple[int, float]]
    """(rollouts finished, operator VmRSS in MiB) sampled along the way"""
    failed: list[str]
    seconds: float

    @property
    def growth(self) -> float | None:
        """Largest RSS after warm-up relative to the RSS at warm-up."""
        reference = next((mib for done, mib in self.rss_mib if done >= SOAK_WARM_UP), None)
        later = [mib for done, mib in self.rss_mib if done > SOAK_WARM_UP]
        return None if reference is None or not later else max(later) / reference - 1


def soak(total: int, lanes: int, every: int, console: Console) -> Soak:
    """`total` peer-shaped rollouts (count 1), `lanes` at a time, each lane one after another on its own
    Deployment: every rollout is applied, waited to Succeeded and deleted (onDelete Orphan) before the next; the
    next flips the image back. The operator's VmRSS every `every` rollouts."""
    log = lambda line: console.print(f"  [dim]{line}[/]", highlight=False)  # noqa: E731
    workload = Workload("soak", migrate=False, checks=lambda w: [_healthz(w)], verify=SOAK_VERIFY)
    started = time.monotonic()
    with World(tick_seconds=1.0, real_node=False, log=log) as world:
        recorder = start_recording(world)
        cluster = Cluster(world)
        namespaces = [f"bench-soak-{i:02d}" for i in range(lanes)]
        done = 0
        samples: list[tuple[int, float]] = []
        failed: list[str] = []
        lock = threading.Lock()

        def sample() -> None:
            kib = world.operator_process.rss_kib()
            if kib is not None:
                samples.append((done, kib / 1024))

        def lane(namespace: str, count: int) -> None:
            nonlocal done
            for i in range(count):
                name = f"soak-{i:04d}"
                manifest = rollout_manifest(world, namespace, workload)
                manifest["metadata"]["name"] = name
                manifest["spec"]["onDelete"] = "Orphan"
                manifest["spec"]["target"]["image"] = NEW_IMAGE if i % 2 == 0 else OLD_IMAGE
                cluster.custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, manifest, _request_timeout=REQUEST_TIMEOUT
                )
                recorder.wait(
                    lambda name=name: _phase(recorder.latest("rollout", namespace, name)) in TERMINAL,  # type: ignore[misc]
                    timeout=SEQUENTIAL_TIMEOUT,
                    what=f"{namespace}/{name} to end",
                )
                phase = _phase(recorder.latest("rollout", namespace, name))
                cluster.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT
                )
                wait_for(
                    lambda: (
                        not cluster.custom.list_namespaced_custom_object(
                            GROUP, VERSION, namespace, PLURAL, _request_timeout=REQUEST_TIMEOUT
                        )["items"]
                    ),
                    timeout=SEQUENTIAL_TIMEOUT,
                    interval=0.1,
                    what=f"{namespace}/{name} deleted",
                )
                with lock:
                    done += 1
                    if phase != "Succeeded":
                        failed.append(f"{namespace}/{name}: {phase}")
                    if done % every == 0:
                        sample()
                        console.print(f"  {done} rollouts, operator RSS {samples[-1][1]:.1f} MiB")

        try:
            cluster.create_targets(world, namespaces, recorder)
            sample()
            share, extra = divmod(total, lanes)
            threads = [
                threading.Thread(target=lane, args=(ns, share + (1 if i < extra else 0)), daemon=True)
                for i, ns in enumerate(namespaces)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            recorder.stopping.set()
            cluster.close()
    return Soak(samples, failed, time.monotonic() - started)


def print_soak(result: Soak, console: Console) -> None:
    table = Table(title="soak: operator RSS by rollouts finished", title_justify="left", header_style="bold")
    table.add_column("rollouts", justify="right")
    table.add_column("RSS MiB", justify="right")
    table.add_column("")
    top = max(mib for _, mib in result.rss_mib)
    for done, mib in result.rss_mib:
        table.add_row(str(done), f"{mib:.1f}", "#" * round(40 * mib / top))
    console.print(table)
    growth = result.growth
    shown = "—" if growth is None else f"{growth * 100:+.1f}%"
    console.print(f"soak: growth after {SOAK_WARM_UP} rollouts (max later / at warm-up): {shown} (goal ≤ +10%)")
    console.print(f"soak: {result.seconds:.0f} s; not Succeeded: {len(result.failed)}")
    for line in result.failed[:10]:
        console.print(f"  [red]{line}[/]")


# --------------------------------------------------------------------------------------------------
# Targets (issue: half the peer's cost per rollout, 200 at once)


@dataclass(frozen=True)
class Target:
    what: str
    workload: str
    scale: int
    limit: float
    unit: str
    measure: Callable[[Phase, float], float | None]
    floor: Callable[[Phase, float], float | None] | None = None
    """what this machine allows whatever the operator does, in the limit's unit: a limit below it is out of reach
    for any controller here"""

    def phase(self, phases: Sequence[Phase]) -> Phase | None:
        return next((p for p in phases if p.workload == self.workload and p.scale == self.scale), None)

    def machine_floor(self, phases: Sequence[Phase], rtt50: float) -> float | None:
        phase = self.phase(phases)
        return None if phase is None or self.floor is None else self.floor(phase, rtt50)

    def judge(self, phases: Sequence[Phase], rtt50: float) -> tuple[float | None, bool | None]:
        phase = self.phase(phases)
        value = None if phase is None else self.measure(phase, rtt50)
        return value, (None if value is None else value <= self.limit)


def _p(values: Sequence[float], q: float) -> float | None:
    return percentile(values, q) if values else None


def _div(value: float | None, by: float) -> float | None:
    return None if value is None else value / by


def _get99(phase: Phase, rtt50: float) -> float | None:
    """One API GET's p99 during the phase, in quiet round trips: a stage advance needs at least one request to the
    same API server under the same load (a write, heavier than a GET) and two watch deliveries besides."""
    return _div(_p(phase.round_trips, 99), rtt50)


TARGETS: Final = (
    Target("overhead p50", "peer", 50, 0.3, "s", lambda p, _: _p([f.overhead for f in p.figures], 50)),
    Target("CPU per rollout", "peer", 50, 0.1, "s", lambda p, _: p.cpu_per_rollout),
    Target("peak RSS after 50 at once", "peer", 50, 100, "MiB", lambda p, _: _div(p.peak_rss_kib, 1024)),
    Target("stage advance p99 at 1", "peer", 1, 5, "x RTT", lambda p, r: _div(_p(p.advances, 99), r), _get99),
    Target("stage advance p99 at 50", "peer", 50, 20, "x RTT", lambda p, r: _div(_p(p.advances, 99), r), _get99),
    Target("stage advance p99 at 200", "peer", 200, 2, "s", lambda p, _: _p(p.advances, 99)),
    Target("peak RSS after 200 at once", "peer", 200, 150, "MiB", lambda p, _: _div(p.peak_rss_kib, 1024)),
    Target("rollouts not finished at 200", "peer", 200, 0, "", lambda p, _: float(len(p.figures) - p.done)),
    Target("write conflicts per rollout at 200", "peer", 200, 1, "", lambda p, _: p.conflicts.total() / 200),
)


# --------------------------------------------------------------------------------------------------
# Output


def _ms(value: float | None, rtt50: float) -> str:
    return "—" if value is None else f"{value * 1000:.0f} ({value / rtt50:.0f}x)"


def _upper_ms(bound: float | None) -> str:
    if bound is None:
        return "—"
    return "> last bucket" if math.isinf(bound) else f"≤ {bound * 1000:g}"


def phase_table(phases: Sequence[Phase], rtt50: float) -> Table:
    table = Table(title="per workload and scale", title_justify="left", header_style="bold")
    heads = (
        "workload", "at once", "done", "advance p50 ms (xRTT)", "advance p99 ms (xRTT)", "overhead p50 s",
        "overhead p99 s", "CPU/rollout s", "peak RSS MiB", "makespan s", "status writes/rollout", "GETs/rollout", "write conflicts",
        "log lines/rollout", "turns/rollout", "loop lag p99 ms",
    )  # fmt: skip
    for head in heads:
        table.add_column(head, justify="left" if head == "workload" else "right")
    for p in phases:
        overheads = [f.overhead for f in p.figures]
        cpu = p.cpu_per_rollout
        table.add_row(
            p.workload,
            "1 (one after another)" if p.scale == 1 else str(p.scale),
            f"{p.done}/{len(p.figures)}",
            _ms(_p(p.advances, 50), rtt50),
            _ms(_p(p.advances, 99), rtt50),
            "—" if not overheads else f"{_p(overheads, 50):.2f}",
            "—" if not overheads else f"{_p(overheads, 99):.2f}",
            "—" if cpu is None else f"{cpu:.3f}",
            "—" if p.peak_rss_kib is None else f"{p.peak_rss_kib / 1024:.0f}",
            f"{p.makespan:.1f}",
            f"{p.status_writes_per_rollout:.1f}",
            f"{p.gets_per_rollout:.1f}",
            str(p.conflicts.total()),
            "—" if p.log_lines_per_rollout is None else f"{p.log_lines_per_rollout:.1f}",
            "—" if p.turns_per_rollout is None else f"{p.turns_per_rollout:.1f}",
            _upper_ms(p.loop_lag_p99),
        )
    return table


def overhead_table(phases: Sequence[Phase]) -> Table:
    """Where the overhead goes: each stretch of a rollout the operator spends beyond what it had to wait for (p50
    and p99 over the phase's rollouts, seconds)."""
    table = Table(title="where the overhead goes (s, p50 / p99)")
    names = list(dict.fromkeys(name for p in phases for f in p.figures for name in f.parts))
    table.add_column("workload, at once")
    for name in names:
        table.add_column(name, justify="right")
    for p in phases:
        cells = []
        for name in names:
            values = [f.parts[name] for f in p.figures if name in f.parts]
            cells.append("—" if not values else f"{_p(values, 50):.2f} / {_p(values, 99):.2f}")
        table.add_row(f"{p.workload} x {p.scale}", *cells)
    return table


def target_table(phases: Sequence[Phase], rtt50: float) -> Table:
    table = Table(title="targets (peer-shaped workload)", title_justify="left", header_style="bold")
    for head in ("target", "at once", "limit", "measured", "met", "one GET during the phase, p99"):
        table.add_column(head, justify="left" if head == "target" else "right")
    for t in TARGETS:
        value, met = t.judge(phases, rtt50)
        floor = t.machine_floor(phases, rtt50)
        shown = "—" if value is None else f"{value:.3g} {t.unit}".strip()
        verdict = "—" if met is None else "[green]yes[/]" if met else "[red]no[/]"
        below = "" if floor is None or floor <= t.limit else " [yellow](above the limit)[/]"
        machine = "—" if floor is None else f"{floor:.3g} {t.unit}{below}".strip()
        table.add_row(t.what, str(t.scale), f"≤ {t.limit:g} {t.unit}".strip(), shown, verdict, machine)
    table.caption = (
        "one GET during the phase: the p99 of a bare API GET sampled every 0.1 s while the phase ran, in quiet round "
        "trips; a stage advance needs at least one request to the same API server under the same load (a write) and "
        "two watch deliveries besides, so a limit below it is out of reach for any controller on this machine"
    )
    return table


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(
    workloads: Sequence[str], sequential: int, scales: Sequence[int], profile_at: int, out_dir: Path, console: Console
) -> int:
    started = time.monotonic()
    console.print(f"[bold]Torghut rollout operator benchmark[/] ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f})")
    phases: list[Phase] = []
    rtts: list[float] = []
    floors: list[float] = []
    idle: dict[str, int | None] = {}
    for name in workloads:
        found, rtt, floor, idle[name] = run_workload(WORKLOADS[name], sequential, scales, profile_at, out_dir, console)
        phases += found
        rtts += rtt
        floors += floor
    rtt50 = statistics.median(rtts)
    console.print(phase_table(phases, rtt50))
    facts = Table(show_header=False, box=None)
    facts.add_column()
    facts.add_column(justify="right")
    facts.add_row(
        "API GET round trip p50 / p99 (the yardstick)", f"{rtt50 * 1000:.1f} / {percentile(rtts, 99) * 1000:.1f} ms"
    )
    floor50, floor99 = statistics.median(floors), percentile(floors, 99)
    facts.add_row(
        "a write seen through a watch p50 / p99 (the floor of a stage advance)",
        f"{floor50 * 1000:.1f} / {floor99 * 1000:.1f} ms ({floor50 / rtt50:.1f}x / {floor99 / rtt50:.1f}x RTT)",
    )
    for p in phases:
        if p.round_trips:
            during50 = statistics.median(p.round_trips)
            advance99 = _p(p.advances, 99)
            facts.add_row(
                f"{p.workload} x {p.scale}: API GET round trip during the phase p50 / p99"
                + ("" if advance99 is None else " (advance p99 in these)"),
                f"{during50 * 1000:.1f} / {percentile(p.round_trips, 99) * 1000:.1f} ms"
                + ("" if advance99 is None else f" ({advance99 / during50:.0f}x)"),
            )
    for name, kib in idle.items():
        if kib is not None:
            facts.add_row(f"{name}: operator peak RSS at idle (after start)", f"{kib / 1024:.0f} MiB")
    facts.add_row("benchmark wall time", f"{time.monotonic() - started:.0f} s")
    console.print(facts)
    if "peer" in workloads:
        console.print(target_table(phases, rtt50))
    console.print(overhead_table(phases))
    for p in phases:
        if p.conflicts:
            where = ", ".join(f"{what}: {n}" for what, n in p.conflicts.most_common())
            console.print(f"write conflicts, {p.workload} x {p.scale}: {where}")
    for p in phases:
        if p.profile is not None:
            console.print(f"[bold]CPU profile, {p.workload} x {p.scale} at once[/]: {p.profile} (flame graph)")
            for i, (function, share) in enumerate(p.top, 1):
                console.print(f"  {i}. {share * 100:5.1f}%  {function}")
    console.print(
        "[dim]stage advance: from a stage's completion becoming observable to the next phase seen; overhead: wall "
        "minus what the rollout had to wait for; p99 is nearest-rank (with fewer than 100 values, the maximum); "
        "write conflicts: 409/422 answers to writes of what the operator writes (rollouts and their status, Deployments, "
        "Jobs, ConfigMaps).[/]"
    )
    failed = [f for p in phases for f in p.figures if f.phase != "Succeeded"]
    for f in failed:
        console.print(f"[bold red]{f.namespace}/{ROLLOUT} ended {f.phase}:[/] {f.message}")
    return 1 if failed else 0


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torghut_localstack.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="peer,torghut", help="comma-separated: peer, torghut")
    parser.add_argument("--sequential", type=int, default=12, help="rollouts one after another (stage advance at 1)")
    parser.add_argument("--scales", default="50,200", help="comma-separated numbers of rollouts applied at once")
    parser.add_argument("--profile-at", type=int, default=50, help="py-spy records the operator at this scale")
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="where the flame graphs go")
    parser.add_argument("--soak", type=int, default=0, help="instead: this many rollouts for the memory soak")
    parser.add_argument("--soak-lanes", type=int, default=4, help="soak rollouts at a time (each lane sequential)")
    parser.add_argument("--soak-every", type=int, default=50, help="sample the operator's RSS every N rollouts")
    args = parser.parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload {', '.join(unknown)}: use {', '.join(WORKLOADS)}")
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    # Ctrl-C, `timeout`, a closed terminal or a cancelled CI job: each stops the world in order (SIGINT too,
    # which a shell leaves ignored for background jobs).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        if args.soak:
            result = soak(args.soak, args.soak_lanes, args.soak_every, console)
            print_soak(result, console)
            return 1 if result.failed else 0
        return run(workloads, args.sequential, _ints(args.scales), args.profile_at, args.out, console)
    except (WorldError, TimeoutError, WaitTimeout) as error:
        console.print(f"[bold red]bench: {error}[/]")
        return 2
    except KeyboardInterrupt:
        console.print("[bold]interrupted[/]: everything the benchmark started was stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
