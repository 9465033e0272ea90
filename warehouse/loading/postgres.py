"""The PostgreSQL fast path: Parquet record batches -> CSV -> COPY into a temporary table -> one set-wise
merge per table, all inside the caller's transaction.

Per output: `CREATE TEMP TABLE ... ON COMMIT DROP` with the model's column types, `COPY ... FROM STDIN
(FORMAT csv)` streamed from the Parquet file one bounded record batch at a time, then SQL that resolves
dimension keys by joining the dimension tables (never per row in Python; for a dimension with history, the
version whose range holds the date), deletes the date's rows the partition no longer holds (anti-join) and
upserts on the natural key, rewriting only rows that differ (`IS DISTINCT FROM`), so a re-run writes
nothing and locks no row it does not change. Dimension history follows the rules of `history` in a few
set-wise statements over the members that changed. Identifiers are composed with psycopg2.sql; values are
bound parameters or literals rendered by psycopg2.
"""

from __future__ import annotations

import contextvars
import io
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from django.db import models
from psycopg2 import sql

from ..errors import DailyMismatchError, MissingDimensionError
from ..models import DimCustomer, DimDate, LoadedPartition, QuarantinedRow
from .specs import (
    DAILY_SALES,
    DATE_COLUMN,
    LINKED_BY_LOADER,
    PARTITION_FIELD,
    PIPELINE_FIELD,
    QUARANTINE_COLUMNS,
    RETURN_LOOKBACK_DAYS,
    SOURCE_DATE_FIELD,
    SOURCE_VERSION_FIELD,
    Dimension,
    Fact,
    FactLoad,
    Reference,
    date_key,
    dim_date_row,
    dimension_references,
    fault_point,
    key_date,
    return_lookahead_end,
    return_lookback_start,
)

COPY_BATCH_ROWS = 65_536
COPY_CHUNK_BYTES = 1 << 20
CSV_OPTIONS = pacsv.WriteOptions(include_header=False)
# Transaction-level advisory locks keyed by (a class of the pipeline, a date key): per partition, loads of
# one pipeline's partition queue up; per business date, loads writing lines of one date queue up before its
# daily aggregate is recomputed. Other pipelines and other dates never wait on them.
PARTITION_LOCK = "partition"
DATE_LOCK = "date"
# Transaction-level advisory lock per dimension with history: shared by loads that only read its versions,
# exclusive for a load that changes them (docs/loading.md#locking).
HISTORY_LOCK_CLASS = 0x455448  # "ETH"
# Transaction-level advisory lock on return links: shared by a sales-line load that cannot miss a link to
# or from a load in flight, exclusive for one that can (docs/loading.md#locking).
LINKS_LOCK_CLASS = 0x45524C  # "ERL"
MISSING_SAMPLE = 5


def lock_class(kind: str, pipeline: str) -> int:
    """The first key of a pipeline's advisory locks of one kind (a stable 31-bit hash)."""
    return zlib.crc32(f"{kind}:{pipeline}".encode()) & 0x7FFFFFFF


def lock_partition(cursor, pipeline: str, day: date) -> None:
    cursor.execute(
        "SELECT pg_advisory_xact_lock(%s, %s)", [lock_class(PARTITION_LOCK, pipeline), date_key(day)]
    )


def _lock_dates(cursor, pipeline: str, keys: Sequence[int]) -> None:
    """The business-date locks, in date order (two loads never wait on each other in a cycle)."""
    for key in sorted(keys):
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [lock_class(DATE_LOCK, pipeline), key])


def lock_history(cursor, spec: Dimension, pipeline: str, *, exclusive: bool) -> None:
    """The pipeline's history lock of the dimension."""
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    cursor.execute(
        f"SELECT {function}(%s, %s)", [HISTORY_LOCK_CLASS, lock_class(spec.model._meta.db_table, pipeline)]
    )


def load_date_row(cursor, connection, day: date) -> None:
    row = dim_date_row(day)
    fields = [f for f in DimDate._meta.concrete_fields]
    _upsert_values(
        cursor,
        DimDate,
        [f.column for f in fields],
        [f.get_db_prep_save(getattr(row, f.attname), connection) for f in fields],
        [DimDate._meta.pk.column],
    )


def load_dimension(
    cursor, connection, spec: Dimension, pipeline: str, files: Sequence[Path], day: date
) -> int:
    meta = spec.model._meta
    fields = [meta.get_field(c) for c in spec.columns]
    staging = _stage(cursor, connection, spec.output, fields, files, optional=spec.kept)
    if spec.history:
        _merge_history(cursor, spec, pipeline, staging, day)
    else:
        _merge_latest(cursor, spec, pipeline, staging)
    rows = _staged_rows(cursor, staging)
    _drop(cursor, staging)
    return rows


def _merge_latest(cursor, spec: Dimension, pipeline: str, staging: sql.Composable) -> None:
    """Type 1: insert new members, then update members whose attributes changed; unchanged rows are not
    touched. A `kept` column is written on insert, and later only where it is null.

    Two statements instead of `ON CONFLICT DO UPDATE`, which locks every conflicting row even when its
    WHERE is false: concurrent loads of other dates share these dimension rows and must not wait on them."""
    meta = spec.model._meta
    table = sql.Identifier(meta.db_table)
    key = sql.Identifier(meta.get_field(spec.natural_key).column)
    columns = [sql.Identifier(meta.get_field(c).column) for c in spec.columns]
    staged = [sql.Identifier(c) for c in spec.columns]
    cursor.execute(
        sql.SQL(
            "INSERT INTO {table} ({pipeline}, {columns}) SELECT {name}, {staged} FROM {staging} s "
            "WHERE NOT EXISTS (SELECT 1 FROM {table} d WHERE d.{pipeline} = {name} AND d.{key} = s.{skey}) "
            "ON CONFLICT ({pipeline}, {key}) DO NOTHING"
        ).format(
            table=table,
            pipeline=_column(spec.model, PIPELINE_FIELD),
            name=sql.Literal(pipeline),
            columns=sql.SQL(", ").join(columns),
            staged=sql.SQL(", ").join(sql.SQL("s.{}").format(c) for c in staged),
            staging=staging,
            key=key,
            skey=sql.Identifier(spec.natural_key),
        )
    )
    if spec.attributes:
        targets = [sql.Identifier(meta.get_field(a).column) for a in spec.attributes]
        sources = [sql.SQL("s.{}").format(sql.Identifier(a)) for a in spec.attributes]
        cursor.execute(
            sql.SQL(
                "UPDATE {table} d SET {sets} FROM {staging} s WHERE d.{pipeline} = {name} "
                "AND d.{key} = s.{skey} AND ROW({old}) IS DISTINCT FROM ROW({new}) AND {later}"
            ).format(
                later=_later_than_stored(spec),
                table=table,
                pipeline=_column(spec.model, PIPELINE_FIELD),
                name=sql.Literal(pipeline),
                sets=sql.SQL(", ").join(
                    sql.SQL("{} = {}").format(t, s) for t, s in zip(targets, sources, strict=True)
                ),
                staging=staging,
                key=key,
                skey=sql.Identifier(spec.natural_key),
                old=sql.SQL(", ").join(sql.SQL("d.{}").format(t) for t in targets),
                new=sql.SQL(", ").join(sources),
            )
        )
    for name in spec.kept:
        # Set once: only where the stored member has none (as the portable path's `_fill_kept`).
        cursor.execute(
            sql.SQL(
                "UPDATE {table} d SET {target} = s.{source} FROM {staging} s WHERE d.{pipeline} = {name} "
                "AND d.{key} = s.{skey} AND d.{target} IS NULL AND s.{source} IS NOT NULL"
            ).format(
                table=table,
                target=sql.Identifier(meta.get_field(name).column),
                source=sql.Identifier(name),
                staging=staging,
                pipeline=_column(spec.model, PIPELINE_FIELD),
                name=sql.Literal(pipeline),
                key=key,
                skey=sql.Identifier(spec.natural_key),
            )
        )


