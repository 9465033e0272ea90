"""Exactly once, end to end: a Shopify-like API on loopback -> extract -> the sales job -> `manage.py load`.

The shop (New York time; seven dates around the end of daylight saving time) re-sends its boundary orders:
the source is configured the naive way, `updated_at_min = {window_start}` / `updated_at_max = {window_end}`
with no incremental state, and the API's bounds are both inclusive, so an order stamped at midnight lands
in two partitions. Orders are updated days later (a new quantity or price, in a later partition), one date
has no sales, evening orders are already the next date in UTC, and one order is created on the eighth date
at exactly midnight. The seven partitions are extracted and transformed once; then they are loaded in date
order, reversed, shuffled and with re-loads, each time into an empty warehouse. Every time, per (business
date, store), revenue to the cent, quantity and lines equal what plain Python computes from the shop's
final state, both facts agree, and the warehouse is the same whatever the order.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from io import StringIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow.parquet as pq
import pytest
from django.core.management import call_command

from spark_jobs.sales_daily import run_job
from tests.connectors.sales_apis import SHOP_ZONE, TOKEN, sales_api
from tests.pipelines import dataset, pipeline_write
from warehouse.checks import table_checksum
from warehouse.models import (
    DimCustomer,
    DimDate,
    DimProduct,
    DimStore,
    FactDailySales,
    FactSalesLine,
    QuarantinedRow,
)

pytestmark = pytest.mark.django_db(databases="__all__")

PIPELINE = "shop_e2e"
ZONE = ZoneInfo("America/New_York")
DAYS = [date(2026, 10, 28) + timedelta(days=n) for n in range(7)]
NO_SALES = date(2026, 11, 1)  # a Sunday of 25 hours in New York: daylight saving time ends at 02:00
CENT = Decimal("0.01")
PRODUCTS = {"P1": "Mug", "P2": "Tea", "P3": "Kettle", "P4": "Spoon"}
STORES = {"S-NYC": "New York", "S-LAX": "Los Angeles"}
# Four-decimal prices: 3 x 2.3350 = 7.005 rounds half-up to 7.01 per line, before any sum.
PRICES = ("9.99", "4.35", "12.50", "2.3350", "0.1250")
CUSTOMERS = (None, "ann@example.com", "bob@example.com", "cy@example.com")


# --- the shop's history --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One version of an order, as the shop stores it at `at` (its updated_at)."""

    at: datetime
    order_id: int
    created_at: datetime
    store: str
    email: str | None
    items: tuple[tuple[str, int, str], ...]  # (sku, quantity, unit price); line number = position + 1

    def body(self) -> dict[str, Any]:
        return {
            "created_at": self.created_at.astimezone(SHOP_ZONE).isoformat(timespec="seconds"),
            "location_id": self.store,
            "currency": "USD",
            "customer": {"email": self.email, "country": "US"} if self.email else None,
            "line_items": [
                {"id": n, "sku": sku, "quantity": qty, "price": price}
                for n, (sku, qty, price) in enumerate(self.items, 1)
            ],
        }

    def updated(self, at: datetime, items: tuple[tuple[str, int, str], ...]) -> Event:
        return Event(at, self.order_id, self.created_at, self.store, self.email, items)


def local(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=ZONE)


