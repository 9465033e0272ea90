"""The retail sales job: staged order lines, products and stores -> the loader's Parquet outputs.

Submitted with spark-submit as a script (``--spec <job spec JSON>``) and imported as a module by tests.
The core is pure DataFrame functions; only :func:`run_job` reads and writes, only :func:`main` builds the
SparkSession. Its outputs are declared in :mod:`spark_jobs.contract`; they and ``_result.json`` are the
loader's contract (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DateType,
    DecimalType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from spark_jobs import contract
from spark_jobs.contract import secret_fragments
from spark_jobs.quality import (
    DUP_COL,
    QUARANTINE_SCHEMA,
    RAW_COL,
    Rule,
    add_reasons,
    apply_reference_rules,
    apply_unique_rules,
    cast_and_validate,
    clean_text,
    hmac_sha256_hex,
    is_accepted,
    is_quarantined,
    mark_duplicates,
    pii_masks,
    quarantine_rows,
    row_counts,
)
from spark_jobs.retail import (
    ENCRYPTED_EMAIL,
    RetailOptions,
    derived_products,
    derived_stores,
    link_returns,
    mark_returns,
    usable_rates,
    with_line_type,
    with_reporting_amount,
    with_row_line_numbers,
    with_source_defaults,
)

# What the job means whatever engine runs it: its options, spec checks, implicit rules, reason codes and
# accounting (the Dask job reads the same; these names are also this module's, for its callers).
from spark_jobs.sales_rules import (  # noqa: E402, F401
    BUSINESS_DATE_FROM,
    CONTRACT,
    DATASETS,
    FAILED_FILE,
    INPUT_FILLS,
    JOB_NAME,
    LINE_REASON_COLUMNS,
    LINE_REFERENCES,
    LOADED_FORMS,
    MISSING_BUSINESS_DATE,
    REQUIRED_INPUT_COLUMNS,
    VERSION_TYPES,
    Fill,
    JobOptions,
    SpecsUnreadable,
    _check_conservation,
    _check_constraints,
    _check_spec,
    _one_line,
    _pseudonym_key_from_env,
    _write_json_atomically,
    implicit_rules,
    input_fills,
    inputs_with_implicit_rules,
    line_reference_rules,
    parquet_row_count,
    specs_read,
    specs_run,
)

OUTPUT_SCHEMAS: dict[str, StructType] = {o.name: contract.spark_schema(o) for o in CONTRACT.outputs}
SALES_LINES_SCHEMA = OUTPUT_SCHEMAS["sales_lines"]
PRODUCTS_SCHEMA = OUTPUT_SCHEMAS["products"]
STORES_SCHEMA = OUTPUT_SCHEMAS["stores"]
CUSTOMERS_SCHEMA = OUTPUT_SCHEMAS["customers"]

_AMOUNT_TYPE = DecimalType(18, 2)


# --- preparation: typing, validation, duplicates -------------------------------------------------------


def prepare_dataset(raw: DataFrame, input_spec: Mapping[str, Any], dataset: str) -> DataFrame:
    """Typed, validated rows of one staged input with ``_reasons`` and the ``_dup`` flag (nothing dropped).

    The declared row-level rules are evaluated in the casting projection, ``unique`` rules after
    de-duplication.
    """
    rules = list(input_spec.get("rules") or ())
    validated = cast_and_validate(raw, input_spec["columns"], dataset, rules)
    marked = mark_duplicates(validated, list(input_spec["key"]), input_spec.get("version_column"))
    return apply_unique_rules(marked, rules)


def quarantine_masks(
    input_spec: Mapping[str, Any], pseudonym_key: bytes, customer_key_from: str | None = None
) -> dict[str, Callable[[Column], Column]]:
    """How personal data shows in a quarantined record: as its pseudonym, for the columns declared
    ``pii`` and the customer key's source column (the e-mail), so the warehouse holds no address; an
    encrypted column (``encrypted``) as :data:`ENCRYPTED_MARK`."""

    def mask(text: Column) -> Column:
        return customer_key(pseudonym_key, clean_text(text, collapse=True))

    masks = pii_masks(input_spec["columns"], mask)
    if customer_key_from:
        masks[customer_key_from] = mask
    for column in input_spec.get("pseudonymised") or ():
        masks[column] = lambda text: text  # staged as its pseudonym already
    for column in input_spec.get("encrypted") or ():
        masks[column] = encrypted_mark
    return masks


ENCRYPTED_MARK = contract.ENCRYPTED_MARK


def encrypted_mark(text: Column) -> Column:
    return F.when(text.isNotNull(), F.lit(ENCRYPTED_MARK))


def prepare_order_lines(
    raw: DataFrame,
    input_spec: Mapping[str, Any],
    options: RetailOptions | None = None,
    reporting_currency: str | None = None,
) -> DataFrame:
    """Prepared order lines. With ``options``: source defaults, line numbers, ``line_type``."""
    options = options or RetailOptions()
    prepared = prepare_dataset(raw, input_spec, "order_lines")
    prepared = with_source_defaults(prepared, options, reporting_currency)
    if options.line_number_from == "row":
        prepared = with_row_line_numbers(prepared)
    # Currency codes compare upper-case ("eur" is EUR).
    return prepared.withColumn("currency", F.upper("currency")).transform(with_line_type(options.line_types))


def prepare_products(raw: DataFrame, input_spec: Mapping[str, Any]) -> DataFrame:
    return prepare_dataset(raw, input_spec, "products")


def prepare_stores(raw: DataFrame, input_spec: Mapping[str, Any]) -> DataFrame:
    return prepare_dataset(raw, input_spec, "stores")


def accepted_rows(prepared: DataFrame) -> DataFrame:
    """Kept (not duplicate), not filtered rows without any reason."""
    return prepared.filter(is_accepted())


def rejected_rows(prepared: DataFrame) -> DataFrame:
    """Kept (not duplicate), not filtered rows with at least one reason: they go to quarantine."""
    return prepared.filter(is_quarantined())


def build_products(prepared: DataFrame) -> DataFrame:
    return accepted_rows(prepared).select(*PRODUCTS_SCHEMA.fieldNames()).to(PRODUCTS_SCHEMA)


def build_stores(prepared: DataFrame) -> DataFrame:
    return accepted_rows(prepared).select(*STORES_SCHEMA.fieldNames()).to(STORES_SCHEMA)


# --- order line rules ------------------------------------------------------------------------------------


def join_dimensions(
    lines: DataFrame, products: DataFrame, stores: DataFrame, rules: Sequence[Rule] | None = None
) -> DataFrame:
    """Apply the lines' reference rules against the valid (accepted) product and store rows.

    The dimensions are a day's export (small): broadcast, so the lines are not shuffled.
    """
    return apply_reference_rules(lines, line_reference_rules(rules), {"products": products, "stores": stores})


def line_amount(quantity: Column, unit_price: Column) -> Column:
    """quantity x unit_price, rounded HALF_UP to the cent, decimal(18,2); null when it does not fit.

    Exact decimal arithmetic: int x decimal(18,4) is decimal(29,4), ``round`` is HALF_UP (``bround``
    would be HALF_EVEN).
    """
    return F.round(quantity.cast(DecimalType(10, 0)) * unit_price, 2).try_cast(_AMOUNT_TYPE)


def apply_line_rules(lines: DataFrame, reporting_currency: str | None = None) -> DataFrame:
    """Add ``amount`` and ``is_return``, and the business-rule reasons of an order line.

    A negative quantity is a return (negative amount). Lines in another currency than the reporting
    one are rejected: without exchange rates their amounts cannot be summed into revenue.
    """
    quantity, unit_price = F.col("quantity"), F.col("unit_price")
    with_amount = lines.withColumn("amount", line_amount(quantity, unit_price)).withColumn(
        "is_return", quantity < 0
    )
    checks = [
        ("amount_out_of_range", quantity.isNotNull() & unit_price.isNotNull() & F.col("amount").isNull()),
    ]
    if reporting_currency:
        checks.append(("unsupported_currency", F.col("currency") != F.lit(reporting_currency.upper())))
    return add_reasons(with_amount, checks)


def classify_order_lines(
    lines: DataFrame,
    products: DataFrame,
    stores: DataFrame,
    reporting_currency: str | None = None,
    rules: Sequence[Rule] | None = None,
) -> DataFrame:
    """Prepared order lines with every reason (validation, dimensions, rules) and the ``_dup`` flag."""
    return apply_line_rules(join_dimensions(lines, products, stores, rules), reporting_currency)


# --- outputs -----------------------------------------------------------------------------------------------


def customer_key(pseudonym_key: bytes, email: Column) -> Column:
    """HMAC-SHA256 pseudonym of the normalised e-mail; null for a guest (no e-mail)."""
    return hmac_sha256_hex(pseudonym_key, F.lower(F.trim(email)))


def with_customer_key(
    pseudonym_key: bytes, source: str = "customer_email", *, pseudonymised: bool = False
) -> Callable[[DataFrame], DataFrame]:
    """The customer key from the e-mail, or, when extraction staged the e-mail as its pseudonym
    (connectors.records.pseudonym, the same HMAC of the same cleaned value), that pseudonym itself."""

    def _transform(df: DataFrame) -> DataFrame:
        key = F.col(source) if pseudonymised else customer_key(pseudonym_key, F.col(source))
        return df.withColumn("customer_key", key)

    return _transform


def with_business_date(column: str, timezone: str) -> Callable[[DataFrame], DataFrame]:
    """``business_date``: the date of ``column`` (a timestamp: in ``timezone``) — the record's own date,
    not the partition's, so a line re-sent or updated in a later partition keeps its date. A line without
    one is rejected (``missing_business_date``)."""

    def _transform(lines: DataFrame) -> DataFrame:
        value = F.col(column)
        if isinstance(lines.schema[column].dataType, TimestampType):
            value = F.to_date(F.from_utc_timestamp(value, timezone))
        dated = lines.withColumn("business_date", value.cast(DateType()))
        return add_reasons(dated, [(MISSING_BUSINESS_DATE, F.col("business_date").isNull())])

    return _transform


def with_source_version(
    version_column: str | None, partition_date: dt.date
) -> Callable[[DataFrame], DataFrame]:
    """``source_version``: the line's version as a long that orders versions across partitions —
    microseconds of a timestamp, days of a date, an integer as it is — or, with no version column, the
    partition date's midnight in microseconds (a later extraction is the newer one)."""

    def _transform(lines: DataFrame) -> DataFrame:
        if version_column is None:
            midnight = dt.datetime.combine(partition_date, dt.time.min, tzinfo=dt.UTC)
            return lines.withColumn("source_version", F.lit(int(midnight.timestamp()) * 1_000_000))
        value = F.col(version_column)
        kind = lines.schema[version_column].dataType
        if isinstance(kind, TimestampType):
            value = F.unix_micros(value)
        elif isinstance(kind, DateType):
            value = F.unix_date(value)
        return lines.withColumn("source_version", value.cast(LongType()))

    return _transform


