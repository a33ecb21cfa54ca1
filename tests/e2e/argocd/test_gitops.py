"""GitOps through a real Argo CD: an Application syncs the CRD, then the operator, then a TorghutRollout by sync
waves; Argo CD's own health assessment (the shipped Lua, registered from argocd-cm.yaml) follows the rollout as the
real operator drives it; and each resource action run through argocd-server does what the kubectl plugin's verb
does. Nothing here patches a rollout's status."""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
from typing import Any

import pytest

from tests.e2e.argocd.conftest import PLUGIN, GitOps, with_wave
from tests.e2e.conftest import OLD_IMAGE, World, rollout_manifest, target_deployment
from tests.e2e.test_rollout import MIGRATE_JOB, healthy_checks
from torghut_localstack import workloads
from torghut_localstack.kubectl import KubectlError
from torghut_localstack.kwok import FAIL_LABEL
from torghut_localstack.wait import NotYet, wait_for

pytestmark = pytest.mark.e2e

ARGOCD_MANAGER = "argocd-controller"
INCONCLUSIVE = {"name": "no-such-series", "prometheus": {"query": "torghut_trading_no_such_series_total"}, "min": 1}
RUNNING = {"Pending", "Migrating", "Deploying", "Verifying", "Promoting", "RollingBack"}


TRACKING = "argocd.argoproj.io/tracking-id"
WAVED = [
    ("crd", "torghutrollouts.torghut.proompteng.ai", None),
    ("namespace", "torghut-rollout-system", None),
    ("deployment", "torghut-rollout-operator", "torghut-rollout-system"),
]


def record_applied(world: World, app: str, first_seen: dict[str, float]) -> None:
    """The time each object is first seen carrying Argo CD's tracking annotation for `app` (set by its sync)."""
    found = [*WAVED, ("torghutrollout", "release", world.namespace)]
    for kind, name, namespace in found:
        if kind in first_seen:
            continue
        scope = ["-n", namespace] if namespace else []
        path = "{.metadata.annotations.argocd\\.argoproj\\.io/tracking-id}"
        with contextlib.suppress(KubectlError):
            if world.kubectl("get", kind, name, *scope, "-o", f"jsonpath={path}").startswith(f"{app}:"):
                first_seen[kind] = time.monotonic()


def add_target(world: World, name: str) -> None:
    world.apply(target_deployment(name=name))
    workloads.wait_for_rollout(world.kubectl, name, namespace=world.namespace)


def on_target(doc: dict[str, Any], target: str) -> dict[str, Any]:
    doc["spec"]["target"]["name"] = target
    return doc


def test_an_application_syncs_the_crd_then_the_operator_then_a_rollout_and_follows_its_health(
    world: World, gitops: GitOps
) -> None:
    verify = {"initialDelay": "4s", "interval": "1s", "count": 2, "checks": healthy_checks(world)}
    rollout = with_wave(rollout_manifest("release", world, verify=verify))
    app = workloads.unique_name("waves")
    path = gitops.write_app(app, rollout, with_operator=True)
    gitops.push(f"{app}: the operator and release")
    first_seen: dict[str, float] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.05):
            record_applied(world, app, first_seen)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    gitops.create_application(app, path, world.namespace)

    timeline: list[tuple[str | None, str | None]] = []

    def done() -> bool:
        obj = world.kubectl.get("torghutrollout", "release", namespace=world.namespace)
        phase = ((obj or {}).get("status") or {}).get("phase") if obj else "absent"
        health = gitops.health(app, "release")
        if not timeline or timeline[-1] != (phase, health):
            timeline.append((phase, health))
        if phase == "Succeeded" and health == "Healthy":
            return True
        raise NotYet(f"timeline {timeline}")

    wait_for(done, timeout=180, interval=0.2, what="release Succeeded and Healthy in Argo CD")
    healthy_after = time.monotonic() - started
    stop.set()
    watcher.join(5)
    synced = gitops.wait_synced(app)
    print(f"\ngitops: Application created -> release Healthy in {healthy_after:.1f}s; timeline {timeline}")

    # Argo CD's health followed the operator: Progressing while it ran, Healthy once it Succeeded.
    assert any(phase in RUNNING and health == "Progressing" for phase, health in timeline), timeline
    assert all(health != "Healthy" for phase, health in timeline if phase != "Succeeded"), timeline
    assert world.deployment_image() == rollout["spec"]["target"]["image"]

    # By sync waves: the Namespace and CRD (-1), then the operator's Deployment (1), then the rollout (2), each
    # applied by Argo CD after the wave before was healthy and a 2 s wave delay. (Argo CD's tracking annotation shows
    # when it applied an object; the CRD does not keep it, so the Namespace of the same wave stands for it.)
    print(f"gitops: tracking annotation first seen {first_seen}")
    crd, deployment, applied = (first_seen[kind] for kind in ("namespace", "deployment", "torghutrollout"))
    print(
        f"gitops: synced by wave: Deployment +{deployment - crd:.1f}s after the Namespace, rollout +{applied - deployment:.1f}s"
    )
    assert crd < deployment < applied
    # Every resource Synced, the CRD and the operator's objects included. (Not read from the last operation's
    # result: right after a wave sync Argo CD may compare against its not yet updated cache, see the rollout
    # OutOfSync for an instant and self-heal only that resource, a no-op apply.)
    resources = {r["kind"]: r.get("status") for r in synced["status"]["resources"]}
    for kind in ("CustomResourceDefinition", "Namespace", "ClusterRole", "Deployment", "TorghutRollout"):
        assert resources.get(kind) == "Synced", resources
    # Server-side diff: the rollout is Synced although the operator writes its status and Argo CD applies it
    # server-side (the client-side diff reports it OutOfSync forever).
    assert synced["status"]["sync"]["status"] == "Synced"
    gitops.wait_app_health(app, "Healthy")


