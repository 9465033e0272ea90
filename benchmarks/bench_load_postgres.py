"""Warehouse load of a daily sales partition on PostgreSQL against a raw `COPY ... FROM STDIN`.

    .venv/bin/python -m benchmarks.bench_load_postgres [--rows 1000000] [--repeat 3] [--bulk-repeat 1]

Data: two daily partitions in the transform output schema (docs/architecture.md), yesterday and today,
`--rows` sales lines each (3 lines per order, 50 stores, 1,000 products, 100,000 customers, 10% guests,
3% returns), written once under var/bench/load_postgres/ and reused. Databases on the server the test
suite would use (DATABASE_URL, else 127.0.0.1:5432, else a throwaway one), migrated by Django:
`dse_bench_load_dims` (dimensions only) and `dse_bench_load_yday` (dimensions and yesterday's partition,
loaded by the project). Every measurement runs in a fresh clone (`CREATE DATABASE ... TEMPLATE`) and in its
own process, so its peak RSS is its own; its time runs from opening today's Parquet file to commit, as the
child measured it (interpreter start-up and imports excluded, on every side).

- ours: `partition_load` of today's whole partition (dimensions, sales lines, the daily sales it
  recomputes, quarantine)
  into the clone that already holds yesterday: the upsert a nightly run does. Both dates list the same
  stores and products, so each member keeps its one version; the loader links today's returns to
  yesterday's purchases of the same customer and item where there is one. After the clock stops, the
  child counts today's lines and the dimension versions; the benchmark fails unless every line was
  inserted into an empty date and no version was added (`loaded` in the results).
- bulk_create: today's sales lines through `FactSalesLine.objects.bulk_create` in batches of 5,000 into the
  empty fact table, dimension ids from dicts read once: plain ORM, one transaction.
- copy (the baseline): today's sales lines, dimension ids mapped with pyarrow (vectorised, from dicts read
  once), as CSV through `COPY warehouse_factsalesline (...) FROM STDIN` into the empty fact table of the
  dims clone: the same definition, keys, indexes and foreign keys. For reference, also the same COPY into
  `CREATE TABLE ... (LIKE warehouse_factsalesline INCLUDING ALL)`, which has no foreign keys.

`ratio` = copy seconds / ours seconds (our throughput as a fraction of raw COPY's; target >= 0.7).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from benchmarks.common import run_child, write_result

NAME = "load_postgres"
DATA_ROOT = Path(__file__).resolve().parents[1] / "var" / "bench" / NAME
DIMS_DB, YDAY_DB, RUN_DB = "dse_bench_load_dims", "dse_bench_load_yday", "dse_bench_load_run"
YESTERDAY, TODAY = date(2026, 11, 1), date(2026, 11, 2)
STORES, PRODUCTS, CUSTOMERS = 50, 1_000, 100_000
FACT_COLUMNS = [
    "order_id",
    "line_number",
    "date_key",
    "store_id",
    "product_id",
    "customer_id",
    "ordered_at",
    "quantity",
    "unit_price",
    "amount",
    "currency",
    "is_return",
    "stock_code",
    "line_type",
    "amount_reporting",
    "original_order_id",
    "linked_by_loader",  # set by the loader, not staged: the baseline writes false
]


# --- data ------------------------------------------------------------------------------------------------
def generate(rows: int) -> Path:
    """Write both partitions once; later runs reuse them."""
    root = DATA_ROOT / f"rows-{rows}"
    if (root / "done").exists():
        return root
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.warehouse.partitions import SCHEMAS

    rng = np.random.default_rng(20261101)
    stores = pa.Table.from_pylist(
        [
            {"store_code": f"S{i:04d}", "name": f"Store {i}", "city": f"City {i % 17}", "region": None}
            | {"country": "FR"}
            for i in range(STORES)
        ],
        schema=SCHEMAS["stores"],
    )
    products = pa.Table.from_pylist(
        [
            {"sku": f"P{i:06d}", "name": f"Product {i}", "category": f"C{i % 40}"}
            | {"list_price": Decimal(100 + i % 5000).scaleb(-2)}
            for i in range(PRODUCTS)
        ],
        schema=SCHEMAS["products"],
    )
    customer_keys = [f"{i:064x}" for i in range(CUSTOMERS)]
    for day in (YESTERDAY, TODAY):
        folder = root / day.isoformat()
        idx = np.arange(rows)
        quantity = rng.integers(1, 6, rows)
        quantity[rng.random(rows) < 0.03] *= -1
        cents = rng.integers(50, 20_000, rows)
        customer = rng.integers(0, CUSTOMERS, rows)
        guest = rng.random(rows) < 0.10
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        skus = pa.array([f"P{i:06d}" for i in rng.integers(0, PRODUCTS, rows).tolist()])
        amounts = pa.array(
            [Decimal(q * c).scaleb(-2) for q, c in zip(quantity.tolist(), cents.tolist(), strict=True)],
            pa.decimal128(18, 2),
        )
        # Every line a product in the reporting currency; returns unlinked, as the job leaves a return whose
        # purchase is not in the same partition: the loader looks for it on earlier dates.
        lines = pa.table(
            {
                "order_id": pa.array([f"{day:%Y%m%d}-{i // 3:08d}" for i in idx.tolist()]),
                "line_number": pa.array(idx % 3 + 1, pa.int32()),
                "business_date": pa.array([day] * rows, pa.date32()),
                "ordered_at": pa.array(
                    [start + timedelta(seconds=int(s)) for s in rng.integers(0, 86_400, rows)],
                    pa.timestamp("us", tz="UTC"),
                ),
                "store_code": pa.array([f"S{i:04d}" for i in rng.integers(0, STORES, rows).tolist()]),
                "sku": skus,
                "customer_key": pa.array(
                    [
                        None if g else customer_keys[c]
                        for c, g in zip(customer.tolist(), guest.tolist(), strict=True)
                    ]
                ),
                "quantity": pa.array(quantity, pa.int32()),
                "unit_price": pa.array([Decimal(c).scaleb(-2) for c in cents.tolist()], pa.decimal128(18, 4)),
                "amount": amounts,
                "currency": pa.array(["EUR"] * rows),
                "is_return": pa.array(quantity < 0),
                "stock_code": skus,
                "line_type": pa.array(["product"] * rows),
                "amount_reporting": amounts,
                "original_order_id": pa.nulls(rows, pa.string()),
                "source_version": pa.array([1] * rows, pa.int64()),
            },
            schema=SCHEMAS["sales_lines"],
        )
        seen = sorted(
            {customer_keys[c] for c, g in zip(customer.tolist(), guest.tolist(), strict=True) if not g}
        )
        outputs = {
            "sales_lines": lines,
            "products": products,
            "stores": stores,
            "customers": pa.table(
                {"customer_key": seen, "country": ["FR"] * len(seen), "country_seen_at": [start] * len(seen)},
                schema=SCHEMAS["customers"],
            ),
            "quarantine": SCHEMAS["quarantine"].empty_table(),
        }
        for name, table in outputs.items():
            path = folder / name / "part-00000.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            # One row group per file, as a single Spark task writes it: the reader must stream it in batches.
            pq.write_table(table.cast(SCHEMAS[name]), path, row_group_size=max(rows, 1))
    (root / "done").touch()
    return root


def outputs_of(root: Path, day: date) -> dict[str, list[str]]:
    folder = root / day.isoformat()
    return {p.name: [str(p / "part-00000.parquet")] for p in sorted(folder.iterdir())}


# --- databases --------------------------------------------------------------------------------------------
def server_url() -> str:
    from tests.postgres_server import postgres_url

    url, found = postgres_url()
    if url is None:
        raise SystemExit(f"no PostgreSQL for the benchmark: {found}")
    return url


def database_url(server: str, name: str) -> str:
    parts = urlsplit(server)
    return urlunsplit(parts._replace(path=f"/{name}"))


def admin(server: str, *statements: Any) -> None:
    import psycopg2

    conn = psycopg2.connect(database_url(server, "postgres"))
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        conn.close()


def clone(server: str, template: str) -> str:
    from psycopg2 import sql

    admin(
        server,
        sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(RUN_DB)),
        sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
            sql.Identifier(RUN_DB), sql.Identifier(template)
        ),
    )
    return database_url(server, RUN_DB)


def prepare(server: str, root: Path, rows: int) -> None:
    """The two template databases, rebuilt when the server, the data or the migrations changed."""
    from psycopg2 import sql

    stamp = DATA_ROOT / "databases"  # one set of databases, whatever the data size
    built = "\n".join([server, str(root), *_migrations()])
    if stamp.exists() and stamp.read_text() == built:
        return
    for name in (RUN_DB, YDAY_DB, DIMS_DB):
        admin(server, sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
    admin(server, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DIMS_DB)))
    dims_url = database_url(server, DIMS_DB)
    child(["--step", "migrate"], dims_url)
    child(["--step", "dimensions", "--data", str(root)], dims_url)
    admin(
        server,
        sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(YDAY_DB), sql.Identifier(DIMS_DB)),
    )
    _, _, out = child(
        ["--step", "ours", "--data", str(root), "--day", YESTERDAY.isoformat()], database_url(server, YDAY_DB)
    )
    check_loaded(out, rows)
    admin(server, "CHECKPOINT")
    stamp.write_text(built)


def _migrations() -> list[str]:
    project = Path(__file__).resolve().parents[1]
    return sorted(str(p.relative_to(project)) for p in project.glob("*/migrations/0*.py"))


def child(args: list[str], url: str) -> tuple[float, float, dict[str, Any]]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "conf.settings.local"}
    if url:
        env["DATABASE_URL"] = url
    seconds, peak_mb, out = run_child(
        [sys.executable, "-m", "benchmarks.bench_load_postgres", *args], env=env
    )
    return seconds, peak_mb, json.loads(out.strip().splitlines()[-1]) if out.strip() else {}


# --- measured steps (run in the child) --------------------------------------------------------------------
def step(args: argparse.Namespace) -> dict[str, Any]:
    import django

    django.setup()
    from django.core.management import call_command

    if args.step == "migrate":
        call_command("migrate", verbosity=0)
        return {}
    root = Path(args.data)
    day = date.fromisoformat(args.day) if args.day else TODAY
    if args.step == "dimensions":
        return _dimensions_only(root)
    if args.step == "ours":
        return _ours(root, day)
    if args.step == "bulk_create":
        return _bulk_create(root)
    if args.step in ("copy", "copy_without_fk"):
        return _copy(root, with_foreign_keys=args.step == "copy")
    raise SystemExit(f"unknown step {args.step}")


def _dimensions_only(root: Path) -> dict[str, Any]:
    from warehouse.loaders import partition_load

    for day in (YESTERDAY, TODAY):
        outputs = {name: [Path(p) for p in files] for name, files in outputs_of(root, day).items()}
        partition_load(
            outputs=outputs | {"sales_lines": [], "quarantine": []},
            pipeline="bench",
            business_date=day,
            run_id=None,
            using="default",
        )
    return {}


def _ours(root: Path, day: date) -> dict[str, Any]:
    from warehouse.loaders import date_key, partition_load
    from warehouse.models import DimProduct, DimStore, FactSalesLine

    facts = FactSalesLine.objects.filter(date_id=date_key(day))
    before = facts.count()
    started = time.perf_counter()
    result = partition_load(
        outputs={name: [Path(p) for p in files] for name, files in outputs_of(root, day).items()},
        pipeline="bench",
        business_date=day,
        run_id=None,
        using="default",
    )
    seconds = time.perf_counter() - started
    # After the clock: proof that the load wrote the date's lines, and no dimension versions.
    loaded = {
        "facts_before": before,
        "facts_after": facts.count(),
        "returns": facts.filter(is_return=True).count(),
        "returns_linked": facts.filter(is_return=True, original_order_id__isnull=False).count(),
        "product_versions": DimProduct.objects.count(),
        "store_versions": DimStore.objects.count(),
    }
    return {"seconds": seconds, "rows": result.fact_rows, "strategy": result.strategy, "loaded": loaded}


def _dimension_ids() -> dict[str, dict[str, int]]:
    """Natural key -> id; for stores and products, of the version valid today, as the loader joins them."""
    from django.db.models import Q

    from warehouse.models import DimCustomer, DimProduct, DimStore

    valid = Q(valid_from__lte=TODAY) & (Q(valid_to__isnull=True) | Q(valid_to__gt=TODAY))
    return {
        "store_code": dict(DimStore.objects.filter(valid).values_list("store_code", "pk")),
        "sku": dict(DimProduct.objects.filter(valid).values_list("sku", "pk")),
        "customer_key": dict(DimCustomer.objects.values_list("customer_key", "pk")),
    }


def _bulk_create(root: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq
    from django.db import transaction

    from warehouse.loaders import date_key
    from warehouse.models import FactSalesLine

    started = time.perf_counter()
    ids = _dimension_ids()
    dk = date_key(TODAY)
    rows = 0
    with transaction.atomic():
        for batch in pq.ParquetFile(outputs_of(root, TODAY)["sales_lines"][0]).iter_batches(batch_size=5_000):
            objs = [
                FactSalesLine(
                    order_id=r["order_id"],
                    line_number=r["line_number"],
                    date_id=dk,
                    store_id=ids["store_code"][r["store_code"]],
                    product_id=ids["sku"][r["sku"]],
                    customer_id=ids["customer_key"][r["customer_key"]] if r["customer_key"] else None,
                    ordered_at=r["ordered_at"],
                    quantity=r["quantity"],
                    unit_price=r["unit_price"],
                    amount=r["amount"],
                    currency=r["currency"],
                    is_return=r["is_return"],
                    stock_code=r["stock_code"],
                    line_type=r["line_type"],
                    amount_reporting=r["amount_reporting"],
                    original_order_id=r["original_order_id"],
                )
                for r in batch.to_pylist()
            ]
            FactSalesLine.objects.bulk_create(objs, batch_size=5_000)
            rows += len(objs)
    return {"seconds": time.perf_counter() - started, "rows": rows}


def _copy(root: Path, *, with_foreign_keys: bool) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from django.db import connection, transaction
    from psycopg2 import sql

    from warehouse.loaders import date_key
    from warehouse.loading.postgres import COPY_BATCH_ROWS, COPY_CHUNK_BYTES, CsvStream
    from warehouse.models import FactSalesLine

    table = FactSalesLine._meta.db_table
    if not with_foreign_keys:
        with connection.cursor() as cursor:
            cursor.execute(
                sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
                    sql.Identifier("bench_copy_target"), sql.Identifier(table)
                )
            )
        table = "bench_copy_target"

    started = time.perf_counter()
    ids = {
        column: (pa.array(list(mapping)), pa.array(list(mapping.values()), pa.int64()))
        for column, mapping in _dimension_ids().items()
    }
    dk = date_key(TODAY)

    def batches():
        path = outputs_of(root, TODAY)["sales_lines"][0]
        for batch in pq.ParquetFile(path).iter_batches(batch_size=COPY_BATCH_ROWS):
            resolved = {}
            for column, (keys, values) in ids.items():
                resolved[column] = pc.take(values, pc.index_in(batch.column(column), value_set=keys))
            yield pa.RecordBatch.from_arrays(
                [
                    batch.column("order_id"),
                    batch.column("line_number"),
                    pa.array([dk] * batch.num_rows, pa.int32()),
                    resolved["store_code"],
                    resolved["sku"],
                    resolved["customer_key"],
                    *(batch.column(c) for c in FACT_COLUMNS[6:-1]),
                    pa.array([False] * batch.num_rows, pa.bool_()),
                ],
                names=FACT_COLUMNS,
            )

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.cursor.copy_expert(
            sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)")
            .format(sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, FACT_COLUMNS)))
            .as_string(cursor.cursor.connection),
            CsvStream(batches()),
            size=COPY_CHUNK_BYTES,
        )
        rows = cursor.cursor.rowcount
    return {"seconds": time.perf_counter() - started, "rows": rows}


# --- driver -----------------------------------------------------------------------------------------------
def measure(server: str, root: Path, what: str, template: str) -> tuple[float, float, dict[str, Any]]:
    url = clone(server, template)
    _, peak_mb, out = child(["--step", what, "--data", str(root)], url)
    return out["seconds"], peak_mb, out


def check_loaded(out: dict[str, Any], rows: int) -> dict[str, Any]:
    """Today's load must insert every line into a date holding none, and leave one version per member
    (yesterday's and today's snapshots are equal): a load that wrote nothing would time a no-op."""
    loaded = out["loaded"]
    expected = {
        "facts_before": 0,
        "facts_after": rows,
        "product_versions": PRODUCTS,
        "store_versions": STORES,
    }
    wrong = {k: loaded[k] for k, v in expected.items() if loaded[k] != v}
    if wrong or out["rows"] != rows:
        raise SystemExit(f"ours did not load today's partition as intended: {wrong}, rows {out['rows']}")
    return loaded


def load_average() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="sales lines per daily partition")
    parser.add_argument("--repeat", type=int, default=3, help="runs of ours and of COPY (median reported)")
    parser.add_argument("--bulk-repeat", type=int, default=1, help="runs of bulk_create (slow)")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--day", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step == "generate":
        print(json.dumps({"root": str(generate(args.rows))}))
        return
    if args.step:
        print(json.dumps(step(args)))
        return

    server = server_url()
    load_before = load_average()
    # Generated in a child: a child's peak RSS counts its parent's at fork, so the driver must stay small.
    root = Path(child(["--step", "generate", "--rows", str(args.rows)], "")[2]["root"])
    prepare(server, root, args.rows)
    samples: dict[str, list[float]] = {}
    peaks: dict[str, float] = {}
    loaded: dict[str, Any] = {}
    plan = [("ours", YDAY_DB), ("copy", DIMS_DB), ("copy_without_fk", DIMS_DB)]
    for _ in range(args.repeat):  # interleaved, so drift on the machine hits every side alike
        for what, template in plan:
            seconds, peak, out = measure(server, root, what, template)
            if what == "ours":
                loaded = check_loaded(out, args.rows)
            samples.setdefault(what, []).append(seconds)
            peaks[what] = max(peaks.get(what, 0.0), peak)
            print(
                f"{what:16} {seconds:7.2f} s  {args.rows / seconds:>10,.0f} rows/s  {peak:6.0f} MB",
                file=sys.stderr,
            )
    for _ in range(args.bulk_repeat):
        seconds, peak, _ = measure(server, root, "bulk_create", DIMS_DB)
        samples.setdefault("bulk_create", []).append(seconds)
        peaks["bulk_create"] = max(peaks.get("bulk_create", 0.0), peak)
        print(
            f"{'bulk_create':16} {seconds:7.2f} s  {args.rows / seconds:>10,.0f} rows/s  {peak:6.0f} MB",
            file=sys.stderr,
        )
    from psycopg2 import sql

    admin(server, sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(RUN_DB)))

    median = {what: statistics.median(s) for what, s in samples.items()}
    write_result(
        NAME,
        {
            "rows": args.rows,
            "repeat": args.repeat,
            "seconds": {what: round(s, 3) for what, s in median.items()},
            "samples": {what: [round(x, 3) for x in s] for what, s in samples.items()},
            "rows_per_second": {what: round(args.rows / s) for what, s in median.items()},
            "ratio": round(median["copy"] / median["ours"], 3),
            "ratio_to_copy_without_fk": round(median["copy_without_fk"] / median["ours"], 3),
            "bulk_create_ratio": round(median["copy"] / median["bulk_create"], 3),
            "speedup_over_bulk_create": round(median["bulk_create"] / median["ours"], 2),
            "peak_memory_mb": round(peaks["ours"], 1),
            "peak_memory_mb_by_step": {what: round(mb, 1) for what, mb in peaks.items()},
            "loaded": loaded,
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "target": {"ratio": 0.7, "peak_memory_mb": 500},
        },
    )


if __name__ == "__main__":
    main()