def _later_than_stored(spec: Dimension) -> sql.Composable:
    """With `latest_by`: the staged row `s` replaces the stored `d` only when its `latest_by` is later, or
    equal with smaller other attributes, so any load order keeps the same values."""
    if spec.latest_by is None:
        return sql.SQL("true")
    meta = spec.model._meta
    others = [a for a in spec.attributes if a != spec.latest_by]
    return sql.SQL(
        "s.{latest} IS NOT NULL AND (d.{stored} IS NULL OR s.{latest} > d.{stored}"
        " OR (s.{latest} = d.{stored} AND ROW({new}) < ROW({old})))"
    ).format(
        latest=sql.Identifier(spec.latest_by),
        stored=sql.Identifier(meta.get_field(spec.latest_by).column),
        new=_columns("s", others),
        old=_columns("d", [meta.get_field(a).column for a in others]),
    )


def _merge_history(cursor, spec: Dimension, pipeline: str, staging: sql.Composable, day: date) -> None:
    """Type 2: apply `history.observe` set-wise to the members whose snapshot differs from their version
    valid on the date; a snapshot with no change writes and row-locks nothing.

    The lock is chosen by a first look without one: exclusive when there are changes, else shared (loads
    that change nothing never wait for each other). Changes are then found again under the lock, since a
    load holding it exclusively may have committed meanwhile; one found only then takes it exclusively too."""
    changes = sql.Identifier("pg_temp", f"changes_{spec.output}")
    query = _changes(spec, pipeline, staging, day)
    cursor.execute(sql.SQL("SELECT EXISTS ({})").format(query))
    exclusive = cursor.fetchone()[0]
    lock_history(cursor, spec, pipeline, exclusive=exclusive)
    changed = _create_as(cursor, changes, query)
    if changed and not exclusive:
        lock_history(cursor, spec, pipeline, exclusive=True)
        changed = _create_as(cursor, changes, query)
    if changed:
        _write_history(cursor, spec, pipeline, changes, day)
    _drop(cursor, changes)


def _changes(spec: Dimension, pipeline: str, staging: sql.Composable, day: date) -> sql.Composable:
    """Staged members with no version of the pipeline valid on the date holding the same attributes
    (NULL-safe)."""
    meta = spec.model._meta
    return sql.SQL(
        "SELECT s.* FROM {staging} s WHERE NOT EXISTS (SELECT 1 FROM {table} d WHERE d.{pipeline} = {name} "
        "AND d.{key} = s.{skey} AND {valid} AND ROW({old}) IS NOT DISTINCT FROM ROW({new}))"
    ).format(
        staging=staging,
        pipeline=_column(spec.model, PIPELINE_FIELD),
        name=sql.Literal(pipeline),
        table=sql.Identifier(meta.db_table),
        key=sql.Identifier(meta.get_field(spec.natural_key).column),
        skey=sql.Identifier(spec.natural_key),
        valid=_valid_on(sql.Identifier("d"), day),
        old=_columns("d", [meta.get_field(a).column for a in spec.attributes]),
        new=_columns("s", spec.attributes),
    )


def _write_history(cursor, spec: Dimension, pipeline: str, changes: sql.Composable, day: date) -> None:
    """The changed members' new versions (`_plan_history`), written in an order that keeps every constraint
    true after each statement: the old current version is cleared before another becomes current, kept rows
    are updated, new ones inserted, facts re-pointed, and only then are the rows no version keeps deleted."""
    meta = spec.model._meta
    versions = sql.Identifier("pg_temp", f"versions_{spec.output}")
    obsolete = sql.Identifier("pg_temp", f"obsolete_{spec.output}")
    table = sql.Identifier(meta.db_table)
    pk = sql.Identifier(meta.pk.column)
    key = sql.Identifier(meta.get_field(spec.natural_key).column)
    names = dict(
        table=table,
        pk=pk,
        key=key,
        vkey=sql.Identifier(spec.natural_key),
        versions=versions,
        obsolete=obsolete,
        pipeline=_column(spec.model, PIPELINE_FIELD),
        name=sql.Literal(pipeline),
    )
    _plan_history(cursor, spec, pipeline, changes, versions, day)
    _create_as(
        cursor,
        obsolete,
        sql.SQL(
            "SELECT d.{pk} AS id FROM {table} d WHERE d.{pipeline} = {name} "
            "AND d.{key} IN (SELECT v.{vkey} FROM {versions} v) "
            "AND NOT EXISTS (SELECT 1 FROM {versions} v WHERE v.id = d.{pk})"
        ).format(**names),
    )
    cursor.execute(
        sql.SQL(
            "UPDATE {table} d SET is_current = false WHERE d.is_current AND d.{pipeline} = {name} "
            "AND d.{key} IN (SELECT v.{vkey} FROM {versions} v) "
            "AND NOT EXISTS (SELECT 1 FROM {versions} v WHERE v.id = d.{pk} AND v.valid_to IS NULL)"
        ).format(**names)
    )
    columns = [meta.get_field(a).column for a in spec.attributes]
    cursor.execute(
        sql.SQL(
            "UPDATE {table} d SET valid_from = v.valid_from, valid_to = v.valid_to, "
            "is_current = v.valid_to IS NULL, {sets} FROM {versions} v WHERE d.{pk} = v.id "
            "AND ROW(d.valid_from, d.valid_to, d.is_current, {old}) "
            "IS DISTINCT FROM ROW(v.valid_from, v.valid_to, v.valid_to IS NULL, {new})"
        ).format(
            sets=sql.SQL(", ").join(
                sql.SQL("{} = v.{}").format(sql.Identifier(c), sql.Identifier(a))
                for c, a in zip(columns, spec.attributes, strict=True)
            ),
            old=_columns("d", columns),
            new=_columns("v", spec.attributes),
            **names,
        )
    )
    cursor.execute(
        sql.SQL(
            "INSERT INTO {table} ({pipeline}, {key}, valid_from, valid_to, is_current, {columns}) "
            "SELECT {name}, v.{vkey}, v.valid_from, v.valid_to, v.valid_to IS NULL, {values} "
            "FROM {versions} v WHERE v.id IS NULL"
        ).format(
            columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
            values=_columns("v", spec.attributes),
            **names,
        )
    )
    _repoint_facts(cursor, spec, names, day)
    fault_point(f"history:{spec.output}")
    cursor.execute(sql.SQL("DELETE FROM {table} WHERE {pk} IN (SELECT id FROM {obsolete})").format(**names))
    _drop(cursor, obsolete)
    _drop(cursor, versions)


