"""Typing, validation, de-duplication, quarantine and the SQL HMAC of spark_jobs.quality."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from decimal import Decimal

from chispa import assert_df_equality
from pyspark.sql import functions as F

from spark_jobs.quality import (
    QUARANTINE_SCHEMA,
    add_reasons,
    cast_and_validate,
    deduplicate,
    hmac_sha256_hex,
    mark_duplicates,
    quarantine_rows,
)

TYPED = {
    "name": {"type": "string", "required": True},
    "qty": {"type": "int", "required": True},
    "big": {"type": "long"},
    "price": {"type": "decimal(18,4)"},
    "at": {"type": "timestamp"},
    "day": {"type": "date"},
    "flag": {"type": "boolean"},
}
TYPED_COLS = list(TYPED)


def _staged(spark, rows: list[dict], columns: list[str] | None = None):
    columns = columns or TYPED_COLS
    schema = ", ".join(f"{c} string" for c in columns)
    return spark.createDataFrame([tuple(r.get(c) for c in columns) for r in rows], schema)


def _ok(**overrides) -> dict:
    row = {
        "name": "a",
        "qty": "1",
        "big": "1",
        "price": "1",
        "at": "2026-11-01 00:00:00",
        "day": "2026-11-01",
        "flag": "true",
    }
    row.update(overrides)
    return row


def _reasons(spark, rows: list[dict]) -> list[list[str]]:
    return [r["_reasons"] for r in cast_and_validate(_staged(spark, rows), TYPED, "t").collect()]


def test_strings_are_trimmed_and_collapsed_other_types_trimmed_raw_layer_untouched(spark):
    rows = [_ok(name="  Big \t  Red\u00a0 Shoe ", qty=" 7 ", price=" 2.50 ", day=" 2026-11-01\n")]
    out = cast_and_validate(_staged(spark, rows), TYPED, "t").first()

    assert out["name"] == "Big Red Shoe"
    assert (out["qty"], out["price"], out["day"]) == (7, Decimal("2.5000"), dt.date(2026, 11, 1))
    assert out["_raw"]["name"] == "  Big \t  Red\u00a0 Shoe "
    assert out["_reasons"] == []


def test_ascii_only_text_is_collapsed_too(spark):
    rows = [_ok(name="Big\tRed"), _ok(name=" Big   Red ")]
    names = [r["name"] for r in cast_and_validate(_staged(spark, rows), TYPED, "t").collect()]

    assert names == ["Big Red", "Big Red"]


def test_blank_text_is_null_missing_when_required_and_silently_null_when_optional(spark):
    out = cast_and_validate(
        _staged(spark, [_ok(name="   ", qty="", flag=" ", price=None)]), TYPED, "t"
    ).first()

    assert (out["name"], out["qty"], out["flag"], out["price"]) == (None, None, None, None)
    assert out["_reasons"] == ["missing_name", "missing_qty"]


def test_text_that_does_not_parse_is_invalid_for_its_column_and_nothing_throws(spark):
    rows = [
        _ok(qty="1.5"),
        _ok(qty="abc", big="99999999999999999999"),
        _ok(price="1e2"),  # exponent notation is not a price
        _ok(price="1,50"),
        _ok(price="0.33335"),  # more decimals than the scale: not silently rounded
        _ok(price="99999999999999999.0"),  # does not fit decimal(18,4)
        _ok(at="2026"),  # Spark's cast would take this as 2026-01-01
        _ok(at="2026-13-01 00:00:00", day="2026-02-30"),
        _ok(at="yesterday", flag="maybe"),
    ]
    assert _reasons(spark, rows) == [
        ["invalid_qty"],
        ["invalid_qty", "invalid_big"],
        ["invalid_price"],
        ["invalid_price"],
        ["invalid_price"],
        ["invalid_price"],
        ["invalid_at"],
        ["invalid_at", "invalid_day"],
        ["invalid_at", "invalid_flag"],
    ]


def test_decimal_text_is_parsed_exactly_not_through_double(spark):
    rows = [_ok(price="12345678901234.5678"), _ok(price="0.333500"), _ok(price="-.5")]
    out = cast_and_validate(_staged(spark, rows), TYPED, "t").select("price", "_reasons").collect()

    assert [(r["price"], r["_reasons"]) for r in out] == [
        (Decimal("12345678901234.5678"), []),
        (Decimal("0.3335"), []),
        (Decimal("-0.5000"), []),
    ]


def test_iso_timestamps_with_offset_are_converted_to_utc_and_without_offset_read_as_utc(spark):
    texts = [
        "2026-11-01T10:15:00+01:00",
        "2026-11-01 10:15:00",
        "2026-11-01T10:15:00Z",
        "2026-11-01T10:15:00.250-0230",
        "2026-11-01T10:15",
    ]
    out = cast_and_validate(_staged(spark, [_ok(at=t) for t in texts]), TYPED, "t").collect()

    assert [r["_reasons"] for r in out] == [[]] * len(texts)
    assert [r["at"] for r in out] == [
        dt.datetime(2026, 11, 1, 9, 15),
        dt.datetime(2026, 11, 1, 10, 15),
        dt.datetime(2026, 11, 1, 10, 15),
        dt.datetime(2026, 11, 1, 12, 45, 0, 250000),
        dt.datetime(2026, 11, 1, 10, 15),
    ]


def test_typed_frame_schema_is_the_declared_types_then_the_bookkeeping_columns(spark):
    out = cast_and_validate(_staged(spark, [_ok()]), TYPED, "t")

    assert [(f.name, f.dataType.simpleString()) for f in out.schema] == [
        ("name", "string"),
        ("qty", "int"),
        ("big", "bigint"),
        ("price", "decimal(18,4)"),
        ("at", "timestamp"),
        ("day", "date"),
        ("flag", "boolean"),
        ("_raw", "struct<at:string,big:string,day:string,flag:string,name:string,price:string,qty:string>"),
        ("_reasons", "array<string>"),
        ("_warnings", "array<string>"),
        ("_filtered", "array<string>"),
    ]


def test_raw_record_is_the_staged_text_as_sorted_key_json_and_fingerprint_its_sha256(spark):
    staged = {"zeta": ' Zürich "quoted" ', "alpha": None, "mid": "  "}
    df = _staged(spark, [staged], ["zeta", "alpha", "mid"])
    spec = {"zeta": {"type": "string"}, "mid": {"type": "string", "required": True}}
    out = quarantine_rows(cast_and_validate(df, spec, "t"), "t").first()

    expected = json.dumps(staged, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert out["raw_record"] == expected
    assert out["record_fingerprint"] == hashlib.sha256(expected.encode("utf-8")).hexdigest()


def _versions(spark, rows: list[tuple]):
    spec = {"id": {"type": "string", "required": True}, "v": {"type": "timestamp"}, "x": {"type": "string"}}
    return cast_and_validate(spark.createDataFrame(rows, "id string, v string, x string"), spec, "t")


def test_deduplicate_keeps_the_latest_version_of_a_key_and_one_copy_of_exact_duplicates(spark):
    df = _versions(
        spark,
        [
            ("A", "2026-11-01 10:00:00", "old"),
            ("A", "2026-11-01T12:00:00+01:00", "older-than-it-looks"),  # 11:00 UTC
            ("A", "2026-11-01 11:30:00", "latest"),
            (" A", "2026-11-01 09:00:00", "same key once trimmed"),
            ("B", "2026-11-01 10:00:00", "copy"),
            ("B", "2026-11-01 10:00:00", "copy"),
        ],
    )
    kept, dups = deduplicate(df, ["id"], "v")

    assert sorted((r["id"], r["x"]) for r in kept.collect()) == [("A", "latest"), ("B", "copy")]
    assert dups.count() == 4


def test_deduplicate_breaks_version_ties_by_raw_record_whatever_the_input_order(spark):
    rows = [("A", "2026-11-01 10:00:00", "a"), ("A", "2026-11-01 10:00:00", "b")]
    for ordered in (rows, rows[::-1]):
        kept, _ = deduplicate(_versions(spark, ordered).repartition(2), ["id"], "v")
        assert [r["x"] for r in kept.collect()] == ["b"]


def test_rows_with_unparsable_key_or_version_are_not_merged_into_a_key_only_exact_copies_are(spark):
    df = _versions(
        spark,
        [
            ("A", "2026-11-01 10:00:00", "valid"),
            ("A", "not a time", "bad version"),
            (None, "2026-11-01 10:00:00", "no key 1"),
            (None, "2026-11-01 10:00:00", "no key 2"),
            (None, "2026-11-01 10:00:00", "no key 2"),
        ],
    )
    marked = mark_duplicates(df, ["id"], "v")

    assert sorted((r["x"], r["_dup"]) for r in marked.collect()) == [
        ("bad version", False),
        ("no key 1", False),
        ("no key 2", False),
        ("no key 2", True),
        ("valid", False),
    ]


def test_quarantine_rows_have_the_contract_schema_first_code_and_every_code_with_its_value(spark):
    spec = {
        "sku": {"type": "string", "required": True},
        "qty": {"type": "int", "required": True},
        "price": {"type": "decimal(18,4)"},
    }
    staged = spark.createDataFrame(
        [("X9", "abc", "1e2"), (None, "1", "2")], "sku string, qty string, price string"
    )
    checked = add_reasons(
        cast_and_validate(staged, spec, "lines"), [("unknown_product", F.col("sku").isNotNull())]
    )
    out = quarantine_rows(checked, "lines", {"unknown_product": "sku"})

    raw1 = '{"price":"1e2","qty":"abc","sku":"X9"}'
    raw2 = '{"price":"2","qty":"1","sku":null}'
    expected = spark.createDataFrame(
        [
            (
                "lines",
                "invalid_qty",
                "invalid_qty: qty='abc'; invalid_price: price='1e2'; unknown_product: sku='X9'",
                raw1,
                hashlib.sha256(raw1.encode()).hexdigest(),
            ),
            (
                "lines",
                "missing_sku",
                "missing_sku: sku=null",
                raw2,
                hashlib.sha256(raw2.encode()).hexdigest(),
            ),
        ],
        QUARANTINE_SCHEMA,
    )
    assert_df_equality(out, expected, ignore_nullable=True, ignore_row_order=True)


def test_hmac_sha256_hex_in_spark_sql_equals_python_hmac(spark):
    messages = ["alice@example.com", "", "zoë@exämple.de", "日本語", "a" * 200]
    keys = [b"k", b"", bytes(range(64)), b"x" * 65, "clé".encode()]
    df = spark.createDataFrame([(m,) for m in messages] + [(None,)], "m string")
    cols = [hmac_sha256_hex(k, "m").alias(f"h{i}") for i, k in enumerate(keys)]
    rows = df.select("m", *cols).collect()

    for row in rows:
        for i, key in enumerate(keys):
            expected = (
                None if row["m"] is None else hmac.new(key, row["m"].encode(), hashlib.sha256).hexdigest()
            )
            assert row[f"h{i}"] == expected, (row["m"], key)
