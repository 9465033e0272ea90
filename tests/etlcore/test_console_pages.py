"""The ops console's pages with Django's test client: the runs list (badges, durations, rows, errors,
filters, started by, charts), a run's page (read-only, steps, reconciliation, error, log tail, links), the
admin index's "last night" panel, and the quarantine (filters, per-rule counts, masked record)."""

from __future__ import annotations

import json
import re
from datetime import date, timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.utils import timezone

from etlcore.models import PipelineRun, StagedPartition, StepRun
from tests.pipelines import dataset, pipeline_write
from warehouse.models import QuarantinedRow

pytestmark = pytest.mark.django_db

DETAILS = {
    "datasets": {
        "order_lines": {
            "rows_in": 959,
            "rows_out": 462,
            "rejected": 6,
            "duplicates": 11,
            "filtered": {"cancelled": 480},
            "rule_failures": {"unknown_product": 6},
            "warnings": {},
        }
    }
}


@pytest.fixture
def admin_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("admin", "admin@example.com", "pw"))
    return client


def _run(day: int, status: str, *, seconds: float = 35.966081, error: str = "", origin="cron", **fields):
    started = timezone.now() - timedelta(hours=day)
    return PipelineRun.objects.create(
        pipeline=fields.pop("pipeline", "shop"),
        business_date=date(2026, 11, day),
        command="run_pipeline",
        started_at=started,
        finished_at=started + timedelta(seconds=seconds),
        status=status,
        error=error,
        origin=origin,
        started_by=fields.pop("started_by", "etl"),
        **fields,
    )


@pytest.fixture
def runs(tmp_path):
    good = _run(1, "succeeded")
    now = good.started_at
    StepRun.objects.create(
        run=good, step="transform", status="succeeded", started_at=now, finished_at=now, rows_in=959,
        rows_out=462, rows_rejected=6, details=DETAILS,
    )  # fmt: skip
    StepRun.objects.create(
        run=good, step="load", status="succeeded", started_at=now, finished_at=now, rows_out=462
    )
    log = tmp_path / "spark-submit.log"
    log.write_text("".join(f"spark line {n}\n" for n in range(200)) + "Py4JJavaError: the job died\n")
    bad = _run(
        2,
        "failed",
        seconds=754,
        error="transform failed: spark-submit exited 1\nsee the log",
        origin="admin",
        started_by="alice",
    )
    StepRun.objects.create(
        run=bad, step="extract", status="succeeded", started_at=bad.started_at, finished_at=bad.started_at,
        rows_out=959,
    )  # fmt: skip
    StepRun.objects.create(
        run=bad, step="transform", status="failed", started_at=bad.started_at, finished_at=bad.finished_at,
        details={**DETAILS, "log": str(log), "attempts": [
            {"attempt": 1, "seconds": 3.5, "error": "OSError: disk full", "retry_in_seconds": 10}
        ]}, attempts=2, error="spark-submit exited 1",
    )  # fmt: skip
    StagedPartition.objects.create(
        pipeline="shop", dataset="order_lines", business_date=bad.business_date, run=bad, row_count=959,
        checksum="sha256:0", manifest="/s/_manifest.json", published_at=now,
    )  # fmt: skip
    return {"good": good, "bad": bad, "log": log}


def test_the_runs_list_shows_coloured_status_human_duration_rows_error_and_who_started_it(admin_client, runs):
    page = admin_client.get("/admin/etlcore/pipelinerun/").content.decode().split('id="result_list"')[1]
    assert '<span class="etl-badge etl-failed"' in page and '<span class="etl-badge etl-succeeded"' in page
    assert "36s" in page and "12m 34s" in page and "35.966081" not in page
    assert "462 (+6 quarantined)" in page
    assert "transform failed: spark-submit exited 1" in page and "see the log</td>" not in page
    assert "cron (etl)" in page and "admin (alice)" in page


def test_an_abandoned_run_has_its_own_badge(admin_client):
    _run(3, "abandoned", error="abandoned: its process ended")
    page = admin_client.get("/admin/etlcore/pipelinerun/").content.decode()
    assert '<span class="etl-badge etl-abandoned"' in page


