"""Load one transformed partition into the star schema, atomically and idempotently.

Everything for one (pipeline, partition date) happens in one `transaction.atomic(using=alias)`:
dimensions with history (stores, products) gain a version where the date's snapshot differs from the
version valid on that date, the others are upserted on their natural keys (customers keep their latest
country). A sales line lands on its own business date (the record's, not the partition's), joins the
dimension versions valid on it, and each order is held once per pipeline in the newest version any
partition carried: an order seen again in another partition replaces the stored lines only when its
version is newer (or equal, from an earlier partition). The lines this partition supplied before and no
longer holds are deleted, the daily aggregate is recomputed for every business date the load touched and
checked against the lines, and the partition's quarantined records replace the previous ones. Every row
belongs to its pipeline: a load reads and changes only its own. A date loaded before later ones may also
update those dates' facts:
the dimension version they point to, and the return links the loader made. Loading a partition twice
leaves the warehouse exactly as it was, and partitions load in any order (docs/loading.md).

On PostgreSQL the load streams each output through COPY into a temporary table and merges it set-wise
(`warehouse.loading.postgres`); elsewhere it uses the ORM's bulk_create (`warehouse.loading.portable`).
Both apply the semantics of `warehouse.loading.specs` and leave the same warehouse (docs/loading.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Literal

from django.db import connections, models, transaction

from .errors import LoadStrategyError, MissingDimensionError, PseudonymKeyMismatchError
from .loading import portable, postgres
from .loading.specs import (
    DAILY_SALES,
    DIMENSIONS,
    FACTS,
    FactLoad,
    business_dates,
    date_key,
    dim_date_row,
    fault_point,
)
from .models import DimDate, LoadedPartition, PseudonymKey, QuarantinedRow

__all__ = [
    "LoadResult",
    "MissingDimensionError",
    "date_key",
    "dim_date_row",
    "loaded_models",
    "partition_load",
]

Strategy = Literal["auto", "copy", "portable"]


@dataclass
class LoadResult:
    rows_loaded: dict[str, int] = field(default_factory=dict)
    rows_deleted: dict[str, int] = field(default_factory=dict)
    strategy: str = ""
    facts: dict[str, FactLoad] = field(default_factory=dict)

    def record_fact(self, output: str, load: FactLoad) -> None:
        self.facts[output] = load
        self.rows_loaded[output] = load.rows
        self.rows_deleted[output] = load.deleted

    @property
    def fact_rows(self) -> int:
        return self.rows_loaded.get("sales_lines", 0)


def partition_load(
    *,
    outputs: dict[str, Sequence[Path]],
    pipeline: str,
    business_date: date,
    run_id: int | None,
    using: str,
    strategy: Strategy = "auto",
    key_fingerprint: str | None = None,
) -> LoadResult:
    """Load the transform outputs (output name -> Parquet files) for one business date.

    `strategy`: "auto" takes the COPY path on PostgreSQL and the portable path elsewhere; "portable" forces
    the ORM path (the equivalence tests load the same partition both ways). `key_fingerprint`: the pseudonym
    key the partition's customer keys were made with; the first load records it, a different one is
    refused (None, from a partition written before fingerprints, is not checked)."""
    connection = connections[using]
    if strategy == "auto":
        strategy = "copy" if connection.vendor == "postgresql" else "portable"
    if strategy == "copy" and connection.vendor != "postgresql":
        raise LoadStrategyError(f"the COPY load path needs PostgreSQL, not {connection.vendor}")
    with transaction.atomic(using=using):
        if strategy == "copy":
            with connection.cursor() as cursor:  # before the partition's rows, as every load of it
                postgres.lock_partition(cursor.cursor, pipeline, business_date)
        if key_fingerprint is not None:
            pseudonym_key_check(using, pipeline, key_fingerprint)
        _record_partition(using, pipeline, business_date)
        if strategy == "copy":
            result = _load_copy(connection, outputs, pipeline, business_date, run_id)
        else:
            result = _load_portable(using, outputs, pipeline, business_date, run_id)
        fault_point("before_commit")
    return result


def loaded_models() -> list[type[models.Model]]:
    """Every model a load may write a row of (what `manage.py <step> --dry-run` names as its tables)."""
    return [
        DimDate,
        LoadedPartition,
        PseudonymKey,
        *(dim.model for dim in DIMENSIONS),
        *(fact.model for fact in FACTS),
        DAILY_SALES.model,
        QuarantinedRow,
    ]


def _load_copy(connection, outputs, pipeline: str, business_date: date, run_id: int | None) -> LoadResult:
    result = LoadResult(strategy="copy")
    with connection.cursor() as wrapper:
        cursor = wrapper.cursor  # psycopg2's own cursor: COPY and psycopg2.sql compositions
        for day in _dates_to_hold(outputs, business_date):
            postgres.load_date_row(cursor, connection, day)
        for dim in DIMENSIONS:
            result.rows_loaded[dim.output] = postgres.load_dimension(
                cursor, connection, dim, pipeline, outputs[dim.output], business_date
            )
        fault_point("after_dimensions")
        for fact in FACTS:
            result.record_fact(
                fact.output,
                postgres.load_fact(cursor, connection, fact, pipeline, business_date, outputs[fact.output]),
            )
        result.rows_loaded["quarantine"], result.rows_deleted["quarantine"] = postgres.load_quarantine(
            cursor, connection, pipeline, business_date, run_id, outputs["quarantine"]
        )
    return result


def _load_portable(using: str, outputs, pipeline: str, business_date: date, run_id: int | None) -> LoadResult:
    result = LoadResult(strategy="portable")
    for day in _dates_to_hold(outputs, business_date):
        portable.load_date_row(using, day)
    for dim in DIMENSIONS:
        result.rows_loaded[dim.output] = portable.load_dimension(
            using, dim, pipeline, outputs[dim.output], business_date
        )
    fault_point("after_dimensions")
    for fact in FACTS:
        result.record_fact(
            fact.output, portable.load_fact(using, fact, pipeline, business_date, outputs[fact.output])
        )
        fault_point("after_merge")
    result.rows_loaded["quarantine"], result.rows_deleted["quarantine"] = portable.load_quarantine(
        using, pipeline, business_date, run_id, outputs["quarantine"]
    )
    return result


def _dates_to_hold(outputs: dict[str, Sequence[Path]], partition_date: date) -> list[date]:
    """DimDate rows the load needs: the partition's date (its dimension snapshot) and its lines' dates."""
    days = {partition_date}
    for fact in FACTS:
        days.update(business_dates(outputs[fact.output]))
    return sorted(days)


def pseudonym_key_check(using: str, pipeline: str, fingerprint: str) -> None:
    """Record the pipeline's pseudonym key fingerprint on its first load; refuse a load under another key.
    The row is locked until the load commits, so two first loads under two keys cannot both pass."""
    held, _ = (
        PseudonymKey.objects.using(using)
        .select_for_update()
        .get_or_create(pipeline=pipeline, defaults={"fingerprint": fingerprint})
    )
    if held.fingerprint != fingerprint:
        raise PseudonymKeyMismatchError(pipeline, warehouse=held.fingerprint, given=fingerprint)


def _record_partition(using: str, pipeline: str, partition_date: date) -> None:
    """The pipeline has loaded this partition: its dimension snapshots bound later backfills' versions."""
    LoadedPartition.objects.using(using).get_or_create(pipeline=pipeline, date=partition_date)
