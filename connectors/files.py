"""Files on a local (or mounted) file system: CSV, JSON Lines and Parquet, optionally gzip-compressed."""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .base import (
    Connector,
    ExtractWindow,
    LastExtract,
    Probe,
    RawBatch,
    listing_fingerprint,
    reject_unknown_options,
    render_template,
)
from .errors import ECHOED_ROW, ConfigurationError, SourceError, library_error_text, value_excerpt
from .options import FLAG, TEXT, TEXT_LIST, WHOLE, OneOf, Table

__all__ = ["CSV_OPTIONS", "OPTIONS", "FileConnector"]

FORMATS = ("csv", "jsonl", "parquet")
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# A character, or false for none (`quote_char = false`: fields are never quoted).
CHARACTER = OneOf((TEXT, FLAG), "a character, or false")
CSV_OPTIONS = Table(
    {
        "delimiter": TEXT,
        "quote_char": CHARACTER,
        "escape_char": CHARACTER,
        "encoding": TEXT,
        "header": FLAG,
        "column_names": TEXT_LIST,
        "null_values": TEXT_LIST,
    }
)
_FILE_CSV_OPTIONS = Table({**CSV_OPTIONS.keys, "block_size": WHOLE})
_WINDOW_FILTER_OPTIONS = Table({"column": TEXT, "format": TEXT, "timezone": TEXT})
OPTIONS = Table(
    {
        "kind": TEXT,
        "path": TEXT,
        "base_dir": TEXT,  # set by the pipeline loader (the project folder), against which `path` resolves
        "format": TEXT,
        "csv": _FILE_CSV_OPTIONS,
        "encoding": TEXT,
        "batch_size": WHOLE,
        "required": FLAG,
        "window_filter": _WINDOW_FILTER_OPTIONS,
    }
)
# One CSV row must fit in a block, so blocks are never tiny; rows per Arrow batch are capped separately.
_MIN_BLOCK = 1 << 20
_MAX_BLOCK = 64 << 20
_BYTES_PER_ROW_GUESS = 256


