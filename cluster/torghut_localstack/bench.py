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
import math
import os
import signal
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
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
VERIFY_INITIAL_DELAY, VERIFY_INTERVAL, VERIFY_COUNT = 0, 1, 2
VERIFY: Final = {"initialDelay": f"{VERIFY_INITIAL_DELAY}s", "interval": f"{VERIFY_INTERVAL}s", "count": VERIFY_COUNT}
VERIFY_WAIT_SECONDS: Final = float(VERIFY_INITIAL_DELAY + (VERIFY_COUNT - 1) * VERIFY_INTERVAL)
"""initialDelay + (count - 1) x interval: the time verify takes whatever the operator does."""
MIGRATE_JOB: Final = {
    "image": workloads.BUSYBOX_IMAGE,
    "command": ["sh", "-c", "echo migrated"],
    "backoffLimit": 0,
}
ROLLOUT: Final = "bench"
SEQUENTIAL_TIMEOUT: Final = 120.0
PARALLEL_TIMEOUT: Final = 300.0
REQUEST_TIMEOUT: Final = (5.0, 30.0)


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
                for event in watch(api, make_list(api), deadline=math.inf, **kwargs):
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


def rollout_manifest(world: World, namespace: str) -> dict[str, Any]:
    """A rollout with a migration Job, the new image and one check per provider (Postgres, Prometheus, HTTP)."""
    checks = [
        {"name": "executions-written", "postgres": {"query": "SELECT count(*) AS value FROM executions"}, "min": 1},
        {
            "name": "decisions-flowing",
            "prometheus": {"query": "sum(torghut_trading_decisions_total)"},
            "successCondition": "result > 0",
        },
        {
            "name": "healthz",
            "http": {"url": f"{world.simulator.url}/healthz", "jsonPath": "$.status"},
            "successCondition": 'result == "ok"',
        },
    ]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": ROLLOUT, "namespace": namespace},
        "spec": {
            "target": {"kind": "Deployment", "name": TARGET, "container": CONTAINER, "image": NEW_IMAGE},
            "database": {"secretRef": {"name": APP_SECRET_NAME, "key": APP_SECRET_KEY}},
            "prometheus": {"url": world.prometheus.url},
            "migrate": {"job": MIGRATE_JOB},
            "verify": {**VERIFY, "checks": checks},
        },
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

    def create_rollout(self, world: World, namespace: str) -> float:
        """Create the rollout; returns when the API server accepted it (`time.time()`)."""
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, rollout_manifest(world, namespace), _request_timeout=REQUEST_TIMEOUT
        )
        return time.time()

    def round_trips(self, namespace: str, count: int = 30) -> list[float]:
        """Seconds of `count` GETs of the app Secret: the machine's API latency, as a yardstick."""
        out = []
        for _ in range(count):
            started = time.perf_counter()
            self.core.read_namespaced_secret(APP_SECRET_NAME, namespace, _request_timeout=REQUEST_TIMEOUT)
            out.append(time.perf_counter() - started)
        return out


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

    @property
    def overhead(self) -> float:
        return self.wall - self.waited


def _first(events: Iterable[tuple[float, dict[str, Any]]], predicate: Callable[[dict[str, Any]], bool]) -> float | None:
    return next((at for at, obj in events if predicate(obj)), None)


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def analyse(recorder: Recorder, namespace: str, applied_at: float) -> RolloutFigures:
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

    succeeded = seen("Succeeded")
    if succeeded is not None:
        done = next(obj for at, obj in rollout if at == succeeded and _phase(obj) == "Succeeded")
        stamps = [m["at"] for c in done["status"].get("checks") or [] for m in c.get("measurements") or []]
        if stamps:
            transitions["last measurement → Succeeded"] = succeeded - max(_epoch(s) for s in stamps)

    end = succeeded if succeeded is not None else (rollout[-1][0] if rollout else applied_at)
    waited = VERIFY_WAIT_SECONDS
    if job_created is not None and job_done is not None:
        waited += job_done - job_created
    if patched is not None and available is not None:
        waited += available - patched
    return RolloutFigures(namespace, phase, str(status.get("message") or ""), transitions, end - applied_at, waited)


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


def section_rows(latency: str, overhead: str, figures: Sequence[RolloutFigures]) -> list[Row]:
    by_transition: dict[str, list[float]] = defaultdict(list)
    for f in figures:
        for name, seconds in f.transitions.items():
            by_transition[name].append(seconds)
    rows = [Row(f"{latency} {name}", values, "ms") for name, values in by_transition.items()]
    rows.append(Row(f"{latency} every transition", [v for vs in by_transition.values() for v in vs], "ms"))
    rows.append(Row(f"{overhead} wall, apply → Succeeded", [f.wall for f in figures], "s"))
    rows.append(Row(f"{overhead} waited for Job, rollout, verify", [f.waited for f in figures], "s"))
    rows.append(Row(f"{overhead} operator overhead", [f.overhead for f in figures], "s"))
    rows.append(Row(f"{overhead} overhead / wall", [f.overhead / f.wall for f in figures if f.wall > 0], "%"))
    return rows


