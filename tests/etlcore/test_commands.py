"""Commands over the services: bad input ends with one clear line, a failed run record, nothing staged."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import date
from io import StringIO

import pyarrow.parquet as pq
import pytest
from django.core.management import CommandError, call_command

from etlcore.demo.api_server import start_demo_api
from etlcore.demo.generate import DEMO_API_TOKEN_DEFAULT, generate_demo_data
from etlcore.models import PipelineRun, StepRun
from etlcore.staging import TRANSFORMED, Manifest, PartitionRef, partition_attempt, partition_publish
from tests.pipelines import dataset, pipeline_write, sales_datasets
from tests.warehouse.partitions import default_outputs, sale, write_outputs
from warehouse.models import FactSalesLine, PseudonymKey

pytestmark = pytest.mark.django_db(databases="__all__")


@pytest.fixture
def shop(pipeline_dir, tmp_path, db_alias):
    data = tmp_path / "data"
    data.mkdir()
    staging = tmp_path / "staging"
    products = dataset(
        f"{data}/products_{{date:%Y%m%d}}.csv",
        sku={"from": "SKU", "required": True},
        name={"from": "Product Name"},
    )
    pipeline_write(pipeline_dir, datasets={"products": products}, database=db_alias, staging=staging)
    return {"alias": db_alias, "data": data, "staging": staging}


@pytest.fixture
def sales_shop(pipeline_dir, tmp_path, db_alias, monkeypatch):
    """`shop` with every dataset and column the sales job reads, and its key set: the preflight of a run
    that includes the transform passes, so what follows it is what the test sees."""
    data = tmp_path / "data"
    data.mkdir()
    staging = tmp_path / "staging"
    pipeline_write(pipeline_dir, datasets=sales_datasets(data), database=db_alias, staging=staging)
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "commands-test-key")
    return {"alias": db_alias, "data": data, "staging": staging}


def run_command(name: str, *args: str) -> str:
    out = StringIO()
    call_command(name, *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def latest_run(alias: str) -> PipelineRun:
    return PipelineRun.objects.using(alias).latest("id")


def test_extract_stages_a_file_source_and_records_the_run(shop):
    (shop["data"] / "products_20261101.csv").write_text('SKU,Product Name\nP1,"Mug, large"\nP2,Tea\n')
    output = run_command("extract", "--pipeline", "shop", "--date", "2026-11-01")

    run = latest_run(shop["alias"])
    assert "succeeded" in output and f"run #{run.pk}" in output
    assert (run.status, run.command, str(run.business_date)) == ("succeeded", "extract", "2026-11-01")
    step = run.steps.get()
    assert (step.step, step.status, step.rows_in, step.rows_out) == ("extract", "succeeded", 2, 2)
    assert (shop["staging"] / "shop/raw/products/date=2026-11-01/_manifest.json").exists()


def test_unknown_pipeline_fails_with_one_line_and_a_failed_run(shop):
    with pytest.raises(CommandError, match=r"^unknown pipeline 'nope' \(known: shop\)$"):
        run_command("run_pipeline", "--pipeline", "nope", "--date", "2026-11-01")
    run = PipelineRun.objects.using("default").latest("id")
    assert (run.pipeline, run.status) == ("nope", "failed")


@pytest.mark.parametrize("bad_date", ["2026-13-01", "01/11/2026", "yesterday"])
def test_bad_date_fails_with_a_failed_run_and_no_steps(shop, bad_date):
    with pytest.raises(CommandError, match=rf"invalid --date '{bad_date}'"):
        run_command("run_pipeline", "--pipeline", "shop", "--date", bad_date)
    run = latest_run(shop["alias"])
    assert run.status == "failed" and run.business_date is None
    assert run.parameters["date"] == bad_date
    assert not run.steps.exists()


def test_missing_source_file_fails_the_step_and_stages_nothing(sales_shop):
    with pytest.raises(CommandError, match=r"no file matches .*products_20261101\.csv"):
        run_command("run_pipeline", "--pipeline", "shop", "--date", "2026-11-01")
    run = latest_run(sales_shop["alias"])
    step = run.steps.get()
    assert (run.status, step.step, step.status) == ("failed", "extract", "failed")
    assert "products_20261101.csv" in step.error
    assert not list(sales_shop["staging"].rglob("_manifest.json"))
    assert not list(sales_shop["staging"].rglob("*.parquet"))


def test_transform_before_extract_says_which_partition_is_missing(sales_shop):
    with pytest.raises(CommandError, match=r"no published partition for shop raw/products 2026-11-01"):
        run_command("transform", "--pipeline", "shop", "--date", "2026-11-01")
    assert StepRun.objects.using(sales_shop["alias"]).get().status == "failed"


def test_load_before_transform_says_which_partition_is_missing(shop):
    with pytest.raises(
        CommandError,
        match=r"no published partition for shop transformed 2026-11-01 \(no transformed date yet",
    ):
        run_command("load", "--pipeline", "shop", "--date", "2026-11-01")


def test_load_without_a_date_names_the_latest_date_that_is_ready(shop):
    # Yesterday was never extracted here: the error says which dates a load could take instead.
    for day in ("2026-11-03", "2026-11-01"):
        publish_transformed(shop, day, default_outputs([sale("O1", 1)]))
    with pytest.raises(CommandError, match=r"\(latest transformed: 2026-11-03; expected "):
        run_command("load", "--pipeline", "shop")
    assert latest_run(shop["alias"]).status == "failed"


def test_pipeline_status_lists_runs_with_steps_and_errors(shop):
    (shop["data"] / "products_20261101.csv").write_text("SKU,Product Name\nP1,Mug\n")
    run_command("extract", "--pipeline", "shop", "--date", "2026-11-01")
    with pytest.raises(CommandError):
        run_command("extract", "--pipeline", "shop", "--date", "2026-11-02")
    output = run_command("pipeline_status", "--database", shop["alias"])
    lines = output.splitlines()
    assert "2026-11-02" in lines[0] and "failed" in lines[0]
    assert any("error: source 'products'" in line for line in lines)
    assert any("2026-11-01" in line and "succeeded" in line for line in lines)
    assert any("in=1 out=1 rejected=0" in line for line in lines)


@pytest.fixture
def garbage_api():
    """A real HTTP server on loopback whose 200 answer is not JSON."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html>maintenance</html>"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_source_answering_garbage_fails_the_run_and_stages_nothing(
    pipeline_dir, tmp_path, db_alias, garbage_api
):
    staging_root = tmp_path / "staging"
    source = {
        "kind": "rest",
        "base_url": garbage_api,
        "path": "/orders",
        "records_path": "orders",
        "max_retries": 0,
    }
    orders = dataset(source=source, key=[], order_id={"from": "id", "required": True})
    pipeline_write(pipeline_dir, "api", datasets={"orders": orders}, database=db_alias, staging=staging_root)
    with pytest.raises(CommandError, match=r"source 'orders'.*/orders.*JSON"):
        run_command("extract", "--pipeline", "api", "--date", "2026-11-01")
    run = latest_run(db_alias)
    assert (run.status, run.steps.get().status) == ("failed", "failed")
    assert not list(staging_root.rglob("*.parquet")) and not list(staging_root.rglob("_manifest.json"))


