"""Everything in manifests/ builds with kustomize and is accepted by a real API server (server-side dry run).

The Prometheus Operator's and Argo CD's CRDs are not part of this project: minimal stand-ins let the API server
accept their objects, so the dry run proves our manifests' shape, namespaces and references, not their schemas.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import REPO
from torghut_localstack.kubectl import Kubectl

pytestmark = pytest.mark.e2e

FOREIGN_KINDS = {
    ("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
    ("monitoring.coreos.com", "PrometheusRule", "prometheusrules"),
    ("argoproj.io", "Application", "applications"),
    ("argoproj.io", "AppProject", "appprojects"),
}


def stand_in_crd(group: str, kind: str, plural: str) -> dict[str, object]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": kind, "plural": plural},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1alpha1" if group == "argoproj.io" else "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def foreign_crds(kubectl: Kubectl, crd: None) -> None:
    for group, kind, plural in FOREIGN_KINDS:
        kubectl("apply", "-f", "-", stdin=yaml.safe_dump(stand_in_crd(group, kind, plural)))
        kubectl("wait", "--for=condition=Established", f"crd/{plural}.{group}", "--timeout=60s")
    for namespace in ("torghut", "argocd", "monitoring", "torghut-rollout-system"):
        kubectl("apply", "-f", "-", stdin=kubectl("create", "namespace", namespace, "--dry-run=client", "-o", "yaml"))


@pytest.mark.parametrize(
    "kustomization",
    ["base", "overlays/torghut", "overlays/local", "monitoring", "argocd", "torghut"],
)
def test_every_kustomization_passes_a_server_side_dry_run(
    kubectl: Kubectl, foreign_crds: None, kustomization: str
) -> None:
    path = REPO / "manifests" / kustomization
    rendered = kubectl("kustomize", str(path))
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert docs, f"{kustomization} renders nothing"
    namespace = [] if any(d.get("metadata", {}).get("namespace") for d in docs) else ["-n", "torghut"]
    out = kubectl(
        "apply", "--server-side", "--force-conflicts", "--dry-run=server", *namespace, "-f", "-", stdin=rendered
    )
    assert "serverside-applied (server dry run)" in out or "(server dry run)" in out


def test_every_sample_passes_a_server_side_dry_run(kubectl: Kubectl, foreign_crds: None) -> None:
    for sample in sorted(Path(REPO / "manifests" / "samples").glob("*.yaml")):
        out = kubectl("apply", "--dry-run=server", "-n", "torghut", "-f", str(sample))
        assert "(server dry run)" in out, sample.name
