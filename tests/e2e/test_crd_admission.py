"""The CRD against a real API server: what `kubectl apply` accepts, what it refuses and with which words,
what `kubectl explain` and `kubectl get` show, and that status written by the operator is kept whole."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from torghut_localstack.kubectl import Kubectl, KubectlError
from torghut_localstack.wait import wait_for
from torghut_localstack.world import crd_established
from torghut_operator.core.api.spec import GROUP, KIND, PLURAL, VERSION, TorghutRolloutSpec
from torghut_operator.core.api.status import (
    AppliedFile,
    BackfillStatus,
    CheckStatus,
    Condition,
    LastAction,
    Measurement,
    MigrationStatus,
    Phase,
    PromotionStatus,
    RestorePoint,
    TorghutRolloutStatus,
    Verdict,
)
from torghut_operator.shell.reconciler import _dump_status

pytestmark = pytest.mark.e2e
NAMESPACE_PREFIX = "admission"
"""Outside the e2e operator's namespaces: these tests write statuses by hand and must not be reconciled."""

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "torghutrollouts.yaml"
SAMPLES = sorted((REPO / "manifests" / "samples").glob("*.yaml"))
BAD_SAMPLES = REPO / "tests" / "bad_samples"
RESOURCE = f"{PLURAL}.{GROUP}"
IMAGE = "registry.ide-newton.ts.net/lab/torghut@sha256:884bec35f7d24ef34c51240e697aa996bc134385be9f6936aa170880fe2d601e"

REJECTIONS: dict[str, list[str]] = {
    "no-provider.yaml": ["spec.verify.checks[0]", "check decisions-flowing needs exactly one provider"],
    "two-providers.yaml": ["spec.verify.checks[0]", "needs exactly one provider: postgres, prometheus or http"],
    "two-migration-modes.yaml": ["spec.migrate", "migrate takes one of job or sql, not both"],
    "missing-target-image.yaml": ["spec.target.image", "Required value"],
    "bad-duration.yaml": ["spec.verify.interval", '"5 minutes"', "should match"],
    "count-zero.yaml": ["spec.verify.count", "greater than or equal to 1"],
    "duplicate-check-names.yaml": ["spec.verify.checks", "verify.checks names must be unique"],
    "min-above-max.yaml": ["spec.verify.checks[0]", "check fallback-ratio: min must not be above max"],
    "postgres-check-without-database.yaml": ["postgres checks need spec.database"],
    "inline-dsn.yaml": ['unknown field "spec.database.dsn"'],
    "migrate-without-database.yaml": ["spec.migrate needs spec.database"],
    "prometheus-check-without-prometheus.yaml": ["prometheus checks need spec.prometheus"],
    "no-judgement.yaml": ["needs a judgement: min/max or successCondition/failureCondition"],
    "thresholds-and-condition.yaml": ["uses min/max or successCondition/failureCondition, not both"],
    "empty-migrate.yaml": ["spec.migrate", "migrate needs job, sql or expect"],
    "target-kind-pod.yaml": ["spec.target.kind", '"Pod"', 'supported values: "Deployment", "Service"'],
    "check-name-not-dns-label.yaml": ["spec.verify.checks[0].name", '"Decisions_Flowing"', "should match"],
    "preset-without-service-url.yaml": ["preset torghut-completion needs spec.serviceUrl"],
    "no-evidence.yaml": ["verify needs at least one check or preset"],
    "promotion-evidence-without-database.yaml": ["promotion steps with requiredPromotion need spec.database"],
    "duplicate-promotion-steps.yaml": ["spec.promotion.steps", "promotion step names must be unique"],
    "live-step-without-live-evidence.yaml": [
        "a step that turns on live trading needs requiredPromotion with mode live"
    ],
    "promotion-out-of-order.yaml": ["promotion steps must be ordered by exposure"],
    "trading-mode-typo.yaml": ["TRADING_MODE must be paper or live"],
    "duration-too-long.yaml": ["spec.verify.interval", "durations are at most 168h"],
    "lock-retries-unbounded.yaml": ["spec.migrate.sql.lockRetries", "less than or equal to 20"],
    "unknown-preset.yaml": ["spec.presets[0]", '"torghut-everything"', 'supported values: "torghut-completion"'],
}
"""Each bad sample, and the words the API server's answer must contain for a user to see what is wrong."""


