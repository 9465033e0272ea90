"""The loader links a return the job left unlinked to the customer's purchase of the item on an earlier date
(docs/retail-semantics.md#returns-and-cancellations), on both load paths."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from warehouse.checks import warehouse_checksums
from warehouse.loaders import partition_load
from warehouse.loading.specs import RETURN_LOOKBACK_DAYS
from warehouse.models import FactSalesLine

from .partitions import default_outputs, sale, write_outputs

pytestmark = pytest.mark.django_db(databases="__all__")

D1, D2, D3 = date(2026, 11, 1), date(2026, 11, 2), date(2026, 11, 3)
GUEST = None
OTHER = "d" * 64


def at(row: dict, hour: int, minute: int = 0) -> dict:
    day = row["business_date"]
    return row | {"ordered_at": datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)}


def outputs(lines: list[dict]) -> dict:
    result = default_outputs(lines)
    result["customers"].append({"customer_key": OTHER, "country": "DE"})
    return result


def load(alias: str, tmp_path, day: date, lines: list[dict], strategy: str = "auto") -> None:
    partition_load(
        outputs=write_outputs(tmp_path / f"{alias}-{day}-{len(list(tmp_path.iterdir()))}", outputs(lines)),
        pipeline="shop",
        business_date=day,
        run_id=None,
        using=alias,
        strategy=strategy,
    )


def links(alias: str) -> dict[str, str | None]:
    returns = FactSalesLine.objects.using(alias).filter(is_return=True)
    return dict(returns.values_list("order_id", "original_order_id"))


def purchases_on_d1() -> list[dict]:
    return [
        at(sale("O1-early", 1, day=D1), 9),
        at(sale("O1-late", 1, day=D1), 18),
        at(sale("O1-other-item", 1, sku="P2", day=D1), 20),
        at(sale("O1-other-customer", 1, customer=OTHER, day=D1), 21),
        at(sale("C1-earlier-return", 1, qty=-1, day=D1), 22),
    ]


def test_a_return_links_to_the_latest_earlier_purchase_of_the_customer_and_item(db_alias, tmp_path):
    load(db_alias, tmp_path, D1, purchases_on_d1())
    load(
        db_alias,
        tmp_path,
        D2,
        [
            at(sale("C2", 1, qty=-1, day=D2), 8),
            at(sale("C2-guest", 1, qty=-1, customer=GUEST, day=D2), 8),
            at(sale("C2-never-bought", 1, sku="P2", qty=-1, customer=OTHER, day=D2), 8),
            at(sale("C2-same-day", 1, qty=-1, original="O2", day=D2), 12),
            at(sale("O2", 1, day=D2), 11),
        ],
    )
    assert links(db_alias) == {
        "C1-earlier-return": None,
        "C2": "O1-late",
        "C2-guest": None,
        "C2-never-bought": None,
        "C2-same-day": "O2",  # the job's link within the date wins
    }


def test_equal_times_link_to_the_greatest_order_id_in_code_point_order(db_alias, tmp_path):
    # "Ob" > "OC" in code points ('b' 0x62, 'C' 0x43), not in a linguistic collation such as en_US.
    load(db_alias, tmp_path, D1, [at(sale("OC", 1, day=D1), 9), at(sale("Ob", 1, day=D1), 9)])
    load(db_alias, tmp_path, D2, [at(sale("C2", 1, qty=-1, day=D2), 8)])
    assert links(db_alias)["C2"] == "Ob"


def test_purchases_beyond_the_look_back_are_not_linked(db_alias, tmp_path):
    old = D2 - timedelta(days=RETURN_LOOKBACK_DAYS + 1)
    load(db_alias, tmp_path, old, [at(sale("O-old", 1, day=old), 9)])
    load(db_alias, tmp_path, D2, [at(sale("C2", 1, qty=-1, day=D2), 8)])
    assert links(db_alias)["C2"] is None


def test_reloading_a_linked_return_rewrites_nothing(db_alias, tmp_path):
    load(db_alias, tmp_path, D1, purchases_on_d1())
    returns = [at(sale("C2", 1, qty=-1, day=D2), 8)]
    load(db_alias, tmp_path, D2, returns)
    before = warehouse_checksums(using=db_alias)
    load(db_alias, tmp_path, D2, returns)
    assert warehouse_checksums(using=db_alias) == before
    assert links(db_alias)["C2"] == "O1-late"


def test_loading_a_purchase_date_after_its_returns_links_them(db_alias, tmp_path):
    load(db_alias, tmp_path, D3, [at(sale("C3", 1, qty=-1, day=D3), 8)])
    assert links(db_alias)["C3"] is None
    load(db_alias, tmp_path, D1, purchases_on_d1())
    assert links(db_alias)["C3"] == "O1-late"
    assert FactSalesLine.objects.using(db_alias).get(order_id="C3").linked_by_loader


def test_reloading_a_purchase_date_moves_or_drops_the_links_to_it(db_alias, tmp_path):
    load(db_alias, tmp_path, D1, [at(sale("O1", 1, day=D1), 9)])
    load(db_alias, tmp_path, D2, [at(sale("O2", 1, day=D2), 9)])
    load(db_alias, tmp_path, D3, [at(sale("C3", 1, qty=-1, day=D3), 8)])
    assert links(db_alias)["C3"] == "O2"
    load(db_alias, tmp_path, D2, [at(sale("O2", 1, sku="P2", day=D2), 9)])  # corrected: another item
    assert links(db_alias)["C3"] == "O1"
    load(db_alias, tmp_path, D1, [at(sale("O1", 1, day=D1), 9, 30)])  # the purchase is still there
    assert links(db_alias)["C3"] == "O1"
    load(db_alias, tmp_path, D1, [])
    assert links(db_alias)["C3"] is None
    assert not FactSalesLine.objects.using(db_alias).get(order_id="C3").linked_by_loader


def test_a_link_from_the_job_or_the_source_is_never_revisited(db_alias, tmp_path):
    load(db_alias, tmp_path, D3, [at(sale("C3", 1, qty=-1, original="O-named", day=D3), 8)])
    load(db_alias, tmp_path, D1, purchases_on_d1())
    load(db_alias, tmp_path, D1, [])
    assert links(db_alias)["C3"] == "O-named"


def dates_with_purchases_and_returns() -> dict[date, list[dict]]:
    return {
        D1: [at(sale("O1", 1, day=D1), 9), at(sale("O1b", 1, sku="P2", day=D1), 9)],
        D2: [at(sale("C2", 1, qty=-1, day=D2), 8), at(sale("O2", 1, day=D2), 12)],
        D3: [at(sale("C3", 1, qty=-1, day=D3), 8), at(sale("C3b", 1, sku="P2", qty=-1, day=D3), 8)],
    }


@pytest.mark.parametrize("strategy", ["auto", "portable"])
def test_dates_loaded_in_any_order_end_with_the_links_of_date_order(db_alias, tmp_path, strategy):
    dates = dates_with_purchases_and_returns()
    orders = [(D1, D2, D3), (D3, D2, D1), (D2, D3, D1), (D3, D1, D2), (D1, D3, D2, D1, D3)]
    results = []
    for order in orders:
        FactSalesLine.objects.using(db_alias).all().delete()
        for day in order:
            load(db_alias, tmp_path, day, dates[day], strategy)
        results.append(links(db_alias))
    assert results[0] == {"C2": "O1", "C3": "O2", "C3b": "O1b"}
    assert all(result == results[0] for result in results), list(zip(orders, results, strict=True))


def test_reloading_a_date_before_loaded_returns_rewrites_nothing(db_alias, tmp_path):
    dates = dates_with_purchases_and_returns()
    for day in (D1, D2, D3):
        load(db_alias, tmp_path, day, dates[day])
    before = warehouse_checksums(using=db_alias)
    load(db_alias, tmp_path, D1, dates[D1])
    load(db_alias, tmp_path, D2, dates[D2])
    assert warehouse_checksums(using=db_alias) == before
