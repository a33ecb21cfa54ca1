"""The overlay that installs the operator from its built image (the demo's and the e2e tier's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from torghut_localstack import incluster

pytestmark = pytest.mark.unit


def load(directory: Path) -> dict[str, Any]:
    return dict(yaml.safe_load((directory / "kustomization.yaml").read_text()))


def ops(kustomization: dict[str, Any]) -> list[dict[str, Any]]:
    (patch,) = kustomization["patches"]
    assert patch["target"] == {"group": "apps", "kind": "Deployment"}
    return list(yaml.safe_load(patch["patch"]))


def test_the_built_image_runs_once_on_the_real_node_as_imported(tmp_path: Path) -> None:
    k = load(incluster.overlay(tmp_path / "o", "localhost/torghut-rollout-operator:0.1.0-abc"))
    assert k["images"] == [
        {"name": incluster.IMAGE_NAME, "newName": "localhost/torghut-rollout-operator", "newTag": "0.1.0-abc"}
    ]
    assert "namespace" not in k
    assert "nameSuffix" not in k
    assert (tmp_path / "o" / k["resources"][0]).resolve() == incluster.REPO / "manifests" / "overlays" / "local"
    by_path = {op["path"]: op for op in ops(k)}
    assert by_path["/spec/replicas"]["value"] == 1
    assert by_path["/spec/template/spec/containers/0/imagePullPolicy"]["value"] == "Never"
    assert by_path["/spec/template/spec/nodeSelector"]["value"] == incluster.REAL_NODE_POD["nodeSelector"]
    assert by_path["/spec/template/spec/tolerations"]["value"] == incluster.REAL_NODE_POD["tolerations"]


def test_a_second_install_gets_its_namespace_suffix_args_and_env(tmp_path: Path) -> None:
    k = load(
        incluster.overlay(
            tmp_path / "o",
            "img:1",
            base=incluster.REPO / "manifests" / "base",
            namespace="torghut-rollout-e2e",
            name_suffix="-e2e",
            args=["--verbose", "--namespace=e2e-*"],
            env={"A": "1", "B": "2"},
            pin_to_real_node=False,
        )
    )
    assert (k["namespace"], k["nameSuffix"]) == ("torghut-rollout-e2e", "-e2e")
    patch = ops(k)
    assert {
        "op": "replace",
        "path": "/spec/template/spec/containers/0/args",
        "value": ["--verbose", "--namespace=e2e-*"],
    } in patch
    env = [op["value"] for op in patch if op["path"] == "/spec/template/spec/containers/0/env/-"]
    assert env == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert not any(op["path"].endswith(("nodeSelector", "tolerations")) for op in patch)
