"""The retail sales job on Dask: the same job spec in, the same outputs and ``_result.json`` out as
:mod:`spark_jobs.sales_daily`, for the nights too small to pay for a JVM.

Run as ``python -m spark_jobs.sales_daily_dask --spec <job spec JSON> [--spec ...] [--scheduler ADDR]``
by the transform step (etlcore.engines), in its own process like spark-submit: the same exit codes, the
same ``_failed.json`` per date. What the job means (options, spec checks, implicit rules, reason codes,
accounting) is :mod:`spark_jobs.sales_rules`, shared with the Spark job; the quality primitives are
:mod:`spark_jobs.quality_pandas`; this module holds the retail semantics in pandas and the plan.

The plan is a map-reduce over buckets, as Spark's shuffle is, so memory is bounded by a bucket, not by
the day: each chunk of staged order lines (a few row groups) is validated and split by the hash of its
order id into ``buckets`` pieces; each bucket then holds every version and copy of its lines and every
line of its orders (de-duplication, line numbers), and is classified against the day's dimensions, which
are small and broadcast. What needs the whole day (unique-rule conflicts, dimensions derived from the
lines, the links of returns, customers, counts) is reduced from per-bucket parts. Every step is a Dask
task: on this machine's cores by default (threads for a day of one bucket, a pool of processes for a
bigger one), or on the workers of a ``dask.distributed`` scheduler (``--scheduler``), which must then see
the same files (the staging root).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import multiprocessing
import os
import re
import shutil
import sys
import zoneinfo
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather
import pyarrow.parquet as pq

from spark_jobs import contract
from spark_jobs.contract import ENCRYPTED_MARK
from spark_jobs.quality_pandas import (
    DUP_COL,
    EPOCH,
    EXACT,
    RAW_PREFIX,
    Checks,
    ColumnType,
    Validation,
    clean_value,
    decimal_products,
    flag,
    group_ids,
    hmac_hex,
    java_regex,
    mark_duplicates,
    merge_counts,
    per_pair,
    per_value,
    quarantine_records,
    raw_codes,
    row_counts,
    row_numbers,
    rule_when,
    sort_codes,
    unique_failed,
)
from spark_jobs.sales_rules import (
    _HAS_OFFSET,
    BUSINESS_DATE_FROM,
    CONTRACT,
    ENCRYPTED_EMAIL,
    LINE_REASON_COLUMNS,
    MISSING_BUSINESS_DATE,
    PRODUCT,
    JobOptions,
    RetailOptions,
    SpecsUnreadable,
    _check_conservation,
    _write_json_atomically,
    line_reference_rules,
    parquet_row_count,
    specs_read,
    specs_run,
)

JOB_NAME = "sales_daily_dask"
# Staged order lines per bucket (and per chunk read): what one task holds in memory at a time.
BUCKET_ROWS = 250_000
AMOUNT_LIMIT = Decimal(10) ** 16  # decimal(18,2)
CENT = Decimal("0.01")
_HAS_OFFSET_RE = re.compile(_HAS_OFFSET, re.ASCII)
_SCRATCH = "_scratch"
TEXT = ColumnType.of("string")
# The dimensions the lines reference, by their key column.
DIMENSION_KEYS = (("products", "sku"), ("stores", "store_code"))
# What finds a return's purchase (link_candidates).
LINK_COLUMNS = ("order_id", "ordered_at", "business_date", "customer_key", "stock_code", "is_return")


# --- the plan: what every bucket computes, decided once -----------------------------------------------------


@dataclass
class Plan:
    """The job's checks in the order the Spark job appends their codes, and what the buckets need."""

    options: JobOptions
    lines: Validation
    unique_rules: list[tuple[dict[str, Any], str]]  # (rule, flag column)
    reference_rules: list[tuple[dict[str, Any], str]]
    line_flags: dict[str, str]  # code -> flag column, for the job's own reasons
    date_column: str
    types: dict[str, ColumnType]  # of the classified lines, for `when` conditions
    staged: tuple[str, ...] = ()  # the columns of the staged files, all of them (Spark's merged schema)

    @classmethod
    def of(cls, options: JobOptions) -> Plan:
        spec = options.inputs["order_lines"]
        rules = list(spec.get("rules") or ())
        lines = Validation.plan(spec["columns"], "order_lines", rules)
        checks = lines.checks
        unique = [
            (r, checks.add(r["code"], r.get("severity", "reject"))) for r in rules if r["check"] == "unique"
        ]
        references = [
            (r, checks.add(r["code"], r.get("severity", "reject"))) for r in line_reference_rules(rules)
        ]
        flags = {"amount_out_of_range": checks.add("amount_out_of_range")}
        has_rates = options.retail.rates_dataset is not None
        if options.reporting_currency and not has_rates:
            flags["unsupported_currency"] = checks.add("unsupported_currency")
        if has_rates:
            flags["missing_rate"] = checks.add("missing_rate")
            flags["rate_out_of_range"] = checks.add("amount_out_of_range")
        flags[MISSING_BUSINESS_DATE] = checks.add(MISSING_BUSINESS_DATE)
        types = dict(lines.types)
        for name in ("currency", "customer_country", ENCRYPTED_EMAIL, "line_type", "stock_code"):
            types.setdefault(name, ColumnType.of("string"))
        types.setdefault("line_number", ColumnType.of("int"))
        date_column = spec.get("business_date_column") or BUSINESS_DATE_FROM
        staged = _staged_columns(spec.get("files") or []) or tuple(spec["columns"])
        return cls(options, lines, unique, references, flags, date_column, types, staged)

    @property
    def checks(self) -> Checks:
        return self.lines.checks

    @property
    def day_wide(self) -> bool:
        """Whether classifying a bucket needs the other buckets' lines: a unique rule's conflicts, or
        dimensions derived from the lines."""
        retail = self.options.retail
        return bool(self.unique_rules) or retail.products_from_lines or retail.stores_from_lines

    @property
    def decimals(self) -> dict[str, pa.DataType]:
        """The Arrow types of the lines' decimal columns, so that dumping them between tasks skips Arrow's
        inference (a pass over every Decimal object, 4x the conversion's own cost)."""
        money = pa.decimal128(18, 2)  # the job's amounts
        declared = {
            name: pa.decimal128(t.precision, t.scale) for name, t in self.types.items() if t.kind == "decimal"
        }
        return {"amount": money, "amount_reporting": money, **declared}

    @property
    def bucket_on(self) -> str:
        """The column whose hash buckets the lines: the order id, so a bucket holds every line of an order
        and every copy and version of a line."""
        key = list(self.options.inputs["order_lines"]["key"])
        if "order_id" in key:
            return "order_id"
        if self.options.retail.line_number_from == "row":
            raise ValueError(
                f"{JOB_NAME} numbers lines by row within orders: the order_lines key must include order_id"
            )
        return key[0]


