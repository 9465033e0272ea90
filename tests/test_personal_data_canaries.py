"""Personal data and secrets, hunted with canary values through a whole pipeline.

Unique fake e-mails, names and phone numbers are planted in every source kind the demo shape can take (the
orders REST API, products in PostgreSQL, stores in S3, rates in a file), and unique secret values in every
place a secret lives (the API token, the database password in the source's DSN, the S3 secret key, the
pseudonym key, two `[spark.conf]` secrets). The pipeline then runs through success with quarantined
rows, a quarantine replay, a failing source and a failing Spark job. Afterwards every staging file
(Parquet decoded column by column, and every other file byte for byte, the Spark logs included), every
table of the database, every log record, output and error text, and the command lines and environments of
the child processes (sampled while they ran) are searched: no canary may appear in clear.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import threading
from datetime import date
from io import StringIO
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection

from etlcore.demo.api_server import start_demo_api
from etlcore.demo.generate import generate_demo_data
from etlcore.logs import LOGGERS, log_formatter
from etlcore.models import PipelineRun
from tests.connectors.conftest import s3_bucket, s3_endpoint, source_db, source_pg_url  # noqa: F401
from warehouse.models import FactSalesLine, QuarantinedRow

pytestmark = [pytest.mark.spark_submit, pytest.mark.django_db(transaction=True)]

DAY = date(2026, 11, 1)
DEMO = (settings.BASE_DIR / "conf" / "pipelines" / "retail_demo.toml").read_text()

# Personal values: each is planted in a source and must never be written anywhere in clear.
EMAILS = ["Ada.Canary-4e1b@Leak.Test", "bo.canary-77c2@leak.test", "cy.canary-a90d@leak.test"]
NAME = "Zyxwava Canarynamesson"
PHONE = "+44 7700 900 4711"
BUYER = "buyer.canary-5b3f@leak.test"  # products (PostgreSQL)
MANAGER_PHONE = "+49 151 0000 8282"  # stores (S3)
APPROVER = "approver.canary-c1d8@leak.test"  # rates (file)
# Secrets: each is needed somewhere, and none may be written, logged or shown on a command line.
SECRETS = {
    "pseudonym_key": "pk-canary-0b6e5d1f",
    "api_token": "tok-canary-93aa17c4",
    "db_password": "pw-canary-2f8c64e0",
    "s3_secret": "s3-canary-e5d9031b",
    "spark_conf_secret": "sc-canary-7d21c0aa",
    "spark_executor_env": "ee-canary-4c6b9f13",
}
PERSONAL = [*EMAILS, NAME, PHONE, BUYER, MANAGER_PHONE, APPROVER]
# Forms a value may take on its way: as given, lower-cased (the pseudonym's normalisation), digits only.
FORMS = sorted({f for v in PERSONAL for f in (v, v.lower(), re.sub(r"\D", "", v) if "+" in v else v)})
ALL_CANARIES = FORMS + list(SECRETS.values())


def canaries_in(text: str, canaries: list[str] = ALL_CANARIES) -> list[str]:
    return [c for c in canaries if c in text]


class ChildSampler:
    """Reads the command line and the environment of every descendant of this process, every 50 ms, while
    the runs go on: what `ps e` and /proc show other processes of the machine's users."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[str, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ChildSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.05):
            parents = {}
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        stat = (entry / "stat").read_text()
                        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                    except (OSError, ValueError, IndexError):
                        continue
            for pid in parents:
                ancestor, hops = parents.get(pid), 0
                while ancestor not in (None, 0, 1, me) and hops < 20:
                    ancestor, hops = parents.get(ancestor), hops + 1
                if ancestor != me:
                    continue
                try:
                    cmdline = (Path(f"/proc/{pid}/cmdline").read_bytes()).replace(b"\0", b" ").decode()
                    environ = (Path(f"/proc/{pid}/environ").read_bytes()).replace(b"\0", b"\n").decode()
                except (OSError, UnicodeDecodeError):
                    continue
                if cmdline:
                    self.seen[pid] = (cmdline, environ)


