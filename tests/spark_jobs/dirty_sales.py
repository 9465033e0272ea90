"""A generated date of the demo pipeline with every kind of dirt its rules catch, for comparing engines.

`dirty_sales_spec(folder)` stages one business date of `retail_demo`'s four datasets (every value text,
order lines in two files) and returns the job spec the transform step would write for it, from the real
pipeline file. Seeded: the same arguments give the same rows. About 5 % of the order lines are dirty, the
kinds taking turns so each appears a few hundred times in 100k lines: prices and quantities that do not
parse or break a rule (commas, exponents, too many places, other scripts' digits), blank and missing
required values, unknown products and stores, exact duplicates, newer versions and same-version conflicts,
currencies without a usable rate, lower-case or padded currencies, text longer than the warehouse holds,
malformed or impossible timestamps, Unicode spaces, non-ISO countries, amounts beyond decimal(18,2) and
awkward e-mails. Clean lines include returns (some of a purchase the same customer made earlier that
day), guests, half-cent amounts, foreign currencies and orders timed on the neighbouring dates.
E-mails are staged in clear (as partitions extracted before pseudonymisation at extraction): the job makes
the pseudonyms, so the engines' HMACs and text cleaning are compared too.
"""

from __future__ import annotations

import base64
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.models import DimCustomer, DimProduct, DimStore, FactSalesLine

DAY = date(2026, 11, 1)
PIPELINE = "retail_demo"
SEED = 20261101
DIRTY_SHARE = 0.05
PRODUCTS, STORES, CUSTOMERS = 400, 12, 4_000
RATES = [
    ("GBP", "1.158119"),
    ("USD", "0.92155"),
    ("JPY", "abc"),  # invalid: JPY lines find no rate
    ("CHF", "0"),  # non_positive_rate: CHF lines find no rate
    ("usd", "0.9"),  # currency_not_iso
    ("GBP", "1.158119"),  # exact duplicate
]
ORDER_ID_MAX = FactSalesLine._meta.get_field("order_id").max_length
SKU_MAX = FactSalesLine._meta.get_field("stock_code").max_length
COUNTRY_MAX = DimCustomer._meta.get_field("country").max_length
NAME_MAX = DimProduct._meta.get_field("name").max_length
STORE_CODE_MAX = DimStore._meta.get_field("store_code").max_length

TRICKY_EMAILS = [
    "  Mixed.Case@Example.COM ",
    "\ttab@x.org\r\n",
    "two  spaces@x.org",
    "\u00a0nbsp@x.org\u2003",
    "Zoë@Exämple.de",
    "İSTANBUL@x.tr",
    "ΟΔΟΣ@x.gr",
    "STRASSE@ß.de",
    "line\u2028sep@x.org",
    "\x1cinfo@x.org",
    "   ",
    "",
]
BAD_PRICES = [
    "12,50",
    "abc",
    "1e3",
    "1E-2",
    "1.23456",
    "１２.５０",
    "٣.٥",
    "0x10",
    "NaN",
    "Infinity",
    "--1",
    "1.2.3",
]
ODD_VALID_PRICES = ["+5.00", ".5", "5.", "0.333500", "-0", "007.10", " 4.20 ", "\u00a03.30\u2003"]
BAD_QUANTITIES = ["2.5", "1e2", "x", "3.0", "2147483648", "-2147483649", "٣", "0x1", "1,000", "+-1"]
ODD_VALID_QUANTITIES = ["+3", "007", " 2 ", "\u20032"]
BAD_TIMESTAMPS = [
    "2026-13-01T00:00:00Z",
    "2026-02-30T10:00:00Z",
    "2026-11-01T24:00:00Z",
    "2026-11-01T09:60:00Z",
    "yesterday",
    "2026-11-01",
    "01/11/2026 09:00",
    "2026-11-01T09:00:00+25:00",
    "2026-11-01T09:00:00 Z",
    "１２",
]
ODD_VALID_TIMESTAMPS = [
    "2026-11-01 09:15",
    "2026-11-01T09:15:00.123456789Z",
    "2026-11-01T09:15:00.5+01:00",
    "2026-11-01T09:15:00+0100",
    "2026-11-01T09:15:00-03",
    "2026-11-01T23:59:59.999999-05:00",
    "2026-10-31T23:30:00Z",
]
# Unicode's white space (Java's \s under (?U)), and look-alikes that are not: zero-width space, BOM,
# Mongolian vowel separator, information separator four.
SPACES = [
    "\u00a0",
    "\u2003",
    "\t",
    " ",
    "\u3000",
    "\u2009",
    "\x85",
    "\u2028",
    "\u200b",
    "\ufeff",
    "\u180e",
    "\x1c",
]
BLANKS = [None, "", "   ", "\u00a0", "\t"]
REQUIRED = ("order_id", "line_number", "ordered_at", "updated_at", "store_code", "sku", "quantity")
REQUIRED += ("unit_price", "currency")


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _token(rng: random.Random) -> str:
    # Shaped like a Fernet token; the job passes it through and never decrypts it.
    return "gAAAAAB" + base64.urlsafe_b64encode(rng.getrandbits(240).to_bytes(30, "big")).decode("ascii")


