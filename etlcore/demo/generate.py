"""Deterministic demo data for a small retail company: the sources of the `retail_demo` pipeline.

Writes, under `out_dir`:

- `orders.jsonl`: every order record the demo sales API serves (see `etlcore.demo.api_server`), for all
  business dates, in the API's order (created_at, id). Nested like Shopify: a `customer` object (null for
  guests) and a list of `lines` whose money is a string with two decimals.
- `exports/products_YYYYMMDD.csv` and `exports/stores_YYYYMMDD.jsonl`: the daily master-data exports.
- `exports/rates_YYYYMMDD.csv`: the date's exchange rates, `currency,rate` with rate = euros per unit.

About a tenth of the orders are paid in GBP or USD (prices converted from the euro list price at the
date's rate), the rest in euros, the reporting currency. Each business date also carries a fixed set of
designed cases (`Anomaly`) so the pipeline has something to de-duplicate, quarantine or link: faults, a
return, and from the second date on a return of the previous date's purchase. Everything is drawn from
`random.Random` instances seeded from `seed` (and the date), never from the global generator or the
clock: the same arguments give byte-identical files.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

__all__ = [
    "ANOMALY_KINDS",
    "DEMO_API_TOKEN_DEFAULT",
    "DEMO_BUSINESS_DATES",
    "DEMO_SEED",
    "Anomaly",
    "DemoDataset",
    "DemoDay",
    "PriceChange",
    "ensure_demo_data",
    "generate_demo_data",
]

DEMO_BUSINESS_DATES: tuple[date, ...] = (date(2026, 11, 1), date(2026, 11, 2), date(2026, 11, 3))
DEMO_SEED = 42
# Used only when ETL_DEMO_API_TOKEN is unset; the demo server is loopback-only and serves made-up data.
DEMO_API_TOKEN_DEFAULT = "demo-token-not-a-secret"

ORDERS_FILENAME = "orders.jsonl"
PRODUCT_HEADERS = ("SKU", "Product Name", "Category", "List Price")
RATES_HEADERS = ("currency", "rate")
REPORTING_CURRENCY = "EUR"
# Euros per unit around which each date's rate moves by up to 1.5 %. Card payments in a visitor's home
# currency: FOREIGN_SHARE of each date's orders, each in one of these.
FOREIGN_CURRENCIES: Mapping[str, Decimal] = {"GBP": Decimal("1.15"), "USD": Decimal("0.92")}
FOREIGN_SHARE = 0.10
# The currency of the `missing_rate` fault: one order a date is paid in it, the rates file never quotes it.
UNQUOTED_CURRENCY = "CHF"
_UNQUOTED_RATE = Decimal("1.06")  # only to give that order plausible prices
_RATE_PLACES = Decimal("0.000001")

UNKNOWN_SKU = "SKU-99999"
UNKNOWN_STORE = "ST-099"
# Sorted position (0-based, within a date) of the order that is served twice: it and its copy sit at
# positions 99 and 100, i.e. on consecutive pages for any page size that divides 100 (100, 50, 25, ...).
EXACT_DUPLICATE_POSITION = 99
ORDERS_PER_DAY = (150, 250)
GUEST_SHARE = 0.10
CUSTOMER_POOL_SIZE = 300

# kind -> what it is. `line_number` is None on an anomaly that concerns the whole order.
ANOMALY_KINDS: Mapping[str, str] = {
    "newer_version": "the order is served twice; the second record has a later updated_at and line 1's "
    "quantity changed (the latest version should win)",
    "exact_duplicate": "the same record is served twice, the copy first on the next page (per_page 100)",
    "unknown_sku": "a line whose sku is not in the product export",
    "zero_quantity": "a line with quantity 0",
    "unparseable_price": "a line whose unit_price is not a decimal number ('12,50' or 'abc')",
    "return": "an order with one line of negative quantity (a return)",
    "unknown_store": "an order whose store_id is not in the store export",
    "missing_rate": f"an order paid in {UNQUOTED_CURRENCY}, a currency the date's rates file does not quote",
    "cross_date_return": "from the second date on: an order returning (negative quantity) one line bought "
    "on the previous date by the same customer (e-mail) and sku; `original_order_id` names that purchase",
}


@dataclass(frozen=True)
class Anomaly:
    kind: str
    order_id: str
    line_number: int | None = None
    detail: str = ""
    original_order_id: str | None = None  # the purchase a `cross_date_return` returns


@dataclass(frozen=True)
class DemoDay:
    """One business date's share of the demo data, with the counts a test or a reconciliation needs."""

    business_date: date
    products_path: Path
    stores_path: Path
    rates_path: Path
    rates: tuple[tuple[str, Decimal], ...]  # (currency, euros per unit) as written to rates_path
    orders: int  # distinct order ids created that date
    records: int  # order records the API serves for the date (newer versions and duplicates included)
    lines: int  # lines in those records: the rows the extract stages after exploding `lines`
    unique_lines: int  # distinct (order id, line_number) among them
    guest_orders: int
    foreign_orders: int  # distinct order ids not in the reporting currency (the missing_rate one included)
    anomalies: tuple[Anomaly, ...] = ()

    def anomaly_counts(self) -> dict[str, int]:
        return dict(Counter(a.kind for a in self.anomalies))