def _plan_history(
    cursor, spec: Dimension, pipeline: str, changes: sql.Composable, versions: sql.Composable, day: date
) -> None:
    """`history.observe` for every changed member at once, into a temporary table of the new versions
    (id NULL: to insert). Points: the old versions but the one on the date, (date, staged attributes) with
    the row of the version starting on the date, and (E, V's attributes) when the next loaded date E falls
    inside the version V valid on the date; a point equal to its predecessor is absorbed into its run, which
    keeps the first row id in date order; each run lasts until the next one."""
    meta = spec.model._meta
    cursor.execute(
        sql.SQL("SELECT min({date}) FROM {loaded} WHERE {pipeline} = %s AND {date} > %s").format(
            date=_column(LoadedPartition, "date"),
            loaded=sql.Identifier(LoadedPartition._meta.db_table),
            pipeline=_column(LoadedPartition, PIPELINE_FIELD),
        ),
        [pipeline, day],
    )
    next_loaded = cursor.fetchone()[0]
    member = sql.Identifier(spec.natural_key)
    attrs = spec.attributes
    old_columns = [
        sql.SQL("d.{} AS id").format(sql.Identifier(meta.pk.column)),
        sql.SQL("d.{} AS {}").format(sql.Identifier(meta.get_field(spec.natural_key).column), member),
        sql.SQL("d.valid_from, d.valid_to"),
        *(
            sql.SQL("d.{} AS {}").format(sql.Identifier(meta.get_field(a).column), sql.Identifier(a))
            for a in attrs
        ),
    ]
    cursor.execute(
        sql.SQL(
            "CREATE TEMP TABLE {versions} ON COMMIT DROP AS "
            "WITH old AS ("
            "  SELECT {old_columns} FROM {table} d"
            "  WHERE d.{pipeline} = {name} AND d.{key} IN (SELECT c.{member} FROM {changes} c)"
            "), points AS ("
            "  SELECT o.{member}, o.valid_from, {o_attrs}, o.id FROM old o WHERE o.valid_from <> {day}"
            "  UNION ALL"
            "  SELECT c.{member}, {day}, {c_attrs}, o.id FROM {changes} c "
            "  LEFT JOIN old o ON o.{member} = c.{member} AND o.valid_from = {day}"
            "  UNION ALL"
            "  SELECT o.{member}, {next}, {o_attrs}, NULL FROM old o "
            "  WHERE {o_valid} AND {next} < COALESCE(o.valid_to, 'infinity')"
            "), marked AS ("
            "  SELECT p.*, (lag(p.valid_from) OVER w IS NULL "
            "    OR ROW({p_attrs}) IS DISTINCT FROM ROW({lag_attrs})) AS starts"
            "  FROM points p WINDOW w AS (PARTITION BY p.{member} ORDER BY p.valid_from)"
            "), runs AS ("
            "  SELECT m.*, count(*) FILTER (WHERE m.starts) "
            "    OVER (PARTITION BY m.{member} ORDER BY m.valid_from) AS run FROM marked m"
            "), kept AS ("
            "  SELECT r.*, first_value(r.id) OVER (PARTITION BY r.{member}, r.run "
            "    ORDER BY r.id IS NULL, r.valid_from) AS keep FROM runs r"
            ") "
            "SELECT k.keep AS id, k.{member}, k.valid_from, "
            "  lead(k.valid_from) OVER (PARTITION BY k.{member} ORDER BY k.valid_from) AS valid_to, "
            "  {k_attrs} FROM kept k WHERE k.starts"
        ).format(
            versions=versions,
            old_columns=sql.SQL(", ").join(old_columns),
            table=sql.Identifier(meta.db_table),
            key=sql.Identifier(meta.get_field(spec.natural_key).column),
            pipeline=_column(spec.model, PIPELINE_FIELD),
            name=sql.Literal(pipeline),
            member=member,
            changes=changes,
            day=sql.Literal(day),
            next=sql.Literal(next_loaded),
            o_attrs=_columns("o", attrs),
            c_attrs=_columns("c", attrs),
            p_attrs=_columns("p", attrs),
            k_attrs=_columns("k", attrs),
            lag_attrs=sql.SQL(", ").join(
                sql.SQL("lag(p.{}) OVER w").format(sql.Identifier(a)) for a in attrs
            ),
            o_valid=_valid_on(sql.Identifier("o"), day),
        )
    )


def _repoint_facts(cursor, spec: Dimension, names: dict[str, sql.Composable], day: date) -> None:
    """Facts referencing a changed member's versions point to the version valid on their date, or to its
    first version for a date before it (as `_member_on` joins them).

    Every date can move, not only those from `day` on: a fact dated before the member's first version
    follows the first version when a backfill adds an earlier one."""
    dates = DimDate._meta
    for model, field in dimension_references():
        meta = model._meta
        if meta.get_field(field).related_model is not spec.model:
            continue
        when = sql.SQL("dd.{}").format(sql.Identifier(dates.get_field("date").column))
        cursor.execute(
            sql.SQL(
                "UPDATE {fact} f SET {ref} = v.{pk} FROM {table} o, {dates} dd, {table} v "
                "WHERE f.{ref} = o.{pk} AND o.{pipeline} = {name} "
                "AND o.{key} IN (SELECT c.{vkey} FROM {versions} c) "
                "AND dd.{date_key} = f.{fact_date} AND v.{pipeline} = {name} AND v.{key} = o.{key} "
                "AND (v.valid_to IS NULL OR v.valid_to > {when}) AND (v.valid_from <= {when} OR NOT EXISTS "
                "(SELECT 1 FROM {table} e WHERE e.{pipeline} = {name} AND e.{key} = v.{key} "
                "AND e.valid_from < v.valid_from "
                "AND e.{pk} NOT IN (SELECT id FROM {obsolete}))) "
                "AND v.{pk} NOT IN (SELECT id FROM {obsolete}) AND v.{pk} <> f.{ref}"
            ).format(
                fact=sql.Identifier(meta.db_table),
                ref=sql.Identifier(meta.get_field(field).column),
                fact_date=sql.Identifier(meta.get_field(PARTITION_FIELD).column),
                dates=sql.Identifier(dates.db_table),
                date_key=sql.Identifier(dates.pk.column),
                when=when,
                **names,
            )
        )


def _day_key(expression: sql.Composable) -> sql.Composable:
    """The DimDate key (YYYYMMDD) of a date expression."""
    return sql.SQL("to_char({}, 'YYYYMMDD')::integer").format(expression)


def _latest_purchase(spec: Fact, pipeline: str, lookback_start: sql.Composable) -> sql.Composable:
    """The LATERAL probe for return `r` (columns customer id `r_customer`, `stock_code`, `ordered_at`,
    `order_id`): its latest purchase (ordered_at, then order id in code-point order) in the pipeline's lines
    of the same customer and item, on a date from `lookback_start` to the day before `r_date`, at or before
    the return (docs/retail-semantics.md). One probe of the (customer, stock_code) index."""
    column = lambda name: _column(spec.model, name)  # noqa: E731
    return sql.SQL(
        "LATERAL (SELECT f.{order_id} AS order_id FROM {fact} f"
        " WHERE f.{customer} = r_customer AND f.{stock_code} = r.stock_code AND NOT f.{is_return}"
        "   AND f.{date} >= {lookback_start} AND f.{date} < r_date AND f.{ordered_at} <= r.ordered_at"
        "   AND f.{order_id} <> r.order_id AND f.{pipeline} = {name}"
        ' ORDER BY f.{ordered_at} DESC, f.{order_id} COLLATE "C" DESC LIMIT 1) p'
    ).format(
        fact=sql.Identifier(spec.model._meta.db_table),
        order_id=column("order_id"),
        customer=column("customer"),
        stock_code=column("stock_code"),
        is_return=column("is_return"),
        date=column(PARTITION_FIELD),
        ordered_at=column("ordered_at"),
        pipeline=column(PIPELINE_FIELD),
        name=sql.Literal(pipeline),
        lookback_start=lookback_start,
    )


