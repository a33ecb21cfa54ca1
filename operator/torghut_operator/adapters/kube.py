"""The one Kubernetes gateway: every API call the operator makes, each with a timeout.

Built on the official ``kubernetes`` client (synchronous; the reconciler calls it from worker threads).
"""

from __future__ import annotations

import base64
import json
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from torghut_operator.core.api.spec import GROUP, PLURAL, VERSION, Target, TargetKind
from torghut_operator.core.errors import PermanentError, TemporaryError
from torghut_operator.core.manifests import ACTION_ANNOTATION, MANAGED_BY, ROLLOUT_LABEL, owner_reference, report_name
from torghut_operator.core.ownership import FIELD_MANAGER, container_apply

TIMEOUT = (5.0, 20.0)
CONFLICT_ATTEMPTS = 5
"""Read-modify-write attempts of one target write before the turn gives up (as client-go's RetryOnConflict): a
Deployment rolling out gets several status writes from its controller within a second, each a new version."""
"""(connect, read) seconds for every call."""
JOB_LOG_LINES = 20
JOB_LOG_BYTES = 4096
"""How much of a failed migration pod's log is kept in status."""


def as_dict(value: object) -> dict[str, Any]:
    """The client's untyped JSON answers, checked once."""
    if not isinstance(value, dict):
        raise TemporaryError(f"unexpected answer from the API server: {type(value).__name__}")
    return value


def _json(response: Any, what: str) -> dict[str, Any]:
    """The JSON body of a call made with ``_preload_content=False``: a plain dict, without the client building its
    model objects and serialising them back (most of a read's CPU)."""
    try:
        value = json.loads(response.data)
    except ValueError:
        raise TemporaryError(f"{what}: the API server's answer is not JSON") from None
    finally:
        response.release_conn()
    return as_dict(value)


def _release(response: Any) -> None:
    """Give back the connection of a call made with ``_preload_content=False`` whose answer is not needed (read to
    its end first: a connection with unread data can't serve the next request)."""
    response.drain_conn()
    response.release_conn()


def _api_error(what: str, exc: ApiException) -> Exception:
    reason = f"{what}: {exc.status} {exc.reason}"
    if exc.status in (400, 403, 422):
        return PermanentError(reason)
    return TemporaryError(reason)


class _Conflict(TemporaryError):
    """The object changed between the read and the write (a failed precondition): read again."""


