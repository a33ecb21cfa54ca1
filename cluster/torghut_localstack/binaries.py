"""The control-plane and real-node binaries, built from Go modules into a cache outside the repository.

`cluster/build-binaries.sh` does the work (cheap once cached: it only checks versions) and
prints the cache folder last. `kind` is built there too: the e2e suite's other cluster, and the integration test
that loads kind-config.yaml with kind's own code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torghut_localstack.procs import run_streaming

BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "build-binaries.sh"
VERSIONS_FILE = BUILD_SCRIPT.parent / "versions.env"
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "kubelet",
    "kube-proxy",
    "pause",
    "coredns",
    "kind",
)


def pinned_versions() -> dict[str, str]:
    """The versions build-binaries.sh builds (`cluster/versions.env`, `NAME=value` lines)."""
    lines = VERSIONS_FILE.read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.lstrip().startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


ARGOCD_BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "build-argocd.sh"
ARGOCD_COMPONENTS = ("argocd", "kustomize")


def _ignore(_line: str) -> None:
    pass


def ensure_binaries(*, on_line: Callable[[str], None] = _ignore, timeout: float = 3600.0) -> Path:
    """Build or verify the binaries; returns the folder holding them.

    `on_line` gets the script's progress lines. A cold build takes minutes (about 5 on 2 cores).
    """
    lines = run_streaming(["bash", str(BUILD_SCRIPT)], timeout=timeout, on_line=on_line)
    bin_dir = Path(lines[-1]) if lines else Path()
    missing = [name for name in COMPONENTS if not (bin_dir / name).is_file()]
    if missing:
        raise RuntimeError(f"{BUILD_SCRIPT} did not produce {missing} in {bin_dir!s}")
    return bin_dir


def ensure_argocd_binaries(*, on_line: Callable[[str], None] = _ignore, timeout: float = 3600.0) -> Path:
    """Build or verify Argo CD and kustomize (cluster/build-argocd.sh); returns the folder holding them.

    Cold: about 10 min on 2 cores and 2.0 GB of memory for the link; cached: a version check per binary.
    """
    lines = run_streaming(["bash", str(ARGOCD_BUILD_SCRIPT)], timeout=timeout, on_line=on_line)
    bin_dir = Path(lines[-1]) if lines else Path()
    missing = [name for name in ARGOCD_COMPONENTS if not (bin_dir / name).is_file()]
    if missing:
        raise RuntimeError(f"{ARGOCD_BUILD_SCRIPT} did not produce {missing} in {bin_dir!s}")
    return bin_dir