def test_the_runs_list_filters_by_status_pipeline_and_a_business_date_range(admin_client, runs):
    other = _run(5, "succeeded", pipeline="other_shop")

    def ids(query: str) -> set[int]:
        response = admin_client.get(f"/admin/etlcore/pipelinerun/?{query}")
        assert response.status_code == 200
        return {run.pk for run in response.context["cl"].result_list}

    assert ids("status__exact=failed") == {runs["bad"].pk}
    assert ids("pipeline=other_shop") == {other.pk}
    assert ids("business_date__gte=2026-11-02&business_date__lte=2026-11-04") == {runs["bad"].pk}
    assert ids("business_date__gte=2026-11-02") == {runs["bad"].pk, other.pk}
    assert ids("business_date__lte=2026-11-01&pipeline=shop") == {runs["good"].pk}
    page = admin_client.get("/admin/etlcore/pipelinerun/?status__exact=failed").content.decode()
    # The range form keeps the other filters when it is submitted.
    assert re.search(r'<input type="hidden" name="status__exact" value="failed">', page)
    assert 'type="date" name="business_date__gte"' in page


def test_the_runs_page_draws_rows_and_duration_per_run_and_the_quarantine_rate(admin_client, runs):
    page = admin_client.get("/admin/etlcore/pipelinerun/?pipeline=shop").content.decode()
    assert page.count('class="etl-chart etl-chart-bars"') == 2 and 'class="etl-chart etl-chart-line"' in page
    assert "shop: rows loaded per run" in page and "quarantine rate per business date" in page
    # The quarantine rate of the date whose transform succeeded: 6 of 959 rows.
    assert "2026-11-01: 0.63 % quarantined (6/959)" in page


def test_a_run_page_is_read_only_and_titled_by_its_number(admin_client, runs):
    bad = runs["bad"]
    page = admin_client.get(f"/admin/etlcore/pipelinerun/{bad.pk}/change/").content.decode()
    assert f"<h1>Pipeline run #{bad.pk}</h1>" in page and "Change pipeline run" not in page
    assert "Delete" not in page and "Add another" not in page and 'name="_save"' not in page


def test_a_failed_run_page_shows_steps_reconciliation_error_log_tail_and_links(admin_client, runs):
    bad = runs["bad"]
    page = admin_client.get(f"/admin/etlcore/pipelinerun/{bad.pk}/change/").content.decode()
    assert re.search(r'id="run-error">.*transform failed: spark-submit exited 1', page, re.S)
    step = re.search(r'class="etl-step-transform">(.*?)</tr>', page, re.S).group(1)
    assert "12m 34s" in step and "<td>2</td>" in step and "spark-submit exited 1" in step
    assert "attempt 1 failed after 3.5s:\n      OSError: disk full" in page
    row = re.search(r'data-dataset="order_lines">(.*?)</tr>', page, re.S).group(1)
    cells = re.findall(r'<td class="num">(\d+)</td>', row)
    assert cells == ["959", "462", "6", "11", "480"]  # in, loaded, quarantined, duplicates, filtered
    assert "cancelled 480" in row and "unknown_product</a> 6" in row and "✓ 959" in row
    assert "Py4JJavaError: the job died" in page and "spark line 199" in page and "spark line 100" not in page
    assert "/admin/etlcore/stagedpartition/?run__id__exact=" in page and "1 staged partition " in page
    assert "/admin/warehouse/quarantinedrow/?pipeline=shop&amp;business_date=2026-11-02" in page
    staged = admin_client.get(f"/admin/etlcore/stagedpartition/?run__id__exact={bad.pk}")
    assert staged.status_code == 200 and staged.context["cl"].result_count == 1


def test_a_recorded_log_tail_is_shown_when_the_step_has_one(admin_client, runs):
    step = runs["bad"].steps.get(step="transform")
    step.details = {**step.details, "log_tail": "recorded: executor lost"}
    step.save()
    runs["log"].unlink()
    page = admin_client.get(f"/admin/etlcore/pipelinerun/{runs['bad'].pk}/change/").content.decode()
    assert "recorded: executor lost" in page


def test_the_engine_that_ran_a_transform_and_why_are_on_the_run_page_and_in_pipeline_status(
    admin_client, runs
):
    step = runs["good"].steps.get(step="transform")
    why = "auto: 959 staged rows <= dask max_rows 1000000"
    step.details = {**step.details, "engine": "dask", "engine_reason": why}
    step.save()
    page = admin_client.get(f"/admin/etlcore/pipelinerun/{runs['good'].pk}/change/").content.decode()
    row = re.search(r'class="etl-engine">(.*?)</tr>', page, re.S).group(1)
    assert "on dask: auto: 959 staged rows &lt;= dask max_rows 1000000" in row
    out = StringIO()
    call_command("pipeline_status", "--pipeline", "shop", stdout=out)
    assert f"          engine dask: {why}\n" in out.getvalue()


