"""The newcomer's path as CI runs it: `make demo` builds its own world, carries a release to Succeeded, and
prints the evidence report."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ClusterHandle

pytestmark = pytest.mark.e2e

DEMO_TIMEOUT = 540


def test_the_demo_carries_a_release_to_succeeded_and_prints_its_evidence(cluster: ClusterHandle) -> None:
    # The demo starts its own cluster, with E2E_CLUSTER=kind on kind, as `make demo CLUSTER=kind`. Locally it
    # needs the host's one real node (its operator runs there), so the session's node stops meanwhile and starts
    # again afterwards with the images it had (the session's operator comes back with it).
    mode = "kind" if cluster.mode == "kind" else "local"
    local = cluster.local if mode == "local" else None
    if local is not None:
        local.stop_node()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "torghut_localstack.demo", "--cluster", mode],
            capture_output=True,
            text=True,
            timeout=DEMO_TIMEOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            check=False,
        )
    finally:
        if local is not None:
            local.start_node()
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"demo exited {done.returncode}:\n{output[-8000:]}"
    assert "# TorghutRollout evidence: torghut/torghut-release" in output
    assert "| Phase | **Succeeded** |" in output
    assert "applied 0001_research_grants.sql" in output
    for name in (
        "0002_route_provenance_columns.sql",
        "0003_route_provenance_indexes.sql",
        "0004_route_provenance_backfill.sql",
    ):
        assert f"applied {name}" in output
    assert "TorghutRollout torghut/torghut-release Succeeded" in output
    assert "operator pod torghut-rollout-system/torghut-rollout-operator-" in output  # in the cluster, from its image
    assert "ServiceAccount torghut-rollout-operator)" in output
    assert "simulator pod torghut/torghut-" in output  # Torghut itself a real container behind its readiness probe
    assert "readiness GET /healthz" in output
    assert "Traceback" not in output
