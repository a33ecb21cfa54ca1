"""Drift is never evidence: someone else changing the target's image or trading env under a verification or a
promotion fails the rollout (or makes it wait), naming who; and the operator's own writes are server-side apply
configurations that keep every field it owns."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_planner import (
    NEW,
    OLD,
    PROMOTION,
    T0,
    _live_canary,
    env_target,
    make_spec,
    measured,
    promoting,
    run,
    verifying,
)
from tests.unit.test_reconciler_shell import FakeKube, rollout
from tests.unit.test_reconciler_shell import deployment as shell_deployment
from torghut_operator.adapters.kube import KubeGateway
from torghut_operator.core.api.spec import TorghutRolloutSpec
from torghut_operator.core.api.status import Phase, Verdict
from torghut_operator.core.manifests import deployment_state, knative_state
from torghut_operator.core.observations import PromotionEvidence, TargetState
from torghut_operator.core.ownership import FIELD_MANAGER, container_apply, field_owners, owned_by
from torghut_operator.core.planner import Measure, SetTargetEnv, SetTargetImage
from torghut_operator.shell.ports import Gates
from torghut_operator.shell.reconciler import Reconciler, _dump_status

pytestmark = pytest.mark.unit

KUBECTL = ("kubectl-edit (Update 2026-11-24T12:00:05Z)",)
ARGOCD = ("argocd-controller (Apply 2026-11-24T12:00:06Z)",)


def drifted(image: str, *, env: dict[str, str] | None = None, owners: dict[str, tuple[str, ...]]) -> TargetState:
    return TargetState(exists=True, image=image, rolled_out=True, detail="1/1", env=env or {}, owners=owners)


# --- the planner ---


def test_an_image_changed_by_someone_else_while_verifying_rolls_back_naming_the_manager() -> None:
    spec = make_spec()
    p = run(spec, verifying(spec), target=drifted(OLD, owners={"image": KUBECTL}))
    assert p.status.phase is Phase.ROLLING_BACK
    assert "image is registry/torghut@sha256:old instead of registry/torghut@sha256:new" in p.status.message
    assert "set by kubectl-edit (Update 2026-11-24T12:00:05Z)" in p.status.message
    verified = next(c for c in p.status.conditions if c.type == "Verified")
    assert (verified.status, verified.reason) == ("False", "TargetDrifted")
    assert not any(isinstance(a, Measure) for a in p.actions)


def test_measurements_taken_while_the_target_drifted_never_count() -> None:
    """The shell reads the target again after measuring: a drift seen then voids the turn's measurements."""
    spec = make_spec()
    ok = {c.name: measured(Verdict.SUCCESSFUL) for c in spec.verify.checks}
    p = run(spec, verifying(spec), target=drifted(OLD, owners={"image": ARGOCD}), measurements=ok)
    assert p.status.phase is Phase.ROLLING_BACK
    assert all(not c.measurements for c in p.status.checks)
    assert "argocd-controller" in p.status.message


def test_the_operators_own_field_manager_is_never_named_as_the_writer() -> None:
    spec = make_spec()
    owners: dict[str, tuple[str, ...]] = {"image": (f"{FIELD_MANAGER} (Apply 2026-11-24T12:00:00Z)",)}
    p = run(spec, verifying(spec), target=drifted(OLD, owners=owners))
    assert "unknown writer" in p.status.message
    assert FIELD_MANAGER not in p.status.message


def test_on_drift_wait_measures_nothing_until_the_target_is_back_then_starts_the_checks_over() -> None:
    spec = make_spec(target={"name": "torghut", "container": "torghut", "image": NEW, "onDrift": "Wait"})
    ok = {c.name: measured(Verdict.SUCCESSFUL) for c in spec.verify.checks}
    status = run(spec, verifying(spec), target=drifted(NEW, owners={}), measurements=ok).status
    assert all(len(c.measurements) == 1 for c in status.checks)
    later = T0 + timedelta(minutes=1)
    p = run(spec, status, at=later, target=drifted(OLD, owners={"image": KUBECTL}), measurements=ok)
    assert p.status.phase is Phase.VERIFYING
    assert p.status.drift is not None
    assert "kubectl-edit" in p.status.drift
    assert all(len(c.measurements) == 1 for c in p.status.checks), "a drifted turn's measurements were counted"
    assert [e.reason for e in p.events] == ["TargetDrifted"]
    again = run(spec, p.status, at=later, target=drifted(OLD, owners={"image": KUBECTL}))
    assert not again.events
    assert not any(isinstance(a, Measure) for a in again.actions)
    back = run(spec, again.status, at=later + timedelta(seconds=30), target=drifted(NEW, owners={}))
    assert back.status.drift is None
    assert [e.reason for e in back.events][:1] == ["DriftResolved"]
    assert all(not c.measurements for c in back.status.checks), "evidence from before the drift was kept"
    assert any(isinstance(a, Measure) for a in back.actions)


