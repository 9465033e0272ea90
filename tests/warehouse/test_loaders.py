from __future__ import annotations

from decimal import Decimal

import pytest

from etlcore.models import PipelineRun
from warehouse.checks import warehouse_checksums
from warehouse.errors import MissingDimensionError
from warehouse.loaders import partition_load
from warehouse.models import DimDate, DimProduct, FactDailySales, FactSalesLine, QuarantinedRow

from .partitions import DAY, default_outputs, sale, write_outputs

pytestmark = pytest.mark.django_db(databases="__all__")


def make_run(alias: str) -> int:
    from django.utils import timezone

    return (
        PipelineRun.objects.using(alias).create(pipeline="shop", command="load", started_at=timezone.now()).pk
    )


def load(alias, tmp_path, outputs, run_id, name="p"):
    return partition_load(
        outputs=write_outputs(tmp_path / name, outputs),
        pipeline="shop",
        business_date=DAY,
        run_id=run_id,
        using=alias,
    )


def test_load_writes_star_schema_rows_with_exact_money(db_alias, tmp_path):
    lines = [
        sale("O1", 1, qty=3, price="0.3333"),
        sale("O1", 2, sku="P2", qty=-1, price="5.00", customer=None),
    ]
    result = load(db_alias, tmp_path, default_outputs(lines), make_run(db_alias))

    assert result.rows_loaded["sales_lines"] == 2
    first = FactSalesLine.objects.using(db_alias).get(order_id="O1", line_number=1)
    assert first.amount == Decimal("1.00") and first.unit_price == Decimal("0.3333")
    assert first.product.sku == "P1" and first.store.store_code == "S1" and first.date_id == 20261101
    ret = FactSalesLine.objects.using(db_alias).get(order_id="O1", line_number=2)
    assert ret.is_return and ret.amount == Decimal("-5.00") and ret.customer_id is None
    assert DimDate.objects.using(db_alias).get(date_key=20261101).is_weekend  # 2026-11-01 is a Sunday
    assert FactDailySales.objects.using(db_alias).count() == 2
    assert QuarantinedRow.objects.using(db_alias).get().reason_code == "unknown_product"


def test_loading_the_same_partition_twice_leaves_identical_rows(db_alias, tmp_path):
    outputs = default_outputs([sale("O1", 1), sale("O2", 1, sku="P2")])
    load(db_alias, tmp_path, outputs, make_run(db_alias), "first")
    before = warehouse_checksums(using=db_alias)
    load(db_alias, tmp_path, outputs, make_run(db_alias), "second")
    assert warehouse_checksums(using=db_alias) == before


def test_reload_removes_rows_the_new_partition_no_longer_holds(db_alias, tmp_path):
    load(
        db_alias, tmp_path, default_outputs([sale("O1", 1), sale("O2", 1, sku="P2")]), make_run(db_alias), "a"
    )
    outputs = default_outputs([sale("O1", 1, qty=5)])
    outputs["quarantine"] = []
    result = load(db_alias, tmp_path, outputs, make_run(db_alias), "b")

    assert list(FactSalesLine.objects.using(db_alias).values_list("order_id", "quantity")) == [("O1", 5)]
    assert FactDailySales.objects.using(db_alias).get().quantity == 5
    assert not QuarantinedRow.objects.using(db_alias).exists()
    assert result.rows_deleted == {"sales_lines": 1, "quarantine": 1}


def test_surrogate_keys_stay_stable_when_dimension_attributes_change(db_alias, tmp_path):
    outputs = default_outputs([sale("O1", 1)])
    load(db_alias, tmp_path, outputs, make_run(db_alias), "a")
    product_id = DimProduct.objects.using(db_alias).get(sku="P1").pk
    outputs["products"][0]["name"] = "Mug (large)"
    load(db_alias, tmp_path, outputs, make_run(db_alias), "b")
    product = DimProduct.objects.using(db_alias).get(sku="P1")
    assert (product.pk, product.name) == (product_id, "Mug (large)")
    assert FactSalesLine.objects.using(db_alias).get().product_id == product_id


def test_quarantine_keeps_the_first_run_and_counts_identical_records(db_alias, tmp_path):
    outputs = default_outputs([sale("O1", 1)])
    outputs["quarantine"] = outputs["quarantine"] * 2  # an exact duplicate of a bad row
    first_run = make_run(db_alias)
    load(db_alias, tmp_path, outputs, first_run, "a")
    load(db_alias, tmp_path, outputs, make_run(db_alias), "b")
    row = QuarantinedRow.objects.using(db_alias).get()
    assert (row.occurrences, row.first_run_id, row.raw_record) == (2, first_run, '{"sku":"X9"}')


def test_a_failing_load_leaves_the_warehouse_as_before(db_alias, tmp_path):
    load(db_alias, tmp_path, default_outputs([sale("O1", 1)]), make_run(db_alias), "a")
    before = warehouse_checksums(using=db_alias)
    broken = default_outputs([sale("O2", 1), sale("O3", 1, store="S-UNKNOWN")])
    with pytest.raises(MissingDimensionError, match="no row for store_code S-UNKNOWN"):
        load(db_alias, tmp_path, broken, make_run(db_alias), "b")
    assert warehouse_checksums(using=db_alias) == before
