"""The warehouse's limits as implicit rules of the sales job: a row the warehouse would refuse is quarantined
in the validation pass, with a reason naming the column and the limit, and the rest of the date loads."""

from __future__ import annotations

import json
from decimal import Decimal

import pyarrow.parquet as pq
import pytest

from spark_jobs import sales_daily as job
from spark_jobs.retail import LineType, RetailOptions
from tests.spark_jobs.job_fixtures import (
    KEY,
    LINE_SPEC,
    PRODUCT_SPEC,
    TOO_LONG_NAME,
    line,
    warehouse_limits_spec,
)
from tests.spark_jobs.test_sales_daily import staged
from warehouse.loading.specs import INTEGER_RANGES, output_constraints
from warehouse.models import DimCustomer, DimProduct, DimStore, FactSalesLine

CONSTRAINTS = output_constraints()
NAME_MAX = DimProduct._meta.get_field("name").max_length
ORDER_ID_MAX = FactSalesLine._meta.get_field("order_id").max_length
CURRENCY_MAX = FactSalesLine._meta.get_field("currency").max_length
COUNTRY_MAX = DimCustomer._meta.get_field("country").max_length
STORE_CODE_MAX = DimStore._meta.get_field("store_code").max_length
INT_MIN, INT_MAX = INTEGER_RANGES[FactSalesLine._meta.get_field("quantity").get_internal_type()]
PRICE = FactSalesLine._meta.get_field("unit_price")
LIST_PRICE = DimProduct._meta.get_field("list_price")
# Output columns no staged column fills as it is: the job computes them, and checks them otherwise.
COMPUTED = {
    "sales_lines": {
        "customer_key",  # an HMAC in hex: always 64 characters
        "amount",  # amount_out_of_range, at the output type (_check_constraints holds it to the model's)
        "amount_reporting",  # the same
        "is_return",  # never null (mark_returns)
        "line_type",  # "product" or a configured type (_check_constraints)
        "source_version",  # a long by construction (with_source_version), the model's BigIntegerField
    },
    "customers": {"customer_key", "country_seen_at"},  # an HMAC; an order's time, as its ordered_at
}


def rules_by_code(rules) -> dict[str, dict]:
    return {r["code"]: r for r in rules}


def with_implicit(spec: dict, dataset: str, options: RetailOptions | None = None) -> dict:
    """The input spec as run_job sees it: its declared rules, then the implicit ones."""
    full = {"inputs": {dataset: spec}, "constraints": CONSTRAINTS}
    return job.inputs_with_implicit_rules(full, options or RetailOptions())[dataset]


# --- the rules, from the real models (no Spark) -------------------------------------------------------


def test_order_line_rules_are_the_limits_of_the_warehouse_columns_they_fill():
    rules = rules_by_code(job.implicit_rules("order_lines", LINE_SPEC, CONSTRAINTS, RetailOptions()))

    assert {c: (r["check"], r.get("max_length")) for c, r in rules.items()} == {
        "too_long_order_id": ("max_length", ORDER_ID_MAX),
        "too_long_store_code": ("max_length", STORE_CODE_MAX),
        "too_long_sku": ("max_length", FactSalesLine._meta.get_field("stock_code").max_length),
        "too_long_currency": ("max_length", CURRENCY_MAX),
        "too_long_customer_country": ("max_length", COUNTRY_MAX),
        # Computed: only its quarantine note comes from here.
        "amount_out_of_range": ("computed", None),
    }  # int quantity and decimal(18,4) price always fit: no range or digits rule; required ones declared
    assert rules["too_long_order_id"]["message"] == (
        f"the warehouse holds at most {ORDER_ID_MAX}: warehouse column factsalesline.order_id"
    )
    assert rules["too_long_currency"]["as_loaded"] == "upper"  # the job upper-cases it
    assert rules["amount_out_of_range"]["message"] == (
        "the amount does not fit decimal(18,2): warehouse column factsalesline.amount"
    )


def test_a_wider_declared_type_or_an_optional_column_gets_a_range_digits_or_missing_rule():
    columns = {
        **LINE_SPEC["columns"],
        "quantity": {"type": "long", "required": True},
        "unit_price": {"type": "decimal(20,4)", "required": True},
        "ordered_at": {"type": "timestamp"},  # not declared required: the fact column is NOT NULL
    }
    rules = rules_by_code(
        job.implicit_rules("order_lines", {"columns": columns}, CONSTRAINTS, RetailOptions())
    )

    assert (rules["out_of_range_quantity"]["min"], rules["out_of_range_quantity"]["max"]) == (
        str(INT_MIN),
        str(INT_MAX),
    )
    digits = rules["too_many_digits_unit_price"]
    assert (digits["max_digits"], digits["decimal_places"]) == (PRICE.max_digits, PRICE.decimal_places)
    assert digits["message"] == (
        f"the warehouse holds at most {PRICE.max_digits - PRICE.decimal_places} digits before the point, "
        f"rounded to {PRICE.decimal_places} places (decimal({PRICE.max_digits},{PRICE.decimal_places})): "
        "warehouse column factsalesline.unit_price"
    )
    assert rules["missing_ordered_at"]["check"] == "required"


