"""The real Online Retail II export through the pipeline by configuration alone, checked to the cent.

Three business dates run through the real extract (the shared CSV, filtered per date), the real sales job
(``run_job`` in the shared Spark session instead of a spark-submit per date) and the real load. What the
warehouse ends up with per (date, country) is compared with the same rules computed independently in
plain pandas + Decimal from the raw CSV.
"""

from __future__ import annotations

import os
from collections import defaultdict
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from django.core.management import call_command
from django.db.models import Count

from etlcore.models import StepRun
from spark_jobs.sales_daily import run_job
from tests.conftest import skip_or_fail_in_ci
from warehouse.checks import warehouse_checksums
from warehouse.models import DimCustomer, DimProduct, FactDailySales, FactSalesLine, QuarantinedRow

ROOT = Path(__file__).resolve().parents[1]
# Where conf/pipelines/online_retail.toml reads it: ETL_ONLINE_RETAIL_CSV, else ../shared/ beside the
# repository (README, "Tests", for where to get it).
CSV = (
    ROOT
    / os.environ.get(
        "ETL_ONLINE_RETAIL_CSV", "../shared/datasets/online_retail_ii_subset/online_retail_ii_subset.csv"
    )
).resolve()
# Chosen with pandas: cancellations (some of a purchase earlier the same day), postage, manual lines,
# discount/adjustment, exact duplicates and guests.
DATES = ("2010-11-24", "2011-05-23", "2011-11-04")
NON_PRODUCT = {"POST": "postage", "DOT": "postage", "C2": "postage", "M": "manual", "ADJUST": "adjustment"}
NON_PRODUCT |= {"D": "discount", "BANK CHARGES": "fee"}
CENT = Decimal("0.01")

pytestmark = pytest.mark.django_db


def expected_accounting(day: str) -> dict:
    """The date's transform accounting from the raw text: rows delivered, exact duplicates (SourceSheet
    ignored, descriptions compared trimmed with inner blanks collapsed, as the job cleans text), and the
    stock write-offs the analysts defined: a quantity below zero on an invoice that is not a cancellation
    (its number does not start with C). Nothing is quarantined on these dates."""
    raw = pd.read_csv(CSV, dtype=str, keep_default_na=False).drop(columns="SourceSheet")
    lines = raw[raw["InvoiceDate"].str.startswith(day)].copy()
    lines["Description"] = lines["Description"].str.strip().str.replace(r"\s+", " ", regex=True)
    records = lines.drop_duplicates()
    write_offs = (records["Quantity"].astype(int) < 0) & ~records["Invoice"].str.startswith("C")
    n = int(write_offs.sum())
    return {
        "rows_in": len(lines),
        "rejected": 0,
        "duplicates": len(lines) - len(records),
        "rows_out": len(records) - n,
        "filtered": {"stock_write_off": n} if n else {},
        "write_offs": n,
    }


def expected_lines(day: str) -> pd.DataFrame:
    """The date's lines after the pipeline's rules, from the raw text: SourceSheet ignored, exact
    duplicates removed (descriptions compared trimmed, inner blanks collapsed, as the job cleans text),
    stock write-offs left out."""
    raw = pd.read_csv(CSV, dtype=str, keep_default_na=False).drop(columns="SourceSheet")
    lines = raw[raw["InvoiceDate"].str.startswith(day)].copy()
    lines["Description"] = lines["Description"].str.strip().str.replace(r"\s+", " ", regex=True)
    lines = lines.drop_duplicates()
    lines = lines[~((lines["Quantity"].astype(int) < 0) & ~lines["Invoice"].str.startswith("C"))].copy()
    lines["amount"] = [
        (Decimal(q) * Decimal(p)).quantize(CENT, ROUND_HALF_UP)
        for q, p in zip(lines["Quantity"], lines["Price"], strict=True)
    ]
    lines["qty"] = lines["Quantity"].astype(int)
    lines["is_product"] = ~lines["StockCode"].isin(NON_PRODUCT)
    return lines


def per_country(lines: pd.DataFrame) -> dict[str, tuple[Decimal, int, int]]:
    out: dict[str, tuple[Decimal, int, int]] = {}
    for country, group in lines.groupby("Country"):
        out[country] = (sum(group["amount"], Decimal("0.00")), int(group["qty"].sum()), len(group))
    return out


