"""What the README says about merging argocd-cm.yaml into a live argocd-cm, against a real API server: server-side
apply keeps the other keys of a ConfigMap that was created, deletes them from one last written by client-side
`kubectl apply`; the README's check tells the two apart; a merge patch of the keys is safe on both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from torghut_localstack import argocd_cm
from torghut_localstack.argocd import FIELD_MANAGER, PROJECT_ARGOCD_CM
from torghut_localstack.kubectl import Kubectl

pytestmark = pytest.mark.e2e

NAMESPACE_PREFIX = "argocd-cm"  # out of the e2e operator's sight
OURS = {argocd_cm.HEALTH_KEY, argocd_cm.ACTIONS_KEY}
THEIRS = {"url": "https://argocd.example.com", "timeout.reconciliation": "180s"}
LAST_APPLIED = "{.metadata.annotations.kubectl\\.kubernetes\\.io/last-applied-configuration}"


def theirs(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "argocd-cm", "namespace": namespace},
        "data": THEIRS,
    }


def ours(namespace: str, tmp_path: Path) -> Path:
    doc = yaml.safe_load(PROJECT_ARGOCD_CM.read_text())
    doc["metadata"]["namespace"] = namespace
    path = tmp_path / "argocd-cm.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def keys(kubectl: Kubectl, namespace: str) -> set[str]:
    found = kubectl.get("configmap", "argocd-cm", namespace=namespace)
    assert found is not None
    return set(found.get("data") or {})


def server_side_apply(kubectl: Kubectl, path: Path) -> None:
    kubectl("apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", str(path))


def check(kubectl: Kubectl, namespace: str) -> str:
    """The README's check: non-empty when argocd-cm was last written by client-side apply."""
    return kubectl("get", "cm", "argocd-cm", "-n", namespace, "-o", f"jsonpath={LAST_APPLIED}")


def test_server_side_apply_onto_a_created_argocd_cm_keeps_its_keys(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    kubectl("create", "-f", "-", stdin=json.dumps(theirs(namespace)))
    assert check(kubectl, namespace) == ""
    server_side_apply(kubectl, ours(namespace, tmp_path))
    assert keys(kubectl, namespace) == set(THEIRS) | OURS


def test_server_side_apply_onto_a_client_side_applied_argocd_cm_deletes_the_other_keys(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    kubectl("apply", "-f", "-", stdin=json.dumps(theirs(namespace)))
    assert check(kubectl, namespace) != "", "the README's check must flag a client-side-applied argocd-cm"
    server_side_apply(kubectl, ours(namespace, tmp_path))
    assert keys(kubectl, namespace) == OURS, "server-side apply took over and deleted the other keys"


def test_a_merge_patch_of_the_keys_is_safe_on_a_client_side_applied_argocd_cm(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    kubectl("apply", "-f", "-", stdin=json.dumps(theirs(namespace)))
    data = yaml.safe_load(PROJECT_ARGOCD_CM.read_text())["data"]
    kubectl("patch", "cm", "argocd-cm", "-n", namespace, "--type", "merge", "-p", json.dumps({"data": data}))
    assert keys(kubectl, namespace) == set(THEIRS) | OURS