def shop_history(seed: int = 10) -> list[Event]:
    """Every version of every order, in time order.

    Each date with sales: three daytime orders, an evening one (already the next date in UTC), and one
    created at 23:40 and paid at exactly midnight, which both that date's and the next date's windows
    include. The first date's first order changes a week later (on the last date), a third date's order
    changes on the date with no sales, and a second date's order changes twice. One order is created at
    exactly midnight after the second date, and one at midnight after the last (the eighth date)."""
    rng = random.Random(seed)
    ids = iter(range(1001, 2000))
    events: list[Event] = []

    def items() -> tuple[tuple[str, int, str], ...]:
        return tuple(
            (rng.choice(list(PRODUCTS)), rng.choice([1, 1, 2, 3]), rng.choice(PRICES))
            for _ in range(rng.randint(1, 3))
        )

    def create(at: datetime, store: str | None = None) -> Event:
        store = store or rng.choice(list(STORES))
        event = Event(at, next(ids), at, store, rng.choice(CUSTOMERS), items())
        events.append(event)
        return event

    first: dict[date, Event] = {}
    for day in DAYS:
        if day == NO_SALES:
            continue
        for hour in sorted(rng.sample(range(8, 20), 3)):
            event = create(local(day, hour, rng.randrange(60)))
            first.setdefault(day, event)
        create(local(day, 21, rng.randrange(60)), "S-NYC")  # 01:xx or 02:xx UTC the next date
        late = create(local(day, 23, 40))
        events.append(late.updated(local(day + timedelta(days=1), 0), late.items))  # paid at midnight
    create(local(DAYS[2], 0), "S-LAX")  # 21:00 the evening before in Los Angeles
    create(local(DAYS[-1] + timedelta(days=1), 0), "S-NYC")  # the eighth date, only in the seventh window
    # A return (a negative line) by a known customer.
    events.append(Event(local(DAYS[3], 10, 5), next(ids), local(DAYS[3], 10, 5), "S-NYC",
                        "ann@example.com", (("P2", -1, "4.35"),)))  # fmt: skip

    week_later = first[DAYS[0]]
    (sku, qty, _), *rest = week_later.items
    events.append(week_later.updated(local(DAYS[6], 22, 30), ((sku, qty + 3, "7.7750"), *rest)))
    amended = first[DAYS[2]]
    (sku, qty, price), *rest = amended.items
    events.append(amended.updated(local(NO_SALES, 11), ((sku, qty + 1, price), *rest)))
    twice = first[DAYS[1]]
    (sku, qty, price), *rest = twice.items
    events.append(twice.updated(local(DAYS[3], 9), ((sku, qty + 2, price), *rest)))
    events.append(twice.updated(local(DAYS[5], 16, 30), ((sku, qty + 2, "3.3350"), *rest)))
    return sorted(events, key=lambda e: (e.at, e.order_id))


def nightly(day: date) -> datetime:
    """When the date is extracted: 01:00 the next morning."""
    return local(day + timedelta(days=1), 1)


# --- expected figures, from the shop's final state alone ---------------------------------------------------


