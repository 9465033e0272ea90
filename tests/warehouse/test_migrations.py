"""Migrations that change rows already loaded. 0003 (dimension history): every store and product becomes one
open version with its own id, starting on the first date a fact references it. 0004: existing links of
returns to an earlier date's purchase are marked as the loader's."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.db import connections
from django.db.migrations.executor import MigrationExecutor

from warehouse.models import DimProduct, DimStore, FactSalesLine

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

BEFORE = [("warehouse", "0002_retail_semantics")]


def migrate(alias: str, targets) -> MigrationExecutor:
    executor = MigrationExecutor(connections[alias])
    executor.migrate(targets)
    return executor


def fill_before_history(alias: str, executor: MigrationExecutor) -> dict[str, int]:
    """Rows as the loader wrote them before 0003; the ids of the dimension members by natural key."""
    models = executor.loader.project_state(BEFORE).apps
    Date, Store, Product, Customer = (
        models.get_model("warehouse", name) for name in ("DimDate", "DimStore", "DimProduct", "DimCustomer")
    )
    Line, Daily = (
        models.get_model("warehouse", "FactSalesLine"),
        models.get_model("warehouse", "FactDailySales"),
    )
    dates = {}
    for day in (date(2026, 11, 3), date(2026, 11, 1)):
        dates[day] = Date.objects.using(alias).create(
            date_key=day.year * 10_000 + day.month * 100 + day.day,
            date=day,
            year=day.year,
            quarter=4,
            month=day.month,
            day=day.day,
            day_of_week=day.isoweekday(),
            is_weekend=day.isoweekday() >= 6,
        )
    s1 = Store.objects.using(alias).create(store_code="S1", name="Paris")
    sold = Product.objects.using(alias).create(sku="P1", name="Mug", list_price=Decimal("9.99"))
    daily_only = Product.objects.using(alias).create(sku="P2", name="Tea")
    unsold = Product.objects.using(alias).create(sku="P3", name="Pot")
    customer = Customer.objects.using(alias).create(customer_key="c" * 64)
    for order, day in (("O3", date(2026, 11, 3)), ("O1", date(2026, 11, 1))):
        Line.objects.using(alias).create(
            order_id=order,
            line_number=1,
            date=dates[day],
            store=s1,
            product=sold,
            customer=customer,
            ordered_at=datetime(day.year, day.month, day.day, 10, tzinfo=UTC),
            quantity=1,
            unit_price=Decimal("9.99"),
            amount=Decimal("9.99"),
            currency="EUR",
            stock_code="P1",
            amount_reporting=Decimal("9.99"),
        )
    Daily.objects.using(alias).create(
        date=dates[date(2026, 11, 3)],
        store=s1,
        product=daily_only,
        quantity=1,
        revenue=Decimal("1.00"),
        line_count=1,
        order_count=1,
    )
    return {"S1": s1.pk, "P1": sold.pk, "P2": daily_only.pk, "P3": unsold.pk}


def test_each_member_becomes_one_open_version_from_its_first_fact_with_its_id(db_alias):
    latest = MigrationExecutor(connections[db_alias]).loader.graph.leaf_nodes("warehouse")
    executor = migrate(db_alias, BEFORE)
    try:
        ids = fill_before_history(db_alias, executor)
    finally:
        migrate(db_alias, latest)

    stores = DimStore.objects.using(db_alias).values_list(
        "pk", "store_code", "valid_from", "valid_to", "is_current"
    )
    products = DimProduct.objects.using(db_alias).values_list(
        "pk", "sku", "valid_from", "valid_to", "is_current"
    )
    assert list(stores) == [(ids["S1"], "S1", date(2026, 11, 1), None, True)]
    assert list(products) == [
        (ids["P1"], "P1", date(2026, 11, 1), None, True),
        (ids["P2"], "P2", date(2026, 11, 3), None, True),
        (ids["P3"], "P3", date(1900, 1, 1), None, True),
    ]


def test_links_to_an_earlier_dates_purchase_are_marked_as_the_loaders(db_alias):
    latest = MigrationExecutor(connections[db_alias]).loader.graph.leaf_nodes("warehouse")
    executor = migrate(db_alias, BEFORE)
    try:
        fill_before_history(db_alias, executor)
        Line = executor.loader.project_state(BEFORE).apps.get_model("warehouse", "FactSalesLine")
        purchase_d3 = Line.objects.using(db_alias).get(order_id="O3")
        returns = (
            ("C-earlier", "O1", "P1"),
            ("C-same-day", "O3", "P1"),
            ("C-named", "O-elsewhere", "P1"),
            ("C-other-item", "O1", "P2"),
        )
        for order, original, stock_code in returns:
            purchase_d3.pk = None
            purchase_d3.order_id, purchase_d3.original_order_id = order, original
            purchase_d3.quantity, purchase_d3.is_return, purchase_d3.stock_code = -1, True, stock_code
            purchase_d3.save(using=db_alias)
    finally:
        migrate(db_alias, latest)

    loaded = FactSalesLine.objects.using(db_alias).filter(is_return=True)
    marked = loaded.values_list("order_id", "linked_by_loader")
    assert dict(marked) == {"C-earlier": True, "C-same-day": False, "C-named": False, "C-other-item": False}
