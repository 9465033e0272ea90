"""Volume guards through the real steps: the demo pipeline's own guards stop a header-only product export.

The real extract (demo API on loopback + export files), the real sales job (``run_job`` in the shared
Spark session, as in test_online_retail.py: spark-submit is covered by test_end_to_end.py) and the real
load, over three runs of a few hundred lines: a designed demo date, then the next date with an empty
product export, failing and then, with ``on_breach = "warn"``, passing with the warning recorded.
"""

from __future__ import annotations

import re
from datetime import date
from io import StringIO
from types import SimpleNamespace

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from etlcore.demo.api_server import TOKEN_ENV, demo_api_token, start_demo_api
from etlcore.demo.generate import generate_demo_data
from etlcore.models import PipelineRun
from spark_jobs.sales_daily import run_job
from warehouse.checks import warehouse_checksums
from warehouse.models import FactSalesLine

pytestmark = pytest.mark.django_db

DAY = date(2026, 11, 1)
NEXT_DAY = date(2026, 11, 2)
DEMO = (settings.BASE_DIR / "conf" / "pipelines" / "retail_demo.toml").read_text()


@pytest.fixture
def demo(tmp_path, monkeypatch, spark, pipeline_dir, staging_root):
    data_dir = tmp_path / "demo"
    generate_demo_data(out_dir=data_dir, business_dates=[DAY, NEXT_DAY])
    (pipeline_dir / "retail_demo.toml").write_text(DEMO)
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "guards-test-key")
    monkeypatch.setenv("ETL_DEMO_DIR", str(data_dir))
    token, _ = demo_api_token()
    monkeypatch.setenv(TOKEN_ENV, token)

    def submit_in_session(config, *, spec, work_dir, log_path, timeout=None, engine="spark"):
        run_job(spark, spec)
        return SimpleNamespace(facts=lambda: {})

    monkeypatch.setattr("etlcore.services.transform.job_submit", submit_in_session)
    with start_demo_api(orders_path=data_dir / "orders.jsonl", token=token) as api:
        monkeypatch.setenv("ETL_DEMO_API_URL", api.url)
        yield SimpleNamespace(data=data_dir, staging=tmp_path / "staging", pipelines=pipeline_dir)


def run_pipeline(day: date) -> str:
    out = StringIO()
    call_command("run_pipeline", "--date", day.isoformat(), stdout=out, stderr=StringIO())
    return out.getvalue()


def steps_of(run: PipelineRun) -> dict:
    return {s.step: s for s in run.steps.all()}


def test_an_empty_product_export_fails_the_run_on_the_demo_guards_and_loads_nothing_or_warns(demo):
    # A designed demo date passes its guards, its faults well inside them; max_drop has no reference yet.
    run_pipeline(DAY)
    first = PipelineRun.objects.latest("id")
    transform = steps_of(first)["transform"]
    assert first.status == "succeeded"
    assert transform.details["guards"]["breaches"] == []
    assert {(s["dataset"], s["guard"]) for s in transform.details["guards"]["skipped"]} == {
        (name, "max_drop") for name in ("order_lines", "products", "stores")
    }
    lines = transform.details["datasets"]["order_lines"]
    share = lines["rejected"] / (lines["rows_in"] - lines["duplicates"])
    assert 0 < share < 0.05 / 2, share  # the designed faults quarantine some lines, far from the bound

    # The next date's product export is header-only: the trial's case.
    products = demo.data / "exports" / f"products_{NEXT_DAY:%Y%m%d}.csv"
    header = products.read_text().splitlines()[0]
    products.write_text(header + "\n")
    before = warehouse_checksums(using="default")

    with pytest.raises(CommandError) as raised:
        run_pipeline(NEXT_DAY)

    error = str(raised.value)
    assert "\n" not in error
    products_rows = transform.details["datasets"]["products"]["rows_in"]
    assert error.startswith("pipeline retail_demo: "), error
    lines_part, *products_parts = error.removeprefix("pipeline retail_demo: ").split("; ")
    # Every line is quarantined unknown_product (the trial's 579 of 596 counted the duplicates too).
    quarantined = re.fullmatch(
        r"order_lines on 2026-11-02: (\d+) of \1 records quarantined \(100 %\), "
        r"the guard allows at most 5 % \(max_quarantined_share\)",
        lines_part,
    )
    assert quarantined and int(quarantined[1]) > 100, lines_part
    products_rows = transform.details["datasets"]["products"]["rows_in"]
    assert products_parts == [
        "products on 2026-11-02: 0 rows, the guard requires at least 1 (min_rows)",
        f"products on 2026-11-02: 0 rows, 100 % fewer than the {products_rows} of 2026-11-01, "
        "the guard allows a drop of at most 20 % (max_drop)",
    ]
    run = PipelineRun.objects.latest("id")
    assert (run.status, run.business_date, run.error) == ("failed", NEXT_DAY, error)
    steps = steps_of(run)
    assert list(steps) == ["extract", "transform"]  # the load never started
    assert (steps["transform"].status, steps["transform"].error) == ("failed", error)
    assert warehouse_checksums(using="default") == before
    assert not FactSalesLine.objects.filter(date__date=NEXT_DAY).exists()
    # No transformed partition was published, so a `load` of the date has nothing to pick up.
    assert not (demo.staging / "retail_demo" / "transformed" / f"date={NEXT_DAY}" / "_manifest.json").exists()
    with pytest.raises(CommandError, match="no published partition for retail_demo transformed 2026-11-02"):
        call_command("load", "--date", NEXT_DAY.isoformat(), stdout=StringIO())

    status = StringIO()
    call_command("pipeline_status", "--limit", "3", stdout=status)
    assert "guard failed: products on 2026-11-02: 0 rows, the guard requires at least 1 (min_rows)" in [
        line.strip() for line in status.getvalue().splitlines()
    ]

    # The same with on_breach = "warn": the run succeeds, loads the date and records the warnings.
    warn = re.sub(r"^(\[datasets\.\w+\.guards\].*)$", r'\1\non_breach = "warn"', DEMO, flags=re.M)
    assert warn.count('on_breach = "warn"') == 4
    (demo.pipelines / "retail_demo.toml").write_text(warn)

    output = run_pipeline(NEXT_DAY)

    run = PipelineRun.objects.latest("id")
    assert (run.status, run.error) == ("succeeded", "")
    assert list(steps_of(run)) == ["extract", "transform", "load"]
    breaches = steps_of(run)["transform"].details["guards"]["breaches"]
    assert [(b["dataset"], b["guard"], b["on_breach"]) for b in breaches] == [
        ("order_lines", "max_quarantined_share", "warn"),
        ("products", "min_rows", "warn"),
        ("products", "max_drop", "warn"),
    ]
    assert [line for line in output.splitlines() if line.startswith("guard warning: ")] == [
        f"guard warning: {b['message']}" for b in breaches
    ]
    assert "guard warning: products on 2026-11-02: 0 rows, the guard requires at least 1 (min_rows)" in output
    assert (demo.staging / "retail_demo" / "transformed" / f"date={NEXT_DAY}" / "_manifest.json").exists()
