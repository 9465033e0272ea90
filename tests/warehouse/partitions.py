"""Build transform outputs by hand, in the exact schemas the Spark job writes (docs/architecture.md)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from spark_jobs.contract import SALES_DAILY, arrow_schema

# The job's declared outputs (spark_jobs/contract.py), as Arrow schemas.
SCHEMAS = {output.name: arrow_schema(output) for output in SALES_DAILY.outputs}

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
