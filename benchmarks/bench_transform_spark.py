"""The Spark transform job (spark-submit, local mode) against the same logic in DuckDB.

    .venv/bin/python -m benchmarks.bench_transform_spark [--rows 1000000,10000000] [--repeat 1] [--huge]
    .venv/bin/python -m benchmarks.bench_transform_spark --rows 50000000 --huge   # the 50 M run alone,
                                                        # added to the last comparison's results file

A comparison run keeps the last 50 M figures in the results file (each size has its `measured_at`).

Data: one business date in the staging format (every value text, the demo pipeline's declared columns for
order_lines / products / stores, zstd Parquet), generated vectorised with numpy/pyarrow once and cached
under var/bench/transform_spark/: `--rows` order lines, 3 per order, 2,000 products, 50 stores, 200,000
customers (10% guests), and 5% dirty rows: 1% unparseable prices ("12,50", "abc", "1e3"), 1% unknown skus,
1% zero quantities, 1% exact duplicate records, 1% newer versions of a line (later updated_at, another
quantity); 3% returns (negative quantities) are valid. 5% of the lines are in GBP or USD, converted to
EUR with the date's rates partition (the demo pipeline's `rates` dataset).

- spark: the pipeline's job (conf/pipelines/retail_demo.toml `[spark] job`) submitted exactly as the
  transform step does: a job spec JSON like `etlcore.services.transform.partition_transform` writes
  (columns, keys and version columns from the pipeline file, so the benchmark follows the job as it
  changes) and the
  command of `etlcore.spark.submit_command` (same defaults, same `[spark.conf]`, `--py-files` archive).
  Wall time includes spark-submit's JVM start-up; the job's own `_result.json` is checked for conservation.
- duckdb (the single-machine reference): the same rules in SQL, in one child process: casts behind the
  job's shape checks with TRY_CAST, reasons, de-duplication by key keeping the latest version, dimension
  joins, line rules, conversion at the date's rate, the HMAC customer pseudonym, the six outputs written
  as Parquet. (The job does a little more: line types and linking returns to their purchase.)
- pandas (with `--huge`): the same steps in memory, run in a child whose address space is capped at half
  the machine's RAM, to show that it cannot hold the 50 M-line day; its peak at 1 M lines is measured too
  and projected.

Peak memory is the whole process tree's resident set (spark-submit's JVM and the Python driver it starts),
sampled from /proc every 0.2 s (`max_process_rss_mb`: the largest single process's high-water mark from
wait4, which also sees spikes between samples). `ratio` = Spark seconds / DuckDB seconds at the largest
size compared (target <= 4).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, django_setup, load_average, side_summary, write_result

NAME = "transform_spark"
ROOT = Path(__file__).resolve().parents[1] / "var" / "bench" / NAME
DAY = "2026-11-01"
PIPELINE = "retail_demo"
PRODUCTS, STORES, CUSTOMERS = 2_000, 50, 200_000
# EUR per unit; 4% of the lines in GBP, 1% in USD, the rest in the reporting currency.
RATES = {"GBP": "1.15811900", "USD": "0.92155000"}
CURRENCY_SHARES = {"EUR": 0.95, "GBP": 0.04, "USD": 0.01}
DATA_VERSION = 2  # bump when the generated data changes, so cached data is not reused
PSEUDONYM_KEY = "bench-pseudonym-key"
CHUNK = 1_000_000
ROW_GROUP = 100_000
HUGE_ROWS = 50_000_000


# --- data -------------------------------------------------------------------------------------------------
def generate(rows: int) -> Path:
    """Staged partitions of the three datasets for `rows` order lines; written once, then reused."""
    root = ROOT / f"rows-{rows}-v{DATA_VERSION}"
    if (root / "done").exists():
        return root
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    shutil.rmtree(root, ignore_errors=True)
    (root / "raw").mkdir(parents=True)
    rng = np.random.default_rng(20261101)
    text = pa.string()

    skus = [f"SKU-{i:05d}" for i in range(PRODUCTS)]
    products = pa.table(
        {
            "sku": skus,
            "name": [f"Product {i}" for i in range(PRODUCTS)],
            "category": [f"Category {i % 40}" for i in range(PRODUCTS)],
            "list_price": [f"{1 + i % 300}.{i % 100:02d}" for i in range(PRODUCTS)],
        }
    )
    store_codes = [f"ST-{i:03d}" for i in range(STORES)]
    stores = pa.table(
        {
            "store_code": store_codes,
            "name": [f"Store {i}" for i in range(STORES)],
            "city": [f"City {i % 17}" for i in range(STORES)],
            "region": [["North", "South", "West"][i % 3] for i in range(STORES)],
            "country": [["DE", "NL", "AT"][i % 3] for i in range(STORES)],
        }
    )
    pq.write_table(products, root / "raw" / "products.parquet", compression="zstd")
    pq.write_table(stores, root / "raw" / "stores.parquet", compression="zstd")
    rates = pa.table({"currency": list(RATES), "rate": list(RATES.values())})
    pq.write_table(rates, root / "raw" / "rates.parquet", compression="zstd")

    sku_pool = pa.array([*skus, "SKU-99999"])  # the last one is unknown
    store_pool = pa.array(store_codes)
    emails = pa.array([f"customer{i}@example.com" for i in range(CUSTOMERS)])
    countries = pa.array(["DE", "NL", "AT", "FR"])
    currency_pool = pa.array(list(CURRENCY_SHARES))
    currency_p = np.array(list(CURRENCY_SHARES.values()))
    price_pool = pa.array([f"{c // 100}.{c % 100:02d}" for c in range(0, 30_000)] + ["12,50", "abc", "1e3"])
    bad_prices = np.array([30_000, 30_001, 30_002])
    start = np.datetime64(f"{DAY}T00:00:00", "s")

    schema = pa.schema(
        [
            (name, text)
            for name in (
                "order_id",
                "line_number",
                "ordered_at",
                "updated_at",
                "store_code",
                "customer_email",
                "customer_country",
                "sku",
                "quantity",
                "unit_price",
                "currency",
            )
        ]
    )
    base_rows = rows - 2 * (rows // 100)  # 1% exact duplicates and 1% newer versions are added on top
    written = 0
    with pq.ParquetWriter(root / "raw" / "order_lines.parquet", schema, compression="zstd") as writer:
        for offset in range(0, base_rows, CHUNK):
            n = min(CHUNK, base_rows - offset)
            idx = np.arange(offset, offset + n)
            order = idx // 3
            dirt = rng.random(n)
            seconds = rng.integers(0, 86_400, n // 3 + 2)[(order - order[0]) % (n // 3 + 2)]
            ordered = start + seconds.astype("timedelta64[s]")
            quantity = rng.integers(1, 6, n)
            quantity[rng.random(n) < 0.03] *= -1
            quantity[(dirt >= 0.02) & (dirt < 0.03)] = 0
            price = rng.integers(50, 20_000, n)
            bad = dirt < 0.01
            price[bad] = bad_prices[rng.integers(0, 3, int(bad.sum()))]
            sku = rng.integers(0, PRODUCTS, n)
            sku[(dirt >= 0.01) & (dirt < 0.02)] = PRODUCTS
            customer = rng.integers(0, CUSTOMERS, n // 3 + 2)[(order - order[0]) % (n // 3 + 2)]
            guest = rng.random(n) < 0.10
            table = _lines_table(
                pa,
                pc,
                schema,
                order=order,
                line=idx % 3 + 1,
                ordered=ordered,
                updated=ordered + np.timedelta64(60, "s"),
                store=store_pool.take(pa.array(order % STORES)),
                email=pc.if_else(pa.array(guest), pa.nulls(n, text), emails.take(pa.array(customer))),
                country=countries.take(pa.array(customer % 4)),
                sku=sku_pool.take(pa.array(sku)),
                quantity=quantity,
                price=price_pool.take(pa.array(price)),
                currency=currency_pool.take(pa.array(rng.choice(len(currency_p), n, p=currency_p))),
            )
            writer.write_table(table, row_group_size=ROW_GROUP)
            written += n
            # Duplicates: 1% of the chunk's rows again as exact copies, 1% as a newer version.
            extra = rows // 100 * n // base_rows
            if extra:
                picks = pa.array(rng.choice(n, extra, replace=False))
                writer.write_table(table.take(picks), row_group_size=ROW_GROUP)
                newer = table.take(pa.array(rng.choice(n, extra, replace=False)))
                newer = newer.set_column(
                    schema.get_field_index("updated_at"),
                    "updated_at",
                    pa.array(
                        np.datetime_as_string(
                            np.full(extra, start + np.timedelta64(86_400 + 3_600, "s")), unit="s"
                        )
                        + "Z"
                    ),
                ).set_column(
                    schema.get_field_index("quantity"),
                    "quantity",
                    pc.cast(pa.array(rng.integers(1, 9, extra)), text),
                )
                writer.write_table(newer, row_group_size=ROW_GROUP)
                written += 2 * extra
    (root / "rows").write_text(str(written))
    (root / "done").touch()
    return root


def _lines_table(
    pa, pc, schema, *, order, line, ordered, updated, store, email, country, sku, quantity, price, currency
):
    import numpy as np

    text = pa.string()

    def iso(ts):
        return pa.array(np.datetime_as_string(ts, unit="s")).cast(text)

    return pa.table(
        {
            "order_id": pc.binary_join_element_wise(
                "O-", pc.utf8_lpad(pc.cast(pa.array(order), text), 9, "0"), ""
            ),
            "line_number": pc.cast(pa.array(line), text),
            "ordered_at": pc.binary_join_element_wise(iso(ordered), "Z", ""),
            "updated_at": pc.binary_join_element_wise(iso(updated), "Z", ""),
            "store_code": store,
            "customer_email": email,
            "customer_country": country,
            "sku": sku,
            "quantity": pc.cast(pa.array(quantity), text),
            "unit_price": price,
            "currency": currency,
        },
        schema=schema,
    )


def job_spec(root: Path, output_dir: Path) -> dict[str, Any]:
    """The spec the transform step would write for this partition."""
    from datetime import date

    from etlcore.config import pipeline_load
    from etlcore.services.transform import job_spec as pipeline_job_spec

    config = pipeline_load(PIPELINE)
    rows = {
        "order_lines": int((root / "rows").read_text()),
        "products": PRODUCTS,
        "stores": STORES,
        "rates": len(RATES),
    }
    staged = {name: ([root / "raw" / f"{name}.parquet"], rows[name]) for name in config.datasets}
    return pipeline_job_spec(
        config, business_date=date.fromisoformat(DAY), staged=staged, output_dir=output_dir
    )


def spec_written(root: Path, output_dir: Path) -> Path:
    """A fresh ``output_dir`` holding the job spec of the staged date ``root``: the spec's path."""
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.mkdir(parents=True)
    spec_path = output_dir / "_spec.json"
    spec_path.write_text(json.dumps(job_spec(root, output_dir), indent=2), encoding="utf-8")
    return spec_path


