"""No fight with self-heal, through a real Argo CD: Git declares the workload and its TorghutRollout in one
Application with self-heal on, shaped as the README recommends (ignoreDifferences by the operator's field manager,
RespectIgnoreDifferences, server-side apply and diff, no PreSync migration hook: the rollout's migrate stage runs
the migration Job). A release, its promotion and a rollback complete without Argo CD reverting anything; the same
Application without the ignoreDifferences makes self-heal revert the image, and the rollout fails closed naming
Argo CD's field manager."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.e2e.argocd.conftest import GitOps, with_wave
from tests.e2e.conftest import NEW_IMAGE, OLD_IMAGE, RELEASE_IMAGE, World, rollout_manifest, target_deployment
from tests.e2e.test_rollout import MIGRATE_JOB
from torghut_localstack.argocd import application_manifest
from torghut_localstack.wait import NotYet, wait_for

pytestmark = pytest.mark.e2e

OPERATOR = "torghut-rollout-operator"
PASSING = {"name": "db-up", "postgres": {"query": "SELECT 1 AS value"}, "min": 1}
FAILING = {"name": "db-down", "postgres": {"query": "SELECT 0 AS value"}, "min": 1}
RELEASE_2 = RELEASE_IMAGE  # a third image the real node has (a tag of its pause image), so release 2 really starts


def _git_deployment(name: str) -> dict[str, Any]:
    doc = target_deployment(OLD_IMAGE, name=name)
    doc["metadata"].pop("namespace", None)
    return doc


def _rollout(world: World, target: str, image: str, check: dict[str, Any], **extra: Any) -> dict[str, Any]:
    doc = rollout_manifest(
        f"{target}-release",
        world,
        target={"kind": "Deployment", "name": target, "container": "torghut", "image": image},
        migrate={"job": MIGRATE_JOB},
        verify={"interval": "1s", "count": 2, "checks": [check]},
        **extra,
    )
    doc["metadata"].pop("namespace", None)
    return with_wave(doc)


def _application(gitops: GitOps, name: str, path: str, namespace: str, *, ignore: bool) -> None:
    app = application_manifest(name, gitops.argocd.repo.url, path, namespace)
    if ignore:
        app["spec"]["ignoreDifferences"] = [
            {"group": "apps", "kind": "Deployment", "managedFieldsManagers": [OPERATOR]}
        ]
        app["spec"]["syncPolicy"]["syncOptions"].append("RespectIgnoreDifferences=true")
    gitops.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(app))
    gitops.applications.append(name)


def _container(world: World, name: str) -> tuple[int, str, dict[str, str]]:
    obj = world.kubectl.get("deployment", name, namespace=world.namespace)
    assert obj is not None
    (c,) = obj["spec"]["template"]["spec"]["containers"]
    return int(obj["metadata"]["generation"]), c["image"], {e["name"]: e.get("value", "") for e in c.get("env") or []}


def _settled(gitops: GitOps, app: str) -> dict[str, Any]:
    """Ask Argo CD to compare again now (what its webhook does) and wait for a reconcile that started after the
    ask to be Synced: whatever self-heal would do, it has had its chance."""
    before = (gitops.app(app).get("status") or {}).get("reconciledAt") or ""
    gitops.argocd.refresh(app)

    def reconciled() -> dict[str, Any]:
        status = gitops.app(app).get("status") or {}
        if (status.get("reconciledAt") or "") <= before:
            raise NotYet(f"reconciledAt still {status.get('reconciledAt')}")
        sync = (status.get("sync") or {}).get("status")
        if sync != "Synced":
            raise NotYet(f"sync {sync}")
        return status

    return wait_for(reconciled, timeout=90, interval=0.25, what=f"{app} reconciled after a refresh")


def test_self_heal_reverts_nothing_through_a_release_a_promotion_and_a_rollback(world: World, gitops: GitOps) -> None:
    target, app = "trader", f"selfheal-{world.namespace[-6:]}"
    # A paper-mode step that adds a variable (live steps need approved promotion rows; not this test's subject).
    live = {"steps": [{"name": "canary", "env": {"TRADING_MODE": "paper", "TRADING_CAPITAL_FRACTION": "0.10"}}]}
    path = gitops.write_app(app, _git_deployment(target), _rollout(world, target, NEW_IMAGE, PASSING, promotion=live))
    gitops.push(f"{app}: the workload and release 1")
    _application(gitops, app, path, world.namespace, ignore=True)
    gitops.wait_synced(app)
    done = world.wait_phase(f"{target}-release", "Succeeded", timeout=180)
    assert done["status"]["promotion"]["completed"] == ["canary"]
    # The migration ran as the rollout's own Job (no PreSync hook in the app), before the image changed.
    job = world.kubectl.get("job", done["status"]["migration"]["jobName"], namespace=world.namespace)
    assert job is not None
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in job["status"]["conditions"])
    assert not any("argocd.argoproj.io/hook" in (d.get("metadata", {}).get("annotations") or {}) for d in [job])
    status = _settled(gitops, app)
    generation, image, env = _container(world, target)
    assert (image, env.get("TRADING_CAPITAL_FRACTION")) == (NEW_IMAGE, "0.10")
    # Created by Argo CD, then the operator's image, then the step's env: nothing else changed the template.
    assert generation == 3, f"the Deployment changed {generation - 1} times after its creation (expected 2)"
    assert (status.get("health") or {}).get("status") == "Healthy"

    # Release 2 fails its check: the rollback puts release 1's image back, and Argo CD leaves it there.
    gitops.write_app(app, _git_deployment(target), _rollout(world, target, RELEASE_2, FAILING, promotion=live))
    gitops.push(f"{app}: release 2")
    gitops.argocd.refresh(app)
    rolled_back = world.wait_phase(f"{target}-release", "RolledBack", timeout=180)
    assert rolled_back["status"]["image"] == RELEASE_2
    _settled(gitops, app)
    generation, image, env = _container(world, target)
    assert (image, env.get("TRADING_CAPITAL_FRACTION")) == (NEW_IMAGE, "0.10"), "self-heal undid the rollback"
    assert generation == 5, f"expected release 2's image and the rollback only, saw {generation - 3} changes"


def test_without_the_ignore_self_heal_reverts_the_image_and_the_rollout_fails_naming_argo_cd(
    world: World, gitops: GitOps
) -> None:
    target, app = "trader-plain", f"plain-{world.namespace[-6:]}"
    slow = {**PASSING, "name": "db-up-slowly"}
    rollout = _rollout(world, target, NEW_IMAGE, slow)
    rollout["spec"]["verify"]["count"] = 30
    path = gitops.write_app(app, _git_deployment(target), rollout)
    gitops.push(f"{app}: no ignoreDifferences")
    _application(gitops, app, path, world.namespace, ignore=False)
    gitops.wait_synced(app)
    done = world.wait_phase(f"{target}-release", "RolledBack", "Failed", timeout=240)
    text = " ".join(c.get("message", "") for c in done["status"]["conditions"])
    assert "TargetDrifted" in {c.get("reason") for c in done["status"]["conditions"]}, text
    assert "argocd-controller" in text
    assert _container(world, target)[1] == OLD_IMAGE