@dataclass(frozen=True)
class PriceChange:
    """A product whose list price in the daily export changes from `from_date` on (a slowly changing
    dimension: the warehouse should keep both versions)."""

    sku: str
    old_list_price: Decimal
    new_list_price: Decimal
    from_date: date


@dataclass(frozen=True)
class DemoDataset:
    out_dir: Path
    orders_path: Path
    days: tuple[DemoDay, ...]
    products: int
    stores: int
    customers: int
    seed: int = DEMO_SEED
    files: tuple[Path, ...] = field(default=())
    price_changes: tuple[PriceChange, ...] = ()  # none when only one date is generated

    def day(self, business_date: date) -> DemoDay:
        for d in self.days:
            if d.business_date == business_date:
                return d
        raise KeyError(business_date)

    @property
    def orders_per_date(self) -> dict[date, int]:
        return {d.business_date: d.orders for d in self.days}

    @property
    def lines_per_date(self) -> dict[date, int]:
        return {d.business_date: d.lines for d in self.days}


# --- master data ----------------------------------------------------------------------------------

# code, name, region, city, country
_STORES: tuple[tuple[str, str, str, str, str], ...] = (
    ("ST-001", "Hamburg Jungfernstieg", "North", "Hamburg", "DE"),
    ("ST-002", "Berlin Mitte", "North", "Berlin", "DE"),
    ("ST-003", "Bremen Altstadt", "North", "Bremen", "DE"),
    ("ST-004", "Amsterdam Centrum", "West", "Amsterdam", "NL"),
    ("ST-005", "Rotterdam Markthal", "West", "Rotterdam", "NL"),
    ("ST-006", "Köln Dom", "West", "Köln", "DE"),
    ("ST-007", "München Marienplatz", "South", "München", "DE"),
    ("ST-008", "Wien Graben", "South", "Wien", "AT"),
)

# category -> (price range in whole euros, product names). Two names are deliberately awkward for CSV
# readers: one holds a comma (must be quoted), one a double space (must not be collapsed).
_CATALOGUE: dict[str, tuple[tuple[int, int], tuple[str, ...]]] = {
    "Coffee": (
        (6, 24),
        (
            "Espresso Roast 250g",
            "Espresso Roast 1kg",
            "House Blend 250g",
            "House Blend 1kg",
            "Decaf Colombia 250g",
            "Ethiopia Yirgacheffe 250g",
            "Kenya AA 250g",
            "Guatemala Antigua 250g",
            "Cold Brew Blend 500g",
            "Single Origin, Limited Edition 200g",
            "Instant Coffee 100g",
            "Coffee Pods 30 pcs",
        ),
    ),
    "Tea": (
        (3, 15),
        (
            "Earl Grey 100g",
            "English Breakfast 100g",
            "Sencha 100g",
            "Jasmine Pearls 50g",
            "Rooibos Vanilla 100g",
            "Chai Spice 100g",
            "Peppermint 50g",
            "Chamomile 50g",
            "Darjeeling First Flush 100g",
            "Matcha Ceremonial 30g",
            "Oolong Milk 100g",
            "Tea Sampler Box",
        ),
    ),
    "Bakery": (
        (1, 6),
        (
            "Butter Croissant",
            "Almond Croissant",
            "Pain au Chocolat",
            "Cinnamon Roll",
            "Blueberry Muffin",
            "Banana Bread Slice",
            "Carrot Cake Slice",
            "Sourdough Loaf",
            "Bagel  Sesame",
            "Brownie",
            "Cheesecake Slice",
            "Oat Cookie",
        ),
    ),
    "Equipment": (
        (15, 180),
        (
            "French Press 1l",
            "Pour-Over Dripper",
            "Paper Filters 100 pcs",
            "Burr Grinder",
            "Milk Frother",
            "Moka Pot 6 Cups",
            "Gooseneck Kettle",
            "Digital Scale",
            "Cold Brew Bottle",
            "Tamper 58mm",
            "Cleaning Tablets",
            "Knock Box",
        ),
    ),
    "Merchandise": (
        (5, 45),
        (
            "Logo Mug",
            "Travel Tumbler",
            "Tote Bag",
            "Barista Apron",
            'Poster "Harbour at Dawn"',
            "Gift Card Classic",
            "Gift Card Deluxe",
            "Enamel Pin",
            "Notebook",
            "Beanie",
            "Tea Towel",
            "Keep Cup",
        ),
    ),
}

