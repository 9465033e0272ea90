"""`manage.py rotate_pii_keys`: Fernet tokens under the newest key, pseudonyms re-keyed everywhere (raw and
transformed staging, warehouse customers, quarantine), idempotent, refused when it cannot be done safely,
and finished by a re-run after a kill -9.

Staging and warehouse rows are made by hand (no Spark); the expected pseudonyms are computed here with
hmac directly, not through the code under test."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from datetime import date
from io import StringIO
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.management import CommandError, call_command

from connectors.records import erasure_token, staging_schema, to_staging_batch
from etlcore import staging
from etlcore.config import pipeline_load
from etlcore.erasure import dataset_erasures
from etlcore.models import ErasedCustomer
from tests.pipelines import pipeline_write, sales_datasets
from tests.warehouse.partitions import default_outputs, sale, write_outputs
from warehouse.models import DimCustomer, FactSalesLine, PseudonymKey, QuarantinedRow

DAY = date(2026, 11, 1)
OLD, NEW = "old-pseudonym-key", "new-pseudonym-key"
K_OLD, K_NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()
EMAILS = {"O1": "ann@example.com", "O2": "  Bob@Example.COM ", "O3": None, "O4": "ann@example.com"}
CHILD_TIMEOUT = 60


def hexed(key: str, email: str | None) -> str | None:
    """The documented pseudonym: HMAC-SHA256 of the value trimmed and lower-cased (no inner spaces here)."""
    if email is None:
        return None
    return hmac.new(key.encode(), email.strip().lower().encode(), hashlib.sha256).hexdigest()


def fingerprint(key: str) -> str:
    return hmac.new(
        key.encode(), b"django-spark-etl pseudonym key fingerprint v1", hashlib.sha256
    ).hexdigest()[:16]


def shop_write(folder: Path, name: str, root: Path, database: str | None, *, twin: bool = True) -> None:
    datasets = sales_datasets(folder)
    if twin:
        datasets["order_lines"]["columns"]["customer_email_encrypted"] = {
            "from": "customer_email",
            "pii": "encrypt",
        }
    pipeline_write(
        folder,
        name,
        datasets=datasets,
        staging=root,
        database=database,
        spark={"pseudonym_key_env": "ETL_PSEUDONYM_KEY", "pii_keys_env": "ETL_PII_KEYS"},
    )


def quarantine_record(key: str) -> str:
    record = {
        "customer_email": hexed(key, EMAILS["O4"]),
        "customer_email_encrypted": "[encrypted]",
        "sku": "X9",
    }
    return json.dumps(record, separators=(",", ":"), sort_keys=True)


def world_build(name: str, alias: str) -> None:
    """Under the old keys: a raw order_lines partition, a transformed partition, and its load."""
    config = pipeline_load(name)
    old_fernet = Fernet(K_OLD.encode())
    rows = []
    for order_id, email in EMAILS.items():
        rows.append(
            {
                "order_id": order_id,
                "line_number": "1",
                "ordered_at": "2026-11-01T10:30:00Z",
                "store_code": "S1",
                "customer_email": hexed(OLD, email),
                "sku": "X9" if order_id == "O4" else "P1",
                "quantity": "2",
                "unit_price": "9.99",
                "currency": "EUR",
                "customer_email_encrypted": None
                if email is None
                else old_fernet.encrypt(email.encode()).decode(),
            }
        )
    schema = staging_schema(config.datasets["order_lines"].columns)
    ref = staging.PartitionRef.raw(config.staging_root, name, "order_lines", DAY)
    staging.raw_partition_write(
        ref,
        schema=schema,
        batches=[pa.RecordBatch.from_pylist(rows, schema=schema)],
        source="test",
        window={},
        run_id=None,
    )
    lines = [sale(o, 1, customer=hexed(OLD, EMAILS[o])) for o in ("O1", "O2", "O3")]
    outputs = default_outputs(lines)
    outputs["customers"] = [
        {
            "customer_key": hexed(OLD, e),
            "country": "FR",
            "email_encrypted": old_fernet.encrypt(e.encode()).decode(),
        }
        for e in (EMAILS["O1"], EMAILS["O2"])
    ]
    record = quarantine_record(OLD)
    outputs["quarantine"] = [
        {
            "dataset": "order_lines",
            "reason_code": "unknown_product",
            "message": f"unknown_product: sku 'X9', customer_email='{hexed(OLD, EMAILS['O4'])}'",
            "raw_record": record,
            "record_fingerprint": hashlib.sha256(record.encode()).hexdigest(),
        }
    ]
    tref = staging.PartitionRef.transformed(config.staging_root, name, DAY)
    with staging.partition_attempt(tref) as attempt:
        paths = write_outputs(attempt, outputs)
        files = {out: [str(p.relative_to(tref.dir)) for p in found] for out, found in paths.items()}
        manifest = staging.Manifest(
            pipeline=name,
            layer=staging.TRANSFORMED,
            dataset=None,
            business_date=DAY.isoformat(),
            files=[f for listed in files.values() for f in listed],
            row_count=len(lines),
            schema=[],
            source="test",
            checksum="test",
            run_id=None,
            outputs={out: {"files": files[out], "rows": len(outputs.get(out, []))} for out in files},
            key_fingerprint=fingerprint(OLD),
        )
        staging.partition_publish(tref, manifest, attempt)
    call_command("load", "--pipeline", name, "--date", DAY.isoformat(), stdout=StringIO())
    assert PseudonymKey.objects.using(alias).get(pipeline=name).fingerprint == fingerprint(OLD)


def new_keys(monkeypatch) -> None:
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", NEW)
    monkeypatch.setenv("ETL_PSEUDONYM_KEY_PREVIOUS", OLD)
    monkeypatch.setenv("ETL_PII_KEYS", f"{K_NEW},{K_OLD}")


def only_newest(token: str | None) -> str | None:
    """The clear value, decrypted with the newest key alone: fails if the token was left under the old."""
    return None if token is None else Fernet(K_NEW.encode()).decrypt(token.encode()).decode()


def partition_rows(ref: staging.PartitionRef) -> dict[str, list[dict]]:
    manifest = staging.manifest_read(ref)
    owner = {f: name for name, out in manifest.outputs.items() for f in out.get("files", ())}
    rows: dict[str, list[dict]] = {}
    for name in manifest.files:
        rows.setdefault(owner.get(name, "raw"), []).extend(pq.read_table(ref.dir / name).to_pylist())
    return rows


def snapshot(name: str, alias: str) -> dict:
    """Everything the rotation touches, tokens read as their clear value with the newest key alone."""
    config = pipeline_load(name)
    raw = partition_rows(staging.PartitionRef.raw(config.staging_root, name, "order_lines", DAY))["raw"]
    tref = staging.PartitionRef.transformed(config.staging_root, name, DAY)
    transformed = partition_rows(tref)
    return {
        "raw": [
            (r["order_id"], r["customer_email"], only_newest(r["customer_email_encrypted"])) for r in raw
        ],
        "transformed_lines": sorted((r["order_id"], r["customer_key"]) for r in transformed["sales_lines"]),
        "transformed_customers": sorted(
            (r["customer_key"], only_newest(r["email_encrypted"])) for r in transformed["customers"]
        ),
        "transformed_quarantine": [
            (r["raw_record"], r["record_fingerprint"], r["message"]) for r in transformed["quarantine"]
        ],
        "transformed_key": staging.manifest_read(tref).key_fingerprint,
        "customers": sorted(
            (c.pk, c.customer_key, only_newest(c.email_encrypted))
            for c in DimCustomer.objects.using(alias).filter(pipeline=name)
        ),
        "lines": sorted(
            (f.order_id, f.customer_id, f.customer.customer_key if f.customer else None)
            for f in FactSalesLine.objects.using(alias).filter(pipeline=name).select_related("customer")
        ),
        "quarantine": sorted(
            (q.raw_record, q.record_fingerprint, q.message, q.occurrences)
            for q in QuarantinedRow.objects.using(alias).filter(pipeline=name)
        ),
        "key": PseudonymKey.objects.using(alias).get(pipeline=name).fingerprint,
    }


def expected_after(before_customers: list[tuple]) -> dict:
    ann, bob = hexed(NEW, EMAILS["O1"]), hexed(NEW, EMAILS["O2"])
    record = quarantine_record(NEW)
    pk = {email: pk for pk, _, email in before_customers}  # surrogate ids as the load made them
    return {
        "lines": [("O1", pk[EMAILS["O1"]], ann), ("O2", pk[EMAILS["O2"]], bob), ("O3", None, None)],
        "raw": [(o, hexed(NEW, e), e) for o, e in EMAILS.items()],
        "transformed_lines": [("O1", ann), ("O2", bob), ("O3", None)],
        "transformed_customers": sorted([(ann, EMAILS["O1"]), (bob, EMAILS["O2"])]),
        "transformed_quarantine": [
            (
                record,
                hashlib.sha256(record.encode()).hexdigest(),
                f"unknown_product: sku 'X9', customer_email='{ann}'",
            )
        ],
        "transformed_key": fingerprint(NEW),
        "key": fingerprint(NEW),
        # surrogate ids unchanged: the facts' join to customers holds
        "customers": sorted(
            (pk, {hexed(OLD, EMAILS["O1"]): ann, hexed(OLD, EMAILS["O2"]): bob}[key], email)
            for pk, key, email in before_customers
        ),
        "quarantine": [
            (
                record,
                hashlib.sha256(record.encode()).hexdigest(),
                f"unknown_product: sku 'X9', customer_email='{ann}'",
                1,
            )
        ],
    }


@pytest.fixture
def world(pipeline_dir, staging_root, db_alias, monkeypatch):
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", OLD)
    monkeypatch.setenv("ETL_PII_KEYS", K_OLD)
    monkeypatch.delenv("ETL_PSEUDONYM_KEY_PREVIOUS", raising=False)
    shop_write(pipeline_dir, "shop", staging_root, db_alias)
    world_build("shop", db_alias)
    before = sorted(
        (c.pk, c.customer_key, Fernet(K_OLD.encode()).decrypt(c.email_encrypted.encode()).decode())
        for c in DimCustomer.objects.using(db_alias).filter(pipeline="shop")
    )
    return {"alias": db_alias, "root": staging_root, "dir": pipeline_dir, "customers": before}


def rotate(*args: str) -> str:
    out = StringIO()
    call_command("rotate_pii_keys", "--pipeline", "shop", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db(databases="__all__")
def test_rotation_rekeys_every_pseudonym_reencrypts_every_token_and_a_second_run_changes_nothing(
    world, monkeypatch
):
    alias = world["alias"]
    lines_before = {
        f.order_id: f.customer_id for f in FactSalesLine.objects.using(alias).filter(pipeline="shop")
    }
    new_keys(monkeypatch)

    out = rotate()
    assert "raw_partitions=1 raw_pseudonyms=3 raw_tokens=3 transformed_partitions=1" in out
    assert "dim_customers=2 customer_tokens=2 quarantined_rows=1" in out
    after = snapshot("shop", alias)
    assert after == expected_after(world["customers"])
    # The facts still point at the same customers; each customer's key is HMAC(new key, normalised e-mail).
    assert {o: c for o, c, _ in after["lines"]} == lines_before
    assert {o: k for o, _, k in after["lines"]} == {
        "O1": hexed(NEW, EMAILS["O1"]),
        "O2": hexed(NEW, EMAILS["O2"]),
        "O3": None,
    }

    files = sorted(p.read_bytes() for p in world["root"].rglob("*.parquet"))
    again = rotate()
    assert "raw_partitions=0 raw_pseudonyms=0 raw_tokens=0 transformed_partitions=0" in again
    assert "dim_customers=0 customer_tokens=0 quarantined_rows=0" in again
    assert snapshot("shop", alias) == after
    assert sorted(p.read_bytes() for p in world["root"].rglob("*.parquet")) == files

    # The old keys can go: with only the new ones everything decrypts and a load under the new key runs.
    monkeypatch.delenv("ETL_PSEUDONYM_KEY_PREVIOUS")
    monkeypatch.setenv("ETL_PII_KEYS", K_NEW)
    assert "raw_partitions=0" in rotate()
    call_command("load", "--pipeline", "shop", "--date", DAY.isoformat(), stdout=StringIO())
    assert snapshot("shop", alias) == after


@pytest.mark.django_db(databases="__all__")
def test_fernet_only_rotation_when_the_pseudonym_key_is_unchanged(world, monkeypatch):
    monkeypatch.setenv("ETL_PII_KEYS", f"{K_NEW},{K_OLD}")
    out = rotate()
    assert "raw_pseudonyms=0 raw_tokens=3" in out and "customer_tokens=2" in out
    assert "pseudonym key unchanged" in out
    monkeypatch.setenv("ETL_PII_KEYS", K_NEW)
    state = snapshot("shop", world["alias"])
    assert state["key"] == fingerprint(OLD)
    assert [c[2] for c in state["customers"]] == [c[2] for c in world["customers"]]
    assert [r[2] for r in state["raw"]] == list(EMAILS.values())


@pytest.mark.django_db(databases="__all__")
def test_dry_run_counts_and_changes_nothing(world, monkeypatch):
    files = sorted(p.read_bytes() for p in world["root"].rglob("*.parquet"))
    manifests = sorted(p.read_text() for p in world["root"].rglob("_manifest.json"))
    customers = list(DimCustomer.objects.using(world["alias"]).values_list("customer_key", "email_encrypted"))
    new_keys(monkeypatch)
    out = rotate("--dry-run")
    assert "dry run, would change raw_partitions=1 raw_pseudonyms=3" in out and "nothing changed" in out
    assert sorted(p.read_text() for p in world["root"].rglob("_manifest.json")) == manifests
    assert sorted(p.read_bytes() for p in world["root"].rglob("*.parquet")) == files
    assert (
        list(DimCustomer.objects.using(world["alias"]).values_list("customer_key", "email_encrypted"))
        == customers
    )
    assert PseudonymKey.objects.using(world["alias"]).get().fingerprint == fingerprint(OLD)


@pytest.mark.django_db(databases="__all__")
def test_rekey_is_refused_in_one_line_without_the_previous_key_or_with_a_wrong_one(world, monkeypatch):
    new_keys(monkeypatch)
    monkeypatch.delenv("ETL_PSEUDONYM_KEY_PREVIOUS")
    with pytest.raises(CommandError, match=r"set the key they were made with in ETL_PSEUDONYM_KEY_PREVIOUS"):
        rotate()
    monkeypatch.setenv("ETL_PSEUDONYM_KEY_PREVIOUS", "another-key")
    with pytest.raises(CommandError, match=rf"not the warehouse's {fingerprint(OLD)}"):
        rotate()
    assert PseudonymKey.objects.using(world["alias"]).get().fingerprint == fingerprint(OLD)
    # Meanwhile a transform with the new key is refused, pointing at the rotation.
    from etlcore.services.transform import pseudonym_key_expect
    from warehouse.errors import PseudonymKeyMismatchError

    with pytest.raises(PseudonymKeyMismatchError, match="finish with manage.py rotate_pii_keys"):
        pseudonym_key_expect(config=pipeline_load("shop"))


def forget(*args: str) -> str:
    out = StringIO()
    call_command("forget_customer", "--pipeline", "shop", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db(databases="__all__")
def test_a_customer_erased_before_a_rekey_stays_out_of_extraction_under_the_new_key(world, monkeypatch):
    """Named by customer key, the customer is listed by their clear value (decrypted from the warehouse's
    e-mail) under the erasure key, which the rotation leaves as it is."""
    alias = world["alias"]
    ann = EMAILS["O1"]
    assert "dim_customers=1 " in forget("--customer-key", hexed(OLD, ann))
    listed = ErasedCustomer.objects.using(alias).get()
    erasure_key = os.environ["ETL_ERASURE_KEY"].encode()
    assert (listed.scheme, listed.token) == (ErasedCustomer.Scheme.VALUE, erasure_token(erasure_key, ann))
    new_keys(monkeypatch)

    rotate()
    assert PseudonymKey.objects.using(alias).get().fingerprint == fingerprint(NEW)
    assert list(ErasedCustomer.objects.using(alias).all()) == [listed]
    config = pipeline_load("shop")
    records = [
        {"id": "O5", "line_number": "1", "customer": {"email": f" {ann.upper()}"}, "sku": "P1"},
        {"id": "O6", "line_number": "1", "customer": {"email": EMAILS["O2"]}, "sku": "P1"},
    ]
    columns = {
        "order_id": {"from": "id"},
        "customer_email": {"from": "customer.email", "pii": True},
        "customer_email_encrypted": {"from": "customer.email", "pii": "encrypt"},
    }
    staged = to_staging_batch(
        records,
        columns=columns,
        source_label="orders",
        pseudonym_key=NEW.encode(),
        encrypter=Fernet(K_NEW.encode()),
        erasure=dataset_erasures(config)["order_lines"],
    ).to_pylist()
    assert staged[0] == {"order_id": "O5", "customer_email": None, "customer_email_encrypted": None}
    assert staged[1]["customer_email"] == hexed(NEW, EMAILS["O2"])


@pytest.mark.django_db(databases="__all__")
def test_rekey_is_refused_while_a_customer_is_listed_by_pseudonym_alone_until_forgotten_by_email(
    world, monkeypatch
):
    alias = world["alias"]
    nobody = "nobody@example.com"  # held nowhere: no clear value to list them by
    forget("--customer-key", hexed(OLD, nobody))
    assert ErasedCustomer.objects.using(alias).get().scheme == ErasedCustomer.Scheme.PSEUDONYM
    new_keys(monkeypatch)
    with pytest.raises(CommandError, match=r"1 customer\(s\) on the erasure list by their pseudonym alone"):
        rotate()
    assert PseudonymKey.objects.using(alias).get().fingerprint == fingerprint(OLD)
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", OLD)
    assert "raw_tokens=3" in rotate()  # Fernet keys still rotate

    forget("--email", nobody)  # under the old key still: the older entry is recognised and replaced
    erasure_key = os.environ["ETL_ERASURE_KEY"].encode()
    assert list(ErasedCustomer.objects.using(alias).values_list("scheme", "token")) == [
        (ErasedCustomer.Scheme.VALUE, erasure_token(erasure_key, nobody))
    ]
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", NEW)
    rotate()
    assert PseudonymKey.objects.using(alias).get().fingerprint == fingerprint(NEW)


@pytest.mark.django_db(databases="__all__")
def test_rekey_is_refused_for_a_pseudonymised_column_without_an_encrypted_twin(world, monkeypatch):
    shop_write(world["dir"], "shop", world["root"], world["alias"], twin=False)
    new_keys(monkeypatch)
    with pytest.raises(CommandError, match=r"dataset 'order_lines' column 'customer_email' is pseudonymised"):
        rotate()
    assert PseudonymKey.objects.using(world["alias"]).get().fingerprint == fingerprint(OLD)


@pytest.mark.django_db(databases="__all__")
def test_rekey_is_refused_when_a_stored_pseudonym_has_no_clear_value(world, monkeypatch):
    DimCustomer.objects.using(world["alias"]).create(pipeline="shop", customer_key="a" * 64)
    new_keys(monkeypatch)
    with pytest.raises(CommandError, match=r"warehouse/dim_customers 1\); nothing changed"):
        rotate()
    assert PseudonymKey.objects.using(world["alias"]).get().fingerprint == fingerprint(OLD)
    assert hexed(OLD, EMAILS["O1"]) in staging_text(world["root"])


def staging_text(root: Path) -> set[str]:
    return {
        v
        for path in root.rglob("*.parquet")
        for column in pq.read_table(path).columns
        if pa.types.is_string(column.type)
        for v in column.to_pylist()
        if v is not None
    }


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_a_rotation_killed_after_its_first_partition_is_finished_by_a_rerun_as_one_uninterrupted(
    pipeline_dir, staging_root, tmp_path, monkeypatch
):
    from tests.conftest import _postgres_or_skip
    from tests.warehouse.test_load_faults import postgres_url

    _postgres_or_skip()
    alias = "postgres"
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", OLD)
    monkeypatch.setenv("ETL_PII_KEYS", K_OLD)
    monkeypatch.delenv("ETL_PSEUDONYM_KEY_PREVIOUS", raising=False)
    for name in ("shop", "shop2"):
        shop_write(pipeline_dir, name, staging_root, alias)
        world_build(name, alias)
    before = {
        name: sorted(
            (c.pk, c.customer_key, Fernet(K_OLD.encode()).decrypt(c.email_encrypted.encode()).decode())
            for c in DimCustomer.objects.using(alias).filter(pipeline=name)
        )
        for name in ("shop", "shop2")
    }
    new_keys(monkeypatch)
    call_command("rotate_pii_keys", "--pipeline", "shop2", stdout=StringIO())  # uninterrupted
    uninterrupted = snapshot("shop2", alias)

    child_dir = tmp_path / "child-pipelines"
    child_dir.mkdir()
    shop_write(child_dir, "shop", staging_root, None)  # the child's default database is the test's
    marker = tmp_path / "paused"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "conf.settings.local",
        "DATABASE_URL": postgres_url(),
        "ETL_VAR_DIR": str(tmp_path / "var"),
        "ETL_PIPELINE_PATH": str(child_dir),
        "ETL_FAULT_POINT": "rotate_after_partition",
        "ETL_FAULT_MARKER": str(marker),
    }
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "rotate_pii_keys", "--pipeline", "shop"],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + CHILD_TIMEOUT
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"rotation ended before its fault point: {proc.stderr.read().decode()}")
        assert time.monotonic() < deadline, "rotation never reached its fault point"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(CHILD_TIMEOUT) == -signal.SIGKILL

    # Half done: the raw partition is under the new keys, the warehouse still under the old one.
    config = pipeline_load("shop")
    raw = partition_rows(staging.PartitionRef.raw(config.staging_root, "shop", "order_lines", DAY))["raw"]
    assert [r["customer_email"] for r in raw] == [hexed(NEW, e) for e in EMAILS.values()]
    assert PseudonymKey.objects.using(alias).get(pipeline="shop").fingerprint == fingerprint(OLD)
    with pytest.raises(InvalidToken):
        only_newest(DimCustomer.objects.using(alias).filter(pipeline="shop").first().email_encrypted)

    out = StringIO()
    call_command("rotate_pii_keys", "--pipeline", "shop", stdout=out)
    assert "raw_partitions=0 " in out.getvalue() and "dim_customers=2" in out.getvalue()
    resumed = snapshot("shop", alias)
    assert resumed == expected_after(before["shop"])
    assert uninterrupted == expected_after(before["shop2"])
    # Surrogate ids differ between the two pipelines; each was checked against its own above.
    strip = lambda s: {k: v for k, v in s.items() if k not in ("customers", "lines")}  # noqa: E731
    assert strip(resumed) == strip(uninterrupted)


@pytest.mark.django_db(databases="__all__")
def test_rekey_from_a_customer_key_column_staged_in_clear_needs_no_fernet_key(
    pipeline_dir, staging_root, db_alias, monkeypatch
):
    """online_retail.toml's way: the customer id staged in clear, pseudonymised by the job."""
    datasets = sales_datasets(pipeline_dir)
    columns = datasets["order_lines"]["columns"]
    del columns["customer_email"]
    columns["customer_id"] = {}
    pipeline_write(
        pipeline_dir,
        "shop",
        datasets=datasets,
        staging=staging_root,
        database=db_alias,
        spark={"options": {"customer_key_from": "customer_id"}},
    )
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", OLD)
    monkeypatch.delenv("ETL_PII_KEYS", raising=False)
    config = pipeline_load("shop")
    schema = staging_schema(config.datasets["order_lines"].columns)
    row = dict.fromkeys(schema.names, "1") | {"order_id": "O1", "customer_id": "12345"}
    staging.raw_partition_write(
        staging.PartitionRef.raw(staging_root, "shop", "order_lines", DAY),
        schema=schema,
        batches=[pa.RecordBatch.from_pylist([row], schema=schema)],
        source="test",
        window={},
        run_id=None,
    )
    PseudonymKey.objects.using(db_alias).create(pipeline="shop", fingerprint=fingerprint(OLD))
    member = DimCustomer.objects.using(db_alias).create(pipeline="shop", customer_key=hexed(OLD, "12345"))
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", NEW)
    monkeypatch.setenv("ETL_PSEUDONYM_KEY_PREVIOUS", OLD)

    out = rotate()
    assert "raw_partitions=0" in out and "dim_customers=1" in out
    member.refresh_from_db(using=db_alias)
    assert member.customer_key == hexed(NEW, "12345")
    assert PseudonymKey.objects.using(db_alias).get().fingerprint == fingerprint(NEW)
