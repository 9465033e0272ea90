"""Dimension history (SCD type 2) of stores and products: the rules (`warehouse.loading.history`) on their
own, then through both load paths, which must end in the same versions whatever order the dates load in."""

from __future__ import annotations

import itertools
import random
from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.db import transaction

from tests.conftest import _postgres_or_skip
from warehouse.checks import warehouse_checksums
from warehouse.errors import MissingDimensionError
from warehouse.loaders import partition_load
from warehouse.loading.history import Version, observe
from warehouse.models import DimProduct, DimStore, FactDailySales, FactSalesLine

from .partitions import history_outputs, without, write_outputs

pytestmark = pytest.mark.django_db(databases="__all__")

D1, D2, D3 = date(2026, 11, 1), date(2026, 11, 2), date(2026, 11, 3)


# --- the rules, as a pure function --------------------------------------------------------------------------
def replay(observations: dict[date, str], order) -> list[tuple]:
    """One member's versions after observing its attribute on the given dates in `order`."""
    versions: list[Version] = []
    loaded: set[date] = set()
    ids = itertools.count(1)
    for day in order:
        loaded.add(day)
        later = [d for d in loaded if d > day]
        new = observe(
            versions, day=day, attributes=(observations[day],), next_loaded=min(later, default=None)
        )
        if new is not None:
            versions = [v if v.id is not None else Version(next(ids), *_range(v), v.attributes) for v in new]
    return [(v.valid_from, v.valid_to, v.attributes[0]) for v in versions]


def _range(v: Version) -> tuple:
    return v.valid_from, v.valid_to


def test_observing_the_attributes_a_version_already_holds_changes_nothing():
    version = Version(7, D1, None, ("Mug",))
    assert observe([version], day=D2, attributes=("Mug",), next_loaded=None) is None


def test_a_change_closes_the_version_and_opens_one_on_the_date():
    new = observe([Version(7, D1, None, ("Mug",))], day=D3, attributes=("Cup",), next_loaded=None)
    assert new == [Version(7, D1, D3, ("Mug",)), Version(None, D3, None, ("Cup",))]


def test_a_rerun_with_a_corrected_export_corrects_the_version_of_that_date_in_place():
    old = [Version(7, D1, D2, ("Mug",)), Version(8, D2, None, ("Cup",))]
    assert observe(old, day=D2, attributes=("Bowl",), next_loaded=None) == [
        Version(7, D1, D2, ("Mug",)),
        Version(8, D2, None, ("Bowl",)),
    ]
    # Corrected back to the previous version's attributes: the two become one, the older row stays.
    assert observe(old, day=D2, attributes=("Mug",), next_loaded=None) == [Version(7, D1, None, ("Mug",))]


def test_a_backfill_changes_its_date_up_to_the_next_loaded_date_only():
    """D1 and D3 were loaded with "Mug"; D2 arrives late with "Cup": D3 saw "Mug", so it keeps it."""
    new = observe([Version(7, D1, None, ("Mug",))], day=D2, attributes=("Cup",), next_loaded=D3)
    assert new == [
        Version(7, D1, D2, ("Mug",)),
        Version(None, D2, D3, ("Cup",)),
        Version(None, D3, None, ("Mug",)),
    ]


def test_a_backfill_before_the_first_version_reaches_it_or_joins_it():
    first = [Version(7, D3, None, ("Mug",))]
    assert observe(first, day=D1, attributes=("Cup",), next_loaded=D2) == [
        Version(None, D1, D3, ("Cup",)),
        Version(7, D3, None, ("Mug",)),
    ]
    # The same attributes: the version starts earlier and keeps its row, so its facts stay where they are.
    assert observe(first, day=D1, attributes=("Mug",), next_loaded=D3) == [Version(7, D1, None, ("Mug",))]


def test_a_backfill_equal_to_the_next_version_extends_that_version_back():
    old = [Version(7, D1, D3, ("Mug",)), Version(8, D3, None, ("Cup",))]
    assert observe(old, day=D2, attributes=("Cup",), next_loaded=D3) == [
        Version(7, D1, D2, ("Mug",)),
        Version(8, D2, None, ("Cup",)),
    ]


@pytest.mark.parametrize("values", ["AAAA", "ABAB", "AABB", "ABCA", "ABBA", "ABCD", "AAAB"])
def test_every_load_order_ends_in_the_versions_of_the_load_in_date_order(values):
    days = [D1 + timedelta(days=i) for i in range(len(values))]
    observations = dict(zip(days, values, strict=True))
    expected = replay(observations, days)
    for order in itertools.permutations(days):
        assert replay(observations, [*order, *order]) == expected, order


