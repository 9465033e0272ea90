"""Exactly once across partitions: a line carried by several partitions (an inclusive watermark re-sending
the last order, a newer version a week later, an older version arriving late) ends as one row, on its own
business date, holding its newest version; the daily fact is right for every date; nothing depends on the
order in which partitions are loaded or re-loaded; and pipelines never touch each other's rows.

Expected figures come from the source's final state, computed here in plain Python."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest

from warehouse.loaders import partition_load
from warehouse.models import DimCustomer, DimProduct, DimStore, FactDailySales, FactSalesLine

from .partitions import default_outputs, history_outputs, sale, write_outputs

pytestmark = pytest.mark.django_db(databases="__all__")

DAYS = [date(2026, 11, 2) + timedelta(days=i) for i in range(7)]
STORES = [{"store_code": s, "name": s, "city": None, "region": None, "country": "FR"} for s in ("S1", "S2")]


def source_history(seed: int = 7) -> tuple[dict[date, list[dict]], dict[tuple, dict]]:
    """Partitions as an incremental API with an inclusive lower bound delivers them, and the source's final
    state of every line.

    Each date's partition holds the orders created that date (version 1), the previous date's last order
    again (same version: the inclusive bound), from the fifth date on an order of four dates earlier updated
    (version 2: a new quantity and price), and on the last date that order's version 1 again (late)."""
    rng = random.Random(seed)
    partitions: dict[date, list[dict]] = defaultdict(list)
    final: dict[tuple, dict] = {}
    created: dict[date, list[str]] = {}
    for n, day in enumerate(DAYS):
        # A Saturday with no sales: its partition carries only re-sent lines.
        orders = [] if n == 5 else [f"{day:%m%d}-{i}" for i in range(rng.randint(3, 6))]
        created[day] = orders
        for order in orders:
            store = rng.choice(["S1", "S2"])
            for line in range(1, rng.randint(1, 3) + 1):
                row = sale(
                    order,
                    line,
                    sku=rng.choice(["P1", "P2"]),
                    qty=rng.choice([1, 2, 3, -1]),
                    price=rng.choice(["9.99", "4.35", "12.50"]),
                    store=store,
                    day=day,
                    version=1,
                )
                partitions[day].append(row)
                final[order, line] = row
    for n, day in enumerate(DAYS):
        previous = [d for d in DAYS[:n] if created[d]]
        if previous:
            last_order = created[previous[-1]][-1]
            partitions[day] += [r for r in partitions[previous[-1]] if r["order_id"] == last_order]
        if n >= 4 and created[DAYS[n - 4]]:
            updated_order = created[DAYS[n - 4]][0]
            for (order, line), row in list(final.items()):
                if order == updated_order and row["source_version"] == 1:
                    newer = sale(
                        order, line, sku=row["sku"], qty=row["quantity"] + 4, price="7.77",
                        store=row["store_code"], day=row["business_date"], version=2,
                    )  # fmt: skip
                    partitions[day].append(newer)
                    final[order, line] = newer
                    if n == len(DAYS) - 1:
                        continue
    late = created[DAYS[0]][0]
    older = [r for r in partitions[DAYS[0]] if r["order_id"] == late and r["source_version"] == 1]
    carried = {(r["order_id"], r["line_number"]) for r in partitions[DAYS[-1]]}
    partitions[DAYS[-1]] += [r for r in older if (r["order_id"], r["line_number"]) not in carried]
    return dict(partitions), final


def expected_by_date_and_store(final: dict[tuple, dict]) -> dict[tuple, tuple]:
    totals: dict[tuple, list] = defaultdict(lambda: [Decimal("0.00"), 0, 0])
    for row in final.values():
        amount = (Decimal(row["unit_price"]) * row["quantity"]).quantize(Decimal("0.01"), ROUND_HALF_UP)
        t = totals[int(f"{row['business_date']:%Y%m%d}"), row["store_code"]]
        t[0] += amount
        t[1] += row["quantity"]
        t[2] += 1
    return {k: tuple(v) for k, v in totals.items()}