@pytest.fixture(scope="module")
def crd(kubectl: Kubectl) -> dict[str, Any]:
    """The CRD, installed the way the README says, and Established."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    # Polled: `kubectl wait` right after the apply fails while the CRD has no conditions at all yet.
    wait_for(lambda: crd_established(kubectl.get("crd", RESOURCE)), timeout=60, what="the CRD Established")
    document: dict[str, Any] = yaml.safe_load(CRD_FILE.read_text())
    return document


def in_namespace(path: Path, namespace: str) -> list[dict[str, Any]]:
    """The documents of a sample file, moved to the test's namespace (samples say `torghut`)."""
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for doc in documents:
        doc["metadata"]["namespace"] = namespace
    return documents


def dry_run(kubectl: Kubectl, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`kubectl apply --dry-run=server`: the objects as the API server would store them.

    Sent as a YAML stream, not a v1 List: kubectl validates a List client-side, and the point here is the
    API server's own answer."""
    out = kubectl("apply", "--dry-run=server", "-f", "-", "-o", "json", stdin=yaml.safe_dump_all(documents))
    answer = json.loads(out)
    items: list[dict[str, Any]] = answer["items"] if answer.get("kind") == "List" else [answer]
    return items


@pytest.mark.usefixtures("crd")
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda path: path.name)
def test_sample_is_accepted_with_the_models_defaults(kubectl: Kubectl, namespace: str, sample: Path) -> None:
    """Every sample is admitted, and what the API server stores (with the CRD's defaults filled in) is exactly
    the effective spec the operator's model reads: `kubectl get -o yaml` shows the values that apply."""
    documents = in_namespace(sample, namespace)
    stored = [item for item in dry_run(kubectl, documents) if item["kind"] == KIND]
    sent = [doc for doc in documents if doc["kind"] == KIND]
    assert len(stored) == len(sent) >= 1
    for before, after in zip(sent, stored, strict=True):
        effective = TorghutRolloutSpec.model_validate(before["spec"])
        assert after["spec"] == effective.model_dump(mode="json", by_alias=True, exclude_none=True)


def test_every_bad_sample_has_expected_words() -> None:
    assert sorted(REJECTIONS) == sorted(path.name for path in BAD_SAMPLES.glob("*.yaml"))


@pytest.mark.usefixtures("crd")
@pytest.mark.parametrize(("name", "words"), sorted(REJECTIONS.items()), ids=sorted(REJECTIONS))
def test_bad_sample_is_refused_with_a_message(kubectl: Kubectl, namespace: str, name: str, words: list[str]) -> None:
    documents = in_namespace(BAD_SAMPLES / name, namespace)
    with pytest.raises(KubectlError) as refused:
        dry_run(kubectl, documents)
    message = refused.value.detail
    assert "error validating data" not in message, f"kubectl validated client-side: {message}"
    assert "is invalid" in message or "BadRequest" in message, message
    for word in words:
        assert word in message, message


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize(
    ("field", "description_path"),
    [
        ("spec.verify.checks.successCondition", "spec.verify.checks[].successCondition"),
        ("spec.database.secretRef", "spec.database.secretRef"),
        ("spec.target.kind", "spec.target.kind"),
    ],
)
def test_kubectl_explain_documents_the_field(
    kubectl: Kubectl, crd: dict[str, Any], field: str, description_path: str
) -> None:
    node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in description_path.split("."):
        node = node["properties"][part.removesuffix("[]")]
        if part.endswith("[]"):
            node = node["items"]
    description = _flat(node["description"])
    # The API server publishes a new CRD's OpenAPI a moment after it is Established.
    explained = wait_for(
        lambda: _flat(kubectl("explain", f"{PLURAL}.{field}")),
        timeout=60,
        what=f"kubectl explain {PLURAL}.{field}",
        retry_on=(KubectlError,),
    )
    assert description in explained