class FileConnector(Connector):
    """Reads every file matching `path` (a glob with `{date:%Y%m%d}`-style placeholders), in sorted order.

    Options: `path` (required), `base_dir` (relative paths resolve against it; default: the working
    directory), `format` (csv | jsonl | parquet, inferred from the extension; `.gz` csv/jsonl accepted),
    `encoding` (csv and jsonl, default utf-8), `csv` (delimiter, quote_char, escape_char, encoding, header,
    column_names, null_values, block_size), `batch_size`, `required` (default true: no matching file is
    an error), `window_filter` (`{column, format, timezone}`: keep only rows whose timestamp text falls in
    the extraction window, for one file that holds many dates).

    CSV columns are all read as text (invoice numbers mix digits and letters); an unquoted empty field is
    null unless `csv.null_values` says otherwise. JSON numbers with a fraction are parsed as Decimal so a
    price keeps its exact text.
    """

    kind = "file"
    option_schema = OPTIONS

    def __init__(
        self, *, name: str, options: Mapping[str, Any], state: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(name=name, options=options, state=state)
        reject_unknown_options(name, self.options, OPTIONS.keys)
        path = self.options.get("path")
        if not isinstance(path, str) or not path.strip():
            raise ConfigurationError(f"source {name!r}: 'path' is required (a file name or glob)")
        self._path = os.path.expanduser(path)
        base_dir = self.options.get("base_dir") or os.getcwd()
        self._base_dir = os.path.abspath(os.path.expanduser(str(base_dir)))
        self.format = self._format()
        self.required = self.options.get("required", True)
        if not isinstance(self.required, bool):
            raise ConfigurationError(f"source {name!r}: 'required' must be true or false")
        self.encoding = str(self.options.get("encoding", "utf-8"))
        csv_options = self.options.get("csv", {})
        if not isinstance(csv_options, Mapping):
            raise ConfigurationError(f"source {name!r}: 'csv' must be a table")
        reject_unknown_options(name, csv_options, _FILE_CSV_OPTIONS.keys, prefix="csv.")
        self._csv = dict(csv_options)
        self._window_filter = _WindowFilter.from_options(name, self.options.get("window_filter"))
        self._last_pattern: str | None = None

    # --- public -----------------------------------------------------------------------------------------

    def describe(self) -> str:
        """`file:<absolute glob>`; once a window was read, the glob with its placeholders filled in."""
        return f"file:{self._last_pattern or self._absolute(self._path)}"

    def iter_batches(self, window: ExtractWindow) -> Iterator[RawBatch]:
        pattern = self.resolve_pattern(window)
        self._last_pattern = pattern
        files = self.matching_files(pattern)
        if not files:
            if self.required:
                raise SourceError(f"source {self.name!r}: no file matches {pattern}")
            return
        for path in files:
            if self.format == "csv":
                batches: Iterator[RawBatch] = self._read_csv(path)
            elif self.format == "jsonl":
                batches = self._read_jsonl(path)
            else:
                batches = self._read_parquet(path)
            if self._window_filter is None:
                yield from batches
                continue
            for batch in batches:
                kept = self._window_filter.apply(batch, window, source=self.name, path=path)
                if len(kept):
                    yield kept

    def probe(self, window: ExtractWindow, *, last: LastExtract | None = None) -> Probe:
        """The files the window's glob matches now, from their directory entries (no file is opened): name,
        size, modification time, and the inode's change time, which a file created, renamed or copied into
        place gets even when its modification time was preserved (`cp -p`, `rsync -t`). Newer: a file
        changed after the last extract's run began; or any file, when there was no extract or it read
        another glob (a path naming the date)."""
        pattern = self.resolve_pattern(window)
        found = []
        for path in self.matching_files(pattern):
            try:
                stat = os.stat(path)
            except FileNotFoundError:  # removed between the glob and the look
                continue
            changed = max(stat.st_mtime_ns, stat.st_ctime_ns)
            modified = datetime.fromtimestamp(stat.st_mtime_ns / 1e9, UTC)
            found.append((path, stat.st_size, modified, changed))
        if not found:
            return Probe(fingerprint=None, newer=False)
        if last is None or self.resolve_pattern(last.window) != pattern:
            newer = True
        else:
            since = int(last.started_at.timestamp() * 1_000_000) * 1000
            newer = any(changed > since for *_, changed in found)
        return Probe(fingerprint=listing_fingerprint(found, label="files"), newer=newer)

    def resolve_pattern(self, window: ExtractWindow) -> str:
        """The absolute glob for `window` (placeholders filled from `window.template_values()`)."""
        rendered = render_template(self._path, window.template_values(), source=self.name, option="path")
        return self._absolute(rendered)

    @staticmethod
    def matching_files(pattern: str) -> list[str]:
        return sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))

    # --- readers ----------------------------------------------------------------------------------------

    def _read_csv(self, path: str) -> Iterator[pa.RecordBatch]:
        read_options = self._csv_read_options()
        parse_options = self._csv_parse_options(path)
        null_values = self._csv.get("null_values", [""])
        names: list[str] = []
        try:
            names = read_options.column_names or self._csv_header(path, read_options, parse_options)
            convert_options = pacsv.ConvertOptions(
                # Every column as text: type inference on the first block would fail on a later
                # "C489449" in a column of invoice numbers, and staging keeps raw text anyway.
                column_types={n: pa.string() for n in names},
                null_values=list(null_values),
                strings_can_be_null=bool(null_values),
                quoted_strings_can_be_null=False,
            )
            with _open_stream(path) as stream:
                reader = pacsv.open_csv(
                    stream,
                    read_options=read_options,
                    parse_options=parse_options,
                    convert_options=convert_options,
                )
                for batch in reader:
                    yield from _bounded(batch, self.batch_size)
        except (pa.ArrowException, OSError, EOFError) as exc:
            where = _csv_where(path, exc, names, read_options.encoding)
            raise SourceError(
                f"source {self.name!r}: cannot read CSV file {path}{where}: {library_error_text(exc)}"
            ) from None

    def _csv_header(
        self, path: str, read_options: pacsv.ReadOptions, parse_options: pacsv.ParseOptions
    ) -> list[str]:
        # The column names are needed to ask for all-text columns; reading them costs one block.
        with _open_stream(path) as stream:
            reader = pacsv.open_csv(stream, read_options=read_options, parse_options=parse_options)
            return list(reader.schema.names)

    def _csv_read_options(self) -> pacsv.ReadOptions:
        column_names = self._csv.get("column_names")
        header = self._csv.get("header", True)
        if column_names is not None and (
            not isinstance(column_names, list) or not all(isinstance(n, str) for n in column_names)
        ):
            raise ConfigurationError(f"source {self.name!r}: csv.column_names must be a list of strings")
        block_size = int(
            self._csv.get(
                "block_size", min(max(self.batch_size * _BYTES_PER_ROW_GUESS, _MIN_BLOCK), _MAX_BLOCK)
            )
        )
        return pacsv.ReadOptions(
            encoding=str(self._csv.get("encoding", self.encoding)),
            block_size=block_size,
            column_names=column_names,
            # With names given, a header row present in the file is skipped rather than read as data.
            skip_rows=1 if header and column_names else 0,
            autogenerate_column_names=not header and not column_names,
        )

    def _csv_parse_options(self, path: str) -> pacsv.ParseOptions:
        quote_char = self._csv.get("quote_char", '"')
        escape_char = self._csv.get("escape_char", False)
        return pacsv.ParseOptions(
            delimiter=str(self._csv.get("delimiter", default_delimiter(path))),
            quote_char=quote_char or False,
            escape_char=escape_char or False,
            # Quoted descriptions may hold line breaks; without this a break would split the row.
            newlines_in_values=True,
        )

    def _read_jsonl(self, path: str) -> Iterator[list[dict[str, Any]]]:
        opener = gzip.open if path.lower().endswith(".gz") else open
        progress = [0]
        try:
            with opener(path, "rt", encoding=text_encoding(self.encoding)) as handle:
                yield from jsonl_batches(
                    handle, source=self.name, where=path, batch_size=self.batch_size, progress=progress
                )
        except (UnicodeDecodeError, OSError, EOFError) as exc:
            raise SourceError(
                f"source {self.name!r}: {path}: cannot read past line {progress[0]} ({exc})"
            ) from exc

    def _read_parquet(self, path: str) -> Iterator[pa.RecordBatch]:
        try:
            with pq.ParquetFile(path) as parquet:
                for batch in parquet.iter_batches(batch_size=self.batch_size):
                    if batch.num_rows:
                        yield batch
        except (pa.ArrowException, OSError) as exc:
            raise SourceError(f"source {self.name!r}: cannot read Parquet file {path}: {exc}") from exc

    # --- helpers ----------------------------------------------------------------------------------------

    def _absolute(self, path: str) -> str:
        return os.path.abspath(os.path.join(self._base_dir, path))

    def _format(self) -> str:
        declared = self.options.get("format")
        if declared is not None:
            if declared not in FORMATS:
                raise ConfigurationError(
                    f"source {self.name!r}: format {declared!r} is not one of {', '.join(FORMATS)}"
                )
            return str(declared)
        fmt = format_from_name(self._path)
        if fmt is None:
            raise ConfigurationError(
                f"source {self.name!r}: cannot tell the format of {self._path!r} from its extension; "
                f"set format = one of {', '.join(FORMATS)}"
            )
        return fmt


