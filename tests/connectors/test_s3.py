"""connectors.s3 against moto's S3 server on loopback: boto3 speaks HTTP to it exactly as to AWS."""

from __future__ import annotations

import gzip
import io
import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors import build_connector
from connectors.base import ExtractWindow
from connectors.errors import ConfigurationError, SourceError
from connectors.records import to_staging_batch
from connectors.s3 import S3Connector

COLUMNS = {"sku": {"from": "sku", "required": True}, "name": {"from": "name"}, "price": {"from": "price"}}


def connector(bucket, state=None, **options) -> S3Connector:
    defaults = {"kind": "s3", "bucket": bucket.name, "endpoint_url": bucket.endpoint, "region": "us-east-1"}
    built = build_connector(
        name=options.pop("name", "products"), options={**defaults, **options}, state=state
    )
    assert isinstance(built, S3Connector)
    return built


def window_ending(end: datetime) -> ExtractWindow:
    return ExtractWindow(
        business_date=(end - timedelta(days=1)).date(), start=end - timedelta(days=1), end=end
    )


def tomorrow() -> ExtractWindow:
    """A window ending after every object a test uploads."""
    return window_ending(datetime.now(UTC).replace(microsecond=0) + timedelta(days=1))


def staged(source: S3Connector, window: ExtractWindow) -> list[dict]:
    return [
        row
        for batch in source.iter_batches(window)
        for row in to_staging_batch(batch, columns=COLUMNS, source_label=source.name).to_pylist()
    ]


