"""The control-plane binaries, built from Go modules into a cache outside the repository.

`cluster/build-binaries.sh` does the work (cheap once cached: it only checks versions) and
prints the cache folder last. `kind` is built the same way, only when a kind cluster is asked for.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from torghut_localstack.procs import run_streaming

BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "build-binaries.sh"
ARGOCD_BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "build-argocd.sh"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok")
ARGOCD_COMPONENTS = ("argocd", "kustomize")
KIND_VERSION = "v0.29.0"  # its default node image is the kindest/node v1.33.1 pinned in kind-config.yaml


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


def ensure_kind(bin_dir: Path, *, on_line: Callable[[str], None] = _ignore, timeout: float = 1800.0) -> Path:
    """`kind` at KIND_VERSION in `bin_dir`, built with `go install` if missing."""
    kind = bin_dir / "kind"
    if kind.is_file():
        version = subprocess.run([str(kind), "version"], capture_output=True, text=True, timeout=30, check=False).stdout
        if KIND_VERSION in version:
            return kind
    on_line(f"building kind {KIND_VERSION} ...")
    env = {**os.environ, "GOBIN": str(bin_dir), "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    run_streaming(
        ["go", "install", "-trimpath", f"sigs.k8s.io/kind@{KIND_VERSION}"], timeout=timeout, on_line=on_line, env=env
    )
    return kind
