"""The route/grant SQL pack (``manifests/torghut/*.sql``) as files and as a ConfigMap.

The pack is what a ``TorghutRollout`` applies in ``spec.migrate.sql`` mode: ordered files, each once,
in its own transaction. ``manifests/torghut/kustomization.yaml`` generates the ConfigMap
``torghut-route-grant-sql``; :func:`configmap_manifest` builds the same object in Python for tests
that have no ``kubectl kustomize`` at hand. Importing this module starts nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

__all__ = ["CONFIGMAP_NAME", "PACK_DIR", "configmap_manifest", "pack_files"]

PACK_DIR: Final = Path(__file__).resolve().parents[2] / "manifests" / "torghut"
"""``manifests/torghut`` of the repository checkout this package is installed from (editable)."""

CONFIGMAP_NAME: Final = "torghut-route-grant-sql"


def pack_files(pack_dir: Path = PACK_DIR) -> list[Path]:
    """The pack's SQL files in application order (lexical order of their names)."""
    files = sorted(pack_dir.glob("*.sql"), key=lambda p: p.name)
    if not files:
        raise FileNotFoundError(f"no *.sql files in {pack_dir}")
    return files


def configmap_manifest(
    namespace: str | None = None, *, name: str = CONFIGMAP_NAME, pack_dir: Path = PACK_DIR
) -> dict[str, Any]:
    """The ConfigMap the kustomization generates: one key per SQL file, its text as the value."""
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {"app.kubernetes.io/name": "torghut", "app.kubernetes.io/component": "migrations"},
    }
    if namespace is not None:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {path.name: path.read_text("utf-8") for path in pack_files(pack_dir)},
    }
