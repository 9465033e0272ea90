"""Connector.probe, each kind against its real source: files on disk, moto's S3 server, PostgreSQL, and the
loopback sales APIs. What a probe must say is decided from what the test put there and from what a real
extract (iter_batches, its next_state) delivered, never from the probe's own output."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, date, datetime, timedelta

import pytest

from connectors import build_connector
from connectors.base import ExtractWindow, LastExtract
from connectors.errors import ProbeUnsupported

from .sales_apis import TOKEN, sales_api
from .test_rest_incremental import SHOPIFY_PATH, shopify_options
from .test_s3 import connector as s3_connector
from .test_s3 import next_second, window_ending


def day(n: int) -> ExtractWindow:
    start = datetime(2026, 11, n, tzinfo=UTC)
    return ExtractWindow(business_date=date(2026, 11, n), start=start, end=start + timedelta(days=1))


def extracted(source, window: ExtractWindow) -> dict | None:
    """Run the source's extract of `window` to its end; the state it would save, through JSON as saved."""
    for _ in source.iter_batches(window):
        pass
    close = getattr(source, "close", None)
    if close is not None:
        close()
    return json.loads(json.dumps(source.next_state))


def probe(options: dict, window: ExtractWindow, *, state=None, last=None):
    source = build_connector(name="orders", options=options, state=state)
    try:
        found = source.probe(window, last=last)
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    json.dumps(found.fingerprint)  # JSON-able: it is stored on the check record
    return found


# --- files ----------------------------------------------------------------------------------------------


def file_options(folder, path="orders_{date:%Y%m%d}.csv") -> dict:
    return {"kind": "file", "path": path, "base_dir": str(folder)}


def test_files_nothing_matching_is_no_fingerprint_and_nothing_newer(tmp_path):
    (tmp_path / "orders_20261102.csv").write_text("id\n1\n")  # another date's file

    found = probe(file_options(tmp_path), day(1))

    assert found.fingerprint is None and found.newer is False


def test_files_never_extracted_are_newer_and_the_fingerprint_counts_them(tmp_path):
    (tmp_path / "orders_20261101.csv").write_text("id\n1\n2\n")

    found = probe(file_options(tmp_path), day(1))

    assert found.newer is True
    assert found.fingerprint["files"] == 1 and found.fingerprint["bytes"] == len("id\n1\n2\n")
    assert found.fingerprint["newest"] == [str(tmp_path / "orders_20261101.csv")]


def test_files_unchanged_since_the_last_extract_began_are_not_newer_and_keep_their_fingerprint(tmp_path):
    (tmp_path / "orders_20261101.csv").write_text("id\n1\n")
    before = probe(file_options(tmp_path), day(1))
    last = LastExtract(window=day(1), started_at=datetime.now(UTC) + timedelta(milliseconds=50))
    time.sleep(0.1)

    after = probe(file_options(tmp_path), day(1), last=last)

    assert after.newer is False
    assert after.fingerprint == before.fingerprint


def test_file_rewritten_after_the_last_extract_began_is_newer_with_another_fingerprint(tmp_path):
    path = tmp_path / "orders_20261101.csv"
    path.write_text("id\n1\n")
    before = probe(file_options(tmp_path), day(1))
    last = LastExtract(window=day(1), started_at=datetime.now(UTC))
    time.sleep(0.02)
    path.write_text("id\n2\n")  # same size, new content

    after = probe(file_options(tmp_path), day(1), last=last)

    assert after.newer is True
    assert after.fingerprint != before.fingerprint


def test_file_copied_into_place_with_an_old_modification_time_is_still_newer(tmp_path):
    """`cp -p` / `rsync -t` keep the sender's mtime, from before the last extract: the inode's change time
    says when the file arrived."""
    (tmp_path / "orders_20261101.csv").write_text("id\n1\n")
    last = LastExtract(window=day(1), started_at=datetime.now(UTC))
    time.sleep(0.02)
    arrived = tmp_path / "orders_20261101_late.csv"
    arrived.write_text("id\n9\n")
    old = (last.started_at - timedelta(hours=2)).timestamp()
    os.utime(arrived, (old, old))
    options = file_options(tmp_path, "orders_{date:%Y%m%d}*.csv")

    found = probe(options, day(1), last=last)

    assert found.newer is True and found.fingerprint["files"] == 2


