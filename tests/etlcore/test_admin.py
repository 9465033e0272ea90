from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
from django.utils import timezone

from etlcore.models import Backfill, Erasure, PipelineRun, StagedPartition, StepRun
from tests.admin_pages import assert_every_column_shows_a_value, registered

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, django_user_model):
    user = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    return client


def test_admin_lists_runs_and_shows_their_steps(admin_client):
    run = PipelineRun.objects.create(
        pipeline="retail_demo",
        command="run_pipeline",
        started_at=timezone.now(),
        status="failed",
        error="source 'products': no file matches /data/products_20261101.csv",
    )
    StepRun.objects.create(
        run=run, step="extract", started_at=timezone.now(), status="failed", error=run.error
    )

    listing = admin_client.get("/admin/etlcore/pipelinerun/")
    assert listing.status_code == 200 and b"retail_demo" in listing.content
    detail = admin_client.get(f"/admin/etlcore/pipelinerun/{run.pk}/change/")
    assert detail.status_code == 200 and b"no file matches /data/products_20261101.csv" in detail.content


@pytest.mark.parametrize("model", registered("etlcore"), ids=lambda m: m._meta.model_name)
def test_every_etlcore_admin_column_shows_a_value(admin_client, model):
    backfill = Backfill.objects.create(
        pipeline="retail_demo",
        first_date=date(2026, 11, 1),
        last_date=date(2026, 11, 2),
        command="run_pipeline",
        started_at=timezone.now() - timedelta(seconds=4),
        finished_at=timezone.now(),
        status="succeeded",
    )
    failed = PipelineRun.objects.create(
        pipeline="retail_demo",
        business_date=date(2026, 11, 1),
        command="run_pipeline",
        started_at=timezone.now() - timedelta(seconds=4),
        status="failed",
        error="source 'products': no file matches /data/products_20261101.csv",
    )
    run = PipelineRun.objects.create(
        pipeline="retail_demo",
        business_date=date(2026, 11, 1),
        command="extract",
        started_at=timezone.now() - timedelta(seconds=3),
        heartbeat_at=timezone.now() - timedelta(seconds=1),
        finished_at=timezone.now(),
        status="succeeded",
        backfill=backfill,
        resumed_from=failed,
    )
    StepRun.objects.create(
        run=run,
        step="extract",
        started_at=run.started_at,
        finished_at=run.finished_at,
        status="succeeded",
        rows_in=3,
        rows_out=2,
        rows_rejected=1,
        attempts=2,
    )
    StagedPartition.objects.create(
        pipeline="retail_demo",
        dataset="orders",
        business_date=run.business_date,
        run=run,
        row_count=3,
        checksum="sha256:0",
        manifest="/staging/retail_demo/raw/orders/date=2026-11-01/_manifest.json",
        published_at=timezone.now(),
    )
    Erasure.objects.create(
        pipeline="retail_demo",
        erased_at=timezone.now(),
        command="forget_customer",
        operator="etl",
        hostname="etl-host",
        counts={"sales_lines": 2},
        newly_listed=True,
    )
    assert_every_column_shows_a_value(admin_client, model)


def test_the_column_test_covers_every_etlcore_admin():  # an empty parametrize would pass silently
    names = [m._meta.model_name for m in registered("etlcore")]
    assert names == ["backfill", "erasure", "pipelinerun", "stagedpartition", "steprun"]


@pytest.mark.django_db(databases="__all__")
def test_admin_shows_a_running_run_whose_pipeline_lock_is_free_as_abandoned_with_when_last_seen(admin_client):
    from etlcore.locks import lock_try

    seen = timezone.now() - timedelta(minutes=5)
    run = PipelineRun.objects.create(
        pipeline="shop", command="load", started_at=seen, heartbeat_at=seen, status="running", pid=1
    )
    held = lock_try(pipeline="shop", using="default")
    try:
        assert b">running<" in admin_client.get("/admin/etlcore/pipelinerun/").content
    finally:
        held.release()
    listing = admin_client.get("/admin/etlcore/pipelinerun/").content.decode()
    assert f"abandoned (last seen {seen:%Y-%m-%d %H:%M:%S}" in listing
    run.refresh_from_db()
    assert run.status == "running"  # showing it is not recording it: the next run of the pipeline does


def test_a_backfill_page_lists_the_run_of_each_date_and_a_run_shows_its_attempts(admin_client):
    backfill = Backfill.objects.create(
        pipeline="retail_demo",
        first_date=date(2026, 11, 1),
        last_date=date(2026, 11, 2),
        command="run_pipeline",
        started_at=timezone.now(),
        status="failed",
        error="2026-11-02 run #2 failed at extract: source 'products': no file matches",
    )
    for day, status in ((date(2026, 11, 2), "failed"), (date(2026, 11, 1), "succeeded")):
        run = PipelineRun.objects.create(
            pipeline="retail_demo",
            business_date=day,
            command="run_pipeline",
            started_at=timezone.now(),
            status=status,
            backfill=backfill,
        )
        StepRun.objects.create(run=run, step="extract", started_at=timezone.now(), status=status, attempts=3)

    page = admin_client.get(f"/admin/etlcore/backfill/{backfill.pk}/change/").content.decode()
    assert page.index("Nov. 1, 2026") < page.index("Nov. 2, 2026")  # in date order
    assert "failed at extract: source &#x27;products&#x27;: no file matches" in page
    run_page = admin_client.get(f"/admin/etlcore/pipelinerun/{run.pk}/change/").content.decode()
    assert re.search(r'class="etl-step-extract">(?:(?!</tr>).)*<td>3</td>', run_page, re.S)
