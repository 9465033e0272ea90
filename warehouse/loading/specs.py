"""What each transform output means for the warehouse, read by both load paths.

The models stay the single definition of the schema: column names and types come from `_meta`; a spec only
adds what the models cannot say (which output fills which table, and which staging column carries the
natural key of which dimension).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
from django.db import models
from django.db.backends.base.operations import BaseDatabaseOperations

from ..models import (
    DimCustomer,
    DimDate,
    DimProduct,
    DimStore,
    FactDailySales,
    FactSalesLine,
    QuarantinedRow,
)

# A fact's business date (DimDate), from its staging column `DATE_COLUMN`: the record's own date, which
# need not be the partition's (docs/loading.md#exactly-once-across-partitions).
PARTITION_FIELD = "date"
DATE_COLUMN = "business_date"
# Every fact row belongs to one pipeline: a load changes and deletes only its own pipeline's rows.
PIPELINE_FIELD = "pipeline"
# The partition that supplied a line's version, and that version: the greatest version wins, on a tie the
# earliest partition (a re-sent unchanged record keeps the partition, and rates, of its first extraction).
SOURCE_DATE_FIELD = "source_date"
SOURCE_VERSION_FIELD = "source_version"
# The validity of a dimension version (warehouse.models.Versioned): kept by the loader, not staged.
VALIDITY_FIELDS = ("valid_from", "valid_to", "is_current")
# How far back the loader looks for the purchase a return line returns (docs/retail-semantics.md): a year
# covers any return policy, and bounds the look-up to the dates an index scan has to visit.
RETURN_LOOKBACK_DAYS = 365
# Marks a return's original_order_id as the loader's look-up, which later loads of earlier dates revisit.
LINKED_BY_LOADER = "linked_by_loader"


@dataclass(frozen=True)
class Dimension:
    output: str
    model: type[models.Model]
    natural_key: str
    # Type 2: every attribute is tracked, a change starts a new version (docs/loading.md#dimension-history).
    # False: type 1, the member's one row takes the latest values: with `latest_by`, those of the staged
    # row whose `latest_by` is greatest (ties: the smaller attributes), across partitions in any load
    # order; a staged row without one never replaces a stored row.
    history: bool = False
    latest_by: str | None = None
    # Columns a member takes once: set on insert, or when stored null, never replaced, never compared. For
    # values that differ at every extraction though they mean the same (a Fernet token of the e-mail): a
    # re-run or another partition must not change the row (a type 2 dimension would not version on them).
    kept: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kept and self.history:
            raise ValueError(
                f"{self.output}: `kept` columns are for type 1 dimensions (no versions to carry)"
            )

    @property
    def columns(self) -> list[str]:
        """Staging columns: every concrete field but the surrogate key, the pipeline and the validity, named
        as in the model."""
        return [
            f.name
            for f in self.model._meta.concrete_fields
            if not f.primary_key and f.name not in (*VALIDITY_FIELDS, PIPELINE_FIELD)
        ]

    @property
    def attributes(self) -> list[str]:
        """The descriptive columns, `kept` ones aside; with history, the tracked ones."""
        return [c for c in self.columns if c != self.natural_key and c not in self.kept]


@dataclass(frozen=True)
class Reference:
    """A fact's foreign key, given in staging by the dimension's natural key (e.g. store <- store_code)."""

    field: str
    column: str

    def dimension(self, fact: type[models.Model]) -> type[models.Model]:
        return fact._meta.get_field(self.field).related_model

    def nullable(self, fact: type[models.Model]) -> bool:
        return fact._meta.get_field(self.field).null

    def history(self, fact: type[models.Model]) -> bool:
        """Whether the dimension keeps versions: the fact then joins the version valid on its date."""
        return dimension_spec(self.dimension(fact)).history


@dataclass(frozen=True)
class Fact:
    output: str
    model: type[models.Model]
    unique_fields: tuple[str, ...]
    references: tuple[Reference, ...]
    # Sales lines: a return the job left unlinked is linked to its purchase on an earlier date, looked up
    # in the warehouse before the merge; a later load of an earlier date revisits such links
    # (docs/retail-semantics.md#returns-and-cancellations).
    links_returns: bool = False
    # The column whose rows are versioned together: a partition's version of an order replaces every line
    # of the order, so a line a newer version dropped leaves the warehouse (docs/loading.md).
    versioned_by: str = "order_id"

    @property
    def computed(self) -> list[str]:
        """Columns the loader sets, not in staging (merged with the attributes); the pipeline is set too."""
        return [SOURCE_DATE_FIELD, *([LINKED_BY_LOADER] if self.links_returns else [])]

    @property
    def attributes(self) -> list[str]:
        """Columns copied as they are from staging to the fact table."""
        skip = {PARTITION_FIELD, PIPELINE_FIELD, *(r.field for r in self.references), *self.computed}
        return [f.name for f in self.model._meta.concrete_fields if not f.primary_key and f.name not in skip]

    @property
    def staging_columns(self) -> list[str]:
        return [*self.attributes, DATE_COLUMN, *(r.column for r in self.references)]

    @property
    def row_key(self) -> tuple[str, ...]:
        """The natural key within the pipeline (the unique fields, minus the pipeline)."""
        return tuple(f for f in self.unique_fields if f != PIPELINE_FIELD)

    def reference(self, field: str) -> Reference | None:
        return next((r for r in self.references if r.field == field), None)


DIMENSIONS = (
    Dimension("stores", DimStore, "store_code", history=True),
    Dimension("products", DimProduct, "sku", history=True),
    Dimension(
        "customers", DimCustomer, "customer_key", latest_by="country_seen_at", kept=("email_encrypted",)
    ),
)
SALES_LINES = Fact(
    "sales_lines",
    FactSalesLine,
    unique_fields=(PIPELINE_FIELD, "order_id", "line_number"),
    references=(
        Reference("store", "store_code"),
        Reference("product", "sku"),
        Reference("customer", "customer_key"),
    ),
    links_returns=True,
)
FACTS = (SALES_LINES,)


@dataclass(frozen=True)
class DailyAggregate:
    """FactDailySales: the product lines of SALES_LINES per pipeline, business date, store and product,
    recomputed by the loader for every date a load touches (never staged, so never out of step)."""

    model: type[models.Model] = FactDailySales
    group_by: tuple[str, ...] = (PIPELINE_FIELD, PARTITION_FIELD, "store", "product")
    line_type: str = "product"

    @property
    def references(self) -> tuple[str, ...]:
        return ("store", "product")


DAILY_SALES = DailyAggregate()


def dimension_references() -> list[tuple[type[models.Model], str]]:
    """(fact model, foreign key field) of every fact row that points at a dimension version."""
    refs = [(fact.model, ref.field) for fact in FACTS for ref in fact.references]
    return refs + [(DAILY_SALES.model, field) for field in DAILY_SALES.references]


QUARANTINE_OUTPUT = "quarantine"
# Columns of the quarantine output; identical records (same dataset and fingerprint) become one row.
QUARANTINE_COLUMNS = ("dataset", "record_fingerprint", "reason_code", "message", "raw_record")


# The values an integer field holds, by field class (Django's own table; every backend agrees on these).
INTEGER_RANGES: Mapping[str, tuple[int, int]] = BaseDatabaseOperations.integer_field_ranges


def field_constraint(field: models.Field) -> dict[str, Any]:
    """What a model field accepts, as the Spark job's spec carries it: the warehouse column's name, whether
    it takes NULL, and the limit of its type (text length in characters, decimal digits, integer range)."""
    constraint: dict[str, Any] = {
        "column": f"{field.model._meta.model_name}.{field.column}",
        "nullable": field.null,
    }
    if isinstance(field, models.DecimalField):
        constraint |= {"max_digits": field.max_digits, "decimal_places": field.decimal_places}
    elif isinstance(field, models.CharField) and field.max_length is not None:
        constraint["max_length"] = field.max_length
    elif field.get_internal_type() in INTEGER_RANGES:
        constraint["min"], constraint["max"] = INTEGER_RANGES[field.get_internal_type()]
    return constraint


def staged_fields() -> dict[str, dict[str, models.Field]]:
    """Per transform output, the model field behind each column the loader reads: what the job's output
    schemas (spark_jobs/contract.py) must match. A fact's business date is DimDate's date, a dimension
    reference the dimension's natural key."""
    outputs: dict[str, dict[str, models.Field]] = {}
    for dim in DIMENSIONS:
        outputs[dim.output] = {c: dim.model._meta.get_field(c) for c in dim.columns}
    for fact in FACTS:
        columns = {a: fact.model._meta.get_field(a) for a in fact.attributes}
        day = fact.model._meta.get_field(PARTITION_FIELD).related_model
        columns[DATE_COLUMN] = day._meta.get_field("date")
        for ref in fact.references:
            columns[ref.column] = ref.dimension(fact.model)._meta.get_field(ref.column)
        outputs[fact.output] = columns
    outputs[QUARANTINE_OUTPUT] = {c: QuarantinedRow._meta.get_field(c) for c in QUARANTINE_COLUMNS}
    return outputs


