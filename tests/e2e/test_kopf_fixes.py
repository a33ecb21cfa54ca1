"""Kopf's own behaviour that the operator corrects (``app.kopf_fixes``), pinned against the pinned Kopf and the real
API server: Kopf's namespace observer, run in-process exactly as ``kopf run --namespace <pattern>`` runs it."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import kopf
import pytest
from kopf._cogs.clients import auth, fetching
from kopf._cogs.structs import credentials, references
from kopf._core.reactor import observation

from tests.conftest import ClusterHandle
from torghut_localstack import workloads
from torghut_localstack.kubectl import Kubectl
from torghut_operator.adapters.kubeapi import credentials as operator_credentials
from torghut_operator.app import kopf_fixes

pytestmark = pytest.mark.e2e

NAMESPACES = references.Resource(
    group="", version="v1", plural="namespaces", kind="Namespace", namespaced=False, verbs=frozenset({"list", "watch"})
)


@pytest.fixture
def prefix(kubectl: Kubectl) -> Iterator[str]:
    """A namespace prefix of this test alone (outside the e2e operator's `e2e-*`); its namespaces go afterwards."""
    stem = f"kopfns-{secrets.token_hex(3)}"
    yield stem
    for name in (f"{stem}-early", f"{stem}-late"):
        kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=false")


def _observe(cluster: ClusterHandle, kubectl: Kubectl, prefix: str, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Run Kopf's namespace observer for ``<prefix>-*``; create ``<prefix>-early`` right after its first listing
    of the namespaces (before its watch lists them again), then ``<prefix>-late`` once the watch runs, and return
    the namespaces Kopf serves once it serves the late one (so the early one had every chance)."""
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    listings = 0
    watching = asyncio.Event()
    original = fetching.fetch_objs

    async def fetch_objs(**kwargs: Any) -> AsyncIterator[Any]:
        nonlocal listings
        async for item in original(**kwargs):
            yield item
        if kwargs["resource"] == NAMESPACES:
            listings += 1
            if listings == 1:
                await asyncio.to_thread(kubectl.apply, workloads.namespace(f"{prefix}-early"))
            else:
                watching.set()

    monkeypatch.setattr(fetching, "fetch_objs", fetch_objs)

    async def scenario() -> set[str]:
        vault = credentials.Vault()
        await vault.populate({"test": operator_credentials()})
        auth.vault_var.set(vault)
        insights = references.Insights()
        await insights.backbone.fill(resources=[NAMESPACES])
        observer = asyncio.create_task(
            observation.namespace_observer(
                clusterwide=False,
                namespaces=[f"{prefix}-*"],
                insights=insights,
                settings=kopf.OperatorSettings(),
            )
        )
        try:
            await asyncio.wait_for(watching.wait(), 30)
            await asyncio.to_thread(kubectl.apply, workloads.namespace(f"{prefix}-late"))
            async with insights.revised:
                await asyncio.wait_for(insights.revised.wait_for(lambda: f"{prefix}-late" in insights.namespaces), 30)
            return {str(name) for name in insights.namespaces}
        finally:
            observer.cancel()
            await asyncio.gather(observer, return_exceptions=True)
            await vault.close()  # the API sessions Kopf cached in it

    result = asyncio.run(scenario())
    assert listings == 2, f"Kopf listed the namespaces {listings} times: the scenario no longer fits Kopf"
    return result


def test_kopf_alone_never_serves_a_namespace_created_between_its_two_listings(
    cluster: ClusterHandle, kubectl: Kubectl, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The defect, pinned against Kopf 1.45.2: if this fails, Kopf fixed it and ``kopf_fixes`` can go."""
    monkeypatch.setattr(observation, "process_discovered_namespace_event", kopf_fixes._ORIGINAL)
    served = _observe(cluster, kubectl, prefix, monkeypatch)
    assert served == {f"{prefix}-late"}


def test_the_operator_serves_a_namespace_created_while_it_starts(
    cluster: ClusterHandle, kubectl: Kubectl, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torghut_operator.app.handlers  # noqa: F401, PLC0415 (importing the handlers installs the fix)

    assert kopf_fixes.listed_namespaces_served()
    served = _observe(cluster, kubectl, prefix, monkeypatch)
    assert served == {f"{prefix}-early", f"{prefix}-late"}