def build_sales_lines(lines: DataFrame) -> DataFrame:
    """Accepted lines (with ``customer_key``, ``business_date`` and ``source_version``) in the sales_lines
    schema; the e-mail is dropped here."""
    # Lines that went through no conversion or return linking: reporting amount = amount, no original.
    if "amount_reporting" not in lines.columns:
        lines = lines.withColumn("amount_reporting", F.col("amount"))
    if "original_order_id" not in lines.columns:
        lines = lines.withColumn("original_order_id", F.lit(None).cast(StringType()))
    return lines.select(*SALES_LINES_SCHEMA.fieldNames()).to(SALES_LINES_SCHEMA)


def build_customers(lines: DataFrame) -> DataFrame:
    """One row per customer_key: the country of the latest order that has one (ties: smallest), and that
    order's time (null with no country), by which the loader keeps the latest across partitions; and the
    encrypted e-mail of the latest order that has one, as staged (a token: the job holds no key).

    Aggregations, not a window over the lines: the latest order per (customer, country) first, a hash
    aggregation combined on the map side, so only a row per pair and task is shuffled; then the choice
    among the few countries of each customer.
    """
    # Every token of a customer decrypts to the same e-mail; the greatest (time, token) makes the choice
    # deterministic. The loader keeps the token it stored first (warehouse.loading.specs, `kept`).
    token = F.col(ENCRYPTED_EMAIL) if ENCRYPTED_EMAIL in lines.columns else F.lit(None).cast(StringType())
    latest = (
        lines.filter(F.col("customer_key").isNotNull())
        .groupBy("customer_key", "customer_country")
        .agg(
            F.max("ordered_at").alias("_latest"),
            F.max(F.when(token.isNotNull(), F.struct(F.col("ordered_at"), token.alias("t")))).alias("_token"),
        )
    )
    preference = F.struct(
        F.col("customer_country").isNull(), -F.unix_micros("_latest"), F.col("customer_country")
    )
    chosen = latest.groupBy("customer_key").agg(
        F.min_by(F.struct("customer_country", "_latest"), preference).alias("_chosen"),
        F.max("_token").alias("_token"),
    )
    return chosen.select(
        "customer_key",
        F.col("_chosen.customer_country").alias("country"),
        F.when(F.col("_chosen.customer_country").isNotNull(), F.col("_chosen._latest")).alias(
            "country_seen_at"
        ),
        F.col("_token.t").alias("email_encrypted"),
    ).to(CUSTOMERS_SCHEMA)


