"""DimCustomer.email_encrypted: a Fernet token, different at every extraction of the same e-mail. The loader
keeps the first it stores, so a re-run or a later partition changes no row (both load paths)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pyarrow.parquet as pq
import pytest

from warehouse.checks import warehouse_checksums
from warehouse.loaders import partition_load
from warehouse.models import DimCustomer

from .partitions import default_outputs, sale, write_outputs

pytestmark = pytest.mark.django_db(databases="__all__")

DAY, NEXT_DAY = date(2026, 11, 2), date(2026, 11, 3)
KEY = "c" * 64


def load(alias: str, folder, day: date, *, token: str | None, country: str, hour: int) -> None:
    seen = datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
    customers = [{"customer_key": KEY, "country": country, "country_seen_at": seen, "email_encrypted": token}]
    outputs = default_outputs([sale(f"O{day:%d}", 1, day=day)]) | {"customers": customers, "quarantine": []}
    partition_load(
        outputs=write_outputs(folder / f"{day}-{token}", outputs),
        pipeline="shop",
        business_date=day,
        run_id=None,
        using=alias,
    )


def stored(alias: str) -> list[tuple]:
    return list(DimCustomer.objects.using(alias).values_list("customer_key", "country", "email_encrypted"))


def test_a_re_run_with_a_new_token_changes_no_row_and_a_later_partition_keeps_the_first_token(
    db_alias, tmp_path
):
    load(db_alias, tmp_path, DAY, token="token-first-extraction", country="DE", hour=9)
    assert stored(db_alias) == [(KEY, "DE", "token-first-extraction")]
    before = warehouse_checksums(using=db_alias)
    rows = list(DimCustomer.objects.using(db_alias).values())

    # The same date extracted again: the same e-mail, another token.
    load(db_alias, tmp_path, DAY, token="token-second-extraction", country="DE", hour=9)
    assert list(DimCustomer.objects.using(db_alias).values()) == rows
    assert warehouse_checksums(using=db_alias) == before

    # A later order changes the country (type 1), not the token.
    load(db_alias, tmp_path, NEXT_DAY, token="token-next-day", country="FR", hour=18)
    assert stored(db_alias) == [(KEY, "FR", "token-first-extraction")]


def test_a_customer_stored_without_a_token_takes_the_first_one_a_load_brings(db_alias, tmp_path):
    load(db_alias, tmp_path, NEXT_DAY, token=None, country="FR", hour=18)
    assert stored(db_alias) == [(KEY, "FR", None)]
    # An earlier date: its country loses to the stored later one, its token fills the empty column.
    load(db_alias, tmp_path, DAY, token="token-of-day-one", country="DE", hour=9)
    assert stored(db_alias) == [(KEY, "FR", "token-of-day-one")]
    load(db_alias, tmp_path, NEXT_DAY, token="token-again", country="FR", hour=18)
    assert stored(db_alias) == [(KEY, "FR", "token-of-day-one")]


def test_a_partition_transformed_before_the_job_wrote_the_token_still_loads(db_alias, tmp_path):
    seen = datetime(2026, 11, 2, 9, tzinfo=UTC)
    outputs = default_outputs([sale("O1", 1, day=DAY)]) | {
        "customers": [{"customer_key": KEY, "country": "DE", "country_seen_at": seen}],
        "quarantine": [],
    }
    paths = write_outputs(tmp_path / "old", outputs)
    (customers,) = paths["customers"]
    pq.write_table(pq.read_table(customers).drop_columns(["email_encrypted"]), customers)

    partition_load(outputs=paths, pipeline="shop", business_date=DAY, run_id=None, using=db_alias)
    assert stored(db_alias) == [(KEY, "DE", None)]