def load_partition(alias, tmp_path, pipeline, day, lines, name):
    outputs = default_outputs(lines) | {"stores": STORES, "quarantine": []}
    return partition_load(
        outputs=write_outputs(tmp_path / name, outputs),
        pipeline=pipeline,
        business_date=day,
        run_id=None,
        using=alias,
    )


def lines_by_date_and_store(alias, pipeline="shop") -> dict[tuple, tuple]:
    totals: dict[tuple, list] = defaultdict(lambda: [Decimal("0.00"), 0, 0])
    rows = FactSalesLine.objects.using(alias).filter(pipeline=pipeline)
    for date_id, store, amount, quantity in rows.values_list(
        "date_id", "store__store_code", "amount", "quantity"
    ):
        t = totals[date_id, store]
        t[0] += amount
        t[1] += quantity
        t[2] += 1
    return {k: tuple(v) for k, v in totals.items()}


def daily_by_date_and_store(alias, pipeline="shop") -> dict[tuple, tuple]:
    totals: dict[tuple, list] = defaultdict(lambda: [Decimal("0.00"), 0, 0])
    rows = FactDailySales.objects.using(alias).filter(pipeline=pipeline)
    for date_id, store, revenue, quantity, lines in rows.values_list(
        "date_id", "store__store_code", "revenue", "quantity", "line_count"
    ):
        t = totals[date_id, store]
        t[0] += revenue
        t[1] += quantity
        t[2] += lines
    return {k: tuple(v) for k, v in totals.items()}


def load_orders() -> dict[str, list[date]]:
    shuffled = DAYS[:]
    random.Random(11).shuffle(shuffled)
    reloaded = DAYS + [DAYS[3], DAYS[0], DAYS[6], DAYS[2]]
    return {"date_order": DAYS, "reversed": DAYS[::-1], "shuffled": shuffled, "reloaded": reloaded}


@pytest.mark.parametrize("order", list(load_orders()))
def test_every_load_order_ends_with_each_line_once_in_its_newest_version_on_its_own_date(
    db_alias, tmp_path, order
):
    partitions, final = source_history()
    assert sum(len(rows) for rows in partitions.values()) > len(final)  # the hostile part: re-sent lines
    for i, day in enumerate(load_orders()[order]):
        load_partition(db_alias, tmp_path, "shop", day, partitions[day], f"{order}-{i}")

    expected = expected_by_date_and_store(final)
    assert lines_by_date_and_store(db_alias) == expected
    stored = FactSalesLine.objects.using(db_alias).values_list("order_id", "line_number", "source_version")
    assert {(o, n): v for o, n, v in stored} == {k: r["source_version"] for k, r in final.items()}
    # The daily fact holds product lines only; every line here is one. It agrees with the lines everywhere.
    assert daily_by_date_and_store(db_alias) == expected


def test_an_older_version_arriving_after_a_newer_one_changes_nothing(db_alias, tmp_path):
    day, later = DAYS[0], DAYS[3]
    load_partition(db_alias, tmp_path, "shop", later, [sale("A", 1, qty=5, day=day, version=2)], "newer")
    load_partition(db_alias, tmp_path, "shop", day, [sale("A", 1, qty=1, day=day, version=1)], "older")
    line = FactSalesLine.objects.using(db_alias).get()
    assert (line.quantity, line.source_version, line.source_date, line.date_id) == (5, 2, later, 20261102)
    assert FactDailySales.objects.using(db_alias).get().quantity == 5


@pytest.mark.parametrize("newer_first", [False, True], ids=["in_order", "newer_first"])
def test_a_line_a_newer_version_of_its_order_dropped_leaves_the_warehouse(db_alias, tmp_path, newer_first):
    older = (DAYS[0], [sale("A", 1, qty=2, day=DAYS[0]), sale("A", 2, sku="P2", day=DAYS[0])], "older")
    newer = (DAYS[3], [sale("A", 1, qty=3, day=DAYS[0], version=2)], "newer")
    for day, lines, name in [newer, older] if newer_first else [older, newer]:
        load_partition(db_alias, tmp_path, "shop", day, lines, name)
    stored = FactSalesLine.objects.using(db_alias).values_list("line_number", "quantity", "source_date")
    assert list(stored) == [(1, 3, DAYS[3])]
    assert list(FactDailySales.objects.using(db_alias).values_list("product__sku", "quantity")) == [("P1", 3)]


