"""`manage.py forget_customer`: a customer out of the warehouse, quarantine and staging, totals unchanged, no
identity in the erasure record, and kept out by a replay of quarantine and a re-run of the date.

The demo run, the replay and the backfill run the sales job in the suite's Spark session
(tests/spark_in_session.py): erasure is about what the pipeline keeps, not about spark-submit."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, date
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db.models import Sum

from connectors.records import erasure_token, pseudonym
from etlcore.demo.api_server import TOKEN_ENV, demo_api_token, start_demo_api
from etlcore.demo.pipeline import DEMO_PSEUDONYM_KEY
from etlcore.models import ErasedCustomer, Erasure
from tests.spark_in_session import jobs_in_session
from warehouse.checks import warehouse_checksums
from warehouse.models import DimCustomer, FactDailySales, FactSalesLine, QuarantinedRow

DAY = date(2026, 11, 1)
DEMO_FILE = Path(settings.BASE_DIR) / "conf" / "pipelines" / "retail_demo.toml"
KEY = DEMO_PSEUDONYM_KEY.encode()


def staged_strings(root: Path) -> set[str]:
    """Every text value of every Parquet file under `root`, whatever manifest names it or not."""
    values: set[str] = set()
    for path in root.rglob("*.parquet"):
        table = pq.read_table(path)
        for column in table.columns:
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                values.update(v for v in column.to_pylist() if v is not None)
    return values


def totals() -> dict[str, Decimal | int]:
    lines = FactSalesLine.objects.aggregate(
        amount=Sum("amount"), reporting=Sum("amount_reporting"), quantity=Sum("quantity")
    )
    daily = FactDailySales.objects.aggregate(revenue=Sum("revenue"), quantity=Sum("quantity"))
    quarantined = QuarantinedRow.objects.aggregate(rows=Sum("occurrences"))
    return {
        "lines": FactSalesLine.objects.count(),
        **{f"line_{k}": v for k, v in lines.items()},
        **{f"daily_{k}": v for k, v in daily.items()},
        "quarantined": quarantined["rows"],
    }


def assert_absent(hexed: str, email: str, staging_root: Path) -> None:
    assert not DimCustomer.objects.filter(customer_key=hexed).exists()
    assert not FactSalesLine.objects.filter(customer__customer_key=hexed).exists()
    assert not QuarantinedRow.objects.filter(raw_record__contains=hexed).exists()
    assert not QuarantinedRow.objects.filter(raw_record__icontains=email).exists()
    values = staged_strings(staging_root)
    assert not any(hexed in v or email in v.lower() for v in values)


def canary(data_dir: Path) -> tuple[str, str]:
    """The demo customer whose erasure reaches the most places: sales lines, a linked return if any, and a
    quarantined record; (e-mail, pseudonym)."""
    emails = {
        json.loads(line)["customer"]["email"]
        for line in (data_dir / "orders.jsonl").read_text().splitlines()
        if json.loads(line).get("customer")
    }
    by_key = {pseudonym(KEY, e): e for e in emails}
    quarantined = [r.raw_record for r in QuarantinedRow.objects.filter(dataset="order_lines")]

    def reach(hexed: str) -> tuple[bool, bool, int]:
        lines = FactSalesLine.objects.filter(customer__customer_key=hexed)
        return (
            any(hexed in r for r in quarantined),
            lines.filter(is_return=True, original_order_id__isnull=False).exists(),
            lines.count(),
        )

    hexed = max(DimCustomer.objects.values_list("customer_key", flat=True), key=reach)
    return by_key[hexed], hexed


@pytest.mark.spark_submit
@pytest.mark.django_db(transaction=True)
def test_forget_erases_the_customer_everywhere_keeps_totals_and_a_replay_and_a_backfill_keep_them_erased(
    pipeline_dir, tmp_path, monkeypatch, staging_root, spark
):
    from etlcore.demo.pipeline import demo_run

    jobs_in_session(monkeypatch, spark)
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", DEMO_PSEUDONYM_KEY)
    (pipeline_dir / "retail_demo.toml").write_text(DEMO_FILE.read_text())
    data_dir = tmp_path / "demo"
    demo_run(data_dir=data_dir, business_dates=[DAY])  # transform 1
    email, hexed = canary(data_dir)
    assert any(hexed in r for r in QuarantinedRow.objects.values_list("raw_record", flat=True))
    assert hexed in staged_strings(staging_root)
    before = totals()
    lines_of_customer = FactSalesLine.objects.filter(customer__customer_key=hexed).count()
    assert lines_of_customer

    dry = StringIO()
    call_command("forget_customer", "--pipeline", "retail_demo", "--email", email, "--dry-run", stdout=dry)
    assert f"sales_lines={lines_of_customer} " in dry.getvalue() and "nothing changed" in dry.getvalue()
    assert DimCustomer.objects.filter(customer_key=hexed).exists() and not Erasure.objects.exists()

    out = StringIO()
    # As the source has it, with other case and white space: the pseudonym's normalisation is extraction's.
    call_command("forget_customer", "--pipeline", "retail_demo", "--email", f"  {email.upper()} ", stdout=out)
    assert len(out.getvalue().strip().splitlines()) == 1
    assert f"sales_lines={lines_of_customer} " in out.getvalue()
    assert_absent(hexed, email, staging_root)
    assert totals() == before
    assert FactSalesLine.objects.filter(customer__isnull=True).count() >= lines_of_customer

    erasure = Erasure.objects.get()
    record = json.dumps(
        {f.name: str(getattr(erasure, f.attname)) for f in Erasure._meta.concrete_fields} | erasure.counts
    )
    listed = ErasedCustomer.objects.get()
    token = listed.token
    assert listed.scheme == ErasedCustomer.Scheme.VALUE
    assert token == erasure_token(os.environ["ETL_ERASURE_KEY"].encode(), email) and token != hexed
    for identity in (email, email.split("@")[0], hexed, token):
        assert identity not in record
    assert erasure.counts["sales_lines"] == lines_of_customer
    assert erasure.counts["raw_rows"] >= lines_of_customer
    assert erasure.counts["quarantined_rows"] >= 1 and erasure.counts["transformed_partitions"] == 1
    forgotten = warehouse_checksums(using="default")

    # Transform and load again from the rewritten raw partitions: what forget left is what a run makes.
    call_command("replay_quarantine", "--date", DAY.isoformat(), stdout=StringIO())  # transform 2
    assert_absent(hexed, email, staging_root)
    assert totals() == before
    assert warehouse_checksums(using="default") == forgotten

    # A backfill of the date extracts the customer's orders again: the erasure list keeps them out.
    token, _ = demo_api_token()
    monkeypatch.setenv(TOKEN_ENV, token)
    monkeypatch.setenv("ETL_DEMO_DIR", str(data_dir))
    with start_demo_api(orders_path=data_dir / "orders.jsonl", token=token) as api:
        monkeypatch.setenv("ETL_DEMO_API_URL", api.url)
        day = DAY.isoformat()
        call_command("run_pipeline", "--from", day, "--to", day, stdout=StringIO())  # transform 3
    assert_absent(hexed, email, staging_root)
    assert totals() == before
    assert warehouse_checksums(using="default") == forgotten

    again = StringIO()
    call_command("forget_customer", "--pipeline", "retail_demo", "--email", email, stdout=again)
    assert "dim_customers=0 sales_lines=0" in again.getvalue()
    assert "on the erasure list already" in again.getvalue()
    assert ErasedCustomer.objects.count() == 1 and Erasure.objects.count() == 2
    # By customer key now: their clear value is held nowhere any more, so they are listed by pseudonym,
    # which the next forget by e-mail replaces.
    by_key = StringIO()
    call_command("forget_customer", "--pipeline", "retail_demo", "--customer-key", hexed, stdout=by_key)
    assert "added to the erasure list by pseudonym alone" in by_key.getvalue()
    call_command("forget_customer", "--pipeline", "retail_demo", "--email", email, stdout=StringIO())
    assert list(ErasedCustomer.objects.values_list("scheme", "token")) == [(listed.scheme, listed.token)]


@pytest.mark.django_db
def test_forget_refuses_a_missing_or_malformed_identity_and_an_unset_key_in_one_line(
    pipeline_dir, monkeypatch, staging_root
):
    (pipeline_dir / "retail_demo.toml").write_text(DEMO_FILE.read_text())
    with pytest.raises(CommandError, match="one of the arguments --value/--email --customer-key is required"):
        call_command("forget_customer", "--pipeline", "retail_demo", stdout=StringIO())
    monkeypatch.delenv("ETL_PSEUDONYM_KEY", raising=False)
    with pytest.raises(CommandError, match=r"ETL_PSEUDONYM_KEY \(or ETL_PSEUDONYM_KEY_FILE\) is not set"):
        call_command("forget_customer", "--pipeline", "retail_demo", "--email", "a@b.c", stdout=StringIO())
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "k")
    with pytest.raises(CommandError, match="64 lower-case hexadecimal digits"):
        call_command("forget_customer", "--pipeline", "retail_demo", "--customer-key", "A", stdout=StringIO())
    with pytest.raises(CommandError, match="blank"):
        call_command("forget_customer", "--pipeline", "retail_demo", "--email", " \t", stdout=StringIO())
    assert not ErasedCustomer.objects.exists() and not Erasure.objects.exists()


@pytest.mark.django_db(databases="__all__")
def test_forget_repoints_lines_to_no_customer_unlinks_their_returns_and_merges_their_quarantine_records(
    db_alias, pipeline_dir, monkeypatch, staging_root
):
    """The warehouse half on both databases, with rows made by hand: the member goes, the lines stay."""
    from datetime import datetime

    from tests.pipelines import pipeline_write, sales_datasets
    from warehouse.models import DimDate, DimProduct, DimStore

    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "k")
    pipeline_write(pipeline_dir, datasets=sales_datasets(pipeline_dir), database=db_alias)
    hexed, other = pseudonym(b"k", "ann@example.com"), pseudonym(b"k", "bob@example.com")
    objects = {model: model.objects.using(db_alias) for model in (DimCustomer, FactSalesLine, QuarantinedRow)}
    day = DimDate.objects.using(db_alias).create(
        date_key=20261101, date=DAY, year=2026, quarter=4, month=11, day=1, day_of_week=7, is_weekend=True
    )
    versioned = {"pipeline": "shop", "valid_from": DAY, "is_current": True}
    store = DimStore.objects.using(db_alias).create(store_code="S1", name="S", **versioned)
    product = DimProduct.objects.using(db_alias).create(sku="P1", name="P", **versioned)
    ann, bob = (objects[DimCustomer].create(pipeline="shop", customer_key=k) for k in (hexed, other))
    at = datetime(2026, 11, 1, 12, tzinfo=UTC)

    def line(order_id: str, customer, quantity: int, original: str | None = None):
        return objects[FactSalesLine].create(
            pipeline="shop", order_id=order_id, line_number=1, date=day, store=store, product=product,
            customer=customer, ordered_at=at, quantity=quantity, unit_price=Decimal("2.5000"),
            amount=Decimal("2.50") * quantity, currency="EUR", is_return=quantity < 0, stock_code="P1",
            amount_reporting=Decimal("2.50") * quantity, original_order_id=original,
            linked_by_loader=bool(original), source_date=DAY, source_version=1,
        )  # fmt: skip

    line("o1", ann, 2), line("o2", ann, -1, "o1"), line("o3", bob, -1, "o9"), line("o4", None, 1)
    record = '{"customer_email":%s,"sku":"X"}'
    for email in (f'"{hexed}"', "null"):
        objects[QuarantinedRow].create(
            pipeline="shop", business_date=DAY, dataset="order_lines", reason_code="unknown_product",
            message="unknown_product: customer_email=" + email.replace('"', "'"),
            raw_record=record % email, occurrences=1,
            record_fingerprint=hashlib.sha256((record % email).encode()).hexdigest(),
        )  # fmt: skip
    total = objects[FactSalesLine].aggregate(s=Sum("amount_reporting"))["s"]

    out = StringIO()
    call_command("forget_customer", "--pipeline", "shop", "--email", "ANN@example.com", stdout=out)

    assert (
        "dim_customers=1 sales_lines=2 returns_unlinked=1 quarantined_rows=1 raw_partitions=0"
        in out.getvalue()
    )
    assert list(objects[DimCustomer].values_list("customer_key", flat=True)) == [other]
    assert objects[FactSalesLine].aggregate(s=Sum("amount_reporting"))["s"] == total
    lines = {f.order_id: f for f in objects[FactSalesLine].all()}
    assert lines["o1"].customer_id is None and lines["o2"].customer_id is None
    assert (lines["o2"].original_order_id, lines["o2"].linked_by_loader) == (None, False)
    assert (lines["o3"].customer_id, lines["o3"].original_order_id) == (bob.pk, "o9")  # another's: kept
    # Without the identity the record is the guest's copy: one record, both occurrences.
    (merged,) = objects[QuarantinedRow].all()
    assert (merged.raw_record, merged.occurrences) == (record % "null", 2)
    assert merged.message == "unknown_product: customer_email=null"
    assert Erasure.objects.using(db_alias).get().counts["quarantined_rows"] == 1


@pytest.mark.django_db
def test_forget_without_a_pipeline_erases_from_every_pipeline_reading_the_value_from_stdin(
    pipeline_dir, monkeypatch, staging_root
):
    from tests.pipelines import pipeline_write, sales_datasets

    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "k")
    for name in ("shop", "shop2"):
        pipeline_write(pipeline_dir, name, datasets=sales_datasets(pipeline_dir))
    DimCustomer.objects.create(pipeline="shop2", customer_key=pseudonym(b"k", "ann@example.com"))
    monkeypatch.setattr("sys.stdin", StringIO("Ann@Example.com\n"))
    out = StringIO()
    call_command("forget_customer", "--value", "-", stdout=out)

    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["shop", "shop2"]
    assert "dim_customers=0" in lines[0] and "dim_customers=1" in lines[1]
    assert not DimCustomer.objects.exists()
    assert sorted(ErasedCustomer.objects.values_list("pipeline", flat=True)) == ["shop", "shop2"]
    assert sorted(Erasure.objects.values_list("pipeline", flat=True)) == ["shop", "shop2"]


@pytest.mark.django_db
def test_forget_waits_for_no_run_it_exits_75_and_changes_nothing_while_the_pipeline_runs(
    pipeline_dir, monkeypatch, staging_root
):
    from etlcore.locks import lock_try
    from tests.pipelines import pipeline_write, sales_datasets

    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "k")
    pipeline_write(pipeline_dir, datasets=sales_datasets(pipeline_dir))
    DimCustomer.objects.create(pipeline="shop", customer_key=pseudonym(b"k", "ann@example.com"))
    held = lock_try(pipeline="shop", using="default")
    try:
        with pytest.raises(CommandError) as raised:
            call_command(
                "forget_customer", "--pipeline", "shop", "--email", "ann@example.com", stdout=StringIO()
            )
    finally:
        held.release()
    assert raised.value.returncode == 75
    assert (
        DimCustomer.objects.exists() and not ErasedCustomer.objects.exists() and not Erasure.objects.exists()
    )


@pytest.mark.django_db
def test_extraction_needs_the_erasure_key_once_the_list_has_a_value_and_then_stages_the_customer_as_a_guest(
    pipeline_dir, monkeypatch, staging_root, tmp_path
):
    """A real extract from CSV files: without ETL_ERASURE_KEY it fails in one line naming the variable
    before any source is read; with it, the listed customer's line is staged with no identity."""
    from etlcore import staging
    from tests.pipelines import pipeline_write, sales_datasets

    data = tmp_path / "data"
    data.mkdir()
    (data / "products_20261101.csv").write_text("SKU,Product Name,category,list_price\nP1,Pen,office,2.50\n")
    (data / "stores_20261101.csv").write_text("store_code,name,city,region,country\nS1,Main,Lyon,ARA,FR\n")
    (data / "lines_20261101.csv").write_text(
        "order_id,line_number,ordered_at,store_code,customer_email,sku,quantity,unit_price,currency\n"
        "O1,1,2026-11-01T10:00:00Z,S1,Ann@Example.com,P1,1,2.50,EUR\n"
        "O2,1,2026-11-01T11:00:00Z,S1,bob@example.com,P1,2,2.50,EUR\n"
    )
    pipeline_write(pipeline_dir, datasets=sales_datasets(data))
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "k")
    erasure_key = os.environ["ETL_ERASURE_KEY"]
    ErasedCustomer.objects.create(
        pipeline="shop", token=erasure_token(erasure_key.encode(), "ann@example.com")
    )
    ref = staging.PartitionRef.raw(staging_root, "shop", "order_lines", DAY)

    monkeypatch.delenv("ETL_ERASURE_KEY")
    with pytest.raises(CommandError) as refused:
        call_command("extract", "--pipeline", "shop", "--date", DAY.isoformat(), stdout=StringIO())
    assert "ETL_ERASURE_KEY (or ETL_ERASURE_KEY_FILE) is not set" in str(refused.value)
    assert len(str(refused.value).splitlines()) == 1
    assert not ref.dir.exists()

    monkeypatch.setenv("ETL_ERASURE_KEY", erasure_key)
    call_command("extract", "--pipeline", "shop", "--date", DAY.isoformat(), stdout=StringIO())
    rows = {
        r["order_id"]: r["customer_email"]
        for name in staging.manifest_read(ref).files
        for r in pq.read_table(ref.dir / name).to_pylist()
    }
    assert rows == {"O1": None, "O2": pseudonym(b"k", "bob@example.com")}