# --------------------------------------------------------------------------------------------------
# Main


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(sequential: int, parallel: int, console: Console) -> int:
    started = time.monotonic()
    console.print(f"[bold]Torghut rollout operator benchmark[/] ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f})")
    with World(tick_seconds=1.0, log=lambda line: console.print(f"  [dim]{line}[/]", highlight=False)) as world:
        hwm_start = world.operator_process.peak_rss_kib()
        cpu_start = world.operator_process.cpu_seconds()
        recorder = start_recording(world)
        cluster = Cluster(world)
        try:
            seq_ns = [f"bench-seq-{i:02d}" for i in range(sequential)]
            par_ns = [f"bench-par-{i:02d}" for i in range(parallel)]
            t0 = time.monotonic()
            cluster.create_targets(world, seq_ns, recorder)
            console.print(f"  {sequential} sequential targets ready in {time.monotonic() - t0:.1f}s")
            rtt = cluster.round_trips(seq_ns[0])

            console.print(f"(a)+(b): {sequential} rollouts one after another ...")
            sequential_figures = []
            for ns in seq_ns:
                applied = cluster.create_rollout(world, ns)
                wait_all_terminal(recorder, [ns], SEQUENTIAL_TIMEOUT)
                sequential_figures.append(analyse(recorder, ns, applied))
            hwm_before = world.operator_process.peak_rss_kib()
            cpu_before = world.operator_process.cpu_seconds()

            t0 = time.monotonic()
            cluster.create_targets(world, par_ns, recorder)
            console.print(f"  {parallel} parallel targets ready in {time.monotonic() - t0:.1f}s")
            console.print(f"(c): {parallel} rollouts at once ...")
            applied_at = {ns: cluster.create_rollout(world, ns) for ns in par_ns}
            first_apply = min(applied_at.values())
            wait_all_terminal(recorder, par_ns, PARALLEL_TIMEOUT)
            parallel_figures = [analyse(recorder, ns, applied_at[ns]) for ns in par_ns]
            makespan = max(first_apply + f.wall for f in parallel_figures) - first_apply
            hwm = world.operator_process.peak_rss_kib()
            rss = world.operator_process.rss_kib()
            cpu_after = world.operator_process.cpu_seconds()
        finally:
            recorder.stopping.set()
            cluster.close()

    failed = [f for f in (*sequential_figures, *parallel_figures) if f.phase != "Succeeded"]
    table = Table(title="TorghutRollout operator benchmark", title_justify="left", header_style="bold")
    for column in ("measure", "unit", "n", "p50", "p99", "max"):
        table.add_column(column, justify="left" if column in ("measure", "unit") else "right")
    rows = [
        *section_rows("(a)", "(b)", sequential_figures),
        *section_rows(f"(c) x{parallel}", f"(c) x{parallel}", parallel_figures),
        Row("API GET round trip (yardstick)", rtt, "ms"),
    ]
    for row in rows:
        table.add_row(*row.cells())
    console.print(table)

    seq_all = [v for f in sequential_figures for v in f.transitions.values()]
    par_all = [v for f in parallel_figures for v in f.transitions.values()]
    rtt50 = statistics.median(rtt)
    facts = Table(show_header=False, box=None)
    facts.add_column()
    facts.add_column(justify="right")
    facts.add_row(f"(c) makespan, first apply → last Succeeded, {parallel} rollouts", f"{makespan:.1f} s")
    facts.add_row("(c) throughput", f"{parallel / makespan:.2f} rollouts/s")
    if hwm is not None:
        peaks = " → ".join(f"{(k or 0) / 1024:.0f}" for k in (hwm_start, hwm_before, hwm))
        facts.add_row("operator peak memory VmHWM: idle → after (a,b) → after (c)", f"{peaks} MiB")
    if rss is not None:
        facts.add_row("operator resident memory at the end", f"{rss / 1024:.0f} MiB")
    if cpu_start is not None and cpu_before is not None and cpu_after is not None:
        facts.add_row("operator CPU per rollout, sequential", f"{(cpu_before - cpu_start) / sequential:.2f} s")
        facts.add_row("operator CPU per rollout, parallel", f"{(cpu_after - cpu_before) / parallel:.2f} s")
    if seq_all and par_all:
        facts.add_row(
            "stage advance p50, parallel / sequential",
            f"{statistics.median(par_all) / statistics.median(seq_all):.1f}x",
        )
        facts.add_row(
            "stage advance p50 / API round trip p50 (sequential)", f"{statistics.median(seq_all) / rtt50:.1f}x"
        )
        facts.add_row("stage advance p50 / API round trip p50 (parallel)", f"{statistics.median(par_all) / rtt50:.1f}x")
    facts.add_row("benchmark wall time", f"{time.monotonic() - started:.0f} s")
    console.print(facts)
    console.print("[dim]p99 is nearest-rank: with fewer than 100 values it is the maximum.[/]")
    for error in recorder.errors:
        console.print(f"[yellow]note:[/] {error}")
    if failed:
        for f in failed:
            console.print(f"[bold red]{f.namespace}/{ROLLOUT} ended {f.phase}:[/] {f.message}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torghut_localstack.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sequential", type=int, default=12, help="rollouts one after another for (a), (b); 3 transitions each"
    )
    parser.add_argument("--parallel", type=int, default=50, help="rollouts at once for (c)")
    args = parser.parse_args(argv)
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 110)
    # Ctrl-C, `timeout`, a closed terminal or a cancelled CI job: each stops the world in order (SIGINT too,
    # which a shell leaves ignored for background jobs).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        return run(args.sequential, args.parallel, console)
    except (WorldError, TimeoutError, WaitTimeout) as error:
        console.print(f"[bold red]bench: {error}[/]")
        return 2
    except KeyboardInterrupt:
        console.print("[bold]interrupted[/]: everything the benchmark started was stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
