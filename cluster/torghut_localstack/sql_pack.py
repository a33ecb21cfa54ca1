"""The route/grant SQL pack (``manifests/torghut/*.sql``) as files and as a ConfigMap, and a direct applier.

The pack is what a ``TorghutRollout`` applies in ``spec.migrate.sql`` mode: ordered files, each once. Header lines
(``-- torghut-rollout: ...``) say how a file runs: ``no-transaction`` (statement by statement in autocommit: the
concurrent index builds) and ``backfill table=... [key=...]`` (once per batch of the table, keyset by its key, each
batch its own transaction with ``torghut_rollout.batch_first`` / ``batch_last`` set); every other file runs in one
transaction. ``manifests/torghut/kustomization.yaml`` generates the ConfigMap ``torghut-route-grant-sql``;
:func:`configmap_manifest` builds the same object in Python for tests that have no ``kubectl kustomize`` at hand.

:func:`apply_pack` runs the files the way the operator's migrator does, without its history, advisory lock, retries
or throttling: for tests and benches that need the pack's effects on a database. Importing this module starts
nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pglast
from sqlalchemy import text
from sqlalchemy.engine import Engine

__all__ = [
    "BATCH_FIRST",
    "BATCH_LAST",
    "CONFIGMAP_NAME",
    "PACK_DIR",
    "BackfillRun",
    "FileOptions",
    "apply_pack",
    "configmap_manifest",
    "file_options",
    "pack_files",
    "run_backfill",
]

PACK_DIR: Final = Path(__file__).resolve().parents[2] / "manifests" / "torghut"
"""``manifests/torghut`` of the repository checkout this package is installed from (editable)."""

CONFIGMAP_NAME: Final = "torghut-route-grant-sql"

BATCH_FIRST: Final = "torghut_rollout.batch_first"
BATCH_LAST: Final = "torghut_rollout.batch_last"

_DIRECTIVE = re.compile(r"--\s*torghut-rollout:\s*(.*)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


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
class FileOptions:
    """The header directives of one SQL file."""

    repeatable: bool = False
    no_transaction: bool = False
    backfill_table: str | None = None
    backfill_key: str | None = None
    """None: the table's one-column primary key."""


def file_options(content: str) -> FileOptions:
    """The ``-- torghut-rollout: ...`` lines of the file's header (its leading comment and blank lines). The
    operator's own parser (``torghut_operator.migrate.sqlfiles``) is the authority; this one reads the pack."""
    repeatable = no_transaction = False
    table: str | None = None
    key: str | None = None
    for line in content.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("--"):
            break
        match = _DIRECTIVE.fullmatch(stripped)
        if match is None:
            continue
        words = match.group(1).split()
        if words == ["repeatable"]:
            repeatable = True
        elif words == ["no-transaction"]:
            no_transaction = True
        elif words and words[0] == "backfill":
            params = dict(w.split("=", 1) for w in words[1:] if "=" in w)
            table, key = params.get("table"), params.get("key")
            if table is None or not _NAME.fullmatch(table) or (key is not None and not _NAME.fullmatch(key)):
                raise ValueError(f"bad backfill directive: {stripped}")
        else:
            raise ValueError(f"unknown directive: {stripped}")
    return FileOptions(repeatable, no_transaction, table, key)


@dataclass(frozen=True)
class BackfillRun:
    rows: int
    """Keys visited (rows in the batches), not rows changed."""
    batches: int
    seconds: float


def _primary_key(engine: Engine, table: str) -> str:
    with engine.connect() as conn:
        columns = (
            conn.execute(
                text(
                    "SELECT a.attname FROM pg_index AS i JOIN pg_attribute AS a"
                    " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                    " WHERE i.indrelid = CAST(:table AS regclass) AND i.indisprimary"
                ),
                {"table": table},
            )
            .scalars()
            .all()
        )
    if len(columns) != 1:
        raise ValueError(f"{table} has no one-column primary key: name the key (key=...)")
    return str(columns[0])