def test_failed_and_rolled_back_rollouts_are_degraded(world: World, gitops: GitOps) -> None:
    add_target(world, "torghut-b")
    job = {**MIGRATE_JOB, "command": ["sh", "-c", "exit 1"], "podLabels": {FAIL_LABEL: "true"}}
    failed = rollout_manifest("broken-migration", world, migrate={"job": job}, verify={"checks": healthy_checks(world)})
    bad = {"name": "route-null-rate", "postgres": {"query": "SELECT 0.5 AS value"}, "max": 0.1}
    rolled_back = on_target(
        rollout_manifest("null-rate", world, verify={"interval": "1s", "count": 2, "checks": [bad]}), "torghut-b"
    )
    app = workloads.unique_name("degraded")
    path = gitops.write_app(app, failed, rolled_back)
    gitops.push(f"{app}: two rollouts that fail")
    started = time.monotonic()
    gitops.create_application(app, path, world.namespace)
    gitops.wait_synced(app)
    synced_after = time.monotonic() - started
    gitops.wait_health(app, world, "broken-migration", "Failed", "Degraded")
    gitops.wait_health(app, world, "null-rate", "RolledBack", "Degraded")
    print(f"\ngitops: Application created -> Synced in {synced_after:.1f}s")
    gitops.wait_app_health(app, "Degraded")
    assert world.deployment_image() == world.deployment_image("torghut-b") == OLD_IMAGE

    # A push reaches the cluster in seconds when the push is followed by a refresh (what a webhook does).
    rolled_back["metadata"]["labels"] = {"torghut.proompteng.ai/reviewed": "true"}
    gitops.write_app(app, failed, rolled_back)
    revision = gitops.push(f"{app}: fix the migration")
    pushed = time.monotonic()
    gitops.argocd.refresh(app)

    def at_revision() -> bool:
        status = gitops.app(app).get("status") or {}
        sync = status.get("sync") or {}
        if sync.get("revision") == revision and sync.get("status") == "Synced":
            return True
        raise NotYet(f"sync {sync}")

    wait_for(at_revision, timeout=60, interval=0.2, what=f"{app} synced at {revision[:8]}")
    assert world.rollout("null-rate")["metadata"]["labels"]["torghut.proompteng.ai/reviewed"] == "true"
    print(f"gitops: push + refresh -> Synced in {time.monotonic() - pushed:.1f}s")