def _link_returns(cursor, spec: Fact, staging: sql.Composable, pipeline: str) -> None:
    """Set `original_order_id` of the staged returns the job left unlinked (customer known) to their latest
    purchase on an earlier date than their own (:func:`_latest_purchase`), and mark it the loader's. Done in
    staging, before the merge, so a re-load computes the same link and leaves an unchanged row unchanged."""
    customers = DimCustomer._meta
    cursor.execute(
        sql.SQL("ALTER TABLE {} ADD COLUMN {} boolean NOT NULL DEFAULT false").format(
            staging, sql.Identifier(LINKED_BY_LOADER)
        )
    )
    business_date = sql.SQL("r.{}").format(sql.Identifier(DATE_COLUMN))
    cursor.execute(
        sql.SQL(
            "UPDATE {staging} s SET original_order_id = l.order_id, {linked} = true FROM ("
            "  SELECT r.order_id AS return_order, r.line_number AS return_line, p.order_id"
            "  FROM {staging} r JOIN {customers} c"
            "    ON c.{customer_pipeline} = {name} AND c.{customer_key} = r.customer_key"
            "  CROSS JOIN LATERAL (SELECT c.{customer_pk} AS r_customer, {r_date} AS r_date) k"
            "  CROSS JOIN {probe}"
            "  WHERE r.is_return AND r.original_order_id IS NULL"
            ") l WHERE s.order_id = l.return_order AND s.line_number = l.return_line"
        ).format(
            staging=staging,
            linked=sql.Identifier(LINKED_BY_LOADER),
            customers=sql.Identifier(customers.db_table),
            customer_key=sql.Identifier(customers.get_field("customer_key").column),
            customer_pk=sql.Identifier(customers.pk.column),
            customer_pipeline=_column(DimCustomer, PIPELINE_FIELD),
            name=sql.Literal(pipeline),
            r_date=_day_key(business_date),
            probe=_latest_purchase(
                spec,
                pipeline,
                _day_key(sql.SQL("{} - {}").format(business_date, sql.Literal(RETURN_LOOKBACK_DAYS))),
            ),
        )
    )


def _lock_return_links(cursor, staging: sql.Composable, pipeline: str, keys: Sequence[int]) -> None:
    """Take the pipeline's return-links lock before linking. A load in flight cannot see this one's rows,
    nor this one its, so two loads that could link to each other are serialised, the second seeing the
    first: this load waits (exclusive) when a load writing a later date in the look-ahead is in flight (its
    returns may link to this load's purchases), or when this load has returns to link and a load writing an
    earlier date in the look-back is in flight. In flight: holding a business-date lock (`_lock_dates`)."""
    first, last = key_date(min(keys)), key_date(max(keys))
    cursor.execute(
        "SELECT coalesce(bool_or(objid::bigint > %(first)s), false),"
        " coalesce(bool_or(objid::bigint < %(last)s), false)"
        " FROM pg_locks WHERE locktype = 'advisory' AND classid::bigint = %(class)s AND objsubid = 2"
        " AND objid::bigint BETWEEN %(start)s AND %(end)s AND pid <> pg_backend_pid()",
        {
            "class": lock_class(DATE_LOCK, pipeline),
            "first": date_key(first),
            "last": date_key(last),
            "start": return_lookback_start(first),
            "end": return_lookahead_end(last),
        },
    )
    later_in_flight, earlier_in_flight = cursor.fetchone()
    exclusive = later_in_flight
    if earlier_in_flight and not exclusive:
        cursor.execute(
            sql.SQL(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE is_return AND original_order_id IS NULL"
                " AND customer_key IS NOT NULL)"
            ).format(staging)
        )
        exclusive = cursor.fetchone()[0]
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    cursor.execute(f"SELECT {function}(%s, %s)", [LINKS_LOCK_CLASS, lock_class("links", pipeline)])


def _later_returns_exist(cursor, spec: Fact, pipeline: str, keys: Sequence[int]) -> bool:
    """Whether a return of the look-ahead after the first touched date is loaded: the nightly load (the
    latest dates) finds none, and skips revisiting links."""
    cursor.execute(
        sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE {pipeline} = %s AND {date} > %s AND {date} <= %s"
            " AND {is_return})"
        ).format(
            sql.Identifier(spec.model._meta.db_table),
            pipeline=_column(spec.model, PIPELINE_FIELD),
            date=_column(spec.model, PARTITION_FIELD),
            is_return=_column(spec.model, "is_return"),
        ),
        [pipeline, min(keys), return_lookahead_end(key_date(max(keys)))],
    )
    return cursor.fetchone()[0]


def _note_purchased_items(
    cursor, spec: Fact, pipeline: str, touched: sql.Composable, pairs: sql.Composable, *, create: bool
) -> None:
    """Add the (customer, stock_code) pairs of the touched dates' purchases to the temporary table `pairs`:
    called before the merge (what the dates held) and after it (what they hold now)."""
    column = lambda name: _column(spec.model, name)  # noqa: E731
    select = sql.SQL(
        "SELECT DISTINCT {customer} AS customer, {stock_code} AS stock_code FROM {fact}"
        " WHERE {pipeline} = {name} AND {date} IN (SELECT date_key FROM {touched}) AND NOT {is_return}"
        " AND {customer} IS NOT NULL"
    ).format(
        fact=sql.Identifier(spec.model._meta.db_table),
        customer=column("customer"),
        stock_code=column("stock_code"),
        pipeline=column(PIPELINE_FIELD),
        name=sql.Literal(pipeline),
        date=column(PARTITION_FIELD),
        touched=touched,
        is_return=column("is_return"),
    )
    if create:
        _create_as(cursor, pairs, select)
    else:
        cursor.execute(sql.SQL("INSERT INTO {} ").format(pairs) + select)


def _relink_later_returns(
    cursor, spec: Fact, pipeline: str, keys: Sequence[int], pairs: sql.Composable
) -> None:
    """Recompute the loader's links of returns in the look-ahead after the first touched date whose
    customer and item those dates bought, before or after this load: a purchase added, changed or removed
    by loading dates out of order moves them to the link a load in date order would have made. Links from
    the job or a source are not touched."""
    meta = spec.model._meta
    dates = DimDate._meta
    column = lambda name: _column(spec.model, name)  # noqa: E731
    cursor.execute(
        sql.SQL(
            "UPDATE {fact} t SET {original} = l.order_id, {linked} = l.order_id IS NOT NULL FROM ("
            "  SELECT r.{pk} AS id, p.order_id"
            "  FROM {fact} r"
            "  JOIN (SELECT DISTINCT customer, stock_code FROM {pairs}) i"
            "    ON i.customer = r.{customer} AND i.stock_code = r.{stock_code}"
            "  JOIN {dates} d ON d.{date_key} = r.{date}"
            "  CROSS JOIN LATERAL (SELECT r.{customer} AS r_customer, r.{date} AS r_date) k"
            "  LEFT JOIN {probe} ON true"
            "  WHERE r.{pipeline} = %s AND r.{date} > %s AND r.{date} <= %s AND r.{is_return}"
            "    AND (r.{linked} OR r.{original} IS NULL)"
            ") l WHERE t.{pk} = l.id AND t.{original} IS DISTINCT FROM l.order_id"
        ).format(
            fact=sql.Identifier(meta.db_table),
            linked=column(LINKED_BY_LOADER),
            pk=sql.Identifier(meta.pk.column),
            pairs=pairs,
            customer=column("customer"),
            stock_code=column("stock_code"),
            dates=sql.Identifier(dates.db_table),
            date_key=_column(DimDate, "date_key"),
            date=column(PARTITION_FIELD),
            pipeline=column(PIPELINE_FIELD),
            probe=_latest_purchase(
                spec,
                pipeline,
                _day_key(
                    sql.SQL("d.{} - {}").format(_column(DimDate, "date"), sql.Literal(RETURN_LOOKBACK_DAYS))
                ),
            ),
            is_return=column("is_return"),
            original=column("original_order_id"),
        ),
        [pipeline, min(keys), return_lookahead_end(key_date(max(keys)))],
    )