def output_constraints() -> dict[str, dict[str, dict[str, Any]]]:
    """Per transform output and column, what the warehouse accepts (:func:`field_constraint` of the
    :func:`staged_fields`): the job rejects a row that could not be loaded instead of failing the load
    with it (docs/configuration.md, "Implicit rules"). A fact's dimension reference (store_code...) is
    limited by the dimension's natural key, and may be null when the foreign key may; its business date
    is the job's own (a line without one is quarantined as ``missing_business_date``)."""
    facts = {fact.output: fact for fact in FACTS}
    outputs: dict[str, dict[str, dict[str, Any]]] = {}
    for output, fields in staged_fields().items():
        fact = facts.get(output)
        references = {ref.column: ref for ref in fact.references} if fact else {}
        columns = {}
        for column, model_field in fields.items():
            if fact is not None and column == DATE_COLUMN:
                continue
            columns[column] = field_constraint(model_field)
            if column in references:
                columns[column]["nullable"] = references[column].nullable(fact.model)
        outputs[output] = columns
    return outputs


def dimension_spec(model: type[models.Model]) -> Dimension:
    return next(d for d in DIMENSIONS if d.model is model)


def date_key(day: date) -> int:
    return day.year * 10_000 + day.month * 100 + day.day


def key_date(key: int) -> date:
    return date(key // 10_000, key // 100 % 100, key % 100)


def return_lookback_start(day: date) -> int:
    """Date key of the earliest date whose purchases a return of `day` may link to."""
    return date_key(day - timedelta(days=RETURN_LOOKBACK_DAYS))


def return_lookahead_end(day: date) -> int:
    """Date key of the last date whose returns may link to a purchase of `day`."""
    return date_key(day + timedelta(days=RETURN_LOOKBACK_DAYS))


def business_dates(files: Sequence[Path]) -> list[date]:
    """The distinct business dates of a fact output's Parquet files, in order."""
    days: set[date] = set()
    for path in files:
        column = pq.read_table(path, columns=[DATE_COLUMN]).column(DATE_COLUMN)
        days.update(d for d in pc.unique(column).to_pylist() if d is not None)
    return sorted(days)


@dataclass
class FactLoad:
    """What a partition's load did to a fact. Its staged `rows` are lines of orders the warehouse did not
    hold (`inserted`), replacing another partition's version of their order (`updated`, per business
    date), of orders held in a newer version or the same one from an earlier partition (`superseded`), or
    of orders this same partition supplied before (`reloaded`); `deleted`, the stored lines it removed;
    `dates`, every business date whose daily aggregate it recomputed."""

    rows: int = 0
    inserted: int = 0
    updated: dict[str, int] = field(default_factory=dict)
    superseded: int = 0
    reloaded: int = 0
    deleted: int = 0
    dates: list[str] = field(default_factory=list)


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


FAULT_POINT_ENV = "ETL_FAULT_POINT"
FAULT_MARKER_ENV = "ETL_FAULT_MARKER"
FAULT_PAUSE_SECONDS = 60.0


def fault_point(name: str) -> None:
    """Pause here when the fault-injection tests ask for it; a no-op unless ETL_FAULT_POINT names this point.

    The paused process writes its pid to the ETL_FAULT_MARKER file and waits (transaction open) until the
    test kills it with SIGKILL or deletes the marker to let it carry on."""
    if os.environ.get(FAULT_POINT_ENV) != name:
        return
    marker = Path(os.environ[FAULT_MARKER_ENV])
    marker.write_text(str(os.getpid()), encoding="utf-8")
    deadline = time.monotonic() + FAULT_PAUSE_SECONDS
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