# --- through the loaders ------------------------------------------------------------------------------------
class Rollback(Exception):
    pass


def load(alias: str, tmp_path, loads, strategy: str = "auto") -> None:
    for day, outputs in loads:
        partition_load(
            outputs=write_outputs(
                tmp_path / f"{alias}-{strategy}-{day}-{len(list(tmp_path.iterdir()))}", outputs
            ),
            pipeline="shop",
            business_date=day,
            run_id=None,
            using=alias,
            strategy=strategy,
        )


def versions(alias: str) -> list[tuple]:
    products = DimProduct.objects.using(alias).values_list(
        "sku", "valid_from", "valid_to", "is_current", "name", "list_price"
    )
    stores = DimStore.objects.using(alias).values_list(
        "store_code", "valid_from", "valid_to", "is_current", "region"
    )
    return sorted(products) + sorted(stores)


def fact_versions(alias: str) -> list[tuple]:
    """Each fact with the attributes of the product and store versions it points to."""
    lines = FactSalesLine.objects.using(alias).values_list(
        "order_id", "line_number", "date__date", "product__sku", "product__list_price", "store__region"
    )
    daily = FactDailySales.objects.using(alias).values_list(
        "date__date", "product__sku", "product__list_price", "store__store_code", "store__region"
    )
    return sorted(lines) + sorted(daily)


def warehouse_after(alias: str, tmp_path, loads, strategy: str = "auto") -> tuple:
    """What the loads leave, from an empty warehouse, which is then put back."""
    try:
        with transaction.atomic(using=alias):
            load(alias, tmp_path, loads, strategy)
            state = (versions(alias), fact_versions(alias), warehouse_checksums(using=alias, mode="natural"))
            raise Rollback
    except Rollback:
        return state


def three_dates() -> dict[date, dict]:
    """P1 is on offer on D2 only (its price changes and changes back), S1's region changes on D3."""
    return {
        D1: history_outputs(D1, price="12.00", region="West"),
        D2: history_outputs(D2, price="9.99", region="West"),
        D3: history_outputs(D3, price="12.00", region="North"),
    }


def test_dates_loaded_in_any_order_end_in_the_same_versions_and_fact_references(db_alias, tmp_path):
    outputs = three_dates()
    in_order = warehouse_after(db_alias, tmp_path, [(d, outputs[d]) for d in (D1, D2, D3)])

    assert in_order[0] == [
        ("P1", D1, D2, False, "Mug", Decimal("12.00")),
        ("P1", D2, D3, False, "Mug", Decimal("9.99")),
        ("P1", D3, None, True, "Mug", Decimal("12.00")),
        ("P2", D1, None, True, "Tea, green", None),
        ("S1", D1, D3, False, "West"),
        ("S1", D3, None, True, "North"),
        ("S2", D1, None, True, "South"),
    ]
    lines = [row for row in in_order[1] if len(row) == 6 and row[3] == "P1"]
    assert lines == [
        ("O1101", 1, D1, "P1", Decimal("12.00"), "West"),
        ("O1102", 1, D2, "P1", Decimal("9.99"), "West"),
        ("O1103", 1, D3, "P1", Decimal("12.00"), "North"),
    ]

    shuffled = [D1, D2, D3, D2]
    random.Random(20261101).shuffle(shuffled)
    # Reversed; the offer loaded last, between two dates already loaded at full price; a re-run; shuffled.
    for order in ([D3, D2, D1], [D1, D3, D2], [D2, D3, D1, D1], shuffled):
        assert warehouse_after(db_alias, tmp_path, [(d, outputs[d]) for d in order]) == in_order, order


def test_reloading_a_date_with_the_same_snapshot_changes_no_row(db_alias, tmp_path):
    outputs = three_dates()
    load(db_alias, tmp_path, [(d, outputs[d]) for d in (D1, D3, D2)])
    before = warehouse_checksums(using=db_alias)
    load(db_alias, tmp_path, [(d, outputs[d]) for d in (D2, D1, D3)])
    assert warehouse_checksums(using=db_alias) == before


def test_a_backfill_keeps_what_later_loaded_dates_saw_and_repoints_their_facts(db_alias, tmp_path):
    load(db_alias, tmp_path, [(D1, history_outputs(D1)), (D3, history_outputs(D3))])
    (mug,) = DimProduct.objects.using(db_alias).filter(sku="P1")

    load(db_alias, tmp_path, [(D2, history_outputs(D2, price="12.00"))])

    p1 = list(DimProduct.objects.using(db_alias).filter(sku="P1").order_by("valid_from"))
    assert [(v.valid_from, v.valid_to, v.list_price) for v in p1] == [
        (D1, D2, Decimal("9.99")),
        (D2, D3, Decimal("12.00")),
        (D3, None, Decimal("9.99")),
    ]
    assert p1[0].pk == mug.pk  # the version D1's facts point to keeps its row
    d3_line = FactSalesLine.objects.using(db_alias).get(order_id="O1103", line_number=1)
    assert d3_line.product_id == p1[2].pk
    assert (
        FactDailySales.objects.using(db_alias).get(date_id=20261103, product__sku="P1").product_id == p1[2].pk
    )


