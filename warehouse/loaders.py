"""Load one transformed partition into the star schema, atomically and idempotently.

Everything for one (pipeline, business date) happens in one `transaction.atomic(using=alias)`:
dimensions are upserted on their natural keys (so surrogate keys never change), facts of the date are
upserted on their natural keys and the date's rows that the new partition no longer holds are deleted,
and the partition's quarantined records replace the previous ones. Loading a date twice leaves the
warehouse exactly as it was.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from django.db import models, transaction

from .models import (
    DimCustomer,
    DimDate,
    DimProduct,
    DimStore,
    FactDailySales,
    FactSalesLine,
    QuarantinedRow,
)

BATCH_ROWS = 5_000
# SQLite limits bound parameters per statement; chunk `IN (...)` look-ups well under it.
LOOKUP_CHUNK = 500


@dataclass
class LoadResult:
    rows_loaded: dict[str, int] = field(default_factory=dict)
    rows_deleted: dict[str, int] = field(default_factory=dict)

    @property
    def fact_rows(self) -> int:
        return self.rows_loaded.get("sales_lines", 0)


def date_key(day: date) -> int:
    return day.year * 10_000 + day.month * 100 + day.day


def dim_date_row(day: date) -> DimDate:
    return DimDate(
        date_key=date_key(day),
        date=day,
        year=day.year,
        quarter=(day.month - 1) // 3 + 1,
        month=day.month,
        day=day.day,
        day_of_week=day.isoweekday(),
        is_weekend=day.isoweekday() >= 6,
    )


def partition_load(
    *,
    outputs: dict[str, Sequence[Path]],
    pipeline: str,
    business_date: date,
    run_id: int | None,
    using: str,
) -> LoadResult:
    """Load the transform outputs (output name -> Parquet files) for one business date."""
    result = LoadResult()
    with transaction.atomic(using=using):
        _upsert(using, DimDate, [dim_date_row(business_date)], ["date_key"])
        result.rows_loaded["stores"] = _load_dimension(using, DimStore, "store_code", outputs["stores"])
        result.rows_loaded["products"] = _load_dimension(using, DimProduct, "sku", outputs["products"])
        result.rows_loaded["customers"] = _load_dimension(
            using, DimCustomer, "customer_key", outputs["customers"]
        )
        dk = date_key(business_date)
        result.rows_loaded["sales_lines"], result.rows_deleted["sales_lines"] = _load_sales_lines(
            using, dk, outputs["sales_lines"]
        )
        result.rows_loaded["daily_sales"], result.rows_deleted["daily_sales"] = _load_daily_sales(
            using, dk, outputs["daily_sales"]
        )
        result.rows_loaded["quarantine"], result.rows_deleted["quarantine"] = _load_quarantine(
            using, pipeline, business_date, run_id, outputs["quarantine"]
        )
    return result


def _load_dimension(using: str, model: type[models.Model], natural_key: str, files: Sequence[Path]) -> int:
    fields = [f.name for f in model._meta.concrete_fields if not f.primary_key]
    rows = 0
    for batch in _read_batches(files):
        objs = [model(**{name: rec[name] for name in fields}) for rec in batch]
        _upsert(using, model, objs, [natural_key])
        rows += len(objs)
    return rows


def _load_sales_lines(using: str, dk: int, files: Sequence[Path]) -> tuple[int, int]:
    kept: set[tuple[str, int]] = set()
    rows = 0
    for batch in _read_batches(files):
        stores = _key_map(using, DimStore, "store_code", {r["store_code"] for r in batch})
        products = _key_map(using, DimProduct, "sku", {r["sku"] for r in batch})
        customers = _key_map(
            using, DimCustomer, "customer_key", {r["customer_key"] for r in batch if r["customer_key"]}
        )
        objs = [
            FactSalesLine(
                order_id=r["order_id"],
                line_number=r["line_number"],
                date_id=dk,
                store_id=stores[r["store_code"]],
                product_id=products[r["sku"]],
                customer_id=customers[r["customer_key"]] if r["customer_key"] else None,
                ordered_at=_aware(r["ordered_at"]),
                quantity=r["quantity"],
                unit_price=r["unit_price"],
                amount=r["amount"],
                currency=r["currency"],
                is_return=r["is_return"],
            )
            for r in batch
        ]
        _upsert(using, FactSalesLine, objs, ["order_id", "line_number"])
        kept.update((o.order_id, o.line_number) for o in objs)
        rows += len(objs)
    stale = FactSalesLine.objects.using(using).filter(date_id=dk)
    return rows, _delete_not_kept(using, stale, ("order_id", "line_number"), kept)


def _load_daily_sales(using: str, dk: int, files: Sequence[Path]) -> tuple[int, int]:
    kept: set[tuple[int, int]] = set()
    rows = 0
    for batch in _read_batches(files):
        stores = _key_map(using, DimStore, "store_code", {r["store_code"] for r in batch})
        products = _key_map(using, DimProduct, "sku", {r["sku"] for r in batch})
        objs = [
            FactDailySales(
                date_id=dk,
                store_id=stores[r["store_code"]],
                product_id=products[r["sku"]],
                quantity=r["quantity"],
                revenue=r["revenue"],
                line_count=r["line_count"],
                order_count=r["order_count"],
            )
            for r in batch
        ]
        _upsert(using, FactDailySales, objs, ["date", "store", "product"])
        kept.update((o.store_id, o.product_id) for o in objs)
        rows += len(objs)
    stale = FactDailySales.objects.using(using).filter(date_id=dk)
    return rows, _delete_not_kept(using, stale, ("store_id", "product_id"), kept)


def _load_quarantine(
    using: str, pipeline: str, business_date: date, run_id: int | None, files: Sequence[Path]
) -> tuple[int, int]:
    # Identical rejected records (exact duplicates of a bad row) share a fingerprint: count, not repeat.
    by_fingerprint: dict[tuple[str, str], dict[str, Any]] = {}
    for batch in _read_batches(files):
        for r in batch:
            seen = by_fingerprint.get((r["dataset"], r["record_fingerprint"]))
            if seen is None:
                by_fingerprint[(r["dataset"], r["record_fingerprint"])] = {**r, "occurrences": 1}
            else:
                seen["occurrences"] += 1
    objs = [
        QuarantinedRow(
            pipeline=pipeline,
            business_date=business_date,
            dataset=r["dataset"],
            reason_code=r["reason_code"],
            message=r["message"],
            raw_record=r["raw_record"],
            record_fingerprint=r["record_fingerprint"],
            occurrences=r["occurrences"],
            first_run_id=run_id,
        )
        for r in by_fingerprint.values()
    ]
    # first_run is left out of the update: a re-run must not rewrite which run first saw the record.
    _upsert(
        using,
        QuarantinedRow,
        objs,
        ["pipeline", "business_date", "dataset", "record_fingerprint"],
        exclude_from_update={"first_run"},
    )
    stale = QuarantinedRow.objects.using(using).filter(pipeline=pipeline, business_date=business_date)
    return len(objs), _delete_not_kept(using, stale, ("dataset", "record_fingerprint"), by_fingerprint.keys())


def _upsert(
    using: str,
    model: type[models.Model],
    objs: list[models.Model],
    unique_fields: list[str],
    *,
    exclude_from_update: Iterable[str] = (),
) -> None:
    if not objs:
        return
    skip = set(unique_fields) | set(exclude_from_update)
    update_fields = [f.name for f in model._meta.concrete_fields if not f.primary_key and f.name not in skip]
    model.objects.using(using).bulk_create(
        objs,
        batch_size=1_000,
        update_conflicts=bool(update_fields),
        ignore_conflicts=not update_fields,
        unique_fields=unique_fields if update_fields else None,
        update_fields=update_fields or None,
    )


def _key_map(using: str, model: type[models.Model], natural_key: str, values: set[Any]) -> dict[Any, int]:
    found: dict[Any, int] = {}
    ordered = sorted(values)
    for start in range(0, len(ordered), LOOKUP_CHUNK):
        chunk = ordered[start : start + LOOKUP_CHUNK]
        found.update(
            model.objects.using(using).filter(**{f"{natural_key}__in": chunk}).values_list(natural_key, "pk")
        )
    missing = values - found.keys()
    if missing:
        # The transform only emits facts whose dimensions it also emitted; this means a broken partition.
        sample = ", ".join(map(str, sorted(missing)[:5]))
        raise ValueError(f"{model._meta.label}: no row for {natural_key} {sample}")
    return found


def _delete_not_kept(
    using: str, partition: models.QuerySet, key_fields: tuple[str, ...], kept: Container[tuple]
) -> int:
    """Delete the partition's rows whose natural key the new load did not write."""
    ids = [pk for pk, *key in partition.values_list("pk", *key_fields) if tuple(key) not in kept]
    deleted = 0
    for start in range(0, len(ids), LOOKUP_CHUNK):
        chunk = ids[start : start + LOOKUP_CHUNK]
        deleted += partition.model.objects.using(using).filter(pk__in=chunk).delete()[0]
    return deleted


def _read_batches(files: Sequence[Path]) -> Iterator[list[dict[str, Any]]]:
    for path in files:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
            yield batch.to_pylist()


def _aware(value: datetime) -> datetime:
    # Spark writes timestamps as UTC instants; pyarrow may hand them back naive.
    return value if value.tzinfo else value.replace(tzinfo=UTC)
