"""PostgreSQL source -> staging Parquet throughput against a raw `COPY ... TO STDOUT`, and its peak memory.

    .venv/bin/python -m benchmarks.bench_extract_postgres [--rows 2000000] [--repeat 3]

The table (`bench_orders_<rows>` in the database `dse_bench` on the server the test suite would use:
DATABASE_URL, else 127.0.0.1:5432, else a throwaway one) is built once and reused. Every measured step runs
in its own process so its peak RSS is its own; throughput uses the time the child measured around the
extraction (interpreter start-up and imports excluded, on both sides).

- baseline: `COPY (SELECT <columns> FROM t) TO STDOUT (FORMAT csv)` into a sink that only counts bytes.
- ours: the `postgres` connector in incremental mode from an empty state (predicate and ORDER BY by
  (updated_at, id) included; the table has the index such a source needs), reshaped by
  `to_staging_batch` and written by `staging.raw_partition_write` into a temporary staging root; full
  mode is reported too. `ratio` = baseline seconds / ours seconds (our throughput as a fraction of COPY's).
- memory: ours again on a table a quarter of the size: both peaks should be about equal.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import run_child, write_result

DATABASE = "dse_bench"
DSN_ENV = "DSE_BENCH_DB_URL"
COLUMNS = [
    "id",
    "updated_at",
    "order_id",
    "customer_email",
    "store_code",
    "sku",
    "quantity",
    "unit_price",
    "amount",
    "currency",
    "note",
    "is_return",
]
# Rows 4 to a timestamp, so the (updated_at, id) order has ties everywhere, as real batches do.
_CREATE = """
CREATE TABLE {table} (
    id bigint PRIMARY KEY,
    updated_at timestamptz NOT NULL,
    order_id text NOT NULL,
    customer_email text,
    store_code text NOT NULL,
    sku text NOT NULL,
    quantity integer NOT NULL,
    unit_price numeric(12,2) NOT NULL,
    amount numeric(12,2) NOT NULL,
    currency text NOT NULL,
    note text,
    is_return boolean NOT NULL
);
INSERT INTO {table}
SELECT i,
       timestamptz '2026-10-01 00:00:00+00' + (i / 4) * interval '1 second',
       'ORD-' || lpad((i / 3)::text, 9, '0'),
       CASE WHEN i % 10 = 0 THEN NULL ELSE 'customer' || (i % 50000) || '@example.com' END,
       'S' || lpad((i % 40)::text, 3, '0'),
       'SKU-' || lpad((i % 5000)::text, 6, '0'),
       1 + i % 7,
       ((i % 10000) / 100.0 + 0.99)::numeric(12,2),
       ((1 + i % 7) * ((i % 10000) / 100.0 + 0.99))::numeric(12,2),
       'EUR',
       CASE i % 5 WHEN 0 THEN NULL WHEN 1 THEN '' ELSE 'gift wrap, "fragile"' END,
       i % 50 = 0