def run_backfill(
    engine: Engine,
    sql: str,
    *,
    table: str,
    key: str | None = None,
    batch_size: int = 1000,
    batch_duration: float | None = None,
    max_batch: int = 50_000,
    on_batch: Callable[[int, float], None] | None = None,
) -> BackfillRun:
    """Run backfill ``sql`` over ``table`` in batches of keys (ascending keyset), each batch in its own transaction
    after ``SET LOCAL`` of :data:`BATCH_FIRST` / :data:`BATCH_LAST` to the batch's first and last key (as text).
    ``batch_duration``: adapt the batch size towards that many seconds per batch (the operator's rule of thumb),
    else keep ``batch_size``. ``on_batch(rows, seconds)`` is called after each committed batch."""
    if not _NAME.fullmatch(table) or (key is not None and not _NAME.fullmatch(key)):
        raise ValueError(f"bad table or key name: {table!r} {key!r}")
    column = key or _primary_key(engine, table)
    key_type = _key_type(engine, table, column)
    edges = (
        "SELECT (SELECT k::text FROM b ORDER BY k LIMIT 1), (SELECT k::text FROM b ORDER BY k DESC LIMIT 1),"
        " (SELECT count(*) FROM b)"
    )
    first_batch = text(f"WITH b AS MATERIALIZED (SELECT {column} AS k FROM {table} ORDER BY {column} LIMIT :n) {edges}")
    later_batch = text(
        f"WITH b AS MATERIALIZED (SELECT {column} AS k FROM {table} WHERE {column} > CAST(:after AS {key_type})"
        f" ORDER BY {column} LIMIT :n) {edges}"
    )
    started = time.monotonic()
    after: str | None = None
    rows = batches = 0
    size = batch_size
    while True:
        t0 = time.monotonic()
        with engine.begin() as conn:
            query, params = (first_batch, {"n": size}) if after is None else (later_batch, {"after": after, "n": size})
            first, last, count = conn.execute(query, params).one()
            if not count:
                break
            conn.execute(
                text("SELECT set_config(:first_name, :first, true), set_config(:last_name, :last, true)"),
                {"first_name": BATCH_FIRST, "first": first, "last_name": BATCH_LAST, "last": last},
            )
            conn.exec_driver_sql(sql)
        elapsed = time.monotonic() - t0
        after = str(last)
        rows += int(count)
        batches += 1
        if on_batch is not None:
            on_batch(int(count), elapsed)
        if batch_duration is not None:
            factor = min(2.0, max(0.5, batch_duration / max(elapsed, 1e-3)))
            size = max(10, min(max_batch, round(size * factor)))
    return BackfillRun(rows=rows, batches=batches, seconds=time.monotonic() - started)


def _key_type(engine: Engine, table: str, column: str) -> str:
    with engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute AS a"
                " WHERE a.attrelid = CAST(:table AS regclass) AND a.attname = :column AND NOT a.attisdropped"
            ),
            {"table": table, "column": column},
        ).scalar_one_or_none()
    if found is None:
        raise ValueError(f"{table} has no column {column}")
    return str(found)


def apply_pack(engine: Engine, files: Sequence[Path] | None = None, *, batch_size: int = 1000) -> None:
    """Apply the pack's files (default: all of them, in order) as the operator's migrator does, honouring the
    header directives; no history, lock, retries or throttling. Raises the database error of a failing file."""
    for path in pack_files() if files is None else files:
        content = path.read_text("utf-8")
        options = file_options(content)
        if options.backfill_table is not None:
            run_backfill(engine, content, table=options.backfill_table, key=options.backfill_key, batch_size=batch_size)
        elif options.no_transaction:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                for statement in pglast.split(content, with_parser=True):
                    conn.exec_driver_sql(statement)
        else:
            with engine.begin() as conn:
                conn.exec_driver_sql(content)