class _WindowFilter:
    """Keeps the rows whose timestamp column, parsed with `format`, lies in the window's [start, end).

    The text has no zone: it is wall-clock time in `timezone` (default: the window's, i.e. the
    pipeline's), so the window's bounds are turned into that wall clock and compared without a zone.
    A row whose timestamp is empty or does not parse belongs to no date: the extract fails naming it
    rather than drop it silently.
    """

    def __init__(self, column: str, fmt: str, timezone: tzinfo | None) -> None:
        self.column = column
        self.format = fmt
        self.timezone = timezone

    @classmethod
    def from_options(cls, source: str, options: Any) -> _WindowFilter | None:
        if options is None:
            return None
        if not isinstance(options, Mapping):
            raise ConfigurationError(f"source {source!r}: 'window_filter' must be a table")
        reject_unknown_options(source, options, _WINDOW_FILTER_OPTIONS.keys, prefix="window_filter.")
        column, fmt = options.get("column"), options.get("format")
        if not isinstance(column, str) or not column or not isinstance(fmt, str) or not fmt:
            raise ConfigurationError(
                f"source {source!r}: window_filter needs 'column' and 'format' "
                '(e.g. { column = "InvoiceDate", format = "%Y-%m-%d %H:%M:%S" })'
            )
        zone = options.get("timezone")
        try:
            timezone = ZoneInfo(zone) if zone else None
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigurationError(
                f"source {source!r}: window_filter.timezone {zone!r} is unknown"
            ) from exc
        return cls(column, fmt, timezone)

    def bounds(self, window: ExtractWindow) -> tuple[datetime, datetime]:
        zone = self.timezone or window.start.tzinfo
        return (
            window.start.astimezone(zone).replace(tzinfo=None),
            window.end.astimezone(zone).replace(tzinfo=None),
        )

    def apply(self, batch: RawBatch, window: ExtractWindow, *, source: str, path: str) -> RawBatch:
        start, end = self.bounds(window)
        if isinstance(batch, pa.RecordBatch):
            return self._apply_arrow(batch, start, end, source, path)
        kept = []
        for record in batch:
            text = record.get(self.column)
            try:
                when = datetime.strptime(str(text), self.format) if text not in (None, "") else None
            except ValueError:
                when = None
            if when is None:
                self._fail(source, path, text)
            if start <= when < end:
                kept.append(record)
        return kept

    def _apply_arrow(
        self, batch: pa.RecordBatch, start: datetime, end: datetime, source: str, path: str
    ) -> pa.RecordBatch:
        if self.column not in batch.schema.names:
            raise SourceError(
                f"source {source!r}: window_filter column {self.column!r} is not in {path} "
                f"(columns: {', '.join(repr(n) for n in batch.schema.names)})"
            )
        text = batch.column(self.column)
        if not pa.types.is_string(text.type):
            text = pc.cast(text, pa.string())
        # Vectorised: parse the whole column, compare with the window's wall-clock bounds.
        when = pc.strptime(text, format=self.format, unit="us", error_is_null=True)
        if when.null_count:
            bad = pc.filter(text, pc.is_null(when)).to_pylist()
            self._fail(source, path, bad[0])
        unit = pa.timestamp("us")
        mask = pc.and_(pc.greater_equal(when, pa.scalar(start, unit)), pc.less(when, pa.scalar(end, unit)))
        return batch.filter(mask)

    def _fail(self, source: str, path: str, value: Any) -> None:
        raise SourceError(
            f"source {source!r}: {path}: window_filter column {self.column!r} value {value_excerpt(value)} "
            f"is not a timestamp in format {self.format!r}"
        )