@pytest.fixture
def canary_site(tmp_path, monkeypatch, pipeline_dir, staging_root, source_db, s3_bucket, s3_endpoint):  # noqa: F811
    data = tmp_path / "demo"
    generate_demo_data(out_dir=data, business_dates=[DAY])
    exports = data / "exports"

    # Orders (REST): three customers become canaries, one of their lines an unknown product (quarantined).
    orders = [json.loads(line) for line in (data / "orders.jsonl").read_text().splitlines()]
    day_orders = [o for o in orders if o["created_at"].startswith(DAY.isoformat())]
    for order, email in zip(day_orders[:3], EMAILS, strict=True):
        order["customer"].update(email=email, name=NAME, phone=PHONE)
    day_orders[0]["lines"][0]["sku"] = "SKU-NOT-SOLD-ANYWHERE"
    (data / "orders.jsonl").write_text("".join(json.dumps(o) + "\n" for o in orders))

    # Products (PostgreSQL), with the buyer's e-mail.
    rows = list(csv.DictReader(io.StringIO((exports / f"products_{DAY:%Y%m%d}.csv").read_text())))
    source_db.execute(
        "CREATE TABLE products (sku text, name text, category text, list_price numeric(18,2), buyer text)"
    )
    for row in rows:
        source_db.execute(
            "INSERT INTO products VALUES (%s, %s, %s, %s, %s)",
            [row["SKU"], row["Product Name"], row["Category"], row["List Price"], BUYER],
        )
    dsn = re.sub(r"^postgres(ql)?://([^@/]*)@", rf"postgresql://\2:{SECRETS['db_password']}@", source_db.url)
    if SECRETS["db_password"] not in dsn:  # a key=value DSN
        dsn += f" password={SECRETS['db_password']}"
    monkeypatch.setenv("CANARY_SALES_DB", dsn)  # the server trusts loopback: the password is carried, unused

    # Stores (S3), with the store manager's phone number.
    stores = [json.loads(line) for line in (exports / f"stores_{DAY:%Y%m%d}.jsonl").read_text().splitlines()]
    body = "".join(json.dumps({**s, "manager": {"phone": MANAGER_PHONE}}) + "\n" for s in stores)
    s3_bucket.put(f"stores/{DAY:%Y%m%d}/stores.jsonl", body.encode())
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRETS["s3_secret"])

    # Rates (file), with who approved them.
    rates = exports / f"rates_{DAY:%Y%m%d}.csv"
    lines = rates.read_text().splitlines()
    rates.write_text(
        "\n".join([lines[0] + ",approved_by", *(f"{line},{APPROVER}" for line in lines[1:])]) + "\n"
    )

    toml = DEMO.replace(
        "customer_country = {",
        'customer_phone = { from = "customer.phone", type = "string", pii = true }\ncustomer_country = {',
    )
    toml = _replace_block(
        toml,
        "[datasets.products.source]",
        f'kind = "postgres"\ndsn_env = "CANARY_SALES_DB"\ntable = "{source_db.schema}.products"\n',
    )
    toml = _replace_block(
        toml,
        "[datasets.products.columns]",
        'sku = { from = "sku", type = "string", required = true }\n'
        'name = { from = "name", type = "string", required = true }\n'
        'category = { from = "category", type = "string" }\n'
        'list_price = { from = "list_price", type = "decimal(18,2)" }\n'
        'buyer_email = { from = "buyer", type = "string", pii = true }\n',
    )
    toml = _replace_block(
        toml,
        "[datasets.stores.source]",
        f'kind = "s3"\nbucket = "{s3_bucket.name}"\nprefix = "stores/{{date:%Y%m%d}}/"\nformat = "jsonl"\n'
        f'mode = "full"\nendpoint_url = "{s3_endpoint}"\n',
    )
    toml = toml.replace(
        'country = { from = "address.country", type = "string" }',
        'country = { from = "address.country", type = "string" }\n'
        'manager_phone = { from = "manager.phone", type = "string", pii = true }',
    )
    toml = toml.replace(
        'rate = { from = "rate", type = "decimal(18,8)", required = true }',
        'rate = { from = "rate", type = "decimal(18,8)", required = true }\n'
        'approved_by = { from = "approved_by", type = "string", pii = true }',
    )
    toml = toml.replace(
        '"spark.ui.enabled" = "false"',
        '"spark.ui.enabled" = "false"\n'
        f'"spark.hadoop.fs.s3a.secret.key" = "{SECRETS["spark_conf_secret"]}"\n'
        f'"spark.executorEnv.CANARY_TOKEN" = "{SECRETS["spark_executor_env"]}"',
    )
    assert toml.count("pii = true") == 5
    (pipeline_dir / "retail_demo.toml").write_text(toml)
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", SECRETS["pseudonym_key"])
    monkeypatch.setenv("ETL_DEMO_DIR", str(data))
    monkeypatch.setenv("ETL_DEMO_API_TOKEN", SECRETS["api_token"])
    with start_demo_api(orders_path=data / "orders.jsonl", token=SECRETS["api_token"]) as api:
        monkeypatch.setenv("ETL_DEMO_API_URL", api.url)
        yield {
            "toml": pipeline_dir / "retail_demo.toml",
            "staging": staging_root,
            "s3": s3_bucket,
            "stores": body,
        }