FROM generate_series(1, {rows}) AS i;
CREATE INDEX ON {table} (updated_at, id);
"""


def server_url() -> str:
    from tests.postgres_server import postgres_url

    url, how = postgres_url()
    if not url:
        raise SystemExit(f"no PostgreSQL server for the benchmark: {how}")
    return url


def database_url(url: str, dbname: str) -> str:
    import psycopg2.extensions

    parts = psycopg2.extensions.parse_dsn(url)
    parts["dbname"] = dbname
    return psycopg2.extensions.make_dsn(**parts)


def table_prepare(url: str, rows: int) -> str:
    """Create (once) the database and a table of `rows` rows; reuse it when its row count matches."""
    import psycopg2
    from psycopg2 import sql

    table = f"bench_orders_{rows}"
    admin = psycopg2.connect(url)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if cursor.fetchone() is None:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    admin.close()
    conn = psycopg2.connect(database_url(url, DATABASE))
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
        if cursor.fetchone()[0]:
            cursor.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            if cursor.fetchone()[0] == rows:
                conn.close()
                return table
            cursor.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
        print(f"building {table} ({rows:,} rows) in {DATABASE} ...", file=sys.stderr)
        started = time.perf_counter()
        cursor.execute(sql.SQL(_CREATE).format(table=sql.Identifier(table), rows=sql.Literal(rows)))
        cursor.execute(sql.SQL("VACUUM (FREEZE, ANALYZE) {}").format(sql.Identifier(table)))
        print(f"built in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    conn.close()
    return table


# --- measured steps (each in a child process) -------------------------------------------------------------


class _CountingSink:
    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.bytes += len(data)
        return len(data)


def child_baseline(table: str) -> dict[str, Any]:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(os.environ[DSN_ENV])
    select = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS), sql.Identifier(table)
    )
    copy = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv)").format(select)
    sink = _CountingSink()
    started = time.perf_counter()
    with conn.cursor() as cursor:
        cursor.copy_expert(copy, sink, size=1 << 20)
        rows = cursor.rowcount
    seconds = time.perf_counter() - started
    conn.close()
    return {"seconds": seconds, "rows": rows, "bytes": sink.bytes}


def child_ours(table: str, mode: str) -> dict[str, Any]:
    from connectors.base import ExtractWindow
    from connectors.postgres import PostgresConnector
    from connectors.records import staging_schema, to_staging_batch
    from etlcore import staging

    options: dict[str, Any] = {"kind": "postgres", "dsn_env": DSN_ENV, "table": table, "columns": COLUMNS}
    if mode == "incremental":
        options |= {"mode": "incremental", "watermark_column": "updated_at", "tiebreaker_column": "id"}
    connector = PostgresConnector(name="orders", options=options)
    # The e-mail is personal, as in the shipped pipeline: staged as its keyed pseudonym.
    columns = {c: {"from": c, "pii": c == "customer_email"} for c in COLUMNS}
    window = ExtractWindow(
        business_date=date(2026, 12, 31),
        start=datetime(2026, 12, 31, tzinfo=UTC),
        end=datetime(2027, 1, 1, tzinfo=UTC),
    )
    with tempfile.TemporaryDirectory(prefix="dse-bench-") as root:
        ref = staging.PartitionRef(
            root=Path(root),
            pipeline="bench",
            layer=staging.RAW,
            dataset="orders",
            business_date=window.business_date,
        )
        started = time.perf_counter()
        batches = (
            to_staging_batch(b, columns=columns, source_label="orders", pseudonym_key=b"bench-pseudonym-key")
            for b in connector.iter_batches(window)
        )
        manifest = staging.raw_partition_write(
            ref,
            schema=staging_schema(columns),
            batches=batches,
            source=connector.describe(),
            window={"start": window.start.isoformat(), "end": window.end.isoformat()},
            run_id=None,
        )
        seconds = time.perf_counter() - started
        size = sum(f.stat().st_size for f in staging.manifest_files(ref, manifest))
    return {
        "seconds": seconds,
        "rows": manifest.row_count,
        "parquet_bytes": size,
        "state": connector.next_state,
    }


# --- driver -----------------------------------------------------------------------------------------------


def measure(args: list[str], *, repeat: int, dsn: str) -> dict[str, Any]:
    """Median seconds (as the child measured them), max peak RSS, and the last child's report."""
    env = {**os.environ, DSN_ENV: dsn}
    seconds, peaks, report = [], [], {}
    for _ in range(repeat):
        _, peak_mb, out = run_child(
            [sys.executable, "-m", "benchmarks.bench_extract_postgres", *args], env=env
        )
        report = json.loads(out.strip().splitlines()[-1])
        seconds.append(report["seconds"])
        peaks.append(peak_mb)
    return {
        "seconds": statistics.median(seconds),
        "samples": [round(s, 3) for s in seconds],
        "peak_memory_mb": round(max(peaks), 1),
        "report": report,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the measured table")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per step (median reported)")
    parser.add_argument("--child", choices=["baseline", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="incremental", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "baseline":
        print(json.dumps(child_baseline(args.table)))
        return
    if args.child == "ours":
        print(json.dumps(child_ours(args.table, args.mode)))
        return

    url = server_url()
    dsn = database_url(url, DATABASE)
    small_rows = max(args.rows // 4, 1)
    table = table_prepare(url, args.rows)
    small_table = table_prepare(url, small_rows)
    # One untimed pass warms the server's cache for both contenders alike.
    measure(["--child", "baseline", "--table", table], repeat=1, dsn=dsn)

    baseline = measure(["--child", "baseline", "--table", table], repeat=args.repeat, dsn=dsn)
    ours = measure(["--child", "ours", "--table", table], repeat=args.repeat, dsn=dsn)
    full = measure(["--child", "ours", "--table", table, "--mode", "full"], repeat=args.repeat, dsn=dsn)
    small = measure(["--child", "ours", "--table", small_table], repeat=1, dsn=dsn)
    if ours["report"]["rows"] != args.rows or baseline["report"]["rows"] != args.rows:
        raise SystemExit(
            f"row counts differ: ours {ours['report']['rows']}, COPY {baseline['report']['rows']}"
        )

    def rate(step: dict[str, Any]) -> int:
        return round(args.rows / step["seconds"])

    figures = {
        "rows": args.rows,
        "repeat": args.repeat,
        "copy_bytes": baseline["report"]["bytes"],
        "baseline_copy_seconds": round(baseline["seconds"], 3),
        "baseline_copy_rows_per_s": rate(baseline),
        "baseline_copy_samples": baseline["samples"],
        "baseline_peak_memory_mb": baseline["peak_memory_mb"],
        "incremental_seconds": round(ours["seconds"], 3),
        "incremental_rows_per_s": rate(ours),
        "incremental_samples": ours["samples"],
        "full_seconds": round(full["seconds"], 3),
        "full_rows_per_s": rate(full),
        "full_ratio": round(baseline["seconds"] / full["seconds"], 3),
        "ratio": round(baseline["seconds"] / ours["seconds"], 3),
        "peak_memory_mb": max(ours["peak_memory_mb"], full["peak_memory_mb"]),
        "peak_memory_mb_by_rows": {
            str(small_rows): small["peak_memory_mb"],
            str(args.rows): ours["peak_memory_mb"],
        },
        "parquet_bytes": ours["report"]["parquet_bytes"],
        "targets": {"ratio_at_least": 0.5, "peak_memory_mb_below": 500},
    }
    write_result("extract_postgres", figures)
    print(
        f"COPY baseline {figures['baseline_copy_rows_per_s']:,} rows/s; postgres source -> staging "
        f"{figures['incremental_rows_per_s']:,} rows/s incremental (ratio {figures['ratio']}), "
        f"{figures['full_rows_per_s']:,} rows/s full (ratio {figures['full_ratio']}); peak memory "
        f"{small['peak_memory_mb']} MB at {small_rows:,} rows, "
        f"{ours['peak_memory_mb']} MB at {args.rows:,} rows"
    )


if __name__ == "__main__":
    main()
