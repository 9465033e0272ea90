"""Retail semantics of the sales job, configured by the pipeline's ``[spark.options]`` (spec ``options``).

Pure DataFrame -> DataFrame functions used by :mod:`spark_jobs.sales_daily`: line types (postage, fees,
discounts... are classified, not dropped), returns and their original order, amounts in the reporting
currency from a rates dataset, line numbers and dimensions derived from the lines when the source has no
line number or no product / store master. Decisions and their reasons: docs/retail-semantics.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DecimalType, IntegerType, StringType

from spark_jobs.quality import DUP_COL, RAW_COL, add_reasons, hash_first

# The options and their meaning are the job's, whatever engine runs it (spark_jobs/sales_rules.py).
from spark_jobs.sales_rules import (  # noqa: F401 (RetailOptions and LineType: imported from here too)
    _HAS_OFFSET,
    DERIVE_FROM_LINES,
    ENCRYPTED_EMAIL,
    PRODUCT,
    LineType,
    RetailOptions,
)

_AMOUNT_TYPE = DecimalType(18, 2)


def line_type_matches(rule: LineType, sku: Column) -> Column:
    """True where the sku is one of the rule's skus or matches its pattern."""
    conditions = []
    if rule.skus:
        conditions.append(sku.isin(list(rule.skus)))
    if rule.pattern:
        conditions.append(sku.rlike(rule.pattern))
    result = conditions[0]
    for condition in conditions[1:]:
        result = result | condition
    return result


# --- preparation --------------------------------------------------------------------------------------------


def with_source_defaults(
    lines: DataFrame, options: RetailOptions, reporting_currency: str | None
) -> DataFrame:
    """Columns the source may not have: a constant currency, no customer country or encrypted e-mail,
    local wall-clock times."""
    if "currency" not in lines.columns:
        lines = lines.withColumn("currency", F.lit(options.currency or reporting_currency).cast(StringType()))
    if "customer_country" not in lines.columns:
        lines = lines.withColumn("customer_country", F.lit(None).cast(StringType()))
    if ENCRYPTED_EMAIL not in lines.columns:
        lines = lines.withColumn(ENCRYPTED_EMAIL, F.lit(None).cast(StringType()))
    if options.source_timezone:
        raw_text = F.col(RAW_COL).getField("ordered_at")
        lines = lines.withColumn(
            "ordered_at",
            F.when(raw_text.rlike(_HAS_OFFSET), F.col("ordered_at")).otherwise(
                F.to_utc_timestamp("ordered_at", options.source_timezone)
            ),
        )
    return lines


def with_row_line_numbers(lines: DataFrame) -> DataFrame:
    """``line_number`` 1..n within each order, for a source that has none.

    Numbered in the order of the staged record's text, not the file's: Spark does not keep file order
    across splits, and this order gives the same number to the same line on every run. Duplicates are
    numbered apart, so removing one never renumbers the kept lines.
    """
    order = Window.partitionBy(*hash_first([F.col(DUP_COL), F.col("order_id")])).orderBy(F.col(RAW_COL))
    return lines.withColumn(
        "line_number", F.when(~F.col(DUP_COL), F.row_number().over(order)).cast(IntegerType())
    )


def with_line_type(rules: Sequence[LineType]) -> Any:
    """``line_type`` by the first matching rule (default ``product``); ``stock_code`` keeps the item code
    and ``sku`` is null for a non-product line, so it neither needs nor makes a product."""

    def _transform(lines: DataFrame) -> DataFrame:
        line_type: Column = F.lit(PRODUCT)
        for rule in reversed(rules):
            line_type = F.when(line_type_matches(rule, F.col("sku")), F.lit(rule.type)).otherwise(line_type)
        return (
            lines.withColumn("line_type", line_type)
            .withColumn("stock_code", F.col("sku"))
            .withColumn("sku", F.when(F.col("line_type") == PRODUCT, F.col("sku")))
        )

    return _transform


def mark_returns(lines: DataFrame, order_id_prefix: str | None) -> DataFrame:
    """A negative quantity is a return; so is every line of an order whose id has the return prefix."""
    is_return = F.col("quantity") < 0
    if order_id_prefix:
        is_return = is_return | F.col("order_id").startswith(order_id_prefix)
    return lines.withColumn("is_return", F.coalesce(is_return, F.lit(False)))


# --- currency -----------------------------------------------------------------------------------------------


def usable_rates(rates: DataFrame) -> DataFrame:
    """(currency upper-case, rate) of the accepted rate rows."""
    return rates.select(F.upper("currency").alias("_rate_currency"), F.col("rate").alias("_rate"))


