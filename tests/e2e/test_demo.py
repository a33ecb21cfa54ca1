"""The newcomer's path as CI runs it: `make demo` builds its own world, carries a release to Succeeded, and
prints the evidence report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

DEMO_TIMEOUT = 540


def test_the_demo_carries_a_release_to_succeeded_and_prints_its_evidence(binaries: Path) -> None:
    # The demo starts its own cluster; with E2E_CLUSTER=kind it runs on kind, as `make demo CLUSTER=kind`. Its
    # local cluster leaves the real node out: the session's cluster holds the host's one real node.
    cluster = "kind" if os.environ.get("E2E_CLUSTER") == "kind" else "local"
    done = subprocess.run(
        [sys.executable, "-m", "torghut_localstack.demo", "--cluster", cluster, "--no-real-node"],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
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
    assert "Traceback" not in output