_FIRST_NAMES = (
    "Anna",
    "Ben",
    "Clara",
    "David",
    "Emma",
    "Felix",
    "Greta",
    "Hannah",
    "Jonas",
    "Julia",
    "Lars",
    "Lea",
    "Lukas",
    "Marie",
    "Max",
    "Mia",
    "Noah",
    "Paul",
    "Sophie",
    "Tim",
    "Jürgen",
    "Zoë",
    "Sanne",
    "Daan",
    "Femke",
    "Bram",
    "Lotte",
    "Sem",
    "Elif",
    "Mehmet",
)
_LAST_NAMES = (
    "Müller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Hoffmann",
    "Schäfer",
    "de Jong",
    "Jansen",
    "de Vries",
    "van den Berg",
    "Bakker",
    "Visser",
    "Gruber",
    "Huber",
    "Bauer",
    "Wolf",
    "Yılmaz",
    "Kaya",
    "Novak",
    "Rossi",
)
_CUSTOMER_COUNTRIES = ("DE",) * 6 + ("NL",) * 3 + ("AT",) * 2 + ("BE", "FR")
_ASCII = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "ë": "e", "ı": "i", " ": ""})

_CENT = Decimal("0.01")


@dataclass(frozen=True)
class _Product:
    sku: str
    name: str
    category: str
    list_price: Decimal


def _products(rng: random.Random) -> list[_Product]:
    products: list[_Product] = []
    number = 10001
    for category, ((low, high), names) in _CATALOGUE.items():
        for name in names:
            euros = Decimal(rng.randint(low, high))
            cents = Decimal(rng.choice(("0.00", "0.49", "0.50", "0.90", "0.95", "0.99")))
            products.append(_Product(f"SKU-{number}", name, category, euros + cents))
            number += 1
    return products


def _customers(rng: random.Random) -> list[dict[str, str]]:
    customers: list[dict[str, str]] = []
    for n in range(1, CUSTOMER_POOL_SIZE + 1):
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        local = f"{first}.{last}".lower().translate(_ASCII)
        customers.append(
            {
                "email": f"{local}.{n:03d}@example.com",
                "name": f"{first} {last}",
                "country": rng.choice(_CUSTOMER_COUNTRIES),
            }
        )
    return customers


def _price_changed(products: list[_Product], rng: random.Random) -> tuple[int, list[_Product]]:
    """From the second business date on, one product costs more (the export is a daily full snapshot)."""
    index = rng.randrange(len(products))
    old = products[index]
    new = _Product(old.sku, old.name, old.category, (old.list_price * Decimal("1.10")).quantize(_CENT))
    return index, [new if i == index else p for i, p in enumerate(products)]


# --- rates and orders ---------------------------------------------------------------------------------


def _money(value: Decimal) -> str:
    return str(value.quantize(_CENT, rounding=ROUND_HALF_UP))


def _iso(ts: datetime) -> str:
    return ts.isoformat()  # tz-aware UTC -> "...+00:00"


def _day_rates(rng: random.Random) -> dict[str, Decimal]:
    """The date's euros per unit of each quoted currency: its base moved by up to 1.5 %, six decimals."""
    return {
        currency: (base * (1 + Decimal(rng.randint(-1500, 1500)) / 100000)).quantize(
            _RATE_PLACES, rounding=ROUND_HALF_UP
        )
        for currency, base in FOREIGN_CURRENCIES.items()
    }


