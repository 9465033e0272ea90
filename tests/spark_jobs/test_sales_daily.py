"""The sales job's rules and outputs, on tiny inline frames, and run_job end to end on Parquet files."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from decimal import Decimal

import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from spark_jobs import contract
from spark_jobs import sales_daily as job
from spark_jobs.quality import clean_text
from spark_jobs.sales_daily import (
    CUSTOMERS_SCHEMA,
    ENCRYPTED_MARK,
    SALES_LINES_SCHEMA,
    accepted_rows,
    build_customers,
    build_products,
    build_quarantine,
    build_sales_lines,
    build_stores,
    classify_order_lines,
    prepare_order_lines,
    prepare_products,
    prepare_stores,
    quarantine_masks,
    rejected_rows,
    run_job,
    with_business_date,
    with_customer_key,
    with_source_version,
)
from tests.spark_jobs.job_fixtures import (
    DAY,
    KEY,
    LINE_SPEC,
    PRODUCT_SPEC,
    PRODUCTS,
    STORE_SPEC,
    STORES,
    every_output_spec,
    line,
)
from warehouse.loading.specs import output_constraints


def staged(spark, rows: list[dict], spec: dict):
    columns = list(spec["columns"])
    schema = ", ".join(f"`{c}` string" for c in columns)
    return spark.createDataFrame([tuple(r.get(c) for c in columns) for r in rows], schema)


def classify(spark, lines: list[dict], products=PRODUCTS, stores=STORES, currency: str | None = "EUR"):
    product_rows = build_products(prepare_products(staged(spark, products, PRODUCT_SPEC), PRODUCT_SPEC))
    store_rows = build_stores(prepare_stores(staged(spark, stores, STORE_SPEC), STORE_SPEC))
    prepared = prepare_order_lines(staged(spark, lines, LINE_SPEC), LINE_SPEC)
    return classify_order_lines(prepared, product_rows, store_rows, currency)


def sales_lines_of(spark, lines: list[dict], **kwargs):
    accepted = (
        accepted_rows(classify(spark, lines, **kwargs))
        .transform(with_customer_key(KEY))
        .transform(with_business_date("ordered_at", "UTC"))
        .transform(with_source_version(None, dt.date.fromisoformat(DAY)))
    )
    return build_sales_lines(accepted)


def reasons_by_line(classified) -> dict[int, list[str]]:
    return {r["line_number"]: r["_reasons"] for r in rejected_rows(classified).collect()}


def py_key(email: str) -> str:
    return hmac.new(KEY, email.strip().lower().encode(), hashlib.sha256).hexdigest()


def test_sales_line_is_typed_dated_pseudonymised_and_priced(spark):
    out = sales_lines_of(spark, [line(customer_email="  Ann@Example.COM ", quantity="2", unit_price="2.5")])

    expected = spark.createDataFrame(
        [
            (
                "O1",
                1,
                dt.date(2026, 11, 1),
                dt.datetime(2026, 11, 1, 9),
                "S1",
                "P1",
                py_key("ann@example.com"),
                2,
                Decimal("2.5000"),
                Decimal("5.00"),
                "EUR",
                False,
                "P1",
                "product",
                Decimal("5.00"),
                None,
                1_793_491_200_000_000,  # no version column: the partition date's midnight
            )
        ],
        SALES_LINES_SCHEMA,
    )
    assert_df_equality(out, expected, ignore_nullable=True)


def test_lines_with_unknown_product_or_store_are_rejected_with_their_own_code(spark):
    classified = classify(
        spark,
        [
            line(line_number="1"),
            line(line_number="2", sku="NOPE"),
            line(line_number="3", store_code="S9"),
            line(line_number="4", sku="NOPE", store_code="S9"),
        ],
    )

    assert reasons_by_line(classified) == {
        2: ["unknown_product"],
        3: ["unknown_store"],
        4: ["unknown_product", "unknown_store"],
    }


def test_a_product_rejected_by_validation_does_not_make_its_lines_valid(spark):
    products = [*PRODUCTS, {"sku": "P3", "name": "", "list_price": "1"}]  # no name: quarantined
    classified = classify(spark, [line(line_number="1", sku="P3")], products=products)

    assert reasons_by_line(classified) == {1: ["unknown_product"]}


def test_zero_quantity_negative_price_and_foreign_currency_are_rejected(spark):
    classified = classify(
        spark,
        [
            line(line_number="1", quantity="0"),
            line(line_number="2", unit_price="-1.00"),
            line(line_number="3", currency="usd"),
            line(line_number="4", currency="eur"),  # same currency, other case: accepted
        ],
    )

    assert reasons_by_line(classified) == {
        1: ["zero_quantity"],
        2: ["negative_price"],
        3: ["unsupported_currency"],
    }


def test_return_line_has_negative_quantity_and_amount_and_is_flagged(spark):
    out = sales_lines_of(spark, [line(quantity="-2", unit_price="19.99")]).first()

    assert (out["quantity"], out["amount"], out["is_return"]) == (-2, Decimal("-39.98"), True)


def test_amount_is_quantity_times_price_rounded_half_up_to_the_cent_in_decimal(spark):
    cases = {
        "1": ("3", "0.3333", "1.00"),  # 0.9999
        "2": ("3", "0.3350", "1.01"),  # 1.0050: half up (half-even would give 1.00)
        "3": ("1", "0.1250", "0.13"),  # half-even would give 0.12
        "4": ("-1", "0.0050", "-0.01"),  # half away from zero for returns too
        "5": ("7", "0.0001", "0.00"),
        "6": ("1000", "12345678901.2345", "12345678901234.50"),  # beyond double's exact digits
    }
    rows = [line(line_number=n, quantity=q, unit_price=p) for n, (q, p, _) in cases.items()]
    out = sales_lines_of(spark, rows).select("line_number", "amount").collect()

    assert {r["line_number"]: r["amount"] for r in out} == {
        int(n): Decimal(a) for n, (_, _, a) in cases.items()
    }


def test_an_amount_too_large_for_decimal_18_2_is_rejected_not_a_job_failure(spark):
    classified = classify(spark, [line(quantity="2000000000", unit_price="99999999999999.0000")])

    assert reasons_by_line(classified) == {1: ["amount_out_of_range"]}


def test_latest_version_of_an_order_line_wins_before_rules_apply(spark):
    classified = classify(
        spark,
        [
            line(updated_at="2026-11-01T09:00:00Z", quantity="5"),
            line(updated_at="2026-11-01T10:00:00Z", quantity="3"),
            line(updated_at="2026-11-01T10:00:00Z", quantity="3"),  # exact copy
        ],
    )
    kept = accepted_rows(classified).collect()

    assert [r["quantity"] for r in kept] == [3]
    assert classified.filter("_dup").count() == 2


def test_a_lines_business_date_is_its_own_time_in_the_pipelines_zone_not_the_partitions(spark):
    lines = spark.createDataFrame(
        [("A", dt.datetime(2026, 11, 1, 23, 30)), ("B", dt.datetime(2026, 10, 28, 12, 0)), ("C", None)],
        "order_id string, ordered_at timestamp",
    ).withColumn("_reasons", F.array().cast("array<string>"))
    dated = lines.transform(with_business_date("ordered_at", "Europe/Paris"))
    rows = {r["order_id"]: (r["business_date"], r["_reasons"]) for r in dated.collect()}
    assert rows == {
        "A": (dt.date(2026, 11, 2), []),  # 23:30 UTC is past midnight in Paris
        "B": (dt.date(2026, 10, 28), []),
        "C": (None, ["missing_business_date"]),
    }


def test_source_version_orders_timestamps_and_falls_back_to_the_partition_date(spark):
    lines = spark.createDataFrame(
        [(dt.datetime(2026, 11, 1, 0, 0, 0, 1), 7)], "updated_at timestamp, revision int"
    )
    by_time = lines.transform(with_source_version("updated_at", DAY)).first()["source_version"]
    by_revision = lines.transform(with_source_version("revision", DAY)).first()["source_version"]
    by_partition = lines.transform(with_source_version(None, dt.date(2026, 11, 2))).first()["source_version"]
    assert (by_time, by_revision, by_partition) == (1_793_491_200_000_001, 7, 1_793_577_600_000_000)


def test_customer_key_is_the_hmac_of_the_normalised_email_never_the_email_and_null_for_guests(spark):
    out = (
        sales_lines_of(
            spark,
            [
                line(line_number="1", customer_email="Bob@Example.com"),
                line(line_number="2", customer_email=" bob@example.COM "),
                line(line_number="3", customer_email="   "),
            ],
        )
        .select("line_number", "customer_key")
        .collect()
    )
    keys = {r["line_number"]: r["customer_key"] for r in out}

    assert keys == {1: py_key("bob@example.com"), 2: py_key("bob@example.com"), 3: None}
    assert "example" not in keys[1]
    assert "customer_email" not in SALES_LINES_SCHEMA.fieldNames()


def test_customers_take_the_country_of_the_latest_order_ties_to_the_smallest_with_its_time(spark):
    lines = [
        line(
            order_id="A1", customer_email="a@x.io", customer_country="DE", ordered_at="2026-11-01T08:00:00Z"
        ),
        line(
            order_id="A2", customer_email="a@x.io", customer_country="FR", ordered_at="2026-11-01T09:00:00Z"
        ),
        line(
            order_id="A3", customer_email="a@x.io", customer_country=None, ordered_at="2026-11-01T10:00:00Z"
        ),
        line(
            order_id="B1", customer_email="b@x.io", customer_country="IT", ordered_at="2026-11-01T09:00:00Z"
        ),
        line(
            order_id="B2", customer_email="b@x.io", customer_country="AT", ordered_at="2026-11-01T09:00:00Z"
        ),
        line(order_id="G1", customer_email=None, customer_country="ES"),
        line(order_id="C1", customer_email="c@x.io", customer_country=None),
    ]
    accepted = accepted_rows(classify(spark, lines)).transform(with_customer_key(KEY))
    nine = dt.datetime(2026, 11, 1, 9)  # the session's zone is UTC
    expected = spark.createDataFrame(
        [
            (py_key("a@x.io"), "FR", nine, None),
            (py_key("b@x.io"), "AT", nine, None),
            (py_key("c@x.io"), None, None, None),
        ],
        CUSTOMERS_SCHEMA,
    )

    assert_df_equality(build_customers(accepted), expected, ignore_nullable=True, ignore_row_order=True)


def test_customers_carry_the_encrypted_e_mail_of_their_latest_order_as_staged(spark):
    """The job holds no Fernet key: the token passes through untouched (the loader keeps the first)."""
    spec = {**LINE_SPEC, "columns": {**LINE_SPEC["columns"], "customer_email_encrypted": {"pii": True}}}
    lines = [
        line(order_id="A1", customer_email="a@x.io", customer_email_encrypted="tok-a-early"),
        line(order_id="A2", customer_email="a@x.io", customer_email_encrypted="tok-a-late",
             ordered_at="2026-11-01T11:00:00Z"),
        line(order_id="A3", customer_email="a@x.io", customer_email_encrypted=None,
             ordered_at="2026-11-01T12:00:00Z"),
        line(order_id="B1", customer_email="b@x.io", customer_email_encrypted=None),
        line(order_id="G1", customer_email=None, customer_email_encrypted="tok-guest"),
    ]  # fmt: skip
    product_rows = build_products(prepare_products(staged(spark, PRODUCTS, PRODUCT_SPEC), PRODUCT_SPEC))
    store_rows = build_stores(prepare_stores(staged(spark, STORES, STORE_SPEC), STORE_SPEC))
    prepared = prepare_order_lines(staged(spark, lines, spec), spec)
    accepted = accepted_rows(classify_order_lines(prepared, product_rows, store_rows, "EUR")).transform(
        with_customer_key(KEY)
    )

    tokens = {r["customer_key"]: r["email_encrypted"] for r in build_customers(accepted).collect()}
    assert tokens == {py_key("a@x.io"): "tok-a-late", py_key("b@x.io"): None}


def test_the_customer_key_source_is_masked_in_quarantine_even_when_not_declared_pii(spark):
    columns = {name: {k: v for k, v in c.items() if k != "pii"} for name, c in LINE_SPEC["columns"].items()}
    spec = {**LINE_SPEC, "columns": columns}
    emails = spark.createDataFrame([(" Ann@Example.com ",)], "customer_email string")

    mask = quarantine_masks(spec, KEY, "customer_email")["customer_email"]

    assert emails.select(mask(emails["customer_email"])).first()[0] == py_key("ann@example.com")
    assert "customer_email" not in quarantine_masks(spec, KEY)


def test_an_encrypted_column_shows_as_a_fixed_mark_in_quarantine_so_a_re_extraction_keeps_the_record(spark):
    spec = {**LINE_SPEC, "encrypted": ["customer_email_encrypted"]}
    tokens = spark.createDataFrame([("gAAAAA-token-one",), ("gAAAAA-token-two",), (None,)], "t string")

    mask = quarantine_masks(spec, KEY, "customer_email")["customer_email_encrypted"]

    assert [r[0] for r in tokens.select(mask(tokens["t"])).collect()] == [
        ENCRYPTED_MARK,
        ENCRYPTED_MARK,
        None,
    ]


def test_quarantine_unions_the_three_datasets_with_readable_messages_and_no_email(spark):
    products = [*PRODUCTS, {"sku": "P3", "name": " ", "list_price": "cheap"}]
    stores = [*STORES, {"store_code": None, "name": "Ghost"}]
    product_prep = prepare_products(staged(spark, products, PRODUCT_SPEC), PRODUCT_SPEC)
    store_prep = prepare_stores(staged(spark, stores, STORE_SPEC), STORE_SPEC)
    bad_line = line(quantity="x", sku="NOPE", customer_email=" Ann@Example.com ")
    prepared = prepare_order_lines(staged(spark, [bad_line], LINE_SPEC), LINE_SPEC)
    classified = classify_order_lines(prepared, build_products(product_prep), build_stores(store_prep), "EUR")

    masks = {"order_lines": quarantine_masks(LINE_SPEC, KEY, "customer_email")}

    out = {r["dataset"]: r for r in build_quarantine(classified, product_prep, store_prep, masks).collect()}

    assert sorted(out) == ["order_lines", "products", "stores"]
    assert out["order_lines"]["reason_code"] == "invalid_quantity"
    assert out["order_lines"]["message"] == "invalid_quantity: quantity='x'; unknown_product: sku='NOPE'"
    assert out["products"]["message"] == "missing_name: name=' '; invalid_list_price: list_price='cheap'"
    assert out["stores"]["message"] == "missing_store_code: store_code=null"
    # E-mails never leave staging: the quarantined record carries the customer's pseudonym instead.
    assert json.loads(out["order_lines"]["raw_record"]) == {
        **bad_line,
        "customer_email": py_key("ann@example.com"),
    }
    assert json.loads(out["stores"]["raw_record"]) == {
        "store_code": None,
        "name": "Ghost",
        "city": None,
        "region": None,
        "country": None,
    }


NO_CODES = {"filtered": {}, "warnings": {}}


def test_run_job_writes_every_output_and_a_result_that_conserves_rows(spark, tmp_path):
    spec = every_output_spec(tmp_path)

    result = run_job(spark, spec, pseudonym_key=KEY)

    expected = {
        "datasets": {
            "order_lines": {
                **{"rows_in": 7, "rejected": 2, "duplicates": 3, "rows_out": 2, **NO_CODES},
                "rule_failures": {"invalid_unit_price": 1, "unknown_product": 1},  # the copy not again
            },
            "products": {
                **{"rows_in": 4, "rejected": 1, "duplicates": 1, "rows_out": 2, **NO_CODES},
                "rule_failures": {"missing_name": 1},
            },
            "stores": {
                "rows_in": 1,
                "rejected": 0,
                "duplicates": 0,
                "rows_out": 1,
                **NO_CODES,
                "rule_failures": {},
            },
        },
        "outputs": {
            "sales_lines": 2,
            "products": 2,
            "stores": 1,
            "customers": 1,
            "quarantine": 3,
        },
        # Which key made the pseudonyms, never the key (the loader refuses a partition under another one).
        "pseudonym_key_fingerprint": hmac.new(
            KEY, b"django-spark-etl pseudonym key fingerprint v1", hashlib.sha256
        ).hexdigest()[:16],
    }
    assert result == expected
    assert json.loads((tmp_path / "out" / "_result.json").read_text()) == expected

    # Read back as the loader does (pyarrow): names, order and types exactly as the contract says.
    tables = {name: pq.read_table(tmp_path / "out" / name) for name in job.CONTRACT.names}
    for output in job.CONTRACT.outputs:  # the Parquet types the loader (and tests/warehouse) expect
        written = [(f.name, f.type) for f in tables[output.name].schema]
        assert written == [(f.name, f.type) for f in contract.arrow_schema(output)], output.name
    assert sorted((r["line_number"], r["amount"]) for r in tables["sales_lines"].to_pylist()) == [
        (1, Decimal("3.00")),
        (2, Decimal("-2.00")),
    ]
    quarantined = tables["quarantine"].to_pylist()
    assert sorted(r["reason_code"] for r in quarantined) == [
        "invalid_unit_price",
        "missing_name",
        "unknown_product",
    ]
    assert not any("@" in r["raw_record"] for r in quarantined)


def test_main_without_the_pseudonym_key_fails_with_a_message_before_starting_spark(
    tmp_path, monkeypatch, capsys
):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(
        json.dumps({"pipeline": "p", "business_date": DAY, "pseudonym_key_env": "NO_SUCH_KEY_VAR"})
    )
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)

    assert job.main(["--spec", str(spec_path)]) == 2
    assert "NO_SUCH_KEY_VAR is not set" in capsys.readouterr().err


@pytest.mark.parametrize("key", [b"s3cret-key", "clé-ü".encode()])
def test_error_line_never_shows_the_key_or_its_hmac_pads(key):
    inner_pad = bytes(b ^ 0x36 for b in key.ljust(64, b"\x00"))
    exc = RuntimeError(
        f"plan: concat(X'{inner_pad.hex().upper()}', cast(m as binary)) key={key.decode()}\nmore"
    )

    text = job._one_line(exc, job.secret_fragments(key))

    assert inner_pad.hex() not in text.lower() and key.decode() not in text
    assert "\n" not in text and text.startswith("RuntimeError: plan:")


def test_transform_of_inline_frames_returns_the_declared_outputs_and_the_counts(spark):
    at = dt.datetime(2026, 11, 1, 9, 0, tzinfo=dt.UTC)
    lines = [
        line(order_id="O1", quantity="2", unit_price="1.50"),
        line(order_id="O1", quantity="2", unit_price="1.50"),  # exact duplicate
        line(order_id="O2", sku="NOPE", customer_email=None),  # unknown product
    ]
    spec = {
        "business_date": DAY,
        "reporting_currency": "EUR",
        "constraints": output_constraints(),
        "inputs": {"order_lines": LINE_SPEC, "products": PRODUCT_SPEC, "stores": STORE_SPEC},
    }
    frames = {
        "order_lines": staged(spark, lines, LINE_SPEC),
        "products": staged(spark, PRODUCTS, PRODUCT_SPEC),
        "stores": staged(spark, STORES, STORE_SPEC),
    }

    out = job.transform(frames, job.JobOptions.from_spec(spec, KEY))
    try:
        assert list(out.outputs) == list(job.CONTRACT.names)
        sale = ("O1", 1, dt.date(2026, 11, 1), at, "S1", "P1", py_key("ann@example.com"), 2)
        money = (Decimal("1.5000"), Decimal("3.00"), "EUR", False, "P1", "product", Decimal("3.00"), None)
        expected_lines = spark.createDataFrame(
            [(*sale, *money, int(at.timestamp()) * 1_000_000)], SALES_LINES_SCHEMA
        )
        assert_df_equality(out.outputs["sales_lines"], expected_lines, ignore_nullable=True)
        expected_stores = spark.createDataFrame([("S1", "Centre", "Lyon", "ARA", "FR")], job.STORES_SCHEMA)
        assert_df_equality(out.outputs["stores"], expected_stores, ignore_nullable=True)
        quarantined = out.outputs["quarantine"].select("dataset", "reason_code").collect()
        assert [tuple(r) for r in quarantined] == [("order_lines", "unknown_product")]
        assert out.datasets == {
            "order_lines": {
                **{"rows_in": 3, "rejected": 1, "duplicates": 1, "rows_out": 1, **NO_CODES},
                "rule_failures": {"unknown_product": 1},
            },
            "products": {
                "rows_in": 2,
                "rejected": 0,
                "duplicates": 0,
                "rows_out": 2,
                **NO_CODES,
                "rule_failures": {},
            },
            "stores": {
                "rows_in": 1,
                "rejected": 0,
                "duplicates": 0,
                "rows_out": 1,
                **NO_CODES,
                "rule_failures": {},
            },
        }
    finally:
        out.unpersist()
    assert not any(frame.is_cached for frame in out.cached)


TRICKY_EMAILS = [
    "plain@example.com",
    "  Mixed.Case@Example.COM ",
    "\ttab@x.org\r\n",
    "two  spaces@x.org",
    "\u00a0nbsp@x.org\u2003",
    "Zoë@Exämple.de",
    "İSTANBUL@x.tr",
    "ΟΔΟΣ@x.gr",
    "STRASSE@ß.de",
    "line\u2028sep@x.org",
    "\x1cinfo@x.org",
    "   ",
    None,
]


def test_extraction_pseudonyms_equal_the_customer_keys_the_job_made_from_clear_e_mails(spark):
    # Staging now holds pseudonyms made in Python at extraction; customers loaded before must keep their
    # keys, so the Python pseudonym must be the job's own customer key of the clear value, byte for byte.
    from connectors.records import pseudonym

    frame = spark.createDataFrame([(e,) for e in TRICKY_EMAILS], "email string")
    keys = frame.select(job.customer_key(KEY, clean_text(F.col("email"), collapse=True)).alias("k"))
    assert [row.k for row in keys.collect()] == [pseudonym(KEY, e) for e in TRICKY_EMAILS]
