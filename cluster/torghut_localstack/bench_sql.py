"""`make bench-sql`: the torghut-completion preset's SQL on a large executions table, without a created_at index.

Seeds a throwaway PostgreSQL 15 database with Torghut's schema (`--state head` by default, or `checklist`) and
`--rows` executions over 30 days (default 1,000,000; `make bench-sql ROWS=10000000` for 10 M), inserted server-side
with `INSERT ... SELECT generate_series`, applies the SQL pack, then prints each query's EXPLAIN (ANALYZE, BUFFERS)
plan, its median time over `--runs` runs, whether the plan used an index and how many window rows it saw.

Besides the preset's queries it measures the ways "the last 15 minutes" could be read without an index that leads
with created_at, so the choice is measured, not guessed:

* `window: seq scan` — the preset's form: one (parallel) sequential scan, complete by construction;
* `window: newest by (account, order id)` — the newest rows through the unique index on
  (alpaca_account_label, alpaca_order_id): Alpaca order ids are uuids, so "newest by order id" is not the newest
  by time (it misses window rows: the count shows how many);
* `window: heap tail (TID range)` — the last pages of the heap: fast, but only complete while rows are never
  updated or moved (not true of executions, which are updated on every fill), so not a gate.

Figures, not assertions: this is a benchmark.
"""

from __future__ import annotations

import argparse
import statistics
import time

import sqlalchemy as sa

from torghut_localstack import sql_pack, torghut_db
from torghut_localstack.postgres import PostgresServer
from torghut_operator.core import presets

WINDOW = presets.WINDOW
WINDOW_ALTERNATIVES = {
    "window: seq scan": f"SELECT count(*) AS value FROM executions WHERE created_at >= now() - interval '{WINDOW}'",
    "window: newest by (account, order id)": f"""
SELECT count(*) AS value FROM (
  SELECT created_at FROM executions WHERE alpaca_account_label = 'paper'
  ORDER BY alpaca_account_label DESC, alpaca_order_id DESC LIMIT 5000
) newest WHERE created_at >= now() - interval '{WINDOW}'
""".strip(),
    "window: heap tail (TID range)": f"""
SELECT count(*) AS value FROM executions
WHERE ctid >= format('(%s,0)', greatest(pg_relation_size('executions') / current_setting('block_size')::int - 200, 0))::tid
  AND created_at >= now() - interval '{WINDOW}'
""".strip(),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="executions to seed (default 1,000,000)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--state", choices=torghut_db.SCHEMA_STATES, default="head")
    args = parser.parse_args(argv)
    queries = {
        "route-null-rate": presets.ROUTE_NULL_RATE_SQL,
        "route-backfill": presets.ROUTE_BACKFILL_SQL,
        "research-grants": presets.RESEARCH_GRANTS_SQL,
        "research-writes": presets.RESEARCH_WRITES_SQL,
        **WINDOW_ALTERNATIVES,
    }
    with PostgresServer() as server:
        server.create_database("bench")
        engine = torghut_db.make_engine(server.dsn("bench"), statement_timeout_ms=3_600_000)
        try:
            torghut_db.create_schema(engine, state=args.state)
            started = time.monotonic()
            torghut_db.bulk_seed_executions(engine, args.rows, statement_timeout_ms=3_600_000)
            print(f"seeded {args.rows:,} executions ({args.state} schema) in {time.monotonic() - started:.1f}s")
            started = time.monotonic()
            sql_pack.apply_pack(engine, batch_size=20_000)
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE executions")
                size = conn.execute(sa.text("SELECT pg_size_pretty(pg_total_relation_size('executions'))")).scalar()
                indexes = conn.execute(
                    sa.text("SELECT indexdef FROM pg_indexes WHERE tablename = 'executions' ORDER BY indexname")
                ).scalars()
                print(f"SQL pack + VACUUM ANALYZE in {time.monotonic() - started:.1f}s; executions: {size}; indexes:")
                print("\n".join(f"  {i}" for i in indexes))
            for name, query in queries.items():
                with engine.connect() as conn:
                    plan = conn.execute(sa.text(f"EXPLAIN (ANALYZE, BUFFERS) {query}")).scalars().all()
                    times = []
                    for _ in range(args.runs):
                        t0 = time.perf_counter()
                        value = conn.execute(sa.text(query)).first()
                        times.append((time.perf_counter() - t0) * 1000)
                uses_index = any("Index" in line for line in plan)
                shown = value[0] if value is not None else None
                print(
                    f"\n== {name}: median {statistics.median(times):.1f} ms over {args.runs} runs; index used: "
                    f"{uses_index}; value: {shown!r}"
                )
                print(query)
                print("\n".join(plan))
        finally:
            engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
