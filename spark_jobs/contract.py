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
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
class JobContract:
    job: str
    outputs: tuple[Output, ...]
    # The output whose row count is the partition's (the manifest's row_count).
    primary: str

    def __post_init__(self) -> None:
        if self.primary not in self.names:
            raise ValueError(f"{self.job}: primary output {self.primary!r} is not one of {self.names}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    def output(self, name: str) -> Output:
        return next(o for o in self.outputs if o.name == name)


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
        Output(
            "products",
            (("sku", "string"), ("name", "string"), ("category", "string"), ("list_price", "decimal(18,2)")),
            rows_of="products",
        ),
        Output(
            "stores",
            (
                ("store_code", "string"),
                ("name", "string"),
                ("city", "string"),
                ("region", "string"),
                ("country", "string"),
            ),
            rows_of="stores",
        ),
        Output(
            "customers",
            (
                ("customer_key", "string"),
                ("country", "string"),
                # The time of the latest order giving the country: the loader keeps the latest.
                ("country_seen_at", "timestamp"),
            ),
        ),
        QUARANTINE,
    ),
    primary="sales_lines",
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
