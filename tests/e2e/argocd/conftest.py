"""GitOps e2e harness: a real Argo CD (v3.2.11, built from Go modules) on the session's cluster, syncing from a
`git daemon` on loopback, with the project's argocd-cm.yaml (health check and resource actions) applied the way the
README says. The rollouts are driven by the e2e tier's operator, in the cluster from its image (namespace
torghut-rollout-e2e); an Application that syncs manifests/overlays/local installs a second copy, scaled to 0, in
torghut-rollout-system, which never runs.

The Git repository holds the project's `crds/` and `manifests/` (copied as they are) and one directory per
Application under `apps/`; every push sends the whole tree, so Applications of earlier tests keep their paths.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ClusterHandle
from tests.e2e.conftest import World
from torghut_localstack import workloads
from torghut_localstack.argocd import NAMESPACE, ArgoCD, application_manifest
from torghut_localstack.kubectl import Kubectl, KubectlError
from torghut_localstack.wait import NotYet, wait_for

REPO = Path(__file__).resolve().parents[3]
PLUGIN = Path(sys.executable).parent / "kubectl-torghut"
ROLLOUT_KIND = "TorghutRollout"
ROLLOUT_WAVE = "2"
"""After the operator's manifests: Namespace and CRD -1, RBAC 0, Deployment 1 (manifests/base)."""


@pytest.fixture(scope="session")
def argocd(
    argocd_binaries: Path, cluster: ClusterHandle, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ArgoCD]:
    """Argo CD's CRDs, objects and four processes plus the git daemon, started once per session."""
    started = time.monotonic()
    with ArgoCD(kubectl, argocd_binaries, tmp_path_factory.mktemp("argocd"), reconciliation="15s") as argo:
        argo.timings["start (wall)"] = time.monotonic() - started
        print(f"\nargocd: started in {argo.timings['start (wall)']:.1f}s: {argo.timings}")
        yield argo
        peaks = ", ".join(f"{name} {mib:.0f}" for name, mib in argo.peak_rss_mib().items())
        print(f"\nargocd: peak RSS (MiB) over the session: {peaks}")


@dataclass
class GitOps:
    """The Git repository Argo CD syncs from, and helpers to create Applications and read what Argo CD reports."""

    argocd: ArgoCD
    kubectl: Kubectl
    stage: Path
    applications: list[str] = field(default_factory=list)

    def write_app(self, name: str, *docs: dict[str, Any], with_operator: bool = False) -> str:
        """`apps/<name>/`: a kustomization of `docs` (and the operator's local overlay, if asked); returns the path."""
        folder = self.stage / "apps" / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        (folder / "resources.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        resources = ["../../manifests/overlays/local"] if with_operator else []
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [*resources, "resources.yaml"],
        }
        (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
        return f"apps/{name}"

    def push(self, message: str) -> str:
        return self.argocd.repo.push(self.stage, message)

    def create_application(self, name: str, path: str, namespace: str) -> None:
        """An Application as the README recommends (automated, self-heal, ServerSideApply, ServerSideDiff); deleting
        it leaves the objects (the namespace fixture deletes them)."""
        app = application_manifest(name, self.argocd.repo.url, path, namespace)
        self.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(app))
        self.applications.append(name)

    def app(self, name: str) -> dict[str, Any]:
        found = self.argocd.application(name)
        assert found is not None, f"Application {name} not found"
        return found

    def wait_synced(self, name: str, timeout: float = 120) -> dict[str, Any]:
        """Synced, its last operation Succeeded, for the newest commit."""

        def synced() -> dict[str, Any]:
            app = self.app(name)
            status = app.get("status") or {}
            sync = (status.get("sync") or {}).get("status")
            operation = (status.get("operationState") or {}).get("phase")
            if sync == "Synced" and operation == "Succeeded":
                return app
            conditions = [c.get("message") for c in status.get("conditions") or []]
            raise NotYet(f"sync={sync} operation={operation} conditions={conditions}")

        return wait_for(synced, timeout=timeout, interval=0.25, what=f"Application {name} Synced")

    def wait_app_health(self, name: str, expected: str, timeout: float = 30) -> None:
        """The Application's own health (the worst of its resources'), which Argo CD writes a moment after the tree."""

        def reached() -> bool:
            health = (self.app(name).get("status") or {}).get("health") or {}
            if health.get("status") == expected:
                return True
            raise NotYet(f"Application health {health}")

        wait_for(reached, timeout=timeout, interval=0.25, what=f"Application {name} {expected}")

    def health(self, app: str, rollout: str) -> str | None:
        """The health Argo CD reports for the TorghutRollout `rollout` in Application `app` (its resource tree)."""
        return self.argocd.resource_health(app, ROLLOUT_KIND, rollout)

    def wait_health(self, app: str, world: World, rollout: str, phase: str, health: str, timeout: float = 120) -> None:
        """Until the rollout is in `phase` AND Argo CD reports `health` for it."""

        def both() -> bool:
            seen_phase = (world.rollout(rollout).get("status") or {}).get("phase")
            seen_health = self.health(app, rollout)
            if seen_phase == phase and seen_health == health:
                return True
            raise NotYet(f"phase={seen_phase} health={seen_health}")

        try:
            wait_for(both, timeout=timeout, interval=0.25, what=f"{rollout} {phase} and Argo CD health {health}")
        except TimeoutError as error:
            raise AssertionError(f"{error}\noperator log:\n{world.operator.tail()}") from error

    def actions(self, app: str, namespace: str, rollout: str) -> dict[str, bool]:
        """`argocd app actions list`: action name -> disabled, as argocd-server reports them."""
        out = self.argocd.cli(
            "app", "actions", "list", app, "--kind", ROLLOUT_KIND, "--resource-name", rollout,
            "--namespace", namespace, "-o", "json",
        )  # fmt: skip
        listed = yaml.safe_load(out) or []
        return {str(entry["Action"]): bool(entry.get("Disabled", False)) for entry in listed}

    def run_action(self, app: str, namespace: str, rollout: str, verb: str) -> None:
        """`argocd app actions run`, through argocd-server."""
        self.argocd.cli(
            "app", "actions", "run", app, verb, "--kind", ROLLOUT_KIND, "--resource-name", rollout,
            "--namespace", namespace,
        )  # fmt: skip


@pytest.fixture(scope="session")
def gitops_stage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stage = tmp_path_factory.mktemp("gitops-repo")
    shutil.copytree(REPO / "crds", stage / "crds")
    shutil.copytree(REPO / "manifests", stage / "manifests")
    return stage


@pytest.fixture
def gitops(argocd: ArgoCD, kubectl: Kubectl, gitops_stage: Path) -> Iterator[GitOps]:
    """The test's Applications are deleted afterwards (their objects stay for the namespace fixture to delete)."""
    # manifests/overlays/local, which an Application may sync, binds the operator's Role in namespace `torghut`
    # (its rollout namespace): the namespace exists, as it would in a cluster where Torghut runs.
    kubectl.apply(workloads.namespace("torghut"))
    ops = GitOps(argocd, kubectl, gitops_stage)
    yield ops
    for name in ops.applications:
        try:
            kubectl("delete", "applications.argoproj.io", name, "-n", NAMESPACE, "--wait=false")
        except KubectlError as error:
            print(f"could not delete Application {name}: {error}")


def with_wave(doc: dict[str, Any], wave: str = ROLLOUT_WAVE) -> dict[str, Any]:
    doc.setdefault("metadata", {}).setdefault("annotations", {})["argocd.argoproj.io/sync-wave"] = wave
    return doc
