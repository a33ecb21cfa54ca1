"""`make bench-backfill`: what the route pack's batched backfill costs the trading service, next to the old single
UPDATE.

    python -m torghut_localstack.bench_backfill --rows 1000000

Seeds a throwaway PostgreSQL 15 (or ``--admin-dsn``'s server) with ``--rows`` executions shaped like Torghut's
(``torghut_db.bulk_seed_executions``: ``INSERT ... SELECT generate_series`` with SQL-built ``raw_order`` JSON;
``--null-fraction`` of them, 90 % by default, have NULL route columns and the service's raw markers, so they need the
backfill), applies pack files 0001-0003, then copies the database (``CREATE DATABASE ... TEMPLATE``). On each copy a
writer loop shaped like the trading service runs in threads, each on its own connection with ``lock_timeout = 1s``:
inserts of new executions, updates of random existing executions' status/updated_at, reads by id and a read of the
writer's own most recent orders (through the unique (account, order id) index). It measures every op's client-side
latency

1. at idle, then during the batched backfill: ``0004_route_provenance_backfill.sql`` through
   ``SqlMigrator.apply(pack, rollout="bench")`` with its default settings (batches sized towards 100 ms, throttling
   on), ``budget`` None: to the end;
2. at idle, then during the single statement: the same file over the whole key range (its two batch settings
   replaced by the smallest and largest uuid), in one transaction, as the old ``0002_route_provenance_backfill.sql``
   ran it.

Both run in a process of their own, as the operator does in production.

A monitor samples ``pg_stat_activity`` every 50 ms for writer sessions waiting on a lock (the longest wait seen,
server side; the migrator's own sessions are not the trading service's). At the end both copies' backfilled rows are
compared (they must be identical). Prints the server's settings that shape the cost, the figures and the three
goals (writer p99 during / idle < 2, longest wait < 250 ms, batched / single < 1.5); asserts no timing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import math
import multiprocessing
import random
import statistics
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from torghut_localstack import sql_pack, torghut_db
from torghut_localstack.postgres import PostgresServer
from torghut_operator.adapters.postgres.migrator import BackfillSettings, SqlMigrator

BACKFILL_FILE = "0004_route_provenance_backfill.sql"
WRITER_LOCK_TIMEOUT = "1s"
WRITER_APPLICATION = "bench trading writer"
"""application_name of the writer loop's sessions: the lock-wait monitor watches these only."""
MIN_UUID = "00000000-0000-0000-0000-000000000000"
MAX_UUID = "ffffffff-ffff-ffff-ffff-ffffffffffff"
GOAL_P99_RATIO = 2.0
GOAL_MAX_WAIT_MS = 250.0
GOAL_TIME_RATIO = 1.5

SHOWN_SETTINGS = ("shared_buffers", "max_wal_size", "autovacuum", "fsync", "synchronous_commit", "full_page_writes")

OP_RATES = {"insert": 20.0, "update": 50.0, "read": 50.0, "recent": 5.0}
"""Ops per second of each writer thread (the trading service's shape: fills arrive, orders update, reads by id)."""

_INSERT = """
INSERT INTO executions (
    alpaca_account_label, alpaca_order_id, client_order_id, symbol, side, order_type, time_in_force,
    submitted_qty, filled_qty, avg_fill_price, status, raw_order, created_at, updated_at, last_update_at
) VALUES (
    'paper', %(order_id)s::text, %(client)s::text, %(symbol)s::text, 'buy', 'market', 'day', 10, 0, NULL, 'new',
    jsonb_build_object('id', %(order_id)s::text, 'client_order_id', %(client)s::text, 'symbol', %(symbol)s::text,
        'status', 'new', '_execution_route_expected', 'lean', '_execution_route_actual', 'alpaca_fallback'),
    now(), now(), now()
)"""
_UPDATE = (
    "UPDATE executions SET status = %(status)s, filled_qty = submitted_qty, updated_at = now(), last_update_at = now()"
    " WHERE id = %(id)s"
)
_READ = "SELECT * FROM executions WHERE id = %(id)s"
_RECENT = "SELECT * FROM executions WHERE alpaca_account_label = 'paper' AND alpaca_order_id = ANY(%(ids)s)"
_LOCK_WAITS = f"""
SELECT count(*), COALESCE(max(EXTRACT(EPOCH FROM clock_timestamp() - query_start)), 0)
FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'
    AND application_name = '{WRITER_APPLICATION}'
"""


# ---- measurements ---------------------------------------------------------------------------------------------