def test_files_of_a_date_whose_path_differs_from_the_last_extract_are_newer_however_old(tmp_path):
    path = tmp_path / "orders_20261102.csv"
    path.write_text("id\n1\n")
    old = (datetime.now(UTC) - timedelta(days=3)).timestamp()
    os.utime(path, (old, old))
    last = LastExtract(window=day(1), started_at=datetime.now(UTC) + timedelta(seconds=5))

    assert probe(file_options(tmp_path), day(2), last=last).newer is True
    # One path for every date (a file holding many): the last extract did read it.
    (tmp_path / "all.csv").write_text("id\n1\n")
    assert probe(file_options(tmp_path, "all.csv"), day(2), last=last).newer is False


# --- S3 -------------------------------------------------------------------------------------------------


def s3_options(bucket, **options) -> dict:
    return {
        "kind": "s3",
        "bucket": bucket.name,
        "endpoint_url": bucket.endpoint,
        "region": "us-east-1",
        "prefix": "orders/",
        **options,
    }


def open_window() -> ExtractWindow:
    return window_ending(datetime.now(UTC).replace(microsecond=0) + timedelta(days=1))


def test_s3_empty_prefix_is_no_fingerprint(s3_bucket):
    s3_bucket.put("elsewhere/a.csv", b"id\n1\n")

    found = probe(s3_options(s3_bucket), open_window())

    assert found.fingerprint is None and found.newer is False


def test_s3_incremental_object_not_yet_read_is_newer_and_read_one_is_not(s3_bucket):
    s3_bucket.put("orders/a.csv", b"id\n1\n")
    window = open_window()
    first = probe(s3_options(s3_bucket), window)
    assert first.newer is True and first.fingerprint["objects"] == 1

    state = extracted(s3_connector(s3_bucket, prefix="orders/"), window)
    again = probe(s3_options(s3_bucket), window, state=state)
    assert again.newer is False
    assert again.fingerprint == first.fingerprint

    s3_bucket.put("orders/b.csv", b"id\n2\n")  # possibly within the same second as a.csv: ETags tell
    added = probe(s3_options(s3_bucket), window, state=state)
    assert added.newer is True
    assert added.fingerprint != first.fingerprint and added.fingerprint["objects"] == 2


def test_s3_incremental_object_after_the_window_end_is_not_newer_for_that_window(s3_bucket):
    s3_bucket.put("orders/a.csv", b"id\n1\n")
    ended = window_ending(datetime.now(UTC) - timedelta(hours=1))  # a closed date, before the upload

    found = probe(s3_options(s3_bucket), ended)

    assert found.fingerprint is None and found.newer is False


def test_s3_full_mode_object_rewritten_after_the_last_extract_began_is_newer(s3_bucket):
    s3_bucket.put("orders/a.csv", b"id\n1\n")
    next_second(s3_bucket, "orders/a.csv")
    window = open_window()
    last = LastExtract(window=window, started_at=datetime.now(UTC) + timedelta(seconds=1))
    next_second(s3_bucket, "orders/a.csv")
    time.sleep(1.1)  # past the extract's start, to S3's second
    before = probe(s3_options(s3_bucket, mode="full"), window, last=last)
    assert before.newer is False

    s3_bucket.put("orders/a.csv", b"id\n2\n")
    after = probe(s3_options(s3_bucket, mode="full"), window, last=last)

    assert after.newer is True
    assert after.fingerprint != before.fingerprint  # same key, same size: the ETag differs


# --- PostgreSQL -----------------------------------------------------------------------------------------

PG = {
    "kind": "postgres",
    "dsn_env": "SALES_DB_URL",
    "table": "orders",
    "mode": "incremental",
    "watermark_column": "updated_at",
    "tiebreaker_column": "id",
}


@pytest.fixture
def orders_table(source_db):
    source_db.execute("CREATE TABLE orders (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL)")
    return source_db


def insert(db, *rows: tuple[int, str]) -> None:
    db.execute(
        "INSERT INTO orders VALUES " + ", ".join(["(%s, %s)"] * len(rows)), [v for r in rows for v in r]
    )


@pytest.mark.postgres
def test_postgres_empty_table_is_no_fingerprint(orders_table):
    found = probe(PG, day(1))

    assert found.fingerprint is None and found.newer is False


