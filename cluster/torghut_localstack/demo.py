"""`make demo`: one Torghut release carried end to end by the operator, on this machine.

    python -m torghut_localstack.demo [--cluster local|kind] [--gitops]

Builds the world of `torghut_localstack.world` (control plane or kind, Postgres with a Torghut database at its
newest schema, where `torghut_app` holds nothing on the research tables of migration 0026 and old fills have
'unknown' adapters, Prometheus, the Torghut simulator (on the real node: Torghut's own Deployment, from its image), the operator in the cluster from its image on the real
node, with the target's pods there too; a host process under `--no-real-node`), then applies one
TorghutRollout that does what a Torghut release needs:

* migrate: the route/grant SQL pack (`manifests/torghut`), applied by the operator, then proven in Postgres
  (the Alembic heads present, `torghut_app` holds SELECT/INSERT/UPDATE/DELETE on every `research_*` table);
* deploy: the new image, pinned by digest;
* verify: the `torghut-completion` preset (route provenance and backfill, grants, research writes, signal
  throughput, fallback ratio, the service's endpoints and build), three measurements two seconds apart;
* promote: step `paper` turns trading on, blocked unless an approved `research_promotions` row exists.

`--gitops` (`make demo GITOPS=1`): the rollout is not applied with kubectl but pushed to a Git repository that a
real Argo CD (v3.2.11, `torghut_localstack.argocd`) syncs with the project's health check and actions registered;
the run ends with Argo CD's view of the rollout too.

Progress is printed from a watch on the rollout; the run ends with the evidence report (the ConfigMap
`torghut-evidence-<name>`) and the timings. Exit status: 0 Succeeded, 1 the rollout did not succeed,
2 the world could not be built, 130 interrupted.
"""

from __future__ import annotations

import argparse
import itertools
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Final, cast

import yaml
from kubernetes.client.exceptions import ApiException
from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from torghut_localstack import sql_pack, torghut_db
from torghut_localstack.argocd import ArgoCD, ArgoCDError, application_manifest
from torghut_localstack.binaries import ensure_argocd_binaries
from torghut_localstack.cluster import ClusterError
from torghut_localstack.kubectl import KubectlError
from torghut_localstack.postgres import PostgresError
from torghut_localstack.prometheus import PrometheusError
from torghut_localstack.wait import WaitTimeout
from torghut_localstack.world import (
    APP_SECRET_KEY,
    APP_SECRET_NAME,
    CLUSTER_MODES,
    CONTAINER,
    TARGET,
    ClusterMode,
    World,
    WorldError,
    kube_client,
    watch,
)
from torghut_operator.core.api.spec import GROUP, KIND, PLURAL, VERSION, TorghutRolloutSpec
from torghut_operator.core.api.status import TorghutRolloutStatus
from torghut_operator.core.manifests import report_name
from torghut_operator.evidence.report import render_report

ROLLOUT: Final = "torghut-release"
TERMINAL: Final = frozenset({"Succeeded", "Failed", "RolledBack", "Aborted"})
INITIAL_ENV: Final = {"TRADING_MODE": "paper", "TRADING_ENABLED": "false"}
"""The Deployment before the release: paper mode, trading off until the promotion step turns it on."""
REPORT_WAIT_SECONDS: Final = 30.0

EXIT_SUCCEEDED, EXIT_NOT_SUCCEEDED, EXIT_NO_WORLD, EXIT_INTERRUPTED = 0, 1, 2, 130
WORLD_ERRORS: Final = (
    WorldError,
    ClusterError,
    PostgresError,
    PrometheusError,
    KubectlError,
    WaitTimeout,
    ArgoCDError,
    subprocess.SubprocessError,
    OSError,
)
APPLICATION: Final = "torghut"

PHASE_STYLES: Final = {
    "Succeeded": "bold green",
    "Failed": "bold red",
    "RolledBack": "bold yellow",
    "RollingBack": "yellow",
    "Aborted": "bold red",
    "Paused": "magenta",
}
VERDICT_STYLES: Final = {"Successful": "green", "Failed": "red", "Error": "red", "Inconclusive": "yellow"}


