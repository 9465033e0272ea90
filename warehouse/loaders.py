"""Load one transformed partition into the star schema, atomically and idempotently.

Everything for one (pipeline, business date) happens in one `transaction.atomic(using=alias)`:
dimensions with history (stores, products) gain a version where the date's snapshot differs from the
version valid on that date, the others are upserted on their natural keys; facts of the date join the
version valid on the date, are upserted on their natural keys, and the date's rows that the new partition
no longer holds are deleted; the partition's quarantined records replace the previous ones. A date loaded
before later ones may also update those dates' facts: the dimension version they point to, and the return
links the loader made. Loading a date twice leaves the warehouse exactly as it was, and dates load in any
order (docs/loading.md).

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

from django.db import connections, transaction

from .loading import portable, postgres
from .loading.portable import MissingDimensionError
from .loading.specs import DIMENSIONS, FACTS, date_key, dim_date_row, fault_point

__all__ = ["LoadResult", "MissingDimensionError", "date_key", "dim_date_row", "partition_load"]

Strategy = Literal["auto", "copy", "portable"]


@dataclass
class LoadResult:
    rows_loaded: dict[str, int] = field(default_factory=dict)
    rows_deleted: dict[str, int] = field(default_factory=dict)
    strategy: str = ""

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
) -> LoadResult:
    """Load the transform outputs (output name -> Parquet files) for one business date.

    `strategy`: "auto" takes the COPY path on PostgreSQL and the portable path elsewhere; "portable" forces
    the ORM path (the equivalence tests load the same partition both ways)."""
    connection = connections[using]
    if strategy == "auto":
        strategy = "copy" if connection.vendor == "postgresql" else "portable"
    if strategy == "copy" and connection.vendor != "postgresql":
        raise ValueError(f"the COPY load path needs PostgreSQL, not {connection.vendor}")
    with transaction.atomic(using=using):
        if strategy == "copy":
            result = _load_copy(connection, outputs, pipeline, business_date, run_id)
        else:
            result = _load_portable(using, outputs, pipeline, business_date, run_id)
        fault_point("before_commit")
    return result


def _load_copy(connection, outputs, pipeline: str, business_date: date, run_id: int | None) -> LoadResult:
    result = LoadResult(strategy="copy")
    with connection.cursor() as wrapper:
        cursor = wrapper.cursor  # psycopg2's own cursor: COPY and psycopg2.sql compositions
        postgres.lock_partition(cursor, business_date)
        postgres.load_date_row(cursor, connection, business_date)
        for dim in DIMENSIONS:
            result.rows_loaded[dim.output] = postgres.load_dimension(
                cursor, connection, dim, outputs[dim.output], business_date
            )
        fault_point("after_dimensions")
        for fact in FACTS:
            result.rows_loaded[fact.output], result.rows_deleted[fact.output] = postgres.load_fact(
                cursor, connection, fact, business_date, outputs[fact.output]
            )
        result.rows_loaded["quarantine"], result.rows_deleted["quarantine"] = postgres.load_quarantine(
            cursor, connection, pipeline, business_date, run_id, outputs["quarantine"]
        )
    return result


def _load_portable(using: str, outputs, pipeline: str, business_date: date, run_id: int | None) -> LoadResult:
    result = LoadResult(strategy="portable")
    portable.load_date_row(using, business_date)
    for dim in DIMENSIONS:
        result.rows_loaded[dim.output] = portable.load_dimension(
            using, dim, outputs[dim.output], business_date
        )
    fault_point("after_dimensions")
    for fact in FACTS:
        result.rows_loaded[fact.output], result.rows_deleted[fact.output] = portable.load_fact(
            using, fact, business_date, outputs[fact.output]
        )
        fault_point("after_merge")
    result.rows_loaded["quarantine"], result.rows_deleted["quarantine"] = portable.load_quarantine(
        using, pipeline, business_date, run_id, outputs["quarantine"]
    )
    return result