def _in_currency(order: dict[str, Any], currency: str, rate: Decimal) -> None:
    """Pay `order` in `currency`: its euro prices divided by `rate` (euros per unit), to the cent."""
    order["currency"] = currency
    for line in order["lines"]:
        line["unit_price"] = _money(Decimal(line["unit_price"]) / rate)


@dataclass(frozen=True)
class _Purchase:
    order: dict[str, Any]
    line: dict[str, Any]

    @property
    def pair(self) -> tuple[str, str]:
        return self.order["customer"]["email"], self.line["sku"]


def _customer_skus(orders: Iterable[Mapping[str, Any]]) -> Counter[tuple[str, str]]:
    return Counter((o["customer"]["email"], ln["sku"]) for o in orders if o["customer"] for ln in o["lines"])


def _returnable_purchases(records: list[dict[str, Any]], anomalies: Iterable[Anomaly]) -> list[_Purchase]:
    """Lines a later date may return: bought by a known customer on an order with no designed case, and the
    only line of that customer and sku on the date, so the purchase a return goes back to is unambiguous."""
    touched = {a.order_id for a in anomalies}
    pairs = _customer_skus(records)
    purchases = [
        _Purchase(r, ln) for r in records if r["customer"] and r["id"] not in touched for ln in r["lines"]
    ]
    return [p for p in purchases if p.line["quantity"] > 0 and pairs[p.pair] == 1]