def build_quarantine(
    order_lines: DataFrame,
    products: DataFrame,
    stores: DataFrame,
    masks: Mapping[str, Mapping[str, Callable[[Column], Column]]],
    rules: Mapping[str, Sequence[Rule]] | None = None,
    reason_columns: Mapping[str, str] | None = None,
) -> DataFrame:
    """Rejected rows of the three (classified / prepared) inputs in one quarantine frame.

    ``masks`` (dataset -> :func:`quarantine_masks`; required, so that no caller forgets them) hide
    personal data in the records; ``rules`` (dataset -> declared rules) name the column and message of
    each rule's code.
    """
    rules = rules or {}
    line_rules = [*rules.get("order_lines", ()), *line_reference_rules(rules.get("order_lines"))]
    quarantined = quarantine_rows(
        rejected_rows(order_lines),
        "order_lines",
        {**LINE_REASON_COLUMNS, **(reason_columns or {})},
        line_rules,
        masks.get("order_lines"),
    )
    for name, prepared in (("products", products), ("stores", stores)):
        rejected = rejected_rows(prepared)
        rows = quarantine_rows(rejected, name, rules=rules.get(name, ()), masks=masks.get(name))
        quarantined = quarantined.unionByName(rows)
    return quarantined.to(QUARANTINE_SCHEMA)


