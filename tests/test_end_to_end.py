"""The demo pipeline end to end: HTTP API on loopback + files -> staging -> real spark-submit -> ORM.

These are the suite's only spark-submit runs (about 10 s each): one date, its re-run, one failing job.
"""

from __future__ import annotations

import json
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db.models import Sum

from etlcore.demo.api_server import demo_api_token, start_demo_api
from etlcore.demo.generate import generate_demo_data
from etlcore.demo.pipeline import demo_run
from etlcore.models import PipelineRun
from warehouse.models import DimCustomer, FactDailySales, FactSalesLine, QuarantinedRow

pytestmark = [pytest.mark.spark_submit, pytest.mark.django_db(transaction=True)]

DAY = date(2026, 11, 1)
SECRET = "e2e-pseudonym-key-do-not-leak"


@pytest.fixture
def demo_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ETL_STAGING_ROOT", str(tmp_path / "staging"))
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", SECRET)
    return tmp_path


def expected_lines(data_dir) -> dict[tuple[str, int], Decimal]:
    """The demo's rules recomputed in plain Python from the generated sources: the latest version of each
    line, minus lines with an unknown product or store, a zero quantity or an unparseable price."""
    exports = data_dir / "exports"
    skus = {row.split(",")[0] for row in (exports / "products_20261101.csv").read_text().splitlines()[1:]}
    stores = {
        json.loads(line)["code"] for line in (exports / "stores_20261101.jsonl").read_text().splitlines()
    }
    latest: dict[tuple[str, int], tuple[str, dict, dict]] = {}
    for line in (data_dir / "orders.jsonl").read_text().splitlines():
        order = json.loads(line)
        if not order["created_at"].startswith("2026-11-01"):
            continue
        for item in order["lines"]:
            key = (order["id"], item["line_number"])
            if key not in latest or order["updated_at"] > latest[key][0]:
                latest[key] = (order["updated_at"], order, item)
    amounts = {}
    for key, (_, order, item) in latest.items():
        try:
            price = Decimal(item["unit_price"])
        except ArithmeticError:
            continue
        if item["sku"] in skus and order["store_id"] in stores and item["quantity"] != 0 and price >= 0:
            amounts[key] = (price * item["quantity"]).quantize(Decimal("0.01"), ROUND_HALF_UP)
    return amounts


def test_demo_date_lands_in_the_warehouse_with_every_row_accounted_for(demo_env):
    report = demo_run(data_dir=demo_env / "demo", business_dates=[DAY])

    run = report.runs[0]
    assert run.status == "succeeded"
    steps = {s.step: s for s in run.steps.all()}
    assert [s.status for s in steps.values()] == ["succeeded"] * 3

    expected = expected_lines(demo_env / "demo")
    lines = FactSalesLine.objects.all()
    assert {(f.order_id, f.line_number): f.amount for f in lines} == expected
    total = sum(expected.values(), Decimal("0.00"))
    assert FactDailySales.objects.aggregate(total=Sum("revenue"))["total"] == total

    # Conservation: staged order lines = loaded + quarantined + duplicates removed.
    order_lines = steps["transform"].details["datasets"]["order_lines"]
    assert order_lines["rows_in"] == steps["extract"].details["order_lines"]["rows"]
    assert order_lines["rows_out"] == len(expected)
    quarantined = QuarantinedRow.objects.filter(dataset="order_lines").aggregate(n=Sum("occurrences"))["n"]
    assert order_lines["rows_in"] == len(expected) + quarantined + order_lines["duplicates"]
    assert set(QuarantinedRow.objects.values_list("reason_code", flat=True)) >= {
        "unknown_product",
        "unknown_store",
        "zero_quantity",
        "invalid_unit_price",
    }

    # Customers are pseudonymous: no e-mail anywhere in the warehouse.
    emails = {
        json.loads(line)["customer"]["email"]
        for line in (demo_env / "demo/orders.jsonl").open()
        if json.loads(line)["customer"]
    }
    keys = set(DimCustomer.objects.values_list("customer_key", flat=True))
    assert keys and not keys & emails and all(len(k) == 64 for k in keys)

    # The secret is in no run record and no log.
    assert SECRET not in json.dumps([s.details for s in steps.values()])
    assert SECRET not in Path(steps["transform"].details["log"]).read_text()

    # Running the same date again changes no warehouse row.
    again = demo_run(data_dir=demo_env / "demo", business_dates=[DAY])
    assert again.runs[0].status == "succeeded"
    assert again.changed_tables == []
    assert again.tables_after == report.tables_after


def test_failing_spark_job_fails_the_run_and_publishes_nothing(demo_env, monkeypatch):
    data_dir = demo_env / "demo"
    generate_demo_data(out_dir=data_dir, business_dates=[DAY])
    monkeypatch.setenv("ETL_DEMO_DIR", str(data_dir))
    token, _ = demo_api_token()
    monkeypatch.setenv("ETL_DEMO_API_TOKEN", token)
    with start_demo_api(orders_path=data_dir / "orders.jsonl", token=token) as api:
        monkeypatch.setenv("ETL_DEMO_API_URL", api.url)
        call_command("extract", "--date", DAY.isoformat(), stdout=StringIO())

    monkeypatch.delenv("ETL_PSEUDONYM_KEY")  # the job refuses to run without its key
    failed = r"spark job spark_jobs\.sales_daily failed with exit code \d+: .*ETL_PSEUDONYM_KEY"
    with pytest.raises(CommandError, match=failed):
        call_command("transform", "--date", DAY.isoformat(), stdout=StringIO())

    run = PipelineRun.objects.latest("id")
    step = run.steps.get()
    assert (run.status, step.status) == ("failed", "failed")
    assert "ETL_PSEUDONYM_KEY" in step.error and step.details["log"].endswith("-transform.log")
    assert step.details["exit_code"] != 0 and "--master" in step.details["command"]
    transformed = demo_env / "staging" / "retail_demo" / "transformed" / f"date={DAY}"
    assert not (transformed / "_manifest.json").exists()
    assert not list(transformed.glob("attempt-*"))