def _day_orders(
    *,
    rng: random.Random,
    currency_rng: random.Random,
    business_date: date,
    products: list[_Product],
    customers: list[dict[str, str]],
    rates: Mapping[str, Decimal],
    earlier: list[_Purchase],
) -> tuple[list[dict[str, Any]], list[Anomaly]]:
    """The records the API serves for one date, in (created_at, id) order, with their anomalies.

    `earlier` holds the previous date's returnable purchases (empty on the first date): one of them is
    returned today. Currencies come from `currency_rng`, so the rest of the date does not depend on them.
    Long on purpose: it reads as the one sequence of draws from `rng` that the demo's data (and the
    figures its tests and README state) depend on; moving a draw changes every date after it.
    """
    count = rng.randint(*ORDERS_PER_DAY)
    day_start = datetime.combine(business_date, time(0), tzinfo=UTC)
    # The first order falls exactly on midnight and the last on 23:59:59, so a window filter that is not
    # [start, end) loses or double-counts them.
    offsets = sorted([0, 86399] + [rng.randrange(1, 86399) for _ in range(count - 2)])
    stamp = business_date.strftime("%Y%m%d")

    orders: list[dict[str, Any]] = []
    for n, offset in enumerate(offsets, start=1):
        created = day_start + timedelta(seconds=offset)
        customer = None if rng.random() < GUEST_SHARE else dict(rng.choice(customers))
        lines = []
        for line_number, product in enumerate(rng.sample(products, rng.randint(1, 4)), start=1):
            price = product.list_price
            if rng.random() < 0.1:  # a promotion: 20 % off
                price = price * Decimal("0.8")
            lines.append(
                {
                    "line_number": line_number,
                    "sku": product.sku,
                    "quantity": rng.choice((1, 1, 1, 1, 2, 2, 3, 4, 6)),
                    "unit_price": _money(price),
                }
            )
        orders.append(
            {
                "id": f"SO-{stamp}-{n:04d}",
                "created_at": _iso(created),
                "updated_at": _iso(created + timedelta(seconds=rng.randint(0, 600))),
                "store_id": rng.choice(_STORES)[0],
                "currency": REPORTING_CURRENCY,
                "customer": customer,
                "lines": lines,
            }
        )

    # Faults land on distinct orders, none of them the duplicated ones, so each is counted once. The last
    # target is the cross-date return's, used from the second date on.
    newer_index = rng.randrange(EXACT_DUPLICATE_POSITION + 1, count)
    free = [i for i in range(count) if i not in (EXACT_DUPLICATE_POSITION, newer_index)]
    targeted = rng.sample(free, 7)
    targets = iter(targeted)
    anomalies: list[Anomaly] = []

    # Currencies before the faults, which may make a price unparseable. Any other order may be foreign,
    # the duplicated ones included; the unquoted one carries no other fault, so missing_rate is its only
    # reason.
    unquoted_index = currency_rng.choice([i for i in free if i not in targeted])
    others = [i for i in range(count) if i != unquoted_index]
    for index in sorted(currency_rng.sample(others, round(count * FOREIGN_SHARE))):
        currency = currency_rng.choice(sorted(FOREIGN_CURRENCIES))
        _in_currency(orders[index], currency, rates[currency])
    unquoted = orders[unquoted_index]
    _in_currency(unquoted, UNQUOTED_CURRENCY, _UNQUOTED_RATE)

    def line_fault(kind: str, field_name: str, value: Any, detail: str) -> None:
        order = orders[next(targets)]
        line = rng.choice(order["lines"])
        line[field_name] = value
        anomalies.append(Anomaly(kind, order["id"], line["line_number"], detail))

    line_fault("unknown_sku", "sku", UNKNOWN_SKU, f"sku {UNKNOWN_SKU}")
    line_fault("zero_quantity", "quantity", 0, "quantity 0")
    comma_order = orders[next(targets)]
    comma_line = rng.choice(comma_order["lines"])
    comma_line["unit_price"] = comma_line["unit_price"].replace(".", ",")
    anomalies.append(
        Anomaly("unparseable_price", comma_order["id"], comma_line["line_number"], comma_line["unit_price"])
    )
    line_fault("unparseable_price", "unit_price", "abc", "abc")

    returned = orders[next(targets)]
    returned["lines"] = [dict(returned["lines"][0], quantity=-rng.randint(1, 2))]
    anomalies.append(Anomaly("return", returned["id"], 1, f"quantity {returned['lines'][0]['quantity']}"))

    stray = orders[next(targets)]
    stray["store_id"] = UNKNOWN_STORE
    anomalies.append(Anomaly("unknown_store", stray["id"], None, f"store_id {UNKNOWN_STORE}"))

    no_rate = f"currency {UNQUOTED_CURRENCY}, no rate on {business_date}"
    anomalies.append(Anomaly("missing_rate", unquoted["id"], None, no_rate))

    # A later version of one order: a customer changed a quantity after the first export saw it.
    older = orders[newer_index]
    newer = json.loads(json.dumps(older))
    newer["updated_at"] = _iso(datetime.fromisoformat(older["updated_at"]) + timedelta(hours=3))
    newer["lines"][0]["quantity"] += 1
    anomalies.append(Anomaly("newer_version", older["id"], None, f"updated_at {newer['updated_at']}"))

    duplicate = orders[EXACT_DUPLICATE_POSITION]
    anomalies.append(Anomaly("exact_duplicate", duplicate["id"], None, "same record twice"))

    if earlier:
        # A customer brings back some of what they bought on the previous date, at the same store and in the
        # same currency. They buy that sku on no other order today, so the only purchase the return can go
        # back to is the previous date's (a same-date link finds nothing).
        target = orders[next(targets)]
        today = _customer_skus(o for o in orders if o is not target)
        bought = rng.choice([p for p in earlier if p.pair not in today])
        quantity = -rng.randint(1, bought.line["quantity"])
        target.update(
            store_id=bought.order["store_id"],
            currency=bought.order["currency"],
            customer=dict(bought.order["customer"]),
            lines=[dict(bought.line, line_number=1, quantity=quantity)],
        )
        anomalies.append(
            Anomaly(
                "cross_date_return",
                target["id"],
                1,
                f"returns {bought.order['id']} line {bought.line['line_number']} "
                f"({bought.line['sku']}, quantity {quantity})",
                original_order_id=bought.order["id"],
            )
        )

    # Both extra records sort right after their originals (same created_at and id; the sort is stable).
    records = list(orders)
    records.insert(newer_index + 1, newer)
    records.insert(EXACT_DUPLICATE_POSITION + 1, json.loads(json.dumps(duplicate)))
    return records, anomalies


# --- files --------------------------------------------------------------------------------------------


def _write_products(path: Path, products: Iterable[_Product]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_MINIMAL)
        writer.writerow(PRODUCT_HEADERS)
        for p in products:
            writer.writerow((p.sku, p.name, p.category, _money(p.list_price)))


def _write_rates(path: Path, rates: Mapping[str, Decimal]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(RATES_HEADERS)
        for currency, rate in sorted(rates.items()):
            writer.writerow((currency, str(rate)))


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False))
            fh.write("\n")


def _store_rows() -> list[dict[str, Any]]:
    return [
        {"code": code, "name": name, "region": region, "address": {"city": city, "country": country}}
        for code, name, region, city, country in _STORES
    ]