class KubeGateway:
    def __init__(self, api_client: client.ApiClient) -> None:
        self._custom = client.CustomObjectsApi(api_client)
        self._apps = client.AppsV1Api(api_client)
        self._batch = client.BatchV1Api(api_client)
        self._core = client.CoreV1Api(api_client)

    # --- TorghutRollouts ---

    def get_rollout(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return as_dict(
                self._custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, _request_timeout=TIMEOUT
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _api_error(f"get TorghutRollout {namespace}/{name}", exc) from exc

    def list_rollouts(self, namespace: str) -> list[dict[str, Any]]:
        try:
            result = as_dict(
                self._custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _request_timeout=TIMEOUT)
            )
        except ApiException as exc:
            raise _api_error(f"list TorghutRollouts in {namespace}", exc) from exc
        return list(result.get("items", []))

    def patch_rollout_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str
    ) -> str | None:
        """Write the whole status, only if the object is still at ``resource_version``. Returns the new
        resourceVersion, or None on a conflict (someone else changed the object: plan again)."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        try:
            written = as_dict(
                self._custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, PLURAL, name, body, _request_timeout=TIMEOUT
                )
            )
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise _api_error(f"patch status of TorghutRollout {namespace}/{name}", exc) from exc
        return str(written["metadata"]["resourceVersion"])

    def clear_action(self, namespace: str, name: str, value: str) -> None:
        """Remove the verb annotation, but only if it still holds the verb that was handled."""
        key = ACTION_ANNOTATION.replace("/", "~1")
        patch = [
            {"op": "test", "path": f"/metadata/annotations/{key}", "value": value},
            {"op": "remove", "path": f"/metadata/annotations/{key}"},
        ]
        path = (GROUP, VERSION, namespace, PLURAL, name)
        # Gone, or a new verb was written meanwhile (the test op fails): leave it for the next turn.
        self._json_patch(path, patch, f"clear action on TorghutRollout {namespace}/{name}", ignore=(404, 409, 422))

    # --- Jobs ---

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            job = self._batch.read_namespaced_job(name, namespace, _request_timeout=TIMEOUT, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _api_error(f"get Job {namespace}/{name}", exc) from exc
        return _json(job, f"get Job {namespace}/{name}")

    def create_job(self, namespace: str, manifest: dict[str, Any]) -> None:
        try:
            created = self._batch.create_namespaced_job(
                namespace, cast(Any, manifest), _request_timeout=TIMEOUT, _preload_content=False
            )
            _release(created)
        except ApiException as exc:
            if exc.status == 409:  # created before a restart: the name is deterministic, so it is ours
                return
            raise _api_error(f"create Job {namespace}/{manifest['metadata']['name']}", exc) from exc

    def job_logs(self, namespace: str, job: str) -> str:
        """The last lines of the Job's most recent failed pod (its kept pods; the newest pod if none failed)."""
        try:
            listed = self._core.list_namespaced_pod(
                namespace, label_selector=f"job-name={job}", _request_timeout=TIMEOUT, _preload_content=False
            )
        except ApiException as exc:
            raise _api_error(f"list pods of Job {namespace}/{job}", exc) from exc
        pods = [as_dict(p) for p in _json(listed, f"list pods of Job {namespace}/{job}").get("items") or []]
        if not pods:
            return ""
        failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"] or pods
        newest = max(failed, key=lambda p: str(p["metadata"].get("creationTimestamp") or ""))
        pod = str(newest["metadata"]["name"])
        try:
            text = self._core.read_namespaced_pod_log(
                pod,
                namespace,
                container="migrate",
                tail_lines=JOB_LOG_LINES,
                limit_bytes=JOB_LOG_BYTES,
                _request_timeout=TIMEOUT,
            )
        except ApiException as exc:
            raise _api_error(f"read the log of pod {namespace}/{pod}", exc) from exc
        return str(text or "")

    # --- targets ---

    def get_target(self, namespace: str, target: Target) -> dict[str, Any] | None:
        try:
            if target.kind is TargetKind.DEPLOYMENT:
                obj = self._apps.read_namespaced_deployment(
                    target.name, namespace, _request_timeout=TIMEOUT, _preload_content=False
                )
                return _json(obj, f"get Deployment {namespace}/{target.name}")
            return as_dict(
                self._custom.get_namespaced_custom_object(
                    "serving.knative.dev", "v1", namespace, "services", target.name, _request_timeout=TIMEOUT
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _api_error(f"get {target.kind.value} {namespace}/{target.name}", exc) from exc

    def set_target_image(self, namespace: str, target: Target, image: str) -> None:
        self._write_container(namespace, target, image=image)

    def set_target_env(self, namespace: str, target: Target, env: dict[str, str | None]) -> None:
        """Set (value) or remove (None) plain environment variables of the target container."""
        self._write_container(namespace, target, env=env)

    def _write_container(
        self, namespace: str, target: Target, *, image: str | None = None, env: dict[str, str | None] | None = None
    ) -> None:
        """Write the container's image or env, re-reading and retrying when the object changed between the read and
        the write (the Deployment controller writes its status all the time); after CONFLICT_ATTEMPTS the conflict
        is a TemporaryError and the next turn tries again."""
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                self._write_container_once(namespace, target, image=image, env=env)
                return
            except _Conflict as exc:
                if attempt == CONFLICT_ATTEMPTS:
                    raise TemporaryError(str(exc)) from None

    def _write_container_once(
        self, namespace: str, target: Target, *, image: str | None = None, env: dict[str, str | None] | None = None
    ) -> None:
        """Write the container's image or env under the operator's field manager, only to the version read (a
        concurrent writer is never overwritten: a conflict re-reads).

        A Deployment gets a server-side apply (force: the operator takes these fields from whoever owned them,
        e.g. Argo CD, which can then ignore them by manager) that re-states everything the operator already
        owns there. A Knative Service's schema keeps ``containers`` atomic, so an apply of one field would
        replace the whole list: it gets a JSON patch under the same field manager instead."""
        field = "image" if image is not None else "env"
        what = f"set {field} of {target.kind.value} {namespace}/{target.name}"
        obj = self.get_target(namespace, target)
        if obj is None:
            raise TemporaryError(f"{what}: not found")
        if target.kind is TargetKind.DEPLOYMENT:
            try:
                body = container_apply(obj, target.container, image=image, env=env)
            except ValueError:
                raise PermanentError(f"{what}: no container {target.container}") from None
            self._apply_deployment(namespace, target.name, body, what)
            return
        containers = obj["spec"]["template"]["spec"]["containers"]
        # Knative allows a single unnamed container; it runs as user-container.
        index = next((i for i, c in enumerate(containers) if c.get("name") in (target.container, None)), None)
        if index is None:
            raise PermanentError(f"{what}: no container {target.container}")
        if image is not None:
            value: Any = image
        else:
            changes = env or {}
            kept = [e for e in containers[index].get("env") or [] if e.get("name") not in changes]
            value = kept + [{"name": k, "value": v} for k, v in sorted(changes.items()) if v is not None]
        ops = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": obj["metadata"]["resourceVersion"]},
            {"op": "add", "path": f"/spec/template/spec/containers/{index}/{field}", "value": value},
        ]
        self._json_patch(self._target_path(namespace, target), ops, what)

    def _apply_deployment(self, namespace: str, name: str, body: dict[str, Any], what: str) -> None:
        try:
            answer = self._apps.patch_namespaced_deployment(
                name,
                namespace,
                body,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
                _request_timeout=TIMEOUT,
                _preload_content=False,  # the answer is not read: no models built
            )
            _release(answer)
        except ApiException as exc:
            if exc.status == 409:  # the resourceVersion precondition failed
                raise _Conflict(f"{what}: changed concurrently") from None
            raise _api_error(what, exc) from exc

    @staticmethod
    def _target_path(namespace: str, target: Target) -> tuple[str, ...]:
        if target.kind is TargetKind.DEPLOYMENT:
            return ("deployments", namespace, target.name)
        return ("serving.knative.dev", "v1", namespace, "services", target.name)

    def _json_patch(
        self, path: tuple[str, ...], ops: list[dict[str, Any]], what: str, *, ignore: tuple[int, ...] = ()
    ) -> None:
        """A JSON patch of a Deployment (``("deployments", ns, name)``) or a custom object
        (``(group, version, ns, plural, name)``); a failed test op means the object changed under us."""
        json_patch = "application/json-patch+json"
        try:
            if path[0] == "deployments":
                answer = self._apps.patch_namespaced_deployment(
                    path[2],
                    path[1],
                    ops,
                    field_manager=FIELD_MANAGER,
                    _content_type=json_patch,
                    _request_timeout=TIMEOUT,
                    _preload_content=False,  # the answer is not read: no models built
                )
                _release(answer)
            else:
                group, version, namespace, plural, name = path
                self._custom.patch_namespaced_custom_object(
                    group,
                    version,
                    namespace,
                    plural,
                    name,
                    ops,
                    field_manager=FIELD_MANAGER,
                    _content_type=json_patch,
                    _request_timeout=TIMEOUT,
                )
        except ApiException as exc:
            if exc.status in ignore:
                return
            if exc.status == 422:  # the test op failed
                raise _Conflict(f"{what}: changed concurrently") from None
            raise _api_error(what, exc) from exc

    # --- evidence ---

    def publish_report(self, namespace: str, rollout: str, uid: str, report: str) -> None:
        """The Markdown evidence report as a ConfigMap owned by the rollout (deleted with it)."""
        name = report_name(rollout)
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {**MANAGED_BY, ROLLOUT_LABEL: rollout},
                "ownerReferences": [owner_reference(rollout, uid)],
            },
            "data": {"report.md": report},
        }
        try:
            _release(
                self._core.create_namespaced_config_map(
                    namespace, cast(Any, body), _request_timeout=TIMEOUT, _preload_content=False
                )
            )
        except ApiException as exc:
            if exc.status != 409:
                raise _api_error(f"create ConfigMap {namespace}/{name}", exc) from exc
            try:
                _release(
                    self._core.replace_namespaced_config_map(
                        name, namespace, cast(Any, body), _request_timeout=TIMEOUT, _preload_content=False
                    )
                )
            except ApiException as again:
                raise _api_error(f"replace ConfigMap {namespace}/{name}", again) from again

    # --- configuration ---

    def read_secret_value(self, namespace: str, name: str, key: str) -> str:
        """A Secret's value; the error names the Secret and key, never a value."""
        try:
            secret = self._core.read_namespaced_secret(
                name, namespace, _request_timeout=TIMEOUT, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 404:
                raise TemporaryError(f"Secret {namespace}/{name} not found") from None
            raise _api_error(f"read Secret {namespace}/{name}", exc) from None
        data = _json(secret, f"read Secret {namespace}/{name}").get("data") or {}
        if key not in data:
            raise TemporaryError(f"Secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(data[key]).decode()

    def read_config_map(self, namespace: str, name: str) -> dict[str, str]:
        try:
            cm = self._core.read_namespaced_config_map(
                name, namespace, _request_timeout=TIMEOUT, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 404:
                raise TemporaryError(f"ConfigMap {namespace}/{name} not found") from None
            raise _api_error(f"read ConfigMap {namespace}/{name}", exc) from None
        return dict(_json(cm, f"read ConfigMap {namespace}/{name}").get("data") or {})
