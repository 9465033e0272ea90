"""The outputs a transform job writes and the loader reads: declared here once, the rest derived.

Plain Python (no pyspark, no Django), so both sides import it: the job builds its Spark schemas from it
(:func:`spark_schema`), the transform step checks and counts a partition's outputs with it
(``etlcore.services``), and a test holds the warehouse's staging columns (``warehouse.loading.specs``) to
it. Types are Spark SQL type names, which the Parquet files carry as the Arrow types of :func:`arrow_type`.
Adding an output or a job: docs/architecture.md, "The transform-output contract".
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

# How a Fernet token (a `pii = "encrypt"` column) shows in a quarantined record: a fixed mark, since the
# token differs at every extraction and the record's fingerprint must not (a re-run changes no row).
# Here because etlcore.services.forget writes the same mark's erasure.
ENCRYPTED_MARK = "[encrypted]"

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql.types import DataType, StructType


@dataclass(frozen=True)
class Output:
    """One Parquet directory of a transformed partition, ``<partition>/<name>/``."""

    name: str
    # (column, Spark SQL type), in the order the job writes them.
    columns: tuple[tuple[str, str], ...]
    # The input dataset whose kept rows this output holds one for one (the job checks it on disk).
    rows_of: str | None = None

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)


@dataclass(frozen=True)
class JobOption:
    """One key of the job's ``[spark.options]``, checked when the pipeline file is read (etlcore.config).

    ``shape``: ``"text"``, ``"table"`` (``keys`` are its keys) or ``"tables"`` (a list of tables, each with
    ``keys``); ``values``: the only texts a ``"text"`` option takes (empty: any)."""

    name: str
    shape: str = "text"
    keys: tuple[str, ...] = ()
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Input:
    """A dataset the job reads and the columns it must declare; the job's options can change both."""

    name: str
    columns: tuple[str, ...]
    # column -> (option, value): the column need not be declared when the option has that value (None:
    # when the option is set at all), e.g. no line number when lines are numbered by row.
    optional_when: Mapping[str, tuple[str, str | None]] = field(default_factory=dict)
    # (option, default): the column the option names (its default when unset) must be declared too.
    column_options: tuple[tuple[str, str], ...] = ()
    # The table option whose ``derive_from`` makes the job build this input from the lines instead: then
    # the pipeline must not declare it.
    derived_by: str | None = None