def test_a_line_moved_to_another_date_by_a_newer_version_leaves_no_daily_row_behind(db_alias, tmp_path):
    load_partition(db_alias, tmp_path, "shop", DAYS[0], [sale("A", 1, qty=2, day=DAYS[0])], "first")
    load_partition(
        db_alias, tmp_path, "shop", DAYS[2], [sale("A", 1, qty=2, day=DAYS[1], version=2)], "moved"
    )
    assert list(FactDailySales.objects.using(db_alias).values_list("date_id", "quantity")) == [(20261103, 2)]


def test_a_reload_reports_lines_that_updated_other_partitions_versions(db_alias, tmp_path):
    load_partition(
        db_alias, tmp_path, "shop", DAYS[0], [sale("A", 1, day=DAYS[0]), sale("B", 1, day=DAYS[0])], "a"
    )
    result = load_partition(
        db_alias,
        tmp_path,
        "shop",
        DAYS[1],
        [sale("A", 1, day=DAYS[0], version=2), sale("B", 1, day=DAYS[0]), sale("C", 1, day=DAYS[1])],
        "b",
    )
    lines = result.facts["sales_lines"]
    assert (lines.inserted, lines.updated, lines.superseded, lines.reloaded) == (1, {"2026-11-02": 1}, 1, 0)
    again = load_partition(db_alias, tmp_path, "shop", DAYS[1], [sale("C", 1, day=DAYS[1])], "c").facts
    # C again; A's version 2 was this partition's and is gone (B's stays with its first partition).
    assert (again["sales_lines"].reloaded, again["sales_lines"].deleted) == (1, 1)
    assert lines.dates == ["2026-11-02", "2026-11-03"]


def test_two_pipelines_loading_the_same_dates_keep_exactly_what_each_loads_alone(db_alias, tmp_path):
    partitions, final = source_history()
    other_partitions, _ = source_history(seed=99)
    for i, day in enumerate(DAYS):
        load_partition(db_alias, tmp_path, "shop", day, partitions[day], f"shop-{i}")
    alone = lines_by_date_and_store(db_alias, "shop")
    # The other pipeline re-uses order ids (another source numbering its own orders) on the same dates.
    for i, day in enumerate(DAYS[::-1]):
        load_partition(db_alias, tmp_path, "web", day, other_partitions[day], f"web-{i}")
    # Re-loading one of its dates with a partition that no longer holds its lines drops only its own rows.
    load_partition(db_alias, tmp_path, "web", DAYS[2], [], "web-empty")

    assert lines_by_date_and_store(db_alias, "shop") == alone == expected_by_date_and_store(final)
    assert daily_by_date_and_store(db_alias, "shop") == alone
    web_lines = FactSalesLine.objects.using(db_alias).filter(pipeline="web")
    assert web_lines.exists() and not web_lines.filter(source_date=DAYS[2]).exists()
    assert daily_by_date_and_store(db_alias, "web") == lines_by_date_and_store(db_alias, "web")