def plugin(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl torghut ARGS` as the admin (waits for the operator, as it does by default)."""
    argv = [str(PLUGIN), *args, "-n", world.namespace, "--kubeconfig", str(world.kubectl.kubeconfig)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)


def last_action(world: World, name: str) -> dict[str, Any] | None:
    return (world.rollout(name).get("status") or {}).get("lastAction")


def settled(world: World, name: str, phase: str, awaiting: bool | None) -> dict[str, Any]:
    def check() -> dict[str, Any]:
        status = world.rollout(name).get("status") or {}
        if status.get("phase") == phase and (awaiting is None or bool(status.get("awaitingApproval")) == awaiting):
            return status
        raise NotYet(f"phase={status.get('phase')} awaitingApproval={status.get('awaitingApproval')}")

    try:
        return wait_for(check, timeout=120, interval=0.25, what=f"{name} {phase} (awaitingApproval={awaiting})")
    except TimeoutError as error:
        raise AssertionError(f"{error}\noperator log:\n{world.operator.tail()}") from error


def normalized(text: str, name: str) -> str:
    return re.sub(rf"\b{re.escape(name)}\b", "NAME", text)


# verb, then the phase and awaitingApproval both rollouts settle in, and Argo CD's health for it
STEPS: list[tuple[str, str, bool | None, str]] = [
    ("pause", "Paused", None, "Suspended"),
    ("resume", "Verifying", True, "Suspended"),
    ("abort", "Aborted", None, "Degraded"),
    ("retry", "Verifying", True, "Suspended"),
    ("promote", "Succeeded", None, "Healthy"),
]


def test_each_argo_cd_action_does_what_the_plugin_verb_does(world: World, gitops: GitOps) -> None:
    """Two rollouts in the same state, one driven by `argocd app actions run` through argocd-server, the other by
    `kubectl torghut`: after every verb both are in the same phase with the same lastAction, and Argo CD shows the
    health the phase calls for (awaiting approval and Paused are Suspended)."""
    add_target(world, "torghut-b")
    verify = {"interval": "1s", "count": 1, "checks": [INCONCLUSIVE]}
    via_argocd = rollout_manifest("via-argocd", world, verify=verify)
    via_plugin = on_target(rollout_manifest("via-plugin", world, verify=verify), "torghut-b")
    app = workloads.unique_name("actions")
    path = gitops.write_app(app, via_argocd, via_plugin)
    gitops.push(f"{app}: two rollouts that wait for approval")
    gitops.create_application(app, path, world.namespace)
    gitops.wait_synced(app)
    for name in ("via-argocd", "via-plugin"):
        settled(world, name, "Verifying", True)
    gitops.wait_health(app, world, "via-argocd", "Verifying", "Suspended")

    # Discovery through argocd-server: what applies is enabled, the rest disabled.
    assert gitops.actions(app, world.namespace, "via-argocd") == {
        "abort": False, "pause": False, "promote": False, "resume": True, "retry": True,
    }  # fmt: skip

    # A verb that does not apply is refused by both, in the same words, and changes nothing.
    with pytest.raises(RuntimeError) as refused:
        gitops.run_action(app, world.namespace, "via-argocd", "retry")
    by_plugin = plugin(world, "retry", "via-plugin")
    assert by_plugin.returncode != 0
    expected = "nothing to retry: NAME is Verifying (retry applies to Failed, RolledBack or Aborted)"
    assert expected in normalized(str(refused.value), "via-argocd")
    assert expected in normalized(by_plugin.stderr + by_plugin.stdout, "via-plugin")

    matrix: list[str] = []
    for verb, phase, awaiting, health in STEPS:
        before = last_action(world, "via-argocd")
        gitops.run_action(app, world.namespace, "via-argocd", verb)
        done = plugin(world, verb, "via-plugin")
        assert done.returncode == 0, f"kubectl torghut {verb}: {done.stdout}{done.stderr}"

        def handled(verb: str = verb, before: dict[str, Any] | None = before) -> dict[str, Any]:
            last = last_action(world, "via-argocd")
            if last is not None and last.get("verb") == verb and last != before:
                return last
            raise NotYet(f"lastAction {last}")

        by_argocd = wait_for(handled, timeout=60, interval=0.25, what=f"the operator handled {verb} from Argo CD")
        status_a = settled(world, "via-argocd", phase, awaiting)
        status_p = settled(world, "via-plugin", phase, awaiting)
        by_plugin_action = status_p["lastAction"]
        assert by_argocd["verb"] == by_plugin_action["verb"] == verb
        assert normalized(by_argocd["result"], "via-argocd") == normalized(by_plugin_action["result"], "via-plugin")
        assert status_a.get("attempt") == status_p.get("attempt")
        gitops.wait_health(app, world, "via-argocd", phase, health)
        matrix.append(f"{verb}: {phase} -> {health} ({by_argocd['result']})")
    print("\ngitops: actions through argocd-server:\n  " + "\n  ".join(matrix))
    assert world.deployment_image() == world.deployment_image("torghut-b")
    assert "torghut.proompteng.ai/action" not in (world.rollout("via-argocd")["metadata"].get("annotations") or {})
    # The actions never made the Application drift: the annotation is not in Git and the diff is server-side.
    assert gitops.wait_synced(app)["status"]["sync"]["status"] == "Synced"
