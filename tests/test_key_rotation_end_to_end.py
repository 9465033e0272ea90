"""Key rotation between two real demo dates: a date run under the demo keys and a customer of it erased,
`rotate_pii_keys` to new keys, then both dates run again under the new keys alone, as one backfill.
Customers of both dates are one customer each, and the erased customer stays erased: the erasure list is
made with the erasure key, which the rotation leaves alone.

The first date's transform runs in the suite's Spark session (tests/spark_in_session.py); the backfill
after the rotation is a real spark-submit, so the new key is the one the job's own process gets."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import defaultdict
from datetime import date
from io import StringIO
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.fernet import Fernet
from django.conf import settings
from django.core.management import call_command
from django.db.models import Sum

from etlcore.models import ErasedCustomer
from tests.spark_in_session import jobs_in_session
from warehouse.models import DimCustomer, FactSalesLine, PseudonymKey

DAY1, DAY2 = date(2026, 11, 1), date(2026, 11, 2)
DEMO_FILE = Path(settings.BASE_DIR) / "conf" / "pipelines" / "retail_demo.toml"
NEW_KEY = "a-new-pseudonym-key"


def hexed(key: str, email: str) -> str:
    """The documented pseudonym: HMAC-SHA256 of the e-mail trimmed and lower-cased (demo e-mails have no
    inner spaces)."""
    return hmac.new(key.encode(), email.strip().lower().encode(), hashlib.sha256).hexdigest()


def regular_customer(orders: Path) -> str:
    """The e-mail with the most order lines among those who ordered on both dates."""
    lines: dict[str, int] = defaultdict(int)
    days: dict[str, set[str]] = defaultdict(set)
    for text in orders.read_text().splitlines():
        order = json.loads(text)
        if email := (order.get("customer") or {}).get("email"):
            lines[email] += len(order.get("lines") or [])
            days[email].add(order["created_at"][:10])
    return max((e for e in lines if len(days[e]) == 2), key=lambda e: (lines[e], e))


def staged_strings(root: Path) -> set[str]:
    return {
        v
        for path in root.rglob("*.parquet")
        for column in pq.read_table(path).columns
        if pa.types.is_string(column.type)
        for v in column.to_pylist()
        if v is not None
    }


def day_totals(day: date) -> tuple:
    lines = FactSalesLine.objects.filter(date__date=day)
    return lines.count(), lines.aggregate(Sum("amount"))["amount__sum"]


@pytest.mark.spark_submit
@pytest.mark.django_db(transaction=True)
def test_after_rotating_both_keys_a_backfill_joins_customers_as_one_and_keeps_the_erased_one_out(
    pipeline_dir, tmp_path, monkeypatch, staging_root, spark
):
    from etlcore.demo.api_server import TOKEN_ENV, demo_api_token, start_demo_api
    from etlcore.demo.generate import generate_demo_data
    from etlcore.demo.pipeline import DEMO_PII_KEYS, DEMO_PSEUDONYM_KEY

    monkeypatch.setenv("ETL_PSEUDONYM_KEY", DEMO_PSEUDONYM_KEY)
    monkeypatch.setenv("ETL_PII_KEYS", DEMO_PII_KEYS)
    (pipeline_dir / "retail_demo.toml").write_text(DEMO_FILE.read_text())
    data_dir = tmp_path / "demo"
    dataset = generate_demo_data(out_dir=data_dir, business_dates=[DAY1, DAY2])
    token, _ = demo_api_token()
    monkeypatch.setenv(TOKEN_ENV, token)
    monkeypatch.setenv("ETL_DEMO_DIR", str(data_dir))
    with start_demo_api(orders_path=dataset.orders_path, token=token) as api:
        monkeypatch.setenv("ETL_DEMO_API_URL", api.url)
        with monkeypatch.context() as in_session:
            jobs_in_session(in_session, spark)
            call_command("run_pipeline", "--date", DAY1.isoformat(), stdout=StringIO())
        first = dict(DimCustomer.objects.values_list("pk", "customer_key"))
        day1 = day_totals(DAY1)
        erased = regular_customer(dataset.orders_path)
        assert hexed(DEMO_PSEUDONYM_KEY, erased) in first.values()
        call_command("forget_customer", "--pipeline", "retail_demo", "--email", erased, stdout=StringIO())
        listed = list(ErasedCustomer.objects.values_list("scheme", "token"))
        assert [scheme for scheme, _ in listed] == [ErasedCustomer.Scheme.VALUE]

        new_fernet = Fernet.generate_key().decode()
        monkeypatch.setenv("ETL_PSEUDONYM_KEY", NEW_KEY)
        monkeypatch.setenv("ETL_PSEUDONYM_KEY_PREVIOUS", DEMO_PSEUDONYM_KEY)
        monkeypatch.setenv("ETL_PII_KEYS", f"{new_fernet},{DEMO_PII_KEYS}")
        out = StringIO()
        call_command("rotate_pii_keys", "--pipeline", "retail_demo", stdout=out)
        assert f"dim_customers={len(first) - 1} " in out.getvalue()
        assert list(ErasedCustomer.objects.values_list("scheme", "token")) == listed

        # The old keys removed: both dates again, extracted afresh, with the new keys alone.
        monkeypatch.delenv("ETL_PSEUDONYM_KEY_PREVIOUS")
        monkeypatch.setenv("ETL_PII_KEYS", new_fernet)
        call_command(
            "run_pipeline", "--from", DAY1.isoformat(), "--to", DAY2.isoformat(), stdout=StringIO()
        )  # a real spark-submit: one application for both dates

    newest = Fernet(new_fernet.encode())
    emails = {
        c.pk: (c.customer_key, newest.decrypt(c.email_encrypted.encode()).decode())
        for c in DimCustomer.objects.all()
    }
    assert set(first) - set(emails) == {k for k, v in first.items() if v == hexed(DEMO_PSEUDONYM_KEY, erased)}
    for key, email in emails.values():
        assert key == hexed(NEW_KEY, email)
    assert len({email.strip().lower() for _, email in emails.values()}) == len(emails)  # no second identity
    dates = defaultdict(set)
    for customer, day in FactSalesLine.objects.exclude(customer=None).values_list("customer", "date__date"):
        dates[customer].add(day)
    assert any(days == {DAY1, DAY2} for days in dates.values())  # one customer across both dates
    label = b"django-spark-etl pseudonym key fingerprint v1"
    assert (
        PseudonymKey.objects.get().fingerprint
        == hmac.new(NEW_KEY.encode(), label, hashlib.sha256).hexdigest()[:16]
    )

    # The erased customer is nowhere under either key, and their sales stay, as a guest's.
    assert erased not in {email for _, email in emails.values()}
    pseudonyms = {hexed(k, erased) for k in (DEMO_PSEUDONYM_KEY, NEW_KEY)}
    assert not pseudonyms & set(DimCustomer.objects.values_list("customer_key", flat=True))
    assert not any(p in v or erased in v for v in staged_strings(staging_root) for p in pseudonyms)
    assert day_totals(DAY1) == day1