def test_a_backfill_before_a_member_first_appeared_starts_its_history_earlier(db_alias, tmp_path):
    load(db_alias, tmp_path, [(D3, history_outputs(D3, name="Mug"))])
    (mug,) = DimProduct.objects.using(db_alias).filter(sku="P1")
    load(db_alias, tmp_path, [(D2, history_outputs(D2, name="Mug"))])
    assert list(DimProduct.objects.using(db_alias).filter(sku="P1").values_list("pk", "valid_from")) == [
        (mug.pk, D2)
    ]
    load(db_alias, tmp_path, [(D1, history_outputs(D1, name="Cup"))])
    assert list(
        DimProduct.objects.using(db_alias).filter(sku="P1").values_list("valid_from", "valid_to", "name")
    ) == [(D1, D2, "Cup"), (D2, None, "Mug")]


def test_a_corrected_rerun_back_to_the_previous_attributes_merges_the_versions(db_alias, tmp_path):
    load(db_alias, tmp_path, [(D1, history_outputs(D1)), (D2, history_outputs(D2, price="12.00"))])
    load(db_alias, tmp_path, [(D2, history_outputs(D2, price="9.99"))])

    (p1,) = DimProduct.objects.using(db_alias).filter(sku="P1")
    assert (p1.valid_from, p1.valid_to, p1.is_current, p1.list_price) == (D1, None, True, Decimal("9.99"))
    assert set(FactSalesLine.objects.using(db_alias).filter(product__sku="P1").values_list("product_id")) == {
        (p1.pk,)
    }


def test_members_missing_from_a_snapshot_are_left_alone(db_alias, tmp_path):
    load(db_alias, tmp_path, [(D1, history_outputs(D1))])
    load(db_alias, tmp_path, [(D2, without(history_outputs(D2, price="12.00"), "P2"))])
    assert DimProduct.objects.using(db_alias).get(sku="P2").valid_to is None


def test_a_fact_dated_before_its_member_first_version_joins_that_first_version(db_alias, tmp_path):
    """A partition's lines may predate the first snapshot of their product (a look-back, a late update):
    they join the member's first version instead of failing the load."""
    load(db_alias, tmp_path, [(D2, history_outputs(D2))])
    early = history_outputs(D1)
    early["products"] = [p for p in early["products"] if p["sku"] != "P2"]
    load(db_alias, tmp_path, [(D1, early)])
    p2 = DimProduct.objects.using(db_alias).get(sku="P2")
    line = FactSalesLine.objects.using(db_alias).get(order_id=f"O{D1:%m%d}", line_number=2)
    assert (line.product_id, line.date_id, p2.valid_from) == (p2.pk, int(f"{D1:%Y%m%d}"), D2)


def test_a_product_never_exported_still_fails_the_load_with_its_key(db_alias, tmp_path):
    early = history_outputs(D1)
    early["products"] = [p for p in early["products"] if p["sku"] != "P2"]
    with pytest.raises(MissingDimensionError, match="warehouse.DimProduct: no row for sku P2"):
        load(db_alias, tmp_path, [(D1, early)])


@pytest.mark.postgres
@pytest.mark.parametrize("strategy", ["copy", "portable"])
def test_random_histories_in_random_orders_match_on_both_paths(tmp_path, strategy):
    """Random prices, names and regions on five dates, loaded in date order on SQLite and in random orders
    (with re-runs) on PostgreSQL: the same versions and fact references every time."""
    _postgres_or_skip()
    rng = random.Random(0)
    days = [D1 + timedelta(days=i) for i in range(5)]
    for _ in range(5):
        outputs = {
            day: history_outputs(
                day,
                price=rng.choice(["9.99", "12.00"]),
                region=rng.choice(["West", "North", None]),
                name=rng.choice(["Mug", "mug"]),
            )
            for day in days
        }
        expected = warehouse_after("default", tmp_path, [(d, outputs[d]) for d in days], "portable")
        order = rng.sample(days, len(days)) + rng.sample(days, 2)
        assert warehouse_after("postgres", tmp_path, [(d, outputs[d]) for d in order], strategy) == expected
