"""Personal fields authorised code reads back: `pii = "encrypt"` columns staged as Fernet tokens, the keys of
ETL_PII_KEYS, and the reader etlcore.pii (docs/architecture.md, "Reading personal data back")."""

from __future__ import annotations

import json
from io import StringIO

import pyarrow.parquet as pq
import pytest
from cryptography.fernet import Fernet, MultiFernet
from django.core.management import CommandError, call_command

from etlcore.config import pipeline_parse
from etlcore.errors import ConfigurationError
from etlcore.models import PipelineRun
from etlcore.pii import PiiDecryptError, customer_emails, pii_cipher, pii_decrypt, pii_encrypt
from etlcore.preflight import pipeline_preflight
from tests.pipelines import dataset, pipeline_write
from warehouse.checks import warehouse_checksums
from warehouse.models import DimCustomer

CANARY = "Canary.Encrypt-7f3a@Example.com"
KEY_ENV = "ETL_PII_KEYS"


def run_command(name: str, *args: str) -> str:
    out = StringIO()
    call_command(name, *args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.fixture
def keys(monkeypatch) -> list[str]:
    """Two keys, newest first, in ETL_PII_KEYS for the test."""
    made = [Fernet.generate_key().decode("ascii") for _ in range(2)]
    monkeypatch.setenv(KEY_ENV, ",".join(made))
    return made


@pytest.fixture
def contacts(pipeline_dir, tmp_path, keys, monkeypatch):
    """A file source whose e-mail is declared twice: as its pseudonym and encrypted."""
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "pii-test-key")
    data = tmp_path / "data"
    data.mkdir()
    rows = dataset(
        f"{data}/contacts_{{date:%Y%m%d}}.csv",
        contact_id={"from": "ID", "required": True},
        email={"from": "Email", "pii": True},
        email_encrypted={"from": "Email", "pii": "encrypt"},
    )
    staging = tmp_path / "staging"
    path = pipeline_write(pipeline_dir, datasets={"contacts": rows}, database="default", staging=staging)
    (data / "contacts_20261101.csv").write_text(f"ID,Email\nC1,{CANARY}\nC2,\nC3,{CANARY}\n")
    return {"staging": staging, "path": path}


# --- extraction ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_encrypted_column_is_staged_as_fernet_tokens_that_decrypt_back_and_never_in_clear(contacts, keys):
    run_command("extract", "--pipeline", "shop", "--date", "2026-11-01")

    part = contacts["staging"] / "shop/raw/contacts/date=2026-11-01"
    files = [p for p in part.rglob("*") if p.is_file()]
    assert files
    for path in files:
        content = path.read_bytes().lower()
        assert b"canary" not in content and b"example.com" not in content, path
    table = pq.read_table(next(part.rglob("*.parquet")))
    tokens = table.column("email_encrypted").to_pylist()
    assert tokens[1] is None
    # A fresh token per value: two rows of the same e-mail do not even show they are equal.
    assert tokens[0] != tokens[2]
    assert [pii_decrypt(t) for t in (tokens[0], tokens[2])] == [CANARY, CANARY]
    assert all(CANARY.lower() not in str(v).lower() for c in table.columns for v in c.to_pylist())
    # Encrypted with the newest key: it alone opens the token.
    assert Fernet(keys[0].encode()).decrypt(tokens[0].encode()).decode() == CANARY
    field = table.schema.field("email_encrypted")
    assert field.metadata == {b"pii": b"fernet"}
    assert table.schema.field("email").metadata == {b"pii": b"hmac-sha256"}
    manifest = json.loads((part / "_manifest.json").read_text())
    assert {"name": "email_encrypted", "type": "string", "pii": "fernet"} in manifest["schema"]