def _csv_where(path: str, exc: BaseException, names: list[str], encoding: str) -> str:
    """` line N` (and `, column 'name'`) of the row a CSV read failed on, found again in the file: pyarrow
    does not number rows when values may hold line breaks, and its message quotes the row instead (the
    caller drops that quote: `library_error_text`)."""
    message = str(exc)
    column = re.search(r"CSV column #(\d+)", message)
    label = ""
    if column and int(column.group(1)) < len(names):
        label = f", column {value_excerpt(names[int(column.group(1))])}"
    echoed = ECHOED_ROW.search(message)
    wanted = echoed.group(2).splitlines()[0] if echoed and echoed.group(2) else None
    if wanted is None and "invalid UTF8" not in message:
        return label
    opener = gzip.open if path.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if wanted is not None:
                    if raw.decode(encoding, "replace").rstrip("\r\n") == wanted:
                        return f" line {number}{label}"
                    continue
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    return f" line {number}{label}"
    except (OSError, EOFError, LookupError):
        pass
    return label


def format_from_name(name: str) -> str | None:
    """The format a file or object name's extension implies, looking through `.gz`; None when unknown."""
    _, extension = os.path.splitext(_strip_gz(name).lower())
    return _EXTENSIONS.get(extension)


def default_delimiter(name: str) -> str:
    """Tab for a `.tsv` name (gzipped or not), otherwise comma."""
    return "\t" if _strip_gz(name).lower().endswith(".tsv") else ","


def _strip_gz(path: str) -> str:
    return path[:-3] if path.lower().endswith(".gz") else path


def _open_stream(path: str) -> pa.NativeFile:
    return pa.input_stream(path, compression="gzip" if path.lower().endswith(".gz") else None)


def _bounded(batch: pa.RecordBatch, size: int) -> Iterator[pa.RecordBatch]:
    for offset in range(0, batch.num_rows, size):
        yield batch.slice(offset, size)


def text_encoding(encoding: str) -> str:
    """Read UTF-8 as utf-8-sig, so a byte-order mark some exporters write is not part of the first field."""
    return "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding


def jsonl_batches(
    lines: Iterable[str], *, source: str, where: str, batch_size: int, progress: list[int] | None = None
) -> Iterator[list[dict[str, Any]]]:
    """JSON Lines into batches of dicts; decimals keep their exact text. `progress[0]` tracks the line
    number, so a caller that catches a read error can say how far it got."""
    batch: list[dict[str, Any]] = []
    for line_number, line in enumerate(lines, start=1):
        if progress is not None:
            progress[0] = line_number
        if not line.strip():
            continue
        try:
            record = json.loads(line, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            raise SourceError(
                f"source {source!r}: {where} line {line_number}: malformed JSON: {exc.msg} "
                f"(column {exc.colno})"
            ) from None
        if not isinstance(record, dict):
            raise SourceError(
                f"source {source!r}: {where} line {line_number}: expected a JSON object, "
                f"got {type(record).__name__}"
            )
        batch.append(record)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
