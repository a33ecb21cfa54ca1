"""Knative Serving's status, driven the way its controller does, for clusters where Knative can't run.

For every Service whose generation it has not observed, `KnativeStatusDriver` creates the next revision name
(`<service>-000NN`, as Knative does), then reports it created and ready with Ready=True at that generation. With
`fail_next_revision()`, the next revision fails instead (Ready=False, RevisionFailed), as when a new image can't
start. It talks to the real API server; only Knative's controller is missing.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

CRD_PATH = Path(__file__).with_name("knative-service-crd.yaml")
GROUP, VERSION, PLURAL = "serving.knative.dev", "v1", "services"
TIMEOUT = (5.0, 10.0)


class KnativeStatusDriver:
    def __init__(self, api: client.ApiClient, namespace: str, *, poll_seconds: float = 0.2) -> None:
        self._custom = client.CustomObjectsApi(api)
        self._namespace = namespace
        self._poll = poll_seconds
        self._stop = threading.Event()
        self._fail_next = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"knative-status-{namespace}", daemon=True)

    def __enter__(self) -> KnativeStatusDriver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def fail_next_revision(self) -> None:
        self._fail_next.set()

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                listed = self._custom.list_namespaced_custom_object(
                    GROUP, VERSION, self._namespace, PLURAL, _request_timeout=TIMEOUT
                )
            except (ApiException, OSError):
                continue
            items = listed.get("items", []) if isinstance(listed, dict) else []
            for service in items:
                self._reconcile(service)

    def _reconcile(self, service: dict[str, Any]) -> None:
        meta = service["metadata"]
        status = service.get("status") or {}
        generation = meta.get("generation", 1)
        if status.get("observedGeneration") == generation:
            return
        revision = f"{meta['name']}-{generation:05d}"
        failed = self._fail_next.is_set()
        ready = {"type": "Ready", "status": "True", "reason": "", "message": ""}
        latest_ready: str | None = revision
        if failed:
            self._fail_next.clear()
            ready = {
                "type": "Ready",
                "status": "False",
                "reason": "RevisionFailed",
                "message": f"Revision {revision!r} failed with message: container exited.",
            }
            latest_ready = status.get("latestReadyRevisionName")
        body = {
            "status": {
                "observedGeneration": generation,
                "latestCreatedRevisionName": revision,
                "latestReadyRevisionName": latest_ready,
                "url": f"http://{meta['name']}.{self._namespace}.svc.cluster.local",
                "conditions": [
                    {**ready, "type": "ConfigurationsReady"},
                    ready,
                    {"type": "RoutesReady", "status": "True"},
                ],
            }
        }
        try:
            self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, self._namespace, PLURAL, meta["name"], body, _request_timeout=TIMEOUT
            )
        except ApiException:
            return