@dataclass
class OpStats:
    latencies_ms: list[float] = field(default_factory=list)
    timeouts: int = 0
    errors: int = 0
    last_error: str | None = None

    def add(self, other: OpStats) -> None:
        self.latencies_ms += other.latencies_ms
        self.timeouts += other.timeouts
        self.errors += other.errors
        self.last_error = other.last_error or self.last_error


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Phase:
    name: str
    ops: dict[str, OpStats]
    seconds: float
    lock_waits_max_s: float = 0.0
    lock_waiters_max: int = 0

    @property
    def all(self) -> OpStats:
        total = OpStats()
        for stats in self.ops.values():
            total.add(stats)
        return total


class Writers:
    """The trading service's writer loop on ``dsn``: one thread per op kind plus a lock monitor, until stopped."""

    def __init__(self, dsn: str, ids: list[str], *, seed: int = 7) -> None:
        self._dsn = dsn
        self._ids = ids
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stats = {kind: OpStats() for kind in OP_RATES}
        self._recent: deque[str] = deque(maxlen=20)
        self._rng = random.Random(seed)  # noqa: S311 - bench load, not security
        self._lock = threading.Lock()
        self.lock_waits_max_s = 0.0
        self.lock_waiters_max = 0
        self._started = 0.0
        self._failure: BaseException | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self._dsn, connect_timeout=5, application_name=WRITER_APPLICATION)
        conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(WRITER_LOCK_TIMEOUT)))
        conn.execute("SET statement_timeout = '30s'")
        conn.commit()
        return conn

    def _op(self, kind: str) -> Callable[[psycopg.Connection[Any]], None]:
        rng = random.Random(self._rng.random())  # noqa: S311 - bench load, not security

        def insert(conn: psycopg.Connection[Any]) -> None:
            order_id = f"live-{uuid.uuid4()}"
            symbol = rng.choice(torghut_db.SYMBOLS)
            conn.execute(_INSERT, {"order_id": order_id, "client": f"torghut-{order_id}", "symbol": symbol})
            conn.commit()
            with self._lock:
                self._recent.append(order_id)

        def update(conn: psycopg.Connection[Any]) -> None:
            status = rng.choice(["partially_filled", "filled", "canceled"])
            conn.execute(_UPDATE, {"status": status, "id": rng.choice(self._ids)})
            conn.commit()

        def read(conn: psycopg.Connection[Any]) -> None:
            conn.execute(_READ, {"id": rng.choice(self._ids)}).fetchall()
            conn.commit()

        def recent(conn: psycopg.Connection[Any]) -> None:
            with self._lock:
                ids = list(self._recent)
            conn.execute(_RECENT, {"ids": ids}).fetchall()
            conn.commit()

        return {"insert": insert, "update": update, "read": read, "recent": recent}[kind]

    def _loop(self, kind: str) -> None:
        try:
            op, interval, stats = self._op(kind), 1.0 / OP_RATES[kind], self._stats[kind]
            with self._connect() as conn:
                next_at = time.monotonic()
                while not self._stop.wait(max(0.0, next_at - time.monotonic())):
                    t0 = time.perf_counter()
                    try:
                        op(conn)
                    except psycopg.errors.LockNotAvailable:
                        conn.rollback()
                        stats.timeouts += 1
                    except psycopg.Error as error:
                        conn.rollback()
                        stats.errors += 1
                        stats.last_error = str(error).splitlines()[0]
                    stats.latencies_ms.append((time.perf_counter() - t0) * 1000)
                    next_at = max(next_at + interval, time.monotonic())  # late: no catch-up burst
        except Exception as error:  # noqa: BLE001 - reported by stop()
            self._failure = error

    def _monitor(self) -> None:
        try:
            with psycopg.connect(self._dsn, connect_timeout=5, autocommit=True) as conn:
                while not self._stop.wait(0.05):
                    row = conn.execute(_LOCK_WAITS).fetchone()
                    if row is not None:
                        self.lock_waiters_max = max(self.lock_waiters_max, int(row[0]))
                        self.lock_waits_max_s = max(self.lock_waits_max_s, float(row[1]))
        except Exception as error:  # noqa: BLE001 - reported by stop()
            self._failure = error

    def start(self) -> Writers:
        self._started = time.monotonic()
        targets: list[tuple[Callable[..., None], tuple[str, ...]]] = [(self._loop, (k,)) for k in OP_RATES]
        targets.append((self._monitor, ()))
        for target, args in targets:
            thread = threading.Thread(target=target, args=args, daemon=True, name=f"writer {args}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, name: str) -> Phase:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        if self._failure is not None:
            raise RuntimeError(f"writer loop failed: {self._failure!r}") from self._failure
        return Phase(name, self._stats, time.monotonic() - self._started, self.lock_waits_max_s, self.lock_waiters_max)


@contextlib.contextmanager
def writing(dsn: str, ids: list[str], name: str, into: list[Phase]) -> Iterator[None]:
    writers = Writers(dsn, ids).start()
    try:
        yield
    finally:
        into.append(writers.stop(name))


# ---- the database ---------------------------------------------------------------------------------------------


def seed(admin_dsn: str, database: str, rows: int, null_fraction: float, workers: int = 2) -> tuple[str, float]:
    """Create ``database`` with Torghut's schema, ``rows`` executions and pack files 0001-0003; return its libpq DSN
    and the seconds the rows took to load."""
    url = torghut_db.create_database(admin_dsn, database)
    engine = torghut_db.make_engine(url, statement_timeout_ms=3_600_000, pool_size=workers)
    try:
        torghut_db.create_schema(engine, state="checklist")
        started = time.monotonic()
        shares = [rows // workers + (1 if i < rows % workers else 0) for i in range(workers)]
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # one session each: both cores insert
            loads = [
                pool.submit(
                    torghut_db.bulk_seed_executions,
                    engine,
                    share,
                    null_fraction=null_fraction,
                    statement_timeout_ms=3_600_000,
                    analyze=False,
                )
                for share in shares
            ]
            if sum(f.result() for f in loads) != rows:
                raise RuntimeError("the load inserted a different number of rows")
        loaded = time.monotonic() - started
        files = [p for p in sql_pack.pack_files() if p.name < BACKFILL_FILE]
        sql_pack.apply_pack(engine, files)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE) executions")
    finally:
        engine.dispose()
    return url.replace("postgresql+psycopg://", "postgresql://", 1), loaded


def copy_database(admin_dsn: str, source: str, target: str) -> float:
    started = time.monotonic()
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(target), sql.Identifier(source)))
    return time.monotonic() - started