def _transform_counts(**order_lines) -> dict:
    return {
        "order_lines": {"rows_in": 10, "rows_out": 5, "rejected": 2, "duplicates": 1, **order_lines},
        "products": {"rows_in": 3, "rows_out": 3, "rejected": 0, "duplicates": 0},  # a result before filters
    }


def test_pipeline_status_shows_dataset_accounting_warnings_replays_and_what_loads_did_to_lines(db_alias):
    from django.utils import timezone

    now = timezone.now()
    run = PipelineRun.objects.using(db_alias).create(
        pipeline="shop", command="run_pipeline", status="succeeded", started_at=now, finished_at=now
    )
    datasets = _transform_counts(filtered={"postage": 2}, warnings={"bulk": 3, "late": 1})
    StepRun.objects.using(db_alias).create(
        run=run, step="transform", status="succeeded", started_at=now, details={"datasets": datasets}
    )
    replay = {
        "selected": 4,
        "released": 3,
        "still_quarantined": 1,
        "quarantine_before": 9,
        "quarantine_after": 6,
    }
    StepRun.objects.using(db_alias).create(
        run=run, step="replay", status="succeeded", started_at=now, details=replay
    )
    load = {
        "rows": 7,
        "inserted": 4,
        "updated": {"2026-10-31": 1, "2026-11-01": 1},
        "superseded": 1,
        "reloaded": 0,
        "deleted": 2,
        "dates": ["2026-10-31", "2026-11-01"],
    }
    StepRun.objects.using(db_alias).create(
        run=run, step="load", status="succeeded", started_at=now, details={"lines": {"sales_lines": load}}
    )

    lines = run_command("pipeline_status", "--database", db_alias).splitlines()

    assert (
        "order_lines    in=10 out=5 rejected=2 duplicates=1 filtered=2 (postage:2) warnings=bulk:3,late:1"
        in [line.strip() for line in lines]
    )
    assert "products       in=3 out=3 rejected=0 duplicates=0 filtered=0 warnings=0" in [
        line.strip() for line in lines
    ]
    assert any(
        "replayed 4 quarantined record(s): released=3 still_quarantined=1 quarantine 9 -> 6" in line
        for line in lines
    )
    assert (
        "sales_lines    staged=7 new=4 updated=2 (2026-10-31:1,2026-11-01:1) superseded=1 reloaded=0 "
        "deleted=2 "
        "daily recomputed for 2 date(s)" in [line.strip() for line in lines]
    )


