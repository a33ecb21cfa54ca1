"""`make demo GITOPS=1` as CI runs it: the demo's release delivered by a real Argo CD from a local Git, Succeeded,
and Argo CD reports it Synced and Healthy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

DEMO_TIMEOUT = 540


def test_the_gitops_demo_delivers_the_release_through_argo_cd(binaries: Path, argocd_binaries: Path) -> None:
    done = subprocess.run(
        # Its cluster leaves the real node out: the session's cluster may hold the host's one real node.
        [sys.executable, "-m", "torghut_localstack.demo", "--gitops", "--no-real-node"],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"demo exited {done.returncode}:\n{output[-8000:]}"
    assert "Application argocd/torghut syncs it" in output
    assert "Argo CD: Application torghut Synced, Healthy; TorghutRollout torghut-release health Healthy" in output
    assert "TorghutRollout torghut/torghut-release Succeeded" in output
    assert "Traceback" not in output