def dsn_of(dsn: str, database: str) -> str:
    head, _, tail = dsn.rpartition("/")
    return f"{head}/{database}{tail[tail.index('?') :] if '?' in tail else ''}"


def sample_ids(dsn: str, n: int = 20_000) -> list[str]:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT id::text FROM executions WHERE left(alpaca_order_id, 5) = 'bulk-' ORDER BY random() LIMIT %s",
            (n,),
        ).fetchall()
    return [str(r[0]) for r in rows]


def to_backfill(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM executions WHERE execution_expected_adapter IS NULL"
            " OR execution_actual_adapter IS NULL"
        ).fetchone()
    return int(row[0]) if row else 0


def fingerprint(dsn: str) -> tuple[int, str]:
    """Seeded rows and a sum of 64-bit hashes of their route columns, row by row (writers' rows and status updates
    left out; a sum, not one string: 10 M rows would not fit in a text value)."""
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        conn.execute("SET statement_timeout = 0")
        row = conn.execute(
            "SELECT count(*), sum(hashtextextended(CAST(ROW(id, execution_expected_adapter,"
            " execution_actual_adapter, execution_fallback_count, execution_fallback_reason) AS text), 0))::text"
            " FROM executions WHERE left(alpaca_order_id, 5) = 'bulk-'"
        ).fetchone()
    if row is None:
        raise RuntimeError("no fingerprint row")
    return int(row[0]), str(row[1])


# ---- the two ways -----------------------------------------------------------------------------------------------


def in_own_process(run: Callable[[str], tuple[float, str]], dsn: str) -> tuple[float, str]:
    """``run(dsn)`` in a fresh interpreter, as in production, where the operator's migrator is not a thread of the
    trading service: in this process its Python work would hold the writers' GIL (up to the 5 ms switch interval a
    time) and show up in their latencies as if it were the database's doing."""
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(run, dsn).result()