def with_reporting_amount(
    lines: DataFrame, reporting_currency: str | None, rates: DataFrame | None
) -> DataFrame:
    """``amount_reporting``: the amount times the date's rate, rounded HALF_UP to the cent, in decimal.

    Without a rates dataset the amount is already in the reporting currency (other currencies are
    rejected ``unsupported_currency`` by the line rules). With one, a line whose currency has no rate is
    rejected ``missing_rate``; the reporting currency needs no row (rate 1).
    """
    if rates is None:
        return lines.withColumn("amount_reporting", F.col("amount"))
    joined = lines.join(F.broadcast(rates), F.col("currency") == F.col("_rate_currency"), "left")
    rate = F.col("_rate")
    if reporting_currency:
        rate = F.when(
            F.col("currency") == F.lit(reporting_currency.upper()),
            F.coalesce(rate, F.lit(1).cast("decimal(1,0)")),
        ).otherwise(rate)
    converted = joined.withColumn("_line_rate", rate).withColumn(
        "amount_reporting", F.round(F.col("amount") * F.col("_line_rate"), 2).try_cast(_AMOUNT_TYPE)
    )
    checked = add_reasons(
        converted,
        [
            ("missing_rate", F.col("currency").isNotNull() & F.col("_line_rate").isNull()),
            (
                "amount_out_of_range",
                F.col("amount").isNotNull()
                & F.col("_line_rate").isNotNull()
                & F.col("amount_reporting").isNull(),
            ),
        ],
    )
    return checked.drop("_rate_currency", "_rate", "_line_rate")


# --- returns ------------------------------------------------------------------------------------------------


def link_returns(lines: DataFrame) -> DataFrame:
    """``original_order_id`` of each return: the latest earlier purchase, among the accepted lines of the
    same business date (a partition may carry several), of the same customer and item (ties: the greatest
    order id); null when there is none, for a guest, or when the original was bought on an earlier date:
    the loader links those (docs/retail-semantics.md).

    A source that names the original order (a declared ``original_order_id`` column) wins.
    """
    same_date = ["business_date"] if "business_date" in lines.columns else []
    returns = lines.filter(F.col("is_return") & F.col("customer_key").isNotNull()).select(
        "order_id", "line_number", "customer_key", "stock_code", "ordered_at", *same_date
    )
    purchases = lines.filter(~F.col("is_return") & F.col("customer_key").isNotNull()).select(
        "customer_key",
        "stock_code",
        *same_date,
        F.col("order_id").alias("_orig_order"),
        F.col("ordered_at").alias("_orig_at"),
    )
    # Returns are a small share of the lines: broadcast them, so the purchases (and below, the lines)
    # are never shuffled for the sake of a few links.
    candidates = purchases.join(F.broadcast(returns), ["customer_key", "stock_code", *same_date]).filter(
        (F.col("_orig_at") <= F.col("ordered_at")) & (F.col("_orig_order") != F.col("order_id"))
    )
    latest = Window.partitionBy("order_id", "line_number").orderBy(
        F.col("_orig_at").desc(), F.col("_orig_order").desc()
    )
    links = (
        candidates.withColumn("_rank", F.row_number().over(latest))
        .filter(F.col("_rank") == 1)
        .select("order_id", "line_number", F.col("_orig_order").alias("_linked_order"))
    )
    linked = lines.join(F.broadcast(links), ["order_id", "line_number"], "left")
    declared = F.col("original_order_id") if "original_order_id" in lines.columns else F.lit(None)
    return linked.withColumn(
        "original_order_id", F.coalesce(declared.cast(StringType()), F.col("_linked_order"))
    ).drop("_linked_order")


# --- dimensions derived from the lines ----------------------------------------------------------------------


def derived_products(lines: DataFrame, name_from: str) -> DataFrame:
    """One product per sku of the product lines: the name of its latest line (ties: smallest name), the
    sku itself when no line names it; no category or list price (the source has none)."""
    name = F.col(name_from) if name_from in lines.columns else F.lit(None).cast(StringType())
    latest = Window.partitionBy("sku").orderBy(
        F.col("_name").isNull(), F.col("ordered_at").desc(), F.col("_name")
    )
    return (
        lines.filter(F.col("sku").isNotNull())
        .withColumn("_name", name)
        .withColumn("_rank", F.row_number().over(latest))
        .filter(F.col("_rank") == 1)
        .select(
            "sku",
            F.coalesce(F.col("_name"), F.col("sku")).alias("name"),
            F.lit(None).cast(StringType()).alias("category"),
            F.lit(None).cast(_AMOUNT_TYPE).alias("list_price"),
        )
    )


def derived_stores(lines: DataFrame, country_from: str | None) -> DataFrame:
    """One store per store_code of the lines, named by its code; its country from ``country_from`` (the
    latest line's, ties: smallest), e.g. an online shop whose store is the delivery country."""
    country = F.col(country_from) if country_from else F.lit(None).cast(StringType())
    latest = Window.partitionBy("store_code").orderBy(
        F.col("_country").isNull(), F.col("ordered_at").desc(), F.col("_country")
    )
    return (
        lines.filter(F.col("store_code").isNotNull())
        .withColumn("_country", country)
        .withColumn("_rank", F.row_number().over(latest))
        .filter(F.col("_rank") == 1)
        .select(
            "store_code",
            F.col("store_code").alias("name"),
            F.lit(None).cast(StringType()).alias("city"),
            F.lit(None).cast(StringType()).alias("region"),
            F.col("_country").alias("country"),
        )
    )
