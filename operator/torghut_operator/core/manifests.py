"""Pure builders of Kubernetes objects and readers of their state."""

from __future__ import annotations

from typing import Any

from torghut_operator.core.api.durations import parse_duration
from torghut_operator.core.api.spec import GROUP, KIND, VERSION, TorghutRolloutSpec
from torghut_operator.core.observations import JobState, TargetState
from torghut_operator.core.ownership import field_owners

MANAGED_BY = {"app.kubernetes.io/managed-by": "torghut-rollout-operator"}
ROLLOUT_LABEL = f"{GROUP}/rollout"
ACTION_ANNOTATION = f"{GROUP}/action"


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def migration_job(spec: TorghutRolloutSpec, *, name: str, rollout: str, uid: str, namespace: str) -> dict[str, Any]:
    """The migration Job: owned by the rollout (deleted with it), DSN injected from the Secret reference,
    pods kept after failure so their logs can be read."""
    assert spec.migrate is not None
    assert spec.migrate.job is not None
    assert spec.database is not None
    job = spec.migrate.job
    labels = {**MANAGED_BY, ROLLOUT_LABEL: rollout}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": "migrate",
                "image": job.image or spec.target.image,
                "command": list(job.command),
                "args": list(job.args),
                "env": [
                    {
                        "name": job.dsn_env,
                        "valueFrom": {
                            "secretKeyRef": {"name": spec.database.secret_ref.name, "key": spec.database.secret_ref.key}
                        },
                    }
                ],
            }
        ],
    }
    if job.service_account_name:
        pod_spec["serviceAccountName"] = job.service_account_name
    if job.node_selector:
        pod_spec["nodeSelector"] = dict(job.node_selector)
    if job.tolerations:
        pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in job.tolerations]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(rollout, uid)],
        },
        "spec": {
            "backoffLimit": job.backoff_limit,
            "activeDeadlineSeconds": int(parse_duration(job.active_deadline)),
            "template": {"metadata": {"labels": {**labels, **job.pod_labels}}, "spec": pod_spec},
        },
    }


def job_state(name: str, job: dict[str, Any] | None) -> JobState:
    if job is None:
        return JobState(name=name, exists=False)
    conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []}
    for type_, field in (("Complete", "succeeded"), ("Failed", "failed")):
        cond = conditions.get(type_)
        if cond is not None and cond.get("status") == "True":
            return JobState(
                name=name,
                exists=True,
                succeeded=field == "succeeded",
                failed=field == "failed",
                reason=cond.get("reason") or type_,
                message=cond.get("message") or "",
            )
    return JobState(name=name, exists=True)


def _container(template_spec: dict[str, Any], container: str) -> dict[str, Any] | None:
    return next((c for c in template_spec.get("containers") or [] if c.get("name") == container), None)


def deployment_state(deployment: dict[str, Any] | None, container: str) -> TargetState:
    if deployment is None:
        return TargetState(exists=False)
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    found = _container(((spec.get("template") or {}).get("spec")) or {}, container)
    if found is None:
        return TargetState(exists=False, detail=f"container {container} not in the pod template")
    want = spec.get("replicas", 1)
    observed = status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
    updated = status.get("updatedReplicas", 0)
    available = status.get("availableReplicas", 0)
    total = status.get("replicas", 0)
    detail = f"{updated}/{want} updated, {available} available, {total} total"
    failed = None
    if observed:
        for cond in status.get("conditions") or []:
            if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
                failed = "ProgressDeadlineExceeded"
                detail += f" ({cond.get('message', '')})"
    rolled_out = observed and updated >= want and available >= want and total == updated
    return TargetState(
        exists=True,
        image=found.get("image"),
        rolled_out=rolled_out,
        failed_reason=failed,
        detail=detail,
        env=_plain_env(found),
        owners=field_owners(deployment, container),
    )


def _plain_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env") or [] if "valueFrom" not in e}


def knative_state(service: dict[str, Any] | None, container: str) -> TargetState:
    """A Knative Service is rolled out when its controller saw this generation, the latest created revision is
    the latest ready one, and Ready is True."""
    if service is None:
        return TargetState(exists=False)
    spec = service.get("spec") or {}
    status = service.get("status") or {}
    containers = (((spec.get("template") or {}).get("spec")) or {}).get("containers") or []
    found = _container({"containers": containers}, container)
    if found is None and len(containers) == 1 and not containers[0].get("name"):
        found = containers[0]  # Knative allows one unnamed container; it runs as user-container
    if found is None:
        return TargetState(exists=False, detail=f"container {container} not in the revision template")
    observed = status.get("observedGeneration", 0) >= service["metadata"].get("generation", 0)
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = conditions.get("Ready", {})
    created, latest_ready = status.get("latestCreatedRevisionName"), status.get("latestReadyRevisionName")
    detail = f"latest created {created}, latest ready {latest_ready}, Ready {ready.get('status', 'Unknown')}"
    failed = None
    if observed and ready.get("status") == "False":
        failed = ready.get("reason") or "RevisionFailed"
        detail += f": {ready.get('message', '')}"
    rolled_out = observed and ready.get("status") == "True" and created is not None and created == latest_ready
    return TargetState(
        exists=True,
        image=found.get("image"),
        rolled_out=rolled_out,
        failed_reason=failed,
        detail=detail,
        env=_plain_env(found),
        owners=field_owners(service, found.get("name") or container),
    )


def report_name(rollout: str) -> str:
    """The ConfigMap holding a rollout's evidence report (key report.md)."""
    return f"torghut-evidence-{rollout}"[:253]