def test_reconciliation_counts_rows_filtered_by_a_named_rule_and_fails_when_they_do_not_balance():
    from etlcore.errors import ReconciliationError
    from etlcore.services.transform import job_result_reconcile

    inputs = {"order_lines": {"rows": 10}, "products": {"rows": 3}}
    job_result_reconcile({"datasets": _transform_counts(filtered={"postage": 2})}, inputs)

    with pytest.raises(
        ReconciliationError, match=r"accounted 9 \(out 5 \+ rejected 2 \+ duplicates 1 \+ postage 1\)"
    ):
        job_result_reconcile({"datasets": _transform_counts(filtered={"postage": 1})}, inputs)
    with pytest.raises(ReconciliationError, match=r"'order_lines': 10 rows staged, job read 10, accounted 8"):
        job_result_reconcile({"datasets": _transform_counts()}, inputs)


def publish_transformed(
    shop: dict, day: str, outputs: dict[str, list[dict]], key_fingerprint: str | None = None
) -> None:
    """A transformed partition as the transform step publishes it, with outputs the test writes."""
    ref = PartitionRef(shop["staging"], "shop", TRANSFORMED, date.fromisoformat(day))
    with partition_attempt(ref) as attempt:
        paths = write_outputs(attempt, outputs)
        files = {name: [str(p.relative_to(ref.dir)) for p in found] for name, found in paths.items()}
        manifest = Manifest(
            pipeline="shop",
            layer=TRANSFORMED,
            dataset=None,
            business_date=day,
            files=[f for listed in files.values() for f in listed],
            row_count=len(outputs["sales_lines"]),
            schema=[],
            source="test",
            checksum="test",
            run_id=None,
            outputs={name: {"files": files[name], "rows": len(outputs.get(name, []))} for name in files},
            key_fingerprint=key_fingerprint,
        )
        partition_publish(ref, manifest, attempt)


def test_load_of_a_partition_naming_a_product_the_warehouse_lacks_fails_with_one_line(shop):
    outputs = default_outputs([sale("O1", 1), sale("O1", 2, sku="P9")])  # P9 is in no products output
    publish_transformed(shop, "2026-11-01", outputs)

    with pytest.raises(CommandError, match=r"^warehouse\.DimProduct: no row for sku P9$"):
        run_command("load", "--pipeline", "shop", "--date", "2026-11-01")
    run = latest_run(shop["alias"])
    step = run.steps.get()
    assert (run.status, step.step, step.status) == ("failed", "load", "failed")
    assert step.error == run.error == "warehouse.DimProduct: no row for sku P9"
    assert not FactSalesLine.objects.using(shop["alias"]).exists()


def _fingerprint(key: bytes) -> str:
    # Independent of the code under test: the documented HMAC of the fixed label.
    return hmac.new(key, b"django-spark-etl pseudonym key fingerprint v1", hashlib.sha256).hexdigest()[:16]


def test_load_under_another_pseudonym_key_is_refused_and_changes_nothing(shop):
    first, other = _fingerprint(b"key-one"), _fingerprint(b"key-two")
    publish_transformed(shop, "2026-11-01", default_outputs([sale("O1", 1)]), key_fingerprint=first)
    run_command("load", "--pipeline", "shop", "--date", "2026-11-01")
    publish_transformed(
        shop, "2026-11-02", default_outputs([sale("O2", 1, day=date(2026, 11, 2))]), key_fingerprint=other
    )

    with pytest.raises(CommandError, match=rf"fingerprint {first}, this partition's with {other}: .*second"):
        run_command("load", "--pipeline", "shop", "--date", "2026-11-02")
    assert latest_run(shop["alias"]).status == "failed"
    assert list(FactSalesLine.objects.using(shop["alias"]).values_list("order_id", flat=True)) == ["O1"]
    assert list(PseudonymKey.objects.using(shop["alias"]).values_list("fingerprint", flat=True)) == [first]