def _derived(retail: RetailOptions, dimension: str) -> bool:
    return retail.products_from_lines if dimension == "products" else retail.stores_from_lines


def _staged_columns(files: Sequence[str]) -> tuple[str, ...]:
    names: dict[str, None] = {}
    for path in files:
        names |= dict.fromkeys(pq.read_schema(path).names)
    return tuple(names)


def _buckets_of(table: pa.Table, plan: Plan, buckets: int) -> np.ndarray:
    """Each staged line's bucket: the hash of its order id as validated; a line whose id does not validate
    by the hash of its whole staged text, so identical copies meet (they are each other's duplicates)."""
    column = plan.bucket_on
    ctype = plan.lines.types[column]
    staged = pd.Series(table.column(column).to_pandas(), dtype=object)
    cleaned = per_value(staged, lambda text: clean_value(text, ctype.kind == "string"))
    typed = per_value(cleaned, ctype.parser())
    missing = typed.isna().to_numpy()
    hashed = pd.util.hash_array(typed.where(~missing, "").astype(str).to_numpy(dtype=object))
    if missing.any():
        rows = table.filter(pa.array(missing))
        text = pc.binary_join_element_wise(
            *[pc.fill_null(rows.column(c), "\x00") for c in rows.column_names], "\x1f"
        )
        hashed[missing] = pd.util.hash_array(text.to_numpy(zero_copy_only=False).astype(object))
    return (hashed % np.uint64(buckets)).astype(np.int64)


# --- retail semantics on a bucket (spark_jobs.retail, sales_daily) ------------------------------------------


def with_source_defaults(lines: pd.DataFrame, options: RetailOptions, reporting_currency: str | None) -> None:
    n = len(lines)
    if "currency" not in lines.columns:
        lines["currency"] = pd.Series([options.currency or reporting_currency] * n, dtype=object)
    for name in ("customer_country", ENCRYPTED_EMAIL):
        if name not in lines.columns:
            lines[name] = pd.Series([None] * n, dtype=object)
    if options.source_timezone:
        zone = zoneinfo.ZoneInfo(options.source_timezone)
        raw = lines.get(RAW_PREFIX + "ordered_at", pd.Series([None] * n, dtype=object))
        has_offset = flag(per_value(raw, lambda text: _HAS_OFFSET_RE.search(text) is not None))
        local = per_value(lines["ordered_at"], lambda micros: _wall_to_utc(micros, zone), "Int64")
        lines["ordered_at"] = lines["ordered_at"].where(has_offset, local)


def _wall_to_utc(micros: int, zone: zoneinfo.ZoneInfo) -> int:
    """Spark's to_utc_timestamp: the wall-clock time in ``zone`` as an instant (a time in a gap moves on by
    the gap, a repeated one takes the earlier offset: Java's rules, which fold=0 gives)."""
    try:
        wall = (EPOCH + dt.timedelta(microseconds=int(micros))).replace(tzinfo=zone)
        return (wall - EPOCH) // dt.timedelta(microseconds=1)
    except OverflowError:  # beyond Python's years (Java's reach further): the zone's offset at the edge
        return int(micros) - _edge_offset(int(micros), zone)


def _offset_micros(micros: int, zone: zoneinfo.ZoneInfo) -> int:
    """The zone's UTC offset at an instant, in microseconds."""
    try:
        offset = (EPOCH + dt.timedelta(microseconds=micros)).astimezone(zone).utcoffset()
    except OverflowError:
        return _edge_offset(micros, zone)
    return offset // dt.timedelta(microseconds=1) if offset is not None else 0


def _edge_offset(micros: int, zone: zoneinfo.ZoneInfo) -> int:
    edge = dt.datetime(9999, 12, 30, tzinfo=dt.UTC) if micros > 0 else dt.datetime(1, 1, 2, tzinfo=dt.UTC)
    offset = edge.astimezone(zone).utcoffset()
    return offset // dt.timedelta(microseconds=1) if offset is not None else 0


def with_row_line_numbers(lines: pd.DataFrame) -> None:
    """line_number 1..n within each order, in the order of the staged record's text; duplicates none."""
    dup = lines[DUP_COL].to_numpy(dtype=bool)
    groups = group_ids([dup, lines["order_id"]])
    numbers = row_numbers(groups, raw_codes(lines, descending=False))
    lines["line_number"] = pd.array(np.where(dup, 0, numbers), dtype="Int64")
    lines.loc[dup, "line_number"] = pd.NA


def with_line_type(lines: pd.DataFrame, options: RetailOptions) -> None:
    rules = [(t.type, set(t.skus), java_regex(t.pattern) if t.pattern else None) for t in options.line_types]

    def line_type(sku: str) -> str:
        for kind, skus, pattern in rules:
            if sku in skus or (pattern is not None and pattern.search(sku)):
                return kind
        return PRODUCT

    kinds = per_value(lines["sku"], line_type)
    kinds = kinds.where(lines["sku"].notna(), PRODUCT)
    lines["line_type"] = kinds
    lines["stock_code"] = lines["sku"]
    lines["sku"] = lines["sku"].where(kinds == PRODUCT, None)


def line_amounts(quantity: pd.Series, unit_price: pd.Series, price_type: ColumnType) -> pd.Series:
    """quantity x unit_price, rounded HALF_UP to the cent, exact; None when it does not fit decimal(18,2)."""

    def amount(q: Any, price: Decimal) -> Decimal | None:
        value = (Decimal(int(q)) * price).quantize(CENT, rounding=ROUND_HALF_UP, context=EXACT)
        return value if abs(value) < AMOUNT_LIMIT else None

    if price_type.kind != "decimal":
        return per_pair(quantity, unit_price, amount)
    return decimal_products(
        quantity, 0, unit_price, price_type.scale, scale=2, limit=AMOUNT_LIMIT, exact=amount
    )


