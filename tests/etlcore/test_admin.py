from __future__ import annotations

import pytest
from django.utils import timezone

from etlcore.models import PipelineRun, StepRun

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


@pytest.mark.parametrize(
    "model",
    ["dimdate", "dimstore", "dimproduct", "dimcustomer", "factsalesline", "factdailysales", "quarantinedrow"],
)
def test_admin_shows_every_warehouse_table(admin_client, model):
    assert admin_client.get(f"/admin/warehouse/{model}/").status_code == 200


def test_admin_lists_staged_partitions(admin_client):
    assert admin_client.get("/admin/etlcore/stagedpartition/").status_code == 200
