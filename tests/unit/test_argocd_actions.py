"""The TorghutRollout resource actions for Argo CD (promote, abort, retry, pause, resume), run with exactly the Lua
libraries Argo CD's runtime opens (tests/argocd_lua.py), as argocd-cm.yaml ships them.

Discovery must offer every verb and disable exactly the ones the operator would refuse; an action must refuse with
the operator's own words (core/verbs.py `verb_applies`, what the kubectl plugin prints), or request the verb the way
the plugin does: the annotation torghut.proompteng.ai/action = "<verb>:<UTC time>".
"""

from __future__ import annotations

import copy
import itertools
import re
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from tests.argocd_lua import ARGOCD_DIR, LuaError, run
from torghut_localstack import argocd_cm
from torghut_operator.core.api.status import Phase, TorghutRolloutStatus
from torghut_operator.core.manifests import ACTION_ANNOTATION
from torghut_operator.core.timefmt import parse_time
from torghut_operator.core.verbs import VERBS, parse_action, verb_applies

pytestmark = pytest.mark.unit

NAME = "release-42"
CONFIGMAP = yaml.safe_load((ARGOCD_DIR / "argocd-cm.yaml").read_text())
ACTIONS = yaml.safe_load(CONFIGMAP["data"][argocd_cm.ACTIONS_KEY])
DISCOVERY = ACTIONS["discovery.lua"]
DEFINITIONS = {definition["name"]: definition["action.lua"] for definition in ACTIONS["definitions"]}
MISSING_EVIDENCE = {
    "type": "Promoted",
    "status": "False",
    "reason": "MissingEvidence",
    "message": "no approved research_promotions row for live",
    "lastTransitionTime": "2026-01-01T00:00:00Z",
}


def rollout(status: dict[str, Any] | None, *, spec_paused: bool = False, generation: int = 3) -> dict[str, Any]:
    spec: dict[str, Any] = {"target": {"kind": "Deployment", "name": "torghut", "image": "torghut:2"}}
    if spec_paused:
        spec["paused"] = True
    obj: dict[str, Any] = {
        "apiVersion": "torghut.proompteng.ai/v1alpha1",
        "kind": "TorghutRollout",
        "metadata": {"name": NAME, "namespace": "torghut", "generation": generation},
        "spec": spec,
    }
    if status is not None:
        obj["status"] = status
    return obj


def statuses() -> list[tuple[str, dict[str, Any], bool]]:
    """Every phase, with and without awaitingApproval, pausedBy and spec.paused, plus a blocked promotion."""
    cases: list[tuple[str, dict[str, Any], bool]] = []
    for phase, awaiting, paused_by, spec_paused in itertools.product(
        Phase, (False, True), (None, "spec", "verb"), (False, True)
    ):
        status = TorghutRolloutStatus(
            phase=phase, awaiting_approval=awaiting, paused_by=paused_by, observed_generation=3
        ).model_dump(by_alias=True, exclude_none=True, mode="json")
        cases.append((f"{phase.value}-awaiting={awaiting}-by={paused_by}-spec={spec_paused}", status, spec_paused))
    blocked = TorghutRolloutStatus.model_validate(
        {"phase": "Promoting", "observedGeneration": 3, "conditions": [MISSING_EVIDENCE]}
    ).model_dump(by_alias=True, exclude_none=True, mode="json")
    cases.append(("Promoting-missing-evidence", blocked, False))
    return cases


CASES = statuses()


def python_refusal(verb: str, status: dict[str, Any] | None, spec_paused: bool) -> str | None:
    parsed = TorghutRolloutStatus.model_validate(status or {})
    return verb_applies(verb, parsed, spec_paused=spec_paused, subject=NAME)


def discover(obj: dict[str, Any]) -> dict[str, bool]:
    result = run(DISCOVERY, obj)
    assert isinstance(result, dict)
    return {name: bool(entry["disabled"]) for name, entry in result.items()}


def test_every_verb_has_one_action_and_discovery_lists_them_all() -> None:
    assert [d["name"] for d in ACTIONS["definitions"]] == list(VERBS)
    assert set(discover(rollout(None))) == set(VERBS)


@pytest.mark.parametrize(("label", "status", "spec_paused"), CASES, ids=[c[0] for c in CASES])
def test_discovery_disables_exactly_what_the_operator_would_refuse(
    label: str, status: dict[str, Any], spec_paused: bool
) -> None:
    found = discover(rollout(status, spec_paused=spec_paused))
    expected = {verb: python_refusal(verb, status, spec_paused) is not None for verb in VERBS}
    assert found == expected, label


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize(("label", "status", "spec_paused"), CASES, ids=[c[0] for c in CASES])
def test_an_action_refuses_with_the_operators_words_or_requests_the_verb_like_the_plugin(
    verb: str, label: str, status: dict[str, Any], spec_paused: bool
) -> None:
    obj = rollout(status, spec_paused=spec_paused)
    refusal = python_refusal(verb, status, spec_paused)
    if refusal is not None:
        with pytest.raises(LuaError) as raised:
            run(DEFINITIONS[verb], obj)
        assert str(raised.value) == refusal, label
        return
    result = run(DEFINITIONS[verb], copy.deepcopy(obj))
    assert isinstance(result, dict)
    value = result["metadata"]["annotations"][ACTION_ANNOTATION]
    requested, nonce = parse_action(value)
    assert requested == verb
    assert nonce is not None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", nonce), nonce
    assert abs((parse_time(nonce) - datetime.now(UTC)).total_seconds()) < 60
    # Only the annotation changes: Argo CD patches the live object with the difference.
    result["metadata"]["annotations"].pop(ACTION_ANNOTATION)
    expected = copy.deepcopy(obj)
    expected["metadata"]["annotations"] = {}
    assert result["metadata"] == {**expected["metadata"], "generation": float(obj["metadata"]["generation"])}
    assert result["spec"] == expected["spec"]


def test_an_action_keeps_the_other_annotations() -> None:
    obj = rollout({"phase": "Verifying", "observedGeneration": 3})
    obj["metadata"]["annotations"] = {"argocd.argoproj.io/sync-wave": "2", ACTION_ANNOTATION: "pause:old"}
    result = run(DEFINITIONS["abort"], obj)
    assert isinstance(result, dict)
    annotations = result["metadata"]["annotations"]
    assert annotations["argocd.argoproj.io/sync-wave"] == "2"
    assert annotations[ACTION_ANNOTATION].startswith("abort:")


def test_a_spec_the_operator_has_not_seen_is_a_new_run() -> None:
    """Like the plugin (a spec hash it has not recorded): a Succeeded status of an older generation is Pending."""
    obj = rollout({"phase": "Succeeded", "observedGeneration": 2}, generation=3)
    assert discover(obj) == {"abort": False, "pause": False, "promote": True, "resume": True, "retry": True}