def test_the_derived_product_name_is_checked_for_length_but_may_be_empty():
    columns = {**LINE_SPEC["columns"], "product_name": {"type": "string"}}
    options = RetailOptions(products_from_lines=True, product_name_from="product_name")

    rules = rules_by_code(job.implicit_rules("order_lines", {"columns": columns}, CONSTRAINTS, options))

    assert rules["too_long_product_name"]["max_length"] == NAME_MAX
    assert "missing_product_name" not in rules  # a product without a name is named by its sku


def test_a_limit_comes_from_the_spec_constraints_not_from_the_job(monkeypatch):
    monkeypatch.setattr(DimProduct._meta.get_field("name"), "max_length", 12)

    rules = rules_by_code(job.implicit_rules("products", PRODUCT_SPEC, output_constraints(), RetailOptions()))

    assert rules["too_long_name"]["max_length"] == 12


def test_every_output_column_the_job_fills_from_a_staged_column_is_checked():
    options = RetailOptions(products_from_lines=True, stores_from_lines=True, store_country_from="store_code")
    filled: dict[str, set[str]] = {}
    for dataset in job.DATASETS:
        for fills in job.input_fills(dataset, options).values():
            for fill in fills:
                assert fill.column in CONSTRAINTS[fill.output], fill  # the job would refuse the spec
                filled.setdefault(fill.output, set()).add(fill.column)

    for output in ("sales_lines", "products", "stores", "customers"):
        unchecked = set(CONSTRAINTS[output]) - filled.get(output, set()) - COMPUTED.get(output, set())
        assert not unchecked, f"{output}: {sorted(unchecked)} get no implicit rule (declare a Fill)"


def test_a_declared_rule_with_an_implicit_rules_code_is_refused():
    spec = {**PRODUCT_SPEC, "rules": [{"code": "too_long_name", "check": "required", "column": "name"}]}

    with pytest.raises(ValueError, match=r"rule codes \['too_long_name'\] are the job's implicit rules"):
        with_implicit(spec, "products")


def test_the_job_refuses_a_spec_without_constraints_or_an_output_type_other_than_the_models():
    spec = {"constraints": CONSTRAINTS}
    job._check_constraints(spec, RetailOptions())

    with pytest.raises(ValueError, match="job spec has no constraints"):
        job._check_constraints({}, RetailOptions())
    narrower = json.loads(json.dumps(CONSTRAINTS))
    narrower["sales_lines"]["amount"]["max_digits"] = 12
    with pytest.raises(
        ValueError, match=r"amount as decimal\(18,2\), the warehouse column .*decimal\(12,2\)"
    ):
        job._check_constraints({"constraints": narrower}, RetailOptions())


def test_a_configured_line_type_or_currency_too_long_for_its_column_is_a_spec_error():
    long_type = "x" * (FactSalesLine._meta.get_field("line_type").max_length + 1)
    with pytest.raises(ValueError, match=r"line type 'x+' is 31 characters, the warehouse holds at most 30"):
        job._check_constraints(
            {"constraints": CONSTRAINTS}, RetailOptions(line_types=(LineType(long_type, ("P",)),))
        )
    with pytest.raises(ValueError, match=r"currency 'ßß' is 4 characters"):  # upper-cased: SSSS
        job._check_constraints({"constraints": CONSTRAINTS}, RetailOptions(currency="ßß"))


# --- the rules at work (Spark) ------------------------------------------------------------------------------


def reasons_of(prepared, key: str) -> dict:
    return {r[key]: r["_reasons"] for r in job.rejected_rows(prepared).collect()}


def test_numbers_the_warehouse_cannot_hold_are_rejected_after_the_jobs_rounding(spark):
    lines_spec = with_implicit(
        {
            **LINE_SPEC,
            "columns": {
                **LINE_SPEC["columns"],
                "quantity": {"type": "long", "required": True},
                "unit_price": {"type": "decimal(20,4)", "required": True},
            },
        },
        "order_lines",
    )
    whole = PRICE.max_digits - PRICE.decimal_places
    lines = [
        line(line_number="1", quantity=str(INT_MAX)),
        line(line_number="2", quantity=str(INT_MAX + 1)),
        line(line_number="3", quantity=str(INT_MIN - 1)),
        line(line_number="4", quantity="1", unit_price="9" * whole + ".9999"),
        line(line_number="5", quantity="1", unit_price="1" + "0" * whole),
    ]
    prepared = job.prepare_order_lines(staged(spark, lines, lines_spec), lines_spec)

    assert reasons_of(prepared, "line_number") == {
        2: ["out_of_range_quantity"],
        3: ["out_of_range_quantity"],
        5: ["too_many_digits_unit_price"],
    }

    products_spec = with_implicit(
        {**PRODUCT_SPEC, "columns": {**PRODUCT_SPEC["columns"], "list_price": {"type": "decimal(20,4)"}}},
        "products",
    )
    most = "9" * (LIST_PRICE.max_digits - LIST_PRICE.decimal_places)
    products = [
        {"sku": "P1", "name": "Mug", "list_price": f"{most}.994"},  # rounds to ...9.99: fits
        {"sku": "P2", "name": "Tea", "list_price": f"{most}.995"},  # rounds up to one more digit
    ]
    prepared = job.prepare_products(staged(spark, products, products_spec), products_spec)

    assert reasons_of(prepared, "sku") == {"P2": ["too_many_digits_list_price"]}
    assert job.build_products(prepared).first()["list_price"] == Decimal(f"{most}.99")


