"""Objects in an S3 bucket (or an S3-compatible store): CSV, JSON Lines and Parquet, optionally gzipped."""

from __future__ import annotations

import csv
import fnmatch
import gzip
import io
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

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
from .errors import ConfigurationError, SourceError, library_error_text
from .files import CSV_OPTIONS, FORMATS, default_delimiter, format_from_name, jsonl_batches, text_encoding
from .options import FLAG, TEXT, WHOLE, Table
from .watermarks import Ties

__all__ = ["OPTIONS", "S3Connector", "s3_client"]

OPTIONS = Table(
    {
        "kind": TEXT,
        "bucket": TEXT,
        "prefix": TEXT,
        "glob": TEXT,
        "format": TEXT,
        "csv": CSV_OPTIONS,
        "encoding": TEXT,
        "mode": TEXT,
        "required": FLAG,
        "endpoint_url": TEXT,
        "region": TEXT,
        "profile": TEXT,
        "batch_size": WHOLE,
    }
)
MODES = ("full", "incremental")
_READ_CHUNK = 1 << 20
_MIN_BLOCK = 1 << 20
_MAX_BLOCK = 64 << 20
_BYTES_PER_ROW_GUESS = 256
_MISSING_BUCKET = {"NoSuchBucket"}
# S3 times objects to the second: one written in the second a run began may or may not be in it.
_LAST_MODIFIED_STEP = timedelta(seconds=1)


def s3_client(*, endpoint_url: str | None = None, region: str | None = None, profile: str | None = None):
    """An S3 client with boto3's standard credential chain (environment, profile, instance role).

    Timeouts and retries are explicit so a stalled store fails the run instead of hanging it."""
    session = boto3.session.Session(profile_name=profile) if profile else boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=region or None,
        config=Config(connect_timeout=10, read_timeout=60, retries={"mode": "standard", "max_attempts": 5}),
    )


@dataclass(frozen=True, order=True)
class S3Object:
    """One listed object; ordering by (last_modified, key) is the order objects are read in."""

    last_modified: datetime
    key: str
    size: int = 0
    etag: str = field(default="", compare=False)  # a re-write within the same second changes it


