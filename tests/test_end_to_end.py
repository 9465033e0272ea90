"""The demo pipeline end to end: HTTP API on loopback + files -> staging -> real spark-submit -> ORM.

Two dates through real spark-submits (the second brings a product price change and a return of the first
date's purchase), a re-run of the first (its job in the suite's Spark session: tests/spark_in_session.py,
as what it proves is the load's), and one failing job, a real spark-submit again.
"""

from __future__ import annotations

import csv
import json
import os
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from io import StringIO
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from django.core.management import CommandError, call_command
from django.db.models import Sum

from connectors.records import pseudonym
from etlcore.demo.api_server import demo_api_token, start_demo_api
from etlcore.demo.generate import PriceChange, generate_demo_data
from etlcore.demo.pipeline import demo_run
from etlcore.models import PipelineRun
from etlcore.pii import customer_emails
from spark_jobs.sales_daily import ENCRYPTED_MARK
from tests.etlcore.test_file_modes import wide
from tests.spark_in_session import jobs_in_session
from warehouse.models import DimCustomer, DimProduct, DimStore, FactDailySales, FactSalesLine, QuarantinedRow

pytestmark = [pytest.mark.spark_submit, pytest.mark.django_db(transaction=True)]

DAY = date(2026, 11, 1)
NEXT_DAY = date(2026, 11, 2)
SECRET = "e2e-pseudonym-key-do-not-leak"


@pytest.fixture
def demo_env(tmp_path, monkeypatch, staging_root):
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", SECRET)
    return tmp_path


CENT = Decimal("0.01")


def expected_lines(data_dir, day: date = DAY) -> tuple[dict[tuple[str, int], tuple], set[tuple[str, int]]]:
    """The demo's rules recomputed in plain Python from the generated sources: the latest version of each
    line, minus lines with an unknown product or store, a zero quantity or an unparseable price, and lines
    in a currency without a rate that day (EUR, the reporting currency, needs none).

    Returns (currency, amount, amount_reporting) per loaded line, with amount = round_half_up(quantity x
    unit_price, 2) and amount_reporting = round_half_up(amount x rate, 2), and the lines rejected only for
    want of a rate."""
    exports = data_dir / "exports"
    with (exports / f"products_{day:%Y%m%d}.csv").open(newline="") as fh:
        skus = {row["SKU"] for row in csv.DictReader(fh)}
    stores = {
        json.loads(line)["code"] for line in (exports / f"stores_{day:%Y%m%d}.jsonl").read_text().splitlines()
    }
    with (exports / f"rates_{day:%Y%m%d}.csv").open(newline="") as fh:
        rates = {row["currency"]: Decimal(row["rate"]) for row in csv.DictReader(fh)}
    rates.setdefault("EUR", Decimal(1))
    latest: dict[tuple[str, int], tuple[str, dict, dict]] = {}
    for line in (data_dir / "orders.jsonl").read_text().splitlines():
        order = json.loads(line)
        if not order["created_at"].startswith(day.isoformat()):
            continue
        for item in order["lines"]:
            key = (order["id"], item["line_number"])
            if key not in latest or order["updated_at"] > latest[key][0]:
                latest[key] = (order["updated_at"], order, item)
    loaded, no_rate = {}, set()
    for key, (_, order, item) in latest.items():
        try:
            price = Decimal(item["unit_price"])
        except ArithmeticError:
            continue
        if item["sku"] in skus and order["store_id"] in stores and item["quantity"] != 0 and price >= 0:
            if order["currency"] not in rates:
                no_rate.add(key)
                continue
            amount = (price * item["quantity"]).quantize(CENT, ROUND_HALF_UP)
            reporting = (amount * rates[order["currency"]]).quantize(CENT, ROUND_HALF_UP)
            loaded[key] = (order["currency"], amount, reporting)
    return loaded, no_rate


def product_versions(sku: str) -> list[tuple]:
    return list(
        DimProduct.objects.filter(sku=sku)
        .order_by("valid_from")
        .values_list("id", "valid_from", "valid_to", "is_current", "list_price")
    )