def test_a_trading_variable_reverted_under_a_promotion_step_rolls_back_env_and_image() -> None:
    spec = make_spec(promotion=PROMOTION)
    status = _live_canary(spec)
    live = {"TRADING_MODE": "live", "TRADING_CAPITAL_FRACTION": "0.10"}
    applied = run(spec, status, target=env_target(live)).status
    assert applied.promotion is not None
    assert applied.promotion.applied
    reverted = drifted(NEW, env={"TRADING_MODE": "paper"}, owners={"env:TRADING_MODE": ARGOCD})
    p = run(spec, applied, target=reverted)
    assert p.status.phase is Phase.ROLLING_BACK
    assert "TRADING_MODE is 'paper' instead of 'live', set by argocd-controller" in p.status.message
    assert "TRADING_CAPITAL_FRACTION is unset instead of '0.10'" in p.status.message
    restore = run(spec, p.status, target=reverted)
    assert SetTargetImage(OLD) in restore.actions
    assert any(isinstance(a, SetTargetEnv) for a in restore.actions)


def test_an_earlier_steps_variable_changed_while_the_next_step_soaks_fails_too() -> None:
    spec = make_spec(promotion=PROMOTION)
    status = promoting(spec)
    found_paper = env_target({"TRADING_MODE": "paper"})
    evidence = PromotionEvidence(True, "1 approved row")
    p = run(spec, status, target=env_target({"TRADING_MODE": "shadow"}), promotion_evidence=evidence)
    p = run(spec, p.status, target=found_paper, promotion_evidence=evidence)
    ok = {c.name: measured(Verdict.SUCCESSFUL) for c in spec.verify.checks}
    for i in range(spec.verify.count):
        p = run(spec, p.status, at=T0 + timedelta(hours=1, minutes=i), target=found_paper, measurements=ok)
    assert p.status.promotion is not None
    assert p.status.promotion.step == 1
    reverted = drifted(NEW, env={"TRADING_MODE": "shadow"}, owners={"env:TRADING_MODE": KUBECTL})
    p = run(spec, p.status, target=reverted, promotion_evidence=evidence)
    assert p.status.phase is Phase.ROLLING_BACK
    assert "TRADING_MODE is 'shadow' instead of 'paper'" in p.status.message


def test_a_step_whose_own_patch_is_on_its_way_is_not_drift() -> None:
    """Between the status write that precedes a step's env patch and the patch itself, the step's variables still
    hold the previous step's values: that is the step at work, not someone else."""
    spec = make_spec(promotion=PROMOTION)
    status = _live_canary(spec)
    p = run(spec, status, target=env_target({"TRADING_MODE": "paper"}))
    assert p.status.phase is Phase.PROMOTING
    assert p.actions == (SetTargetEnv({"TRADING_MODE": "live", "TRADING_CAPITAL_FRACTION": "0.10"}),)


# --- field ownership ---


def _fields(container: str, *, image: bool = False, env: tuple[str, ...] = ()) -> dict[str, Any]:
    node: dict[str, Any] = {}
    if image:
        node["f:image"] = {}
    if env:
        node["f:env"] = {"k:" + json.dumps({"name": n}, separators=(",", ":")): {".": {}, "f:value": {}} for n in env}
    key = "k:" + json.dumps({"name": container}, separators=(",", ":"))
    return {"f:spec": {"f:template": {"f:spec": {"f:containers": {key: node}}}}}


def deployment(
    image: str, env: dict[str, str], managed: list[tuple[str, str, dict[str, Any]]], rv: str = "7"
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "torghut",
            "namespace": "torghut",
            "resourceVersion": rv,
            "generation": 1,
            "managedFields": [
                {"manager": m, "operation": op, "time": "2026-11-24T12:00:00Z", "fieldsV1": f} for m, op, f in managed
            ],
        },
        "spec": {
            "replicas": 1,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "torghut", "image": image, "env": [{"name": k, "value": v} for k, v in env.items()]},
                        {"name": "sidecar", "image": "sidecar:1"},
                    ]
                }
            },
        },
        "status": {},
    }


def test_an_env_write_restates_the_image_the_operator_owns_so_it_is_not_released() -> None:
    obj = deployment(
        NEW,
        {"TRADING_MODE": "paper", "LOG_LEVEL": "info"},
        [
            ("argocd-controller", "Apply", _fields("torghut", env=("LOG_LEVEL",))),
            (FIELD_MANAGER, "Apply", _fields("torghut", image=True, env=("TRADING_MODE",))),
        ],
    )
    body = container_apply(obj, "torghut", env={"TRADING_CAPITAL_FRACTION": "0.10"})
    (entry,) = body["spec"]["template"]["spec"]["containers"]
    assert entry == {
        "name": "torghut",
        "image": NEW,
        "env": [{"name": "TRADING_CAPITAL_FRACTION", "value": "0.10"}, {"name": "TRADING_MODE", "value": "paper"}],
    }
    assert body["metadata"]["resourceVersion"] == "7"


def test_removing_a_variable_leaves_it_out_and_keeps_the_rest() -> None:
    obj = deployment(
        NEW, {"TRADING_MODE": "live", "X": "1"}, [(FIELD_MANAGER, "Apply", _fields("torghut", image=True, env=("X",)))]
    )
    body = container_apply(obj, "torghut", env={"X": None})
    (entry,) = body["spec"]["template"]["spec"]["containers"]
    assert entry == {"name": "torghut", "image": NEW}