class S3Connector(Connector):
    """Reads the objects under `prefix` whose key matches `glob`, oldest first.

    Options: `bucket` (required), `prefix` and `glob` (fnmatch on the whole key; both may use `{date}`
    style placeholders), `format` (csv | jsonl | parquet; default from each key's extension, `.gz` read
    compressed), `csv` (delimiter, quote_char, escape_char, encoding, header, column_names, null_values),
    `encoding`, `mode` (incremental | full, default incremental), `required` (no matching object is an
    error; default true in full mode, false in incremental mode, where no new object is normal),
    `endpoint_url` (S3-compatible stores), `region`, `profile`, `batch_size`. Credentials come from
    boto3's standard chain, never from the pipeline file.

    Incremental runs read the objects with LastModified before the window's end and after the saved
    one, or at exactly the saved one and not read before (by key and ETag: S3 times objects to the
    second, so an object written or re-written later within that second is still read). `next_state` is
    {"last_modified": ISO text, "key": key of the last object read, "at_watermark": {key: ETag} of the
    objects read at that LastModified}.
    """

    kind = "s3"
    option_schema = OPTIONS

    def __init__(
        self, *, name: str, options: Mapping[str, Any], state: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(name=name, options=options, state=state)
        opts = self.options
        reject_unknown_options(name, opts, OPTIONS.keys)
        self.bucket = opts.get("bucket")
        if not isinstance(self.bucket, str) or not self.bucket:
            raise ConfigurationError(f"source {name!r}: 'bucket' is required")
        self.prefix = str(opts.get("prefix", "") or "")
        self.glob = opts.get("glob")
        if self.glob is not None and not isinstance(self.glob, str):
            raise ConfigurationError(f"source {name!r}: 'glob' must be a text such as '*.csv.gz'")
        self.format = opts.get("format")
        if self.format is not None and self.format not in FORMATS:
            raise ConfigurationError(
                f"source {name!r}: format {self.format!r} is not one of {', '.join(FORMATS)}"
            )
        self.mode = opts.get("mode", "incremental")
        if self.mode not in MODES:
            raise ConfigurationError(f"source {name!r}: mode {self.mode!r} is not one of {', '.join(MODES)}")
        self.required = opts.get("required", self.mode == "full")
        if not isinstance(self.required, bool):
            raise ConfigurationError(f"source {name!r}: 'required' must be true or false")
        self.encoding = str(opts.get("encoding", "utf-8"))
        csv_options = opts.get("csv", {})
        if not isinstance(csv_options, Mapping):
            raise ConfigurationError(f"source {name!r}: 'csv' must be a table")
        reject_unknown_options(name, csv_options, CSV_OPTIONS.keys, prefix="csv.")
        self._csv = dict(csv_options)
        self.endpoint_url = opts.get("endpoint_url")
        self.region = opts.get("region")
        self.profile = opts.get("profile")
        self._after = self._state_position()
        seen = (self.state or {}).get("at_watermark")
        if seen is not None and not isinstance(seen, Mapping):
            raise ConfigurationError(
                f"source {name!r}: saved state {self.state!r}: at_watermark is not a table"
            )
        self._saved = Ties(self._after[0] if self._after else None, seen, complete=seen is not None)
        self._ties = Ties()
        self._last_prefix: str | None = None

    # --- public -----------------------------------------------------------------------------------------

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        glob = f" matching {self.glob}" if self.glob else ""
        return f"s3://{self.bucket}/{self._last_prefix or self.prefix}{glob}{where}"

    def iter_batches(self, window: ExtractWindow) -> Iterator[RawBatch]:
        prefix, pattern = self._where(window)
        self._last_prefix = prefix
        client = s3_client(endpoint_url=self.endpoint_url, region=self.region, profile=self.profile)
        objects = self.objects_to_read(client, prefix=prefix, pattern=pattern, window=window)
        if not objects and self.required:
            raise SourceError(
                f"source {self.name!r}: no object in s3://{self.bucket}/{prefix}"
                f"{f' matches {pattern}' if pattern else ''}"
            )
        for obj in objects:
            if obj.size:
                yield from self._read_object(client, obj)
            if self.mode == "incremental":
                self._ties.observe(obj.last_modified, obj.key, obj.etag, source=self.name)
                self.next_state = {"last_modified": obj.last_modified.isoformat(), "key": obj.key}
                if self._ties.complete:
                    self.next_state["at_watermark"] = dict(sorted(self._ties.seen.items()))

    def probe(self, window: ExtractWindow, *, last: LastExtract | None = None) -> Probe:
        """The matching objects, from one listing (no object is read): key, size, LastModified and ETag.
        Incremental: the objects before the window's end, newer when the run would read one (after the
        saved state, or at its second and not read then). Full: newer when an object was written after
        the last extract's run began (to S3's second), or when there was none or it listed elsewhere (a
        prefix naming the date)."""
        prefix, pattern = self._where(window)
        client = s3_client(endpoint_url=self.endpoint_url, region=self.region, profile=self.profile)
        found = self._listing(client, prefix=prefix, pattern=pattern)
        if self.mode == "incremental":
            found = [o for o in found if o.last_modified < window.end]
            newer = bool(self._unread(found, window))
        elif last is None or self._where(last.window) != (prefix, pattern):
            newer = bool(found)
        else:
            since = last.started_at - _LAST_MODIFIED_STEP
            newer = any(o.last_modified > since for o in found)
        entries = [(o.key, o.size, o.last_modified, o.etag) for o in found]
        return Probe(fingerprint=listing_fingerprint(entries, label="objects"), newer=newer)

    def objects_to_read(
        self, client: Any, *, prefix: str, pattern: str | None, window: ExtractWindow
    ) -> list[S3Object]:
        """The matching objects this run reads, in (LastModified, key) order."""
        return self._unread(self._listing(client, prefix=prefix, pattern=pattern), window)

    def _where(self, window: ExtractWindow) -> tuple[str, str | None]:
        """The prefix and glob for `window`, placeholders filled in."""
        values = window.template_values()
        prefix = render_template(self.prefix, values, source=self.name, option="prefix")
        pattern = render_template(self.glob, values, source=self.name, option="glob") if self.glob else None
        return prefix, pattern

    def _listing(self, client: Any, *, prefix: str, pattern: str | None) -> list[S3Object]:
        """Every object under `prefix` whose key matches `pattern`, in (LastModified, key) order."""
        found = []
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    key = item["Key"]
                    if key.endswith("/") or (pattern and not fnmatch.fnmatchcase(key, pattern)):
                        continue
                    found.append(
                        S3Object(item["LastModified"].astimezone(UTC), key, int(item["Size"]), item["ETag"])
                    )
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, f"cannot list s3://{self.bucket}/{prefix}") from None
        found.sort()
        return found

    def _unread(self, found: list[S3Object], window: ExtractWindow) -> list[S3Object]:
        """Of a listing, the objects a run of `window` reads (all of them in full mode)."""
        if self.mode == "full":
            return found
        found = [o for o in found if o.last_modified < window.end]
        if self._after is None:
            return found
        saved_at = self._after[0]
        saved = self._saved

        def unread(o: S3Object) -> bool:
            if not saved.complete:  # a state saved before the ETags at it were recorded
                return (o.last_modified, o.key) > self._after
            return o.last_modified > saved_at or (
                o.last_modified == saved_at and not saved.delivered(saved_at, o.key, o.etag)
            )

        new = [o for o in found if unread(o)]
        # What was read at the saved second, from this listing: the next state lists it whole, also
        # when the saved state did not.
        self._ties = Ties(saved_at)
        for o in found:
            if o.last_modified == saved_at and not unread(o):
                self._ties.observe(o.last_modified, o.key, o.etag, source=self.name)
        return new

    # --- readers ----------------------------------------------------------------------------------------

    def _read_object(self, client: Any, obj: S3Object) -> Iterator[RawBatch]:
        fmt = self._format_of(obj.key)
        where = f"s3://{self.bucket}/{obj.key}"
        try:
            if fmt == "parquet":
                yield from self._read_parquet(client, obj.key, where)
                return
            body = client.get_object(Bucket=self.bucket, Key=obj.key)["Body"]
            try:
                stream: io.BufferedIOBase = io.BufferedReader(_RawBody(body), _READ_CHUNK)
                if obj.key.lower().endswith(".gz"):
                    stream = gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[assignment]
                if fmt == "csv":
                    yield from self._read_csv(stream, obj.key, where)
                else:
                    yield from self._read_jsonl(stream, where)
            finally:
                body.close()
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, f"cannot read {where}") from None
        except (pa.ArrowException, OSError, EOFError, UnicodeDecodeError) as exc:
            raise SourceError(
                f"source {self.name!r}: cannot read {fmt} object {where}: {library_error_text(exc)}"
            ) from None

    def _read_csv(self, stream: io.BufferedIOBase, key: str, where: str) -> Iterator[pa.RecordBatch]:
        encoding = str(self._csv.get("encoding", self.encoding))
        delimiter = str(self._csv.get("delimiter", default_delimiter(key)))
        quote_char = self._csv.get("quote_char", '"') or False
        null_values = self._csv.get("null_values", [""])
        names = self._csv.get("column_names")
        if self._csv.get("header", True):
            # Every column is read as text, which needs the names up front: the header line is read
            # here (a header spanning lines is not supported) and the rest goes to Arrow.
            header = _header_names(stream.readline(), encoding, delimiter, quote_char or '"')
            names = names or header
        if not names or not stream.peek(1):  # type: ignore[attr-defined]
            return  # an empty object, or a header and no rows (Arrow calls no input an error)
        reader = pacsv.open_csv(
            pa.PythonFile(stream, mode="r"),
            read_options=pacsv.ReadOptions(
                encoding=encoding,
                block_size=min(max(self.batch_size * _BYTES_PER_ROW_GUESS, _MIN_BLOCK), _MAX_BLOCK),
                column_names=names,
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter,
                quote_char=quote_char,
                escape_char=self._csv.get("escape_char", False) or False,
                newlines_in_values=True,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                null_values=list(null_values),
                strings_can_be_null=bool(null_values),
                quoted_strings_can_be_null=False,
            ),
        )
        for block in reader:
            for offset in range(0, block.num_rows, self.batch_size):
                yield block.slice(offset, self.batch_size)

    def _read_jsonl(self, stream: io.BufferedIOBase, where: str) -> Iterator[list[dict[str, Any]]]:
        text = io.TextIOWrapper(stream, encoding=text_encoding(self.encoding))  # type: ignore[arg-type]
        yield from jsonl_batches(text, source=self.name, where=where, batch_size=self.batch_size)

    def _read_parquet(self, client: Any, key: str, where: str) -> Iterator[pa.RecordBatch]:
        # Parquet's footer is at the end: the object goes to a temporary file rather than into memory.
        with tempfile.TemporaryFile(prefix="dse-s3-") as local:
            body = client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                shutil.copyfileobj(_RawBody(body), local, _READ_CHUNK)
            finally:
                body.close()
            local.seek(0)
            with pq.ParquetFile(local) as parquet:
                for batch in parquet.iter_batches(batch_size=self.batch_size):
                    if batch.num_rows:
                        yield batch

    # --- helpers ----------------------------------------------------------------------------------------

    def _format_of(self, key: str) -> str:
        if self.format:
            return str(self.format)
        fmt = format_from_name(key)
        if fmt is None:
            raise ConfigurationError(
                f"source {self.name!r}: cannot tell the format of s3://{self.bucket}/{key} from its "
                f"extension; set format = one of {', '.join(FORMATS)} (or narrow glob)"
            )
        return fmt

    def _error(self, exc: Exception, what: str) -> Exception:
        if isinstance(exc, NoCredentialsError):
            return ConfigurationError(
                f"source {self.name!r}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an instance role)"
            )
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in _MISSING_BUCKET:
                return SourceError(f"source {self.name!r}: bucket {self.bucket!r} does not exist ({what})")
            message = exc.response.get("Error", {}).get("Message", "") or str(exc)
            return SourceError(f"source {self.name!r}: {what}: {code} {message}".rstrip())
        return SourceError(f"source {self.name!r}: {what}: {exc}")

    def _state_position(self) -> tuple[datetime, str] | None:
        if self.mode != "incremental" or not self.state:
            return None
        try:
            moment = datetime.fromisoformat(str(self.state["last_modified"]))
            key = self.state["key"]
        except (KeyError, ValueError, TypeError):
            raise ConfigurationError(
                f"source {self.name!r}: saved state {self.state!r} is not "
                '{"last_modified": <ISO time>, "key": <object key>}'
            ) from None
        if moment.tzinfo is None or not isinstance(key, str):
            raise ConfigurationError(
                f"source {self.name!r}: saved state {self.state!r} needs a time zone and a text key"
            )
        return moment.astimezone(UTC), key


def _header_names(line: bytes, encoding: str, delimiter: str, quote_char: str) -> list[str]:
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        encoding = "utf-8-sig"
    text = line.decode(encoding).rstrip("\r\n")
    return next(csv.reader([text], delimiter=delimiter, quotechar=quote_char), []) if text else []


class _RawBody(io.RawIOBase):
    """A botocore StreamingBody as a raw stream, so buffered readers and gzip can sit on top of it."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