def _winning_orders(
    cursor,
    spec: Fact,
    pipeline: str,
    day: date,
    staging: sql.Composable,
    held: sql.Composable,
    won: sql.Composable,
) -> None:
    """`held`: the stored version and partition of each staged order; `won`: the staged orders whose
    version replaces the stored one: a greater version (an order's is its lines' greatest), or the same
    one from an earlier or the same partition. Orders, not lines: a newer version that drops a line drops
    it from the warehouse too."""
    names = dict(
        fact=sql.Identifier(spec.model._meta.db_table),
        pipeline=_column(spec.model, PIPELINE_FIELD),
        name=sql.Literal(pipeline),
        order=_column(spec.model, spec.versioned_by),
        order_column=sql.Identifier(spec.versioned_by),
        version=_column(spec.model, SOURCE_VERSION_FIELD),
        source=_column(spec.model, SOURCE_DATE_FIELD),
        staging=staging,
        held=held,
        won=won,
        day=sql.Literal(day),
    )
    _create_as(
        cursor,
        held,
        sql.SQL(
            "SELECT t.{order} AS order_id, max(t.{version}) AS version, min(t.{source}) AS source_date"
            " FROM {fact} t WHERE t.{pipeline} = {name}"
            " AND t.{order} IN (SELECT s.{order_column} FROM {staging} s) GROUP BY 1"
        ).format(**names),
    )
    _create_as(
        cursor,
        won,
        sql.SQL(
            "SELECT s.order_id FROM (SELECT {order_column} AS order_id, max({version_column}) AS version"
            " FROM {staging} GROUP BY 1) s LEFT JOIN {held} h ON h.order_id = s.order_id"
            " WHERE h.order_id IS NULL OR s.version > h.version"
            " OR (s.version = h.version AND {day} <= h.source_date)"
        ).format(version_column=sql.Identifier(SOURCE_VERSION_FIELD), **names),
    )


def _touched_dates(
    cursor, spec: Fact, pipeline: str, day: date, staging: sql.Composable, touched: sql.Composable
) -> list[int]:
    """The business dates this load may change: its lines' own, those of the stored lines of the orders
    it carries, and those of the lines its partition supplied before (which it may drop)."""
    meta = spec.model._meta
    _create_as(
        cursor,
        touched,
        sql.SQL(
            "SELECT DISTINCT {staged_day} AS date_key FROM {staging} s"
            " UNION SELECT t.{date} FROM {fact} t"
            "   WHERE t.{pipeline} = {name} AND t.order_id IN (SELECT s.order_id FROM {staging} s)"
            " UNION SELECT t.{date} FROM {fact} t WHERE t.{pipeline} = {name} AND t.{source} = {day}"
        ).format(
            staged_day=_day_key(sql.SQL("s.{}").format(sql.Identifier(DATE_COLUMN))),
            staging=staging,
            fact=sql.Identifier(meta.db_table),
            date=_column(spec.model, PARTITION_FIELD),
            pipeline=_column(spec.model, PIPELINE_FIELD),
            source=_column(spec.model, SOURCE_DATE_FIELD),
            name=sql.Literal(pipeline),
            day=sql.Literal(day),
        ),
    )
    cursor.execute(sql.SQL("SELECT date_key FROM {} ORDER BY 1").format(touched))
    return [row[0] for row in cursor.fetchall()]


def load_fact(cursor, connection, spec: Fact, pipeline: str, day: date, files: Sequence[Path]) -> FactLoad:
    """Merge partition `day`'s lines into the pipeline's fact: each order's lines as in the newest version
    of the order any partition carried, each line once on its own business date; delete the lines the
    partition supplied before and no longer holds; recompute the daily aggregate of every business date
    the load touched."""
    business_date = models.DateField()
    business_date.set_attributes_from_name(DATE_COLUMN)
    meta = spec.model._meta
    staged_fields = (
        [meta.get_field(a) for a in spec.attributes]
        + [business_date]
        + [ref.dimension(spec.model)._meta.get_field(ref.column) for ref in spec.references]
    )
    staging = _stage(cursor, connection, spec.output, staged_fields, files)
    fault_point("after_copy")
    _check_references(cursor, spec, staging, pipeline)
    touched = sql.Identifier("pg_temp", "touched_dates")
    keys = _touched_dates(cursor, spec, pipeline, day, staging, touched)
    _lock_dates(cursor, pipeline, keys)
    # Under the locks, a load that committed meanwhile may have moved a line this one carries elsewhere.
    locked, keys = set(keys), _touched_dates(cursor, spec, pipeline, day, staging, touched)
    _lock_dates(cursor, pipeline, [k for k in keys if k not in locked])
    result = FactLoad(rows=_staged_rows(cursor, staging), dates=[key_date(k).isoformat() for k in keys])
    if not keys:
        _drop(cursor, staging)
        _drop(cursor, touched)
        return result

    relink_pairs = None
    if spec.links_returns:
        _lock_return_links(cursor, staging, pipeline, keys)
        _link_returns(cursor, spec, staging, pipeline)
        if _later_returns_exist(cursor, spec, pipeline, keys):
            relink_pairs = sql.Identifier("pg_temp", "relink_pairs")
            _note_purchased_items(cursor, spec, pipeline, touched, relink_pairs, create=True)

    held, won = sql.Identifier("pg_temp", "held_orders"), sql.Identifier("pg_temp", "won_orders")
    _winning_orders(cursor, spec, pipeline, day, staging, held, won)
    _fact_load_count(cursor, staging, day, held, won, result)
    result.deleted = _stale_lines_delete(cursor, spec, pipeline, day, staging, won)
    _winning_lines_upsert(cursor, spec, pipeline, day, staging, won)
    if relink_pairs is not None:
        _note_purchased_items(cursor, spec, pipeline, touched, relink_pairs, create=False)
        _relink_later_returns(cursor, spec, pipeline, keys, relink_pairs)
        _drop(cursor, relink_pairs)
    fault_point("after_merge")
    _recompute_daily(cursor, spec, pipeline, touched)
    _check_daily(cursor, spec, pipeline, touched)
    for table in (staging, touched, held, won):
        _drop(cursor, table)
    return result