def generate_demo_data(
    *, out_dir: Path, business_dates: Iterable[date], seed: int = DEMO_SEED
) -> DemoDataset:
    """Write the demo sources for `business_dates` (sorted, de-duplicated) under `out_dir`.

    A date's orders and rates depend only on `seed` and the date, so they are the same whichever other
    dates are generated with it, except for what follows from the date's position in the list: from the
    second date on, one product's list price has changed and one order returns a purchase of the
    previous date of the list. (One function: the files and their order are the demo's fixed sequence of
    draws, as in `_day_orders`.)
    """
    dates = sorted(set(business_dates))
    if not dates:
        raise ValueError("generate_demo_data needs at least one business date")
    out_dir = Path(out_dir)
    exports = out_dir / "exports"
    exports.mkdir(parents=True, exist_ok=True)

    # str seeds hash with SHA-512 inside random.Random: stable across processes and PYTHONHASHSEED.
    master_rng = random.Random(f"{seed}:master")
    products = _products(master_rng)
    customers = _customers(master_rng)
    changed_index, changed_products = _price_changed(products, master_rng)
    stores = _store_rows()

    days: list[DemoDay] = []
    all_records: list[dict[str, Any]] = []
    files: list[Path] = []
    purchases: list[_Purchase] = []
    for position, business_date in enumerate(dates):
        day_products = products if position == 0 else changed_products
        rates = _day_rates(random.Random(f"{seed}:rates:{business_date.isoformat()}"))
        stamp = business_date.strftime("%Y%m%d")
        products_path = exports / f"products_{stamp}.csv"
        stores_path = exports / f"stores_{stamp}.jsonl"
        rates_path = exports / f"rates_{stamp}.csv"
        _write_products(products_path, day_products)
        _write_jsonl(stores_path, stores)
        _write_rates(rates_path, rates)
        files += [products_path, stores_path, rates_path]

        records, anomalies = _day_orders(
            rng=random.Random(f"{seed}:orders:{business_date.isoformat()}"),
            currency_rng=random.Random(f"{seed}:currency:{business_date.isoformat()}"),
            business_date=business_date,
            products=day_products,
            customers=customers,
            rates=rates,
            earlier=purchases,
        )
        purchases = _returnable_purchases(records, anomalies)
        all_records += records
        days.append(
            DemoDay(
                business_date=business_date,
                products_path=products_path,
                stores_path=stores_path,
                rates_path=rates_path,
                rates=tuple(sorted(rates.items())),
                orders=len({r["id"] for r in records}),
                records=len(records),
                lines=sum(len(r["lines"]) for r in records),
                unique_lines=len({(r["id"], ln["line_number"]) for r in records for ln in r["lines"]}),
                guest_orders=len({r["id"] for r in records if r["customer"] is None}),
                foreign_orders=len({r["id"] for r in records if r["currency"] != REPORTING_CURRENCY}),
                anomalies=tuple(anomalies),
            )
        )

    orders_path = out_dir / ORDERS_FILENAME
    _write_jsonl(orders_path, all_records)
    files.append(orders_path)
    old, new = products[changed_index], changed_products[changed_index]
    price_changes = [PriceChange(old.sku, old.list_price, new.list_price, from_date=d) for d in dates[1:2]]
    return DemoDataset(
        out_dir=out_dir,
        orders_path=orders_path,
        days=tuple(days),
        products=len(products),
        stores=len(stores),
        customers=len(customers),
        seed=seed,
        files=tuple(files),
        price_changes=tuple(price_changes),
    )


def ensure_demo_data(
    *, out_dir: Path, business_dates: Iterable[date] = DEMO_BUSINESS_DATES, seed: int = DEMO_SEED
) -> tuple[Path, bool]:
    """The demo `orders.jsonl` under `out_dir`, generated first if it or a date's export is missing (e.g.
    data written by an older version without rates). Returns (path, generated)."""
    business_dates = tuple(business_dates)
    orders_path = Path(out_dir) / ORDERS_FILENAME
    exports = Path(out_dir) / "exports"
    expected = [
        exports / f"{name}_{d:%Y%m%d}.{ext}"
        for d in business_dates
        for name, ext in (("products", "csv"), ("stores", "jsonl"), ("rates", "csv"))
    ]
    if orders_path.is_file() and all(p.is_file() for p in expected):
        return orders_path, False
    return generate_demo_data(out_dir=out_dir, business_dates=business_dates, seed=seed).orders_path, True