def test_transform_under_another_pseudonym_key_fails_before_spark_starts(sales_shop, monkeypatch):
    PseudonymKey.objects.using(sales_shop["alias"]).create(
        pipeline="shop", fingerprint=_fingerprint(b"key-one")
    )
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "key-two")
    expected = rf"fingerprint {_fingerprint(b'key-one')}, ETL_PSEUDONYM_KEY's with {_fingerprint(b'key-two')}"
    with pytest.raises(CommandError, match=expected):
        run_command("transform", "--pipeline", "shop", "--date", "2026-11-01")  # no raw partition: not read
    step = latest_run(sales_shop["alias"]).steps.get()
    assert (step.step, step.status, step.details) == ("transform", "failed", {})


@pytest.fixture
def customers(pipeline_dir, tmp_path, db_alias):
    data = tmp_path / "data"
    data.mkdir()
    rows = dataset(
        f"{data}/customers_{{date:%Y%m%d}}.csv",
        customer_id={"from": "ID", "required": True},
        email={"from": "Email", "pii": True},
    )
    staging = tmp_path / "staging"
    pipeline_write(pipeline_dir, datasets={"customers": rows}, database=db_alias, staging=staging)
    (data / "customers_20261101.csv").write_text("ID,Email\nC1,Canary.One@Example.com\nC2,\n")
    return {"alias": db_alias, "staging": tmp_path / "staging"}


def test_extract_stages_a_personal_column_as_its_pseudonym_only(customers, monkeypatch):
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "command-key")
    run_command("extract", "--pipeline", "shop", "--date", "2026-11-01")

    part = customers["staging"] / "shop/raw/customers/date=2026-11-01"
    table = pq.read_table(next(part.rglob("*.parquet")))
    expected = hmac.new(b"command-key", b"canary.one@example.com", hashlib.sha256).hexdigest()
    assert table.column("email").to_pylist() == [expected, None]
    for path in part.rglob("*"):
        if path.is_file():
            assert b"anary" not in path.read_bytes().lower(), path
    manifest = json.loads((part / "_manifest.json").read_text())
    assert {"name": "email", "type": "string", "pii": "hmac-sha256"} in manifest["schema"]


def test_extract_of_personal_columns_without_the_key_fails_before_reading_the_source(customers, monkeypatch):
    monkeypatch.delenv("ETL_PSEUDONYM_KEY", raising=False)
    missing = (
        r"^pipeline 'shop': environment variable ETL_PSEUDONYM_KEY \(or ETL_PSEUDONYM_KEY_FILE\) is not set; "
        "personal columns"
    )
    with pytest.raises(CommandError, match=missing):
        run_command("extract", "--pipeline", "shop", "--date", "2026-11-01")
    assert latest_run(customers["alias"]).status == "failed"
    assert not list(customers["staging"].rglob("*.parquet"))


def test_extract_failing_mid_source_leaves_no_partition_folder_or_lock(pipeline_dir, tmp_path, db_alias):
    """Two batches are staged before line 6 breaks: the failed attempt leaves nothing under staging."""
    source = tmp_path / "products.jsonl"
    source.write_text("".join(f'{{"SKU": "P{i}"}}\n' for i in range(5)) + "{not json\n")
    products = dataset(
        source={"kind": "file", "path": str(source), "format": "jsonl", "batch_size": 2},
        sku={"from": "SKU", "required": True},
    )
    staging = tmp_path / "staging"
    pipeline_write(pipeline_dir, datasets={"products": products}, database=db_alias, staging=staging)
    with pytest.raises(CommandError, match=r"products\.jsonl line 6: malformed JSON"):
        run_command("extract", "--pipeline", "shop", "--date", "2026-11-01")
    assert latest_run(db_alias).status == "failed"
    assert not list(staging.rglob("date=*")) and not list(staging.rglob(".lock"))


CANARY = "canary.7f3a@example.com"