def _fact_load_count(cursor, staging, day: date, held, won, result: FactLoad) -> None:
    """What the partition's lines are to the warehouse, per business date, before the merge (FactLoad):
    new, replacing another partition's version, superseded by a newer one held, or this partition's own."""
    cursor.execute(
        sql.SQL(
            "SELECT s.{staged_day}, count(*) FILTER (WHERE w.order_id IS NOT NULL AND h.order_id IS NULL),"
            " count(*) FILTER (WHERE w.order_id IS NOT NULL AND h.source_date <> {day}),"
            " count(*) FILTER (WHERE w.order_id IS NULL),"
            " count(*) FILTER (WHERE w.order_id IS NOT NULL AND h.source_date = {day})"
            " FROM {staging} s LEFT JOIN {won} w ON w.order_id = s.order_id"
            " LEFT JOIN {held} h ON h.order_id = s.order_id GROUP BY 1 ORDER BY 1"
        ).format(
            staged_day=sql.Identifier(DATE_COLUMN), day=sql.Literal(day), staging=staging, held=held, won=won
        )
    )
    for staged_day, inserted, updated, superseded, reloaded in cursor.fetchall():
        result.inserted += inserted
        result.superseded += superseded
        result.reloaded += reloaded
        if updated:
            result.updated[staged_day.isoformat()] = updated


def _stale_lines_delete(cursor, spec: Fact, pipeline: str, day: date, staging, won) -> int:
    """Lines of an order this partition wins that its version does not hold; lines this partition supplied
    of orders it no longer carries (a corrected re-extraction, an order now quarantined)."""
    cursor.execute(
        sql.SQL(
            "DELETE FROM {table} t WHERE t.{pipeline} = {name} AND ("
            " (t.order_id IN (SELECT order_id FROM {won}) AND NOT EXISTS (SELECT 1 FROM {staging} s"
            "   WHERE s.order_id = t.order_id AND s.line_number = t.line_number))"
            # NOT EXISTS, not NOT IN: an anti-join; NOT IN over a day's orders outgrows work_mem's hash and
            # rescans the staged lines for every stored one (a 1M-line load ran for many minutes).
            " OR (t.{source} = {day} AND NOT EXISTS"
            "   (SELECT 1 FROM {staging} s WHERE s.order_id = t.order_id)))"
        ).format(
            table=sql.Identifier(spec.model._meta.db_table),
            staging=staging,
            pipeline=_column(spec.model, PIPELINE_FIELD),
            source=_column(spec.model, SOURCE_DATE_FIELD),
            day=sql.Literal(day),
            name=sql.Literal(pipeline),
            won=won,
        )
    )
    return cursor.rowcount


def _winning_lines_upsert(cursor, spec: Fact, pipeline: str, day: date, staging, won) -> None:
    """Insert or update the staged lines of the orders this partition wins, with surrogate keys joined in;
    a row whose values did not change is not rewritten."""
    # Joins that turn staged natural keys into surrogate keys, aliased r0, r1, ...
    joins = []
    for i, ref in enumerate(spec.references):
        alias = sql.Identifier(f"r{i}")
        joins.append(
            sql.SQL("{kind} JOIN {dim} {alias} ON {member}").format(
                kind=sql.SQL("LEFT" if ref.nullable(spec.model) else ""),
                dim=sql.Identifier(ref.dimension(spec.model)._meta.db_table),
                alias=alias,
                member=_member_on(spec, ref, alias, pipeline),
            )
        )
    columns = [_column(spec.model, PARTITION_FIELD), _column(spec.model, PIPELINE_FIELD)]
    values: list[sql.Composable] = [
        _day_key(sql.SQL("s.{}").format(sql.Identifier(DATE_COLUMN))),
        sql.Literal(pipeline),
    ]
    for i, ref in enumerate(spec.references):
        columns.append(_column(spec.model, ref.field))
        values.append(sql.SQL("{}.{}").format(sql.Identifier(f"r{i}"), _pk(ref, spec)))
    for name in spec.attributes:
        columns.append(_column(spec.model, name))
        values.append(sql.SQL("s.{}").format(sql.Identifier(name)))
    columns.append(_column(spec.model, SOURCE_DATE_FIELD))
    values.append(sql.Literal(day))
    if spec.links_returns:
        columns.append(_column(spec.model, LINKED_BY_LOADER))
        values.append(sql.SQL("s.{}").format(sql.Identifier(LINKED_BY_LOADER)))
    conflict = [_column(spec.model, f) for f in spec.unique_fields]
    update = [c for c in columns if c not in conflict]
    cursor.execute(
        sql.SQL(
            "INSERT INTO {table} AS t ({columns}) SELECT {values} FROM {staging} s "
            "JOIN {won} w ON w.order_id = s.order_id {joins} "
            "ON CONFLICT ({conflict}) DO UPDATE SET {sets} WHERE ROW({old}) IS DISTINCT FROM ROW({new})"
        ).format(
            table=sql.Identifier(spec.model._meta.db_table),
            columns=sql.SQL(", ").join(columns),
            values=sql.SQL(", ").join(values),
            staging=staging,
            joins=sql.SQL(" ").join(joins),
            conflict=sql.SQL(", ").join(conflict),
            won=won,
            sets=sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=c) for c in update),
            old=sql.SQL(", ").join(sql.SQL("t.{}").format(c) for c in update),
            new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(c) for c in update),
        )
    )


def _daily_query(spec: Fact, pipeline: str, touched: sql.Composable) -> sql.Composable:
    """The daily aggregate of the touched dates, from the line fact as it is now."""
    column = lambda name: _column(spec.model, name)  # noqa: E731
    return sql.SQL(
        "SELECT {pipeline} AS pipeline, {date} AS date_key, {store} AS store_id, {product} AS product_id,"
        " sum({quantity})::bigint AS quantity, sum({amount}) AS revenue, count(*) AS line_count,"
        " count(DISTINCT {order_id}) AS order_count"
        " FROM {fact} WHERE {pipeline} = {name} AND {date} IN (SELECT date_key FROM {touched})"
        " AND {line_type} = {product_type} GROUP BY 1, 2, 3, 4"
    ).format(
        fact=sql.Identifier(spec.model._meta.db_table),
        pipeline=column(PIPELINE_FIELD),
        date=column(PARTITION_FIELD),
        store=column("store"),
        product=column("product"),
        quantity=column("quantity"),
        amount=column("amount_reporting"),
        order_id=column("order_id"),
        line_type=column("line_type"),
        product_type=sql.Literal(DAILY_SALES.line_type),
        name=sql.Literal(pipeline),
        touched=touched,
    )


