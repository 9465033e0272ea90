"""The PostgreSQL COPY path against the portable ORM path: same warehouse, no needless writes."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.apps import apps
from django.db import connections

from etlcore.errors import USER_ERRORS
from tests.conftest import _postgres_or_skip
from warehouse.checks import warehouse_checksums
from warehouse.errors import LoadStrategyError, MissingDimensionError
from warehouse.loaders import partition_load
from warehouse.models import DimProduct, DimStore, FactSalesLine, QuarantinedRow

from .partitions import DAY, default_outputs, history_outputs, sale, without, write_outputs

pytestmark = pytest.mark.django_db(databases="__all__")

DAY2 = date(2026, 11, 2)
TRICKY_ORDER = 'O,"1"\nx'  # a comma, quotes and a newline: CSV quoting must carry them through COPY


def scenario() -> list[tuple[date, dict]]:
    """Loads that exercise every rule: new and changed dimensions, NULL versus empty text, stale rows,
    duplicate rejects, a re-run, and dates interleaved."""
    day1 = default_outputs(
        [
            sale(TRICKY_ORDER, 1, qty=3, price="0.3333"),
            sale("O2", 1, sku="P2", qty=-1, price="5.00", customer=None),
            sale("O3", 1, qty=1),
            # A postage line (no product), a return linked to its order, a line converted at 0.8571.
            sale("O3", 2, sku="POST", price="18.00", qty=1, line_type="postage"),
            sale("C3", 1, qty=-1, original="O3"),
            sale("O6", 1, price="10.05", currency="USD", rate="0.8571"),
        ]
    )
    day1["products"].append({"sku": "P3", "name": "", "category": "", "list_price": Decimal("0.00")})
    day1["stores"][0]["city"] = "Zürich"
    day1["quarantine"] = day1["quarantine"] * 3
    day2 = default_outputs([sale("O4", 1, day=DAY2), sale("O4", 2, sku="P3", store="S2", day=DAY2)])
    day2["products"].append({"sku": "P3", "name": "Pot", "category": None, "list_price": None})
    day2["stores"].append({"store_code": "S2", "name": "Lyon", "city": None, "region": "", "country": "FR"})
    day2["quarantine"][0] = {**day2["quarantine"][0], "record_fingerprint": "e" * 64, "message": "a;b\tc"}
    day1_again = default_outputs([sale(TRICKY_ORDER, 1, qty=4, price="0.3333"), sale("O5", 7)])
    day1_again["quarantine"] = []
    return [(DAY, day1), (DAY2, day2), (DAY, day1_again), (DAY2, day2)]


def history_scenario() -> list[tuple[date, dict]]:
    """Dimension history out of date order: a backfill between two loaded dates at another price (the
    later date keeps its price), a product missing from a snapshot, a region change, a backfill before a
    product's first version, a new product, and a corrected re-run that makes the history collapse again.
    A return on the third date links to the second date's purchase."""
    d0, d1, d2, d3, d4 = (date(2026, 10, 31) + timedelta(days=i) for i in range(5))
    d0_tea = history_outputs(d0)
    d0_tea["products"][1]["name"] = "Tea"
    d3_north = with_lines(
        history_outputs(d3, price="12.00", region="North"), sale("C1103", 1, "P2", -1, day=d3)
    )
    d4_new = with_lines(
        without(history_outputs(d4, region="North"), "P1"), sale("O1104", 3, sku="P3", day=d4)
    )
    d4_new["products"].append({"sku": "P3", "name": "Pot", "category": None, "list_price": None})
    return [
        (d1, history_outputs(d1, price="12.00")),
        (d3, d3_north),
        (d2, history_outputs(d2, price="9.99")),
        (d4, d4_new),
        (d0, d0_tea),
        (d2, history_outputs(d2, price="12.00")),
        (d3, d3_north),
    ]


def with_lines(outputs: dict, *lines: dict) -> dict:
    sales_lines = [*outputs["sales_lines"], *lines]
    return outputs | {"sales_lines": sales_lines}


def run(alias: str, tmp_path, loads, strategy: str = "auto") -> None:
    for i, (day, outputs) in enumerate(loads):
        partition_load(
            outputs=write_outputs(tmp_path / f"{alias}-{strategy}-{i}", outputs),
            pipeline="shop",
            business_date=day,
            run_id=None,
            using=alias,
            strategy=strategy,
        )


@pytest.mark.postgres
@pytest.mark.parametrize("strategy", ["copy", "portable"])
def test_postgres_load_leaves_the_same_warehouse_as_the_portable_load_on_sqlite(tmp_path, strategy):
    _postgres_or_skip()
    run("default", tmp_path, scenario(), "portable")
    run("postgres", tmp_path, scenario(), strategy)

    expected = warehouse_checksums(using="default", mode="natural")
    assert expected["warehouse_factsalesline"][0] == 4 and expected["warehouse_quarantinedrow"][0] == 1
    assert warehouse_checksums(using="postgres", mode="natural") == expected