@pytest.mark.parametrize(
    ("broken_row", "says"),
    [
        # One field too many, holding the address and binary bytes: pyarrow's message quotes the row.
        (f"P2,Tea,{CANARY},\xff\xfe\x00tail".encode("latin-1"), r"line 3: CSV parse error: Expected 3 col"),
        # The address column itself not UTF-8.
        (b"P2,Tea,\xff\xfe\x00" + CANARY.encode(), r"line 3, column 'Email': .*invalid UTF8"),
    ],
    ids=["extra-field", "binary-field"],
)
def test_broken_csv_row_is_reported_by_line_without_its_content(
    pipeline_dir, tmp_path, db_alias, caplog, broken_row, says, monkeypatch
):
    """The run record, the command's error and the log say where the row is, in one line, and never
    quote it: not the personal column's value, not the bytes."""
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "csv-test-key")
    source = tmp_path / "products.csv"
    source.write_bytes(b"SKU,Product Name,Email\nP1,Mug,a@example.com\n" + broken_row + b"\nP3,Cup,b@x.org\n")
    products = dataset(
        source, sku={"from": "SKU", "required": True}, name={"from": "Product Name"}, email={"from": "Email"}
    )
    products["columns"]["email"]["pii"] = True
    pipeline_write(pipeline_dir, datasets={"products": products}, database=db_alias, staging=tmp_path / "st")
    with pytest.raises(CommandError) as failure:
        run_command("extract", "--pipeline", "shop", "--date", "2026-11-01")
    run = latest_run(db_alias)
    step = run.steps.get()
    for text in (str(failure.value), run.error, step.error, *caplog.text.splitlines()):
        assert "canary" not in text
        assert "\n" not in text.strip() and "\x00" not in text and "\ufffd" not in text, text
    assert re.search(rf"products\.csv {says}", run.error), run.error
    assert len(run.error) < 300


def test_demo_extract_reports_no_schema_drift_about_the_demo_s_own_data(
    tmp_path, monkeypatch, staging_root, caplog
):
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "drift-test-key")
    data_dir = tmp_path / "demo"
    generate_demo_data(out_dir=data_dir, business_dates=[date(2026, 11, 1)])
    monkeypatch.setenv("ETL_DEMO_DIR", str(data_dir))
    monkeypatch.setenv("ETL_DEMO_API_TOKEN", DEMO_API_TOKEN_DEFAULT)
    with start_demo_api(orders_path=data_dir / "orders.jsonl", token=DEMO_API_TOKEN_DEFAULT) as api:
        monkeypatch.setenv("ETL_DEMO_API_URL", api.url)
        run_command("extract", "--pipeline", "retail_demo", "--date", "2026-11-01")
    step = latest_run("default").steps.get()
    assert step.status == "succeeded" and step.details["order_lines"]["rows"] > 0
    assert "drift" not in caplog.text
    assert not any("drift" in details for details in step.details.values() if isinstance(details, dict))


def test_pipeline_status_says_which_backfill_ran_a_date_which_run_it_resumes_and_how_many_attempts(db_alias):
    from django.utils import timezone

    from etlcore.models import Backfill

    now = timezone.now()
    backfill = Backfill.objects.using(db_alias).create(
        pipeline="shop",
        first_date=date(2026, 11, 1),
        last_date=date(2026, 11, 3),
        command="run_pipeline",
        status="failed",
        started_at=now,
    )
    failed = PipelineRun.objects.using(db_alias).create(
        pipeline="shop", command="run_pipeline", status="failed", started_at=now, backfill=backfill
    )
    resumed = PipelineRun.objects.using(db_alias).create(
        pipeline="shop", command="run_pipeline", status="succeeded", started_at=now, resumed_from=failed
    )
    StepRun.objects.using(db_alias).create(run=resumed, step="transform", status="succeeded", started_at=now)
    StepRun.objects.using(db_alias).create(
        run=resumed, step="load", status="succeeded", started_at=now, attempts=2
    )

    lines = [line.strip() for line in run_command("pipeline_status", "--database", db_alias).splitlines()]

    assert f"backfill #{backfill.pk} 2026-11-01..2026-11-03 (failed)" in lines
    assert f"resumes run #{failed.pk}" in lines
    steps = {line.split()[0]: line for line in lines if line.split()[0] in ("transform", "load")}
    assert steps["load"].endswith(" attempts=2") and "attempts" not in steps["transform"]