def _recompute_daily(cursor, spec: Fact, pipeline: str, touched: sql.Composable) -> None:
    """FactDailySales of the touched dates from the line fact: rows no group produces are deleted, the
    others upserted, writing only those that differ."""
    daily = DAILY_SALES.model
    fresh = sql.Identifier("pg_temp", "daily_fresh")
    _create_as(cursor, fresh, _daily_query(spec, pipeline, touched))
    keys = [_column(daily, f) for f in DAILY_SALES.group_by]
    fresh_keys = [sql.Identifier(n) for n in ("pipeline", "date_key", "store_id", "product_id")]
    cursor.execute(
        sql.SQL(
            "DELETE FROM {daily} t WHERE t.{pipeline} = %s AND t.{date} IN (SELECT date_key FROM {touched})"
            " AND NOT EXISTS (SELECT 1 FROM {fresh} f WHERE {matches})"
        ).format(
            daily=sql.Identifier(daily._meta.db_table),
            pipeline=_column(daily, PIPELINE_FIELD),
            date=_column(daily, PARTITION_FIELD),
            touched=touched,
            fresh=fresh,
            matches=sql.SQL(" AND ").join(
                sql.SQL("t.{} = f.{}").format(k, f) for k, f in zip(keys, fresh_keys, strict=True)
            ),
        ),
        [pipeline],
    )
    measures = ("quantity", "revenue", "line_count", "order_count")
    columns = keys + [_column(daily, m) for m in measures]
    cursor.execute(
        sql.SQL("INSERT INTO {daily} AS t ({columns}) SELECT {values} FROM {fresh} ").format(
            daily=sql.Identifier(daily._meta.db_table),
            columns=sql.SQL(", ").join(columns),
            values=sql.SQL(", ").join([*fresh_keys, *map(sql.Identifier, measures)]),
            fresh=fresh,
        )
        + _on_conflict(keys, columns[len(keys) :])
    )
    _drop(cursor, fresh)


def _check_daily(cursor, spec: Fact, pipeline: str, touched: sql.Composable) -> None:
    """The line and daily facts agree on every touched date (quantity, revenue, lines), or the load fails."""
    daily = DAILY_SALES.model
    cursor.execute(
        sql.SQL(
            "SELECT coalesce(l.date_key, d.date_key) FROM"
            " (SELECT date_key, sum(quantity) q, sum(revenue) r, sum(line_count) c"
            "   FROM ({lines}) x GROUP BY 1) l"
            " FULL JOIN (SELECT {date} AS date_key, sum({q}) q, sum({r}) r, sum({c}) c FROM {daily}"
            "   WHERE {pipeline} = %s AND {date} IN (SELECT date_key FROM {touched}) GROUP BY 1) d"
            " ON l.date_key = d.date_key"
            " WHERE ROW(l.q, l.r, l.c) IS DISTINCT FROM ROW(d.q, d.r, d.c) ORDER BY 1 LIMIT 5"
        ).format(
            lines=_daily_query(spec, pipeline, touched),
            daily=sql.Identifier(daily._meta.db_table),
            date=_column(daily, PARTITION_FIELD),
            pipeline=_column(daily, PIPELINE_FIELD),
            q=_column(daily, "quantity"),
            r=_column(daily, "revenue"),
            c=_column(daily, "line_count"),
            touched=touched,
        ),
        [pipeline],
    )
    wrong = [key_date(row[0]) for row in cursor.fetchall()]
    if wrong:
        raise DailyMismatchError(pipeline, wrong)


def load_quarantine(
    cursor, connection, pipeline: str, business_date: date, run_id: int | None, files: Sequence[Path]
) -> tuple[int, int]:
    meta = QuarantinedRow._meta
    staging = _stage(cursor, connection, "quarantine", [meta.get_field(c) for c in QUARANTINE_COLUMNS], files)
    table = sql.Identifier(meta.db_table)
    key = [sql.Identifier(meta.get_field(c).column) for c in ("dataset", "record_fingerprint")]
    cursor.execute(
        sql.SQL(
            "DELETE FROM {table} t WHERE t.{pipeline} = %s AND t.{day} = %s AND NOT EXISTS "
            "(SELECT 1 FROM {staging} s WHERE {matches})"
        ).format(
            table=table,
            pipeline=sql.Identifier(meta.get_field("pipeline").column),
            day=sql.Identifier(meta.get_field("business_date").column),
            staging=staging,
            matches=sql.SQL(" AND ").join(sql.SQL("t.{c} = s.{c}").format(c=c) for c in key),
        ),
        [pipeline, business_date],
    )
    deleted = cursor.rowcount
    # Identical records (same dataset and fingerprint) become one row counting them; text fields take the
    # smallest value in byte order (COLLATE "C"), as the portable path's min() in code point order.
    texts = ("reason_code", "message", "raw_record")
    columns = [
        sql.Identifier(meta.get_field(c).column)
        for c in ("pipeline", "business_date", "dataset", "record_fingerprint", *texts, "occurrences")
    ]
    values = [sql.Placeholder(), sql.Placeholder(), *(sql.SQL("s.{}").format(c) for c in key)]
    values += [sql.SQL('min(s.{} COLLATE "C")').format(sql.Identifier(t)) for t in texts]
    values.append(sql.SQL("count(*)"))
    first_run = sql.Identifier(meta.get_field("first_run").column)
    cursor.execute(
        sql.SQL(
            "INSERT INTO {table} AS t ({columns}, {first_run}) SELECT {values}, %s::bigint "
            "FROM {staging} s GROUP BY {key} "
        ).format(
            table=table,
            columns=sql.SQL(", ").join(columns),
            first_run=first_run,
            values=sql.SQL(", ").join(values),
            staging=staging,
            key=sql.SQL(", ").join(sql.SQL("s.{}").format(c) for c in key),
        )
        # first_run is left out of the update: a re-run must not rewrite which run first saw the record.
        + _on_conflict(columns[:4], columns[4:]),
        [pipeline, business_date, run_id],
    )
    cursor.execute(
        sql.SQL("SELECT count(*) FROM (SELECT DISTINCT {key} FROM {staging}) d").format(
            key=sql.SQL(", ").join(key), staging=staging
        )
    )
    rows = cursor.fetchone()[0]
    _drop(cursor, staging)
    return rows, deleted


def _on_conflict(conflict: list[sql.Composable], update: list[sql.Composable]) -> sql.Composable:
    """ON CONFLICT that rewrites a row only when a value differs: re-runs write (and bloat) nothing."""
    if not update:
        return sql.SQL("ON CONFLICT ({}) DO NOTHING").format(sql.SQL(", ").join(conflict))
    return sql.SQL(
        "ON CONFLICT ({conflict}) DO UPDATE SET {sets} WHERE ROW({old}) IS DISTINCT FROM ROW({new})"
    ).format(
        conflict=sql.SQL(", ").join(conflict),
        sets=sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=c) for c in update),
        old=sql.SQL(", ").join(sql.SQL("t.{}").format(c) for c in update),
        new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(c) for c in update),
    )


def _upsert_values(cursor, model, columns: list[str], values: list, conflict: list[str]) -> None:
    ids = [sql.Identifier(c) for c in columns]
    cursor.execute(
        sql.SQL("INSERT INTO {table} AS t ({columns}) VALUES ({values}) ").format(
            table=sql.Identifier(model._meta.db_table),
            columns=sql.SQL(", ").join(ids),
            values=sql.SQL(", ").join(sql.Placeholder() * len(ids)),
        )
        + _on_conflict(
            [sql.Identifier(c) for c in conflict],
            [i for i, c in zip(ids, columns, strict=True) if c not in conflict],
        ),
        values,
    )


