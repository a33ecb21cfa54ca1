"""`make bench-sql`: the torghut-completion preset's SQL on an executions table of a million rows.

Seeds a throwaway PostgreSQL 15 database with Torghut's schema (1,000,000 executions over 30 days, the SQL pack
applied), then prints each preset query's EXPLAIN (ANALYZE, BUFFERS) plan and its median time over 5 runs, and
whether the plan used an index. Figures, not assertions: this is a benchmark.
"""

from __future__ import annotations

import argparse
import statistics
import time

import sqlalchemy as sa

from torghut_localstack import sql_pack, torghut_db
from torghut_localstack.postgres import PostgresServer
from torghut_operator import presets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    queries = {
        "route-null-rate": presets.ROUTE_NULL_RATE_SQL,
        "route-backfill": presets.ROUTE_BACKFILL_SQL,
        "research-grants": presets.RESEARCH_GRANTS_SQL,
        "research-writes": presets.RESEARCH_WRITES_SQL,
    }
    with PostgresServer() as server:
        server.create_database("bench")
        engine = torghut_db.make_engine(server.dsn("bench"), statement_timeout_ms=600_000)
        try:
            torghut_db.create_schema(engine)
            started = time.monotonic()
            torghut_db.bulk_seed_executions(engine, args.rows)
            print(f"seeded {args.rows:,} executions in {time.monotonic() - started:.1f}s")
            with engine.begin() as conn:
                for path in sql_pack.pack_files():
                    conn.exec_driver_sql(path.read_text())
                conn.exec_driver_sql("ANALYZE executions")
            for name, query in queries.items():
                with engine.connect() as conn:
                    plan = conn.execute(sa.text(f"EXPLAIN (ANALYZE, BUFFERS) {query}")).scalars().all()
                    times = []
                    for _ in range(args.runs):
                        t0 = time.perf_counter()
                        conn.execute(sa.text(query)).all()
                        times.append((time.perf_counter() - t0) * 1000)
                uses_index = any("Index" in line for line in plan)
                print(
                    f"\n== {name}: median {statistics.median(times):.1f} ms over {args.runs} runs; index used: {uses_index}"
                )
                print(query)
                print("\n".join(plan))
        finally:
            engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
