"""The Argo CD health check of TorghutRollout, run in a real Lua interpreter the way Argo CD runs it.

Argo CD evaluates `resource.customizations.health.<group>_<kind>` with gopher-lua (Lua 5.1): the live object is
the global `obj`, and the script returns a table with `status` and `message`. Here the same script runs under
Lua 5.1 and Lua 5.4 (lupa) against TorghutRollouts in every phase, and the copy in argocd-cm.yaml must be
byte-identical to health.lua.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51, lua54

from torghut_operator.core.api.status import Phase

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "manifests" / "argocd"
HEALTH_LUA = ARGOCD / "health.lua"
ARGOCD_CM = ARGOCD / "argocd-cm.yaml"
CRD = REPO / "crds" / "torghutrollouts.yaml"
SAMPLE = REPO / "manifests" / "samples" / "deployment-job-migration.yaml"
CM_KEY = "resource.customizations.health.torghut.proompteng.ai_TorghutRollout"
ARGO_HEALTH = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

EXPECTED: dict[str, str] = {
    "Pending": "Progressing",
    "Migrating": "Progressing",
    "Deploying": "Progressing",
    "Verifying": "Progressing",
    "Promoting": "Progressing",
    "RollingBack": "Progressing",
    "Succeeded": "Healthy",
    "Paused": "Suspended",
    "Failed": "Degraded",
    "RolledBack": "Degraded",
    "Aborted": "Degraded",
}
"""What Argo CD shows for each phase of a current (observedGeneration == generation) status."""

RUNTIMES: dict[str, Callable[[], Any]] = {"lua5.1": lua51.LuaRuntime, "lua5.4": lua54.LuaRuntime}


def to_lua(lua: Any, value: object, *, numbers_as_float: bool) -> object:
    """A Python value as Lua values: dicts and lists become tables (lists 1-based), recursively.

    Argo CD decodes the object from JSON, so every number reaches gopher-lua as a float64; `numbers_as_float`
    reproduces that on Lua 5.4, where integers and floats differ.
    """
    if isinstance(value, dict):
        return lua.table_from(
            {
                key: to_lua(lua, item, numbers_as_float=numbers_as_float)
                for key, item in value.items()
                if item is not None
            }
        )
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, item, numbers_as_float=numbers_as_float) for item in value])
    if numbers_as_float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def assess(obj: dict[str, Any], runtime: str = "lua5.1", *, numbers_as_float: bool = True) -> dict[str, str]:
    """Run health.lua on `obj`; the table it returns, as a dict."""
    lua = RUNTIMES[runtime]()
    lua.globals().obj = to_lua(lua, obj, numbers_as_float=numbers_as_float)
    result = lua.execute(HEALTH_LUA.read_text())
    assert result is not None, "health.lua returned nothing"
    health = {str(key): str(value) for key, value in result.items()}
    assert set(health) == {"status", "message"}, f"Argo CD reads status and message, got {sorted(health)}"
    assert health["status"] in ARGO_HEALTH
    return health


def rollout(phase: str | None, *, generation: int = 4, observed: int | None = 4, **status: Any) -> dict[str, Any]:
    """A TorghutRollout as the API server returns it: a sample's spec plus the given status."""
    obj: dict[str, Any] = copy.deepcopy(yaml.safe_load(SAMPLE.read_text()))
    obj["metadata"].update({"generation": generation, "uid": "6f1c2f0e-0d5e-4a3e-9a53-8d1b1f7e2c11"})
    if phase is not None:
        obj["status"] = {"phase": phase, "observedGeneration": observed, **status}
    return obj