def test_two_pipelines_whose_masters_disagree_keep_one_history_each(db_alias, tmp_path):
    """The same sku and store code name other members in another pipeline's masters: neither pipeline's
    loads version, re-point or delete the other's dimension rows."""

    def load(pipeline, day, outputs, name):
        partition_load(
            outputs=write_outputs(tmp_path / name, outputs),
            pipeline=pipeline,
            business_date=day,
            run_id=None,
            using=db_alias,
        )

    load("shop", DAYS[1], history_outputs(DAYS[1], name="Mug", region="West"), "shop-1")
    load("web", DAYS[0], history_outputs(DAYS[0], name="Tasse", price="3.00", region="Nord"), "web-0")
    load("web", DAYS[2], history_outputs(DAYS[2], name="Tasse", price="4.00", region="Nord"), "web-2")
    load("shop", DAYS[1], history_outputs(DAYS[1], name="Mug", region="West"), "shop-1-again")

    def versions(model, pipeline, key):
        rows = model.objects.using(db_alias).filter(pipeline=pipeline).order_by(key, "valid_from")
        return [(getattr(r, key), r.valid_from, r.valid_to) for r in rows]

    assert versions(DimProduct, "shop", "sku") == [("P1", DAYS[1], None), ("P2", DAYS[1], None)]
    assert versions(DimProduct, "web", "sku") == [
        ("P1", DAYS[0], DAYS[2]),
        ("P1", DAYS[2], None),
        ("P2", DAYS[0], None),
    ]
    assert set(DimStore.objects.using(db_alias).filter(pipeline="shop").values_list("region", flat=True)) == {
        "West",
        "South",
    }
    assert DimCustomer.objects.using(db_alias).filter(pipeline="shop").count() == 1
    for pipeline in ("shop", "web"):
        lines = FactSalesLine.objects.using(db_alias).filter(pipeline=pipeline)
        assert set(lines.values_list("product__pipeline", "store__pipeline", "customer__pipeline")) == {
            (pipeline, pipeline, pipeline)
        }
    shop_mug = FactSalesLine.objects.using(db_alias).get(pipeline="shop", line_number=1)
    assert (shop_mug.product.name, shop_mug.store.region) == ("Mug", "West")


def test_the_loaders_agreement_check_names_the_dates_where_daily_sales_and_lines_disagree(db_alias, tmp_path):
    from django.db import connections
    from psycopg2 import sql

    from warehouse.errors import DailyMismatchError
    from warehouse.loading import portable, postgres
    from warehouse.loading.specs import SALES_LINES

    load_partition(db_alias, tmp_path, "shop", DAYS[0], [sale("A", 1, day=DAYS[0])], "a")
    FactDailySales.objects.using(db_alias).update(revenue=Decimal("0.01"))
    touched = {20261102}
    with pytest.raises(DailyMismatchError, match="pipeline 'shop' on 2026-11-02"):
        lines = FactSalesLine.objects.using(db_alias).filter(pipeline="shop")
        portable._check_daily(db_alias, lines, "shop", touched)
    if db_alias == "postgres":
        with connections[db_alias].cursor() as wrapper, pytest.raises(DailyMismatchError, match="2026-11-02"):
            table = sql.Identifier("pg_temp", "touched_check")
            wrapper.cursor.execute(
                sql.SQL("CREATE TEMP TABLE {} AS SELECT 20261102 AS date_key").format(table)
            )
            postgres._check_daily(wrapper.cursor, SALES_LINES, "shop", table)


@pytest.mark.parametrize("later_first", [False, True], ids=["in_order", "later_first"])
def test_a_customers_country_is_that_of_the_latest_order_whatever_the_load_order(
    db_alias, tmp_path, later_first
):
    def customer(country, hour):
        seen = None if country is None else datetime(2026, 11, 2, hour, tzinfo=UTC)
        return [{"customer_key": "c" * 64, "country": country, "country_seen_at": seen}]

    loads = [(DAYS[0], customer("DE", 9)), (DAYS[1], customer("FR", 18)), (DAYS[2], customer(None, 0))]
    for day, customers in loads[::-1] if later_first else loads:
        outputs = default_outputs([sale(f"O{day:%d}", 1, day=day)]) | {
            "customers": customers,
            "quarantine": [],
        }
        partition_load(
            outputs=write_outputs(tmp_path / f"{day}", outputs),
            pipeline="shop",
            business_date=day,
            run_id=None,
            using=db_alias,
        )
    assert list(DimCustomer.objects.using(db_alias).values_list("country", flat=True)) == ["FR"]