def expected_links(lines: pd.DataFrame) -> dict[str, int]:
    """Returns per original order: the latest same-day purchase of the same customer and item before it."""
    returns = lines[lines["Invoice"].str.startswith("C") & (lines["Customer ID"] != "")]
    purchases = lines[~lines["Invoice"].str.startswith("C") & (lines["Customer ID"] != "")]
    links: dict[str, int] = defaultdict(int)
    for _, r in returns.iterrows():
        found = purchases[
            (purchases["Customer ID"] == r["Customer ID"])
            & (purchases["StockCode"] == r["StockCode"])
            & (purchases["InvoiceDate"] <= r["InvoiceDate"])
        ]
        if len(found):
            links[found.sort_values(["InvoiceDate", "Invoice"]).iloc[-1]["Invoice"]] += 1
    return dict(links)


def summed(rows) -> dict[str, tuple[Decimal, int, int]]:
    """Per country: (money, quantity, lines), added up in Python: SQLite's SUM of decimals is a float."""
    out: dict[str, list] = defaultdict(lambda: [Decimal("0.00"), 0, 0])
    for country, money, quantity, *lines in rows:
        total = out[country]
        total[0] += money
        total[1] += quantity
        total[2] += lines[0] if lines else 1
    return {country: tuple(total) for country, total in out.items()}


@pytest.fixture
def retail_env(tmp_path, monkeypatch, request, staging_root):
    if not CSV.is_file():
        skip_or_fail_in_ci(f"Online Retail II subset not found at {CSV} (README, Tests)", "dataset")
    spark = request.getfixturevalue("spark")  # only once the data is there
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "online-retail-test-key")
    monkeypatch.setenv("ETL_ONLINE_RETAIL_CSV", str(CSV))

    def submit_in_session(config, *, spec, work_dir, log_path, timeout=None, engine="spark"):
        # The job's own entry point in the shared session: spark-submit is covered by test_end_to_end.
        run_job(spark, spec)
        return SimpleNamespace(facts=lambda: {})

    monkeypatch.setattr("etlcore.services.transform.job_submit", submit_in_session)


def test_online_retail_revenue_quantity_and_lines_per_country_match_pandas_to_the_cent_and_rerun_is_a_noop(
    retail_env,
):
    expected = {day: expected_lines(day) for day in DATES}
    for day in DATES:
        call_command("run_pipeline", pipeline="online_retail", date=day, stdout=StringIO())

    assert not QuarantinedRow.objects.exists()  # every line of these dates is loadable
    for day in DATES:
        # The transform's accounting: every figure, the write-offs filtered by their rule, against pandas.
        step = StepRun.objects.filter(
            step="transform", run__pipeline="online_retail", run__business_date=date.fromisoformat(day)
        ).latest("started_at")
        want = expected_accounting(day)
        write_offs = want.pop("write_offs")
        counts = step.details["datasets"]["order_lines"]
        assert {k: counts[k] for k in want} == want, day
        assert counts["rule_failures"].get("stock_write_off", 0) == write_offs, day

        lines = expected[day]
        facts = FactSalesLine.objects.filter(date__date=date.fromisoformat(day))
        loaded = summed(facts.values_list("store__country", "amount_reporting", "quantity"))
        assert loaded == per_country(lines), day  # every line, postage and cancellations included

        daily = FactDailySales.objects.filter(date__date=date.fromisoformat(day))
        loaded_daily = summed(daily.values_list("store__country", "revenue", "quantity", "line_count"))
        assert loaded_daily == per_country(lines[lines["is_product"]]), day  # products only

        types = dict(facts.values_list("line_type").annotate(n=Count("id")))
        want_types = lines["StockCode"].map(NON_PRODUCT).fillna("product").value_counts().to_dict()
        assert types == want_types, day
        assert not facts.filter(line_type="product", product__isnull=True).exists()
        assert not facts.exclude(line_type="product").filter(product__isnull=False).exists()
        assert facts.filter(is_return=True).count() == lines["Invoice"].str.startswith("C").sum()
        assert facts.filter(customer__isnull=True).count() == (lines["Customer ID"] == "").sum()
        links = dict(
            facts.filter(original_order_id__isnull=False)
            .values_list("original_order_id")
            .annotate(n=Count("id"))
        )
        assert links == expected_links(lines), day

    # Products come from the lines (no master): every product sku, none of the postage or fee codes.
    all_lines = pd.concat(expected.values())
    assert set(DimProduct.objects.values_list("sku", flat=True)) == set(
        all_lines.loc[all_lines["is_product"], "StockCode"]
    )
    assert (
        DimCustomer.objects.count() == all_lines.loc[all_lines["Customer ID"] != "", "Customer ID"].nunique()
    )

    # Re-running a date leaves every warehouse row as it was.
    before = warehouse_checksums(using="default")
    call_command("run_pipeline", pipeline="online_retail", date=DATES[1], stdout=StringIO())
    assert warehouse_checksums(using="default") == before
