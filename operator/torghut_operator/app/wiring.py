"""Builds the live runtime from configuration: API clients, gateways, the reconciler. Called once at startup."""

from __future__ import annotations

import json
from typing import Any, cast

import kopf
from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException
from prometheus_client import start_http_server

from torghut_operator.adapters.kube import TIMEOUT, KubeGateway, as_dict
from torghut_operator.adapters.live import LiveGates
from torghut_operator.app.health import Listed, WatchFreshness, served_versions
from torghut_operator.app.runtime import Runtime
from torghut_operator.app.settings import OperatorConfig
from torghut_operator.core.api.spec import GROUP, PLURAL, VERSION
from torghut_operator.shell.reconciler import Reconciler


def api_client() -> client.ApiClient:
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


def post_event(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(cast(kopf.Body, body), type=type_, reason=reason, message=message)


def build_runtime(cfg: OperatorConfig, namespace_patterns: tuple[str, ...] = ()) -> Runtime:
    """`namespace_patterns`: the operator's `--namespace` patterns (none: cluster-wide)."""
    api = api_client()
    kube = KubeGateway(api)
    custom = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)

    def list_versions() -> dict[str, str]:
        items = as_dict(custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, _request_timeout=TIMEOUT))["items"]
        listed = [
            Listed(i["metadata"]["uid"], i["metadata"].get("namespace", ""), i["metadata"]["resourceVersion"])
            for i in items
        ]
        terminating = None
        if namespace_patterns:
            raw: Any = core.list_namespace(_request_timeout=TIMEOUT, _preload_content=False)  # JSON, no models
            found = as_dict(json.loads(raw.data))["items"]
            terminating = {
                n["metadata"]["name"]: (n.get("status") or {}).get("phase") == "Terminating"
                or bool(n["metadata"].get("deletionTimestamp"))
                for n in found
            }
        return served_versions(listed, namespace_patterns, terminating)

    if cfg.metrics_port:
        start_http_server(cfg.metrics_port)
    gates = LiveGates(kube, denied_functions=cfg.gate_sql_denylist)
    reconciler = Reconciler(kube, gates, post_event)
    return Runtime(
        reconciler=reconciler,
        route_reader=gates.route_stats,
        config=cfg,
        freshness=WatchFreshness(list_versions, grace_seconds=cfg.freshness_grace_seconds),
    )