def _replace_block(toml: str, header: str, body: str) -> str:
    """The lines under `header` up to the next blank line replaced by `body`."""
    start = toml.index("\n", toml.index(header)) + 1  # after the header line and its comment
    end = toml.index("\n\n", start)
    return toml[:start] + body.rstrip("\n") + toml[end:]


def run(*args: str, said: list[str]) -> None:
    out, err = StringIO(), StringIO()
    try:
        call_command(*args, stdout=out, stderr=err)
    except CommandError as exc:
        said.append(str(exc))
    finally:
        said += [out.getvalue(), err.getvalue()]


def test_no_canary_is_written_logged_or_shown_anywhere(canary_site, caplog):
    caplog.set_level(logging.DEBUG)
    # The logs as operators get them too: every event rendered as a JSON line (ETL_LOG_FORMAT=json).
    json_logs = io.StringIO()
    json_handler = logging.StreamHandler(json_logs)
    json_handler.setFormatter(log_formatter(log_format="json"))
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
        logging.getLogger(name).addHandler(json_handler)
    said: list[str] = []
    day = DAY.isoformat()
    with ChildSampler() as sampler:
        # A successful run with quarantined rows, then its quarantine replayed.
        run("run_pipeline", "--date", day, said=said)
        assert PipelineRun.objects.get().status == "succeeded", said
        assert FactSalesLine.objects.exists() and QuarantinedRow.objects.exists()
        run("replay_quarantine", "--date", day, said=said)
        # A failing source: the stores' object is gone.
        s3 = canary_site["s3"]
        s3.client.delete_object(Bucket=s3.name, Key=f"stores/{DAY:%Y%m%d}/stores.jsonl")
        run("run_pipeline", "--date", day, said=said)
        # A failing Spark job.
        s3.put(f"stores/{DAY:%Y%m%d}/stores.jsonl", canary_site["stores"].encode())
        toml = canary_site["toml"]
        toml.write_text(
            toml.read_text().replace(
                '"spark.ui.enabled" = "false"', '"spark.ui.enabled" = "false"\n"spark.driver.memory" = "lots"'
            )
        )
        run("run_pipeline", "--date", day, said=said)
    for name in LOGGERS:
        logging.getLogger(name).removeHandler(json_handler)
    statuses = list(PipelineRun.objects.order_by("id").values_list("command", "status"))
    assert statuses == [
        ("run_pipeline", "succeeded"),
        ("replay_quarantine", "succeeded"),
        ("run_pipeline", "failed"),
        ("run_pipeline", "failed"),
    ], said
    assert any("stores" in text for text in said) and any("spark" in text.lower() for text in said)

    found: dict[str, list[str]] = {}

    # Every file the pipeline wrote: Parquet decoded column by column, everything byte for byte.
    files = [p for p in Path(canary_site["staging"]).rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any(p.suffix == ".log" for p in files)
    for path in files:
        text = path.read_bytes().decode("utf-8", "replace")
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            text += " ".join(str(v) for column in table.columns for v in column.to_pylist())
        if hits := canaries_in(text):
            found[str(path)] = hits

    # Every table, every column, run records and quarantined raw records included.
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')
            if hits := canaries_in(" ".join(str(row) for row in cursor.fetchall())):
                found[f"table {table}"] = hits

    # Every log record, output and error text.
    logged = "\n".join(record.getMessage() for record in caplog.records) + "\n".join(said)
    if hits := canaries_in(logged):
        found["logs, output and errors"] = hits
    lines = json_logs.getvalue().splitlines()
    assert {json.loads(line)["event"] for line in lines} >= {
        "run_finished",
        "step_finished",
        "spark_submit_finished",
    }
    if hits := canaries_in(json_logs.getvalue()):
        found["JSON log lines"] = hits

    # Command lines of every child, and their environments: none holds a secret it does not need. The
    # job's processes need the pseudonym key and the variables [spark] env declares; the executors'
    # declared environment (spark.executorEnv.*) reaches them through Spark, not through ours.
    assert any("spark-submit" in cmd or "SparkSubmit" in cmd for cmd, _ in sampler.seen.values()), (
        sampler.seen
    )
    not_needed = [v for k, v in SECRETS.items() if k not in ("pseudonym_key", "spark_executor_env")]
    for pid, (cmdline, environ) in sampler.seen.items():
        if hits := canaries_in(cmdline):
            found[f"command line of pid {pid}: {cmdline[:120]}"] = hits
        if hits := canaries_in(environ, FORMS + not_needed):
            found[f"environment of pid {pid}: {cmdline[:120]}"] = hits

    assert found == {}
