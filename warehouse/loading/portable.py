"""The portable path (SQLite and any other backend): ORM bulk_create(update_conflicts=True) in batches.

Dimension keys are resolved per batch through one `IN (...)` query per dimension, and stale rows are found
by comparing the partition's key set with the keys written. Row semantics are those of `specs`, shared
with the PostgreSQL path.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from django.db import models

from ..models import DimDate, QuarantinedRow
from .specs import (
    PARTITION_FIELD,
    QUARANTINE_COLUMNS,
    Dimension,
    Fact,
    dim_date_row,
    fault_point,
)

BATCH_ROWS = 5_000
# SQLite limits bound parameters per statement; chunk `IN (...)` look-ups well under it.
LOOKUP_CHUNK = 500


def load_date_row(using: str, day: date) -> None:
    _upsert(using, DimDate, [dim_date_row(day)], ["date_key"])


def load_dimension(using: str, spec: Dimension, files: Sequence[Path]) -> int:
    rows = 0
    for batch in _read_batches(files, spec.columns):
        objs = [spec.model(**{name: rec[name] for name in spec.columns}) for rec in batch]
        _upsert(using, spec.model, objs, [spec.natural_key])
        rows += len(objs)
    return rows


def load_fact(using: str, spec: Fact, dk: int, files: Sequence[Path]) -> tuple[int, int]:
    """Upsert the date's rows on their natural key, then delete the date's rows no longer produced."""
    meta = spec.model._meta
    key_attnames = [meta.get_field(f).attname for f in spec.partition_key]
    date_attname = meta.get_field(PARTITION_FIELD).attname
    kept: set[tuple] = set()
    rows = 0
    for batch in _read_batches(files, spec.staging_columns):
        ids = {
            ref.field: _key_map(
                using,
                ref.dimension(spec.model),
                ref.column,
                {r[ref.column] for r in batch if r[ref.column] is not None or not ref.nullable(spec.model)},
            )
            for ref in spec.references
        }
        objs = []
        for r in batch:
            values = {name: _python_value(r[name]) for name in spec.attributes}
            for ref in spec.references:
                key = r[ref.column]
                values[meta.get_field(ref.field).attname] = None if key is None else ids[ref.field][key]
            objs.append(spec.model(**{date_attname: dk}, **values))
        _upsert(using, spec.model, objs, list(spec.unique_fields))
        kept.update(tuple(getattr(o, a) for a in key_attnames) for o in objs)
        rows += len(objs)
        fault_point("portable_after_fact_batch")
    partition = spec.model.objects.using(using).filter(**{date_attname: dk})
    return rows, _delete_not_kept(using, partition, tuple(key_attnames), kept)


def load_quarantine(
    using: str, pipeline: str, business_date: date, run_id: int | None, files: Sequence[Path]
) -> tuple[int, int]:
    # Identical rejected records (exact duplicates of a bad row) share a fingerprint: count, not repeat.
    # Text fields take the smallest value (code point order), as the PostgreSQL path's min(... COLLATE "C").
    by_fingerprint: dict[tuple[str, str], dict[str, Any]] = {}
    for batch in _read_batches(files, list(QUARANTINE_COLUMNS)):
        for r in batch:
            seen = by_fingerprint.get((r["dataset"], r["record_fingerprint"]))
            if seen is None:
                by_fingerprint[(r["dataset"], r["record_fingerprint"])] = {**r, "occurrences": 1}
            else:
                seen["occurrences"] += 1
                for name in ("reason_code", "message", "raw_record"):
                    seen[name] = min(seen[name], r[name])
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
    ordered = sorted(v for v in values if v is not None)
    for start in range(0, len(ordered), LOOKUP_CHUNK):
        chunk = ordered[start : start + LOOKUP_CHUNK]
        found.update(
            model.objects.using(using).filter(**{f"{natural_key}__in": chunk}).values_list(natural_key, "pk")
        )
    missing = values - found.keys()
    if missing:
        # The transform only emits facts whose dimensions it also emitted; this means a broken partition.
        raise MissingDimensionError(model, natural_key, missing)
    return found


class MissingDimensionError(ValueError):
    """A fact row names a dimension member the warehouse does not hold: the partition is broken."""

    def __init__(self, model: type[models.Model], natural_key: str, missing: Iterable[Any]) -> None:
        sample = ", ".join(sorted(map(str, missing))[:5])
        super().__init__(f"{model._meta.label}: no row for {natural_key} {sample}")


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


def _read_batches(files: Sequence[Path], columns: list[str]) -> Iterator[list[dict[str, Any]]]:
    for path in files:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            yield batch.to_pylist()


def _python_value(value: Any) -> Any:
    # Spark writes timestamps as UTC instants; pyarrow may hand them back naive.
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