def test_demo_dates_land_with_every_row_accounted_for_price_history_and_cross_date_return(
    demo_env, staging_root, monkeypatch, spark
):
    # Under an open umask: every staged file, Spark's output and log included, is private all the same.
    previous = os.umask(0)
    try:
        report = demo_run(data_dir=demo_env / "demo", business_dates=[DAY, NEXT_DAY])
    finally:
        os.umask(previous)
    assert wide(staging_root) == []
    assert len(list(staging_root.glob("retail_demo/logs/*-transform-attempt1.log"))) == 2
    assert (staging_root / "_build" / "spark_jobs.zip").exists()
    # The same arguments give the same files: what the generator designed into the data the run loaded.
    dataset = generate_demo_data(out_dir=demo_env / "designed", business_dates=[DAY, NEXT_DAY])

    assert [r.status for r in report.runs] == ["succeeded"] * 2
    run = report.runs[0]
    steps = {s.step: s for s in run.steps.all()}
    assert [s.status for s in steps.values()] == ["succeeded"] * 3

    for day in (NEXT_DAY, DAY):
        expected, no_rate = expected_lines(demo_env / "demo", day)
        lines = FactSalesLine.objects.filter(date__date=day)
        assert {
            (f.order_id, f.line_number): (f.currency, f.amount, f.amount_reporting) for f in lines
        } == expected
    # From here on, `expected` and `no_rate` are the first date's.
    # The check has teeth: lines in GBP and USD were converted at the date's rate, and one order had none.
    assert {currency for currency, _, _ in expected.values()} == {"EUR", "GBP", "USD"}
    assert all(amount != reporting for currency, amount, reporting in expected.values() if currency != "EUR")
    assert no_rate
    assert steps["transform"].details["datasets"]["rates"]["rows_out"] == 2
    total = sum((reporting for _, _, reporting in expected.values()), Decimal("0.00"))
    assert FactDailySales.objects.filter(date__date=DAY).aggregate(total=Sum("revenue"))["total"] == total

    # Conservation: staged order lines = loaded + quarantined + duplicates removed.
    order_lines = steps["transform"].details["datasets"]["order_lines"]
    assert order_lines["rows_in"] == steps["extract"].details["order_lines"]["rows"]
    assert order_lines["rows_out"] == len(expected)
    quarantine = QuarantinedRow.objects.filter(business_date=DAY)
    quarantined = quarantine.filter(dataset="order_lines").aggregate(n=Sum("occurrences"))["n"]
    assert order_lines["rows_in"] == len(expected) + quarantined + order_lines["duplicates"]
    assert set(quarantine.values_list("reason_code", flat=True)) >= {
        "unknown_product",
        "unknown_store",
        "zero_quantity",
        "invalid_unit_price",
        "missing_rate",
    }
    missing_rate = quarantine.filter(dataset="order_lines", reason_code="missing_rate")
    assert {
        (r["order_id"], int(r["line_number"]))
        for r in map(json.loads, missing_rate.values_list("raw_record", flat=True))
    } == no_rate

    # Customers are pseudonymous: no e-mail anywhere in the warehouse.
    emails = {
        json.loads(line)["customer"]["email"]
        for line in (demo_env / "demo/orders.jsonl").open()
        if json.loads(line)["customer"]
    }
    keys = set(DimCustomer.objects.values_list("customer_key", flat=True))
    assert keys and not keys & emails and all(len(k) == 64 for k in keys)
    # ... but authorised code reads the e-mail back from its token, with the keys of ETL_PII_KEYS.
    by_key = {pseudonym(SECRET.encode(), email): email for email in emails}
    tokens = dict(DimCustomer.objects.values_list("customer_key", "email_encrypted"))
    assert None not in tokens.values() and not set(tokens.values()) & emails
    assert customer_emails(keys) == {key: by_key[key] for key in keys}
    # A quarantined line shows its token as a fixed mark (a re-extraction must quarantine the same record).
    records = [
        json.loads(r) for r in quarantine.filter(dataset="order_lines").values_list("raw_record", flat=True)
    ]
    assert {r.get("customer_email_encrypted") for r in records} <= {ENCRYPTED_MARK, None}
    assert ENCRYPTED_MARK in {r.get("customer_email_encrypted") for r in records}
    # Neither staging layer holds an address in clear, whatever its column.
    staged = demo_env / "staging" / "retail_demo"
    for path in staged.rglob("*.parquet"):
        table = pq.read_table(path)
        text = str(table.to_pylist()).lower()
        assert not any(email.lower() in text for email in emails), path

    # The secret is in no run record and no log.
    assert SECRET not in json.dumps([s.details for s in steps.values()])
    assert SECRET not in Path(steps["transform"].details["log"]).read_text()

    # The return of the first date's purchase is linked to it (by the loader: the job sees one date).
    (cross,) = [a for d in dataset.days for a in d.anomalies if a.kind == "cross_date_return"]
    returned = FactSalesLine.objects.get(order_id=cross.order_id, line_number=cross.line_number)
    assert (returned.date.date, returned.is_return) == (NEXT_DAY, True)
    assert returned.original_order_id == cross.original_order_id
    assert FactSalesLine.objects.filter(order_id=cross.original_order_id, date__date=DAY).exists()

    # The price change is a second version of the product; each date's facts point at its own version.
    assert dataset.price_changes == (
        PriceChange("SKU-10044", Decimal("86.50"), Decimal("95.15"), from_date=NEXT_DAY),
    )
    (change,) = dataset.price_changes
    versions = product_versions(change.sku)
    (old, *_), (new, *_) = versions
    assert versions == [
        (old, DAY, NEXT_DAY, False, change.old_list_price),
        (new, NEXT_DAY, None, True, change.new_list_price),
    ]
    for model in (FactSalesLine, FactDailySales):
        pointed = set(model.objects.filter(product__sku=change.sku).values_list("date__date", "product_id"))
        assert pointed == {(DAY, old), (NEXT_DAY, new)}
    # Nothing else changed: one version per other product and per store.
    assert DimProduct.objects.count() == DimProduct.objects.values("sku").distinct().count() + 1
    assert DimStore.objects.filter(is_current=False).count() == 0

    # Running the first date again changes no warehouse row and makes no version, although the version
    # valid on that date is no longer the current one.
    products = list(DimProduct.objects.order_by("id").values())
    customers = list(DimCustomer.objects.order_by("id").values())
    jobs_in_session(monkeypatch, spark)
    again = demo_run(data_dir=demo_env / "demo", business_dates=[DAY])
    assert again.runs[0].status == "succeeded"
    assert again.changed_tables == []
    assert again.tables_after == report.tables_after
    assert list(DimProduct.objects.order_by("id").values()) == products
    assert product_versions(change.sku) == versions
    # The re-extraction made new tokens of the same e-mails; the customers kept theirs, byte for byte.
    assert list(DimCustomer.objects.order_by("id").values()) == customers


