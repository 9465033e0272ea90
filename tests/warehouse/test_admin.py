from __future__ import annotations

from datetime import date

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from etlcore.models import PipelineRun
from tests.admin_pages import assert_every_column_shows_a_value, registered
from tests.pipelines import dataset, pipeline_write
from warehouse.loaders import partition_load
from warehouse.models import QuarantinedRow

from .partitions import default_outputs, history_outputs, sale, write_outputs

pytestmark = pytest.mark.django_db


def test_product_admin_shows_versions_and_filters_the_current_ones(admin_client, tmp_path):
    for day, price in ((date(2026, 11, 1), "9.99"), (date(2026, 11, 2), "12.34")):
        partition_load(
            outputs=write_outputs(tmp_path / str(day), history_outputs(day, price=price)),
            pipeline="shop",
            business_date=day,
            run_id=None,
            using="default",
        )
    every = admin_client.get("/admin/warehouse/dimproduct/").content.decode()
    assert "9.99" in every and "12.34" in every and "Valid from" in every
    assert 'id="changelist-filter"' in every and "By is current" in every
    current = admin_client.get("/admin/warehouse/dimproduct/?is_current__exact=1").content.decode()
    assert "12.34" in current and "9.99" not in current


@pytest.mark.parametrize("model", registered("warehouse"), ids=lambda m: m._meta.model_name)
def test_every_warehouse_admin_column_shows_a_value(admin_client, tmp_path, model):
    run = PipelineRun.objects.create(
        pipeline="shop", command="load", started_at=timezone.now(), status="succeeded"
    )
    for day, price, region in ((date(2026, 11, 1), "9.99", "West"), (date(2026, 11, 2), "12.34", "North")):
        outputs = history_outputs(day, price=price, region=region)  # P1 and S1 change: closed versions
        outputs["sales_lines"].append(sale(f"R{day:%m%d}", 1, qty=-1, day=day, original=f"O{day:%m%d}"))
        outputs["quarantine"] = default_outputs([])["quarantine"]
        outputs["quarantine"][0]["message"] = "unknown_product: sku='X9' (not a product)"
        partition_load(
            outputs=write_outputs(tmp_path / str(day), outputs),
            pipeline="shop",
            business_date=day,
            run_id=run.pk,
            using="default",
        )
    assert_every_column_shows_a_value(admin_client, model)


def test_the_column_test_covers_every_warehouse_admin():  # an empty parametrize would pass silently
    assert [m._meta.model_name for m in registered("warehouse")] == [
        "dimcustomer",
        "dimdate",
        "dimproduct",
        "dimstore",
        "factdailysales",
        "factsalesline",
        "loadedpartition",
        "quarantinedrow",
    ]


def _staff(django_user_model, *, raw: bool):
    user = django_user_model.objects.create_user(username=f"staff-{raw}", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_quarantinedrow"))
    if raw:
        user.user_permissions.add(Permission.objects.get(codename="view_raw_record"))
    return user


@pytest.mark.parametrize("raw", [False, True])
def test_a_quarantined_rows_raw_record_is_shown_only_with_its_own_permission_and_personal_fields_masked(
    client, django_user_model, tmp_path, pipeline_dir, raw
):
    lines = dataset(tmp_path / "lines.csv", sku={}, customer_email={"pii": True})
    pipeline_write(pipeline_dir, datasets={"order_lines": lines})
    outputs = default_outputs([sale("O1", 1)])
    outputs["quarantine"][0]["raw_record"] = '{"customer_email":"hmac-PSEUDONYM","sku":"X9"}'
    partition_load(
        outputs=write_outputs(tmp_path, outputs),
        pipeline="shop",
        business_date=date(2026, 11, 1),
        run_id=None,
        using="default",
    )
    row = QuarantinedRow.objects.get()
    client.force_login(_staff(django_user_model, raw=raw))

    page = client.get(f"/admin/warehouse/quarantinedrow/{row.pk}/change/").content.decode()
    assert "unknown_product" in page and "sku X9 is not a product" in page  # reasons for every staff user
    assert "hmac-PSEUDONYM" not in page  # a pseudonym still describes a customer: masked for everyone
    assert ("&quot;sku&quot;: &quot;X9&quot;" in page) is raw
    assert ("&quot;customer_email&quot;: &quot;•••&quot;" in page) is raw
    found = client.get("/admin/warehouse/quarantinedrow/?q=PSEUDONYM").content.decode()
    assert ("0 quarantined rows" in found or "0 results" in found) is not raw