def _products(rng: random.Random) -> list[dict]:
    rows = [
        {
            "sku": f"P{i:04d}",
            "name": f"Product {i}",
            "category": f"Category {i % 9}" if i % 7 else None,
            "list_price": f"{1 + i % 90}.{i % 100:02d}",
        }
        for i in range(PRODUCTS)
    ]
    rows[3]["name"] = "  Double  spaced\u00a0 name\u2003"
    rows[4]["name"] = "x" * (NAME_MAX - 1) + "\u00a0"  # fits once trimmed
    rows[5]["list_price"] = "1.005"  # decimal(18,2): one place too many
    dirty = [
        dict(rows[10]),  # exact duplicate
        {**rows[11], "name": "Product 11 (renamed)"},  # same key, no version: the tie is broken by record
        {"sku": "P9000", "name": None, "list_price": "1.00"},  # missing_name
        {"sku": "P9001", "name": "Negative", "list_price": "-1.00"},  # negative_list_price
        {"sku": "P9002", "name": "Comma", "list_price": "9,90"},  # invalid_list_price
        {"sku": "P9003", "name": "n" * (NAME_MAX + 1)},  # too_long_name
        {"sku": "\u00a0P9004 ", "name": "Padded sku"},
        {"sku": "   ", "name": "Blank sku"},  # missing_sku
    ]
    rows += dirty
    rng.shuffle(rows)
    return rows


def _stores() -> list[dict]:
    rows = [
        {
            "store_code": f"S{i:02d}",
            "name": f"Store {i}",
            "city": f"City {i % 5}",
            "region": "R",
            "country": "FR",
        }
        for i in range(STORES)
    ]
    rows[2]["name"] = "\u2003Spaced\u00a0\u00a0Store "
    rows += [
        dict(rows[1]),
        {"store_code": "S90", "name": None},
        {"store_code": "S" * (STORE_CODE_MAX + 1), "name": "Long"},
    ]
    return rows