def classify(
    lines: pd.DataFrame,
    plan: Plan,
    dims: Mapping[str, set[Any]],
    rates: Mapping[str, Decimal] | None,
    conflicts: Mapping[str, set[tuple[Any, ...]]],
) -> pd.DataFrame:
    """Every reason of a bucket's lines after the validation (unique, reference, line rules, rates,
    business date), and customer_key, amounts, is_return, business_date, source_version."""
    options, retail = plan.options, plan.options.retail
    for i, (rule, column) in enumerate(plan.unique_rules):
        listed = conflicts.get(rule["code"], set())
        lines[column] = flag(per_value(lines[f"_ukey{i}"], lambda key, c=listed: key in c))
    for rule, column in plan.reference_rules:
        known = dims[rule["dataset"]] if rule["dataset"] in dims else None
        if known is None:
            raise ValueError(f"rule {rule['code']!r}: no frame for referenced dataset {rule['dataset']!r}")
        value = lines[rule["column"]]
        unknown = value.notna().to_numpy() & ~flag(per_value(value, lambda v, k=known: v in k))
        lines[column] = rule_when(rule, lines, plan.types) & unknown
    quantity, unit_price = lines["quantity"], lines["unit_price"]
    lines["amount"] = line_amounts(quantity, unit_price, plan.types.get("unit_price", TEXT))
    lines[plan.line_flags["amount_out_of_range"]] = (
        quantity.notna().to_numpy() & unit_price.notna().to_numpy() & lines["amount"].isna().to_numpy()
    )
    reporting = options.reporting_currency.upper() if options.reporting_currency else None
    if "unsupported_currency" in plan.line_flags:
        currency = lines["currency"]
        lines[plan.line_flags["unsupported_currency"]] = (
            currency.notna().to_numpy() & (currency != reporting).to_numpy()
        )
    returned = (quantity.fillna(0) < 0).to_numpy(dtype=bool) & quantity.notna().to_numpy()
    if retail.return_order_prefix:
        prefix = retail.return_order_prefix
        returned |= flag(per_value(lines["order_id"], lambda text: text.startswith(prefix)))
    lines["is_return"] = returned
    _with_reporting_amount(lines, plan, reporting, rates)
    _with_customer_key(lines, plan)
    _with_business_date(lines, plan)
    _with_source_version(lines, plan)
    return lines


def _with_reporting_amount(
    lines: pd.DataFrame, plan: Plan, reporting: str | None, rates: Mapping[str, Decimal] | None
) -> None:
    if rates is None:
        lines["amount_reporting"] = lines["amount"]
        return

    def rate_of(currency: str) -> Decimal | None:
        if currency in rates:
            return rates[currency]
        return Decimal(1) if currency == reporting else None

    rate = per_value(lines["currency"], rate_of)

    def converted(amount: Decimal, line_rate: Decimal) -> Decimal | None:
        value = (amount * line_rate).quantize(CENT, rounding=ROUND_HALF_UP, context=EXACT)
        return value if abs(value) < AMOUNT_LIMIT else None

    rate_scale = max((-r.as_tuple().exponent for r in rates.values()), default=0)
    lines["amount_reporting"] = decimal_products(
        lines["amount"], 2, rate, max(rate_scale, 0), scale=2, limit=AMOUNT_LIMIT, exact=converted
    )
    has_rate = rate.notna().to_numpy()
    lines[plan.line_flags["missing_rate"]] = lines["currency"].notna().to_numpy() & ~has_rate
    lines[plan.line_flags["rate_out_of_range"]] = (
        lines["amount"].notna().to_numpy() & has_rate & lines["amount_reporting"].isna().to_numpy()
    )


def _with_customer_key(lines: pd.DataFrame, plan: Plan) -> None:
    retail = plan.options.retail
    source = lines[retail.customer_key_from]
    if retail.customer_key_from in (plan.options.inputs["order_lines"].get("pseudonymised") or ()):
        lines["customer_key"] = source
        return
    digest = hmac_hex(plan.options.pseudonym_key)
    lines["customer_key"] = per_value(source, lambda email: digest(email.strip(" ").lower()))


def _with_business_date(lines: pd.DataFrame, plan: Plan) -> None:
    value = lines[plan.date_column]
    if plan.lines.types[plan.date_column].kind == "timestamp":
        zone = zoneinfo.ZoneInfo(plan.options.timezone)

        def local_day(micros: int) -> int:
            return (int(micros) + _offset_micros(int(micros), zone)) // 86_400_000_000

        days = per_value(value, local_day, "Int64")
    else:
        days = value.astype("Int64")
    lines["business_date"] = days
    lines[plan.line_flags[MISSING_BUSINESS_DATE]] = days.isna().to_numpy()


def _with_source_version(lines: pd.DataFrame, plan: Plan) -> None:
    column = plan.options.inputs["order_lines"].get("version_column")
    if column is None:
        midnight = dt.datetime.combine(plan.options.business_date, dt.time.min, tzinfo=dt.UTC)
        lines["source_version"] = pd.array(
            [int(midnight.timestamp()) * 1_000_000] * len(lines), dtype="Int64"
        )
    else:
        lines["source_version"] = lines[column].astype("Int64")


# --- what needs the whole day: reduced from the buckets -----------------------------------------------------


def _desc_nulls_last(series: pd.Series) -> np.ndarray:
    codes = sort_codes(series)
    return np.where(codes < 0, np.iinfo(np.int64).max, -codes)


def _first(frame: pd.DataFrame, by: Sequence[str], keys: Sequence[np.ndarray]) -> pd.DataFrame:
    if frame.empty:
        return frame
    ranked = row_numbers(group_ids([frame[c] for c in by]), keys)
    return frame[ranked == 1]