@pytest.mark.django_db
def test_a_token_still_decrypts_after_a_new_key_is_put_first(contacts, keys, monkeypatch):
    run_command("extract", "--pipeline", "shop", "--date", "2026-11-01")
    part = contacts["staging"] / "shop/raw/contacts/date=2026-11-01"
    token = pq.read_table(next(part.rglob("*.parquet"))).column("email_encrypted")[0].as_py()

    newest = Fernet.generate_key().decode("ascii")
    rotated = ",".join([newest, *keys])
    monkeypatch.setenv(KEY_ENV, rotated)
    assert pii_decrypt(token) == CANARY
    assert (
        MultiFernet([Fernet(k.encode()) for k in rotated.split(",")]).decrypt(token.encode()).decode()
        == CANARY
    )
    # New tokens are made with the new key.
    assert Fernet(newest.encode()).decrypt(pii_encrypt("x").encode()) == b"x"
    # Without the key that made it, the token is unreadable, and the error names the variable only.
    monkeypatch.setenv(KEY_ENV, newest)
    with pytest.raises(PiiDecryptError, match=f"does not decrypt with any key of {KEY_ENV}") as raised:
        pii_decrypt(token)
    assert token not in str(raised.value) and newest not in str(raised.value)


@pytest.mark.django_db
@pytest.mark.parametrize("value", [None, "", "not-a-fernet-key"], ids=["unset", "empty", "malformed"])
def test_extract_without_usable_keys_fails_in_one_line_naming_the_variable_and_stages_nothing(
    contacts, monkeypatch, value
):
    if value is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, value)
    with pytest.raises(CommandError) as raised:
        run_command("extract", "--pipeline", "shop", "--date", "2026-11-01")
    message = str(raised.value)
    assert KEY_ENV in message and "\n" not in message
    assert "not-a-fernet-key" not in message
    run = PipelineRun.objects.latest("id")
    assert run.status == "failed" and KEY_ENV in run.error
    assert not list(contacts["staging"].rglob("*.parquet"))
    assert not list(contacts["staging"].rglob("_manifest.json"))


def test_the_preflight_reports_missing_keys_only_for_a_pipeline_that_encrypts(
    contacts, monkeypatch, tmp_path
):
    config = pipeline_parse(contacts["path"])
    assert pipeline_preflight(config=config, steps=["extract"]) == []
    monkeypatch.setenv(KEY_ENV, "abc,")
    (finding,) = pipeline_preflight(config=config, steps=["extract"])
    assert finding.check == "pii_keys"
    assert finding.message.startswith(f"[spark] pii_keys_env: environment variable {KEY_ENV}: key 1 of 2 is")
    assert "abc" not in finding.message

    plain = tmp_path / "plain"
    plain.mkdir()
    no_encryption = dataset("/nowhere/p.csv", sku={"from": "SKU"})
    monkeypatch.delenv(KEY_ENV)
    config = pipeline_parse(pipeline_write(plain, datasets={"products": no_encryption}))
    assert pipeline_preflight(config=config, steps=["extract"]) == []


# --- configuration ---------------------------------------------------------------------------------------


def test_pii_accepts_true_false_or_encrypt_and_names_file_table_and_key_otherwise(tmp_path):
    columns = {
        "sku": {"from": "SKU"},
        "plain": {"pii": False},
        "hashed": {"pii": True},
        "sealed": {"pii": "encrypt"},
    }
    config = pipeline_parse(pipeline_write(tmp_path, datasets={"products": dataset("/x.csv", **columns)}))
    products = config.datasets["products"]
    assert (products.pii, products.encrypted) == ({"hashed"}, {"sealed"})
    assert products.spark_columns()["sealed"]["pii"] is True  # masked in quarantined records
    assert config.spark.pii_keys_env == KEY_ENV

    for bad in ('"hash"', '"Encrypt"', "1"):
        text = (
            pipeline_write(
                tmp_path, datasets={"products": dataset("/x.csv", sku={"from": "SKU"})}
            ).read_text()
            + f'\n[datasets.products.columns.email]\nfrom = "Email"\npii = {bad}\n'
        )
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(ConfigurationError) as raised:
            pipeline_parse(path)
        shown = bad.replace('"', "'")
        expected = (
            f'{path} [datasets.products.columns.email]: pii must be true, false or "encrypt", got {shown}'
        )
        assert str(raised.value) == expected


