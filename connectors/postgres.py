"""PostgreSQL tables and queries (psycopg2), full refresh or incremental by a watermark and a tie-breaker."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg2
import psycopg2.extensions
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg2 import sql

from .base import (
    Connector,
    ExtractWindow,
    LastExtract,
    Probe,
    RawBatch,
    reject_unknown_options,
    secret_from_env,
)
from .errors import ConfigurationError, ProbeUnsupported, SourceError, library_error_text
from .options import TEXT, TEXT_LIST, WHOLE, OneOf, Table
from .secrets import secret_get
from .watermarks import Ties, fingerprint

__all__ = ["OPTIONS", "PostgresConnector", "pg_connect"]

NAMES = OneOf((TEXT, TEXT_LIST), "a name or a list of names")
OPTIONS = Table(
    {
        "kind": TEXT,
        "dsn_env": TEXT,
        "table": NAMES,
        "columns": TEXT_LIST,
        "query": TEXT,
        "mode": TEXT,
        "watermark_column": TEXT,
        "tiebreaker_column": NAMES,
        "initial_watermark": TEXT,
        "batch_size": WHOLE,
        "fetch": TEXT,
        "connect_timeout_seconds": WHOLE,
    }
)
MODES = ("full", "incremental")
FETCHES = ("copy", "cursor")
# COPY output crosses a pipe to the CSV parser; these bound what is in flight between the two.
_PIPE_BUFFER = 1 << 20
_MIN_BLOCK = 1 << 20
_MAX_BLOCK = 16 << 20
_BYTES_PER_ROW_GUESS = 128
_JOIN_SECONDS = 30
# A probe counts rows up to this many (more is "more"), and gives up on a statement after this long.
PROBE_COUNT_LIMIT = 10_000
PROBE_STATEMENT_TIMEOUT = "60s"


def pg_connect(dsn: str, *, connect_timeout: int = 10) -> psycopg2.extensions.connection:
    """A read-only connection whose text output does not depend on the server's or role's settings.

    Timestamps print in ISO form in UTC, so a watermark read back from the output compares exactly."""
    try:
        conn = psycopg2.connect(dsn, connect_timeout=connect_timeout, application_name="django-spark-etl")
    except psycopg2.Error as exc:
        raise SourceError(f"cannot connect to PostgreSQL at {dsn_label(dsn)}: {_message(exc, dsn)}") from None
    try:
        conn.set_session(readonly=True)
        conn.set_client_encoding("UTF8")
        with conn.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'")
    except BaseException:
        conn.close()
        raise
    return conn


def dsn_label(dsn: str) -> str:
    """`user@host:port/dbname` of a DSN or URL, without its password (for messages and manifests)."""
    try:
        parts = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.Error:
        return "<unparsable DSN>"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"{user}{parts.get('host', 'localhost')}{port}/{parts.get('dbname', '')}"


def _message(exc: BaseException, dsn: str | None = None) -> str:
    """The first line of a driver error, with the DSN's password masked should the driver echo it."""
    lines = (getattr(exc, "pgerror", None) or str(exc)).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    if dsn:
        try:
            password = psycopg2.extensions.parse_dsn(dsn).get("password")
        except psycopg2.Error:
            password = None
        text = text.replace(dsn, "<dsn>")
        if password:
            text = text.replace(password, "***")
    # "invalid input syntax for type ...: <the value>": a driver may quote a row's value; keep it short.
    return library_error_text(Exception(text.removeprefix("ERROR:").strip()))


def _text(value: str | None, _cursor: Any) -> str | None:
    return value


