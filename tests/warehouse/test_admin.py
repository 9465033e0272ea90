from __future__ import annotations

from datetime import date

import pytest

from warehouse.loaders import partition_load

from .partitions import history_outputs, write_outputs

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