def test_every_phase_of_the_crd_has_an_argo_cd_health() -> None:
    crd = yaml.safe_load(CRD.read_text())
    status_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert set(status_schema["properties"]["phase"]["enum"]) == set(EXPECTED)
    assert {phase.value for phase in Phase} == set(EXPECTED)


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
@pytest.mark.parametrize(("phase", "health"), sorted(EXPECTED.items()))
def test_phase_maps_to_argo_cd_health_with_the_status_message(phase: str, health: str, runtime: str) -> None:
    message = f"{phase}: signal-throughput 3/10 measurements Successful (value 42 >= min 1)"
    result = assess(rollout(phase, message=message), runtime)
    assert result == {"status": health, "message": message}


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
@pytest.mark.parametrize("numbers_as_float", [True, False], ids=["json-floats", "integers"])
def test_a_status_older_than_the_spec_is_progressing_whatever_its_phase(runtime: str, numbers_as_float: bool) -> None:
    for phase in ("Succeeded", "Failed", "Paused"):
        result = assess(
            rollout(phase, generation=5, observed=4, message="done"), runtime, numbers_as_float=numbers_as_float
        )
        assert result == {
            "status": "Progressing",
            "message": f"Waiting for the operator to observe generation 5 (status is {phase})",
        }


def test_a_status_without_observed_generation_is_not_trusted() -> None:
    result = assess(rollout("Succeeded", observed=None, message="done"))
    assert result["status"] == "Progressing"
    assert "generation 4" in result["message"]


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_a_new_rollout_without_status_is_progressing(runtime: str) -> None:
    assert assess(rollout(None), runtime) == {
        "status": "Progressing",
        "message": "Waiting for the operator to pick up the rollout",
    }
    assert assess(rollout(""), runtime)["status"] == "Progressing"


@pytest.mark.parametrize("phase", ["Verifying", "Promoting"])
def test_awaiting_approval_is_suspended(phase: str) -> None:
    message = "check signal-throughput is Inconclusive: 0 decisions in 15m (min 1); promote or abort"
    result = assess(rollout(phase, awaitingApproval=True, message=message))
    assert result == {"status": "Suspended", "message": message}


@pytest.mark.parametrize(("phase", "health"), [("Succeeded", "Healthy"), ("Failed", "Degraded")])
def test_awaiting_approval_does_not_mask_a_finished_rollout(phase: str, health: str) -> None:
    assert assess(rollout(phase, awaitingApproval=True, message="x"))["status"] == health


def test_awaiting_approval_false_keeps_verifying_progressing() -> None:
    assert assess(rollout("Verifying", awaitingApproval=False, message="x"))["status"] == "Progressing"


def test_without_a_message_the_ready_condition_explains() -> None:
    conditions = [
        {"type": "Migrated", "status": "True", "reason": "JobSucceeded", "message": "", "lastTransitionTime": "t"},
        {
            "type": "Ready",
            "status": "False",
            "reason": "GateFailed",
            "message": "check route-null-rate failed: value 0.02 > max 0",
            "lastTransitionTime": "t",
        },
    ]
    result = assess(rollout("Failed", message="", conditions=conditions))
    assert result == {"status": "Degraded", "message": "check route-null-rate failed: value 0.02 > max 0"}


def test_without_any_message_the_phase_is_the_message() -> None:
    assert assess(rollout("Deploying")) == {"status": "Progressing", "message": "Deploying"}


def test_an_unknown_phase_is_unknown_not_healthy() -> None:
    assert assess(rollout("Exploded", message="?")) == {"status": "Unknown", "message": "Unknown phase Exploded"}


def test_argocd_cm_embeds_health_lua_byte_for_byte() -> None:
    configmap = yaml.safe_load(ARGOCD_CM.read_text())
    assert configmap["kind"] == "ConfigMap"
    assert configmap["metadata"] == {
        "name": "argocd-cm",
        "namespace": "argocd",
        "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"},
    }
    assert list(configmap["data"]) == [CM_KEY]
    embedded = configmap["data"][CM_KEY].encode()
    assert embedded == HEALTH_LUA.read_bytes(), (
        "argocd-cm.yaml differs from health.lua; regenerate it with the command in argocd-cm.yaml's header"
    )
