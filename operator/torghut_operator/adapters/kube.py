"""The one Kubernetes gateway: every API call the operator makes, each under a deadline.

Asynchronous, on the operator's event loop (:mod:`torghut_operator.adapters.kubeapi`); answers are plain JSON.
Code running in worker threads (the gates) reads Secrets and ConfigMaps through :class:`BlockingReads`.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from torghut_operator.adapters.kubeapi import CONNECT_TIMEOUT, READ_TIMEOUT, ApiError, KubeApi, api_error, path
from torghut_operator.core.api.spec import GROUP, PLURAL, VERSION, Target, TargetKind
from torghut_operator.core.errors import PermanentError, TemporaryError
from torghut_operator.core.manifests import ACTION_ANNOTATION, MANAGED_BY, ROLLOUT_LABEL, owner_reference, report_name
from torghut_operator.core.ownership import FIELD_MANAGER, container_apply

_Env = dict[str, str | None] | None
"""Plain environment variables to set (a value) or remove (None)."""
CONFLICT_ATTEMPTS = 5
"""Read-modify-write attempts of one target write before the turn gives up (as client-go's RetryOnConflict): a
Deployment rolling out gets several status writes from its controller within a second, each a new version."""
JOB_LOG_LINES = 20
JOB_LOG_BYTES = 4096
"""How much of a failed migration pod's log is kept in status."""
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
T = TypeVar("T")


def as_dict(value: object) -> dict[str, Any]:
    """An untyped JSON answer, checked once."""
    if not isinstance(value, dict):
        raise TemporaryError(f"unexpected answer from the API server: {type(value).__name__}")
    return value


class _Conflict(TemporaryError):
    """The object changed between the read and the write (a failed precondition): read again."""


def _rollout(namespace: str, name: str | None = None, *, status: bool = False) -> str:
    url = path(GROUP, VERSION, PLURAL, namespace, name)
    return f"{url}/status" if status else url


class KubeGateway:
    def __init__(self, api: KubeApi) -> None:
        self._api = api

    async def _get(self, url: str, what: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return as_dict(await self._api.request("GET", url, what))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise api_error(what, exc) from None

    # --- TorghutRollouts ---

    async def get_rollout(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get(_rollout(namespace, name), f"get TorghutRollout {namespace}/{name}")

    async def _list(self, url: str, what: str) -> list[dict[str, Any]]:
        try:
            result = as_dict(await self._api.request("GET", url, what))
        except ApiError as exc:
            raise api_error(what, exc) from None
        return list(result.get("items") or [])

    async def list_rollouts(self, namespace: str) -> list[dict[str, Any]]:
        return await self._list(_rollout(namespace), f"list TorghutRollouts in {namespace}")

    async def list_all_rollouts(self) -> list[dict[str, Any]]:
        """Every TorghutRollout in the cluster (the liveness probe's comparison with the watch)."""
        return await self._list(path(GROUP, VERSION, PLURAL), "list TorghutRollouts")

    async def list_namespaces(self) -> list[dict[str, Any]]:
        return await self._list(path("", "v1", "namespaces"), "list namespaces")

    async def patch_rollout_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str
    ) -> str | None:
        """Write the whole status, only if the object is still at ``resource_version``. Returns the new
        resourceVersion, or None on a conflict (someone else changed the object: plan again)."""
        what = f"patch status of TorghutRollout {namespace}/{name}"
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        try:
            written = as_dict(
                await self._api.request(
                    "PATCH", _rollout(namespace, name, status=True), what, body=body, content_type=MERGE_PATCH
                )
            )
        except ApiError as exc:
            if exc.status == 409:
                return None
            raise api_error(what, exc) from None
        return str(written["metadata"]["resourceVersion"])

    async def clear_action(self, namespace: str, name: str, value: str) -> None:
        """Remove the verb annotation, but only if it still holds the verb that was handled."""
        key = ACTION_ANNOTATION.replace("/", "~1")
        patch = [
            {"op": "test", "path": f"/metadata/annotations/{key}", "value": value},
            {"op": "remove", "path": f"/metadata/annotations/{key}"},
        ]
        what = f"clear action on TorghutRollout {namespace}/{name}"
        try:
            await self._api.request("PATCH", _rollout(namespace, name), what, body=patch, content_type=JSON_PATCH)
        except ApiError as exc:
            # Gone, or a new verb was written meanwhile (the test op fails): leave it for the next turn.
            if exc.status not in (404, 409, 422):
                raise api_error(what, exc) from None

    # --- Jobs ---

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get(path("batch", "v1", "jobs", namespace, name), f"get Job {namespace}/{name}")

    async def create_job(self, namespace: str, manifest: dict[str, Any]) -> None:
        what = f"create Job {namespace}/{manifest['metadata']['name']}"
        try:
            await self._api.request("POST", path("batch", "v1", "jobs", namespace), what, body=manifest)
        except ApiError as exc:
            if exc.status == 409:  # created before a restart: the name is deterministic, so it is ours
                return
            raise api_error(what, exc) from None

    async def job_logs(self, namespace: str, job: str) -> str:
        """The last lines of the Job's most recent failed pod (its kept pods; the newest pod if none failed)."""
        what = f"list pods of Job {namespace}/{job}"
        try:
            listed = as_dict(
                await self._api.request(
                    "GET", path("", "v1", "pods", namespace), what, params={"labelSelector": f"job-name={job}"}
                )
            )
        except ApiError as exc:
            raise api_error(what, exc) from None
        pods = [as_dict(p) for p in listed.get("items") or []]
        if not pods:
            return ""
        failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"] or pods
        newest = max(failed, key=lambda p: str(p["metadata"].get("creationTimestamp") or ""))
        pod = str(newest["metadata"]["name"])
        what = f"read the log of pod {namespace}/{pod}"
        params = {"container": "migrate", "tailLines": str(JOB_LOG_LINES), "limitBytes": str(JOB_LOG_BYTES)}
        try:
            text = await self._api.request(
                "GET", path("", "v1", "pods", namespace, pod) + "/log", what, params=params, text=True
            )
        except ApiError as exc:
            raise api_error(what, exc) from None
        return str(text or "")

    # --- targets ---

    async def get_target(self, namespace: str, target: Target) -> dict[str, Any] | None:
        return await self._get(_target(namespace, target), f"get {target.kind.value} {namespace}/{target.name}")

    async def set_target_image(
        self, namespace: str, target: Target, image: str, current: Mapping[str, Any] | None = None
    ) -> None:
        """``current``: the target as the caller last read it, the first attempt's base (its resourceVersion is the
        write's precondition, so a stale one costs a conflict and a fresh read, never a lost change)."""
        await self._write_container(namespace, target, image=image, current=current)

    async def set_target_env(
        self, namespace: str, target: Target, env: dict[str, str | None], current: Mapping[str, Any] | None = None
    ) -> None:
        """Set (value) or remove (None) plain environment variables of the target container."""
        await self._write_container(namespace, target, env=env, current=current)

    async def _write_container(
        self,
        namespace: str,
        target: Target,
        *,
        image: str | None = None,
        env: dict[str, str | None] | None = None,
        current: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the container's image or env, re-reading and retrying when the object changed between the read and
        the write (the Deployment controller writes its status all the time); after CONFLICT_ATTEMPTS the conflict
        is a TemporaryError and the next turn tries again. The first attempt starts from ``current`` if given."""
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            obj = dict(current) if attempt == 1 and current is not None else await self.get_target(namespace, target)
            try:
                await self._write_container_once(namespace, target, obj, image=image, env=env)
                return
            except _Conflict as exc:
                if attempt == CONFLICT_ATTEMPTS:
                    raise TemporaryError(str(exc)) from None

    async def _write_container_once(
        self, namespace: str, target: Target, obj: dict[str, Any] | None, *, image: str | None, env: _Env
    ) -> None:
        """Write the container's image or env on ``obj``, the target as read, under the operator's field manager,
        only to the version read (a concurrent writer is never overwritten: a conflict re-reads).

        A Deployment gets a server-side apply (force: the operator takes these fields from whoever owned them,
        e.g. Argo CD, which can then ignore them by manager) that re-states everything the operator already
        owns there. A Knative Service's schema keeps ``containers`` atomic, so an apply of one field would
        replace the whole list: it gets a JSON patch under the same field manager instead."""
        field = "image" if image is not None else "env"
        what = f"set {field} of {target.kind.value} {namespace}/{target.name}"
        if obj is None:
            raise TemporaryError(f"{what}: not found")
        if target.kind is TargetKind.DEPLOYMENT:
            try:
                body = container_apply(obj, target.container, image=image, env=env)
            except ValueError:
                raise PermanentError(f"{what}: no container {target.container}") from None
            await self._apply_deployment(namespace, target.name, body, what)
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
        params = {"fieldManager": FIELD_MANAGER}
        await self._write(_target(namespace, target), ops, JSON_PATCH, params, what, conflict=422)

    async def _apply_deployment(self, namespace: str, name: str, body: dict[str, Any], what: str) -> None:
        """A server-side apply under the operator's field manager; the body's resourceVersion is the precondition."""
        params = {"fieldManager": FIELD_MANAGER, "force": "true"}
        url = path("apps", "v1", "deployments", namespace, name)
        await self._write(url, body, APPLY_PATCH, params, what, conflict=409)

    async def _write(
        self, url: str, body: Any, content_type: str, params: dict[str, str], what: str, *, conflict: int
    ) -> None:
        """A patch whose precondition failing (``conflict``: 409 for a resourceVersion in an apply, 422 for a
        failed JSON-patch test op) means the object changed under us."""
        try:
            await self._api.request("PATCH", url, what, body=body, content_type=content_type, params=params)
        except ApiError as exc:
            if exc.status == conflict:
                raise _Conflict(f"{what}: changed concurrently") from None
            raise api_error(what, exc) from None

    # --- evidence ---

    async def publish_report(self, namespace: str, rollout: str, uid: str, report: str) -> None:
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
        what = f"create ConfigMap {namespace}/{name}"
        try:
            await self._api.request("POST", path("", "v1", "configmaps", namespace), what, body=body)
            return
        except ApiError as exc:
            if exc.status != 409:
                raise api_error(what, exc) from None
        what = f"replace ConfigMap {namespace}/{name}"
        try:
            await self._api.request("PUT", path("", "v1", "configmaps", namespace, name), what, body=body)
        except ApiError as exc:
            raise api_error(what, exc) from None

    # --- configuration ---

    async def read_secret_value(self, namespace: str, name: str, key: str) -> str:
        """A Secret's value; the error names the Secret and key, never a value."""
        secret = await self._get(path("", "v1", "secrets", namespace, name), f"read Secret {namespace}/{name}")
        if secret is None:
            raise TemporaryError(f"Secret {namespace}/{name} not found")
        data = secret.get("data") or {}
        if key not in data:
            raise TemporaryError(f"Secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(data[key]).decode()

    async def read_config_map(self, namespace: str, name: str) -> dict[str, str]:
        cm = await self._get(path("", "v1", "configmaps", namespace, name), f"read ConfigMap {namespace}/{name}")
        if cm is None:
            raise TemporaryError(f"ConfigMap {namespace}/{name} not found")
        return dict(cm.get("data") or {})


def _target(namespace: str, target: Target) -> str:
    if target.kind is TargetKind.DEPLOYMENT:
        return path("apps", "v1", "deployments", namespace, target.name)
    return path("serving.knative.dev", "v1", "services", namespace, target.name)


class BlockingReads:
    """The gateway's Secret and ConfigMap reads for code in worker threads (the gates, which run blocking
    database and HTTP calls): each read runs on the operator's event loop, the thread waits for it."""

    def __init__(self, kube: KubeGateway, loop: asyncio.AbstractEventLoop) -> None:
        self._kube = kube
        self._loop = loop

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(call, self._loop)
        try:
            return future.result(timeout=CONNECT_TIMEOUT + READ_TIMEOUT + 5)
        except TimeoutError:
            future.cancel()
            raise TemporaryError("reading from the API server took too long") from None

    def read_secret_value(self, namespace: str, name: str, key: str) -> str:
        return self._run(self._kube.read_secret_value(namespace, name, key))

    def read_config_map(self, namespace: str, name: str) -> dict[str, str]:
        return self._run(self._kube.read_config_map(namespace, name))
