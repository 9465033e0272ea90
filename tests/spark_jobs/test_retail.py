"""Retail semantics on tiny frames: line types, returns linking, currency conversion, options."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from pyspark.sql import functions as F

from spark_jobs.quality import REASONS_COL
from spark_jobs.retail import LineType, RetailOptions, link_returns, with_line_type, with_reporting_amount


def test_line_types_first_matching_rule_wins_and_non_product_lines_have_no_sku(spark):
    lines = spark.createDataFrame([("POST",), ("BANK CHARGES",), ("85123A",)], "sku string")
    rules = [LineType("postage", skus=("POST",)), LineType("fee", pattern="^BANK")]

    out = lines.transform(with_line_type(rules)).collect()

    assert [(r.stock_code, r.line_type, r.sku) for r in out] == [
        ("POST", "postage", None),
        ("BANK CHARGES", "fee", None),
        ("85123A", "product", "85123A"),
    ]


def test_amounts_convert_at_the_dates_rate_half_up_and_a_currency_without_rate_is_rejected(spark):
    lines = spark.createDataFrame(
        [
            ("USD", Decimal("10.05")),
            ("EUR", Decimal("1.00")),
            ("JPY", Decimal("100.00")),
            ("GBP", Decimal("50.00")),
            ("CAD", Decimal("-50.00")),
        ],
        "currency string, amount decimal(18,2)",
    ).withColumn(REASONS_COL, F.array().cast("array<string>"))
    rates = spark.createDataFrame(
        [("USD", Decimal("0.85710000")), ("GBP", Decimal("1.15810000")), ("CAD", Decimal("1.15810000"))],
        "_rate_currency string, _rate decimal(18,8)",
    )

    out = {r.currency: r for r in with_reporting_amount(lines, "EUR", rates).collect()}

    assert out["USD"].amount_reporting == Decimal("8.61")  # 8.6138... rounds to 8.61
    # Exact half-cent ties: half-up (away from zero), where half-even would give 57.90 / -57.90.
    assert out["GBP"].amount_reporting == Decimal("57.91")
    assert out["CAD"].amount_reporting == Decimal("-57.91")
    assert out["EUR"].amount_reporting == Decimal("1.00")  # the reporting currency needs no rate row
    assert out["JPY"].amount_reporting is None and out["JPY"][REASONS_COL] == ["missing_rate"]


def test_a_return_links_to_the_latest_earlier_purchase_of_the_same_customer_and_item(spark):
    at = dt.datetime(2026, 11, 1, 9)
    rows = [
        ("O1", 1, "c1", "A", at, False),
        ("O2", 1, "c1", "A", at.replace(hour=10), False),
        ("O9", 1, "c1", "A", at.replace(hour=12), False),  # after the return: not its original
        ("C1", 1, "c1", "A", at.replace(hour=11), True),
        ("C2", 1, "c2", "A", at.replace(hour=11), True),  # nothing bought by c2: unlinked
        ("C3", 1, None, "A", at.replace(hour=11), True),  # a guest: unlinked
    ]
    lines = spark.createDataFrame(
        rows,
        "order_id string, line_number int, customer_key string, stock_code string, ordered_at timestamp, "
        "is_return boolean",
    )

    out = {r.order_id: r.original_order_id for r in link_returns(lines).collect()}

    assert out == {"O1": None, "O2": None, "O9": None, "C1": "O2", "C2": None, "C3": None}


def test_unknown_or_misspelt_job_options_are_errors_naming_the_key():
    with pytest.raises(ValueError, match="unknown job option"):
        RetailOptions.from_spec({"line_type": []})
    with pytest.raises(ValueError, match=r"line_types\[0\]: give skus or a pattern"):
        RetailOptions.from_spec({"line_types": [{"type": "postage"}]})
    with pytest.raises(ValueError, match="line_number_from"):
        RetailOptions.from_spec({"line_number_from": "file"})