def dataset_counts(prepared: DataFrame) -> dict[str, Any]:
    """rows_in / rejected / duplicates / rows_out, filtered and warnings per code, in one job."""
    return row_counts(prepared)


# --- the job ------------------------------------------------------------------------------------------------


def _read_input(spark: SparkSession, input_spec: Mapping[str, Any]) -> DataFrame:
    files = list(input_spec.get("files") or [])
    if not files:
        return _empty_input(spark, list(input_spec["columns"]))
    return spark.read.option("mergeSchema", "true").parquet(*files)


@dataclasses.dataclass
class Transformed:
    """The job's outputs (by contract name, in the declared schemas; lazy) and the row accounting of each
    input. The outputs read cached frames: write them, then :meth:`unpersist`."""

    outputs: dict[str, DataFrame]
    datasets: dict[str, dict[str, Any]]
    cached: list[DataFrame] = dataclasses.field(default_factory=list)

    def unpersist(self) -> None:
        for frame in self.cached:
            frame.unpersist()


def _empty_input(spark: SparkSession, columns: Sequence[str]) -> DataFrame:
    # An empty partition has no file: an empty all-text frame keeps the rest of the job uniform.
    return spark.createDataFrame([], StructType([StructField(name, StringType()) for name in columns]))


def transform(frames: Mapping[str, DataFrame], options: JobOptions) -> Transformed:
    """The whole job without I/O: staged (all-text) frames by input name -> the contract's outputs and
    the counts. A dimension the options derive from the lines has no frame.

    The order lines are read once: their classified frame (every row with its reasons and customer key) is
    cached and feeds the outputs and the counts, which are computed here (Spark jobs on the cached frames).
    """
    cached: list[DataFrame] = []
    try:
        return _transform(frames, options, cached)
    except BaseException:  # nothing to write: release what was cached so far
        for frame in cached:
            frame.unpersist()
        raise