def full_status() -> TorghutRolloutStatus:
    """A status with every field of every status model set to a non-default value."""
    at = "2026-01-02T03:04:05Z"
    return TorghutRolloutStatus(
        phase=Phase.PROMOTING,
        stage="promote",
        message="verify: 2 of 3 measurements of route-null-rate judged",
        observed_generation=3,
        spec_hash="0123456789abcdef",
        attempt=2,
        image=IMAGE,
        previous_image=IMAGE.replace("884bec35", "0927f669"),
        started_at=at,
        phase_started_at=at,
        completed_at=at,
        paused_from=Phase.DEPLOYING,
        paused_by="verb",
        aborted=True,
        failed_stage="verify",
        blocked_by="torghut-other-release",
        awaiting_approval=True,
        drift="target changed under the rollout: image is other:1 instead of registry/torghut:v42, set by kubectl-set",
        migration=MigrationStatus(
            mode="sql",
            job_name="torghut-release-migrate-1",
            applied=[AppliedFile(name="0001_backfill_route_adapters.sql", checksum="ab" * 32, applied_at=at)],
            message="applied 1 file",
            completed_at=at,
            caught_up_at=at,
            job_logs="ERROR: relation executions does not exist",
            backfill=BackfillStatus(
                file="0003_backfill_routes.sql",
                table="public.executions",
                rows_done=450_000,
                rows_total=1_000_000,
                batches=90,
                batch_size=5_000,
                rows_per_second=12_000.5,
                eta_seconds=46,
                throttled="2 lock waits on public.executions",
                finished=True,
                updated_at=at,
            ),
        ),
        checks=[
            CheckStatus(
                name="route-null-rate",
                stage="verify",
                provider="postgres",
                query="SELECT 0 AS value",
                threshold="<= 0",
                phase=Verdict.INCONCLUSIVE,
                dry_run=True,
                waivable=False,
                successful=2,
                failed=1,
                inconclusive=1,
                errors=3,
                consecutive_errors=1,
                message="value 0.02 above max 0 (SELECT 0 AS value)",
                approved=True,
                measurements=[
                    Measurement(phase=Verdict.FAILED, at=at, value="0.02", samples=57, message="above max 0")
                ],
            )
        ],
        promotion=PromotionStatus(
            step=1,
            step_name="live",
            applied=True,
            approved=True,
            patched_at=at,
            soak_since=at,
            completed=["paper"],
            message="live: waiting for the promote verb",
        ),
        restore=RestorePoint(image="registry/torghut@sha256:old", env={"TRADING_MODE": "paper"}, unset=["X"]),
        next_measurement_at=at,
        last_action=LastAction(verb="pause", at=at, result="paused at Verifying"),
        conditions=[
            Condition(
                type="Ready",
                status="False",
                observed_generation=3,
                last_transition_time=at,
                reason="AwaitingApproval",
                message="route-null-rate is Inconclusive",
            )
        ],
    )


def unset_fields(model: BaseModel, path: str = "status") -> list[str]:
    """Fields left at their default anywhere in `model`: the round trip would not prove them."""
    missing = [f"{path}.{name}" for name in type(model).model_fields if name not in model.model_fields_set]
    for name in model.model_fields_set:
        value = getattr(model, name)
        for index, item in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(item, BaseModel):
                missing += unset_fields(
                    item, f"{path}.{name}[{index}]" if isinstance(value, list) else f"{path}.{name}"
                )
    return missing


