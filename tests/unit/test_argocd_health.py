"""The Argo CD health check of TorghutRollout, run with exactly the Lua libraries Argo CD's runtime opens.

Argo CD evaluates `resource.customizations.health.<group>_<kind>` in gopher-lua (Lua 5.1) with only the base,
table and package libraries (tests/argocd_lua.py): the live object is the global `obj`, every number a float, and
the script returns a table with `status` and `message`. A script that calls `string.format` passes in a full Lua
and fails in Argo CD (health Unknown, every sync a ComparisonError): the first release of health.lua did, and
`test_the_string_format_version_fails_in_argo_cds_runtime` keeps that copy to prove this runtime catches it.
The copy in argocd-cm.yaml must be byte-identical to health.lua, and argocd-cm.yaml as rendered from the sources.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from tests.argocd_lua import ARGOCD_DIR, LuaError, run, to_lua
from torghut_localstack import argocd_cm
from torghut_operator.core.api.status import Phase

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
HEALTH_LUA = ARGOCD_DIR / "health.lua"
ARGOCD_CM = ARGOCD_DIR / "argocd-cm.yaml"
OLD_HEALTH_LUA = Path(__file__).parent / "data" / "health-with-string-format.lua"
CRD = REPO / "crds" / "torghutrollouts.yaml"
SAMPLE = REPO / "manifests" / "samples" / "deployment-job-migration.yaml"
CM_KEY = argocd_cm.HEALTH_KEY
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


def assess(obj: dict[str, Any], script: Path = HEALTH_LUA) -> dict[str, str]:
    """Run the health script on `obj` in Argo CD's runtime; the table it returns, as a dict."""
    result = run(script.read_text(), obj)
    assert isinstance(result, dict), f"health.lua returned {result!r}"
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


@pytest.mark.parametrize(("phase", "health"), sorted(EXPECTED.items()))
def test_phase_maps_to_argo_cd_health_with_the_status_message(phase: str, health: str) -> None:
    message = f"{phase}: signal-throughput 3/10 measurements Successful (value 42 >= min 1)"
    result = assess(rollout(phase, message=message))
    assert result == {"status": health, "message": message}


def test_a_status_older_than_the_spec_is_progressing_whatever_its_phase() -> None:
    for phase in ("Succeeded", "Failed", "Paused"):
        result = assess(rollout(phase, generation=5, observed=4, message="done"))
        assert result == {
            "status": "Progressing",
            "message": f"Waiting for the operator to observe generation 5 (status is {phase})",
        }


def test_a_status_without_observed_generation_is_not_trusted() -> None:
    result = assess(rollout("Succeeded", observed=None, message="done"))
    assert result["status"] == "Progressing"
    assert "generation 4" in result["message"]


def test_a_new_rollout_without_status_is_progressing() -> None:
    assert assess(rollout(None)) == {
        "status": "Progressing",
        "message": "Waiting for the operator to pick up the rollout",
    }
    assert assess(rollout(""))["status"] == "Progressing"


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
    assert list(configmap["data"]) == [CM_KEY, argocd_cm.ACTIONS_KEY]
    embedded = configmap["data"][CM_KEY].encode()
    assert embedded == HEALTH_LUA.read_bytes(), "argocd-cm.yaml differs from health.lua; run `make argocd-cm`"


def test_argocd_cm_is_rendered_from_the_lua_sources() -> None:
    assert ARGOCD_CM.read_text() == argocd_cm.render(ARGOCD_DIR), "argocd-cm.yaml is stale; run `make argocd-cm`"


def test_the_string_format_version_fails_in_argo_cds_runtime() -> None:
    """The defect a real Argo CD found: a full Lua runs the old script, Argo CD's runtime cannot."""
    obj = rollout("Succeeded", generation=5, observed=4, message="done")
    full = lua51.LuaRuntime()
    full.globals().obj = to_lua(full, obj)
    assert full.execute(OLD_HEALTH_LUA.read_text())["status"] == "Progressing"
    with pytest.raises(LuaError, match="attempt to index global 'string' \\(a nil value\\)"):
        assess(obj, OLD_HEALTH_LUA)
    assert assess(obj)["status"] == "Progressing"


@pytest.mark.parametrize(
    "expression",
    ['string.format("%d", 1)', '("x"):upper()', "math.floor(1.5)", "os.time()", 'io.write("x")', "debug.traceback()"],
)
def test_argo_cds_runtime_has_no_string_math_os_io_or_debug(expression: str) -> None:
    with pytest.raises(LuaError):
        run(f"return {expression}")


def test_argo_cds_runtime_has_base_table_and_the_safe_os_through_require() -> None:
    script = """
    local os = require("os")
    local t = { "b", "a" }
    table.sort(t)
    return table.concat(t, ",") .. " " .. tostring(1.0) .. " " .. type(os.time()) .. " " .. tostring(os.exit)
    """
    assert run(script) == "a,b 1 number nil"
