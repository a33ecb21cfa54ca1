"""The route/grant SQL pack (``manifests/torghut/*.sql``) as files and as a ConfigMap, and a direct applier.

The pack is what a ``TorghutRollout`` applies in ``spec.migrate.sql`` mode: ordered files, each once. Header lines
(``-- torghut-rollout: ...``) say how a file runs: ``no-transaction`` (statement by statement in autocommit: the
concurrent index builds) and ``backfill table=... [key=...]`` (once per batch of the table, keyset by its key, each
batch its own transaction with ``torghut_rollout.batch_first`` / ``batch_last`` set); every other file runs in one
transaction. ``manifests/torghut/kustomization.yaml`` generates the ConfigMap ``torghut-route-grant-sql``;
:func:`configmap_manifest` builds the same object in Python for tests that have no ``kubectl kustomize`` at hand.

:func:`apply_pack` runs the files through the operator's own migrator (``torghut_operator.adapters.postgres.migrator``): for
tests and benches that need the pack's effects on a database. Importing this module starts
nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sqlalchemy.engine import Engine

from torghut_operator.adapters.postgres.migrator import (
    BATCH_FIRST,
    BATCH_LAST,
    BackfillSettings,
    SqlMigrationResult,
    SqlMigrator,
)

__all__ = [
    "BATCH_FIRST",
    "BATCH_LAST",
    "CONFIGMAP_NAME",
    "PACK_DIR",
    "BackfillRun",
    "apply_pack",
    "configmap_manifest",
    "pack_files",
    "run_backfill",
]

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


@dataclass(frozen=True)
class BackfillRun:
    rows: int
    """Keys visited (rows in the batches), not rows changed."""
    batches: int
    seconds: float


def _dsn(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def _migrate(engine: Engine, files: dict[str, str], batch_size: int | None) -> SqlMigrationResult:
    """The operator's own migrator, as a catch-up pass: every repeatable file runs (again), the backfill in batches of
    exactly ``batch_size`` keys (None: the migrator's adaptive size). Raises RuntimeError naming the failure."""
    settings = (
        BackfillSettings()
        if batch_size is None
        else BackfillSettings(initial_batch=batch_size, min_batch=batch_size, max_batch=batch_size)
    )
    migrator = SqlMigrator(_dsn(engine), connect_timeout=5, lock_timeout=5, statement_timeout=None, backfill=settings)
    result = migrator.apply(files, rollout="sql_pack", catch_up=True)
    if result.error is not None:
        raise RuntimeError(result.error.message)
    return result


def run_backfill(
    engine: Engine, sql: str, *, name: str = "0004_route_provenance_backfill.sql", batch_size: int | None = None
) -> BackfillRun:
    """Run one backfill file (its header names the table) through the operator's migrator, as ``name``."""
    started = time.monotonic()
    result = _migrate(engine, {name: sql}, batch_size)
    progress = result.backfill
    if progress is None:
        raise RuntimeError("the file is not a backfill (no '-- torghut-rollout: backfill table=...' header)")
    return BackfillRun(rows=progress.rows_done, batches=progress.batches, seconds=time.monotonic() - started)


def apply_pack(engine: Engine, files: Sequence[Path] | None = None, *, batch_size: int | None = None) -> None:
    """Apply the pack's files (default: all of them, in order) with the operator's own migrator (history, advisory
    lock, lock_timeout and retries, batches, throttling), as a catch-up pass so that applying again re-runs them.
    ``batch_size``: batches of exactly that many keys. Raises RuntimeError naming a failing file."""
    _migrate(engine, {p.name: p.read_text("utf-8") for p in (pack_files() if files is None else files)}, batch_size)
