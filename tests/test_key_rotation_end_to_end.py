"""Key rotation between two real demo dates: a date run under the demo keys, `rotate_pii_keys` to new ones,
the next date run under the new keys alone; customers of both dates are one customer each."""

from __future__ import annotations

import hashlib
import hmac
from collections import defaultdict
from datetime import date
from io import StringIO
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.conf import settings
from django.core.management import call_command

from warehouse.models import DimCustomer, FactSalesLine, PseudonymKey

DAY1, DAY2 = date(2026, 11, 1), date(2026, 11, 2)
DEMO_FILE = Path(settings.BASE_DIR) / "conf" / "pipelines" / "retail_demo.toml"
NEW_KEY = "a-new-pseudonym-key"


@pytest.mark.spark_submit
@pytest.mark.django_db(transaction=True)
def test_after_rotating_both_keys_the_next_date_runs_under_the_new_keys_and_customers_join_as_one(
    pipeline_dir, tmp_path, monkeypatch, staging_root
):
    from etlcore.demo.pipeline import DEMO_PII_KEYS, DEMO_PSEUDONYM_KEY, demo_run

    monkeypatch.setenv("ETL_PSEUDONYM_KEY", DEMO_PSEUDONYM_KEY)
    monkeypatch.setenv("ETL_PII_KEYS", DEMO_PII_KEYS)
    (pipeline_dir / "retail_demo.toml").write_text(DEMO_FILE.read_text())
    data_dir = tmp_path / "demo"
    demo_run(data_dir=data_dir, business_dates=[DAY1])  # spark-submit 1
    first = dict(DimCustomer.objects.values_list("pk", "customer_key"))
    assert first

    new_fernet = Fernet.generate_key().decode()
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", NEW_KEY)
    monkeypatch.setenv("ETL_PSEUDONYM_KEY_PREVIOUS", DEMO_PSEUDONYM_KEY)
    monkeypatch.setenv("ETL_PII_KEYS", f"{new_fernet},{DEMO_PII_KEYS}")
    out = StringIO()
    call_command("rotate_pii_keys", "--pipeline", "retail_demo", stdout=out)
    assert f"dim_customers={len(first)} " in out.getvalue()

    # The old keys removed: the next date runs with the new ones alone.
    monkeypatch.delenv("ETL_PSEUDONYM_KEY_PREVIOUS")
    monkeypatch.setenv("ETL_PII_KEYS", new_fernet)
    demo_run(data_dir=data_dir, business_dates=[DAY2])  # spark-submit 2

    newest = Fernet(new_fernet.encode())
    emails = {
        c.pk: (c.customer_key, newest.decrypt(c.email_encrypted.encode()).decode())
        for c in DimCustomer.objects.all()
    }
    assert set(first) <= set(emails)  # day 1's customers kept their surrogate ids
    for key, email in emails.values():
        expected = hmac.new(NEW_KEY.encode(), email.strip().lower().encode(), hashlib.sha256).hexdigest()
        assert key == expected
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