class PostgresConnector(Connector):
    """Reads a table (or a query's result) through `COPY ... TO STDOUT` streamed into Arrow batches.

    Options: `dsn_env` (required: the name of the environment variable holding a libpq URL or DSN),
    `table` ("schema.table", or a list of name parts for names holding dots) with optional `columns`, or
    `query` (SQL text, used as a subquery); `mode` (full | incremental, default full), `watermark_column`
    and `tiebreaker_column` (a column or a list of columns; required for incremental), `initial_watermark`
    (lower bound of the first incremental run), `fetch` (copy | cursor, default copy), `batch_size`,
    `connect_timeout_seconds`.

    Every value arrives as the text PostgreSQL prints (timestamps in ISO form, UTC; numerics exact); SQL
    NULL stays null and '' stays ''. Incremental runs read rows with (watermark, tiebreaker...) greater
    than the saved state and watermark before the window's end, in that order, so rows sharing a timestamp
    are never skipped nor read twice; `next_state` is {"watermark": [watermark text, tiebreaker text...]}
    of the last row read. A full refresh reads everything and leaves the state as it was.
    """

    kind = "postgres"
    option_schema = OPTIONS
    _type_oids: set[int]

    def __init__(
        self, *, name: str, options: Mapping[str, Any], state: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(name=name, options=options, state=state)
        opts = self.options
        reject_unknown_options(name, opts, OPTIONS.keys)
        self.dsn_env = opts.get("dsn_env")
        if not isinstance(self.dsn_env, str) or not self.dsn_env:
            raise ConfigurationError(
                f"source {name!r}: 'dsn_env' is required: the name of the environment variable holding "
                "the database URL (never the URL itself)"
            )
        self.table = self._table_option(opts.get("table"))
        query = opts.get("query")
        if (self.table is None) == (query is None):
            raise ConfigurationError(f"source {name!r}: set exactly one of 'table' or 'query'")
        if query is not None and (not isinstance(query, str) or not query.strip().rstrip(";").strip()):
            raise ConfigurationError(f"source {name!r}: 'query' must be a non-empty SQL text")
        self.query = query.strip().rstrip(";").strip() if isinstance(query, str) else None
        self.columns = self._names_option("columns", opts.get("columns"))
        self.mode = opts.get("mode", "full")
        if self.mode not in MODES:
            raise ConfigurationError(f"source {name!r}: mode {self.mode!r} is not one of {', '.join(MODES)}")
        self.fetch = opts.get("fetch", "copy")
        if self.fetch not in FETCHES:
            raise ConfigurationError(
                f"source {name!r}: fetch {self.fetch!r} is not one of {', '.join(FETCHES)}"
            )
        self.connect_timeout = int(opts.get("connect_timeout_seconds", 10))
        watermark = opts.get("watermark_column")
        tiebreaker = opts.get("tiebreaker_column")
        self.watermark_column: str | None = None
        self._saved = Ties()  # the rows delivered at the saved watermark
        self._ties = Ties()  # the rows seen at this run's latest watermark
        self.tiebreakers: list[str] = []
        self.initial_watermark = opts.get("initial_watermark")
        if self.mode == "incremental":
            if not isinstance(watermark, str) or not watermark:
                raise ConfigurationError(f"source {name!r}: incremental mode needs 'watermark_column'")
            tiebreakers = [tiebreaker] if isinstance(tiebreaker, str) else tiebreaker
            self.tiebreakers = self._names_option("tiebreaker_column", tiebreakers) or []
            if not self.tiebreakers:
                # Without a unique tie-breaker, rows sharing the last watermark of a run are either
                # skipped (>) or read twice (>=) by the next run.
                raise ConfigurationError(
                    f"source {name!r}: incremental mode needs 'tiebreaker_column' (a unique, non-null "
                    "key such as id) so that rows sharing a watermark are neither skipped nor repeated"
                )
            self.watermark_column = watermark
            if self.initial_watermark is not None and not isinstance(self.initial_watermark, str):
                raise ConfigurationError(
                    f"source {name!r}: initial_watermark must be a text such as '2026-01-01T00:00:00Z'"
                )
            self._check_state()
        elif watermark is not None or tiebreaker is not None or self.initial_watermark is not None:
            raise ConfigurationError(
                f"source {name!r}: watermark_column, tiebreaker_column and initial_watermark apply to "
                "mode = 'incremental' only"
            )

    # --- public -----------------------------------------------------------------------------------------

    def describe(self) -> str:
        """`postgres:user@host:port/db table schema.name` (or `query ...`); never the password."""
        try:
            dsn = secret_get(self.dsn_env or "")
        except ConfigurationError:
            dsn = ""  # the extract reports it; a description names the variable instead
        where = dsn_label(dsn) if dsn else f"${self.dsn_env}"
        if self.table is not None:
            return f"postgres:{where} table {'.'.join(self.table)}"
        query = " ".join((self.query or "").split())
        return f"postgres:{where} query {query[:80]}{'...' if len(query) > 80 else ''}"

    def iter_batches(self, window: ExtractWindow) -> Iterator[RawBatch]:
        dsn = self._dsn()
        try:
            conn = pg_connect(dsn, connect_timeout=self.connect_timeout)
        except SourceError as exc:
            raise SourceError(f"source {self.name!r}: {exc}") from None
        try:
            names = self._column_names(conn)
            select = self._select(names, window)
            fetch = self._copy_batches if self.fetch == "copy" else self._cursor_batches
            # Closed before the connection, so a consumer that stops early stops the COPY first.
            with contextlib.closing(fetch(conn, select, names)) as batches:
                for batch in batches:
                    if self.mode == "incremental":
                        self.next_state = self._state_of_last_row(batch)
                        batch = self._new_rows(batch)
                    if batch.num_rows:
                        yield batch
        finally:
            conn.close()

    def probe(self, window: ExtractWindow, *, last: LastExtract | None = None) -> Probe:
        """One statement (a read-only transaction, at most PROBE_STATEMENT_TIMEOUT): the greatest watermark
        before the window's end and from the saved one on, the rows after the saved watermark, and the
        rows at it, each count stopping at PROBE_COUNT_LIMIT + 1 (an index on the watermark column keeps
        it cheap). Newer: a row after the saved watermark, or more rows at it than were delivered (a row
        updated again within that instant, the row count unchanged, is not seen). A full refresh has no
        watermark to compare with: it cannot be probed."""
        if self.mode != "incremental":
            raise ProbeUnsupported(
                f"source {self.name!r}: a full-refresh PostgreSQL source has no watermark to compare with"
            )
        statement, delivered = self._probe_statement(window)
        try:
            conn = pg_connect(self._dsn(), connect_timeout=self.connect_timeout)
        except SourceError as exc:
            raise SourceError(f"source {self.name!r}: {exc}") from None
        try:
            with conn.cursor() as cursor:
                cursor.execute(
                    sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(PROBE_STATEMENT_TIMEOUT))
                )
                cursor.execute(statement)
                greatest, after, at = cursor.fetchone()
            conn.rollback()
        except psycopg2.Error as exc:
            raise SourceError(
                f"source {self.name!r}: probing {self._what()} failed: {_message(exc)}"
            ) from None
        finally:
            conn.close()
        if greatest is None:
            return Probe(fingerprint=None, newer=False)
        newer = after > 0 or (delivered is not None and at > delivered)
        return Probe(fingerprint={"watermark": greatest, "after": after, "at": at}, newer=newer)

    def _probe_statement(self, window: ExtractWindow) -> tuple[sql.Composed, int | None]:
        """The probe's statement, and how many rows at the saved watermark were delivered (None: unknown)."""
        watermark = sql.Identifier("src", self.watermark_column or "")
        relation = self._relation()
        before_end = sql.SQL("{} < {}").format(watermark, sql.Literal(window.end))
        delivered: int | None = None
        if self._saved.complete and self._saved.instant is not None:
            saved = sql.Literal(self._saved.instant)
            lowest = sql.SQL("{} >= {}").format(watermark, saved)
            after = sql.SQL("{} > {}").format(watermark, saved)
            at = sql.SQL("{} = {}").format(watermark, saved)
            delivered = len(self._saved.seen)
        elif self.state:  # saved before the rows at the watermark were recorded: after its last key
            key = sql.SQL(", ").join(
                sql.Identifier("src", c) for c in [self.watermark_column or "", *self.tiebreakers]
            )
            values = sql.SQL(", ").join(sql.Literal(v) for v in self.state["watermark"])
            lowest = after = sql.SQL("({}) > ({})").format(key, values)
            at = sql.SQL("false")
        elif self.initial_watermark is not None:
            lowest = after = sql.SQL("{} >= {}").format(watermark, sql.Literal(self.initial_watermark))
            at = sql.SQL("false")
        else:
            lowest = after = sql.SQL("true")
            at = sql.SQL("false")

        def counted(condition: sql.Composable) -> sql.Composed:
            rows = sql.SQL("SELECT 1 FROM {} AS src WHERE {} AND {} LIMIT {}").format(
                relation, condition, before_end, sql.Literal(PROBE_COUNT_LIMIT + 1)
            )
            return sql.SQL("(SELECT count(*) FROM ({}) AS n)").format(rows)

        statement = sql.SQL("SELECT (SELECT max({})::text FROM {} AS src WHERE {} AND {}), {}, {}").format(
            watermark, relation, lowest, before_end, counted(after), counted(at)
        )
        return statement, delivered

    # --- SQL --------------------------------------------------------------------------------------------

    def _relation(self) -> sql.Composable:
        if self.table is not None:
            return sql.SQL(".").join(sql.Identifier(part) for part in self.table)
        # The query is the pipeline author's own SQL: it is used as written, never formatted.
        return sql.SQL("({})").format(sql.SQL(self.query or ""))

    def _column_names(self, conn: psycopg2.extensions.connection) -> list[str]:
        """The columns read, checked against the source: configured ones plus the watermark's."""
        wanted = list(self.columns) if self.columns else None
        if wanted is not None:
            for extra in [self.watermark_column, *self.tiebreakers]:
                if extra and extra not in wanted:
                    wanted.append(extra)  # next_state is read from the last row
        select_list = sql.SQL(", ").join(sql.Identifier("src", n) for n in wanted) if wanted else sql.SQL("*")
        probe = sql.SQL("SELECT {} FROM {} AS src LIMIT 0").format(select_list, self._relation())
        try:
            with conn.cursor() as cursor:
                cursor.execute(probe)
                names = [column.name for column in cursor.description]
                self._type_oids = {column.type_code for column in cursor.description}
        except psycopg2.Error as exc:
            raise SourceError(f"source {self.name!r}: cannot read {self._what()}: {_message(exc)}") from None
        finally:
            conn.rollback()
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigurationError(
                f"source {self.name!r}: {self._what()} returns column(s) {', '.join(duplicates)} more than "
                "once; give them distinct names"
            )
        missing = [c for c in [self.watermark_column, *self.tiebreakers] if c and c not in names]
        if missing:
            raise SourceError(
                f"source {self.name!r}: {self._what()} has no column {', '.join(missing)} "
                f"(columns: {', '.join(names)})"
            )
        return names

    def _select(self, names: Sequence[str], window: ExtractWindow) -> sql.Composed:
        select_list = sql.SQL(", ").join(sql.Identifier("src", n) for n in names)
        statement = sql.SQL("SELECT {} FROM {} AS src").format(select_list, self._relation())
        if self.mode == "full":
            return statement
        # Qualified names: ORDER BY sorts the source's values whatever the output columns are called.
        watermark = sql.Identifier("src", self.watermark_column or "")
        key = sql.SQL(", ").join(
            sql.Identifier("src", c) for c in [self.watermark_column or "", *self.tiebreakers]
        )
        # Values are inlined as literals quoted by the driver: COPY takes no bind parameters.
        conditions = [sql.SQL("{} < {}").format(watermark, sql.Literal(window.end))]
        if self._saved.complete and self._saved.instant is not None:
            # Every row at the saved watermark is read again and the delivered ones dropped on arrival
            # (_new_rows): `(wm, key) > saved` would skip a row committed later with a lower key, or
            # updated again within the same timestamp.
            conditions.append(sql.SQL("{} >= {}").format(watermark, sql.Literal(self._saved.instant)))
        elif self.state:
            conditions.append(
                sql.SQL("({}) > ({})").format(
                    key, sql.SQL(", ").join(sql.Literal(v) for v in self.state["watermark"])
                )
            )
        elif self.initial_watermark is not None:
            conditions.append(sql.SQL("{} >= {}").format(watermark, sql.Literal(self.initial_watermark)))
        return sql.SQL("{} WHERE {} ORDER BY {}").format(statement, sql.SQL(" AND ").join(conditions), key)

    # --- fetching ---------------------------------------------------------------------------------------

    def _copy_batches(
        self, conn: psycopg2.extensions.connection, select: sql.Composed, names: list[str]
    ) -> Iterator[pa.RecordBatch]:
        """COPY's CSV output is written into a pipe by a thread and parsed by Arrow's CSV reader here.

        The pipe and the reader's block size bound the memory in flight. Whichever side stops first
        unblocks the other: the writer closes its end (end of input for the reader), the reader closes its
        end and cancels the query (the writer's next write fails)."""
        copy = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv)").format(select).as_string(conn)
        read_fd, write_fd = os.pipe()
        sink = os.fdopen(write_fd, "wb", buffering=_PIPE_BUFFER)
        stream = os.fdopen(read_fd, "rb", buffering=_PIPE_BUFFER)
        failure: list[BaseException] = []

        def pump() -> None:
            try:
                with conn.cursor() as cursor:
                    cursor.copy_expert(copy, sink, size=_PIPE_BUFFER)
                conn.rollback()
            except BaseException as exc:  # reported by the reading side
                failure.append(exc)
            finally:
                try:
                    sink.close()
                except OSError:
                    pass  # the reader is gone (broken pipe): it stopped on purpose

        block_size = min(max(self.batch_size * _BYTES_PER_ROW_GUESS, _MIN_BLOCK), _MAX_BLOCK)
        thread = threading.Thread(target=pump, name=f"pg-copy-{self.name}", daemon=True)
        thread.start()
        finished = False
        unreadable: pa.ArrowInvalid | None = None
        try:
            if stream.peek(1):  # Arrow calls an empty input an error; no rows is not one
                reader = pacsv.open_csv(
                    pa.PythonFile(stream, mode="r"),
                    read_options=pacsv.ReadOptions(column_names=names, block_size=block_size),
                    parse_options=pacsv.ParseOptions(newlines_in_values=True),
                    convert_options=pacsv.ConvertOptions(
                        column_types={n: pa.string() for n in names},
                        # COPY writes NULL as an unquoted empty field and '' as "".
                        null_values=[""],
                        strings_can_be_null=True,
                        quoted_strings_can_be_null=False,
                    ),
                )
                for block in reader:
                    for offset in range(0, block.num_rows, self.batch_size):
                        yield block.slice(offset, self.batch_size)
            finished = True
        except pa.ArrowInvalid as exc:
            # A COPY that failed midway shows here as truncated CSV; its failure was recorded before
            # the writer closed the pipe, so the server's reason is reported when there is one.
            unreadable = exc
        finally:
            if not finished:
                with contextlib.suppress(psycopg2.Error):
                    conn.cancel()
            stream.close()
            thread.join(_JOIN_SECONDS)
        if failure:
            raise self._fetch_error(failure[0])
        if unreadable is not None:
            raise SourceError(
                f"source {self.name!r}: unreadable COPY output of {self._what()}: {unreadable}"
            ) from unreadable
        if thread.is_alive():
            raise SourceError(f"source {self.name!r}: COPY of {self._what()} did not finish")

    def _cursor_batches(
        self, conn: psycopg2.extensions.connection, select: sql.Composed, names: list[str]
    ) -> Iterator[pa.RecordBatch]:
        """A server-side cursor, batch_size rows per round trip (slower than COPY; no helper thread)."""
        schema = pa.schema([pa.field(n, pa.string()) for n in names])
        try:
            with conn.cursor(name=f"dse_{self.name}"[:63]) as cursor:
                # Values as the server's text output, exactly what COPY prints ('t' for true, not 'true'
                # as ::text would give), instead of Python objects.
                as_text = psycopg2.extensions.new_type(tuple(self._type_oids), "DSE_TEXT", _text)
                psycopg2.extensions.register_type(as_text, cursor)
                cursor.itersize = self.batch_size
                cursor.execute(select)
                while rows := cursor.fetchmany(self.batch_size):
                    arrays = [pa.array(column, type=pa.string()) for column in zip(*rows, strict=True)]
                    yield pa.RecordBatch.from_arrays(arrays, schema=schema)
            conn.rollback()
        except psycopg2.Error as exc:
            raise self._fetch_error(exc) from None

    def _fetch_error(self, exc: BaseException) -> SourceError:
        return SourceError(f"source {self.name!r}: reading {self._what()} failed: {_message(exc)}")

    # --- state ------------------------------------------------------------------------------------------

    def _state_of_last_row(self, batch: pa.RecordBatch) -> dict[str, Any]:
        """The last row's (watermark, key) and every row seen at that watermark, by key and content."""
        if not batch.num_rows:
            return self.next_state or {}
        key = [batch.column(c)[-1].as_py() for c in [self.watermark_column or "", *self.tiebreakers]]
        if any(v is None for v in key[1:]):
            raise SourceError(
                f"source {self.name!r}: tie-breaker {', '.join(self.tiebreakers)} is null in a row of "
                f"{self._what()}; it must be a non-null unique key"
            )
        # Rows arrive in watermark order: the ones sharing the last row's watermark end the batch.
        if key[0] != self._ties.instant:
            self._ties = Ties(key[0])
        marks = batch.column(self.watermark_column or "").to_pylist()
        first = len(marks)
        while first and marks[first - 1] == key[0]:
            first -= 1
        for row in batch.slice(first).to_pylist():
            self._ties.observe(key[0], *self._identity(row), source=self.name)
        state: dict[str, Any] = {"watermark": key}
        if self._ties.complete:
            state["at_watermark"] = dict(sorted(self._ties.seen.items()))
        return state

    def _new_rows(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The batch without the rows the previous run delivered at exactly its watermark."""
        saved = self._saved
        if not saved.complete or saved.instant is None or not saved.seen:
            return batch
        marks = batch.column(self.watermark_column or "").to_pylist()
        if saved.instant not in marks:
            return batch
        keep = [
            mark != saved.instant or not saved.delivered(mark, *self._identity(row))
            for mark, row in zip(marks, batch.to_pylist(), strict=True)
        ]
        return batch.filter(pa.array(keep))

    def _identity(self, row: Mapping[str, Any]) -> tuple[str, str]:
        values = [row[c] for c in self.tiebreakers]
        key = str(values[0]) if len(values) == 1 else json.dumps(values)
        return key, fingerprint(row)

    def _check_state(self) -> None:
        if not self.state:
            return
        saved = self.state.get("watermark")
        seen = self.state.get("at_watermark")
        expected = 1 + len(self.tiebreakers)
        if not isinstance(saved, list) or len(saved) != expected or not isinstance(seen, Mapping | None):
            raise ConfigurationError(
                f"source {self.name!r}: saved state {self.state!r} does not match this source's "
                f"watermark ({self.watermark_column}, {', '.join(self.tiebreakers)}); expected "
                f'{{"watermark": [<{expected} values>], "at_watermark": {{key: digest}}}}'
            )
        # A state saved before the rows at the watermark were recorded resumes after its last key.
        self._saved = Ties(saved[0], seen, complete=seen is not None)
        self._ties = Ties(saved[0], complete=seen is not None)

    # --- options ----------------------------------------------------------------------------------------

    def _dsn(self) -> str:
        return secret_from_env(self.dsn_env, source=self.name, option="dsn_env")

    def _what(self) -> str:
        return f"table {'.'.join(self.table)}" if self.table is not None else "the query"

    def _table_option(self, value: Any) -> list[str] | None:
        if value is None:
            return None
        parts = value.split(".") if isinstance(value, str) else value
        if (
            not isinstance(parts, list)
            or not 1 <= len(parts) <= 3
            or not all(isinstance(p, str) and p for p in parts)
        ):
            raise ConfigurationError(
                f"source {self.name!r}: table must be 'schema.table' or a list of name parts, got {value!r}"
            )
        return list(parts)

    def _names_option(self, option: str, value: Any) -> list[str] | None:
        if value is None:
            return None
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise ConfigurationError(f"source {self.name!r}: {option} must be a list of column names")
        return list(value)