def final_lines(orders: dict[int, dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Each line of each order as the shop holds it now, with its business date in New York."""
    lines = {}
    for order in orders.values():
        body = order["fields"]
        created = datetime.fromisoformat(body["created_at"]).astimezone(ZONE)
        for item in body["line_items"]:
            amount = (Decimal(item["price"]) * item["quantity"]).quantize(CENT, ROUND_HALF_UP)
            lines[str(order["id"]), item["id"]] = {
                "date": created.date(),
                "store": body["location_id"],
                "amount": amount,
                "quantity": item["quantity"],
                "version": int(order["at"].timestamp()) * 1_000_000,
            }
    return lines


def expected_by_date_and_store(lines: dict[tuple[str, int], dict[str, Any]]) -> dict[tuple, tuple]:
    totals: dict[tuple, list] = defaultdict(lambda: [Decimal("0.00"), 0, 0])
    for line in lines.values():
        total = totals[line["date"], line["store"]]
        total[0] += line["amount"]
        total[1] += line["quantity"]
        total[2] += 1
    return {key: tuple(total) for key, total in totals.items()}


def summed(rows) -> dict[tuple, tuple]:
    """Per (date, store): (money, quantity, lines), added in Python: SQLite's SUM of decimals is a float."""
    totals: dict[tuple, list] = defaultdict(lambda: [Decimal("0.00"), 0, 0])
    for day, store, money, quantity, *lines in rows:
        total = totals[day, store]
        total[0] += money
        total[1] += quantity
        total[2] += lines[0] if lines else 1
    return {key: tuple(total) for key, total in totals.items()}


# --- the pipeline ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transformed_once(tmp_path_factory) -> dict[str, Any]:
    """The seven transformed partitions and the shop's final state, made by the first test that needs them
    (staging is files: every database's loads read the same partitions)."""
    root = tmp_path_factory.mktemp("shop_e2e")
    exports = root / "exports"
    exports.mkdir()
    for day in DAYS:
        rows = "".join(f"{sku},{name},Kitchen,{len(name)}.00\n" for sku, name in PRODUCTS.items())
        (exports / f"products_{day:%Y%m%d}.csv").write_text("SKU,Product Name,Category,List Price\n" + rows)
        (exports / f"stores_{day:%Y%m%d}.jsonl").write_text(
            "".join(
                json.dumps({"code": c, "name": f"Shop {c}", "city": n, "region": None, "country": "US"})
                + "\n"
                for c, n in STORES.items()
            )
        )
    return {"staging": root / "staging", "exports": exports, "final": None}


def write_pipeline(folder: Path, cache: dict[str, Any], *, alias: str, url: str) -> None:
    exports = cache["exports"]
    # The naive window: no incremental state, so no tie-break; the API's bounds are both inclusive.
    orders = {
        "kind": "rest",
        "preset": "shopify",
        "base_url": url,
        "incremental": False,
        "params": {"updated_at_min": "{window_start}", "updated_at_max": "{window_end}"},
        "max_retries": 1,
    }
    order_lines = dataset(
        source=orders,
        key=["order_id", "line_number"],
        options={"explode": "line_items", "version_column": "updated_at"},
        order_id={"from": "id", "type": "string", "required": True},
        line_number={"from": "line_items.id", "type": "int", "required": True},
        ordered_at={"from": "created_at", "type": "timestamp", "required": True},
        updated_at={"from": "updated_at", "type": "timestamp", "required": True},
        store_code={"from": "location_id", "type": "string", "required": True},
        customer_email={"from": "customer.email", "type": "string", "pii": True},
        customer_country={"from": "customer.country", "type": "string"},
        sku={"from": "line_items.sku", "type": "string", "required": True},
        quantity={"from": "line_items.quantity", "type": "int", "required": True},
        unit_price={"from": "line_items.price", "type": "decimal(18,4)", "required": True},
        currency={"from": "currency", "type": "string", "required": True},
    )
    products = dataset(
        source={"kind": "file", "path": f"{exports}/products_{{date:%Y%m%d}}.csv", "format": "csv"},
        sku={"from": "SKU", "type": "string", "required": True},
        name={"from": "Product Name", "type": "string", "required": True},
        category={"from": "Category", "type": "string"},
        list_price={"from": "List Price", "type": "decimal(18,2)"},
    )
    stores = dataset(
        source={"kind": "file", "path": f"{exports}/stores_{{date:%Y%m%d}}.jsonl", "format": "jsonl"},
        store_code={"from": "code", "type": "string", "required": True},
        name={"from": "name", "type": "string", "required": True},
        city={"from": "city", "type": "string"},
        region={"from": "region", "type": "string"},
        country={"from": "country", "type": "string"},
    )
    pipeline_write(
        folder,
        PIPELINE,
        top='timezone = "America/New_York"',
        datasets={"order_lines": order_lines, "products": products, "stores": stores},
        spark={"pseudonym_key_env": "ETL_PSEUDONYM_KEY", "reporting_currency": "USD"},
        database=alias,
        staging=cache["staging"],
    )


def run(command: str, day: date) -> None:
    call_command(command, pipeline=PIPELINE, date=day.isoformat(), stdout=StringIO(), stderr=StringIO())


@pytest.fixture
def shop(request, db_alias, pipeline_dir, monkeypatch, transformed_once) -> dict[str, Any]:
    """The pipeline on `db_alias`; extracts and transforms the seven dates unless an earlier test did."""
    cache = transformed_once
    monkeypatch.setenv("SHOPIFY_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "exactly-once-e2e-key")
    if cache["final"] is None:
        spark = request.getfixturevalue("spark")

        def submit_in_session(config, *, spec, work_dir, log_path, timeout=None, engine="spark"):
            # The job's own entry point in the shared session: spark-submit is covered by test_end_to_end.
            run_job(spark, spec)
            return SimpleNamespace(facts=lambda: {})

        monkeypatch.setattr("etlcore.services.transform.job_submit", submit_in_session)
        history = shop_history()
        with sales_api("shopify") as api:
            write_pipeline(pipeline_dir, cache, alias=db_alias, url=api.url)
            pending = list(history)
            for day in DAYS:
                # The shop as it is when the nightly run starts: every change made before it.
                while pending and pending[0].at <= nightly(day):
                    event = pending.pop(0)
                    api.store.put(event.order_id, event.at.isoformat(), fields=event.body())
                run("extract", day)
                run("transform", day)
            assert not pending, "every change happened before the last nightly run"
            cache["final"] = {k: {**o, "fields": dict(o["fields"])} for k, o in api.store.orders.items()}
    # The loads read staging only: the API is gone.
    write_pipeline(pipeline_dir, cache, alias=db_alias, url="http://127.0.0.1:9")
    return {"alias": db_alias, **cache}


def staged_lines(staging: Path) -> dict[date, list[dict[str, Any]]]:
    """The sales lines each transformed partition holds."""
    out = {}
    for day in DAYS:
        folder = staging / PIPELINE / "transformed" / f"date={day.isoformat()}"
        manifest = json.loads((folder / "_manifest.json").read_text())
        files = manifest["outputs"]["sales_lines"]["files"]
        out[day] = [row for f in files for row in pq.read_table(folder / f).to_pylist()]
    return out


def warehouse_reset(alias: str) -> None:
    for model in (FactDailySales, FactSalesLine, QuarantinedRow, DimCustomer, DimProduct, DimStore, DimDate):
        model.objects.using(alias).all().delete()


def load_orders() -> dict[str, list[date]]:
    shuffled = DAYS[:]
    random.Random(11).shuffle(shuffled)
    # The first date again after the last (the week-later version must hold), and others in between.
    reloaded = DAYS[:4] + [DAYS[0]] + DAYS[4:] + [DAYS[0], DAYS[3], DAYS[6], DAYS[2]]
    return {"date_order": DAYS, "reversed": DAYS[::-1], "shuffled": shuffled, "reloaded": reloaded}


# --- the test --------------------------------------------------------------------------------------------


def test_any_load_order_of_overlapping_api_partitions_gives_the_shops_final_figures_per_date_and_store(shop):
    alias = shop["alias"]
    final = final_lines(shop["final"])
    expected = expected_by_date_and_store(final)

    # Not vacuous: partitions overlap (same version re-sent, newer version later), lines land on other dates
    # than their partition's, the date without sales still has a partition, an eighth date is there.
    staged = staged_lines(shop["staging"])
    seen: dict[tuple[str, int], set[tuple[date, int]]] = defaultdict(set)
    for day, rows in staged.items():
        for row in rows:
            seen[row["order_id"], row["line_number"]].add((day, row["source_version"]))
    assert set(seen) == set(final)
    assert any(len({d for d, _ in s}) > 1 and len({v for _, v in s}) == 1 for s in seen.values())
    assert any(len({v for _, v in s}) > 1 for s in seen.values())
    assert any(row["business_date"] != day for day, rows in staged.items() for row in rows)
    assert staged[NO_SALES] and all(row["business_date"] != NO_SALES for row in staged[NO_SALES])
    assert NO_SALES not in {day for day, _ in expected}
    assert DAYS[-1] + timedelta(days=1) in {day for day, _ in expected}
    assert sum(len(rows) for rows in staged.values()) > len(final)

    warehouses = {}
    for name, order in load_orders().items():
        warehouse_reset(alias)
        for day in order:
            run("load", day)

        lines = FactSalesLine.objects.using(alias).filter(pipeline=PIPELINE)
        loaded = summed(lines.values_list("date__date", "store__store_code", "amount_reporting", "quantity"))
        assert loaded == expected, name
        daily = FactDailySales.objects.using(alias).filter(pipeline=PIPELINE)
        loaded_daily = summed(
            daily.values_list("date__date", "store__store_code", "revenue", "quantity", "line_count")
        )
        assert loaded_daily == loaded, name  # every line is a product line: both facts hold all of them
        versions = {(o, n): v for o, n, v in lines.values_list("order_id", "line_number", "source_version")}
        assert versions == {key: line["version"] for key, line in final.items()}, name
        assert not QuarantinedRow.objects.using(alias).exists(), name
        warehouses[name] = {
            model.__name__: table_checksum(model, using=alias, mode="natural")
            for model in (FactSalesLine, FactDailySales, DimStore, DimProduct, DimCustomer)
        }
    # Not only the totals: every order leaves the same rows (source partition and return links included).
    for name, checksums in warehouses.items():
        assert checksums == warehouses["date_order"], name