@pytest.fixture
def rollout_with_status(kubectl: Kubectl, namespace: str, crd: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A TorghutRollout (the Deployment sample) whose status was written through the status subresource the
    way the operator writes it: a merge patch of the model dumped by alias."""
    (document,) = in_namespace(REPO / "manifests" / "samples" / "deployment-job-migration.yaml", namespace)
    name = document["metadata"]["name"]
    kubectl("create", "-f", "-", stdin=json.dumps(document))
    status = full_status().model_dump(mode="json", by_alias=True)
    kubectl(
        "patch",
        f"{PLURAL}/{name}",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )
    return name, status


def test_status_written_by_the_operator_survives_a_read_back(
    kubectl: Kubectl, namespace: str, rollout_with_status: tuple[str, dict[str, Any]]
) -> None:
    assert unset_fields(full_status()) == []
    name, written = rollout_with_status
    stored = kubectl.json("get", f"{PLURAL}/{name}", "-n", namespace)
    assert stored["status"] == written
    assert TorghutRolloutStatus.model_validate(stored["status"]) == full_status()


def test_variables_to_unset_on_rollback_survive_a_status_merge_patch(
    kubectl: Kubectl, namespace: str, rollout_with_status: tuple[str, dict[str, Any]]
) -> None:
    """A merge patch deletes null values, so "was unset" is a list of names, never a null in restore.env."""
    name, _ = rollout_with_status
    restore = {"env": {"TRADING_MODE": "paper"}, "unset": ["TRADING_AUTONOMY_ALLOW_LIVE_PROMOTION"]}
    patch = {"status": {"restore": restore}}
    kubectl(
        "patch", f"{PLURAL}/{name}", "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps(patch)
    )
    stored = kubectl.json("get", f"{PLURAL}/{name}", "-n", namespace)
    assert stored["status"]["restore"]["env"] == {"TRADING_MODE": "paper"}
    assert stored["status"]["restore"]["unset"] == ["TRADING_AUTONOMY_ALLOW_LIVE_PROMOTION"]


def test_a_nested_field_the_operator_stops_setting_is_removed_from_the_stored_status(
    kubectl: Kubectl, namespace: str, rollout_with_status: tuple[str, dict[str, Any]]
) -> None:
    """The operator's status patch is a merge patch, which keeps whatever it does not mention: the next promotion
    step must not inherit the previous step's patchedAt (it would skip its evidence and approval), and a backfill
    that stops waiting must not keep saying it is throttled."""
    name, _ = rollout_with_status
    status = full_status()
    assert status.promotion is not None
    assert status.migration is not None
    assert status.migration.backfill is not None
    next_step = status.promotion.model_copy(update={"step": 2, "patched_at": None, "applied": False})
    calm = status.migration.backfill.model_copy(update={"throttled": None, "eta_seconds": None})
    changed = status.model_copy(
        update={"promotion": next_step, "migration": status.migration.model_copy(update={"backfill": calm})}
    )
    patch = {"status": _dump_status(changed)}
    kubectl(
        "patch", f"{PLURAL}/{name}", "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps(patch)
    )
    stored = kubectl.json("get", f"{PLURAL}/{name}", "-n", namespace)["status"]
    assert "patchedAt" not in stored["promotion"]
    assert stored["promotion"]["step"] == 2
    assert "throttled" not in stored["migration"]["backfill"]
    assert "etaSeconds" not in stored["migration"]["backfill"]
    assert TorghutRolloutStatus.model_validate(stored) == changed


def _table(output: str) -> list[dict[str, str]]:
    header, *rows = output.splitlines()
    starts = [match.start() for match in re.finditer(r"\S+", header)]
    ends = [*starts[1:], None]
    names = header.split()
    return [{n: row[s:e].strip() for n, s, e in zip(names, starts, ends, strict=True)} for row in rows]


def test_printer_columns_short_names_and_categories(
    kubectl: Kubectl, namespace: str, rollout_with_status: tuple[str, dict[str, Any]]
) -> None:
    name, _ = rollout_with_status
    (row,) = _table(kubectl("get", PLURAL, "-n", namespace))
    # The default view fits 100 columns whatever the image: the digest is in -o wide only.
    output = kubectl("get", PLURAL, "-n", namespace)
    (row,) = _table(output)
    assert list(row) == ["NAME", "PHASE", "STAGE", "READY", "AGE"]
    assert row | {"AGE": ""} == {"NAME": name, "PHASE": "Promoting", "STAGE": "promote", "READY": "False", "AGE": ""}
    assert re.fullmatch(r"\d+[smh]", row["AGE"])
    assert max(len(line) for line in output.splitlines()) <= 100
    (wide,) = _table(kubectl("get", PLURAL, "-n", namespace, "-o", "wide"))
    assert list(wide) == ["NAME", "PHASE", "STAGE", "READY", "AGE", "IMAGE", "MESSAGE"]
    assert wide["IMAGE"] == IMAGE
    assert wide["MESSAGE"] == "verify: 2 of 3 measurements of route-null-rate judged"
    assert "DESCRIPTION" in kubectl("explain", "torghutrollout.spec.verify.checks")
    for alias in ("tr", "trollout", "torghut", f"{KIND.lower()}.{VERSION}.{GROUP}"):
        assert name in kubectl("get", alias, "-n", namespace, "-o", "name"), alias
    assert f"{KIND.lower()}.{GROUP}/{name}" in kubectl("get", "all", "-n", namespace, "-o", "name")


def test_the_target_workload_is_fixed_once_created_and_only_its_image_moves(kubectl: Kubectl, namespace: str) -> None:
    """Re-pointing a rollout at another workload would leave the first one on the new image with nothing to restore
    it: the API server refuses it; a new image (what a release changes) is accepted."""
    sample = next(p for p in SAMPLES if in_namespace(p, namespace)[0]["kind"] == KIND)
    document = in_namespace(sample, namespace)[0]
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(document))
    name = document["metadata"]["name"]

    def patch(target: dict[str, str]) -> str:
        body = json.dumps({"spec": {"target": target}})
        return kubectl("patch", f"{PLURAL}.{GROUP}/{name}", "-n", namespace, "--type=merge", "-p", body)

    for change in ({"name": "torghut-other"}, {"container": "sidecar"}, {"kind": "Service"}):
        with pytest.raises(KubectlError) as refused:
            patch(change)
        assert "spec.target's kind, name and container cannot change" in _flat(refused.value.detail), change
    patch({"image": IMAGE.replace("884bec35", "00000000")})
    stored = json.loads(kubectl("get", f"{PLURAL}.{GROUP}/{name}", "-n", namespace, "-o", "json"))
    assert stored["spec"]["target"]["image"] == IMAGE.replace("884bec35", "00000000")