@dataclass(frozen=True)
class DatasetOption:
    """A table option whose ``key`` names a further dataset the job reads, with the columns it needs
    (``rates = { dataset = "rates" }``)."""

    option: str
    key: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class JobContract:
    job: str
    outputs: tuple[Output, ...]
    # The output whose row count is the partition's (the manifest's row_count).
    primary: str
    # What the job takes: its [spark.options] keys, the datasets and columns it reads. Checked before the
    # JVM starts (etlcore.preflight) and by the job itself (spark_jobs.retail, sales_daily._check_spec).
    options: tuple[JobOption, ...] = ()
    inputs: tuple[Input, ...] = ()
    dataset_options: tuple[DatasetOption, ...] = ()
    # The module of the same job on Dask (the light engine, `engine = "dask" | "auto"`): same spec in, same
    # outputs and result out, run as `python -m <dask_job> --spec ...`. None: the job runs on Spark only.
    dask_job: str | None = None

    def __post_init__(self) -> None:
        if self.primary not in self.names:
            raise ValueError(f"{self.job}: primary output {self.primary!r} is not one of {self.names}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    def output(self, name: str) -> Output:
        return next(o for o in self.outputs if o.name == name)

    def option(self, name: str) -> JobOption:
        return next(o for o in self.options if o.name == name)

    def inputs_derived(self, options: Mapping[str, Any]) -> tuple[str, ...]:
        """The inputs the options have the job derive from the lines (not to be declared)."""
        return tuple(
            i.name
            for i in self.inputs
            if i.derived_by
            and isinstance(options.get(i.derived_by), Mapping)
            and "derive_from" in options[i.derived_by]
        )

    def input_columns(self, name: str, options: Mapping[str, Any]) -> tuple[str, ...]:
        """The columns input ``name`` must declare under the pipeline's ``[spark.options]``."""
        spec = next(i for i in self.inputs if i.name == name)
        needed = []
        for column in spec.columns:
            option, value = spec.optional_when.get(column, (None, None))
            if option is not None and options.get(option) and value in (None, options[option]):
                continue
            needed.append(column)
        for option, default in spec.column_options:
            column = str(options.get(option, default))
            if column not in needed:
                needed.append(column)
        return tuple(needed)

    def inputs_needed(self, options: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
        """Dataset -> the columns it must declare, for every dataset the job reads under these options."""
        derived = self.inputs_derived(options)
        needed = {i.name: self.input_columns(i.name, options) for i in self.inputs if i.name not in derived}
        for extra in self.dataset_options:
            table = options.get(extra.option)
            if isinstance(table, Mapping) and isinstance(table.get(extra.key), str):
                needed[table[extra.key]] = extra.columns
        return needed


# Every job writes its rejected rows here in these columns; the loader stores them as QuarantinedRow.
QUARANTINE = Output(
    "quarantine",
    (
        ("dataset", "string"),
        ("reason_code", "string"),
        ("message", "string"),
        ("raw_record", "string"),  # JSON object of the staged text values, keys sorted
        ("record_fingerprint", "string"),  # sha256 hex of raw_record
    ),
)

# A product or store master holds the columns of its output, one row for one.
_PRODUCTS = Output(
    "products",
    (("sku", "string"), ("name", "string"), ("category", "string"), ("list_price", "decimal(18,2)")),
    rows_of="products",
)
_STORES = Output(
    "stores",
    (
        ("store_code", "string"),
        ("name", "string"),
        ("city", "string"),
        ("region", "string"),
        ("country", "string"),
    ),
    rows_of="stores",
)

SALES_DAILY = JobContract(
    job="spark_jobs.sales_daily",
    outputs=(
        Output(
            "sales_lines",
            (
                ("order_id", "string"),
                ("line_number", "int"),
                ("business_date", "date"),
                ("ordered_at", "timestamp"),
                ("store_code", "string"),
                ("sku", "string"),
                ("customer_key", "string"),
                ("quantity", "int"),
                ("unit_price", "decimal(18,4)"),
                ("amount", "decimal(18,2)"),
                ("currency", "string"),
                ("is_return", "boolean"),
                ("stock_code", "string"),
                ("line_type", "string"),
                ("amount_reporting", "decimal(18,2)"),
                ("original_order_id", "string"),
                ("source_version", "bigint"),
            ),
            rows_of="order_lines",
        ),
        _PRODUCTS,
        _STORES,
        Output(
            "customers",
            (
                ("customer_key", "string"),
                ("country", "string"),
                # The time of the latest order giving the country: the loader keeps the latest.
                ("country_seen_at", "timestamp"),
                # The Fernet token of the e-mail (order_lines' customer_email_encrypted, when declared),
                # passed through as staged: the job never decrypts; the loader keeps the first stored.
                ("email_encrypted", "string"),
            ),
        ),
        QUARANTINE,
    ),
    primary="sales_lines",
    # docs/configuration.md, "[spark.options] of spark_jobs.sales_daily"; read by spark_jobs.retail.
    options=(
        JobOption("line_types", "tables", ("type", "skus", "pattern")),
        JobOption("return_when", "table", ("order_id_prefix",)),
        JobOption("rates", "table", ("dataset",)),
        JobOption("currency"),
        JobOption("line_number_from", values=("column", "row")),
        JobOption("customer_key_from"),
        JobOption("products", "table", ("derive_from", "name_from")),
        JobOption("stores", "table", ("derive_from", "country_from")),
        JobOption("source_timezone"),
    ),
    inputs=(
        Input(
            "order_lines",
            (
                "order_id",
                "line_number",
                "ordered_at",
                "store_code",
                "sku",
                "quantity",
                "unit_price",
                "currency",
            ),
            optional_when={"line_number": ("line_number_from", "row"), "currency": ("currency", None)},
            # customer_email, customer_country and customer_email_encrypted are read when declared; the
            # pseudonym's source must be.
            column_options=(("customer_key_from", "customer_email"),),
        ),
        Input("products", _PRODUCTS.column_names, derived_by="products"),
        Input("stores", _STORES.column_names, derived_by="stores"),
    ),
    dataset_options=(DatasetOption("rates", "dataset", ("currency", "rate")),),
    dask_job="spark_jobs.sales_daily_dask",
)

# By the job module a pipeline names (``[spark] job``).
CONTRACTS: Mapping[str, JobContract] = {c.job: c for c in (SALES_DAILY,)}


def job_contract(job: str) -> JobContract:
    try:
        return CONTRACTS[job]
    except KeyError:
        raise KeyError(f"no output contract for job {job!r} (spark_jobs/contract.py)") from None


_DECIMAL = re.compile(r"^decimal\((\d+),(\d+)\)$")
_SIMPLE = ("string", "int", "bigint", "boolean", "date", "timestamp")


def _check_type(text: str) -> re.Match[str] | None:
    decimal = _DECIMAL.match(text)
    if decimal is None and text not in _SIMPLE:
        raise ValueError(f"unsupported output type {text!r}: one of {', '.join(_SIMPLE)} or decimal(p,s)")
    return decimal


def spark_type(text: str) -> DataType:
    from pyspark.sql import types as T

    decimal = _check_type(text)
    if decimal:
        return T.DecimalType(int(decimal[1]), int(decimal[2]))
    return {
        "string": T.StringType(),
        "int": T.IntegerType(),
        "bigint": T.LongType(),
        "boolean": T.BooleanType(),
        "date": T.DateType(),
        "timestamp": T.TimestampType(),
    }[text]


def spark_schema(output: Output) -> StructType:
    from pyspark.sql.types import StructField, StructType

    return StructType([StructField(name, spark_type(text)) for name, text in output.columns])


def arrow_type(text: str) -> pa.DataType:
    """The type a Spark column of ``text`` has in the job's Parquet (timestamps as UTC microseconds)."""
    import pyarrow as pa

    decimal = _check_type(text)
    if decimal:
        return pa.decimal128(int(decimal[1]), int(decimal[2]))
    return {
        "string": pa.string(),
        "int": pa.int32(),
        "bigint": pa.int64(),
        "boolean": pa.bool_(),
        "date": pa.date32(),
        "timestamp": pa.timestamp("us", tz="UTC"),
    }[text]


def arrow_schema(output: Output) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([(name, arrow_type(text)) for name, text in output.columns])


# The job reports which key made its customer pseudonyms by this fingerprint, never the key: an HMAC of a
# fixed label, so it identifies the key without revealing it (and differs from every customer_key).
_FINGERPRINT_LABEL = b"django-spark-etl pseudonym key fingerprint v1"


def pseudonym_key_fingerprint(key: bytes) -> str:
    return hmac.new(key, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:16]


SHA256_BLOCK = 64


def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    if len(key) > SHA256_BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(SHA256_BLOCK, b"\x00")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def secret_fragments(key: bytes) -> list[str]:
    """Texts that reveal the key if they appear in a log or error message (the key and its pads)."""
    fragments = [key.hex(), *(pad.hex() for pad in hmac_pads(key))]
    try:
        fragments.append(key.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    return [f for f in fragments if f]
