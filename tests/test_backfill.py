"""Backfill and resume: the demo pipeline's three dates (a price change, a return of the first date's
purchase on the second), its REST API on loopback.

A backfill (`run_pipeline --from --to`) is one real spark-submit for the three transforms. What it loads
must be, row by row, what the dates run one by one (`run_pipeline --date`) load; and so must the hostile
orders: a failing date stopping the backfill, a date failing in the middle (its product export missing)
gone past with `--continue-on-failure`, then that date backfilled alone after the later one was loaded. A
re-run of a backfill changes no row. Only the first backfill needs Spark's own process (one application,
a `--spec` per date); every other transform runs the same job in the suite's Spark session
(tests/spark_in_session.py), which saves a JVM's start each.
"""

from __future__ import annotations

import shutil
from datetime import date
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from etlcore.demo.api_server import TOKEN_ENV, demo_api_token, start_demo_api
from etlcore.demo.generate import generate_demo_data
from etlcore.models import Backfill, PipelineRun, RunStatus, StagedPartition, StepRun
from tests.spark_in_session import jobs_in_session
from warehouse.checks import warehouse_checksums
from warehouse.models import (
    DimCustomer,
    DimProduct,
    DimStore,
    FactDailySales,
    FactSalesLine,
    LoadedPartition,
    PseudonymKey,
    QuarantinedRow,
)

pytestmark = [pytest.mark.spark_submit, pytest.mark.django_db(transaction=True)]

DAYS = [date(2026, 11, 1), date(2026, 11, 2), date(2026, 11, 3)]
MIDDLE = DAYS[1]
DEMO = (settings.BASE_DIR / "conf" / "pipelines" / "retail_demo.toml").read_text()
# Tables whose rows say when or by which run something happened: equal content, different stamps.
STAMPED = {LoadedPartition._meta.db_table, PseudonymKey._meta.db_table}


@pytest.fixture
def demo(tmp_path, monkeypatch, pipeline_dir, staging_root):
    data_dir = tmp_path / "demo"
    generate_demo_data(out_dir=data_dir, business_dates=DAYS)
    (pipeline_dir / "retail_demo.toml").write_text(DEMO)
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "backfill-test-key")
    monkeypatch.setenv("ETL_DEMO_DIR", str(data_dir))
    token, _ = demo_api_token()
    monkeypatch.setenv(TOKEN_ENV, token)
    with start_demo_api(orders_path=data_dir / "orders.jsonl", token=token) as api:
        monkeypatch.setenv("ETL_DEMO_API_URL", api.url)
        yield data_dir