def test_fields_the_operator_only_updated_are_not_restated() -> None:
    """Fields from the operator's older JSON patches (operation Update) are not released by an apply."""
    obj = deployment(OLD, {}, [(FIELD_MANAGER, "Update", _fields("torghut", image=True))])
    assert owned_by(obj, "torghut").image is False
    body = container_apply(obj, "torghut", env={"TRADING_MODE": "paper"})
    assert "image" not in body["spec"]["template"]["spec"]["containers"][0]


def test_field_owners_name_each_manager_of_image_and_env() -> None:
    obj = deployment(
        OLD,
        {"TRADING_MODE": "paper"},
        [
            ("argocd-controller", "Apply", _fields("torghut", image=True, env=("TRADING_MODE",))),
            ("kubectl-edit", "Update", _fields("torghut", image=True)),
            ("other", "Apply", _fields("sidecar", image=True)),
        ],
    )
    owners = field_owners(obj, "torghut")
    assert owners == {
        "image": ("argocd-controller (Apply 2026-11-24T12:00:00Z)", "kubectl-edit (Update 2026-11-24T12:00:00Z)"),
        "env:TRADING_MODE": ("argocd-controller (Apply 2026-11-24T12:00:00Z)",),
    }
    assert deployment_state(obj, "torghut").owners == owners


def test_a_knative_services_atomic_container_list_is_owned_as_a_whole() -> None:
    service = {
        "metadata": {
            "name": "torghut",
            "generation": 1,
            "managedFields": [
                {
                    "manager": "kn",
                    "operation": "Update",
                    "time": "t",
                    "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {}}}}},
                }
            ],
        },
        "spec": {"template": {"spec": {"containers": [{"image": NEW}]}}},
        "status": {},
    }
    assert knative_state(service, "user-container").owners == {"*": ("kn (Update t)",)}


_NAMES = st.sampled_from(["TRADING_MODE", "TRADING_CAPITAL_FRACTION", "LOG_LEVEL", "X"])


@given(
    owned_image=st.booleans(),
    owned_env=st.sets(_NAMES),
    live_env=st.dictionaries(_NAMES, st.text(min_size=1, max_size=5)),
    change=st.dictionaries(_NAMES, st.one_of(st.none(), st.text(min_size=1, max_size=5))),
)
def test_an_apply_owns_exactly_what_the_operator_owned_plus_its_change(
    owned_image: bool,
    owned_env: set[str],
    live_env: dict[str, str],
    change: dict[str, str | None],
) -> None:
    obj = deployment(
        NEW, live_env, [(FIELD_MANAGER, "Apply", _fields("torghut", image=owned_image, env=tuple(sorted(owned_env))))]
    )
    (entry,) = container_apply(obj, "torghut", env=change)["spec"]["template"]["spec"]["containers"]
    applied = {e["name"]: e["value"] for e in entry.get("env", [])}
    expected = {n: live_env[n] for n in owned_env if n in live_env}
    expected.update({n: v for n, v in change.items() if v is not None})
    for n, v in change.items():
        if v is None:
            expected.pop(n, None)
    assert applied == expected
    assert ("image" in entry) is owned_image


# --- the shell: the target is read again after measuring ---


class _DriftingGates:
    """Measures Successful, and while it measures someone else puts the old image back."""

    def __init__(self, kube: Any) -> None:
        self.kube = kube
        self.measured = 0

    def measure(self, check: Any, spec: Any, namespace: str, previous: Any) -> Any:

        self.measured += 1
        self.kube.target = shell_deployment(OLD, {})
        return measured(Verdict.SUCCESSFUL)

    def record_evidence(self, *args: Any) -> None:
        return None

    def report(self, *args: Any) -> str:
        return "report"


def test_a_drift_during_a_measurement_voids_it_and_rolls_back() -> None:
    body = rollout({})
    del body["metadata"]["deletionTimestamp"]
    spec = TorghutRolloutSpec.model_validate(body["spec"])
    status = run(spec, verifying(spec)).status.model_copy(update={"spec_hash": spec.spec_hash()})
    body["status"] = _dump_status(status)
    kube = FakeKube(body, shell_deployment(NEW, {}))
    gates = _DriftingGates(kube)
    events: list[tuple[str, str, str]] = []
    reconciler = Reconciler(
        cast(KubeGateway, kube),
        cast(Gates, gates),
        lambda _b, t, r, m: events.append((t, r, m)),
        clock=lambda: T0 + timedelta(minutes=5),
    )
    asyncio.run(reconciler.reconcile("trading", "release"))
    assert gates.measured == 1
    final = kube.rollout["status"]
    assert final["phase"] in ("RollingBack", "RolledBack")
    drift = next(c for c in final["conditions"] if c["type"] == "Verified")
    assert drift["reason"] == "TargetDrifted"
    assert "image is registry/torghut@sha256:old instead of registry/torghut@sha256:new" in drift["message"]
    assert all(not c.get("measurements") for c in final.get("checks") or [])
