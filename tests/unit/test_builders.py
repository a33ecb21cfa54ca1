"""How the operator reads a Deployment, a Knative Service and a Job, and what Job it creates."""

from __future__ import annotations

from typing import Any

import pytest

from torghut_operator.core.api.spec import TorghutRolloutSpec
from torghut_operator.core.manifests import deployment_state, job_state, knative_state, migration_job

pytestmark = pytest.mark.unit


def deployment(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"generation": 2},
        "spec": {
            "replicas": 2,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "torghut",
                            "image": "img:2",
                            "env": [
                                {"name": "TRADING_MODE", "value": "paper"},
                                {"name": "DB_DSN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "uri"}}},
                            ],
                        }
                    ]
                }
            },
        },
        "status": status,
    }


ROLLED = {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}


@pytest.mark.parametrize(
    ("status", "rolled_out", "failed"),
    [
        (ROLLED, True, None),
        ({**ROLLED, "observedGeneration": 1}, False, None),
        ({**ROLLED, "replicas": 3}, False, None),  # an old replica still runs
        ({**ROLLED, "availableReplicas": 1}, False, None),
        (
            {
                **ROLLED,
                "availableReplicas": 1,
                "conditions": [
                    {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "m"}
                ],
            },
            False,
            "ProgressDeadlineExceeded",
        ),
    ],
)
def test_deployment_is_rolled_out_only_when_every_replica_runs_the_observed_template(
    status: dict[str, Any], rolled_out: bool, failed: str | None
) -> None:
    state = deployment_state(deployment(**status), "torghut")
    assert state.exists
    assert state.image == "img:2"
    assert state.rolled_out is rolled_out
    assert state.failed_reason == failed
    assert state.env == {"TRADING_MODE": "paper"}, "secret-backed env is never read"


def test_a_missing_container_is_no_target() -> None:
    assert not deployment_state(deployment(**ROLLED), "other").exists
    assert not deployment_state(None, "torghut").exists


def service(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"generation": 3},
        "spec": {"template": {"spec": {"containers": [{"image": "img:3"}]}}},
        "status": status,
    }


@pytest.mark.parametrize(
    ("status", "rolled_out", "failed"),
    [
        (
            {
                "observedGeneration": 3,
                "latestCreatedRevisionName": "t-00003",
                "latestReadyRevisionName": "t-00003",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
            True,
            None,
        ),
        (
            {
                "observedGeneration": 3,
                "latestCreatedRevisionName": "t-00003",
                "latestReadyRevisionName": "t-00002",
                "conditions": [{"type": "Ready", "status": "Unknown"}],
            },
            False,
            None,
        ),
        (
            {
                "observedGeneration": 2,
                "latestCreatedRevisionName": "t-00002",
                "latestReadyRevisionName": "t-00002",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
            False,
            None,
        ),
        (
            {
                "observedGeneration": 3,
                "latestCreatedRevisionName": "t-00003",
                "latestReadyRevisionName": "t-00002",
                "conditions": [{"type": "Ready", "status": "False", "reason": "RevisionFailed", "message": "exit 1"}],
            },
            False,
            "RevisionFailed",
        ),
    ],
)
def test_knative_service_is_rolled_out_when_the_latest_revision_is_ready(
    status: dict[str, Any], rolled_out: bool, failed: str | None
) -> None:
    state = knative_state(service(**status), "user-container")
    assert state.image == "img:3", "Knative's single unnamed container is user-container"
    assert state.rolled_out is rolled_out
    assert state.failed_reason == failed


def test_job_state_reads_terminal_conditions_only() -> None:
    assert not job_state("j", None).exists
    running = job_state("j", {"status": {"conditions": [{"type": "FailureTarget", "status": "True"}]}})
    assert running.exists
    assert not running.failed
    failed = job_state(
        "j", {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}
    )
    assert failed.failed
    assert failed.reason == "BackoffLimitExceeded"
    assert job_state("j", {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}).succeeded


def test_migration_job_is_owned_by_the_rollout_and_gets_the_dsn_only_by_reference() -> None:
    spec = TorghutRolloutSpec.model_validate(
        {
            "target": {"name": "torghut", "container": "torghut", "image": "img@sha256:" + "a" * 64},
            "database": {"secretRef": {"name": "torghut-db-app", "key": "uri"}},
            "migrate": {"job": {"command": ["alembic", "upgrade", "heads"], "podLabels": {"x": "y"}}},
            "verify": {"checks": [{"name": "c", "http": {"url": "http://x"}, "min": 1}]},
        }
    )
    job = migration_job(spec, name="r-migrate-1", rollout="r", uid="u-1", namespace="torghut")
    assert job["metadata"]["ownerReferences"][0] == {
        "apiVersion": "torghut.proompteng.ai/v1alpha1",
        "kind": "TorghutRollout",
        "name": "r",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert job["spec"]["backoffLimit"] == 6
    assert job["spec"]["activeDeadlineSeconds"] == 900
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == spec.target.image
    assert container["env"] == [
        {"name": "DB_DSN", "valueFrom": {"secretKeyRef": {"name": "torghut-db-app", "key": "uri"}}}
    ]
    assert job["spec"]["template"]["metadata"]["labels"]["x"] == "y"