@pytest.mark.postgres
@pytest.mark.parametrize("strategy", ["copy", "portable"])
@pytest.mark.parametrize("steps", [4, 7], ids=["backfilled", "corrected"])
def test_postgres_dimension_history_is_the_portable_history_on_sqlite(tmp_path, strategy, steps):
    _postgres_or_skip()
    loads = history_scenario()[:steps]
    run("default", tmp_path, loads, "portable")
    run("postgres", tmp_path, loads, strategy)

    expected = warehouse_checksums(using="default", mode="natural")
    p1 = DimProduct.objects.using("default").filter(sku="P1").values_list("valid_from", "list_price")
    assert [(d.day, str(price)) for d, price in p1] == {
        4: [(1, "12.00"), (2, "9.99"), (3, "12.00")],
        7: [(31, "9.99"), (1, "12.00")],
    }[steps]
    linked = FactSalesLine.objects.using("default").get(order_id="C1103")
    # d2, loaded after d3, holds the latest purchase: loading it revisits d3's return
    assert (linked.original_order_id, linked.linked_by_loader) == ("O1102", True)
    assert warehouse_checksums(using="postgres", mode="natural") == expected


@pytest.mark.postgres
def test_copy_load_keeps_text_exactly_null_apart_from_empty(tmp_path):
    _postgres_or_skip()
    day1, day2 = scenario()[:2]
    run("postgres", tmp_path / "1", [day1], "copy")
    assert FactSalesLine.objects.using("postgres").filter(order_id=TRICKY_ORDER).exists()
    p3 = DimProduct.objects.using("postgres").get(sku="P3")
    assert (p3.name, p3.category, p3.list_price) == ("", "", Decimal("0.00"))
    assert DimStore.objects.using("postgres").get(store_code="S1").city == "Zürich"
    assert QuarantinedRow.objects.using("postgres").get(business_date=DAY).occurrences == 3

    run("postgres", tmp_path / "2", [day2], "copy")
    # NULL against "" is a change of attributes: a new version, the first one kept as it was.
    first, p3 = DimProduct.objects.using("postgres").filter(sku="P3").order_by("valid_from")
    assert (first.name, first.category, first.list_price, first.valid_to) == ("", "", Decimal("0.00"), DAY2)
    assert (p3.name, p3.category, p3.list_price, p3.is_current) == ("Pot", None, None, True)
    s2 = DimStore.objects.using("postgres").get(store_code="S2")
    assert (s2.city, s2.region) == (None, "")


def _row_versions(alias: str) -> dict[str, list[tuple[str, str]]]:
    with connections[alias].cursor() as cursor:
        versions = {}
        for model in apps.get_app_config("warehouse").get_models():
            table = connections[alias].ops.quote_name(model._meta.db_table)
            cursor.execute(f"SELECT ctid::text, xmin::text FROM {table} ORDER BY 1")
            versions[model._meta.db_table] = cursor.fetchall()
        return versions


@pytest.mark.postgres
def test_copy_load_rerun_rewrites_no_row_and_locks_no_dimension_member(tmp_path):
    """Unchanged rows keep their physical version: no bloat from nightly re-runs, and no row lock that
    would make a concurrent load of another date wait."""
    _postgres_or_skip()
    loads = scenario()[:2]
    run("postgres", tmp_path / "a", loads, "copy")
    before = _row_versions("postgres")
    run("postgres", tmp_path / "b", loads[1:], "copy")
    assert _row_versions("postgres") == before


@pytest.mark.postgres
def test_copy_load_rerun_of_dates_with_history_rewrites_no_row(tmp_path):
    _postgres_or_skip()
    loads = history_scenario()
    run("postgres", tmp_path / "a", loads, "copy")
    before = _row_versions("postgres")
    latest = dict(loads)  # each date's last partition
    run("postgres", tmp_path / "b", sorted(latest.items(), reverse=True), "copy")
    assert _row_versions("postgres") == before


def test_loading_dates_again_in_another_order_leaves_identical_rows(db_alias, tmp_path):
    loads = scenario()
    run(db_alias, tmp_path / "a", loads)
    before = warehouse_checksums(using=db_alias)
    run(db_alias, tmp_path / "b", [loads[3], loads[2], loads[3], loads[2]])
    assert warehouse_checksums(using=db_alias) == before


def test_a_fact_naming_an_unknown_customer_fails_instead_of_losing_the_customer(db_alias, tmp_path):
    outputs = default_outputs([sale("O1", 1), sale("O2", 1, customer="d" * 64)])
    with pytest.raises(MissingDimensionError, match=f"no row for customer_key {'d' * 64}"):
        run(db_alias, tmp_path, [(DAY, outputs)])
    assert not FactSalesLine.objects.using(db_alias).exists()


def test_the_copy_path_refuses_a_database_other_than_postgres_with_a_user_error(tmp_path):
    with pytest.raises(LoadStrategyError, match="^the COPY load path needs PostgreSQL, not sqlite$") as exc:
        run("default", tmp_path, scenario()[:1], "copy")
    assert isinstance(exc.value, USER_ERRORS)  # a command shows it as one line, not a traceback
    assert not FactSalesLine.objects.using("default").exists()
