"""Build transform outputs by hand, in the exact schemas the Spark job writes (docs/architecture.md)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMAS = {
    "sales_lines": pa.schema(
        [
            ("order_id", pa.string()),
            ("line_number", pa.int32()),
            ("business_date", pa.date32()),
            ("ordered_at", pa.timestamp("us", tz="UTC")),
            ("store_code", pa.string()),
            ("sku", pa.string()),
            ("customer_key", pa.string()),
            ("quantity", pa.int32()),
            ("unit_price", pa.decimal128(18, 4)),
            ("amount", pa.decimal128(18, 2)),
            ("currency", pa.string()),
            ("is_return", pa.bool_()),
            ("stock_code", pa.string()),
            ("line_type", pa.string()),
            ("amount_reporting", pa.decimal128(18, 2)),
            ("original_order_id", pa.string()),
            ("source_version", pa.int64()),
        ]
    ),
    "products": pa.schema(
        [
            ("sku", pa.string()),
            ("name", pa.string()),
            ("category", pa.string()),
            ("list_price", pa.decimal128(18, 2)),
        ]
    ),
    "stores": pa.schema(
        [
            ("store_code", pa.string()),
            ("name", pa.string()),
            ("city", pa.string()),
            ("region", pa.string()),
            ("country", pa.string()),
        ]
    ),
    "customers": pa.schema(
        [
            ("customer_key", pa.string()),
            ("country", pa.string()),
            ("country_seen_at", pa.timestamp("us", tz="UTC")),
        ]
    ),
    "quarantine": pa.schema(
        [
            ("dataset", pa.string()),
            ("reason_code", pa.string()),
            ("message", pa.string()),
            ("raw_record", pa.string()),
            ("record_fingerprint", pa.string()),
        ]
    ),
}

DAY = date(2026, 11, 1)


def sale(
    order_id: str,
    line: int,
    sku: str = "P1",
    qty: int = 2,
    price: str = "9.99",
    store: str = "S1",
    customer: str | None = "c" * 64,
    day: date = DAY,
    line_type: str = "product",
    original: str | None = None,
    currency: str = "EUR",
    rate: str = "1",
    version: int = 1,
) -> dict:
    """One sales line; a non-product line has no product (``sku`` None) and keeps its code."""
    unit = Decimal(price)
    amount = (unit * qty).quantize(Decimal("0.01"), ROUND_HALF_UP)
    return {
        "order_id": order_id,
        "line_number": line,
        "business_date": day,
        "ordered_at": datetime(day.year, day.month, day.day, 10, 30, tzinfo=UTC),
        "store_code": store,
        "sku": sku if line_type == "product" else None,
        "customer_key": customer,
        "quantity": qty,
        "unit_price": unit,
        "amount": amount,
        "currency": currency,
        "is_return": qty < 0,
        "stock_code": sku,
        "line_type": line_type,
        "amount_reporting": (amount * Decimal(rate)).quantize(Decimal("0.01"), ROUND_HALF_UP),
        "original_order_id": original,
        "source_version": version,
    }


def daily_from(lines: list[dict]) -> list[dict]:
    groups: dict[tuple, dict] = {}
    for r in lines:
        if r["line_type"] != "product":
            continue
        g = groups.setdefault(
            (r["business_date"], r["store_code"], r["sku"]),
            {
                "business_date": r["business_date"],
                "store_code": r["store_code"],
                "sku": r["sku"],
                "quantity": 0,
                "revenue": Decimal("0.00"),
                "line_count": 0,
                "orders": set(),
            },
        )
        g["quantity"] += r["quantity"]
        g["revenue"] += r["amount_reporting"]
        g["line_count"] += 1
        g["orders"].add(r["order_id"])
    return [
        {**{k: v for k, v in g.items() if k != "orders"}, "order_count": len(g["orders"])}
        for g in groups.values()
    ]


def default_outputs(lines: list[dict]) -> dict[str, list[dict]]:
    return {
        "sales_lines": lines,
        "products": [
            {"sku": "P1", "name": "Mug", "category": "Kitchen", "list_price": Decimal("9.99")},
            {"sku": "P2", "name": "Tea, green", "category": None, "list_price": None},
        ],
        "stores": [
            {"store_code": "S1", "name": "Paris Rivoli", "city": "Paris", "region": "West", "country": "FR"}
        ],
        "customers": [{"customer_key": "c" * 64, "country": "FR"}],
        "quarantine": [
            {
                "dataset": "order_lines",
                "reason_code": "unknown_product",
                "message": "sku X9 is not a product",
                "raw_record": '{"sku":"X9"}',
                "record_fingerprint": "f" * 64,
            },
        ],
    }


def history_outputs(
    day: date, *, price: str = "9.99", region: str | None = "West", name: str = "Mug"
) -> dict:
    """A date whose product P1 and store S1 have the tracked attributes the test chooses, and whose
    product P2 and store S2 never change; one line of each product."""
    outputs = default_outputs(
        [
            sale(f"O{day:%m%d}", 1, price=price, day=day),
            sale(f"O{day:%m%d}", 2, sku="P2", store="S2", day=day),
        ]
    )
    outputs["products"][0] |= {"name": name, "list_price": Decimal(price)}
    outputs["stores"][0]["region"] = region
    outputs["stores"].append(
        {"store_code": "S2", "name": "Lyon", "city": "Lyon", "region": "South", "country": "FR"}
    )
    return outputs


def without(outputs: dict[str, list[dict]], sku: str) -> dict[str, list[dict]]:
    """The outputs of a date on which product `sku` was neither exported nor sold."""
    return {
        name: [r for r in rows if r.get("sku") != sku] if name in ("products", "sales_lines") else rows
        for name, rows in outputs.items()
    }


def write_outputs(folder: Path, outputs: dict[str, list[dict]]) -> dict[str, list[Path]]:
    paths = {}
    for name, schema in SCHEMAS.items():
        path = folder / name / "part-00000.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(outputs.get(name, []), schema=schema), path)
        paths[name] = [path]
    return paths