def run_pipeline(*args: str) -> str:
    out = StringIO()
    call_command("run_pipeline", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def backfill(first: date, last: date, *args: str) -> str:
    return run_pipeline("--from", first.isoformat(), "--to", last.isoformat(), *args)


def warehouse() -> dict[str, tuple[int, str]]:
    """Every warehouse row by content (ids replaced by natural keys), whatever the load order."""
    sums = warehouse_checksums(using="default", mode="natural")
    return {table: value for table, value in sums.items() if table not in STAMPED}


def start_over(staging_root) -> None:
    """An empty warehouse, no run record, no staging: a new deployment."""
    for model in (FactSalesLine, FactDailySales, QuarantinedRow, LoadedPartition, PseudonymKey):
        model.objects.all().delete()
    for model in (DimCustomer, DimProduct, DimStore, StepRun, PipelineRun, Backfill, StagedPartition):
        model.objects.all().delete()
    shutil.rmtree(staging_root, ignore_errors=True)


def date_runs(backfill_record: Backfill) -> dict[date, PipelineRun]:
    return {run.business_date: run for run in backfill_record.runs.prefetch_related("steps")}


def test_a_backfill_loads_what_date_by_date_runs_load_whatever_fails_or_comes_first(
    demo, staging_root, monkeypatch, spark
):
    # The three dates in one backfill: one Spark application transforms them all.
    out = backfill(DAYS[0], DAYS[-1])
    backfilled = warehouse()
    record = Backfill.objects.get()
    assert out.splitlines()[-1] == (
        f"backfill #{record.pk} retail_demo 2026-11-01..2026-11-03 succeeded: 3 date(s), 3 loaded, 0 failed"
    )
    runs = date_runs(record)
    assert sorted(runs) == DAYS and {run.status for run in runs.values()} == {RunStatus.SUCCEEDED}
    assert all([s.step for s in run.steps.all()] == ["extract", "transform", "load"] for run in runs.values())
    commands = {tuple(run.steps.get(step="transform").details["command"]) for run in runs.values()}
    assert len(commands) == 1 and list(commands)[0].count("--spec") == 3

    jobs_in_session(monkeypatch, spark)
    # Re-running it skips nothing and changes no row, not even a surrogate key.
    before = warehouse_checksums(using="default")
    backfill(DAYS[0], DAYS[-1])
    assert warehouse_checksums(using="default") == before
    assert PipelineRun.objects.filter(status=RunStatus.SUCCEEDED).count() == 6

    # The golden warehouse: the dates run one by one into a new deployment.
    start_over(staging_root)
    for day in DAYS:
        run_pipeline("--date", day.isoformat())
    golden = warehouse()
    assert golden[FactSalesLine._meta.db_table][0] > 1000 and golden[QuarantinedRow._meta.db_table][0] > 0
    assert backfilled == golden

    # The first date fails (its product export is missing): the backfill stops there, before any Spark.
    start_over(staging_root)
    first = demo / "exports" / f"products_{DAYS[0]:%Y%m%d}.csv"
    first_hidden = first.rename(first.with_suffix(".hidden"))
    with pytest.raises(CommandError) as stopped:
        backfill(DAYS[0], DAYS[-1])
    assert stopped.value.returncode == 1
    assert str(stopped.value).endswith("3 date(s), 0 loaded, 1 failed, 2 not started")
    record = Backfill.objects.get()
    runs = date_runs(record)
    assert sorted(runs) == DAYS[:1] and record.status == RunStatus.FAILED
    failed = runs[DAYS[0]]
    assert failed.status == RunStatus.FAILED and first.name in failed.error
    assert [s.step for s in failed.steps.all()] == ["extract"]
    assert record.error == f"{DAYS[0]} run #{failed.pk} failed at extract: {failed.error}; " + (
        f"{DAYS[1]}..{DAYS[2]}: not started (the backfill stopped at the first failed date)"
    )
    assert not FactSalesLine.objects.exists()
    first_hidden.rename(first)

    # The middle date fails the same way ...
    export = demo / "exports" / f"products_{MIDDLE:%Y%m%d}.csv"
    hidden = export.rename(export.with_suffix(".hidden"))

    # ... and with --continue-on-failure it goes past it: the first and last dates are loaded.
    with pytest.raises(CommandError, match="3 date.s., 2 loaded, 1 failed$"):
        backfill(DAYS[0], DAYS[-1], "--continue-on-failure")
    runs = date_runs(Backfill.objects.latest("id"))
    assert {day: run.status for day, run in runs.items()} == {
        DAYS[0]: RunStatus.SUCCEEDED,
        MIDDLE: RunStatus.FAILED,
        DAYS[2]: RunStatus.SUCCEEDED,
    }

    # The export arrives; the middle date is backfilled alone, after the date that follows it.
    hidden.rename(export)
    backfill(MIDDLE, MIDDLE)
    assert warehouse() == golden


def test_resume_after_a_failed_transform_reuses_the_extract(demo, pipeline_dir, monkeypatch, spark):
    broken = DEMO.replace(
        '"spark.ui.enabled" = "false"', '"spark.ui.enabled" = "false"\n"spark.driver.memory" = "lots"'
    )
    (pipeline_dir / "retail_demo.toml").write_text(broken)
    with pytest.raises(CommandError, match="spark job spark_jobs.sales_daily failed"):
        run_pipeline("--date", DAYS[0].isoformat())
    failed = PipelineRun.objects.get()
    assert [(s.step, s.status) for s in failed.steps.all()] == [
        ("extract", "succeeded"),
        ("transform", "failed"),
    ]
    staged = {p.pk: (p.run_id, p.checksum, p.published_at) for p in StagedPartition.objects.all()}

    (pipeline_dir / "retail_demo.toml").write_text(DEMO)
    jobs_in_session(monkeypatch, spark)  # the failed submit above was a real one
    out = run_pipeline("--resume", str(failed.pk))
    assert out.startswith(f"resuming run #{failed.pk} (2026-11-01) from transform\n")
    resumed = PipelineRun.objects.exclude(pk=failed.pk).get()
    assert (resumed.status, resumed.resumed_from_id, resumed.business_date) == (
        RunStatus.SUCCEEDED,
        failed.pk,
        DAYS[0],
    )
    assert [s.step for s in resumed.steps.all()] == ["transform", "load"]
    assert {p.pk: (p.run_id, p.checksum, p.published_at) for p in StagedPartition.objects.all()} == staged
    assert FactSalesLine.objects.filter(date__date=DAYS[0]).exists()
    assert run_pipeline("--resume", str(resumed.pk)) == f"nothing to do: run #{resumed.pk} succeeded\n"