def derived_products(lines: pd.DataFrame, name_from: str) -> pd.DataFrame:
    """One product per sku: the name of its latest line (ties: smallest), else the sku (retail.py)."""
    rows = lines[lines["sku"].notna()]
    name = rows[name_from] if name_from in rows.columns else pd.Series([None] * len(rows), dtype=object)
    frame = pd.DataFrame(
        {"sku": rows["sku"].to_numpy(), "_name": name.to_numpy(), "ordered_at": rows["ordered_at"].to_numpy()}
    )
    frame["ordered_at"] = frame["ordered_at"].astype("Int64")
    keys = [
        frame["_name"].isna().to_numpy().astype(np.int64),
        _desc_nulls_last(frame["ordered_at"]),
        sort_codes(frame["_name"]),
    ]
    return _first(frame, ["sku"], keys).reset_index(drop=True)


def derived_stores(lines: pd.DataFrame, country_from: str | None) -> pd.DataFrame:
    rows = lines[lines["store_code"].notna()]
    country = rows[country_from] if country_from else pd.Series([None] * len(rows), dtype=object)
    frame = pd.DataFrame(
        {
            "store_code": rows["store_code"].to_numpy(),
            "_country": country.to_numpy(),
            "ordered_at": rows["ordered_at"].to_numpy(),
        }
    )
    frame["ordered_at"] = frame["ordered_at"].astype("Int64")
    keys = [
        frame["_country"].isna().to_numpy().astype(np.int64),
        _desc_nulls_last(frame["ordered_at"]),
        sort_codes(frame["_country"]),
    ]
    return _first(frame, ["store_code"], keys).reset_index(drop=True)


def products_output(best: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sku": best["sku"],
            "name": best["_name"].where(best["_name"].notna(), best["sku"]),
            "category": None,
            "list_price": None,
        }
    )


def stores_output(best: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "store_code": best["store_code"],
            "name": best["store_code"],
            "city": None,
            "region": None,
            "country": best["_country"],
        }
    )


def customer_parts(lines: pd.DataFrame) -> pd.DataFrame:
    """Per (customer_key, country): the latest order and the greatest (time, token) of the encrypted
    e-mail: partial aggregates, combined across buckets by :func:`customers_output`."""
    rows = lines[lines["customer_key"].notna()]
    frame = pd.DataFrame(
        {
            "customer_key": rows["customer_key"].to_numpy(dtype=object),
            "customer_country": rows["customer_country"].to_numpy(dtype=object),
            "ordered_at": rows["ordered_at"].astype("Int64").to_numpy(),
            "token": rows[ENCRYPTED_EMAIL].to_numpy(dtype=object),
        }
    )
    return _customer_reduce(frame)


