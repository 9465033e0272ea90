"""Table fingerprints narrowed to some rows: the facts of some dates compared across two warehouses."""

from __future__ import annotations

from datetime import date

import pytest

from warehouse.checks import table_checksum
from warehouse.models import DimDate

pytestmark = pytest.mark.django_db


def dim_date(day: date) -> DimDate:
    return DimDate.objects.create(
        date_key=int(day.strftime("%Y%m%d")),
        date=day,
        year=day.year,
        quarter=(day.month - 1) // 3 + 1,
        month=day.month,
        day=day.day,
        day_of_week=day.isoweekday(),
        is_weekend=day.isoweekday() >= 6,
    )


def test_table_checksum_filters_count_and_digest_only_the_matching_rows():
    first = dim_date(date(2026, 11, 1))
    alone = table_checksum(DimDate, using="default", mode="natural")
    dim_date(date(2026, 11, 2))

    narrowed = table_checksum(DimDate, using="default", mode="natural", filters={"date": first.date})
    assert narrowed == alone
    assert table_checksum(DimDate, using="default", mode="natural")[0] == 2