def _member_on(spec: Fact, ref: Reference, alias: sql.Identifier, pipeline: str) -> sql.Composable:
    """The join condition of a staged natural key and its dimension row: for a dimension with history,
    the version valid on the line's business date, or the member's first version for a date before it (a
    partition's lines may predate the first snapshot of their product: docs/loading.md). The (natural key,
    valid_from) unique index serves it."""
    dim = ref.dimension(spec.model)._meta
    key = sql.Identifier(dim.get_field(ref.column).column)
    condition = sql.SQL("{alias}.{pipeline} = {name} AND {alias}.{key} = s.{column}").format(
        alias=alias,
        pipeline=sql.Identifier(dim.get_field(PIPELINE_FIELD).column),
        name=sql.Literal(pipeline),
        key=key,
        column=sql.Identifier(ref.column),
    )
    if ref.history(spec.model):
        day = sql.SQL("s.{}").format(sql.Identifier(DATE_COLUMN))
        condition = sql.SQL(
            "{condition} AND ({a}.valid_to IS NULL OR {a}.valid_to > {day}) AND ({a}.valid_from <= {day}"
            " OR NOT EXISTS (SELECT 1 FROM {table} e"
            "   WHERE e.{pipeline} = {a}.{pipeline} AND e.{key} = {a}.{key}"
            "   AND e.valid_from < {a}.valid_from))"
        ).format(
            condition=condition,
            a=alias,
            day=day,
            table=sql.Identifier(dim.db_table),
            key=key,
            pipeline=sql.Identifier(dim.get_field(PIPELINE_FIELD).column),
        )
    return condition


def _valid_on(alias: sql.Identifier, day: date | sql.Composable) -> sql.Composable:
    """[valid_from, valid_to) holds the date; an open version has no end."""
    when = day if isinstance(day, sql.Composable) else sql.Literal(day)
    return sql.SQL("{a}.valid_from <= {day} AND ({a}.valid_to IS NULL OR {a}.valid_to > {day})").format(
        a=alias, day=when
    )


def _check_references(cursor, spec: Fact, staging: sql.Composable, pipeline: str) -> None:
    """Fail with the missing natural keys rather than let an inner join drop fact rows silently."""
    for ref in spec.references:
        dim = ref.dimension(spec.model)
        condition = sql.SQL("NOT EXISTS (SELECT 1 FROM {dim} d WHERE {member})").format(
            dim=sql.Identifier(dim._meta.db_table),
            member=_member_on(spec, ref, sql.Identifier("d"), pipeline),
        )
        if ref.nullable(spec.model):
            condition = sql.SQL("s.{} IS NOT NULL AND ").format(sql.Identifier(ref.column)) + condition
        cursor.execute(
            sql.SQL("SELECT DISTINCT s.{column} FROM {staging} s WHERE {condition} LIMIT %s").format(
                column=sql.Identifier(ref.column), staging=staging, condition=condition
            ),
            [MISSING_SAMPLE],
        )
        missing = [row[0] for row in cursor.fetchall()]
        if missing:
            raise MissingDimensionError(dim, ref.column, missing)


def _columns(alias: str, names: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(
        sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(n)) for n in names
    )


def _create_as(cursor, table: sql.Composable, query: sql.Composable) -> int:
    """(Re)create a temporary table from a query; its row count."""
    cursor.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    cursor.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS {}").format(table, query))
    return cursor.rowcount


def _column(model: type[models.Model], name: str) -> sql.Identifier:
    """The database column of a model field."""
    return sql.Identifier(model._meta.get_field(name).column)


def _pk(ref, spec: Fact) -> sql.Identifier:
    return sql.Identifier(ref.dimension(spec.model)._meta.pk.column)


def _stage(
    cursor,
    connection,
    output: str,
    fields: list[models.Field],
    files: Sequence[Path],
    *,
    optional: Sequence[str] = (),
) -> sql.Composable:
    """A temporary table with the fields' database types, filled by COPY from the Parquet files; an
    `optional` column a file lacks (written before the job had it) is NULL."""
    staging = sql.Identifier("pg_temp", f"load_{output}")
    cursor.execute(
        sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
            staging,
            sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(f.db_type(connection)))
                for f in fields
            ),
        )
    )
    names = [f.name for f in fields]
    stream = CsvStream(_record_batches(files, names, optional), fault=f"during_copy:{output}")
    cursor.copy_expert(
        sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)")
        .format(staging, sql.SQL(", ").join(sql.Identifier(n) for n in names))
        .as_string(cursor.connection),
        stream,
        size=COPY_CHUNK_BYTES,
    )
    # Temporary tables get no autovacuum statistics; the merge's join plan needs them.
    cursor.execute(sql.SQL("ANALYZE {}").format(staging))
    return staging


def _staged_rows(cursor, staging: sql.Composable) -> int:
    cursor.execute(sql.SQL("SELECT count(*) FROM {}").format(staging))
    return cursor.fetchone()[0]


def _drop(cursor, staging: sql.Composable) -> None:
    # ON COMMIT DROP covers a standalone transaction; inside an outer one (tests, a caller's atomic) the
    # name must be free for the next load.
    cursor.execute(sql.SQL("DROP TABLE {}").format(staging))


# Told the rows of every batch COPY sends (etlcore's progress bar); a context variable, so the loader's
# signatures stay the load's and nothing here knows who listens.
_copy_listener: contextvars.ContextVar[Callable[[int], None] | None] = contextvars.ContextVar(
    "copy_listener", default=None
)


@contextmanager
def copy_rows_observed(listener: Callable[[int], None]) -> Iterator[None]:
    """`listener(rows)` for each batch COPY sends in the block."""
    token = _copy_listener.set(listener)
    try:
        yield
    finally:
        _copy_listener.reset(token)


def _record_batches(
    files: Sequence[Path], names: list[str], optional: Sequence[str] = ()
) -> Iterator[pa.RecordBatch]:
    for batch in _record_batches_read(files, names, optional):
        listener = _copy_listener.get()
        if listener is not None:
            listener(batch.num_rows)
        yield batch


def _record_batches_read(
    files: Sequence[Path], names: list[str], optional: Sequence[str] = ()
) -> Iterator[pa.RecordBatch]:
    for path in files:
        parquet = pq.ParquetFile(path)
        absent = [n for n in optional if n not in parquet.schema_arrow.names]
        read = [n for n in names if n not in absent]
        for batch in parquet.iter_batches(batch_size=COPY_BATCH_ROWS, columns=read):
            arrays = []
            for name in names:
                if name in absent:
                    arrays.append(pa.nulls(batch.num_rows, pa.string()))
                    continue
                column = batch.column(name)
                # Spark writes timestamps as UTC instants; a naive one is read as UTC, not as local time.
                if pa.types.is_timestamp(column.type) and column.type.tz is None:
                    column = column.cast(pa.timestamp(column.type.unit, tz="UTC"))
                arrays.append(column)
            yield pa.RecordBatch.from_arrays(arrays, names=names)


class CsvStream(io.RawIOBase):
    """A read-only file over record batches rendered as CSV one batch at a time (memory: one batch).

    pyarrow's CSV quotes every string and writes NULL as an empty unquoted field, which is exactly how
    COPY's CSV format tells NULL from the empty string."""

    def __init__(self, batches: Iterator[pa.RecordBatch], *, fault: str = "during_copy") -> None:
        self._batches = batches
        self._fault = fault
        self._buffer = memoryview(b"")
        self._batches_sent = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while not self._buffer:
            if self._batches_sent:
                fault_point(self._fault)  # the server holds a COPY in progress
            batch = next(self._batches, None)
            if batch is None:
                return b""
            sink = io.BytesIO()
            pacsv.write_csv(batch, sink, CSV_OPTIONS)
            self._buffer = sink.getbuffer()
            self._batches_sent += 1
        if size is None or size < 0:
            size = len(self._buffer)
        chunk, self._buffer = self._buffer[:size], self._buffer[size:]
        return bytes(chunk)
