"""A row the warehouse would refuse is quarantined by the transform, and the date loads: through the pipeline
(extract, job spec with the models' limits, the sales job in the shared Spark session, load) on SQLite,
which enforces no length, then the same transformed partition through PostgreSQL's COPY path, which
would fail the whole date on one over-long value. Both warehouses end the same."""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.core.management import call_command

from spark_jobs.sales_daily import run_job
from tests.conftest import _postgres_or_skip
from tests.pipelines import dataset, pipeline_write
from warehouse.checks import warehouse_checksums
from warehouse.loading.specs import INTEGER_RANGES
from warehouse.models import DimProduct, FactSalesLine, QuarantinedRow

pytestmark = [pytest.mark.django_db(databases="__all__"), pytest.mark.postgres]

DAY = "2026-11-01"
NAME_MAX = DimProduct._meta.get_field("name").max_length
ORDER_ID_MAX = FactSalesLine._meta.get_field("order_id").max_length
_, QUANTITY_MAX = INTEGER_RANGES[FactSalesLine._meta.get_field("quantity").get_internal_type()]


def limits_datasets(data: Path) -> dict:
    """The three file exports the sales job needs, with the columns the warehouse limits bite on."""
    return {
        "order_lines": dataset(
            f"{data}/lines.csv",
            key=["order_id", "line_number"],
            order_id={"required": True},
            line_number={"type": "int", "required": True},
            ordered_at={"type": "timestamp", "required": True},
            store_code={"required": True},
            customer_email={"pii": True},
            customer_country={"type": "string"},
            sku={"required": True},
            quantity={"type": "long", "required": True},  # wider than the warehouse's integer column
            unit_price={"type": "decimal(18,4)", "required": True},
            currency={"required": True},
        ),
        "products": dataset(
            f"{data}/products.csv",
            sku={"required": True},
            name={"required": True},
            category={"type": "string"},
            list_price={"type": "decimal(18,2)"},
        ),
        "stores": dataset(
            f"{data}/stores.csv",
            store_code={"required": True},
            name={"required": True},
            city={"type": "string"},
            region={"type": "string"},
            country={"type": "string"},
        ),
    }


LINE_HEADER = ",".join(
    ("order_id", "line_number", "ordered_at", "store_code", "customer_email", "customer_country", "sku")
    + ("quantity", "unit_price", "currency")
)
LONG_ORDER_ID = "O" * (ORDER_ID_MAX + 1)
SMILES = "😀" * NAME_MAX  # NAME_MAX characters (4 bytes each in UTF-8, 2 UTF-16 units)


def lines_csv() -> str:
    rows = [
        ("O1", 2, "1.50"),
        ("O2", QUANTITY_MAX + 1, "1.00"),  # out of the warehouse's range
        ("O3", 1, "4.00"),  # the product whose name is NAME_MAX emoji
        (LONG_ORDER_ID, 1, "1.00"),
    ]
    sku = {"O3": "P3"}
    return "\n".join(
        [LINE_HEADER]
        + [
            f"{order},1,{DAY}T09:00:00Z,S1,ann@example.com,FR,{sku.get(order, 'P1')},{qty},{price},EUR"
            for order, qty, price in rows
        ]
    )


@pytest.fixture
def limits_pipeline(pipeline_dir, tmp_path, monkeypatch, spark):
    data = tmp_path / "data"
    data.mkdir()
    (data / "lines.csv").write_text(lines_csv() + "\n", encoding="utf-8")
    products = ["sku,name,category,list_price", "P1,Mug,Kitchen,9.90", f"P2,{'n' * (NAME_MAX + 100)},,1.00"]
    (data / "products.csv").write_text("\n".join([*products, f"P3,{SMILES},,2.00"]) + "\n", encoding="utf-8")
    (data / "stores.csv").write_text(
        "store_code,name,city,region,country\nS1,Centre,Lyon,,FR\n", encoding="utf-8"
    )
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "limits-test-key")

    def submit_in_session(config, *, spec, work_dir, log_path, timeout=None, engine="spark"):
        # The job's entry point in the shared session, on the spec the transform step built.
        run_job(spark, spec)
        return SimpleNamespace(facts=lambda: {})

    monkeypatch.setattr("etlcore.services.transform.job_submit", submit_in_session)

    def write(database: str) -> None:
        pipeline_write(
            pipeline_dir,
            "limits",
            datasets=limits_datasets(data),
            spark={"reporting_currency": "EUR"},
            database=database,
            staging=tmp_path / "staging",
        )

    return write


def warehouse_rows(alias: str) -> dict:
    return {
        "lines": sorted(FactSalesLine.objects.using(alias).values_list("order_id", "quantity")),
        "products": sorted(DimProduct.objects.using(alias).values_list("sku", "name")),
        "quarantine": sorted(QuarantinedRow.objects.using(alias).values_list("dataset", "reason_code")),
    }


def test_rows_the_warehouse_would_refuse_are_quarantined_and_both_load_paths_load_the_same_rest(
    limits_pipeline,
):
    _postgres_or_skip()
    limits_pipeline("default")
    call_command("run_pipeline", pipeline="limits", date=DAY, stdout=StringIO())
    limits_pipeline("postgres")  # the same transformed partition, loaded by COPY
    call_command("load", pipeline="limits", date=DAY, stdout=StringIO())

    expected = {
        "lines": [("O1", 2), ("O3", 1)],
        "products": [("P1", "Mug"), ("P3", SMILES)],
        "quarantine": [
            ("order_lines", "out_of_range_quantity"),
            ("order_lines", "too_long_order_id"),
            ("products", "too_long_name"),
        ],
    }
    assert warehouse_rows("default") == expected
    assert warehouse_rows("postgres") == expected
    message = QuarantinedRow.objects.using("postgres").get(reason_code="too_long_order_id").message
    assert message.endswith(
        f"(order_id is {ORDER_ID_MAX + 1} characters, the warehouse holds at most {ORDER_ID_MAX}: "
        "warehouse column factsalesline.order_id)"
    )
    tables = (
        "warehouse_factsalesline",
        "warehouse_dimproduct",
        "warehouse_dimstore",
        "warehouse_dimcustomer",
    )
    postgres = warehouse_checksums(using="postgres", mode="natural")
    default = warehouse_checksums(using="default", mode="natural")
    assert {t: postgres[t] for t in tables} == {t: default[t] for t in tables}