def parquet_bytes(rows: list[dict]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


def next_second(bucket, key: str) -> None:
    """S3 times objects to the second: wait until a re-write gets a later LastModified."""
    modified = bucket.client.head_object(Bucket=bucket.name, Key=key)["LastModified"]
    while datetime.now(UTC) < modified + timedelta(seconds=1):
        time.sleep(0.05)


# --- formats --------------------------------------------------------------------------------------------


def test_csv_gzipped_jsonl_and_parquet_objects_are_all_staged_as_text(s3_bucket):
    s3_bucket.put("exports/a.csv", b'sku,name,price\nA1,"Mug, blue",4.50\nA2,,\nA3,"",1\n')
    s3_bucket.put(
        "exports/b.jsonl.gz",
        gzip.compress(b'{"sku": "B1", "name": "Tea", "price": 2.10}\n\n{"sku": "B2", "price": 10}\n'),
    )
    s3_bucket.put("exports/c.parquet", parquet_bytes([{"sku": "C1", "name": "Pot", "price": 12.5}]))
    source = connector(s3_bucket, prefix="exports/", mode="full", batch_size=2)

    rows = staged(source, tomorrow())

    assert sorted(rows, key=lambda r: r["sku"]) == [
        {"sku": "A1", "name": "Mug, blue", "price": "4.50"},
        {"sku": "A2", "name": None, "price": None},
        {"sku": "A3", "name": "", "price": "1"},
        {"sku": "B1", "name": "Tea", "price": "2.10"},
        {"sku": "B2", "name": None, "price": "10"},
        {"sku": "C1", "name": "Pot", "price": "12.5"},
    ]
    assert source.describe() == f"s3://{s3_bucket.name}/exports/ at {s3_bucket.endpoint}"


def test_gzipped_csv_with_csv_options_and_header_only_or_empty_objects(s3_bucket):
    s3_bucket.put("d/1.tsv.gz", gzip.compress("sku\tname\nT1\tcafé\nT2\tNA\n".encode()))
    s3_bucket.put("d/2.csv", b"sku,name\n")
    s3_bucket.put("d/3.csv", b"")
    source = connector(s3_bucket, prefix="d/", mode="full", csv={"null_values": ["NA"]})

    assert staged(source, tomorrow()) == [
        {"sku": "T1", "name": "café", "price": None},
        {"sku": "T2", "name": None, "price": None},
    ]


def test_malformed_json_line_is_a_source_error_naming_the_object_and_line(s3_bucket):
    s3_bucket.put("j/bad.jsonl", b'{"sku": "X"}\n{"sku": \n')

    with pytest.raises(SourceError, match=rf"s3://{s3_bucket.name}/j/bad.jsonl line 2: malformed JSON"):
        staged(connector(s3_bucket, prefix="j/"), tomorrow())


def test_corrupt_parquet_is_a_source_error_naming_the_object(s3_bucket):
    s3_bucket.put("p/bad.parquet", b"not parquet at all")

    with pytest.raises(SourceError, match=rf"cannot read parquet object s3://{s3_bucket.name}/p/bad.parquet"):
        staged(connector(s3_bucket, prefix="p/"), tomorrow())


def test_object_of_unknown_format_asks_for_the_format_option(s3_bucket):
    s3_bucket.put("x/readme.txt", b"hello")

    with pytest.raises(ConfigurationError, match="set format"):
        staged(connector(s3_bucket, prefix="x/"), tomorrow())


# --- selection ------------------------------------------------------------------------------------------


def test_glob_selects_only_matching_keys_under_the_prefix(s3_bucket):
    s3_bucket.put("in/2026-11-01/products.csv", b"sku\nP1\n")
    s3_bucket.put("in/2026-11-01/products.csv.tmp", b"sku\nTMP\n")
    s3_bucket.put("in/2026-11-01/stores.csv", b"sku\nS1\n")
    s3_bucket.put("in/2026-11-02/products.csv", b"sku\nP2\n")
    s3_bucket.put("elsewhere/products.csv", b"sku\nE1\n")
    source = connector(s3_bucket, prefix="in/{date}/", glob="*/products*.csv", mode="full")
    window = window_ending(datetime(2026, 11, 2, tzinfo=UTC))

    assert [r["sku"] for r in staged(source, window)] == ["P1"]
    assert source.describe().startswith(f"s3://{s3_bucket.name}/in/2026-11-01/ matching */products*.csv")


def test_full_mode_with_no_matching_object_is_an_error_naming_the_place(s3_bucket):
    with pytest.raises(SourceError, match=rf"no object in s3://{s3_bucket.name}/none/"):
        staged(connector(s3_bucket, prefix="none/", mode="full"), tomorrow())


def test_missing_bucket_is_a_source_error_naming_it(s3_bucket):
    source = build_connector(
        name="products",
        options={"kind": "s3", "bucket": "no-such-bucket-dse", "endpoint_url": s3_bucket.endpoint},
    )

    with pytest.raises(SourceError, match="bucket 'no-such-bucket-dse' does not exist"):
        list(source.iter_batches(tomorrow()))


# --- incremental ----------------------------------------------------------------------------------------


def test_incremental_reads_each_object_once_and_a_rewritten_object_again(s3_bucket):
    s3_bucket.put("orders/a.csv", b"sku\nA\n")
    s3_bucket.put("orders/b.csv", b"sku\nB\n")
    first = connector(s3_bucket, prefix="orders/")
    assert sorted(r["sku"] for r in staged(first, tomorrow())) == ["A", "B"]

    second = connector(s3_bucket, first.next_state, prefix="orders/")
    assert staged(second, tomorrow()) == []
    assert second.next_state == first.next_state

    next_second(s3_bucket, "orders/b.csv")
    s3_bucket.put("orders/a.csv", b"sku\nA2\n")
    third = connector(s3_bucket, second.next_state, prefix="orders/")
    assert [r["sku"] for r in staged(third, tomorrow())] == ["A2"]
    assert third.next_state["key"] == "orders/a.csv"
    assert third.next_state["last_modified"] > first.next_state["last_modified"]


def test_incremental_state_orders_objects_of_the_same_second_by_key(s3_bucket):
    for key in ("k/3.csv", "k/1.csv", "k/2.csv"):
        s3_bucket.put(key, f"sku\n{key}\n".encode())
    listed = s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name, Prefix="k/")["Contents"]
    same = max(o["LastModified"] for o in listed).astimezone(UTC)
    state = {"last_modified": same.isoformat(), "key": "k/1.csv"}
    older = [o["Key"] for o in listed if o["LastModified"] < same]

    source = connector(s3_bucket, state, prefix="k/")

    assert [r["sku"] for r in staged(source, tomorrow())] == [
        k for k in ("k/2.csv", "k/3.csv") if k not in older
    ]


def modified(bucket, key: str) -> datetime:
    return bucket.client.head_object(Bucket=bucket.name, Key=key)["LastModified"]


def within_one_second(bucket, scenario) -> tuple:
    """Run `scenario(prefix)` until its writes share one LastModified second (S3's resolution); it returns
    (keys that must share the second, result)."""
    for attempt in range(5):
        keys, result = scenario(f"s{attempt}/")
        if len({modified(bucket, k) for k in keys}) == 1:
            return result
    pytest.skip("could not write the objects within one second")


