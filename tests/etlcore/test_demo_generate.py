from __future__ import annotations

import csv
import json
import re
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pytest

from etlcore.demo.generate import (
    DEMO_BUSINESS_DATES,
    EXACT_DUPLICATE_POSITION,
    PRODUCT_HEADERS,
    RATES_HEADERS,
    UNKNOWN_SKU,
    UNKNOWN_STORE,
    UNQUOTED_CURRENCY,
    Anomaly,
    DemoDataset,
    ensure_demo_data,
    generate_demo_data,
)

MONEY = re.compile(r"^-?\d+\.\d{2}$")
RATE = re.compile(r"^\d+\.\d{6}$")
CENT = Decimal("0.01")
EXPECTED_ANOMALIES = {
    "newer_version": 1,
    "exact_duplicate": 1,
    "unknown_sku": 1,
    "zero_quantity": 1,
    "unparseable_price": 2,
    "return": 1,
    "unknown_store": 1,
    "missing_rate": 1,
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    out_dir = tmp_path_factory.mktemp("demo")
    return generate_demo_data(out_dir=out_dir, business_dates=list(DEMO_BUSINESS_DATES))


@pytest.fixture(scope="module")
def records_by_date(demo: DemoDataset) -> dict[date, list[dict[str, Any]]]:
    grouped: dict[date, list[dict[str, Any]]] = defaultdict(list)
    for line in demo.orders_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        grouped[datetime.fromisoformat(record["created_at"]).date()].append(record)
    return dict(grouped)


def read_products(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def read_rates(path: Path) -> dict[str, str]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == RATES_HEADERS == ("currency", "rate")
        return {row["currency"]: row["rate"] for row in reader}


def read_stores(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def is_decimal(text: str) -> bool:
    try:
        Decimal(text)
    except InvalidOperation:
        return False
    return True


def test_same_arguments_write_byte_identical_files(tmp_path: Path) -> None:
    first = generate_demo_data(out_dir=tmp_path / "a", business_dates=list(DEMO_BUSINESS_DATES))
    second = generate_demo_data(out_dir=tmp_path / "b", business_dates=list(DEMO_BUSINESS_DATES))

    names = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert len(names) == 10  # orders.jsonl + a products, a stores and a rates export per date
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name

    def summary(ds: DemoDataset) -> list[tuple]:
        return [
            (
                d.business_date,
                d.orders,
                d.records,
                d.lines,
                d.guest_orders,
                d.foreign_orders,
                d.rates,
                d.anomalies,
            )
            for d in ds.days
        ]

    assert summary(first) == summary(second)
    assert first.price_changes == second.price_changes


def test_another_seed_gives_other_orders(tmp_path: Path) -> None:
    a = generate_demo_data(out_dir=tmp_path / "a", business_dates=[date(2026, 11, 1)], seed=1)
    b = generate_demo_data(out_dir=tmp_path / "b", business_dates=[date(2026, 11, 1)], seed=2)
    assert a.orders_path.read_bytes() != b.orders_path.read_bytes()


def test_a_dates_orders_do_not_depend_on_the_other_dates_generated(tmp_path: Path, demo: DemoDataset) -> None:
    first = DEMO_BUSINESS_DATES[0]
    alone = generate_demo_data(out_dir=tmp_path, business_dates=[first])
    together = [
        line
        for line in demo.orders_path.read_text(encoding="utf-8").splitlines()
        if json.loads(line)["created_at"].startswith(first.isoformat())
    ]
    assert alone.orders_path.read_text(encoding="utf-8").splitlines() == together


def test_no_business_date_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one business date"):
        generate_demo_data(out_dir=tmp_path, business_dates=[])


def test_demo_dates_are_three_consecutive_days() -> None:
    assert len(DEMO_BUSINESS_DATES) == 3
    assert [d - DEMO_BUSINESS_DATES[0] for d in DEMO_BUSINESS_DATES] == [timedelta(days=i) for i in range(3)]


def test_store_export_has_eight_stores_in_three_regions_with_nested_address(demo: DemoDataset) -> None:
    for day in demo.days:
        stores = read_stores(day.stores_path)
        assert len(stores) == demo.stores == 8
        assert {s["region"] for s in stores} == {"North", "West", "South"}
        assert 2 <= len({s["address"]["country"] for s in stores}) <= 3
        assert all(set(s) == {"code", "name", "region", "address"} for s in stores)
        assert all(set(s["address"]) == {"city", "country"} for s in stores)
        assert len({s["code"] for s in stores}) == 8


def test_product_export_has_the_contract_headers_and_quoted_awkward_names(demo: DemoDataset) -> None:
    path = demo.days[0].products_path
    with path.open(encoding="utf-8", newline="") as fh:
        header = tuple(next(csv.reader(fh)))
    assert header == PRODUCT_HEADERS == ("SKU", "Product Name", "Category", "List Price")
    products = read_products(path)
    assert len(products) == demo.products == 60
    assert len({p["SKU"] for p in products}) == 60
    assert 4 <= len({p["Category"] for p in products}) <= 6
    assert all(MONEY.match(p["List Price"]) and Decimal(p["List Price"]) > 0 for p in products)
    names = {p["Product Name"] for p in products}
    assert any("," in n for n in names), "a name with a comma exercises CSV quoting"
    assert any("  " in n for n in names), "a name with a double space must survive the reader"
    text = path.read_text(encoding="utf-8")
    assert '"Single Origin, Limited Edition 200g"' in text


def test_one_list_price_changes_from_the_second_date_on_and_is_recorded(
    demo: DemoDataset, records_by_date: dict[date, list[dict[str, Any]]]
) -> None:
    prices = [{p["SKU"]: p["List Price"] for p in read_products(d.products_path)} for d in demo.days]
    changed = [sku for sku in prices[0] if prices[0][sku] != prices[1][sku]]
    assert len(changed) == 1
    assert Decimal(prices[1][changed[0]]) > Decimal(prices[0][changed[0]])
    assert prices[1] == prices[2]
    (change,) = demo.price_changes
    assert change.sku == changed[0] and change.from_date == DEMO_BUSINESS_DATES[1]
    assert (change.old_list_price, change.new_list_price) == (
        Decimal(prices[0][change.sku]),
        Decimal(prices[1][change.sku]),
    )
    # The later dates sell it at the new price (in euros: list price, or 20 % off), so the sales reference
    # the product's new version.
    for day in demo.days[1:]:
        euro_prices = {
            ln["unit_price"]
            for r in records_by_date[day.business_date]
            if r["currency"] == "EUR"
            for ln in r["lines"]
            if ln["sku"] == change.sku and ln["quantity"] > 0
        }
        assert euro_prices and euro_prices <= {
            str(change.new_list_price),
            str((change.new_list_price * Decimal("0.8")).quantize(CENT, ROUND_HALF_UP)),
        }


def test_one_date_alone_records_no_price_change(tmp_path: Path) -> None:
    assert generate_demo_data(out_dir=tmp_path, business_dates=[date(2026, 11, 2)]).price_changes == ()


def test_counts_reported_per_date_match_the_orders_file(
    demo: DemoDataset, records_by_date: dict[date, list[dict[str, Any]]]
) -> None:
    assert sorted(records_by_date) == list(DEMO_BUSINESS_DATES)
    for day in demo.days:
        records = records_by_date[day.business_date]
        assert 150 <= day.orders <= 250
        assert day.orders == len({r["id"] for r in records})
        assert day.records == len(records) == day.orders + 2  # a newer version and an exact duplicate
        assert day.lines == sum(len(r["lines"]) for r in records)
        assert day.unique_lines == len({(r["id"], ln["line_number"]) for r in records for ln in r["lines"]})
        assert day.guest_orders == len({r["id"] for r in records if r["customer"] is None})
    assert demo.orders_per_date == {d.business_date: d.orders for d in demo.days}
    assert demo.lines_per_date == {d.business_date: d.lines for d in demo.days}


def test_orders_have_the_api_shape_and_lie_inside_their_date(
    records_by_date: dict[date, list[dict[str, Any]]],
) -> None:
    for business_date, records in records_by_date.items():
        for r in records:
            assert list(r) == ["id", "created_at", "updated_at", "store_id", "currency", "customer", "lines"]
            assert r["id"].startswith(f"SO-{business_date:%Y%m%d}-")
            created = datetime.fromisoformat(r["created_at"])
            assert r["created_at"].endswith("+00:00") and r["updated_at"].endswith("+00:00")
            assert created.date() == business_date and created.tzinfo == UTC
            assert datetime.fromisoformat(r["updated_at"]) >= created
            assert r["currency"] in ("EUR", "GBP", "USD", UNQUOTED_CURRENCY)
            assert r["customer"] is None or set(r["customer"]) == {"email", "name", "country"}
            assert 1 <= len(r["lines"]) <= 4
            assert [ln["line_number"] for ln in r["lines"]] == list(range(1, len(r["lines"]) + 1))
            assert all(isinstance(ln["unit_price"], str) for ln in r["lines"])
        # Window edges are populated: one order exactly at midnight, one in the last second.
        assert records[0]["created_at"] == f"{business_date.isoformat()}T00:00:00+00:00"
        assert records[-1]["created_at"] == f"{business_date.isoformat()}T23:59:59+00:00"
        assert records == sorted(records, key=lambda r: (r["created_at"], r["id"]))


def test_about_ten_percent_of_orders_are_guests_from_a_pool_of_customers(
    demo: DemoDataset, records_by_date: dict[date, list[dict[str, Any]]]
) -> None:
    emails = set()
    for day in demo.days:
        assert 0.04 <= day.guest_orders / day.orders <= 0.16
        emails |= {r["customer"]["email"] for r in records_by_date[day.business_date] if r["customer"]}
    assert demo.customers == 300
    assert 200 <= len(emails) <= 300  # customers come back across days


def test_each_date_carries_the_designed_anomalies(demo: DemoDataset) -> None:
    first, *later = demo.days
    assert first.anomaly_counts() == EXPECTED_ANOMALIES  # nothing earlier to return
    for day in later:
        assert day.anomaly_counts() == EXPECTED_ANOMALIES | {"cross_date_return": 1}
    for day in demo.days:
        # Each fault sits on its own order, so the counts translate one-to-one into rejected rows.
        assert len({a.order_id for a in day.anomalies}) == len(day.anomalies)


def test_anomalies_are_in_the_records_as_described(
    demo: DemoDataset, records_by_date: dict[date, list[dict[str, Any]]]
) -> None:
    skus = {p["SKU"] for p in read_products(demo.days[0].products_path)}
    stores = {s["code"] for s in read_stores(demo.days[0].stores_path)}
    for day in demo.days:
        records = records_by_date[day.business_date]
        by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in records:
            by_id[r["id"]].append(r)

        def line(anomaly: Anomaly, by_id: dict[str, list[dict[str, Any]]] = by_id) -> dict[str, Any]:
            (record,) = by_id[anomaly.order_id]
            assert anomaly.line_number is not None
            return record["lines"][anomaly.line_number - 1]

        kinds: dict[str, list[Anomaly]] = defaultdict(list)
        for a in day.anomalies:
            kinds[a.kind].append(a)

        assert line(kinds["unknown_sku"][0])["sku"] == UNKNOWN_SKU
        assert UNKNOWN_SKU not in skus
        assert line(kinds["zero_quantity"][0])["quantity"] == 0
        bad_prices = sorted(line(a)["unit_price"] for a in kinds["unparseable_price"])
        assert bad_prices[1] == "abc" and re.fullmatch(r"\d+,\d{2}", bad_prices[0])
        assert not any(is_decimal(p) for p in bad_prices)
        returned = by_id[kinds["return"][0].order_id][0]
        assert len(returned["lines"]) == 1 and returned["lines"][0]["quantity"] < 0
        (stray,) = by_id[kinds["unknown_store"][0].order_id]
        assert stray["store_id"] == UNKNOWN_STORE and UNKNOWN_STORE not in stores

        older, newer = by_id[kinds["newer_version"][0].order_id]
        assert newer["updated_at"] > older["updated_at"]
        assert newer["lines"][0]["quantity"] == older["lines"][0]["quantity"] + 1
        assert newer["created_at"] == older["created_at"]

        twice = by_id[kinds["exact_duplicate"][0].order_id]
        assert len(twice) == 2 and twice[0] == twice[1]
        # The copy is the first record of page 2 at per_page 100 (and 50): it straddles a page boundary.
        assert records[EXACT_DUPLICATE_POSITION] == records[EXACT_DUPLICATE_POSITION + 1] == twice[0]

        # Only the designed faults: every other line is clean.
        faulty = {(a.order_id, a.line_number) for a in day.anomalies if a.line_number is not None}
        for r in records:
            for ln in r["lines"]:
                if (r["id"], ln["line_number"]) in faulty:
                    continue
                assert ln["sku"] in skus
                assert ln["quantity"] > 0
                assert MONEY.match(ln["unit_price"]), ln
        assert Counter(r["store_id"] for r in records)[UNKNOWN_STORE] == 1


def by_kind(anomalies: tuple[Anomaly, ...], kind: str) -> list[Anomaly]:
    return [a for a in anomalies if a.kind == kind]


def test_each_date_has_a_rates_file_of_euros_per_unit_of_gbp_and_usd(demo: DemoDataset) -> None:
    seen = []
    for day in demo.days:
        rates = read_rates(day.rates_path)
        assert day.rates_path.name == f"rates_{day.business_date:%Y%m%d}.csv"
        assert sorted(rates) == ["GBP", "USD"]  # no EUR row (the reporting currency), no CHF row
        assert all(RATE.match(r) for r in rates.values()), rates
        assert {c: Decimal(r) for c, r in rates.items()} == dict(day.rates)
        assert Decimal("1.10") < Decimal(rates["GBP"]) < Decimal("1.20")
        assert Decimal("0.88") < Decimal(rates["USD"]) < Decimal("0.96")
        seen.append(rates)
    assert seen[0] != seen[1] != seen[2]  # a rate per date, not one for all


def test_about_a_tenth_of_orders_are_paid_in_gbp_or_usd_at_the_dates_rate(
    demo: DemoDataset, records_by_date: dict[date, list[dict[str, Any]]]
) -> None:
    for day in demo.days:
        records = records_by_date[day.business_date]
        currencies = {r["id"]: r["currency"] for r in records}
        assert day.foreign_orders == sum(c != "EUR" for c in currencies.values())
        assert 0.05 <= day.foreign_orders / day.orders <= 0.15
        assert set(currencies.values()) == {"EUR", "GBP", "USD", UNQUOTED_CURRENCY}

        # A foreign price is the date's euro price (list price, or 20 % off) divided by the date's rate.
        list_prices = {p["SKU"]: Decimal(p["List Price"]) for p in read_products(day.products_path)}
        rates = dict(day.rates)
        skip = {(a.order_id, a.line_number) for a in day.anomalies} | {
            (a.order_id, 1)
            for a in by_kind(day.anomalies, "cross_date_return")  # the earlier date's price
        }
        checked = 0
        for r in records:
            if r["currency"] not in rates:
                continue
            for ln in r["lines"]:
                if (r["id"], ln["line_number"]) in skip:
                    continue
                euros = list_prices[ln["sku"]]
                expected = {
                    (euro_price / rates[r["currency"]]).quantize(CENT, ROUND_HALF_UP)
                    for euro_price in (euros, (euros * Decimal("0.8")).quantize(CENT, ROUND_HALF_UP))
                }
                assert Decimal(ln["unit_price"]) in expected, (r["id"], ln)
                checked += 1
        assert checked >= 20


def test_one_order_a_date_is_paid_in_a_currency_the_rates_file_does_not_quote(
    demo: DemoDataset, records_by_date: dict[date, list[dict[str, Any]]]
) -> None:
    for day in demo.days:
        (fault,) = by_kind(day.anomalies, "missing_rate")
        unquoted = [r for r in records_by_date[day.business_date] if r["currency"] == UNQUOTED_CURRENCY]
        assert [r["id"] for r in unquoted] == [fault.order_id]
        assert fault.line_number is None and UNQUOTED_CURRENCY in fault.detail
        assert UNQUOTED_CURRENCY not in read_rates(day.rates_path)
        # Its only fault: every line would load if the currency had a rate.
        assert [a.kind for a in day.anomalies if a.order_id == fault.order_id] == ["missing_rate"]
        assert all(ln["quantity"] > 0 and MONEY.match(ln["unit_price"]) for ln in unquoted[0]["lines"])


def test_from_the_second_date_one_order_returns_a_purchase_of_the_previous_date(
    demo: DemoDataset, records_by_date: dict[date, list[dict[str, Any]]]
) -> None:
    assert by_kind(demo.days[0].anomalies, "cross_date_return") == []
    for previous, day in zip(demo.days, demo.days[1:], strict=False):
        (anomaly,) = by_kind(day.anomalies, "cross_date_return")
        (returned,) = [r for r in records_by_date[day.business_date] if r["id"] == anomaly.order_id]
        (line,) = returned["lines"]
        assert anomaly.line_number == line["line_number"] == 1 and line["quantity"] < 0
        assert returned["customer"] is not None

        assert anomaly.original_order_id is not None
        assert anomaly.original_order_id.startswith(f"SO-{previous.business_date:%Y%m%d}-")
        assert anomaly.original_order_id in anomaly.detail
        (original,) = [
            r for r in records_by_date[previous.business_date] if r["id"] == anomaly.original_order_id
        ]
        assert original["customer"]["email"] == returned["customer"]["email"]
        (bought,) = [ln for ln in original["lines"] if ln["sku"] == line["sku"]]
        assert 0 < -line["quantity"] <= bought["quantity"]
        assert (returned["currency"], line["unit_price"]) == (original["currency"], bought["unit_price"])
        assert returned["store_id"] == original["store_id"]
        assert original["id"] not in {a.order_id for a in previous.anomalies}  # a clean, loaded purchase

        # Unambiguous: the customer bought that sku once on the previous date and not at all on the
        # return's date, so linking by customer and sku finds exactly this purchase, and only across dates.
        def pairs(records: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
            return Counter(
                (r["customer"]["email"], ln["sku"]) for r in records if r["customer"] for ln in r["lines"]
            )

        pair = (returned["customer"]["email"], line["sku"])
        assert pairs(records_by_date[previous.business_date])[pair] == 1
        assert pairs(records_by_date[day.business_date])[pair] == 1


def test_ensure_demo_data_generates_once_and_then_reuses_the_file(tmp_path: Path) -> None:
    path, generated = ensure_demo_data(out_dir=tmp_path, business_dates=[date(2026, 11, 1)])
    assert generated and path == tmp_path / "orders.jsonl" and path.is_file()
    path.write_text("{}\n", encoding="utf-8")
    again, generated_again = ensure_demo_data(out_dir=tmp_path, business_dates=[date(2026, 11, 1)])
    assert again == path and not generated_again
    assert path.read_text(encoding="utf-8") == "{}\n"


def test_ensure_demo_data_regenerates_data_that_lacks_a_dates_export(tmp_path: Path) -> None:
    ensure_demo_data(out_dir=tmp_path, business_dates=[date(2026, 11, 1)])
    (tmp_path / "exports" / "rates_20261101.csv").unlink()  # as written before the demo had rates

    path, generated = ensure_demo_data(out_dir=tmp_path, business_dates=[date(2026, 11, 1)])

    assert generated and path.is_file() and (tmp_path / "exports" / "rates_20261101.csv").is_file()
