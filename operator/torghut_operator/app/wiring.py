"""Builds the live runtime from configuration: API clients, gateways, the reconciler. Called once at startup, on
the operator's event loop."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import kopf
from prometheus_client import start_http_server

from torghut_operator.adapters.kube import BlockingReads, KubeGateway
from torghut_operator.adapters.kubeapi import KubeApi
from torghut_operator.adapters.live import LiveGates
from torghut_operator.app.health import Listed, WatchFreshness, served_versions
from torghut_operator.app.runtime import Runtime, TargetCopies
from torghut_operator.app.settings import OperatorConfig
from torghut_operator.shell.reconciler import Reconciler


def post_event(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(cast(kopf.Body, body), type=type_, reason=reason, message=message)


def build_runtime(cfg: OperatorConfig, namespace_patterns: tuple[str, ...] = ()) -> Runtime:
    """`namespace_patterns`: the operator's `--namespace` patterns (none: cluster-wide)."""
    api = KubeApi()
    kube = KubeGateway(api)

    async def list_versions() -> dict[str, str]:
        listed = [
            Listed(i["metadata"]["uid"], i["metadata"].get("namespace", ""), i["metadata"]["resourceVersion"])
            for i in await kube.list_all_rollouts()
        ]
        terminating = None
        if namespace_patterns:
            terminating = {
                n["metadata"]["name"]: (n.get("status") or {}).get("phase") == "Terminating"
                or bool(n["metadata"].get("deletionTimestamp"))
                for n in await kube.list_namespaces()
            }
        return served_versions(listed, namespace_patterns, terminating)

    if cfg.metrics_port:
        start_http_server(cfg.metrics_port)
    gates = LiveGates(BlockingReads(kube, asyncio.get_running_loop()), denied_functions=cfg.gate_sql_denylist)
    copies = TargetCopies()
    reconciler = Reconciler(kube, gates, post_event, copies=copies.get)
    return Runtime(
        reconciler=reconciler,
        route_reader=gates.route_stats,
        config=cfg,
        freshness=WatchFreshness(list_versions, grace_seconds=cfg.freshness_grace_seconds),
        api=api,
        target_copies=copies,
    )
