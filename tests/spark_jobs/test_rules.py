"""Declared quality rules in spark_jobs.quality: row checks in the casting projection, severities,
unique and reference rules, quarantine messages and the row accounting."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, StringType, StructField, StructType

from spark_jobs import sales_daily as job
from spark_jobs.quality import (
    QUARANTINE_SCHEMA,
    add_reasons,
    apply_reference_rules,
    apply_unique_rules,
    cast_and_validate,
    is_quarantined,
    mark_duplicates,
    pii_masks,
    quarantine_rows,
    row_counts,
)
from warehouse.loading.specs import output_constraints

COLUMNS = {
    "id": {"type": "string", "required": True},
    "qty": {"type": "int"},
    "price": {"type": "decimal(18,2)"},
    "day": {"type": "date"},
    "cur": {"type": "string"},
    "code": {"type": "string"},
}


def rule(code: str, check: str, severity: str = "reject", **params) -> dict:
    return {"code": code, "check": check, "severity": severity, **params}


def staged(spark, rows: list[dict], columns=COLUMNS):
    names = list(columns)
    return spark.createDataFrame(
        [tuple(r.get(c) for c in names) for r in rows], ", ".join(f"{c} string" for c in names)
    )


def codes(spark, rows: list[dict], rules: list[dict], column: str = "_reasons") -> list[list[str]]:
    out = cast_and_validate(staged(spark, rows), COLUMNS, "t", rules=rules).orderBy("id")
    return [r[column] for r in out.collect()]


def test_row_checks_range_allowed_not_allowed_pattern_required_flag_exactly_the_breaking_values(spark):
    rules = [
        rule("qty_range", "range", column="qty", min="1", max="10"),
        rule("price_positive", "range", column="price", min="0", exclusive_min=True),
        rule("day_in_2026", "range", column="day", min="2026-01-01", max="2026-12-31"),
        rule("cur_known", "allowed", column="cur", values=["EUR", "USD"]),
        rule("code_not_test", "not_allowed", column="code", values=["TEST"]),
        rule("code_shape", "pattern", column="code", pattern="[A-Z]{2}[0-9]+"),
        rule("cur_given", "required", column="cur"),
    ]
    rows = [
        {"id": "1", "qty": "1", "price": "0.01", "day": "2026-01-01", "cur": " EUR ", "code": "AB1"},
        {"id": "2", "qty": "10", "price": "9", "day": "2026-12-31", "cur": "USD", "code": "ZZ99"},
        {"id": "3", "qty": "0", "price": "0", "day": "2025-12-31", "cur": "eur", "code": "TEST"},
        {"id": "4", "qty": "11", "price": "-1", "day": "2027-01-01", "cur": None, "code": "xAB1"},
        # Empty or unparsable values break no rule but `required`: missing_/invalid_ report them.
        {"id": "5", "qty": "x", "price": None, "day": "soon", "cur": "EUR", "code": None},
    ]

    assert codes(spark, rows, rules) == [
        [],
        [],
        ["qty_range", "price_positive", "day_in_2026", "cur_known", "code_not_test", "code_shape"],
        ["qty_range", "price_positive", "day_in_2026", "code_shape", "cur_given"],
        ["invalid_qty", "invalid_day"],
    ]


def test_pattern_must_match_the_whole_trimmed_value_not_a_part_of_it(spark):
    rules = [rule("two_letters", "pattern", column="code", pattern="[A-Z]{2}|[0-9]{2}")]
    rows = [{"id": "1", "code": " FR "}, {"id": "2", "code": "FRA"}, {"id": "3", "code": "F12"}]

    assert codes(spark, rows, rules) == [[], ["two_letters"], ["two_letters"]]


CODES_SCHEMA = StructType(
    [
        StructField("id", StringType(), False),
        StructField("_reasons", ArrayType(StringType(), False), False),
        StructField("_warnings", ArrayType(StringType(), False), False),
        StructField("_filtered", ArrayType(StringType(), False), False),
    ]
)


def assert_codes(spark, rows: list[dict], rules: list[dict], expected: list[tuple]) -> None:
    """The (id, _reasons, _warnings, _filtered) of each row after cast_and_validate, compared with chispa."""
    out = cast_and_validate(staged(spark, rows), COLUMNS, "t", rules=rules)
    actual = out.select("id", "_reasons", "_warnings", "_filtered").orderBy("id")
    assert_df_equality(actual, spark.createDataFrame(expected, CODES_SCHEMA), ignore_nullable=True)


def test_when_checks_a_rule_only_on_rows_where_its_condition_is_true_a_stock_write_off_is_filtered(spark):
    rules = [
        # The analysts' write-off: a quantity below zero on an invoice that is not a cancellation.
        rule("stock_write_off", "range", "filter", column="qty", min="0", when="id not like 'C%'"),
        # Typed comparisons, in-lists, is null, and / or / not with SQL precedence (and before or).
        rule(
            "big_foreign_order",
            "range",
            "warn",
            column="qty",
            max="10",
            when="price >= 10.50 and cur in ('GBP', 'USD') or not (day is not null) and code = 'X''Y'",
        ),
        rule("above_the_cent", "range", "warn", column="qty", max="10", when="price > 1234567890123456.78"),
    ]
    rows = [
        {"id": "C1", "qty": "-2", "cur": "GBP", "price": "20", "day": "2026-01-01"},  # a cancellation
        {"id": "D2", "qty": "-3", "cur": "EUR", "price": "20", "day": "2026-01-01"},  # written off
        {"id": "D3", "qty": "11", "cur": "GBP", "price": "10.50", "day": "2026-01-01"},  # at the bound
        {"id": "D4", "qty": "11", "cur": "GBP", "price": "10.49", "day": "2026-01-01"},  # just under
        {"id": "D5", "qty": "11", "cur": "EUR", "price": "99", "day": "2026-01-01"},  # another currency
        {"id": "D6", "qty": "11", "cur": "EUR", "price": "1", "code": "X'Y"},  # no day, the code quoted
        {"id": "D7", "qty": "11", "cur": " GBP ", "price": None, "code": "X'Y", "day": "2026-01-01"},
        # A decimal literal compares exactly: as doubles, these two prices and the bound are one number.
        {"id": "D8", "qty": "11", "price": "1234567890123456.79", "day": "2026-01-01"},
        {"id": "D9", "qty": "11", "price": "1234567890123456.78", "day": "2026-01-01"},
    ]

    assert_codes(
        spark,
        rows,
        rules,
        [
            ("C1", [], [], []),
            ("D2", [], [], ["stock_write_off"]),
            ("D3", [], ["big_foreign_order"], []),
            ("D4", [], [], []),
            ("D5", [], [], []),
            ("D6", [], ["big_foreign_order"], []),
            ("D7", [], [], []),  # an empty price makes the condition unknown: not checked
            ("D8", [], ["above_the_cent"], []),
            ("D9", [], [], []),
        ],
    )


def test_ignore_case_lists_and_pattern_search_and_negate_say_what_the_analysts_mean(spark):
    rules = [
        rule("manual_line", "allowed", "filter", column="code", values=["M", "POST"], ignore_case=True),
        rule("known_currency", "not_allowed", "warn", column="cur", values=["xxx"], ignore_case=True),
        rule("exact_list", "allowed", "warn", column="code", values=["M", "POST"]),
        # A gift voucher anywhere in the code is refused: no negative lookahead needed.
        rule("gift_voucher", "pattern", column="id", pattern="(?i)gift_", match="search", negate=True),
        rule("id_digits", "pattern", column="id", pattern="[0-9]+", match="search"),
    ]
    rows = [
        {"id": "1", "code": "m", "cur": "XXX"},
        {"id": "2", "code": "Post", "cur": "EUR"},
        {"id": "3", "code": "POST", "cur": "xXx"},
        {"id": "4x", "code": "MM", "cur": "EUR"},
        {"id": "5 gift_0001_20", "code": "M"},
        {"id": "GIFT_", "code": "M"},
    ]

    assert_codes(
        spark,
        rows,
        rules,
        [
            ("1", [], ["known_currency", "exact_list"], []),
            ("2", [], ["exact_list"], []),
            ("3", [], ["known_currency"], []),
            ("4x", [], ["exact_list"], ["manual_line"]),
            ("5 gift_0001_20", ["gift_voucher"], [], []),
            ("GIFT_", ["gift_voucher", "id_digits"], [], []),
        ],
    )


def test_severity_sends_the_code_to_reasons_warnings_or_filtered(spark):
    rules = [
        rule("no_zero", "not_allowed", column="qty", values=["0"]),
        rule("big_order", "range", "warn", column="qty", max="100"),
        rule("postage", "allowed", "filter", column="code", values=["SKU"]),
    ]
    rows = [
        {"id": "1", "qty": "0", "code": "SKU"},
        {"id": "2", "qty": "500", "code": "SKU"},
        {"id": "3", "qty": "1", "code": "POST"},
    ]
    out = cast_and_validate(staged(spark, rows), COLUMNS, "t", rules=rules).orderBy("id").collect()

    assert [(r["_reasons"], r["_warnings"], r["_filtered"]) for r in out] == [
        (["no_zero"], [], []),
        ([], ["big_order"], []),
        ([], [], ["postage"]),
    ]


def test_row_counts_count_a_row_once_under_its_first_rule_and_name_every_rule_it_failed(spark):
    rules = [
        rule("no_zero", "not_allowed", column="qty", values=["0"]),
        rule("no_test", "not_allowed", column="cur", values=["TEST"]),
        rule("big_order", "range", "warn", column="qty", max="100"),
        rule("postage", "allowed", "filter", column="code", values=["SKU"]),
        rule("write_off", "range", "filter", column="qty", min="0", when="id != '9'"),
    ]
    rows = [
        {"id": "1", "qty": "1", "code": "SKU"},  # loaded
        {"id": "2", "qty": "500", "code": "SKU"},  # loaded, warned
        {"id": "2", "qty": "500", "code": "SKU"},  # duplicate: not counted again, under any rule
        {"id": "3", "qty": "0", "code": "SKU", "cur": "TEST"},  # rejected by two rules
        {"id": "4", "qty": "0", "code": "POST"},  # filtered, though it would be rejected too
        {"id": "5", "qty": "999", "code": "POST"},  # filtered: its warning does not count as loaded
        {"id": "6", "qty": "-1", "code": "POST"},  # filtered by two rules: counted under the first
        {"id": "7", "qty": "-1", "code": "SKU"},  # filtered by the second rule only
        {"id": "9", "qty": "-1", "code": "SKU"},  # loaded: the write-off's condition is false
    ]
    prepared = mark_duplicates(cast_and_validate(staged(spark, rows), COLUMNS, "t", rules=rules), ["id"])

    counts = row_counts(prepared)

    assert counts == {
        "rows_in": 9,
        "rejected": 1,
        "duplicates": 1,
        "rows_out": 3,
        "filtered": {"postage": 3, "write_off": 1},
        "warnings": {"big_order": 1},
        "rule_failures": {"big_order": 2, "no_test": 1, "no_zero": 2, "postage": 3, "write_off": 2},
    }
    assert counts["rows_in"] == (
        counts["rows_out"] + counts["rejected"] + counts["duplicates"] + sum(counts["filtered"].values())
    )
    assert [r["id"] for r in prepared.filter(is_quarantined()).collect()] == ["3"]


def test_quarantine_message_lists_every_failed_code_with_its_value_and_note_reason_code_is_the_first(spark):
    rules = [
        rule("no_zero", "not_allowed", column="qty", values=["0"], message="sell at least one"),
        rule("cur_known", "allowed", column="cur", values=["EUR"]),
    ]
    rows = [{"id": "1", "qty": "0", "price": "abc", "cur": "XXX"}]
    checked = cast_and_validate(staged(spark, rows, {**COLUMNS}), COLUMNS, "t", rules=rules)

    out = quarantine_rows(checked, "lines", rules=rules)

    raw = json.loads(out.first()["raw_record"])
    expected = spark.createDataFrame(
        [
            (
                "lines",
                "invalid_price",
                "invalid_price: price='abc'; no_zero: qty='0' (sell at least one); cur_known: cur='XXX'",
                out.first()["raw_record"],
                out.first()["record_fingerprint"],
            )
        ],
        QUARANTINE_SCHEMA,
    )
    assert_df_equality(out, expected, ignore_nullable=True)
    assert raw == {"id": "1", "qty": "0", "price": "abc", "day": None, "cur": "XXX", "code": None}


def test_only_pii_columns_are_pseudonymised_in_the_raw_record_everything_else_is_exact_text(spark):
    columns = {"id": {"type": "string"}, "email": {"type": "string", "pii": True}, "note": {"type": "string"}}
    df = spark.createDataFrame([("1", " Ann@X.org ", "  as  typed ")], "id string, email string, note string")
    masks = pii_masks(columns, lambda text: F.concat(F.lit("pseudo:"), F.lower(F.trim(text))))

    validated = cast_and_validate(df, columns, "t")
    out = quarantine_rows(add_reasons(validated, [("flagged", F.lit(True))]), "t", masks=masks).first()

    assert json.loads(out["raw_record"]) == {"id": "1", "email": "pseudo:ann@x.org", "note": "  as  typed "}
    assert validated.first()["email"] == "Ann@X.org"  # the typed value itself is untouched


def test_reference_rule_rejects_values_missing_from_the_accepted_rows_and_never_multiplies_rows(spark):
    lines = staged(
        spark,
        [{"id": "1", "code": "P1"}, {"id": "2", "code": "P9"}, {"id": "3", "code": None}],
    ).transform(lambda df: cast_and_validate(df, COLUMNS, "lines"))
    # The referenced frame holds a key twice: the join must still give one row per line.
    products = spark.createDataFrame([("P1",), ("P1",), ("P2",)], "sku string")
    rules = [
        rule("unknown_product", "reference", column="code", dataset="products", key="sku"),
        rule("not_in_catalogue", "reference", "warn", column="code", dataset="products", key="sku"),
        rule("checked_if_1", "reference", "filter", column="code", dataset="products", key="sku",
             when="id = '1'"),
    ]  # fmt: skip

    out = apply_reference_rules(lines, rules, {"products": products}).orderBy("id").collect()

    assert [(r["id"], r["_reasons"], r["_warnings"], r["_filtered"]) for r in out] == [
        ("1", [], [], []),
        ("2", ["unknown_product"], ["not_in_catalogue"], []),  # unknown, but not where its `when` holds
        ("3", [], [], []),  # a null is for `required` to report
    ]
    assert lines.columns == apply_reference_rules(lines, rules, {"products": products}).columns


def test_unique_rule_is_checked_after_deduplication_versions_of_one_record_never_conflict(spark):
    columns = {"id": {"type": "string"}, "v": {"type": "int"}, "email": {"type": "string"}}
    df = spark.createDataFrame(
        [
            ("A", "1", "a@x"),
            ("A", "2", "a@x"),  # a later version of A: A's older version is a duplicate, no conflict
            ("B", "1", "b@x"),
            ("C", "1", "b@x"),  # another record with B's e-mail: both break the rule
            ("D", "1", None),  # null: not checked
            ("E", "1", None),
        ],
        "id string, v string, email string",
    )
    rules = [
        rule("email_unique", "unique", columns=["email"]),
        # Among the rows its `when` selects only: C is not one of them, so B's e-mail is unique there.
        rule("email_unique_but_c", "unique", "warn", columns=["email"], when="id != 'C'"),
    ]
    marked = mark_duplicates(cast_and_validate(df, columns, "t", rules=rules), ["id"], "v")

    out = apply_unique_rules(marked, rules).orderBy("id", "v").collect()

    assert [(r["id"], r["v"], r["_dup"], r["_reasons"], r["_warnings"]) for r in out] == [
        ("A", 1, True, [], []),
        ("A", 2, False, [], []),
        ("B", 1, False, ["email_unique"], []),
        ("C", 1, False, ["email_unique"], []),
        ("D", 1, False, [], []),
        ("E", 1, False, [], []),
    ]
    assert out[0].asDict().keys() == marked.first().asDict().keys()


def test_a_rule_on_an_undeclared_column_is_refused(spark):
    with pytest.raises(ValueError, match=r"rule 'r' checks undeclared column 'nope'"):
        cast_and_validate(
            staged(spark, [{"id": "1"}]), COLUMNS, "t", rules=[rule("r", "required", column="nope")]
        )


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"severity": "warn"}, r"reference rule 'known' on order_lines.sku must reject"),
        ({"when": "quantity > 0"}, r"reference rule 'known' on order_lines.sku must check every line"),
    ],
)
def test_a_reference_rule_on_the_lines_sku_must_reject_every_line_the_facts_need_their_product(params, error):
    from tests.spark_jobs.job_fixtures import KEY, LINE_SPEC, PRODUCT_SPEC, STORE_SPEC

    known = rule("known", "reference", column="sku", dataset="products", key="sku", **params)
    spec = {
        "business_date": "2026-11-01",
        "reporting_currency": "EUR",
        "constraints": output_constraints(),
        "inputs": {
            "order_lines": {**LINE_SPEC, "rules": [*LINE_SPEC["rules"], known]},
            "products": PRODUCT_SPEC,
            "stores": STORE_SPEC,
        },
    }

    with pytest.raises(ValueError, match=error):
        job.JobOptions.from_spec(spec, KEY)


def test_job_applies_declared_rules_and_its_result_accounts_for_filtered_and_warned_rows(spark, tmp_path):
    from tests.spark_jobs.job_fixtures import KEY, declared_rules_spec

    spec = declared_rules_spec(tmp_path)

    result = job.run_job(spark, spec, pseudonym_key=KEY)

    assert result["datasets"]["order_lines"] == {
        "rows_in": 7,
        "rejected": 3,
        "duplicates": 0,
        "rows_out": 2,
        "filtered": {"postage": 2},
        "warnings": {"bulk": 1},
        # Every rule each line broke: the two filtered POST lines are not in the catalogue either.
        "rule_failures": {"big_return": 1, "bulk": 1, "postage": 2, "unknown_product": 3, "write_off": 1,
                          "zero_quantity": 1},
    }  # fmt: skip
    quarantined = {
        r["reason_code"]: r["message"] for r in pq.read_table(tmp_path / "out/quarantine").to_pylist()
    }
    assert quarantined == {
        "zero_quantity": "zero_quantity: quantity='0'",
        "unknown_product": "unknown_product: sku='NOPE' (not in the catalogue)",
        "big_return": "big_return: quantity='-6' (when order_id like 'R%')",
    }