class _Lines:
    """Clean order lines, then dirt applied to a share of them."""

    def __init__(self, rng: random.Random, rows: int) -> None:
        self.rng = rng
        self.rows: list[dict] = []
        self.emails = [f"customer{i}@example.com" for i in range(CUSTOMERS)]
        start = datetime.combine(DAY, datetime.min.time(), UTC)
        order = 0
        while len(self.rows) < rows:
            order += 1
            at = start + timedelta(seconds=rng.randrange(86_400))
            if rng.random() < 0.01:  # timed on a neighbouring date: its own business date
                at += timedelta(days=rng.choice((-1, 1)))
            guest = rng.random() < 0.10
            customer = rng.randrange(CUSTOMERS)
            currency = rng.choices(["EUR", "GBP", "USD"], [0.9, 0.07, 0.03])[0]
            for number in range(1, rng.randint(1, 4) + 1):
                quantity = rng.randint(1, 5) * (-1 if rng.random() < 0.03 else 1)
                cents = rng.randrange(50, 20_000)
                self.rows.append(
                    {
                        "order_id": f"O{order:07d}",
                        "line_number": str(number),
                        "ordered_at": _iso(at),
                        "updated_at": _iso(at + timedelta(minutes=1)),
                        "store_code": f"S{order % STORES:02d}",
                        "customer_email": None if guest else self.emails[customer],
                        "customer_email_encrypted": None if guest else _token(rng),
                        "customer_country": None if guest else ("FR", "DE", "BE", "NL")[customer % 4],
                        "sku": f"P{rng.randrange(PRODUCTS):04d}",
                        "quantity": str(quantity),
                        # Half a cent after multiplying by an odd quantity: HALF_UP must round up.
                        "unit_price": f"{cents // 100}.{cents % 100:02d}"
                        + ("50" if rng.random() < 0.02 else ""),
                        "currency": currency,
                    }
                )
        del self.rows[rows:]
        self._returns_of_purchases(start)

    def _returns_of_purchases(self, start: datetime) -> None:
        """Every hundredth line, when a customer's purchase: the next line becomes its customer's return of
        two of the item an hour later (the job links it to the purchase)."""
        end = start + timedelta(hours=23, minutes=59)
        for i in range(0, len(self.rows) - 1, 100):
            row = self.rows[i]
            if row["customer_email"] is None or row["quantity"].startswith("-"):
                continue
            later = datetime.strptime(row["ordered_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            later = min(later + timedelta(hours=1), end)
            self.rows[i + 1] = {
                **row,
                "order_id": f"R{i:07d}",
                "line_number": "1",
                "ordered_at": _iso(later),
                "updated_at": _iso(later),
                "quantity": "-2",
            }

    def dirty(self, share: float) -> None:
        kinds = [getattr(self, name) for name in sorted(dir(self)) if name.startswith("_dirt_")]
        picks = self.rng.sample(range(len(self.rows)), int(len(self.rows) * share))
        picked = set(picks)
        extra: list[dict] = []
        for n, i in enumerate(picks):
            kind = kinds[n % len(kinds)]
            added = kind(self.rows[i])
            if added:
                extra.append(added)
        # Copies replace clean lines, so the date keeps its size.
        for row, i in zip(extra, self.rng.sample(range(len(self.rows)), len(extra)), strict=True):
            if i not in picked:
                self.rows[i] = row

    # Each _dirt_ changes a line in place or returns a further line (a copy or a version of it).
    def _dirt_price_unparsable(self, row: dict) -> None:
        row["unit_price"] = self.rng.choice(BAD_PRICES)

    def _dirt_price_odd_but_valid(self, row: dict) -> None:
        row["unit_price"] = self.rng.choice(ODD_VALID_PRICES)

    def _dirt_price_negative(self, row: dict) -> None:
        row["unit_price"] = "-" + row["unit_price"]

    def _dirt_quantity_unparsable(self, row: dict) -> None:
        row["quantity"] = self.rng.choice(BAD_QUANTITIES)

    def _dirt_quantity_odd_but_valid(self, row: dict) -> None:
        row["quantity"] = self.rng.choice(ODD_VALID_QUANTITIES)

    def _dirt_quantity_zero(self, row: dict) -> None:
        row["quantity"] = self.rng.choice(["0", "-0", "00", "+0"])

    def _dirt_line_number(self, row: dict) -> None:
        row["line_number"] = self.rng.choice(["1.5", "one", "-1", "99999999999", " 7 "])

    def _dirt_missing_required(self, row: dict) -> None:
        row[self.rng.choice(REQUIRED)] = self.rng.choice(BLANKS)

    def _dirt_unknown_product(self, row: dict) -> None:
        row["sku"] = self.rng.choice(["P9999", "P9000", "p0001", "P9002"])  # P900x: rejected products

    def _dirt_unknown_store(self, row: dict) -> None:
        row["store_code"] = self.rng.choice(["S99", "S90", "s01"])

    def _dirt_exact_duplicate(self, row: dict) -> dict:
        return dict(row)

    def _dirt_newer_version(self, row: dict) -> dict:
        return {**row, "updated_at": _iso(datetime(2026, 11, 2, 1, tzinfo=UTC)), "quantity": "7"}

    def _dirt_duplicate_of_a_rejected_line(self, row: dict) -> dict:
        row["unit_price"] = "abc"
        return dict(row)

    def _dirt_same_version_conflict(self, row: dict) -> dict:
        return {
            **row,
            "quantity": str(int(row["quantity"]) + 1) if row["quantity"].lstrip("-").isdigit() else "1",
        }

    def _dirt_currency_without_rate(self, row: dict) -> None:
        row["currency"] = self.rng.choice(["CHF", "JPY", "XXX", "EURO", "usd", "€"])

    def _dirt_currency_case_and_spaces(self, row: dict) -> None:
        row["currency"] = self.rng.choice(["eur", "gbp", " USD ", "Eur", "\u00a0GBP", "ＥＵＲ"])

    def _dirt_too_long_text(self, row: dict) -> None:
        column, limit = self.rng.choice(
            [("order_id", ORDER_ID_MAX), ("customer_country", COUNTRY_MAX), ("sku", SKU_MAX)]
        )
        row[column] = "Z" * limit + (row[column] or "X")  # each line its own value

    def _dirt_timestamp_bad(self, row: dict) -> None:
        row[self.rng.choice(["ordered_at", "updated_at"])] = self.rng.choice(BAD_TIMESTAMPS)

    def _dirt_timestamp_odd_but_valid(self, row: dict) -> None:
        row["ordered_at"] = self.rng.choice(ODD_VALID_TIMESTAMPS)

    def _dirt_unicode_spaces(self, row: dict) -> None:
        column = self.rng.choice(["sku", "store_code", "order_id", "customer_country", "currency"])
        if row[column]:
            row[column] = self.rng.choice(SPACES) + row[column] + self.rng.choice(SPACES)

    def _dirt_country_not_iso(self, row: dict) -> None:
        row["customer_country"] = self.rng.choice(["fr", "France", "F R", "ÉS"])

    def _dirt_amount_out_of_range(self, row: dict) -> None:
        row["quantity"], row["unit_price"] = "2000000000", "99999999999999.0000"

    def _dirt_tricky_email(self, row: dict) -> None:
        row["customer_email"] = self.rng.choice(TRICKY_EMAILS)

    def _dirt_guest_with_country(self, row: dict) -> None:
        row["customer_email"], row["customer_email_encrypted"] = None, None


def _write(path: Path, rows: list[dict], columns: list[str]) -> Path:
    table = pa.table({c: pa.array([r.get(c) for r in rows], pa.string()) for c in columns})
    pq.write_table(table, path, row_group_size=20_000)
    return path


def dirty_sales_spec(folder: Path, *, rows: int = 100_000, seed: int = SEED) -> dict:
    """Stage the generated date under `folder`; the job spec whose output_dir is `folder / "out"`."""
    from etlcore.config import pipeline_load
    from etlcore.services.transform import job_spec

    rng = random.Random(seed)
    lines = _Lines(rng, rows)
    lines.dirty(DIRTY_SHARE)
    rng.shuffle(lines.rows)
    staged = {
        "order_lines": lines.rows,
        "products": _products(rng),
        "stores": _stores(),
        "rates": [{"currency": c, "rate": r} for c, r in RATES],
    }
    config = pipeline_load(PIPELINE)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[list[Path], int]] = {}
    for name, data in staged.items():
        columns = [c.name for c in config.datasets[name].columns]
        halves = [data[: len(data) // 2], data[len(data) // 2 :]] if name == "order_lines" else [data]
        paths = [_write(folder / f"{name}-{n}.parquet", part, columns) for n, part in enumerate(halves)]
        files[name] = (paths, len(data))
    spec = job_spec(config, business_date=DAY, staged=files, output_dir=folder / "out")
    # Beyond the demo's own rules: a filter, a conditional warning and a uniqueness check, so the engines'
    # accounting of every severity and check is compared on this date too.
    spec["inputs"]["order_lines"]["rules"] += [
        {"code": "staff_order", "check": "pattern", "severity": "filter", "column": "order_id",
         "pattern": "O00001[0-9]{2}", "negate": True},
        {"code": "big_foreign_line", "check": "range", "severity": "warn", "column": "quantity", "max": "4",
         "when": "currency in ('GBP', 'USD')"},
        {"code": "sku_once_per_order", "check": "unique", "severity": "warn", "columns": ["order_id", "sku"]},
    ]  # fmt: skip
    return spec