def _dimensions_prepare(
    frames: Mapping[str, DataFrame],
    inputs: Mapping[str, Any],
    retail: RetailOptions,
    lines_prep: DataFrame,
    cached: list[DataFrame],
) -> dict[str, tuple[DataFrame, DataFrame]]:
    """Products and stores: (prepared frame, valid members) each, from a master dataset, or (derive_from =
    "order_lines") the members the day's lines name. A master's prepared frame is cached in `cached`."""
    spark = lines_prep.sparkSession
    dims: dict[str, tuple[DataFrame, DataFrame]] = {}
    for name, prepare, build, derive in (
        ("products", prepare_products, build_products, retail.products_from_lines),
        ("stores", prepare_stores, build_stores, retail.stores_from_lines),
    ):
        if derive:
            columns = REQUIRED_INPUT_COLUMNS[name]
            empty = {"columns": {c: {"type": "string"} for c in columns}, "key": [columns[0]]}
            prep = prepare(_empty_input(spark, columns), empty)
            kept = lines_prep.filter(~F.col(DUP_COL))
            valid = (
                derived_products(kept, retail.product_name_from)
                if name == "products"
                else derived_stores(kept, retail.store_country_from)
            )
        else:
            prep = prepare(frames[name], inputs[name])
            prep.cache()
            cached.append(prep)
            valid = build(prep)
        dims[name] = (prep, valid)
    return dims


def _rates_prepare(
    frames: Mapping[str, DataFrame], inputs: Mapping[str, Any], retail: RetailOptions, cached: list[DataFrame]
) -> DataFrame | None:
    """The rates dataset prepared and cached (`[spark.options] rates`), or None without one."""
    if not retail.rates_dataset:
        return None
    rates_spec = inputs[retail.rates_dataset]
    rates_prep = prepare_dataset(frames[retail.rates_dataset], rates_spec, retail.rates_dataset)
    rates_prep.cache()
    cached.append(rates_prep)
    return rates_prep


def _transform(frames: Mapping[str, DataFrame], options: JobOptions, cached: list[DataFrame]) -> Transformed:
    """The job's plan, read top to bottom (a little over 80 lines on purpose: each line is one named step,
    and the order of caching matters): prepare, classify, count, build the outputs."""
    inputs, retail, key = options.inputs, options.retail, options.pseudonym_key
    reporting_currency = options.reporting_currency
    date_column = inputs["order_lines"].get("business_date_column") or BUSINESS_DATE_FROM
    rules = {name: list(inputs.get(name, {}).get("rules") or ()) for name in DATASETS}
    masks = {
        name: quarantine_masks(input_spec, key, retail.customer_key_from if name == "order_lines" else None)
        for name, input_spec in inputs.items()
    }
    lines_prep = prepare_order_lines(frames["order_lines"], inputs["order_lines"], retail, reporting_currency)
    if retail.products_from_lines or retail.stores_from_lines:
        # Read twice (the dimensions derived from it, then the classification): kept once in memory.
        lines_prep.cache()
        cached.append(lines_prep)
    dims = _dimensions_prepare(frames, inputs, retail, lines_prep, cached)
    (products_prep, products), (stores_prep, stores) = dims["products"], dims["stores"]

    rates_prep = _rates_prepare(frames, inputs, retail, cached)
    rates = usable_rates(accepted_rows(rates_prep)) if rates_prep is not None else None

    classified = (
        mark_returns(
            classify_order_lines(
                lines_prep,
                products,
                stores,
                None if rates is not None else reporting_currency,
                rules["order_lines"],
            ),
            retail.return_order_prefix,
        )
        .transform(lambda lines: with_reporting_amount(lines, reporting_currency, rates))
        # Here, once per line, rather than in each output that needs it (an HMAC is two SHA-256s).
        .transform(
            with_customer_key(
                key,
                retail.customer_key_from,
                pseudonymised=retail.customer_key_from in (inputs["order_lines"].get("pseudonymised") or ()),
            )
        )
        .transform(with_business_date(date_column, options.timezone))
        .transform(with_source_version(inputs["order_lines"].get("version_column"), options.business_date))
    )
    # Only a quarantined row needs its staged text again: the cached frame holds it for those alone.
    classified = classified.withColumn(RAW_COL, F.when(is_quarantined(), F.col(RAW_COL)))
    classified.cache()
    cached.append(classified)
    accepted = accepted_rows(classified)
    if retail.products_from_lines:
        products = derived_products(accepted, retail.product_name_from)
    if retail.stores_from_lines:
        stores = derived_stores(accepted, retail.store_country_from)
    quarantine = build_quarantine(
        classified, products_prep, stores_prep, masks, rules, {MISSING_BUSINESS_DATE: date_column}
    )
    if rates_prep is not None:
        rates_rules = list(inputs[retail.rates_dataset].get("rules") or ())
        quarantine = quarantine.unionByName(
            quarantine_rows(
                rejected_rows(rates_prep),
                retail.rates_dataset,
                rules=rates_rules,
                masks=masks[retail.rates_dataset],
            )
        )
    datasets = {"order_lines": dataset_counts(classified)}
    for name, (prep, _) in dims.items():
        if name in inputs:
            datasets[name] = dataset_counts(prep)
    if rates_prep is not None:
        datasets[retail.rates_dataset] = dataset_counts(rates_prep)

    # No daily aggregate: a partition may carry lines of other dates, and hold versions the warehouse
    # already has newer; the loader recomputes it from the line fact (docs/loading.md).
    outputs = {
        "sales_lines": build_sales_lines(link_returns(accepted)),
        "products": products,
        "stores": stores,
        "customers": build_customers(accepted),
        "quarantine": quarantine,
    }
    if outputs.keys() != set(CONTRACT.names):
        raise RuntimeError(f"{JOB_NAME} builds {sorted(outputs)}, its contract {sorted(CONTRACT.names)}")
    typed = {name: outputs[name].to(OUTPUT_SCHEMAS[name]) for name in CONTRACT.names}
    return Transformed(typed, datasets, cached)