# --- measurement ------------------------------------------------------------------------------------------
def _tree_rss_mb(session: int) -> float:
    """Resident memory of every process in the session (the child started it with start_new_session)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # fields after "(comm)": state ppid pgrp session ... rss is 22nd
            total += int(fields[21]) * page
    return total / (1024 * 1024)


def measure(
    argv: list[str], *, env: dict[str, str], log: Path, limit_bytes: int | None = None
) -> dict[str, Any]:
    """Run a child (its own session) to the end: wall seconds, peak RSS of its whole tree, exit code."""

    def limit() -> None:
        if limit_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    started = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            argv, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True, preexec_fn=limit
        )
        peak = 0.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _tree_rss_mb(proc.pid))
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "seconds": time.perf_counter() - started,
        "peak_memory_mb": peak,
        # The biggest single process's high-water mark (wait4): catches spikes between samples.
        "max_process_rss_mb": usage.ru_maxrss / 1024,
        "exit_code": proc.returncode,
        "log": str(log),
    }


def run_spark(root: Path, work: Path) -> dict[str, Any]:
    from etlcore.config import pipeline_load
    from etlcore.spark import job_environment, jobs_archive, submit_command

    config = pipeline_load(PIPELINE)
    output_dir = work / "spark"
    spec_path = spec_written(root, output_dir)
    command = submit_command(config, spec_path=spec_path, py_files=jobs_archive(work / "_build"))
    env = job_environment(config, {**os.environ, config.spark.pseudonym_key_env: PSEUDONYM_KEY})
    result = measure(command, env=env, log=work / "spark.log")
    if result["exit_code"] != 0:
        raise SystemExit(f"spark job failed, see {result['log']}")
    result["result"] = json.loads((output_dir / "_result.json").read_text())
    result["command_conf"] = [a for a in command if "=" in a and a.startswith("spark.")]
    return result


def run_duckdb(root: Path, work: Path) -> dict[str, Any]:
    output_dir = work / "duckdb"
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "benchmarks.bench_transform_spark", "--step", "duckdb"]
    argv += ["--data", str(root), "--out", str(output_dir)]
    result = measure(argv, env=os.environ.copy(), log=work / "duckdb.log")
    if result["exit_code"] != 0:
        raise SystemExit(f"duckdb run failed, see {result['log']}")
    result["result"] = json.loads((output_dir / "_result.json").read_text())
    return result


def run_pandas(root: Path, work: Path, *, limit_bytes: int | None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "benchmarks.bench_transform_spark", "--step", "pandas", "--data", str(root)]
    return measure(argv, env=os.environ.copy(), log=work / "pandas.log", limit_bytes=limit_bytes)


# --- the reference implementations (run in a child) ---------------------------------------------------
_EDGE = r"^\s+|\s+$"
_TS_SHAPE = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)?$"


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _decimal_shape(scale: int) -> str:
    # The job's ^[+-]?(?=\.?\d)\d*(\.\d{0,s}0*)?$ without look-ahead (RE2 has none).
    return rf"^[+-]?(\d+(\.\d{{0,{scale}}}0*)?|\.\d{{1,{max(scale, 1)}}}0*)$"


def _prepare_sql(name: str, files: list[str], columns: dict, present: list[str], masks: dict) -> str:
    """One projection over the staged text: typed columns, raw_record, reasons (as the job's validation)."""
    import re

    cleaned, typed, checks = [], [], []
    for col, spec in columns.items():
        kind = str(spec.get("type", "string")).lower()
        text = f'"{col}"' if col in present else "NULL::VARCHAR"
        clean = f"NULLIF(regexp_replace({text}, '{_EDGE}', '', 'g'), '')"
        if kind == "string":
            clean = f"regexp_replace({clean}, '\\s+', ' ', 'g')"
        cleaned.append(f'{clean} AS "c_{col}"')
        c = f'"c_{col}"'
        if kind == "string":
            value = c
        elif kind == "int":
            value = f"TRY_CAST({c} AS INTEGER)"
        elif kind == "timestamp":
            value = f"CASE WHEN regexp_full_match({c}, '{_TS_SHAPE}') THEN TRY_CAST({c} AS TIMESTAMPTZ) END"
        elif (m := re.match(r"decimal\((\d+),\s*(\d+)\)", kind)) is not None:
            p, s = m.groups()
            value = (
                f"CASE WHEN regexp_full_match({c}, '{_decimal_shape(int(s))}') "
                f"THEN TRY_CAST({c} AS DECIMAL({p},{s})) END"
            )
        else:
            value = f"TRY_CAST({c} AS {kind.upper()})"
        typed.append(f'{value} AS "{col}"')
        if spec.get("required"):
            checks.append(f"CASE WHEN {c} IS NULL THEN 'missing_{col}' END")
        checks.append(f"CASE WHEN {c} IS NOT NULL AND ({value}) IS NULL THEN 'invalid_{col}' END")
    raw = ", ".join(f'"{col}" := {masks.get(col, f"{chr(34)}{col}{chr(34)}")}' for col in sorted(present))
    file_list = ", ".join(_sql_str(f) for f in files)
    return f"""
        SELECT {", ".join(typed)},
               to_json(struct_pack({raw})) AS raw_record,
               list_filter([{", ".join(checks)}], lambda x: x IS NOT NULL) AS _reasons
        FROM (SELECT *, {", ".join(cleaned)} FROM read_parquet([{file_list}])) AS {name}_staged
    """


def _hmac_sql(key: bytes, value: str) -> str:
    """HMAC-SHA256 hex of `value` (a text expression) in SQL, like spark_jobs.quality.hmac_sha256_hex."""
    block = key.ljust(64, b"\x00")
    inner, outer = (bytes(b ^ pad for b in block).hex() for pad in (0x36, 0x5C))
    return (
        f"CASE WHEN {value} IS NOT NULL THEN sha256(unhex('{outer}') || "
        f"unhex(sha256(unhex('{inner}') || ({value})::BLOB))) END"
    )


def _dedup_sql(source: str, key: list[str], version: str | None) -> str:
    known = [f'"{k}" IS NOT NULL' for k in key] + ([f'"{version}" IS NOT NULL'] if version else [])
    eligible = " AND ".join(known)
    partition = [f"({eligible})", *[f'CASE WHEN {eligible} THEN "{k}" END' for k in key]]
    partition.append(f"CASE WHEN NOT ({eligible}) THEN sha256(raw_record) END")
    order = ([f'"{version}" DESC NULLS LAST'] if version else []) + ["raw_record DESC"]
    return (
        f"SELECT *, row_number() OVER (PARTITION BY {', '.join(partition)} ORDER BY {', '.join(order)}) > 1 "
        f"AS _dup FROM ({source})"
    )


def duckdb_step(root: Path, out: Path) -> None:
    import duckdb
    import pyarrow.parquet as pq

    spec = job_spec(root, out)
    key = PSEUDONYM_KEY.encode()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET temp_directory = {_sql_str(str(out / '_tmp'))}")
    con.execute("SET preserve_insertion_order = false")
    email = (
        rf"regexp_replace(NULLIF(regexp_replace(customer_email, '{_EDGE}', '', 'g'), ''), '\s+', ' ', 'g')"
    )
    masks = {"order_lines": {"customer_email": _hmac_sql(key, f"lower(trim({email}))")}}
    for name, inp in spec["inputs"].items():
        present = pq.read_schema(inp["files"][0]).names
        prepared = _prepare_sql(name, inp["files"], inp["columns"], present, masks.get(name, {}))
        con.execute(
            f"CREATE TEMP TABLE {name}_p AS " + _dedup_sql(prepared, inp["key"], inp.get("version_column"))
        )
    currency = spec["reporting_currency"].upper()
    accepted = "NOT _dup AND len(_reasons) = 0"
    rates = (spec.get("options") or {}).get("rates", {}).get("dataset")
    if rates:  # the date's rate, 1 for the reporting currency; no rate: missing_rate
        usable = f"SELECT upper(currency) AS rate_currency, rate FROM {rates}_p WHERE {accepted}"
        rate_join = f"LEFT JOIN ({usable}) r ON upper(l.currency) = r.rate_currency"
        line_rate = f"CASE WHEN upper(l.currency) = '{currency}' THEN coalesce(r.rate, 1) ELSE r.rate END"
        currency_check = "CASE WHEN currency IS NOT NULL AND line_rate IS NULL THEN 'missing_rate' END"
    else:
        rate_join, line_rate = "", "1"
        currency_check = f"CASE WHEN currency <> '{currency}' THEN 'unsupported_currency' END"
    # Classified order lines, materialised once (the job caches the same frame).
    con.execute(
        f"""
        CREATE TEMP TABLE lines_c AS
        SELECT * EXCLUDE (_reasons, amount0, line_rate), amount0 AS amount, quantity < 0 AS is_return,
               TRY_CAST(round(amount0 * line_rate, 2) AS DECIMAL(18,2)) AS amount_reporting,
               list_concat(_reasons, list_filter([
                   CASE WHEN sku IS NOT NULL AND kp IS NULL THEN 'unknown_product' END,
                   CASE WHEN store_code IS NOT NULL AND ks IS NULL THEN 'unknown_store' END,
                   CASE WHEN quantity = 0 THEN 'zero_quantity' END,
                   CASE WHEN unit_price < 0 THEN 'negative_price' END,
                   CASE WHEN quantity IS NOT NULL AND unit_price IS NOT NULL AND amount0 IS NULL
                        THEN 'amount_out_of_range' END,
                   {currency_check}
               ], lambda x: x IS NOT NULL)) AS _reasons
        FROM (
            SELECT l.* EXCLUDE (currency), upper(l.currency) AS currency,
                   TRY_CAST(round(l.quantity::DECIMAL(10,0) * l.unit_price, 2) AS DECIMAL(18,2)) AS amount0,
                   p.sku AS kp, s.store_code AS ks, {line_rate} AS line_rate
            FROM order_lines_p l
            LEFT JOIN (SELECT sku FROM products_p WHERE NOT _dup AND len(_reasons) = 0) p USING (sku)
            LEFT JOIN (SELECT store_code FROM stores_p WHERE NOT _dup AND len(_reasons) = 0) s
                   USING (store_code)
            {rate_join}
        )
        """
    )
    customer_key = _hmac_sql(key, f"lower(trim({email}))")
    outputs = {
        "sales_lines": f"""
            SELECT order_id, line_number, DATE '{DAY}' AS business_date, ordered_at, store_code, sku,
                   {customer_key} AS customer_key, quantity,
                   unit_price, amount, currency, is_return, amount_reporting
            FROM lines_c WHERE {accepted}""",
        "products": f"SELECT sku, name, category, list_price FROM products_p WHERE {accepted}",
        "stores": f"SELECT store_code, name, city, region, country FROM stores_p WHERE {accepted}",
        "customers": f"""
            SELECT customer_key, arg_min(customer_country, (customer_country IS NULL, -epoch_us(ordered_at),
                   customer_country)) AS country
            FROM (SELECT {customer_key} AS customer_key, customer_country, ordered_at
                  FROM lines_c WHERE {accepted} AND customer_email IS NOT NULL)
            GROUP BY customer_key""",
        "quarantine": " UNION ALL ".join(
            f"""SELECT '{name}' AS dataset, _reasons[1] AS reason_code,
                       array_to_string(list_transform(_reasons, lambda r: r || CASE
                           WHEN regexp_matches(r, '^(missing|invalid)_') THEN ': ' ||
                           regexp_extract(r, '^(?:missing|invalid)_(.+)$', 1) || '=' || coalesce('''' ||
                           json_extract_string(raw_record, '$.' ||
                           regexp_extract(r, '^(?:missing|invalid)_(.+)$', 1)) || '''', 'null')
                           ELSE '' END), '; ')
                       AS message,
                       raw_record, sha256(raw_record) AS record_fingerprint
                FROM {table} WHERE NOT _dup AND len(_reasons) > 0"""
            for name, table in (
                ("order_lines", "lines_c"),
                ("products", "products_p"),
                ("stores", "stores_p"),
            )
        ),
    }
    counts = {}
    for name, sql in outputs.items():
        target = out / name
        target.mkdir()
        con.execute(f"COPY ({sql}) TO {_sql_str(str(target / 'part-0.parquet'))} (FORMAT parquet)")
        counts[name] = pq.ParquetFile(target / "part-0.parquet").metadata.num_rows
    datasets = {}
    for name, table in (("order_lines", "lines_c"), ("products", "products_p"), ("stores", "stores_p")):
        row = con.execute(
            f"""SELECT count(*), count(*) FILTER (_dup), count(*) FILTER (NOT _dup AND len(_reasons) > 0),
                       count(*) FILTER (NOT _dup AND len(_reasons) = 0) FROM {table}"""
        ).fetchone()
        datasets[name] = dict(zip(("rows_in", "duplicates", "rejected", "rows_out"), row, strict=True))
    (out / "_result.json").write_text(json.dumps({"datasets": datasets, "outputs": counts}, indent=2))


def pandas_step(root: Path) -> None:
    """The same steps in memory with pandas (floats for money: cheaper than Decimal objects)."""
    import pandas as pd

    print(f"reading {root}", flush=True)
    lines = pd.read_parquet(root / "raw" / "order_lines.parquet")
    products = pd.read_parquet(root / "raw" / "products.parquet")
    stores = pd.read_parquet(root / "raw" / "stores.parquet")
    print(f"read {len(lines)} lines", flush=True)
    for col in lines.columns:
        lines[col] = lines[col].str.strip().replace("", None)
    price_ok = lines["unit_price"].str.fullmatch(_decimal_shape(4)).fillna(False)
    lines["price"] = pd.to_numeric(lines["unit_price"].where(price_ok), errors="coerce")
    lines["qty"] = pd.to_numeric(lines["quantity"], errors="coerce")
    lines["ts"] = pd.to_datetime(lines["ordered_at"], errors="coerce", utc=True)
    lines["version"] = pd.to_datetime(lines["updated_at"], errors="coerce", utc=True)
    lines["raw_record"] = (
        lines.drop(columns=["price", "qty", "ts", "version"])
        .to_json(orient="records", lines=True)
        .splitlines()
    )
    lines = lines.sort_values(["order_id", "line_number", "version", "raw_record"], ascending=False)
    lines["dup"] = lines.duplicated(["order_id", "line_number"])
    print("de-duplicated", flush=True)
    lines["known_product"] = lines["sku"].isin(products["sku"])
    lines["known_store"] = lines["store_code"].isin(stores["store_code"])
    lines["amount"] = (lines["qty"] * lines["price"]).round(2)
    ok = (
        ~lines["dup"]
        & lines["price"].notna()
        & lines["known_product"]
        & lines["known_store"]
        & (lines["qty"] != 0)
        & (lines["price"] >= 0)
    )
    accepted = lines[ok]
    daily = accepted.groupby(["store_code", "sku"]).agg(
        quantity=("qty", "sum"), revenue=("amount", "sum"), orders=("order_id", "nunique")
    )
    print(f"done: {len(accepted)} accepted, {len(daily)} daily rows", flush=True)


# --- driver -----------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,10000000", help="comma-separated order-line counts")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side per size (median)")
    parser.add_argument(
        "--huge", action="store_true", help=f"also {HUGE_ROWS:,} lines, and pandas capped at half the RAM"
    )
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    django_setup()
    if args.step == "generate":
        print(json.dumps({"root": str(generate(int(args.rows)))}))
        return
    if args.step == "duckdb":
        duckdb_step(Path(args.data), Path(args.out))
        return
    if args.step == "pandas":
        pandas_step(Path(args.data))
        return

    sizes = [int(r) for r in args.rows.split(",")]
    if args.huge and HUGE_ROWS not in sizes:
        sizes.append(HUGE_ROWS)
    figures: dict[str, Any] = {"sizes": {}, "load_average_before": load_average()}
    for rows in sizes:
        root = generate_in_child(rows)
        work = ROOT / f"work-{rows}"
        work.mkdir(parents=True, exist_ok=True)
        samples: dict[str, list[dict[str, Any]]] = {"spark": [], "duckdb": []}
        skip_duckdb = rows >= HUGE_ROWS  # the reference at 50 M is not the point of the huge run
        for _ in range(args.repeat):  # interleaved, so drift on the machine hits both sides alike
            samples["spark"].append(run_spark(root, work))
            print(f"{rows:>11,} spark   {samples['spark'][-1]['seconds']:7.1f} s", file=sys.stderr)
            if not skip_duckdb:
                samples["duckdb"].append(run_duckdb(root, work))
                print(f"{rows:>11,} duckdb  {samples['duckdb'][-1]['seconds']:7.1f} s", file=sys.stderr)
        entry: dict[str, Any] = {"load_average": load_average(), "measured_at": datetime.now(UTC).isoformat()}
        for side, runs in samples.items():
            if not runs:
                continue
            entry[side] = side_summary(runs)
        if entry.get("duckdb"):
            spark_ol = entry["spark"]["result"]["datasets"]["order_lines"]
            duck_ol = entry["duckdb"]["result"]["datasets"]["order_lines"]
            entry["same_order_line_counts"] = all(spark_ol[k] == duck_ol[k] for k in duck_ol)
            entry["ratio"] = round(entry["spark"]["seconds"] / entry["duckdb"]["seconds"], 2)
        entry["spark"]["conf"] = samples["spark"][-1]["command_conf"]
        if args.huge and rows >= HUGE_ROWS:
            entry["pandas"] = pandas_projection(root, work, rows)
        figures["sizes"][str(rows)] = entry
        spark = entry["spark"]
        line = f"{rows:>11,} lines: spark {spark['seconds']:.1f} s / {spark['peak_memory_mb']:.0f} MB"
        if "ratio" in entry:
            line += (
                f", duckdb {entry['duckdb']['seconds']:.1f} s / {entry['duckdb']['peak_memory_mb']:.0f} MB,"
                f" ratio {entry['ratio']:.2f}"
            )
        print(line, file=sys.stderr)

    previous_path = RESULTS_DIR / f"{NAME}.json"
    previous = json.loads(previous_path.read_text()) if previous_path.exists() else None
    compared = [r for r in sizes if "ratio" in figures["sizes"][str(r)]]
    if not compared:
        # Only sizes without a reference (`--rows 50000000 --huge`): added to the last comparison's figures.
        if previous is None:
            raise SystemExit(
                f"no {previous_path} to add to: run the 1M/10M comparison first (the ratio is its)"
            )
        for key in ("benchmark", "measured_at", "machine"):
            previous.pop(key, None)
        previous["sizes"].update(figures["sizes"])
        write_result(NAME, previous)
        return
    huge = str(HUGE_ROWS)
    if previous is not None and huge in previous["sizes"] and huge not in figures["sizes"]:
        # The 50 M run keeps its last figures (it has its own `measured_at`); other sizes a run did not
        # measure (a profiling run at 3 M, say) are not carried over.
        figures["sizes"][huge] = previous["sizes"][huge]
    reference = figures["sizes"][str(max(compared))]
    figures |= {
        "ratio": reference["ratio"],
        "ratio_at_rows": max(compared),
        "peak_memory_mb": reference["spark"]["peak_memory_mb"],
        "repeat": args.repeat,
        "target": {"ratio": 4.0},
    }
    write_result(NAME, figures)


def generate_in_child(rows: int) -> Path:
    """Generated in a child, so the driver's memory never counts in a measured child's peak."""
    argv = [
        sys.executable,
        "-m",
        "benchmarks.bench_transform_spark",
        "--step",
        "generate",
        "--rows",
        str(rows),
    ]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return Path(json.loads(out.strip().splitlines()[-1])["root"])


def pandas_projection(root: Path, work: Path, rows: int) -> dict[str, Any]:
    """pandas at 1 M lines (its peak, projected linearly), then at `rows` under an address-space cap."""
    small = run_pandas(generate_in_child(1_000_000), work, limit_bytes=None)
    projected = small["peak_memory_mb"] * rows / 1_000_000
    total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1024 * 1024)
    cap = int(total_mb / 2 * 1024 * 1024)
    capped = run_pandas(root, work, limit_bytes=cap)
    tail = Path(capped["log"]).read_text(errors="replace").strip().splitlines()[-3:]
    print(f"pandas at {rows:,} lines under a {cap >> 20} MB cap: exit {capped['exit_code']}", file=sys.stderr)
    return {
        "peak_memory_mb_at_1m": round(small["peak_memory_mb"], 1),
        "seconds_at_1m": round(small["seconds"], 2),
        "projected_peak_memory_mb": round(projected),
        "machine_memory_mb": round(total_mb),
        "address_space_cap_mb": cap >> 20,
        "exit_code": capped["exit_code"],
        "seconds_until_exit": round(capped["seconds"], 1),
        "peak_memory_mb_before_exit": round(capped["peak_memory_mb"], 1),
        "last_output": tail,
    }


if __name__ == "__main__":
    main()