def test_object_written_later_in_the_saved_second_with_a_lower_key_is_still_read(s3_bucket):
    def scenario(prefix):
        s3_bucket.put(f"{prefix}b.csv", b"sku\nB\n")
        first = connector(s3_bucket, prefix=prefix)
        read = [r["sku"] for r in staged(first, tomorrow())]
        s3_bucket.put(f"{prefix}a.csv", b"sku\nA\n")  # same second, after the run listed the prefix
        return [f"{prefix}a.csv", f"{prefix}b.csv"], (prefix, read, first.next_state)

    prefix, first_read, state = within_one_second(s3_bucket, scenario)
    second = connector(s3_bucket, state, prefix=prefix)
    second_read = [r["sku"] for r in staged(second, tomorrow())]
    third = connector(s3_bucket, second.next_state, prefix=prefix)

    assert (first_read, second_read) == (["B"], ["A"])
    assert staged(third, tomorrow()) == []


def test_object_rewritten_within_the_saved_second_is_read_again(s3_bucket):
    def scenario(prefix):
        s3_bucket.put(f"{prefix}a.csv", b"sku\nA\n")
        first = connector(s3_bucket, prefix=prefix)
        staged(first, tomorrow())
        before = modified(s3_bucket, f"{prefix}a.csv")
        s3_bucket.put(f"{prefix}a.csv", b"sku\nA2\n")
        same = modified(s3_bucket, f"{prefix}a.csv") == before
        return [f"{prefix}a.csv"] if same else [], (prefix, first.next_state)

    prefix, state = within_one_second(s3_bucket, scenario)
    second = connector(s3_bucket, state, prefix=prefix)

    assert [r["sku"] for r in staged(second, tomorrow())] == ["A2"]
    assert staged(connector(s3_bucket, second.next_state, prefix=prefix), tomorrow()) == []


def test_state_saved_before_the_objects_at_it_were_recorded_resumes_after_its_key(s3_bucket):
    s3_bucket.put("old/a.csv", b"sku\nA\n")
    s3_bucket.put("old/b.csv", b"sku\nB\n")
    listed = s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name, Prefix="old/")["Contents"]
    newest = max(listed, key=lambda o: (o["LastModified"], o["Key"]))
    old_state = {"last_modified": newest["LastModified"].astimezone(UTC).isoformat(), "key": newest["Key"]}

    source = connector(s3_bucket, old_state, prefix="old/")

    assert staged(source, tomorrow()) == []
    assert staged(connector(s3_bucket, source.next_state, prefix="old/"), tomorrow()) == []


def test_objects_modified_at_or_after_the_window_end_wait_for_a_later_window(s3_bucket):
    s3_bucket.put("late/a.csv", b"sku\nA\n")
    source = connector(s3_bucket, prefix="late/")

    assert staged(source, window_ending(datetime.now(UTC) - timedelta(hours=1))) == []
    assert source.next_state is None
    assert [r["sku"] for r in staged(source, tomorrow())] == ["A"]


def test_full_mode_reads_every_matching_object_each_run_and_keeps_the_state(s3_bucket):
    s3_bucket.put("dim/stores.csv", b"sku\nS\n")
    state = {"last_modified": "2030-01-01T00:00:00+00:00", "key": "z"}
    source = connector(s3_bucket, state, prefix="dim/", mode="full")

    assert (
        staged(source, tomorrow())
        == staged(source, tomorrow())
        == [{"sku": "S", "name": None, "price": None}]
    )
    assert source.next_state == state


# --- configuration --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "state", "message"),
    [
        ({"bucket": None}, None, "'bucket' is required"),
        ({"format": "xml"}, None, "format 'xml'"),
        ({"mode": "append"}, None, "mode 'append'"),
        ({"csv": {"delimeter": ";"}}, None, "unknown option csv.delimeter"),
        ({"prefx": "a/"}, None, "unknown option prefx"),
        ({}, {"key": "a"}, "saved state"),
        ({}, {"last_modified": "2026-11-01T00:00:00", "key": "a"}, "time zone"),
    ],
)
def test_invalid_options_are_configuration_errors(options, state, message):
    with pytest.raises(ConfigurationError, match=message):
        build_connector(name="products", options={"kind": "s3", "bucket": "b", **options}, state=state)


def test_no_credentials_anywhere_is_a_configuration_error(s3_bucket, monkeypatch, tmp_path):
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(variable)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    with pytest.raises(ConfigurationError, match="no AWS credentials"):
        list(connector(s3_bucket, prefix="a/").iter_batches(tomorrow()))
