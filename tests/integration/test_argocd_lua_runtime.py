"""The shipped argocd-cm.yaml in Argo CD's own Lua runtime: `argocd admin settings resource-overrides` (health,
list-actions, run-action) evaluates it offline with the same VM the controller and the API server use (gopher-lua,
only base, table and package opened). It also proves tests/argocd_lua.py, the runtime the unit tests use, has
exactly Argo CD's globals, so a script the unit tests pass cannot fail in Argo CD for a missing library.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.argocd_lua import ARGOCD_DIR, ARGOCD_GLOBALS, TABLE_FUNCTIONS
from torghut_localstack import argocd_cm

pytestmark = pytest.mark.integration

ARGOCD_CM = ARGOCD_DIR / "argocd-cm.yaml"
OLD_HEALTH_LUA = Path(__file__).resolve().parents[1] / "unit" / "data" / "health-with-string-format.lua"
GOPHER_ONLY = {"_GOPHER_LUA_VERSION", "_printregs"}
"""Globals of gopher-lua's base library that Lua 5.1 has no counterpart for (harmless: nobody calls them)."""

PROBE = """
local function keys(t)
  local names = {}
  for name in pairs(t) do table.insert(names, tostring(name)) end
  table.sort(names)
  return table.concat(names, ",")
end
local ok = pcall(function() return ("x"):upper() end)
return { status = "Healthy", message = keys(_G) .. "|" .. keys(table) .. "|" .. keys(require("os")) .. "|" .. tostring(ok) }
"""


def rollout(phase: str | None, **status: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "torghut.proompteng.ai/v1alpha1",
        "kind": "TorghutRollout",
        "metadata": {"name": "release-42", "namespace": "torghut", "generation": 4},
        "spec": {"target": {"kind": "Deployment", "name": "torghut", "image": "torghut:2"}},
    }
    if phase is not None:
        obj["status"] = {"phase": phase, "observedGeneration": 4, **status}
    return obj


def configmap(health: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "argocd-cm", "namespace": "argocd"},
        "data": {argocd_cm.HEALTH_KEY: health},
    }


def admin(argocd_binaries: Path, tmp_path: Path, obj: dict[str, Any], *args: str, cm: Path = ARGOCD_CM) -> str:
    """`argocd admin settings resource-overrides ARGS OBJ --argocd-cm-path CM`; stdout, or AssertionError with
    the output when it fails."""
    path = tmp_path / "obj.yaml"
    path.write_text(yaml.safe_dump(obj))
    command, *rest = args
    argv = [str(argocd_binaries / "argocd"), "admin", "settings", "resource-overrides", command, str(path), *rest]
    argv += ["--argocd-cm-path", str(cm)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise AssertionError(f"exit {done.returncode}: {done.stdout}{done.stderr}")
    return done.stdout


def health(out: str) -> tuple[str, str]:
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines() if ": " in line)
    return lines["STATUS"], lines["MESSAGE"]


def test_the_unit_tests_runtime_has_exactly_argo_cds_globals(argocd_binaries: Path, tmp_path: Path) -> None:
    cm = tmp_path / "probe-cm.yaml"
    cm.write_text(yaml.safe_dump(configmap(PROBE)))
    status, message = health(admin(argocd_binaries, tmp_path, rollout(None), "health", cm=cm))
    assert status == "Healthy", message
    global_names, table_names, os_names, string_methods = message.split("|")
    assert set(global_names.split(",")) - GOPHER_ONLY == ARGOCD_GLOBALS
    assert set(table_names.split(",")) == TABLE_FUNCTIONS
    assert set(os_names.split(",")) == {"time", "date"}
    assert string_methods == "false"


def test_the_string_format_health_check_fails_in_argo_cd(argocd_binaries: Path, tmp_path: Path) -> None:
    cm = tmp_path / "old-cm.yaml"
    cm.write_text(yaml.safe_dump(configmap(OLD_HEALTH_LUA.read_text())))
    stale = rollout("Succeeded")
    stale["metadata"]["generation"] = 5
    with pytest.raises(AssertionError, match="attempt to index a non-table object\\(nil\\) with key 'format'"):
        admin(argocd_binaries, tmp_path, stale, "health", cm=cm)
    assert health(admin(argocd_binaries, tmp_path, stale, "health")) == (
        "Progressing",
        "Waiting for the operator to observe generation 5 (status is Succeeded)",
    )


@pytest.mark.parametrize(
    ("phase", "status", "expected"),
    [
        (None, {}, "Progressing"),
        ("Verifying", {}, "Progressing"),
        ("Verifying", {"awaitingApproval": True}, "Suspended"),
        ("Paused", {}, "Suspended"),
        ("Succeeded", {}, "Healthy"),
        ("Failed", {}, "Degraded"),
        ("RolledBack", {}, "Degraded"),
        ("Aborted", {}, "Degraded"),
    ],
)
def test_the_shipped_health_check_in_argo_cd(
    argocd_binaries: Path, tmp_path: Path, phase: str | None, status: dict[str, Any], expected: str
) -> None:
    assert health(admin(argocd_binaries, tmp_path, rollout(phase, **status), "health"))[0] == expected


def test_the_shipped_actions_in_argo_cd(argocd_binaries: Path, tmp_path: Path) -> None:
    awaiting = rollout("Verifying", awaitingApproval=True)
    listed = admin(argocd_binaries, tmp_path, awaiting, "list-actions")
    rows = dict(line.split() for line in listed.strip().splitlines()[1:])
    assert rows == {"abort": "false", "pause": "false", "promote": "false", "resume": "true", "retry": "true"}
    promoted = admin(argocd_binaries, tmp_path, awaiting, "run-action", "promote")
    assert "torghut.proompteng.ai/action: promote:" in promoted
    with pytest.raises(AssertionError, match="nothing to retry: release-42 is Verifying"):
        admin(argocd_binaries, tmp_path, awaiting, "run-action", "retry")
