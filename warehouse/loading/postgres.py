"""The PostgreSQL fast path: Parquet record batches -> CSV -> COPY into a temporary table -> one set-wise
merge per table, all inside the caller's transaction.

Per output: `CREATE TEMP TABLE ... ON COMMIT DROP` with the model's column types, `COPY ... FROM STDIN
(FORMAT csv)` streamed from the Parquet file one bounded record batch at a time, then SQL that resolves
dimension keys by joining the dimension tables (never per row in Python), deletes the date's rows the
partition no longer holds (anti-join) and upserts on the natural key, rewriting only rows that differ
(`IS DISTINCT FROM`), so a re-run writes nothing and locks no row it does not change. Identifiers are
composed with psycopg2.sql; values are bound parameters.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from django.db import models
from psycopg2 import sql

from ..models import DimDate, QuarantinedRow
from .portable import MissingDimensionError
from .specs import (
    PARTITION_FIELD,
    QUARANTINE_COLUMNS,
    Dimension,
    Fact,
    date_key,
    dim_date_row,
    fault_point,
)

COPY_BATCH_ROWS = 65_536
COPY_CHUNK_BYTES = 1 << 20
CSV_OPTIONS = pacsv.WriteOptions(include_header=False)
# Transaction-level advisory lock per date: loads of one date queue up, other dates never wait on it.
ADVISORY_LOCK_CLASS = 0x45544C  # "ETL"
MISSING_SAMPLE = 5


def lock_partition(cursor, day: date) -> None:
    cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [ADVISORY_LOCK_CLASS, date_key(day)])


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


def load_dimension(cursor, connection, spec: Dimension, files: Sequence[Path]) -> int:
    """Insert new members, then update members whose attributes changed; unchanged rows are not touched.

    Two statements instead of `ON CONFLICT DO UPDATE`, which locks every conflicting row even when its
    WHERE is false: concurrent loads of other dates share these dimension rows and must not wait on them."""
    meta = spec.model._meta
    staging = _stage(cursor, connection, spec.output, [meta.get_field(c) for c in spec.columns], files)
    table = sql.Identifier(meta.db_table)
    key = sql.Identifier(meta.get_field(spec.natural_key).column)
    columns = [sql.Identifier(meta.get_field(c).column) for c in spec.columns]
    staged = [sql.Identifier(c) for c in spec.columns]
    cursor.execute(
        sql.SQL(
            "INSERT INTO {table} ({columns}) SELECT {staged} FROM {staging} s "
            "WHERE NOT EXISTS (SELECT 1 FROM {table} d WHERE d.{key} = s.{skey}) "
            "ON CONFLICT ({key}) DO NOTHING"
        ).format(
            table=table,
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
                "UPDATE {table} d SET {sets} FROM {staging} s WHERE d.{key} = s.{skey} "
                "AND ROW({old}) IS DISTINCT FROM ROW({new})"
            ).format(
                table=table,
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
    rows = _staged_rows(cursor, staging)
    _drop(cursor, staging)
    return rows


def load_fact(cursor, connection, spec: Fact, dk: int, files: Sequence[Path]) -> tuple[int, int]:
    meta = spec.model._meta
    staged_fields = [meta.get_field(a) for a in spec.attributes] + [
        ref.dimension(spec.model)._meta.get_field(ref.column) for ref in spec.references
    ]
    staging = _stage(cursor, connection, spec.output, staged_fields, files)
    fault_point("after_copy")
    _check_references(cursor, spec, staging)

    # Joins that turn staged natural keys into surrogate keys, aliased r0, r1, ...
    joins = []
    for i, ref in enumerate(spec.references):
        dim = ref.dimension(spec.model)._meta
        joins.append(
            sql.SQL("{kind} JOIN {dim} {alias} ON {alias}.{key} = s.{column}").format(
                kind=sql.SQL("LEFT" if ref.nullable(spec.model) else ""),
                dim=sql.Identifier(dim.db_table),
                alias=sql.Identifier(f"r{i}"),
                key=sql.Identifier(dim.get_field(ref.column).column),
                column=sql.Identifier(ref.column),
            )
        )
    date_column = sql.Identifier(meta.get_field(PARTITION_FIELD).column)
    table = sql.Identifier(meta.db_table)

    # Stale rows first, while the date holds only the previous load: the anti-join then scans no new rows.
    key_matches, key_joins = [], []
    for name in spec.partition_key:
        ref = spec.reference(name)
        column = sql.Identifier(meta.get_field(name).column)
        if ref is None:
            key_matches.append(sql.SQL("t.{c} = s.{c}").format(c=column))
        else:
            i = spec.references.index(ref)
            key_joins.append(joins[i])
            key_matches.append(
                sql.SQL("t.{} = {}.{}").format(column, sql.Identifier(f"r{i}"), _pk(ref, spec))
            )
    cursor.execute(
        sql.SQL(
            "DELETE FROM {table} t WHERE t.{date} = %s AND NOT EXISTS "
            "(SELECT 1 FROM {staging} s {joins} WHERE {matches})"
        ).format(
            table=table,
            date=date_column,
            staging=staging,
            joins=sql.SQL(" ").join(key_joins),
            matches=sql.SQL(" AND ").join(key_matches),
        ),
        [dk],
    )
    deleted = cursor.rowcount

    columns = [date_column]
    values: list[sql.Composable] = [sql.Placeholder()]
    for i, ref in enumerate(spec.references):
        columns.append(sql.Identifier(meta.get_field(ref.field).column))
        values.append(sql.SQL("{}.{}").format(sql.Identifier(f"r{i}"), _pk(ref, spec)))
    for name in spec.attributes:
        columns.append(sql.Identifier(meta.get_field(name).column))
        values.append(sql.SQL("s.{}").format(sql.Identifier(name)))
    conflict = [sql.Identifier(meta.get_field(f).column) for f in spec.unique_fields]
    cursor.execute(
        sql.SQL("INSERT INTO {table} AS t ({columns}) SELECT {values} FROM {staging} s {joins} ").format(
            table=table,
            columns=sql.SQL(", ").join(columns),
            values=sql.SQL(", ").join(values),
            staging=staging,
            joins=sql.SQL(" ").join(joins),
        )
        + _on_conflict(conflict, [c for c in columns if c not in conflict]),
        [dk],
    )
    fault_point("after_merge")
    rows = _staged_rows(cursor, staging)
    _drop(cursor, staging)
    return rows, deleted


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


def _check_references(cursor, spec: Fact, staging: sql.Composable) -> None:
    """Fail with the missing natural keys rather than let an inner join drop fact rows silently."""
    for ref in spec.references:
        dim = ref.dimension(spec.model)
        condition = sql.SQL("NOT EXISTS (SELECT 1 FROM {dim} d WHERE d.{key} = s.{column})").format(
            dim=sql.Identifier(dim._meta.db_table),
            key=sql.Identifier(dim._meta.get_field(ref.column).column),
            column=sql.Identifier(ref.column),
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


def _pk(ref, spec: Fact) -> sql.Identifier:
    return sql.Identifier(ref.dimension(spec.model)._meta.pk.column)


def _stage(
    cursor, connection, output: str, fields: list[models.Field], files: Sequence[Path]
) -> sql.Composable:
    """A temporary table with the fields' database types, filled by COPY from the Parquet files."""
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
    stream = CsvStream(_record_batches(files, names), fault=f"during_copy:{output}")
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


def _record_batches(files: Sequence[Path], names: list[str]) -> Iterator[pa.RecordBatch]:
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=COPY_BATCH_ROWS, columns=names):
            arrays = []
            for name in names:
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