def run_batched(dsn: str) -> tuple[float, str]:
    """The pack through the operator's migrator: 0001-0003 first, untimed, then the backfill alone, timed."""
    pack = {p.name: p.read_text("utf-8") for p in sql_pack.pack_files()}
    migrator = SqlMigrator(dsn, connect_timeout=5, lock_timeout=2, statement_timeout=None, backfill=BackfillSettings())
    setup = migrator.apply({n: t for n, t in pack.items() if n < BACKFILL_FILE}, rollout="bench")
    if setup.error is not None:
        raise RuntimeError(f"the migrator failed: {setup.error.message}")
    started = time.monotonic()
    result = migrator.apply(pack, rollout="bench")  # budget None: to the end
    if result.error is not None or result.backfill is None:
        raise RuntimeError(f"the migrator failed: {result.error.message if result.error else 'no backfill ran'}")
    progress = result.backfill
    detail = (
        f"SqlMigrator.apply: {progress.batches:,} batches of ~100 ms, last size {progress.batch_size:,}, "
        f"{progress.rows_per_second:,.0f} rows/s"
    )
    return time.monotonic() - started, detail


def single_statement() -> str:
    text = (sql_pack.PACK_DIR / BACKFILL_FILE).read_text("utf-8")
    for name, value in ((sql_pack.BATCH_FIRST, MIN_UUID), (sql_pack.BATCH_LAST, MAX_UUID)):
        text = text.replace(f"CAST(current_setting('{name}') AS uuid)", f"CAST('{value}' AS uuid)")
    if "current_setting('torghut_rollout" in text:
        raise RuntimeError("the backfill file reads a batch setting this bench does not replace")
    return text


def run_single(dsn: str) -> tuple[float, str]:
    started = time.monotonic()
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        conn.execute("SET statement_timeout = 0")
        updated = conn.execute(single_statement().encode()).rowcount
        conn.commit()
    return time.monotonic() - started, f"one UPDATE of {updated:,} rows in one transaction"


# ---- the report -----------------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.1f}"  # NaN: no op


def report(
    rows: int, needing: int, phases: dict[str, Phase], times: dict[str, float], details: dict[str, str]
) -> list[str]:
    out = [f"rows {rows:,} ({needing:,} need the backfill)"]
    header = f"{'':34}" + "".join(f"{n:>18}" for n in phases)
    out.append(header)

    def line(label: str, cell: Callable[[str, Phase], str]) -> None:
        out.append(f"{label:34}" + "".join(f"{cell(n, p):>18}" for n, p in phases.items()))

    line("backfill total (s)", lambda n, p: f"{times[n]:,.1f}" if n in times else "")
    line("rows/s", lambda n, p: f"{needing / times[n]:,.0f}" if n in times and times[n] > 0 else "")
    line("writer ops", lambda n, p: f"{len(p.all.latencies_ms):,}")
    line("writer p50 (ms)", lambda n, p: _ms(statistics.median(p.all.latencies_ms) if p.all.latencies_ms else 0))
    line("writer p99 (ms)", lambda n, p: _ms(percentile(p.all.latencies_ms, 0.99)))
    line("writer max (ms)", lambda n, p: _ms(max(p.all.latencies_ms, default=float("nan"))))
    line(f"lock timeouts ({WRITER_LOCK_TIMEOUT})", lambda n, p: str(p.all.timeouts))
    line("other errors", lambda n, p: str(p.all.errors))
    line("longest lock wait seen (ms)", lambda n, p: _ms(p.lock_waits_max_s * 1000))

    def p99_max(stats: OpStats) -> str:
        worst = max(stats.latencies_ms, default=float("nan"))
        return f"{_ms(percentile(stats.latencies_ms, 0.99))} / {_ms(worst)}"

    def kind_cell(kind: str) -> Callable[[str, Phase], str]:
        return lambda _n, p: p99_max(p.ops[kind])

    for kind in OP_RATES:
        line(f"  {kind} p99 / max (ms)", kind_cell(kind))

    def p99(name: str) -> float:
        return percentile(phases[name].all.latencies_ms, 0.99)

    def longest(name: str) -> float:
        phase = phases[name]
        worst = max(phase.all.latencies_ms, default=0.0)
        return max(worst, phase.lock_waits_max_s * 1000)

    ratio = p99("batched") / p99("idle A") if p99("idle A") > 0 else float("nan")
    single_ratio = p99("single UPDATE") / p99("idle B") if p99("idle B") > 0 else float("nan")
    time_ratio = times["batched"] / times["single UPDATE"] if times["single UPDATE"] > 0 else float("nan")
    out += [
        "",
        f"writer p99 during / idle: batched {ratio:.2f}, single UPDATE {single_ratio:.2f}"
        f" (goal < {GOAL_P99_RATIO:g}: {'met' if ratio < GOAL_P99_RATIO else 'NOT met'})",
        f"longest writer wait (slowest op or lock wait seen): batched {longest('batched'):,.0f} ms, single UPDATE"
        f" {longest('single UPDATE'):,.0f} ms (goal < {GOAL_MAX_WAIT_MS:g} ms:"
        f" {'met' if longest('batched') < GOAL_MAX_WAIT_MS else 'NOT met'})",
        f"batched total / single UPDATE: {time_ratio:.2f} (goal < {GOAL_TIME_RATIO:g}:"
        f" {'met' if time_ratio < GOAL_TIME_RATIO else 'NOT met'})",
    ]
    out += [f"{name}: {detail}" for name, detail in details.items()]
    for name, phase in phases.items():
        if phase.all.last_error:
            out.append(f"{name}: last writer error: {phase.all.last_error}")
    return out


