"""`cluster/install-debian-deps.sh` installs only what is missing: on a machine that has everything (CI after
`.ci/run`, or any machine after one `make deps`) it installs nothing and starts no service."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "cluster" / "install-debian-deps.sh"


def test_a_second_run_installs_nothing() -> None:
    first = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=900, check=False)
    assert first.returncode == 0, first.stderr

    again = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False)

    assert again.returncode == 0, again.stderr
    assert "installing" not in again.stdout, again.stdout
    for tool in ("containerd", "runc", "umoci", "skopeo", "prometheus", "conntrack"):
        assert subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, check=False).returncode == 0
