"""The portable path (SQLite and any other backend): ORM bulk_create(update_conflicts=True) in batches.

Dimension keys are resolved per batch through one `IN (...)` query per dimension (for a dimension with
history, to the version valid on the partition's date), and stale rows are found by comparing the
partition's key set with the keys written. Dimension history applies `history.observe` to the members whose
attributes changed. Row semantics are those of `specs` and `history`, shared with the PostgreSQL path.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from django.db import models

from ..errors import DailyMismatchError, MissingDimensionError
from ..models import DimDate, LoadedPartition, QuarantinedRow
from .history import Version, observe, version_on
from .specs import (
    DAILY_SALES,
    DATE_COLUMN,
    LINKED_BY_LOADER,
    PARTITION_FIELD,
    PIPELINE_FIELD,
    QUARANTINE_COLUMNS,
    SOURCE_DATE_FIELD,
    SOURCE_VERSION_FIELD,
    VALIDITY_FIELDS,
    Dimension,
    Fact,
    FactLoad,
    date_key,
    dim_date_row,
    dimension_references,
    fault_point,
    key_date,
    return_lookahead_end,
    return_lookback_start,
)

BATCH_ROWS = 5_000
# SQLite limits bound parameters per statement; chunk `IN (...)` look-ups well under it.
LOOKUP_CHUNK = 500


def load_date_row(using: str, day: date) -> None:
    _upsert(using, DimDate, [dim_date_row(day)], ["date_key"])


def load_dimension(using: str, spec: Dimension, pipeline: str, files: Sequence[Path], day: date) -> int:
    rows = 0
    for batch in _read_batches(files, spec.columns, optional=spec.kept):
        if spec.history:
            _observe_members(using, spec, pipeline, batch, day)
        else:
            objs = [
                spec.model(
                    **{PIPELINE_FIELD: pipeline}, **{name: _python_value(rec[name]) for name in spec.columns}
                )
                for rec in _later_than_stored(using, spec, pipeline, batch)
            ]
            _upsert(
                using, spec.model, objs, [PIPELINE_FIELD, spec.natural_key], exclude_from_update=spec.kept
            )
            _fill_kept(using, spec, pipeline, batch)
        rows += len(batch)
    return rows


def load_fact(using: str, spec: Fact, pipeline: str, day: date, files: Sequence[Path]) -> FactLoad:
    """Merge partition `day`'s lines into the pipeline's fact: each order's lines as in the newest version
    of the order any partition carried, each line once on its own business date; delete the lines the
    partition supplied before and no longer holds; recompute the daily aggregate of every business date
    the load touched."""
    meta = spec.model._meta
    facts = spec.model.objects.using(using).filter(**{PIPELINE_FIELD: pipeline})
    key_names = list(spec.row_key)
    date_attname = meta.get_field(PARTITION_FIELD).attname
    order = key_names.index(spec.versioned_by)
    staged: dict[tuple, date] = {}
    staged_orders: dict[Any, int] = {}
    for batch in _read_batches(files, [*key_names, DATE_COLUMN, SOURCE_VERSION_FIELD]):
        for r in batch:
            key = tuple(r[k] for k in key_names)
            staged[key] = r[DATE_COLUMN]
            version = r[SOURCE_VERSION_FIELD]
            staged_orders[key[order]] = max(staged_orders.get(key[order], version), version)
    held = _held_lines(facts, key_names, spec.versioned_by, date_attname, staged_orders)
    held_orders: dict[Any, tuple[int, date]] = {}
    for key, line in held.items():
        version, source = held_orders.get(key[order], (line.version, line.source_date))
        held_orders[key[order]] = (max(version, line.version), min(source, line.source_date))
    # An order's version replaces the stored one when greater, or equal from an earlier or the same
    # partition; then it replaces every line of the order, so a line a newer version dropped goes too.
    won = {o for o, v in staged_orders.items() if o not in held_orders or _wins((v, day), held_orders[o])}
    touched = {date_key(d) for d in staged.values()} | {line.date_id for line in held.values()}
    touched |= set(facts.filter(**{SOURCE_DATE_FIELD: day}).values_list(date_attname, flat=True).distinct())
    result = FactLoad(rows=len(staged), dates=[key_date(k).isoformat() for k in sorted(touched)])
    for key, staged_day in staged.items():
        if key[order] not in won:
            result.superseded += 1
        elif key[order] not in held_orders:
            result.inserted += 1
        elif held_orders[key[order]][1] != day:
            result.updated[staged_day.isoformat()] = result.updated.get(staged_day.isoformat(), 0) + 1
        else:
            result.reloaded += 1
    # Dates loaded before later dates' returns may change their links: what they bought before this load.
    revisit = spec.links_returns and bool(touched) and _later_returns(facts, touched).exists()
    purchased_before = _purchased_items(facts, touched) if revisit else None
    _winning_lines_write(using, spec, pipeline, day, files, won, facts)
    # Lines of an order this partition wins that its version does not hold; lines this partition supplied
    # of orders it no longer carries (a corrected re-extraction, an order now quarantined).
    dropped = [key for key in held if key[order] in won and key not in staged]
    result.deleted = _delete_keys(facts, key_names, dropped) + _delete_not_kept(
        using, facts.filter(**{SOURCE_DATE_FIELD: day}), (spec.versioned_by,), {(o,) for o in staged_orders}
    )
    if purchased_before is not None:
        _relink_later_returns(facts, touched, purchased_before | _purchased_items(facts, touched))
    _recompute_daily(using, facts, pipeline, touched)
    _check_daily(using, facts, pipeline, touched)
    return result


def _winning_lines_write(
    using: str, spec: Fact, pipeline: str, day: date, files: Sequence[Path], won: set, facts
) -> None:
    """Upsert the staged lines of the orders this partition wins, batch by batch, with surrogate keys
    looked up (the version valid on each line's date) and returns linked."""
    meta = spec.model._meta
    date_attname = meta.get_field(PARTITION_FIELD).attname
    for batch in _read_batches(files, spec.staging_columns):
        ids = {
            ref.field: _key_map(
                _members(using, ref.dimension(spec.model), pipeline),
                ref.column,
                {
                    (r[ref.column], r[DATE_COLUMN] if ref.history(spec.model) else None)
                    for r in batch
                    if r[ref.column] is not None or not ref.nullable(spec.model)
                },
            )
            for ref in spec.references
        }
        if spec.links_returns:
            _link_returns(facts, batch, ids["customer"])
        objs = []
        for r in batch:
            if r[spec.versioned_by] not in won:
                continue
            values = {name: _python_value(r[name]) for name in spec.attributes}
            values.update({LINKED_BY_LOADER: r.get(LINKED_BY_LOADER, False)} if spec.links_returns else {})
            for ref in spec.references:
                member = r[ref.column]
                values[meta.get_field(ref.field).attname] = (
                    None
                    if member is None
                    else ids[ref.field][member, r[DATE_COLUMN] if ref.history(spec.model) else None]
                )
            objs.append(
                spec.model(
                    **{
                        date_attname: date_key(r[DATE_COLUMN]),
                        PIPELINE_FIELD: pipeline,
                        SOURCE_DATE_FIELD: day,
                    },
                    **values,
                )
            )
        _upsert(using, spec.model, objs, list(spec.unique_fields))
        fault_point("portable_after_fact_batch")


@dataclass(frozen=True)
class _Held:
    """A stored line: its date, and which version from which partition."""

    date_id: int
    version: int
    source_date: date


def _held_lines(
    facts: models.QuerySet, key_names: list[str], order: str, date_attname: str, orders: Container[Any]
) -> dict[tuple, _Held]:
    """The pipeline's stored lines of the given orders: their date, version and partition."""
    held: dict[tuple, _Held] = {}
    wanted = sorted(orders)
    names = [*key_names, date_attname, SOURCE_VERSION_FIELD, SOURCE_DATE_FIELD]
    for start in range(0, len(wanted), LOOKUP_CHUNK):
        rows = facts.filter(**{f"{order}__in": wanted[start : start + LOOKUP_CHUNK]}).values_list(*names)
        for *key, date_id, version, source_date in rows:
            held[tuple(key)] = _Held(date_id, version, source_date)
    return held


def _delete_keys(facts: models.QuerySet, key_names: list[str], keys: list[tuple]) -> int:
    deleted = 0
    for key in keys:
        deleted += facts.filter(**dict(zip(key_names, key, strict=True))).delete()[0]
    return deleted


def _wins(new: tuple[int, date], old: tuple[int, date]) -> bool:
    """A greater version replaces the stored one; the same version from an earlier (or the same) partition
    too, so the order keeps the partition, and rates, of its first extraction."""
    (new_version, new_source), (old_version, old_source) = new, old
    return new_version > old_version or (new_version == old_version and new_source <= old_source)


def _daily_groups(facts: models.QuerySet, dates: list[int]) -> dict[tuple, dict[str, Any]]:
    """The daily aggregate of `dates` from the line fact as it is now, keyed by (date, store, product),
    summed exactly in Decimal (SQLite's own sum of a decimal column is a float)."""
    groups: dict[tuple, dict[str, Any]] = {}
    orders: dict[tuple, set[str]] = defaultdict(set)
    for start in range(0, len(dates), LOOKUP_CHUNK):
        rows = facts.filter(
            date_id__in=dates[start : start + LOOKUP_CHUNK], line_type=DAILY_SALES.line_type
        ).values_list("date_id", "store_id", "product_id", "quantity", "amount_reporting", "order_id")
        for date_id, store_id, product_id, quantity, amount, order_id in rows:
            g = groups.setdefault(
                (date_id, store_id, product_id),
                {"quantity": 0, "revenue": Decimal("0.00"), "line_count": 0, "order_count": 0},
            )
            g["quantity"] += quantity
            g["revenue"] += amount
            g["line_count"] += 1
            orders[date_id, store_id, product_id].add(order_id)
    for group, ids in orders.items():
        groups[group]["order_count"] = len(ids)
    return groups


def _recompute_daily(using: str, facts: models.QuerySet, pipeline: str, touched: set[int]) -> None:
    """FactDailySales of the touched dates from the line fact: rows no group produces are deleted, the
    others upserted."""
    daily = DAILY_SALES.model
    dates = sorted(touched)
    groups = _daily_groups(facts, dates)
    objs = [
        daily(pipeline=pipeline, date_id=date_id, store_id=store_id, product_id=product_id, **g)
        for (date_id, store_id, product_id), g in groups.items()
    ]
    _upsert(using, daily, objs, list(DAILY_SALES.group_by))
    for start in range(0, len(dates), LOOKUP_CHUNK):
        stale = daily.objects.using(using).filter(
            pipeline=pipeline, date_id__in=dates[start : start + LOOKUP_CHUNK]
        )
        _delete_not_kept(using, stale, ("date_id", "store_id", "product_id"), groups.keys())


def _check_daily(using: str, facts: models.QuerySet, pipeline: str, touched: set[int]) -> None:
    """The line and daily facts agree on every touched date (quantity, revenue, lines), or the load fails."""
    dates = sorted(touched)
    from_lines: dict[int, tuple] = defaultdict(lambda: (0, Decimal("0.00"), 0))
    for (date_id, _, _), g in _daily_groups(facts, dates).items():
        q, r, c = from_lines[date_id]
        from_lines[date_id] = (q + g["quantity"], r + g["revenue"], c + g["line_count"])
    stored: dict[int, tuple] = defaultdict(lambda: (0, Decimal("0.00"), 0))
    for start in range(0, len(dates), LOOKUP_CHUNK):
        rows = DAILY_SALES.model.objects.using(using).filter(
            pipeline=pipeline, date_id__in=dates[start : start + LOOKUP_CHUNK]
        )
        for date_id, quantity, revenue, lines in rows.values_list(
            "date_id", "quantity", "revenue", "line_count"
        ):
            q, r, c = stored[date_id]
            stored[date_id] = (q + quantity, r + revenue, c + lines)
    wrong = sorted(d for d in set(from_lines) | set(stored) if from_lines[d] != stored[d])
    if wrong:
        raise DailyMismatchError(pipeline, [key_date(d) for d in wrong])


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


def _fill_kept(using: str, spec: Dimension, pipeline: str, batch: list[dict[str, Any]]) -> None:
    """A `kept` column of a stored member takes the staged value only while it is null (a member stored
    before the column was filled); a stored value is never replaced."""
    for name in spec.kept:
        staged = {r[spec.natural_key]: r[name] for r in batch if r[name] is not None}
        keys = sorted(staged)
        for start in range(0, len(keys), LOOKUP_CHUNK):
            empty = _members(using, spec.model, pipeline).filter(
                **{f"{spec.natural_key}__in": keys[start : start + LOOKUP_CHUNK], f"{name}__isnull": True}
            )
            members = list(empty.only("pk", spec.natural_key))
            for member in members:
                setattr(member, name, _python_value(staged[getattr(member, spec.natural_key)]))
            spec.model.objects.using(using).bulk_update(members, [name], batch_size=1_000)


def _key_map(
    members: models.QuerySet, natural_key: str, wanted: set[tuple[Any, date | None]]
) -> dict[tuple[Any, date | None], int]:
    """(natural key, date) -> surrogate key; with a date, of the version valid on it, or of the member's
    first version for a date before it (as the PostgreSQL path's `_member_on`)."""
    values = sorted({value for value, _ in wanted if value is not None})
    versions: dict[Any, list[tuple[date | None, date | None, int]]] = defaultdict(list)
    names = [natural_key, "pk", *(["valid_from", "valid_to"] if any(d for _, d in wanted) else [])]
    for start in range(0, len(values), LOOKUP_CHUNK):
        rows = members.filter(**{f"{natural_key}__in": values[start : start + LOOKUP_CHUNK]})
        for member, pk, *validity in rows.values_list(*names):
            versions[member].append((*validity, pk) if validity else (None, None, pk))
    found: dict[tuple[Any, date | None], int] = {}
    for value, day in wanted:
        held = sorted(versions.get(value, ()), key=lambda v: (v[0] is not None, v[0]))
        if day is None:
            match = held[0] if held else None
        else:
            match = next((v for v in held if v[1] is None or v[1] > day), None)
        if match is not None:
            found[value, day] = match[2]
    missing = {value for value, day in wanted} - {value for value, day in found}
    if missing:
        # The transform only emits facts whose dimensions it also emitted; this means a broken partition.
        raise MissingDimensionError(members.model, natural_key, missing)
    return found


def _later_than_stored(
    using: str, spec: Dimension, pipeline: str, batch: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The staged rows of a type 1 dimension that replace (or add) a member: with `latest_by`, only a later
    one, or an equally late one with smaller other attributes, so any load order keeps the same values."""
    if spec.latest_by is None:
        return batch
    others = [a for a in spec.attributes if a != spec.latest_by]
    stored: dict[Any, tuple] = {}
    keys = sorted(r[spec.natural_key] for r in batch)
    names = [spec.natural_key, spec.latest_by, *others]
    for start in range(0, len(keys), LOOKUP_CHUNK):
        chunk = keys[start : start + LOOKUP_CHUNK]
        members = _members(using, spec.model, pipeline).filter(**{f"{spec.natural_key}__in": chunk})
        stored.update((key, (latest, tuple(rest))) for key, latest, *rest in members.values_list(*names))

    def replaces(r: dict[str, Any]) -> bool:
        if r[spec.natural_key] not in stored:
            return True
        latest, rest = _python_value(r[spec.latest_by]), tuple(r[a] for a in others)
        old_latest, old_rest = stored[r[spec.natural_key]]
        if latest is None:
            return False
        return old_latest is None or latest > old_latest or (latest == old_latest and rest < old_rest)

    return [r for r in batch if replaces(r)]


def _members(using: str, model: type[models.Model], pipeline: str) -> models.QuerySet:
    """The pipeline's rows of a dimension: the only ones its loads read or change."""
    return model.objects.using(using).filter(**{PIPELINE_FIELD: pipeline})


def _observe_members(
    using: str, spec: Dimension, pipeline: str, batch: list[dict[str, Any]], day: date
) -> None:
    """Apply `history.observe` to the batch's members, then write what changed (docs/loading.md). The
    next loaded date is the pipeline's: another pipeline's snapshots say nothing about this one's."""
    members = _members(using, spec.model, pipeline)
    key = spec.natural_key
    old: dict[Any, list[Version]] = defaultdict(list)
    names = ["pk", key, "valid_from", "valid_to", *spec.attributes]
    keys = sorted(r[key] for r in batch)
    for start in range(0, len(keys), LOOKUP_CHUNK):
        chunk = keys[start : start + LOOKUP_CHUNK]
        for pk, member, valid_from, valid_to, *attrs in (
            members.filter(**{f"{key}__in": chunk}).order_by("valid_from").values_list(*names)
        ):
            old[member].append(Version(pk, valid_from, valid_to, tuple(attrs)))
    next_loaded = (
        LoadedPartition.objects.using(using)
        .filter(pipeline=pipeline, date__gt=day)
        .order_by("date")
        .values_list("date", flat=True)
        .first()
    )
    plans: dict[Any, list[Version]] = {}
    for r in batch:
        new = observe(
            old[r[key]], day=day, attributes=tuple(r[a] for a in spec.attributes), next_loaded=next_loaded
        )
        if new is not None:
            plans[r[key]] = new
    if plans:
        _write_history(using, spec, pipeline, day, {member: old[member] for member in plans}, plans)


def _write_history(
    using: str,
    spec: Dimension,
    pipeline: str,
    day: date,
    old: dict[Any, list[Version]],
    new: dict[Any, list[Version]],
) -> None:
    """Old versions -> new versions of the changed members, in an order that keeps every constraint true
    after each statement: the old current version is cleared before another becomes current, kept rows are
    updated, new ones inserted, facts re-pointed, and only then are the rows no version keeps deleted."""
    model, key = spec.model, spec.natural_key
    members = _members(using, model, pipeline)
    losing = [
        v.id
        for member, versions in old.items()
        for v in versions
        if v.is_current and v.id != new[member][-1].id
    ]
    _chunked_update(members, losing, is_current=False)

    before = {v.id: v for versions in old.values() for v in versions}
    fields = [*VALIDITY_FIELDS, *spec.attributes]
    changed = [
        model(pk=v.id, **{key: member}, **_version_values(spec, v))
        for member, versions in new.items()
        for v in versions
        if v.id is not None and v != before[v.id]
    ]
    members.bulk_update(changed, fields, batch_size=BATCH_ROWS)
    members.bulk_create(
        [
            model(**{PIPELINE_FIELD: pipeline, key: member}, **_version_values(spec, v))
            for member, versions in new.items()
            for v in versions
            if v.id is None
        ],
        batch_size=1_000,
    )
    kept = {v.id for versions in new.values() for v in versions}
    obsolete = [pk for pk in before if pk not in kept]
    _repoint_facts(using, spec, day, old, _with_ids(members, spec, new, obsolete))
    fault_point(f"history:{spec.output}")
    for start in range(0, len(obsolete), LOOKUP_CHUNK):
        members.filter(pk__in=obsolete[start : start + LOOKUP_CHUNK]).delete()


def _version_values(spec: Dimension, version: Version) -> dict[str, Any]:
    return {
        "valid_from": version.valid_from,
        "valid_to": version.valid_to,
        "is_current": version.is_current,
        **dict(zip(spec.attributes, version.attributes, strict=True)),
    }


def _with_ids(
    members: models.QuerySet, spec: Dimension, new: dict[Any, list[Version]], obsolete: Container[int]
) -> dict[Any, list[Version]]:
    """The new versions with the ids the database gave the inserted ones."""
    key = spec.natural_key
    ids: dict[tuple[Any, date], int] = {}
    keys = sorted(new)
    for start in range(0, len(keys), LOOKUP_CHUNK):
        rows = members.filter(**{f"{key}__in": keys[start : start + LOOKUP_CHUNK]}).values_list(
            key, "valid_from", "pk"
        )
        ids.update({(member, valid_from): pk for member, valid_from, pk in rows if pk not in obsolete})
    return {
        member: [replace(v, id=ids[member, v.valid_from]) for v in versions]
        for member, versions in new.items()
    }


def _repoint_facts(
    using: str, spec: Dimension, day: date, old: dict[Any, list[Version]], new: dict[Any, list[Version]]
) -> None:
    """Facts referencing a changed member's old versions point to the version valid on their date, or to
    its first version for a date before it (as `_key_map` resolves them); every date can move."""
    member_of = {v.id: member for member, versions in old.items() for v in versions}
    old_ids = sorted(member_of)
    for model, field in dimension_references():
        meta = model._meta
        if meta.get_field(field).related_model is not spec.model:
            continue
        ref_attname = meta.get_field(field).attname
        date_attname = meta.get_field(PARTITION_FIELD).attname
        facts = model.objects.using(using)
        moves: dict[int, list[int]] = defaultdict(list)
        for start in range(0, len(old_ids), LOOKUP_CHUNK):
            rows = facts.filter(**{f"{ref_attname}__in": old_ids[start : start + LOOKUP_CHUNK]}).values_list(
                "pk", date_attname, ref_attname
            )
            for pk, dk, ref_id in rows:
                versions = new[member_of[ref_id]]
                target = version_on(versions, key_date(dk)) or versions[0]
                if target.id != ref_id:
                    moves[target.id].append(pk)
        for target, pks in moves.items():
            _chunked_update(facts, pks, **{ref_attname: target})


def _chunked_update(queryset: models.QuerySet, pks: list[int], **values: Any) -> None:
    for start in range(0, len(pks), LOOKUP_CHUNK):
        queryset.filter(pk__in=pks[start : start + LOOKUP_CHUNK]).update(**values)


@dataclass(frozen=True)
class _Return:
    customer_id: int
    stock_code: str
    ordered_at: datetime
    order_id: str
    day: date


def _link_returns(facts: models.QuerySet, batch: list[dict[str, Any]], customer_ids: dict[Any, int]) -> None:
    """Set `original_order_id` of the batch's unlinked returns of known customers to their latest purchase
    on an earlier date than their own (:func:`_latest_purchases`), and mark it the loader's. Done on the
    staged rows, before the merge, so a re-load computes the same link and leaves an unchanged row
    unchanged."""
    returns = [
        r
        for r in batch
        if r["is_return"] and r["original_order_id"] is None and r["customer_key"] is not None
    ]
    found = _latest_purchases(
        facts,
        [
            _Return(
                customer_ids[r["customer_key"], None],
                r["stock_code"],
                _python_value(r["ordered_at"]),
                r["order_id"],
                r[DATE_COLUMN],
            )
            for r in returns
        ],
    )
    for r, order_id in zip(returns, found, strict=True):
        if order_id is not None:
            r["original_order_id"] = order_id
            r[LINKED_BY_LOADER] = True


def _latest_purchases(facts: models.QuerySet, returns: Sequence[_Return]) -> list[str | None]:
    """For each return, the order id of its latest purchase (ordered_at, then order id in code-point
    order) of the same customer and item on an earlier date within the look-back, at or before the
    return (docs/retail-semantics.md); None where there is none."""
    found: list[str | None] = []
    chunk_size = LOOKUP_CHUNK // 2  # two IN lists per query
    for start in range(0, len(returns), chunk_size):
        chunk = returns[start : start + chunk_size]
        purchases: dict[tuple[int, str], list[tuple[datetime, str, int]]] = defaultdict(list)
        rows = facts.filter(
            customer_id__in={r.customer_id for r in chunk},
            stock_code__in={r.stock_code for r in chunk},
            is_return=False,
            date_id__gte=min(return_lookback_start(r.day) for r in chunk),
            date_id__lt=max(date_key(r.day) for r in chunk),
        ).values_list("customer_id", "stock_code", "ordered_at", "order_id", "date_id")
        for customer, stock_code, ordered_at, order_id, day_key in rows:
            purchases[customer, stock_code].append((ordered_at, order_id, day_key))
        for r in chunk:
            earlier = [
                (ordered_at, order_id)
                for ordered_at, order_id, day_key in purchases[r.customer_id, r.stock_code]
                if return_lookback_start(r.day) <= day_key < date_key(r.day)
                and ordered_at <= r.ordered_at
                and order_id != r.order_id
            ]
            found.append(max(earlier)[1] if earlier else None)  # latest, ties: greatest order id
    return found


def _later_returns(facts: models.QuerySet, touched: set[int]) -> models.QuerySet:
    """The returns of the look-ahead after the first touched date: those its purchases may be linked from."""
    return facts.filter(
        date_id__gt=min(touched), date_id__lte=return_lookahead_end(key_date(max(touched))), is_return=True
    )


def _purchased_items(facts: models.QuerySet, touched: set[int]) -> set[tuple[int, str]]:
    """The (customer, stock_code) pairs of the touched dates' purchases by known customers."""
    purchases = facts.filter(date_id__in=sorted(touched), is_return=False, customer_id__isnull=False)
    return set(purchases.values_list("customer_id", "stock_code").distinct())


def _relink_later_returns(facts: models.QuerySet, touched: set[int], items: set[tuple[int, str]]) -> None:
    """Recompute the loader's links of returns in the look-ahead after the first touched date whose
    customer and item those dates bought, before or after this load, so that loading dates out of order
    ends with the links a load in date order makes. Links from the job or a source are not touched."""
    candidates = (
        _later_returns(facts, touched)
        .filter(models.Q(**{LINKED_BY_LOADER: True}) | models.Q(original_order_id__isnull=True))
        .exclude(customer_id__isnull=True)
    )
    fields = ("pk", "original_order_id", "customer_id", "stock_code", "ordered_at", "order_id", "date_id")
    rows = [row for row in candidates.values_list(*fields) if (row[2], row[3]) in items]
    found = _latest_purchases(facts, [_Return(*row[2:6], key_date(row[6])) for row in rows])
    for (pk, linked, *_), order_id in zip(rows, found, strict=True):
        if order_id != linked:
            facts.filter(pk=pk).update(original_order_id=order_id, **{LINKED_BY_LOADER: order_id is not None})


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


def _read_batches(
    files: Sequence[Path], columns: list[str], *, optional: Sequence[str] = ()
) -> Iterator[list[dict[str, Any]]]:
    """Rows of the files' `columns`; an `optional` column a file lacks (written before the job had it) is
    null."""
    for path in files:
        parquet = pq.ParquetFile(path)
        absent = [c for c in optional if c not in parquet.schema_arrow.names]
        present = [c for c in columns if c not in absent]
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=present):
            rows = batch.to_pylist()
            for row in rows:
                row.update(dict.fromkeys(absent))
            yield rows


def _python_value(value: Any) -> Any:
    # Spark writes timestamps as UTC instants; pyarrow may hand them back naive.
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