# ---- main -------------------------------------------------------------------------------------------------------


def bench(admin_dsn: str, args: argparse.Namespace) -> list[str]:
    started = time.monotonic()
    dsn_a, loaded = seed(admin_dsn, "bench_backfill_a", args.rows, args.null_fraction, args.load_sessions)
    print(f"loaded {args.rows:,} executions in {loaded:.1f}s (with pack 0001-0003 and VACUUM: "
          f"{time.monotonic() - started:.1f}s)", flush=True)  # fmt: skip
    copied = copy_database(admin_dsn, "bench_backfill_a", "bench_backfill_b")
    dsn_b = dsn_of(dsn_a, "bench_backfill_b")
    print(f"copied the database in {copied:.1f}s", flush=True)
    needing = to_backfill(dsn_a)
    phases: list[Phase] = []
    times: dict[str, float] = {}
    details: dict[str, str] = {}
    ids = sample_ids(dsn_a)
    if not ids:
        raise RuntimeError("no executions to update")

    with writing(dsn_a, ids, "idle A", phases):
        time.sleep(args.idle_seconds)  # the measurement window, not a synchronisation
    print("idle A measured; running the batched backfill", flush=True)
    with writing(dsn_a, ids, "batched", phases):
        times["batched"], details["batched"] = in_own_process(run_batched, dsn_a)
    with writing(dsn_b, ids, "idle B", phases):
        time.sleep(args.idle_seconds)
    print("idle B measured; running the single UPDATE", flush=True)
    with writing(dsn_b, ids, "single UPDATE", phases):
        times["single UPDATE"], details["single UPDATE"] = in_own_process(run_single, dsn_b)

    same = fingerprint(dsn_a) == fingerprint(dsn_b)
    left = to_backfill(dsn_a), to_backfill(dsn_b)
    lines = report(args.rows, needing, {p.name: p for p in phases}, times, details)
    lines.append(
        f"same rows after both: {'yes' if same else 'NO'}; rows still NULL (batched, single): {left[0]}, {left[1]}"
        " (writers' own inserts after the pass included)"
    )
    return lines


def _settings(admin_dsn: str) -> str:
    """The server settings that shape both ways' cost, as the server reports them."""
    with psycopg.connect(admin_dsn, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
            (list(SHOWN_SETTINGS),),
        ).fetchall()
    return ", ".join(f"{name}={value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="executions to seed (default 1,000,000)")
    parser.add_argument(
        "--null-fraction", type=float, default=0.9, help="share of rows with NULL route columns (default 0.9)"
    )
    parser.add_argument("--load-sessions", type=int, default=2, help="sessions inserting the rows (default 2)")
    parser.add_argument("--idle-seconds", type=float, default=15.0, help="idle measurement window (default 15)")
    parser.add_argument("--admin-dsn", help="a PostgreSQL superuser DSN to use instead of starting a server")
    parser.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the server the bench starts (repeatable), e.g. shared_buffers=4GB",
    )
    args = parser.parse_args(argv)
    if args.rows < 1 or args.load_sessions < 1 or not 0 <= args.null_fraction <= 1:
        parser.error("--rows and --load-sessions must be positive, --null-fraction within 0..1")
    settings = dict(item.partition("=")[::2] for item in args.pg_setting)
    if any(not name or not value for name, value in settings.items()):
        parser.error("--pg-setting takes NAME=VALUE")
    if args.admin_dsn and settings:
        parser.error("--pg-setting applies to the server the bench starts, not to --admin-dsn's")
    if args.admin_dsn:
        lines = bench(args.admin_dsn, args)
    else:
        with PostgresServer(settings=settings) as server:
            lines = [f"server settings: {_settings(server.dsn())}", *bench(server.dsn(), args)]
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