def test_run_job_quarantines_what_the_warehouse_would_refuse_loads_the_rest_and_conserves_rows(
    spark, tmp_path
):
    spec = warehouse_limits_spec(tmp_path)

    result = job.run_job(spark, spec, pseudonym_key=KEY)

    no_codes = {"filtered": {}, "warnings": {}}
    line_failures = {
        "amount_out_of_range": 1,
        "invalid_quantity": 1,
        "order_id_shape": 1,
        "too_long_currency": 2,
        "too_long_customer_country": 1,
        "too_long_order_id": 1,  # the same line as order_id_shape
        "unsupported_currency": 2,  # the same lines as too_long_currency
    }
    assert result["datasets"] == {
        "order_lines": {
            **{"rows_in": 8, "rejected": 6, "duplicates": 0, "rows_out": 2, **no_codes},
            "rule_failures": line_failures,
        },
        "products": {
            **{"rows_in": 5, "rejected": 1, "duplicates": 0, "rows_out": 4, **no_codes},
            "rule_failures": {"too_long_name": 1},
        },
        "stores": {
            **{"rows_in": 2, "rejected": 1, "duplicates": 0, "rows_out": 1, **no_codes},
            "rule_failures": {"too_long_store_code": 1},
        },
    }
    out = tmp_path / "out"
    assert sorted(r["order_id"] for r in pq.read_table(out / "sales_lines").to_pylist()) == ["O1", "O8"]
    assert sorted(r["sku"] for r in pq.read_table(out / "products").to_pylist()) == ["P1", "P2", "P4", "P5"]
    quarantined = {
        (r["dataset"], r["record_fingerprint"][:8], r["reason_code"]): r["message"]
        for r in pq.read_table(out / "quarantine").to_pylist()
    }
    by_code = {code: message for (_, _, code), message in quarantined.items()}
    assert by_code["too_long_name"] == (
        f"too_long_name: name='{TOO_LONG_NAME}' (name is {NAME_MAX + 100} characters, the warehouse holds at "
        f"most {NAME_MAX}: warehouse column dimproduct.name)"
    )
    assert by_code["order_id_shape"] == (
        f"order_id_shape: order_id='{'X' * (ORDER_ID_MAX + 1)}'; too_long_order_id: order_id="
        f"'{'X' * (ORDER_ID_MAX + 1)}' (order_id is {ORDER_ID_MAX + 1} characters, the warehouse holds at "
        f"most {ORDER_ID_MAX}: warehouse column factsalesline.order_id)"
    )
    assert by_code["invalid_quantity"] == f"invalid_quantity: quantity='{INT_MAX + 1}'"
    currency = [m for m in quarantined.values() if m.startswith("too_long_currency")]
    currency_limit = f"the warehouse holds at most {CURRENCY_MAX}: warehouse column factsalesline.currency"
    assert sorted(currency) == [
        f"too_long_currency: currency='EURO' (currency is 4 characters, {currency_limit}); "
        "unsupported_currency: currency='EURO'",
        f"too_long_currency: currency='ßß' (currency is 4 characters, {currency_limit}); "
        "unsupported_currency: currency='ßß'",
    ]
    assert by_code["too_long_customer_country"].endswith(
        f"(customer_country is {COUNTRY_MAX + 1} characters, the warehouse holds at most {COUNTRY_MAX}: "
        "warehouse column dimcustomer.country)"
    )
    assert by_code["amount_out_of_range"] == (
        "amount_out_of_range: unit_price='99999999999999.0000' (the amount does not fit decimal(18,2): "
        "warehouse column factsalesline.amount)"
    )
    assert by_code["too_long_store_code"].startswith(
        f"too_long_store_code: store_code='{'S' * (STORE_CODE_MAX + 1)}'"
    )
    assert sorted(code for _, _, code in quarantined) == [
        "amount_out_of_range",
        "invalid_quantity",
        "order_id_shape",
        "too_long_currency",  # EURO
        "too_long_currency",  # ßß
        "too_long_customer_country",
        "too_long_name",
        "too_long_store_code",
    ]