def test_failing_spark_job_fails_the_run_and_publishes_nothing(demo_env, monkeypatch):
    data_dir = demo_env / "demo"
    generate_demo_data(out_dir=data_dir, business_dates=[DAY])
    monkeypatch.setenv("ETL_DEMO_DIR", str(data_dir))
    token, _ = demo_api_token()
    monkeypatch.setenv("ETL_DEMO_API_TOKEN", token)
    with start_demo_api(orders_path=data_dir / "orders.jsonl", token=token) as api:
        monkeypatch.setenv("ETL_DEMO_API_URL", api.url)
        call_command("extract", "--date", DAY.isoformat(), stdout=StringIO())

    # A staged file Spark cannot read: the job itself fails (what it needs is checked before it starts,
    # tests/etlcore/test_preflight.py, so a missing key or Java no longer gets this far).
    staged = demo_env / "staging" / "retail_demo" / "raw" / "products" / f"date={DAY}"
    part = next(staged.glob("attempt-*/*.parquet"))
    part.write_bytes(b"not parquet at all")
    failed = r"spark job spark_jobs\.sales_daily failed with exit code \d+: "
    with pytest.raises(CommandError, match=failed):
        call_command("transform", "--date", DAY.isoformat(), stdout=StringIO())

    run = PipelineRun.objects.latest("id")
    step = run.steps.get()
    assert (run.status, step.status) == ("failed", "failed")
    assert "\n" not in step.error and step.details["log"].endswith("-transform-attempt1.log")
    assert step.details["exit_code"] != 0 and "--master" in step.details["command"]
    # The end of the job's log is on the record: what an operator reads first, without the file.
    written = Path(step.details["log"]).read_text(encoding="utf-8").splitlines()
    assert 0 < len(step.details["log_tail"]) <= 20 and step.details["log_tail"] == written[-20:]
    transformed = demo_env / "staging" / "retail_demo" / "transformed" / f"date={DAY}"
    assert not (transformed / "_manifest.json").exists()
    assert not list(transformed.glob("attempt-*"))