def test_the_admin_index_says_how_each_pipeline_s_last_run_went(admin_client, runs):
    _run(9, "succeeded", pipeline="other_shop")
    page = admin_client.get("/admin/").content.decode()
    panel = re.search(r'id="last-night">(.*?)</table>', page, re.S).group(1)
    shop = re.search(r"<tr[^>]*>\s*<th[^>]*><a[^>]*>shop</a>(.*?)</tr>", panel, re.S).group(1)
    # The latest run of shop is the succeeded one (started an hour ago), not the failed one before it.
    assert "etl-succeeded" in shop and "Nov. 1, 2026" in shop and f"run #{runs['good'].pk}" in shop
    assert "other_shop" in panel


# --- the quarantine ----------------------------------------------------------------------------------


@pytest.fixture
def quarantine(pipeline_dir, tmp_path):
    lines = dataset(
        tmp_path / "lines.csv", order_id={}, sku={}, customer_email={"pii": True},
        customer_email_encrypted={"pii": "encrypt", "from": "customer_email"},
    )  # fmt: skip
    pipeline_write(pipeline_dir, datasets={"order_lines": lines})
    rows = []
    for n, (code, value) in enumerate(
        [("unknown_product", "SKU-CANARY-9"), ("unknown_product", "SKU-CANARY-8"), ("bad_qty", "q")]
    ):
        personal = {"customer_email": "hmac-SECRET", "customer_email_encrypted": "[encrypted]"}
        record = {"order_id": f"O{n}", "sku": value, **personal}
        rows.append(
            QuarantinedRow.objects.create(
                pipeline="shop",
                business_date=date(2026, 11, 1 + n // 2),
                dataset="order_lines",
                reason_code=code,
                message=f"{code}: sku='{value}'; missing_customer_email: customer_email='hmac-SECRET'",
                raw_record=json.dumps(record),
                record_fingerprint=f"{n}" * 64,
                occurrences=n + 1,
            )
        )
    return rows


def test_the_quarantine_list_shows_the_offending_value_and_the_message_masked(admin_client, quarantine):
    page = admin_client.get("/admin/warehouse/quarantinedrow/").content.decode()
    assert "sku=&#x27;SKU-CANARY-9&#x27;" in page and "missing_customer_email: customer_email=•••" in page
    assert "hmac-SECRET" not in page


def test_the_quarantine_filters_by_rule_and_dates_and_counts_per_rule(admin_client, quarantine):
    response = admin_client.get("/admin/warehouse/quarantinedrow/?reason_code=unknown_product")
    assert response.context["cl"].result_count == 2
    assert response.context["per_rule"] == [
        {"reason_code": "unknown_product", "records": 2, "occurrences": 3}
    ]
    every = admin_client.get("/admin/warehouse/quarantinedrow/?pipeline=shop").context["per_rule"]
    assert [(r["reason_code"], r["records"]) for r in every] == [("unknown_product", 2), ("bad_qty", 1)]
    later = admin_client.get("/admin/warehouse/quarantinedrow/?business_date__gte=2026-11-02")
    assert [r.reason_code for r in later.context["cl"].result_list] == ["bad_qty"]
    dataset = admin_client.get("/admin/warehouse/quarantinedrow/?dataset=order_lines")
    assert dataset.context["cl"].result_count == 3


def test_a_quarantined_record_is_pretty_printed_with_every_personal_field_masked(admin_client, quarantine):
    page = admin_client.get(f"/admin/warehouse/quarantinedrow/{quarantine[0].pk}/change/").content.decode()
    record = re.search(r'<pre class="etl-record">(.*?)</pre>', page, re.S).group(1)
    assert "&quot;sku&quot;: &quot;SKU-CANARY-9&quot;" in record
    assert "&quot;customer_email&quot;: &quot;•••&quot;" in record
    assert "&quot;customer_email_encrypted&quot;: &quot;•••&quot;" in record
    assert "hmac-SECRET" not in page and "[encrypted]" not in page


def test_a_quarantined_record_of_a_pipeline_without_a_readable_file_is_masked_whole(admin_client, quarantine):
    row = quarantine[0]
    QuarantinedRow.objects.filter(pk=row.pk).update(pipeline="gone")
    page = admin_client.get(f"/admin/warehouse/quarantinedrow/{row.pk}/change/").content.decode()
    assert "SKU-CANARY-9" not in page.split("raw record")[-1] and "hmac-SECRET" not in page


def test_staff_without_the_operate_permission_see_no_actions(client, django_user_model, runs, quarantine):
    user = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    for codename in ("view_pipelinerun", "view_quarantinedrow"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(user)
    page = client.get(f"/admin/etlcore/pipelinerun/{runs['bad'].pk}/change/").content.decode()
    assert "Pipeline run #" in page and 'id="run-actions"' not in page and "Re-run" not in page
    listing = client.get(
        "/admin/warehouse/quarantinedrow/?pipeline=shop&reason_code=bad_qty"
    ).content.decode()
    assert "Replay these rows" not in listing