def _customer_reduce(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return frame.assign(token_at=pd.array([], dtype="Int64"))
    frame = frame.copy()
    if "token_at" not in frame.columns:
        frame["token_at"] = frame["ordered_at"].where(frame["token"].notna())
        frame["token_at"] = frame["token_at"].astype("Int64")
    groups = ["customer_key", "customer_country"]
    latest = frame.groupby(groups, dropna=False, sort=False)["ordered_at"].max().rename("ordered_at")
    tokens = frame[frame["token"].notna()]
    best_token = _first(tokens, groups, [_desc_nulls_last(tokens["token_at"]), -sort_codes(tokens["token"])])
    out = latest.reset_index().merge(best_token[[*groups, "token", "token_at"]], on=groups, how="left")
    out["ordered_at"] = out["ordered_at"].astype("Int64")
    out["token_at"] = out["token_at"].astype("Int64")
    return out


def customers_output(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """spark_jobs.sales_daily.build_customers from the buckets' parts: per customer, the country of the
    latest order that has one (ties: smallest) and that order's time; the encrypted e-mail of the latest
    (time, token)."""
    frame = _concat(parts)
    if frame.empty:
        return pd.DataFrame(columns=["customer_key", "country", "country_seen_at", "email_encrypted"])
    frame = _customer_reduce(frame)
    chosen = _first(
        frame,
        ["customer_key"],
        [
            frame["customer_country"].isna().to_numpy().astype(np.int64),
            _desc_nulls_last(frame["ordered_at"]),
            sort_codes(frame["customer_country"]),
        ],
    ).set_index("customer_key")
    tokens = frame[frame["token"].notna()]
    token = _first(
        tokens, ["customer_key"], [_desc_nulls_last(tokens["token_at"]), -sort_codes(tokens["token"])]
    )
    token = token.set_index("customer_key")["token"]
    out = pd.DataFrame({"customer_key": chosen.index.to_numpy(dtype=object)})
    out["country"] = chosen["customer_country"].to_numpy(dtype=object)
    seen = chosen["ordered_at"].where(chosen["customer_country"].notna())
    out["country_seen_at"] = seen.astype("Int64").to_numpy()
    out["email_encrypted"] = token.reindex(chosen.index).to_numpy(dtype=object)
    return out


def return_lines(accepted: pd.DataFrame) -> pd.DataFrame:
    rows = accepted[accepted["is_return"].to_numpy(dtype=bool) & accepted["customer_key"].notna().to_numpy()]
    return rows[["order_id", "line_number", "customer_key", "stock_code", "ordered_at", "business_date"]]


def link_candidates(accepted: pd.DataFrame, returns: pd.DataFrame) -> pd.DataFrame:
    """For each return, the latest earlier purchase of this bucket (same customer, item and date; ties:
    the greatest order id): reduced across buckets by :func:`links_reduce`."""
    purchases = accepted[
        ~accepted["is_return"].to_numpy(dtype=bool) & accepted["customer_key"].notna().to_numpy()
    ]
    if purchases.empty or returns.empty:
        return pd.DataFrame(columns=["order_id", "line_number", "_orig_order", "_orig_at"])
    keys = ["customer_key", "stock_code", "business_date"]
    bought = purchases[[*keys, "order_id", "ordered_at"]].rename(
        columns={"order_id": "_orig_order", "ordered_at": "_orig_at"}
    )
    joined = bought.merge(returns, on=keys)
    joined = joined[
        (joined["_orig_at"] <= joined["ordered_at"]).to_numpy(dtype=bool)
        & (joined["_orig_order"] != joined["order_id"]).to_numpy()
    ]
    return links_reduce([joined[["order_id", "line_number", "_orig_order", "_orig_at"]]])


def links_reduce(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    frame = _concat(parts)
    if frame.empty:
        return frame
    frame["_orig_at"] = frame["_orig_at"].astype("Int64")
    frame["line_number"] = frame["line_number"].astype("Int64")
    keys = [_desc_nulls_last(frame["_orig_at"]), _desc_nulls_last(frame["_orig_order"])]
    return _first(frame, ["order_id", "line_number"], keys).reset_index(drop=True)


# --- Arrow --------------------------------------------------------------------------------------------------


def to_arrow(frame: pd.DataFrame, output: contract.Output) -> pa.Table:
    """A pandas frame in the output's declared Arrow schema (decimals from Decimal objects, times from
    microseconds, dates from days)."""
    arrays = []
    for name, type_text in output.columns:
        values = frame[name] if name in frame.columns else pd.Series([None] * len(frame), dtype=object)
        target = contract.arrow_type(type_text)
        if pa.types.is_timestamp(target):
            arrays.append(pa.array(values.astype("Int64"), pa.int64(), from_pandas=True).cast(target))
        elif pa.types.is_date32(target):
            arrays.append(
                pa.array(values.astype("Int64"), pa.int64(), from_pandas=True).cast(pa.int32()).cast(target)
            )
        elif pa.types.is_decimal(target) or pa.types.is_string(target):  # None, NaN and NA: null
            arrays.append(pa.array(values.to_numpy(dtype=object), target, from_pandas=True))
        else:
            arrays.append(pa.array(values, target, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=contract.arrow_schema(output))


def write_output(table: pa.Table, directory: str, part: int) -> None:
    os.makedirs(directory, exist_ok=True)
    pq.write_table(table, os.path.join(directory, f"part-{part:05d}.parquet"))


# --- the tasks ----------------------------------------------------------------------------------------------


@dataclass
class Day:
    """What a bucket's lines are classified against: the day's dimension keys, rates and unique-rule
    conflicts, and how personal data shows in quarantine."""

    dims: Mapping[str, set[Any]]
    rates: Mapping[str, Decimal] | None
    conflicts: Mapping[str, set[str]]
    masks: Mapping[str, Any]


def _chunks(files: Sequence[str], bucket_rows: int) -> list[tuple[str, list[int]]]:
    """(file, row groups) pieces of about ``bucket_rows`` rows (or one row group): what one task reads."""
    pieces = []
    for path in files:
        meta = pq.read_metadata(path)
        groups: list[int] = []
        rows = 0
        for i in range(meta.num_row_groups):
            groups.append(i)
            rows += meta.row_group(i).num_rows
            if rows >= bucket_rows:
                pieces.append((path, groups))
                groups, rows = [], 0
        if groups or meta.num_row_groups == 0:
            pieces.append((path, groups))
    return pieces


def _read_staged(path: str, groups: list[int] | None, columns: Sequence[str]) -> pa.Table:
    """A staged file (or some of its row groups) as text, with every column of ``columns`` (a column the
    file lacks is null: Spark's merged schema)."""
    table = pq.ParquetFile(path).read_row_groups(groups) if groups is not None else pq.read_table(path)
    arrays = [
        table.column(c).cast(pa.string())
        if c in table.column_names
        else pa.nulls(table.num_rows, pa.string())
        for c in columns
    ]
    return pa.Table.from_arrays(arrays, names=list(columns))


def _empty_staged(columns: Sequence[str]) -> pa.Table:
    return pa.Table.from_arrays([pa.array([], pa.string()) for _ in columns], names=list(columns))


def _text_frame(table: pa.Table) -> pd.DataFrame:
    return pd.DataFrame({c: table.column(c).to_pandas().astype(object) for c in table.column_names})


def _read_all(files: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    staged = list(_staged_columns(files) or columns)
    tables = [_read_staged(f, None, staged) for f in files]
    return _text_frame(pa.concat_tables(tables) if tables else _empty_staged(staged))


def _dump(frame: pd.DataFrame, path: str, decimals: Mapping[str, pa.DataType]) -> None:
    """Between tasks through the job's private work dir, as Arrow IPC: fast, and the pandas metadata brings
    the exact dtypes back (nullable integers and booleans; Decimal from a decimal column)."""
    typed = {c: decimals[c] for c in frame.columns if c in decimals and frame[c].dtype == object}
    table = pa.Table.from_pandas(frame.drop(columns=list(typed)), preserve_index=False)
    for column, decimal_type in typed.items():
        try:
            values = pa.array(frame[column], type=decimal_type, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # not what its type says: Arrow's inference then
            values = pa.array(frame[column], from_pandas=True)
        table = table.append_column(column, values)
    feather.write_feather(table.select(list(frame.columns)), path, compression="uncompressed")


def _load(path: str) -> pd.DataFrame:
    return feather.read_table(path).to_pandas()


def task_split(plan: Plan, path: str, groups: list[int], piece: int, buckets: int, scratch: str) -> int:
    """Write one chunk of staged lines, as staged, to the buckets of their order ids."""
    table = _read_staged(path, groups, plan.staged)
    bucket = _buckets_of(table, plan, buckets)
    for b in range(buckets):
        part = table.filter(pa.array(bucket == b))
        feather.write_feather(
            part, os.path.join(scratch, f"split-{b}-{piece}.arrow"), compression="uncompressed"
        )
    return table.num_rows


def task_prepare(plan: Plan, bucket: int, pieces: int, scratch: str) -> dict[str, Any]:
    """A bucket's lines prepared and kept for :func:`task_classify`; returns its part of the unique-rule
    counts and of the dimensions derived from the kept lines."""
    lines, result = _prepare(plan, bucket, pieces, scratch)
    _dump(lines, os.path.join(scratch, f"prepared-{bucket}.arrow"), plan.decimals)
    return result


def task_prepare_and_classify(
    plan: Plan, bucket: int, pieces: int, scratch: str, output_dir: str, day: Day
) -> dict[str, Any]:
    """Both steps in one task, the prepared lines kept in memory, when classifying needs nothing of the
    other buckets (:attr:`Plan.day_wide`)."""
    lines, _ = _prepare(plan, bucket, pieces, scratch)
    return _classify(plan, bucket, lines, scratch, output_dir, day)


def _prepare(plan: Plan, bucket: int, pieces: int, scratch: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A bucket's lines: duplicates marked, source defaults, line numbers, currency, line type; its part
    of the unique-rule counts and of the dimensions derived from the kept lines."""
    options, retail = plan.options, plan.options.retail
    parts = [feather.read_table(os.path.join(scratch, f"split-{bucket}-{p}.arrow")) for p in range(pieces)]
    staged = pa.concat_tables(parts) if parts else _empty_staged(plan.staged)
    lines = plan.lines.validate(_text_frame(staged))
    spec = options.inputs["order_lines"]
    lines = mark_duplicates(lines, list(spec["key"]), spec.get("version_column"))
    # Unique rules compare the values as validated (before defaults and upper-casing), as the Spark job does.
    unique_keys = {i: _unique_keys(lines, rule, plan) for i, (rule, _) in enumerate(plan.unique_rules)}
    with_source_defaults(lines, retail, options.reporting_currency)
    if retail.line_number_from == "row":
        with_row_line_numbers(lines)
    lines["currency"] = per_value(lines["currency"], str.upper)
    with_line_type(lines, retail)
    kept = lines[~lines[DUP_COL].to_numpy(dtype=bool)]
    result: dict[str, Any] = {"unique": {}}
    for i, (rule, _) in enumerate(plan.unique_rules):
        keys = unique_keys[i]
        lines[f"_ukey{i}"] = keys
        result["unique"][rule["code"]] = keys.dropna().value_counts().to_dict()
    if retail.products_from_lines:
        result["products"] = derived_products(kept, retail.product_name_from)
    if retail.stores_from_lines:
        result["stores"] = derived_stores(kept, retail.store_country_from)
    return lines, result


def _unique_keys(lines: pd.DataFrame, rule: Mapping[str, Any], plan: Plan) -> pd.Series:
    """The values a unique rule compares, as a tuple, on the rows it checks (kept, its `when` true, no
    null): None elsewhere. Counted across buckets; two or more of one tuple conflict."""
    checked = rule_when(rule, lines, plan.types) & ~lines[DUP_COL].to_numpy(dtype=bool)
    for column in rule["columns"]:
        checked &= lines[column].notna().to_numpy()
    keys = pd.Series([None] * len(lines), dtype=object)
    if checked.any():
        values = list(zip(*[lines.loc[checked, c].astype(object) for c in rule["columns"]], strict=True))
        keys[checked] = [repr(v) for v in values]
    return keys


def task_classify(plan: Plan, bucket: int, scratch: str, output_dir: str, day: Day) -> dict[str, Any]:
    """A bucket's prepared lines classified (:func:`_classify`)."""
    lines = _load(os.path.join(scratch, f"prepared-{bucket}.arrow"))
    return _classify(plan, bucket, lines, scratch, output_dir, day)


def _classify(
    plan: Plan, bucket: int, lines: pd.DataFrame, scratch: str, output_dir: str, day: Day
) -> dict[str, Any]:
    """A bucket's lines classified: its quarantined lines written, its accepted lines kept for the sales
    lines; returns its counts and its parts of the day-wide outputs."""
    retail = plan.options.retail
    lines = classify(lines, plan, day.dims, day.rates, day.conflicts)
    rejected = lines[plan.checks.quarantined(lines)].reset_index(drop=True)
    rules = plan.options.inputs["order_lines"].get("rules") or ()
    records = quarantine_records(
        rejected,
        plan.checks.reasons(rejected),
        "order_lines",
        {**LINE_REASON_COLUMNS, MISSING_BUSINESS_DATE: plan.date_column},
        [*rules, *line_reference_rules(rules)],
        day.masks.get("order_lines"),
    )
    write_output(to_arrow(records, contract.QUARANTINE), os.path.join(output_dir, "quarantine"), bucket)
    accepted = lines[plan.checks.accepted(lines)].reset_index(drop=True)
    # Kept for the last step as what it writes (the links of returns still to set), and as the columns
    # that find a return's purchase.
    sales = to_arrow(accepted, CONTRACT.output("sales_lines"))
    feather.write_feather(sales, os.path.join(scratch, f"sales-{bucket}.arrow"), compression="uncompressed")
    _dump(accepted[list(LINK_COLUMNS)], os.path.join(scratch, f"purchases-{bucket}.arrow"), plan.decimals)
    result: dict[str, Any] = {
        "counts": row_counts(lines, plan.checks),
        "customers": customer_parts(accepted),
        "returns": return_lines(accepted),
    }
    if retail.products_from_lines:
        result["products"] = derived_products(accepted, retail.product_name_from)
    if retail.stores_from_lines:
        result["stores"] = derived_stores(accepted, retail.store_country_from)
    return result


def task_links(bucket: int, scratch: str, returns: pd.DataFrame) -> pd.DataFrame:
    return link_candidates(_load(os.path.join(scratch, f"purchases-{bucket}.arrow")), returns)


def task_write(bucket: int, scratch: str, output_dir: str, links: pd.DataFrame) -> None:
    """A bucket's sales lines, with the links of its returns, as a part file. An original order the source
    names (a declared ``original_order_id``) wins over the link."""
    sales = feather.read_table(os.path.join(scratch, f"sales-{bucket}.arrow"))
    if not links.empty:
        keys = pd.DataFrame(
            {
                "order_id": sales["order_id"].to_pandas(),
                "line_number": sales["line_number"].to_pandas().astype("Int64"),
            }
        )
        links = links[["order_id", "line_number", "_orig_order"]].astype({"line_number": "Int64"})
        found = keys.merge(links, on=["order_id", "line_number"], how="left")["_orig_order"]
        linked = pa.array(found.astype(object).where(found.notna(), None).tolist(), pa.string())
        at = sales.schema.get_field_index("original_order_id")
        sales = sales.set_column(at, "original_order_id", pc.coalesce(sales["original_order_id"], linked))
    write_output(sales, os.path.join(output_dir, "sales_lines"), bucket)


# --- masters: products, stores, rates (a day's export: one task each) ---------------------------------------


@dataclass
class Master:
    name: str
    prepared: pd.DataFrame
    checks: Checks
    rules: list[dict[str, Any]]

    @property
    def accepted(self) -> pd.DataFrame:
        return self.prepared[self.checks.accepted(self.prepared)]

    def quarantine(self, masks: Mapping[str, Any] | None) -> pd.DataFrame:
        rejected = self.prepared[self.checks.quarantined(self.prepared)].reset_index(drop=True)
        return quarantine_records(
            rejected, self.checks.reasons(rejected), self.name, rules=self.rules, masks=masks
        )


def prepare_master(name: str, spec: Mapping[str, Any]) -> Master:
    """spark_jobs.sales_daily.prepare_dataset for a dimension or rates export."""
    rules = list(spec.get("rules") or ())
    validation = Validation.plan(spec["columns"], name, rules)
    checks = validation.checks
    unique = [
        (r, checks.add(r["code"], r.get("severity", "reject"))) for r in rules if r["check"] == "unique"
    ]
    frame = validation.validate(_read_all(spec.get("files") or [], list(spec["columns"])))
    frame = mark_duplicates(frame, list(spec["key"]), spec.get("version_column"))
    for rule, column in unique:
        frame[column] = unique_failed(frame, rule, rule_when(rule, frame, validation.types))
    return Master(name, frame, checks, rules)


# --- the job ------------------------------------------------------------------------------------------------


def quarantine_masks(
    input_spec: Mapping[str, Any], key: bytes, customer_key_from: str | None
) -> dict[str, Any]:
    """How personal data shows in a quarantined record (spark_jobs.sales_daily.quarantine_masks)."""
    digest = hmac_hex(key)

    def mask(text: str) -> str | None:
        cleaned = clean_value(text, collapse=True)
        return None if cleaned is None else digest(cleaned.strip(" ").lower())

    masks: dict[str, Any] = {name: mask for name, c in input_spec["columns"].items() if c.get("pii")}
    if customer_key_from:
        masks[customer_key_from] = mask
    for column in input_spec.get("pseudonymised") or ():
        masks[column] = lambda text: text
    for column in input_spec.get("encrypted") or ():
        masks[column] = lambda text: ENCRYPTED_MARK
    return masks


def _compute(tasks: list[Any]) -> list[Any]:
    import dask

    return list(dask.compute(*tasks))


def run_job(
    spec: Mapping[str, Any],
    pseudonym_key: bytes | None = None,
    *,
    scheduler: str | None = None,
    bucket_rows: int = BUCKET_ROWS,
) -> dict:
    """Read the spec's inputs, transform them, write every output under ``output_dir`` and
    ``_result.json``; return it (spark_jobs.sales_daily.run_job's contract). ``scheduler``: the address
    of a dask.distributed scheduler; without one, this machine's cores (:func:`_local_workers`).
    ``bucket_rows``: staged order lines per bucket (tests make it small to split a small day)."""
    import dask

    options = JobOptions.from_spec(spec, pseudonym_key)
    output_dir = spec["output_dir"]
    scratch = os.path.join(output_dir, _SCRATCH)
    os.makedirs(scratch, mode=0o700, exist_ok=True)
    try:
        if scheduler:
            from distributed import Client

            with Client(scheduler, timeout="30s") as client, dask.config.set(scheduler=client):
                return _run_in(options, output_dir, scratch, bucket_rows, _no_pool)
        return _run_in(options, output_dir, scratch, bucket_rows, _local_workers)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def _no_pool(buckets: int) -> Iterator[None]:
    yield


@contextlib.contextmanager
def _local_workers(buckets: int) -> Iterator[None]:
    """Dask's scheduler on this machine: a day of one bucket on threads (nothing to start), a bigger one on
    a pool of processes, one a core: the tasks are pandas code that holds the GIL most of the time, and
    they exchange files and small parts only. The pool is spawned (a fork would copy Arrow's thread pools
    mid-use) once for the day; one task at a time goes to a worker (Dask batches 6 by default)."""
    import dask

    workers = min(os.cpu_count() or 1, buckets)
    if workers < 2:
        with dask.config.set(scheduler="threads"):
            yield
        return
    context = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(workers, mp_context=context) as pool,
        dask.config.set(scheduler="processes", pool=pool, num_workers=workers, chunksize=1),
    ):
        yield


def _run_in(options: JobOptions, output_dir: str, scratch: str, bucket_rows: int, workers: Any) -> dict:
    retail, inputs, key = options.retail, options.inputs, options.pseudonym_key
    plan = Plan.of(options)
    masks = {
        name: quarantine_masks(s, key, retail.customer_key_from if name == "order_lines" else None)
        for name, s in inputs.items()
    }
    line_files = list(inputs["order_lines"].get("files") or [])
    pieces = _chunks(line_files, bucket_rows)
    total = sum(pq.read_metadata(f).num_rows for f in line_files)
    buckets = max(1, math.ceil(total / bucket_rows))
    with workers(buckets):
        return _run_buckets(options, plan, masks, pieces, buckets, output_dir, scratch)


def _run_buckets(
    options: JobOptions,
    plan: Plan,
    masks: Mapping[str, Any],
    pieces: Sequence[tuple[str, list[int]]],
    buckets: int,
    output_dir: str,
    scratch: str,
) -> dict:
    from dask import delayed

    retail, inputs = options.retail, options.inputs
    masters = {
        name: delayed(prepare_master, pure=False)(name, inputs[name])
        for name in ("products", "stores", retail.rates_dataset)
        if name and name in inputs
    }
    # 1. validate and split the lines; prepare the masters meanwhile.
    split = [
        delayed(task_split, pure=False)(plan, p, g, i, buckets, scratch) for i, (p, g) in enumerate(pieces)
    ]
    done = _compute([*split, *masters.values()])
    master = dict(zip(masters, done[len(split) :], strict=True))
    rates = None
    if retail.rates_dataset:
        usable = master[retail.rates_dataset].accepted
        rates = {}
        for currency, rate in zip(per_value(usable["currency"], str.upper), usable["rate"], strict=True):
            if currency is not None and currency not in rates:
                rates[currency] = rate
    if plan.day_wide:
        classified = _prepare_then_classify(
            plan, master, rates, masks, buckets, len(pieces), scratch, output_dir
        )
    else:
        # 2-3. each bucket prepared and classified in one go: the masters are all it compares with.
        dims = {name: set(master[name].accepted[column].dropna()) for name, column in DIMENSION_KEYS}
        day = Day(dims, rates, {}, masks)
        classified = _compute(
            [
                delayed(task_prepare_and_classify, pure=False)(plan, b, len(pieces), scratch, output_dir, day)
                for b in range(buckets)
            ]
        )
    return _finish(options, plan, master, classified, masks, buckets, scratch, output_dir)


def _prepare_then_classify(
    plan: Plan,
    master: Mapping[str, Master],
    rates: Mapping[str, Decimal] | None,
    masks: Mapping[str, Any],
    buckets: int,
    pieces: int,
    scratch: str,
    output_dir: str,
) -> list[dict[str, Any]]:
    from dask import delayed

    retail = plan.options.retail
    # 2. each bucket: duplicates, defaults, line numbers; the day's unique conflicts and derived dimensions.
    prepared = _compute([delayed(task_prepare, pure=False)(plan, b, pieces, scratch) for b in range(buckets)])
    conflicts = {
        rule["code"]: {
            k for k, n in _sum_counts(p["unique"][rule["code"]] for p in prepared).items() if n > 1
        }
        for rule, _ in plan.unique_rules
    }
    dims: dict[str, set[Any]] = {}
    for name, column in DIMENSION_KEYS:
        if _derived(retail, name):
            best = _reduce_dimension([p[name] for p in prepared], name)
            dims[name] = set(best[column].dropna())
        else:
            dims[name] = set(master[name].accepted[column].dropna())
    # 3. classify every bucket; counts and the day-wide parts.
    day = Day(dims, rates, conflicts, masks)
    return _compute(
        [delayed(task_classify, pure=False)(plan, b, scratch, output_dir, day) for b in range(buckets)]
    )


def _finish(
    options: JobOptions,
    plan: Plan,
    master: Mapping[str, Master],
    classified: Sequence[dict[str, Any]],
    masks: Mapping[str, Any],
    buckets: int,
    scratch: str,
    output_dir: str,
) -> dict:
    """4. The links of the returns, the line outputs, and what is reduced from the buckets' parts."""
    from dask import delayed

    retail = options.retail
    returns = _concat([c["returns"] for c in classified])
    links = (
        links_reduce(_compute([delayed(task_links, pure=False)(b, scratch, returns) for b in range(buckets)]))
        if not returns.empty
        else pd.DataFrame()
    )
    _compute([delayed(task_write, pure=False)(b, scratch, output_dir, links) for b in range(buckets)])

    datasets = {"order_lines": merge_counts([c["counts"] for c in classified])}
    small: dict[str, pd.DataFrame] = {"customers": customers_output([c["customers"] for c in classified])}
    quarantine_parts = []
    for name in ("products", "stores"):
        if name in master:
            m = master[name]
            datasets[name] = row_counts(m.prepared, m.checks)
            small[name] = m.accepted
            quarantine_parts.append(m.quarantine(masks.get(name)))
        else:
            best = _reduce_dimension([c[name] for c in classified], name)
            small[name] = products_output(best) if name == "products" else stores_output(best)
    if retail.rates_dataset:
        m = master[retail.rates_dataset]
        datasets[retail.rates_dataset] = row_counts(m.prepared, m.checks)
        quarantine_parts.append(m.quarantine(masks.get(retail.rates_dataset)))
    for name, frame in small.items():
        write_output(to_arrow(frame, CONTRACT.output(name)), os.path.join(output_dir, name), 0)
    for i, frame in enumerate(quarantine_parts):
        write_output(
            to_arrow(frame, contract.QUARANTINE), os.path.join(output_dir, "quarantine"), buckets + i
        )

    outputs = {o.name: parquet_row_count(os.path.join(output_dir, o.name)) for o in CONTRACT.outputs}
    result = {
        "datasets": datasets,
        "outputs": outputs,
        "pseudonym_key_fingerprint": contract.pseudonym_key_fingerprint(options.pseudonym_key),
    }
    _check_conservation(result)
    _write_json_atomically(os.path.join(output_dir, "_result.json"), result)
    return result


def _sum_counts(parts: Any) -> dict[Any, int]:
    total: dict[Any, int] = {}
    for part in parts:
        for k, n in part.items():
            total[k] = total.get(k, 0) + n
    return total


def _concat(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The buckets' parts as one frame; empty parts left out (their all-null columns would decide no
    dtype), one kept when all are."""
    parts = list(parts)
    return pd.concat([p for p in parts if len(p)] or parts[:1], ignore_index=True)


def _reduce_dimension(parts: Sequence[pd.DataFrame], name: str) -> pd.DataFrame:
    frame = _concat(parts)
    column, value = ("sku", "_name") if name == "products" else ("store_code", "_country")
    frame["ordered_at"] = frame["ordered_at"].astype("Int64")
    keys = [
        frame[value].isna().to_numpy().astype(np.int64),
        _desc_nulls_last(frame["ordered_at"]),
        sort_codes(frame[value]),
    ]
    return _first(frame, [column], keys).reset_index(drop=True)


# --- entry point --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Each ``--spec`` in turn in this process (spark_jobs.sales_daily.main's contract): ``_result.json``
    or ``_failed.json`` per date; exit 0 when all succeeded, 1 when one failed, 2 when a spec cannot be
    read or the key is missing."""
    parser = argparse.ArgumentParser(prog=JOB_NAME, description="Daily retail sales transform on Dask.")
    parser.add_argument(
        "--spec", action="append", required=True, help="path of a job spec JSON; repeat for several dates"
    )
    parser.add_argument(
        "--scheduler", help="address of a dask.distributed scheduler (default: this machine's cores)"
    )
    args = parser.parse_args(argv)
    try:
        specs, key = specs_read(args.spec)
    except SpecsUnreadable as exc:
        print(f"{JOB_NAME}: {exc}", file=sys.stderr)
        return 2
    return specs_run(
        JOB_NAME, specs, key, lambda spec: run_job(spec, pseudonym_key=key, scheduler=args.scheduler)
    )


if __name__ == "__main__":
    sys.exit(main())
