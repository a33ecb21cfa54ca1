"""Alembic environment of the Torghut-shaped chain: online only, DSN from ``$DB_DSN`` (as Torghut reads it).

Each revision runs in its own transaction (``transaction_per_migration``), so a failing revision leaves the ones
before it applied and ``alembic_version`` naming them; 0007 leaves its transaction for the pack's concurrent index
builds (``autocommit_block``).
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool


def _url() -> str:
    dsn = os.environ.get("DB_DSN") or context.config.get_main_option("sqlalchemy.url") or ""
    if not dsn:
        raise SystemExit("set DB_DSN (postgresql://user:password@host:port/dbname) or sqlalchemy.url")
    # psycopg 3 is the driver the images carry (psycopg2 is not installed)
    for prefix in ("postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn.removeprefix(prefix)
    return dsn


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool, connect_args={"connect_timeout": 10})
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)
if context.is_offline_mode():
    raise SystemExit("offline (--sql) mode is not supported: 0007 reads the database to size its backfill")
run_migrations_online()