def test_a_rule_may_check_an_encrypted_column_only_for_presence(tmp_path):
    extra = '[[datasets.products.rules]]\ncode = "one_mail"\ncheck = "unique"\ncolumns = ["sealed"]\n'
    products = dataset("/x.csv", sku={"from": "SKU"}, sealed={"pii": "encrypt"}, extra=extra)
    with pytest.raises(ConfigurationError, match=r"staged as a token: only required can check it"):
        pipeline_parse(pipeline_write(tmp_path, datasets={"products": products}))


def test_the_keys_variable_is_named_by_the_pipeline(tmp_path, monkeypatch):
    products = dataset("/x.csv", sku={"from": "SKU"}, sealed={"pii": "encrypt"})
    path = pipeline_write(tmp_path, datasets={"products": products}, spark={"pii_keys_env": "SHOP_PII_KEYS"})
    config = pipeline_parse(path)
    monkeypatch.delenv("SHOP_PII_KEYS", raising=False)
    (finding,) = pipeline_preflight(config=config, steps=["extract"])
    assert "environment variable SHOP_PII_KEYS (or SHOP_PII_KEYS_FILE) is not set" in finding.message


# --- the reader -------------------------------------------------------------------------------------------


def test_pii_cipher_errors_name_the_variable_and_the_key_position_never_a_value(keys):
    assert pii_decrypt(pii_encrypt(CANARY)) == CANARY
    for environ, says in (
        ({}, f"environment variable {KEY_ENV} (or {KEY_ENV}_FILE) is not set"),
        ({KEY_ENV: " "}, f"environment variable {KEY_ENV} (or {KEY_ENV}_FILE) is not set"),
        ({KEY_ENV: f"{keys[0]},secret-ish-value"}, f"environment variable {KEY_ENV}: key 2 of 2 is not"),
    ):
        with pytest.raises(ConfigurationError) as raised:
            pii_cipher(environ=environ)
        message = str(raised.value)
        assert says in message and "\n" not in message
        assert "secret-ish-value" not in message and keys[0] not in message


@pytest.mark.django_db
def test_customer_emails_decrypts_the_stored_tokens_of_the_given_customers(keys):
    token = pii_encrypt("ada@example.com")
    DimCustomer.objects.create(pipeline="shop", customer_key="k1", email_encrypted=token)
    DimCustomer.objects.create(pipeline="shop", customer_key="k2", email_encrypted=None)
    DimCustomer.objects.create(pipeline="other", customer_key="k3", email_encrypted=pii_encrypt("bo@x.org"))

    assert customer_emails(["k1", "k2", "k3", "unknown"]) == {"k1": "ada@example.com", "k3": "bo@x.org"}
    assert customer_emails(["k1", "k3"], pipeline="shop") == {"k1": "ada@example.com"}
    with pytest.raises(ConfigurationError, match=rf"{KEY_ENV} \(or {KEY_ENV}_FILE\) is not set"):
        customer_emails(["k1"], environ={})


@pytest.mark.django_db
def test_warehouse_checksums_count_a_token_by_its_presence(keys):
    DimCustomer.objects.create(pipeline="shop", customer_key="k1", email_encrypted=pii_encrypt("a@x.org"))
    before = warehouse_checksums(using="default")
    DimCustomer.objects.filter(customer_key="k1").update(email_encrypted=pii_encrypt("a@x.org"))
    assert warehouse_checksums(using="default") == before
    DimCustomer.objects.filter(customer_key="k1").update(email_encrypted=None)
    assert warehouse_checksums(using="default") != before


def test_an_encrypted_column_cannot_identify_a_row_or_a_customer(tmp_path):
    keyed = dataset("/x.csv", key=["sealed"], sealed={"pii": "encrypt"})
    with pytest.raises(ConfigurationError, match=r"\[datasets.products\]: column 'sealed' is encrypted"):
        pipeline_parse(pipeline_write(tmp_path, datasets={"products": keyed}))

    lines = dataset("/x.csv", order_id={}, email={"pii": "encrypt"})
    path = pipeline_write(
        tmp_path, datasets={"order_lines": lines}, spark={"options": {"customer_key_from": "email"}}
    )
    with pytest.raises(
        ConfigurationError, match=r"\[spark.options\]: customer_key_from 'email' is encrypted"
    ):
        pipeline_parse(path)