@pytest.mark.postgres
def test_postgres_rows_after_the_saved_watermark_are_newer_and_delivered_ones_are_not(orders_table):
    insert(orders_table, (1, "2026-11-01 08:00:00+00"), (2, "2026-11-01 09:00:00+00"))
    first = probe(PG, day(1))
    assert first.newer is True
    assert first.fingerprint == {"watermark": "2026-11-01 09:00:00+00", "after": 2, "at": 0}

    state = extracted(build_connector(name="orders", options=PG), day(1))
    delivered = probe(PG, day(1), state=state)
    assert delivered.newer is False

    insert(orders_table, (3, "2026-11-01 10:00:00+00"))
    later = probe(PG, day(1), state=state)
    assert later.newer is True
    assert later.fingerprint != delivered.fingerprint


@pytest.mark.postgres
def test_postgres_row_committed_late_at_exactly_the_saved_watermark_is_newer(orders_table):
    insert(orders_table, (5, "2026-11-01 09:00:00+00"))
    state = extracted(build_connector(name="orders", options=PG), day(1))

    insert(orders_table, (4, "2026-11-01 09:00:00+00"))  # lower key, same instant
    found = probe(PG, day(1), state=state)

    assert found.newer is True
    assert found.fingerprint == {"watermark": "2026-11-01 09:00:00+00", "after": 0, "at": 2}


@pytest.mark.postgres
def test_postgres_rows_of_the_next_date_are_not_newer_for_this_one(orders_table):
    insert(orders_table, (1, "2026-11-01 08:00:00+00"))
    state = extracted(build_connector(name="orders", options=PG), day(1))

    insert(orders_table, (2, "2026-11-02 00:00:00+00"))

    assert probe(PG, day(1), state=state).newer is False
    assert probe(PG, day(2), state=state).newer is True


@pytest.mark.postgres
def test_postgres_full_refresh_cannot_be_probed(orders_table):
    options = {"kind": "postgres", "dsn_env": "SALES_DB_URL", "table": "orders"}

    with pytest.raises(ProbeUnsupported, match="full-refresh"):
        probe(options, day(1))


# --- REST -----------------------------------------------------------------------------------------------


@pytest.fixture
def shop(monkeypatch):
    monkeypatch.setenv("SHOP_TOKEN", TOKEN)
    with sales_api("shopify") as api:
        yield api


def test_rest_nothing_since_the_start_is_no_fingerprint(shop):
    found = probe(shopify_options(shop), day(1))

    assert found.fingerprint is None and found.newer is False
    assert len(shop.seen) == 1


def test_rest_order_updated_after_the_saved_watermark_is_newer_and_delivered_ones_are_not(shop):
    options = shopify_options(shop)
    shop.store.put(1, "2026-11-01T08:00:00+00:00")
    shop.store.put(2, "2026-11-01T09:00:00+00:00")
    first = probe(options, day(1))
    assert first.newer is True and first.fingerprint["records"] == 2

    state = extracted(build_connector(name="orders", options=options), day(1))
    shop.seen.clear()
    delivered = probe(options, day(1), state=state)
    assert delivered.newer is False
    # Asked from the saved watermark itself, not from the start of time: one page, the last order only.
    assert [r.query["updated_at_min"] for r in shop.seen] == ["2026-11-01T09:00:00+00:00"]

    shop.store.put(1, "2026-11-01T11:00:00+00:00", status="cancelled")  # updated again
    later = probe(options, day(1), state=state)
    assert later.newer is True
    assert later.fingerprint != delivered.fingerprint


def test_rest_order_at_the_saved_watermark_not_delivered_before_is_newer_past_a_page_of_delivered(shop):
    options = shopify_options(shop)  # two orders a page
    for order in (1, 2, 3):
        shop.store.put(order, "2026-11-01T09:00:00+00:00")
    state = extracted(build_connector(name="orders", options=options), day(1))
    shop.store.put(4, "2026-11-01T09:00:00+00:00")  # same second, committed after the extract

    found = probe(options, day(1), state=state)

    assert found.newer is True
    assert found.fingerprint["records"] == 4


def test_rest_update_after_the_window_end_is_not_newer_for_that_window(shop):
    options = shopify_options(shop)
    shop.store.put(1, "2026-11-01T08:00:00+00:00")
    state = extracted(build_connector(name="orders", options=options), day(1))
    shop.store.put(2, "2026-11-02T01:00:00+00:00")

    assert probe(options, day(1), state=state).newer is False
    assert probe(options, day(2), state=state).newer is True


def test_rest_source_without_incremental_cannot_be_probed(shop):
    options = {"kind": "rest", "base_url": shop.url, "path": SHOPIFY_PATH, "records_path": "orders"}

    with pytest.raises(ProbeUnsupported, match="without `incremental`"):
        probe(options, day(1))