def rollout_manifest(world: World, name: str = ROLLOUT) -> dict[str, Any]:
    """The release: SQL pack + postconditions, the new image, the completion gates, one promotion step."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": world.namespace},
        "spec": {
            "target": {"kind": "Deployment", "name": TARGET, "container": CONTAINER, "image": world.new_image},
            "database": {"secretRef": {"name": APP_SECRET_NAME, "key": APP_SECRET_KEY}, "statementTimeout": "10s"},
            "prometheus": {"url": world.prometheus.url},
            "serviceUrl": world.service_url,
            "migrate": {
                "sql": {"configMapRef": {"name": sql_pack.CONFIGMAP_NAME}},
                "expect": {
                    "alembicHeads": [torghut_db.heads_of(world.schema_state)[0]],
                    "grants": [
                        {
                            "role": torghut_db.APP_ROLE,
                            "tables": "research_*",
                            "privileges": list(torghut_db.GRANT_PRIVILEGES),
                        }
                    ],
                },
            },
            "deploy": {"progressDeadline": "2m"},
            "presets": ["torghut-completion"],
            "verify": {"initialDelay": "2s", "interval": "2s", "count": 3, "timeout": "3m"},
            "promotion": {
                "steps": [
                    {
                        "name": "paper",
                        "env": {"TRADING_ENABLED": "true", "TRADING_MODE": "paper"},
                        "requiredPromotion": {"mode": "paper"},
                    }
                ]
            },
            "rollback": {"onFailure": True},
        },
    }


def database_before(world: World) -> str:
    """What the release has to fix, read as the superuser: missing grants, fills without route adapters."""
    engine = torghut_db.make_engine(world.database.admin_dsn)
    try:
        privileges = torghut_db.research_privileges(engine)
        heads = torghut_db.alembic_heads(engine)
        with engine.connect() as conn:
            unset = conn.execute(
                text(
                    "SELECT count(*) FROM executions"
                    " WHERE COALESCE(execution_expected_adapter, 'unknown') = 'unknown'"
                    " OR COALESCE(execution_actual_adapter, 'unknown') = 'unknown'"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    missing = sum(not held for held in privileges.values())
    return (
        f"before the release: {torghut_db.APP_ROLE} lacks {missing} of {len(privileges)} privileges on research_* "
        f"(so the app's research writes are denied), {unset} fills have no route adapters, "
        f"Alembic heads {', '.join(heads)}"
    )


# --------------------------------------------------------------------------------------------------
# Progress


@dataclass
class Progress:
    """Prints what changed between two states of the rollout: phase, stage, message, files, checks, steps."""

    console: Console
    started: float = field(default_factory=time.monotonic)
    phases: list[tuple[str, float]] = field(default_factory=list)
    """(phase, seconds since `started`) in the order first seen."""
    _phase: str | None = None
    _message: str = ""
    _applied: set[str] = field(default_factory=set)
    _verdicts: dict[tuple[str, str], str] = field(default_factory=dict)
    _notes: set[str] = field(default_factory=set)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _line(self, text: str, style: str = "") -> None:
        stamp = f"[dim]{self.elapsed():6.1f}s[/]"
        self.console.print(f"{stamp}  [{style}]{text}[/]" if style else f"{stamp}  {text}", highlight=False)

    def show(self, obj: dict[str, Any]) -> None:
        status: dict[str, Any] = obj.get("status") or {}
        phase = str(status.get("phase") or "Pending")
        if phase != self._phase:
            self._phase = phase
            self.phases.append((phase, self.elapsed()))
            stage = status.get("stage") or ""
            self._line(
                f"{phase:<12} {stage:<16} {_escape(status.get('message') or '')}", PHASE_STYLES.get(phase, "bold cyan")
            )
            self._message = str(status.get("message") or "")
        elif (message := str(status.get("message") or "")) and message != self._message:
            self._message = message
            self._line(f"{'':<12} {'':<16} {_escape(message)}", "dim")
        for applied in (status.get("migration") or {}).get("applied") or []:
            if applied["name"] not in self._applied:
                self._applied.add(applied["name"])
                self._line(f"  applied {applied['name']} (sha256 {applied['checksum'][:12]})", "cyan")
        for check in status.get("checks") or []:
            key = (str(check.get("stage")), str(check.get("name")))
            verdict = str(check.get("phase"))
            if verdict in VERDICT_STYLES and self._verdicts.get(key) != verdict:
                self._line(
                    f"  {key[0]} check {key[1]}: {verdict}: {_escape(check.get('message') or '')}",
                    VERDICT_STYLES[verdict],
                )
            self._verdicts[key] = verdict
        for note in _notes(status):
            if note not in self._notes:
                self._notes.add(note)
                self._line(f"  {_escape(note)}", "magenta")


def _notes(status: dict[str, Any]) -> list[str]:
    notes = []
    if status.get("blockedBy"):
        notes.append(f"blocked by rollout {status['blockedBy']}")
    promotion = status.get("promotion") or {}
    if promotion.get("message"):
        notes.append(f"promotion: {promotion['message']}")
    return notes


def _escape(text: str, limit: int = 240) -> str:
    """`text` shortened to `limit` characters, safe to print with rich markup."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("[", "\\[")


def follow(world: World, api: Any, progress: Progress, name: str, *, timeout: float) -> dict[str, Any]:
    """Watch the rollout until it ends, waits for a human, or `timeout` passes; the last state seen."""
    from kubernetes import client  # noqa: PLC0415 - heavy

    custom = client.CustomObjectsApi(api)
    last: dict[str, Any] = {}
    for event in watch(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        world.namespace,
        PLURAL,
        field_selector=f"metadata.name={name}",
        deadline=time.monotonic() + timeout,
    ):
        if event.type == "DELETED":
            raise WorldError(f"TorghutRollout {world.namespace}/{name} was deleted")
        last = event.obj
        progress.show(last)
        status = last.get("status") or {}
        current = status.get("observedGeneration") == last["metadata"].get("generation")
        if current and (status.get("phase") in TERMINAL or status.get("awaitingApproval")):
            break
    return last


def evidence_report(world: World, api: Any, obj: dict[str, Any]) -> tuple[str, str]:
    """The report the operator published for the final phase (ConfigMap), else one rendered from status."""
    from kubernetes import client  # noqa: PLC0415

    name = obj["metadata"]["name"]
    phase = str((obj.get("status") or {}).get("phase"))
    core = client.CoreV1Api(api)
    if phase in TERMINAL:
        for event in watch(
            core.list_namespaced_config_map,
            world.namespace,
            field_selector=f"metadata.name={report_name(name)}",
            deadline=time.monotonic() + REPORT_WAIT_SECONDS,
        ):
            report = str((event.obj.get("data") or {}).get("report.md") or "")
            if f"**{phase}**" in report:
                return report, f"ConfigMap {world.namespace}/{report_name(name)}"
    spec = TorghutRolloutSpec.model_validate(obj["spec"])
    status = TorghutRolloutStatus.model_validate(obj.get("status") or {})
    report = render_report(
        name=name, namespace=world.namespace, spec=spec, status=status, measurements=[], decisions=[], facts=None
    )
    return report, "rendered from status (no published report)"


# --------------------------------------------------------------------------------------------------
# Main


def _timings(console: Console, world: World, progress: Progress, finished: float, total: float) -> None:
    table = Table(title="Timings", show_header=True, header_style="bold", title_justify="left")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for step, seconds in world.timings.items():
        if step != "total":
            table.add_row(f"world: {step}", f"{seconds:.1f}")
    table.add_row("[bold]world ready[/]", f"[bold]{world.timings.get('total', 0.0):.1f}[/]")
    marks = [*progress.phases, ("end", finished)]
    for (phase, at), (_, until) in itertools.pairwise(marks):
        if phase not in TERMINAL:
            table.add_row(f"rollout: {phase}", f"{until - at:.1f}")
    table.add_row("[bold]rollout, apply to end[/]", f"[bold]{finished:.1f}[/]")
    table.add_row("[bold]demo total[/]", f"[bold]{total:.1f}[/]")
    console.print(table)


def run(
    cluster: ClusterMode,
    *,
    timeout: float,
    console: Console,
    verbose: bool = False,
    real_node: bool = True,
    gitops: bool = False,
) -> int:
    demo_started = time.monotonic()
    console.rule("[bold]Torghut rollout operator demo")
    console.print(f"building the world on the [bold]{cluster}[/] cluster ...")
    world = World(
        cluster=cluster,
        operator_verbose=verbose,
        real_node=real_node,
        operator_in_cluster=real_node or cluster == "kind",
        log=lambda line: console.print(f"  [dim]{_escape(line)}[/]", highlight=False),
    )
    try:
        world.start()
    except WORLD_ERRORS as error:
        console.print(f"[bold red]demo: cannot build the world:[/] {_escape(_first_line(error))}", highlight=False)
        if world.kept_workdir is not None:
            console.print(f"logs kept in {world.kept_workdir}")
        return EXIT_NO_WORLD
    ok = False
    try:
        ok = _release(world, timeout=timeout, console=console, demo_started=demo_started, gitops=gitops)
    except (*WORLD_ERRORS, ApiException) as error:
        console.print(f"[bold red]demo: {_escape(_first_line(error))}[/]", highlight=False)
    finally:
        world.stop(keep_workdir=not ok)
        if not ok and world.kept_workdir is not None:
            console.print(f"logs kept in {world.kept_workdir}")
    return EXIT_SUCCEEDED if ok else EXIT_NOT_SUCCEEDED


class _GitOps:
    """`--gitops`: Argo CD on the world's cluster, the rollout pushed to its Git repository, one Application."""

    def __init__(self, world: World, console: Console) -> None:
        self.world = world
        self.console = console
        self.argocd: ArgoCD | None = None

    def start(self) -> None:
        log = self.console.print
        bin_dir = ensure_argocd_binaries(on_line=lambda line: log(f"  [dim]{_escape(line)}[/]", highlight=False))
        argocd = ArgoCD(self.world.kubectl, bin_dir, self.world.workdir / "argocd", log=lambda m: log(f"  [dim]{m}[/]"))
        self.argocd = argocd.start()
        log(f"Argo CD v3.2.11 up in {argocd.timings['total']:.1f}s (API server {argocd.server}, Git {argocd.repo.url})")

    def apply(self, manifest: dict[str, Any]) -> None:
        assert self.argocd is not None
        folder = self.world.workdir / "gitops" / "torghut"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "rollout.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
        revision = self.argocd.repo.push(folder.parent, f"release {ROLLOUT}")
        app = application_manifest(APPLICATION, self.argocd.repo.url, "torghut", self.world.namespace)
        self.world.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(app))
        self.console.print(
            f"pushed {revision[:8]} to {self.argocd.repo.url}; Application argocd/{APPLICATION} syncs it"
        )

    def show(self) -> None:
        if self.argocd is None:
            return
        app = self.argocd.application(APPLICATION) or {}
        status = app.get("status") or {}
        health = self.argocd.resource_health(APPLICATION, KIND, ROLLOUT)
        self.console.print(
            f"Argo CD: Application {APPLICATION} {(status.get('sync') or {}).get('status')}, "
            f"{(status.get('health') or {}).get('status')}; TorghutRollout {ROLLOUT} health {health}"
        )
        actions = self.argocd.cli(
            "app", "actions", "list", APPLICATION, "--kind", KIND, "--resource-name", ROLLOUT,
            "--namespace", self.world.namespace,
        )  # fmt: skip
        self.console.print(actions.rstrip(), highlight=False, markup=False)

    def stop(self) -> None:
        if self.argocd is not None:
            self.argocd.stop()
            self.argocd = None


def _release(world: World, *, timeout: float, console: Console, demo_started: float, gitops: bool = False) -> bool:
    """Apply the rollout (or push it for Argo CD), follow it, print the report and timings; True on Succeeded."""
    console.print(_escape(database_before(world), 1000), highlight=False)
    manifest = rollout_manifest(world)
    console.rule(f"applying TorghutRollout {world.namespace}/{ROLLOUT}")
    console.print(yaml.safe_dump(manifest, sort_keys=False).rstrip(), highlight=False, markup=False)
    console.rule("progress")
    api = kube_client(world.kubeconfig)
    argo = _GitOps(world, console) if gitops else None
    try:
        if argo is not None:
            argo.start()
        progress = Progress(console)
        if argo is not None:
            argo.apply(manifest)
        else:
            world.kubectl.apply(manifest)
        final = follow(world, api, progress, ROLLOUT, timeout=timeout)
        finished = progress.elapsed()
        status = final.get("status") or {}
        phase = str(status.get("phase") or "Pending")
        report, source = evidence_report(world, api, final)
        if argo is not None:
            argo.show()
    finally:
        api.close()
        if argo is not None:
            argo.stop()
    console.rule(f"evidence report ({source})")
    console.out(report, highlight=False)
    _timings(console, world, progress, finished, time.monotonic() - demo_started)
    if phase == "Succeeded":
        console.print(f"[bold green]TorghutRollout {world.namespace}/{ROLLOUT} Succeeded[/]")
        return True
    if status.get("awaitingApproval"):
        why = f"awaiting approval (an Inconclusive gate needs a human): {status.get('message')}"
    elif phase in TERMINAL:
        why = f"ended {phase}: {status.get('message')}"
    else:
        why = f"still {phase} after {timeout:.0f}s: {status.get('message')}"
    console.print(f"[bold red]TorghutRollout {world.namespace}/{ROLLOUT} did not succeed:[/] {_escape(why)}")
    console.print(f"operator log: {world.operator.log_path}; simulator log: {world.workdir / 'simulator.log'}")
    return False


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torghut_localstack.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cluster", choices=CLUSTER_MODES, default="local", help="local (default) or kind")
    parser.add_argument(
        "--no-real-node",
        dest="real_node",
        action="store_false",
        help="leave the local cluster's real node out (one runs per host: e.g. inside the e2e session)",
    )
    parser.add_argument("--operator-verbose", action="store_true", help="debug logging in the operator's log file")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds the rollout may take once applied (default 300)"
    )
    parser.add_argument(
        "--gitops", action="store_true", help="deliver the rollout through a real Argo CD syncing from a local Git"
    )
    args = parser.parse_args(argv)
    console = Console(soft_wrap=True)
    # Ctrl-C, `timeout`, a closed terminal or a cancelled CI job: each stops the world in order (SIGINT too,
    # which a shell leaves ignored for background jobs).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        return run(
            cast(ClusterMode, args.cluster),
            timeout=args.timeout,
            console=console,
            verbose=args.operator_verbose,
            real_node=args.real_node,
            gitops=args.gitops,
        )
    except KeyboardInterrupt:
        console.print("[bold]interrupted[/]: everything the demo started was stopped")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
