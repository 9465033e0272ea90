"""`manage.py replay_quarantine`: which quarantined rows (and so which dates) a replay takes, its errors,
and one real replay through spark-submit after a rule is relaxed (the demo run before it runs the job in
the suite's Spark session: tests/spark_in_session.py)."""

from __future__ import annotations

from datetime import date
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone

from etlcore.config import pipeline_load
from etlcore.errors import PartitionNotFound
from etlcore.models import PipelineRun
from etlcore.selectors import quarantine_select
from etlcore.services.replay import quarantine_replay
from tests.pipelines import dataset, pipeline_write
from tests.spark_in_session import jobs_in_session
from warehouse.models import FactSalesLine, QuarantinedRow

DAY = date(2026, 11, 1)
DEMO_FILE = Path(settings.BASE_DIR) / "conf" / "pipelines" / "retail_demo.toml"

SHOP = {
    "products": dataset("products.csv", sku={"required": True}),
    "lines": dataset("lines.csv", id={"required": True}),
}


@pytest.fixture
def shop(pipeline_dir, tmp_path):
    pipeline_write(pipeline_dir, datasets=SHOP, staging=tmp_path / "staging")
    return pipeline_load("shop")


def quarantined(run, day: date, dataset: str, fingerprint: str, reason: str, message: str) -> QuarantinedRow:
    return QuarantinedRow.objects.create(
        pipeline="shop",
        business_date=day,
        dataset=dataset,
        reason_code=reason,
        message=message,
        raw_record="{}",
        record_fingerprint=fingerprint,
        first_run=run,
    )


@pytest.fixture
def records(shop):
    def run():
        return PipelineRun.objects.create(pipeline="shop", command="run_pipeline", started_at=timezone.now())

    first, second = run(), run()
    return {
        "a": quarantined(first, DAY, "lines", "a", "missing_id", "missing_id: id=null; zero_qty: qty='0'"),
        "b": quarantined(first, DAY, "lines", "b", "zero_qty", "zero_qty: qty='0' (at least one)"),
        "c": quarantined(second, date(2026, 11, 2), "products", "c", "missing_sku", "missing_sku: sku=null"),
        "d": quarantined(second, date(2026, 11, 2), "lines", "d", "zero_qty_x", "zero_qty_x: qty='0'"),
        "runs": (first, second),
    }


def selected(config, **filters) -> set[str]:
    return set(quarantine_select(config=config, **filters).values_list("record_fingerprint", flat=True))


@pytest.mark.django_db
def test_replay_selects_rows_by_first_run_dataset_rule_code_anywhere_in_the_message_and_date(shop, records):
    first, second = records["runs"]

    assert selected(shop) == {"a", "b", "c", "d"}
    assert selected(shop, run_id=first.pk) == {"a", "b"}
    assert selected(shop, dataset="products") == {"c"}
    # A rule matches the first code and any later one, but not a code it is only the prefix of.
    assert selected(shop, rule="zero_qty") == {"a", "b"}
    assert selected(shop, rule="zero_qty", business_date=DAY, run_id=first.pk, dataset="lines") == {"a", "b"}
    assert selected(shop, run_id=second.pk, dataset="lines") == {"d"}


@pytest.mark.django_db
def test_replay_fails_before_replaying_anything_when_a_dates_raw_partition_is_gone(shop, records):
    with pytest.raises(PartitionNotFound, match=r"no published partition for shop raw/products 2026-11-01"):
        quarantine_replay(pipeline="shop", rule="zero_qty")

    run = PipelineRun.objects.latest("id")
    assert (run.command, run.status, run.business_date) == ("replay_quarantine", "failed", DAY)
    assert "raw/lines 2026-11-01" in run.error and not run.steps.exists()
    assert QuarantinedRow.objects.count() == 4


@pytest.mark.django_db
def test_replay_command_reports_no_match_and_refuses_an_unknown_dataset(shop, records):
    out = StringIO()
    call_command("replay_quarantine", "--pipeline", "shop", "--rule", "no_such_rule", stdout=out)
    assert out.getvalue().strip() == "nothing to do: no quarantined rows match"

    with pytest.raises(
        CommandError, match=r"pipeline 'shop' has no dataset 'orders' \(known: lines, products\)"
    ):
        call_command("replay_quarantine", "--pipeline", "shop", "--dataset", "orders", stdout=StringIO())
    with pytest.raises(CommandError, match=r"invalid --date '2026-11'"):
        call_command("replay_quarantine", "--pipeline", "shop", "--date", "2026-11", stdout=StringIO())


ONLY_ZERO_QUANTITY = "zero_quantity: quantity='0' (a line sells or returns at least one item)"


@pytest.mark.spark_submit
@pytest.mark.django_db(transaction=True)
def test_replay_by_rule_loads_the_rows_a_relaxed_rule_now_passes_and_keeps_the_others(
    pipeline_dir, tmp_path, monkeypatch, staging_root, spark
):
    from etlcore.demo.pipeline import demo_run

    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "replay-test-key")
    demo = DEMO_FILE.read_text()
    (pipeline_dir / "retail_demo.toml").write_text(demo)
    with monkeypatch.context() as in_session:
        jobs_in_session(in_session, spark)
        demo_run(data_dir=tmp_path / "demo", business_dates=[DAY])

    zero = QuarantinedRow.objects.filter(message__contains="zero_quantity")
    only_zero = {r.raw_record for r in zero if r.message == ONLY_ZERO_QUANTITY}
    also_other = zero.count() - len(only_zero)
    assert only_zero, "the demo date has a line whose only fault is a zero quantity"
    lines_before, quarantine_before = FactSalesLine.objects.count(), QuarantinedRow.objects.count()

    # The business now accepts zero-quantity lines, with a warning.
    relaxed = demo.replace("values = [0]\n", 'values = [0]\nseverity = "warn"\n', 1)
    assert relaxed != demo
    (pipeline_dir / "retail_demo.toml").write_text(relaxed)
    out = StringIO()
    call_command("replay_quarantine", "--rule", "zero_quantity", stdout=out)  # a real spark-submit

    assert FactSalesLine.objects.count() == lines_before + len(only_zero)
    assert FactSalesLine.objects.filter(quantity=0).count() == len(only_zero)
    assert QuarantinedRow.objects.count() == quarantine_before - len(only_zero)
    assert not QuarantinedRow.objects.filter(message__contains="zero_quantity").exists()  # new reasons only
    run = PipelineRun.objects.filter(command="replay_quarantine").get()
    steps = {s.step: s for s in run.steps.all()}
    assert (run.status, run.business_date, list(steps)) == ("succeeded", DAY, ["transform", "load", "replay"])
    assert steps["replay"].details | {"reasons_now": None, "filters": None} == {
        "filters": None,
        "selected": len(only_zero) + also_other,
        "released": len(only_zero),
        "still_quarantined": also_other,
        "reasons_now": None,
        "quarantine_before": quarantine_before,
        "quarantine_after": quarantine_before - len(only_zero),
    }
    assert steps["transform"].details["datasets"]["order_lines"]["warnings"]["zero_quantity"] == len(
        only_zero
    )
    assert f"{len(only_zero)} released, {also_other} still quarantined" in out.getvalue()