def run_job(spark: SparkSession, spec: Mapping[str, Any], pseudonym_key: bytes | None = None) -> dict:
    """Read the spec's inputs, :func:`transform` them, write every output under ``output_dir`` and
    ``_result.json``; return it. The key defaults to the environment variable the spec names."""
    options = JobOptions.from_spec(spec, pseudonym_key)
    output_dir = spec["output_dir"]
    # Timestamps as Parquet TIMESTAMP_MICROS (UTC-adjusted), not the legacy INT96 other readers mistype.
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    # The cached frame is read a handful of times, then dropped: compressing it (dictionary and run-length
    # statistics gathered value by value) cost more CPU than any of those reads (docs/scaling.md).
    spark.conf.set("spark.sql.inMemoryColumnarStorage.compressed", "false")

    frames = {name: _read_input(spark, input_spec) for name, input_spec in options.inputs.items()}
    transformed = transform(frames, options)
    outputs: dict[str, int] = {}
    try:
        for name, frame in transformed.outputs.items():
            path = os.path.join(output_dir, name)
            frame.write.mode("overwrite").parquet(path)
            outputs[name] = parquet_row_count(path)
    finally:
        transformed.unpersist()

    result = {
        "datasets": transformed.datasets,
        "outputs": outputs,
        "pseudonym_key_fingerprint": contract.pseudonym_key_fingerprint(options.pseudonym_key),
    }
    _check_conservation(result)
    _write_json_atomically(os.path.join(output_dir, "_result.json"), result)
    return result


# --- entry point ------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job for each ``--spec`` in turn in one Spark application (a backfill pays the JVM's start
    once). Each spec's ``output_dir`` ends with its ``_result.json``, or with ``_failed.json`` holding the
    one-line error, and the next spec runs regardless. Exit 0 when every spec succeeded, 1 when one
    failed (its line also goes to stderr), 2 when a spec cannot be read or the key is missing."""
    parser = argparse.ArgumentParser(prog=JOB_NAME, description="Daily retail sales transform.")
    parser.add_argument(
        "--spec",
        action="append",
        required=True,
        help="path of a job spec JSON (see docs/architecture.md); repeat for several dates",
    )
    args = parser.parse_args(argv)
    try:
        specs, key = specs_read(args.spec)
    except SpecsUnreadable as exc:
        print(f"{JOB_NAME}: {exc}", file=sys.stderr)
        return 2

    spark = None
    try:
        dates = [str(spec.get("business_date")) for spec in specs]
        app_name = f"{specs[0].get('pipeline', 'etl')}:{JOB_NAME}:{dates[0]}" + (
            f"..{dates[-1]}" if len(dates) > 1 else ""
        )
        spark = (
            SparkSession.builder.appName(app_name).config("spark.sql.session.timeZone", "UTC").getOrCreate()
        )

        def run(spec: Mapping[str, Any]) -> None:
            try:
                run_job(spark, spec, pseudonym_key=key)
            finally:
                spark.catalog.clearCache()  # nothing of one date stays for the next

        return specs_run(JOB_NAME, specs, key, run)
    except Exception as exc:
        print(f"{JOB_NAME}: failed: {_one_line(exc, secret_fragments(key))}", file=sys.stderr)
        return 1
    finally:
        if spark is not None:
            spark.stop()


if __name__ == "__main__":
    sys.exit(main())
