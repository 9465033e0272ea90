"""Run metrics pushed to a real Pushgateway (Debian's `prometheus-pushgateway`, started here on loopback with
basic authentication and no persistence) and read back from its /metrics: a real demo run with quarantined
rows (its job in the suite's Spark session, tests/spark_in_session.py: the metrics are the run's, not the
submit's), a failed run replacing the pipeline's previous push, and pushes that fail without failing the
run.

The expected values come from the warehouse, the staged files and the run records, never from
etlcore.metrics itself.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from io import StringIO
from pathlib import Path

import bcrypt
import pyarrow.parquet as pq
import pytest
import requests
from django.core.management import CommandError, call_command
from django.db.models import Sum
from prometheus_client.parser import text_string_to_metric_families

from etlcore.demo.pipeline import demo_run
from etlcore.metrics import metrics_publish
from etlcore.models import PipelineRun, RunStatus, StepRun
from tests.conftest import skip_or_fail_in_ci
from tests.pipelines import dataset, pipeline_write
from tests.spark_in_session import jobs_in_session
from warehouse.models import FactSalesLine, QuarantinedRow

DAY = date(2026, 11, 1)
T0 = datetime(2026, 11, 2, 2, 15, tzinfo=UTC)
USER, PASSWORD = "etl", "canary-pushgateway-password-77e1"
CANARY_KEY = "canary-pseudonym-key-0b5e"
INSTALL = "apt-get install prometheus-pushgateway, or `make test-deps` as root"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory) -> Iterator[str]:
    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        skip_or_fail_in_ci(f"prometheus-pushgateway is not installed ({INSTALL})", "Pushgateway")
    folder = tmp_path_factory.mktemp("pushgateway")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    (folder / "web.yml").write_text(f"basic_auth_users:\n  {USER}: {hashed}\n")
    url = f"http://127.0.0.1:{free_port()}"
    with (folder / "pushgateway.log").open("wb") as log:
        gateway = subprocess.Popen(
            [
                binary,
                f"--web.listen-address={url.removeprefix('http://')}",
                "--persistence.file=",  # Debian's default keeps pushes in /var/lib/prometheus
                f"--web.config.file={folder / 'web.yml'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"{url}/-/ready", auth=(USER, PASSWORD), timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if gateway.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"the Pushgateway did not start: {(folder / 'pushgateway.log').read_text()[-2000:]}"
                )
            time.sleep(0.1)
        yield url
    finally:
        gateway.terminate()
        gateway.wait(timeout=10)


@pytest.fixture
def pushing(pushgateway, settings) -> str:
    settings.ETL_PUSHGATEWAY_URL = pushgateway
    settings.ETL_PUSHGATEWAY_AUTH = (USER, PASSWORD)
    settings.ETL_METRICS_TEXTFILE_DIR = None
    return pushgateway


def gateway_text(url: str) -> str:
    answer = requests.get(f"{url}/metrics", auth=(USER, PASSWORD), timeout=5)
    answer.raise_for_status()
    return answer.text


def gateway_samples(url: str, pipeline: str) -> dict[tuple[str, frozenset], float]:
    """The pipeline's group as the Pushgateway serves it, without the labels the gateway adds."""
    found = {}
    for family in text_string_to_metric_families(gateway_text(url)):
        for s in family.samples:
            if s.labels.get("pipeline") == pipeline and s.name.startswith("etl_"):
                assert s.labels.get("job") == "etl"
                labels = {k: v for k, v in s.labels.items() if k not in ("job", "instance")}
                found[(s.name, frozenset(labels.items()))] = s.value
    return found


def value(found, name: str, **labels) -> float:
    return found[(name, frozenset(labels.items()))]


def series(found, name: str, **labels) -> dict[frozenset, float]:
    """Samples of `name` having the given labels, keyed by their other labels."""
    return {
        frozenset(set(key) - set(labels.items())): v
        for (n, key), v in found.items()
        if n == name and set(labels.items()) <= set(key)
    }


def midnight(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


# --- a real run ----------------------------------------------------------------------------------------


@pytest.mark.spark_submit
@pytest.mark.django_db(transaction=True)
def test_a_real_demo_run_with_quarantined_rows_reads_back_from_the_pushgateway_as_the_warehouse_holds_it(
    pushing, staging_root, tmp_path, monkeypatch, spark
):
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", CANARY_KEY)
    jobs_in_session(monkeypatch, spark)
    (run,) = demo_run(data_dir=tmp_path / "demo", business_dates=[DAY]).runs
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and "metrics_publish_error" not in run.parameters
    found = gateway_samples(pushing, "retail_demo")
    p = {"pipeline": "retail_demo"}

    assert value(found, "etl_run_id", **p) == run.pk
    assert value(found, "etl_run_success", **p) == 1
    assert series(found, "etl_run_last_status", **p) == {
        frozenset({("status", "succeeded")}): 1,
        frozenset({("status", "failed")}): 0,
        frozenset({("status", "abandoned")}): 0,
    }
    assert value(found, "etl_run_start_timestamp_seconds", **p) == run.started_at.timestamp()
    assert value(found, "etl_run_finish_timestamp_seconds", **p) == run.finished_at.timestamp()
    assert value(found, "etl_run_duration_seconds", **p) == pytest.approx(
        (run.finished_at - run.started_at).total_seconds()
    )
    assert value(found, "etl_run_business_date_timestamp_seconds", **p) == midnight(DAY)
    assert value(found, "etl_pipeline_last_loaded_business_date_timestamp_seconds", **p) == midnight(DAY)
    assert value(found, "etl_pipeline_last_success_timestamp_seconds", **p) == run.finished_at.timestamp()

    records = {s.step: s for s in StepRun.objects.filter(run=run)}
    assert set(records) == {"extract", "transform", "load"}
    for step, record in records.items():
        assert value(found, "etl_step_success", step=step, **p) == 1
        assert value(found, "etl_step_attempts", step=step, **p) == 1
        seconds = (record.finished_at - record.started_at).total_seconds()
        assert value(found, "etl_step_duration_seconds", step=step, **p) == pytest.approx(seconds)

    # Rows: what was staged (read from the Parquet files), what the warehouse quarantined and loaded.
    raw = staging_root / "retail_demo" / "raw"
    datasets = sorted(folder.name for folder in raw.iterdir())
    assert datasets == ["order_lines", "products", "rates", "stores"]
    for name in datasets:
        staged = sum(
            pq.ParquetFile(f).metadata.num_rows
            for f in (raw / name / f"date={DAY}").glob("attempt-*/*.parquet")
        )
        quarantined = (
            QuarantinedRow.objects.filter(pipeline="retail_demo", business_date=DAY, dataset=name).aggregate(
                n=Sum("occurrences")
            )["n"]
            or 0
        )
        rows = {
            dict(k)["kind"]: v
            for k, v in series(found, "etl_dataset_rows", step="transform", dataset=name, **p).items()
        }
        assert value(found, "etl_dataset_rows", step="extract", dataset=name, kind="out", **p) == staged
        assert rows["in"] == staged and rows["quarantined"] == quarantined
        assert rows["in"] == rows["out"] + rows["quarantined"] + rows["duplicates"] + rows["filtered"]
    lines = {
        dict(k)["kind"]: v
        for k, v in series(found, "etl_dataset_rows", step="transform", dataset="order_lines", **p).items()
    }
    assert lines["out"] == FactSalesLine.objects.filter(pipeline="retail_demo", date__date=DAY).count()
    assert lines["quarantined"] > 0 and lines["duplicates"] > 0  # the demo date's designed cases
    assert value(found, "etl_step_rows", step="transform", kind="quarantined", **p) == sum(
        QuarantinedRow.objects.filter(business_date=DAY).values_list("occurrences", flat=True)
    )

    # Per-source HTTP counters exactly as the extract record holds them; none for a source without.
    http = {
        name: facts["http"]
        for name, facts in (records["extract"].details.get("sources") or {}).items()
        if "http" in facts
    }
    pushed = {dict(k)["dataset"] for k in series(found, "etl_source_http_requests_total", **p)}
    assert pushed == set(http)
    for name, counts in http.items():
        assert value(found, "etl_source_http_requests_total", dataset=name, **p) == counts["requests"]

    assert CANARY_KEY not in gateway_text(pushing) and PASSWORD not in gateway_text(pushing)


# --- runs without Spark: a one-source pipeline -----------------------------------------------------------


def shop(pipeline_dir: Path, data: Path) -> None:
    products = dataset(f"{data}/products_{{date:%Y%m%d}}.csv", sku={"required": True}, name={})
    pipeline_write(pipeline_dir, datasets={"products": products}, staging=data.parent / "staging")


def extract(day: date) -> PipelineRun:
    try:
        call_command("extract", "--pipeline", "shop", "--date", day.isoformat(), stdout=StringIO())
    except CommandError:
        pass
    return PipelineRun.objects.latest("id")


@pytest.fixture
def data(tmp_path, pipeline_dir) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    shop(pipeline_dir, folder)
    return folder


def night_that_loaded(day: date) -> PipelineRun:
    """The records a run_pipeline that loaded `day` leaves, made by hand (no Spark here)."""
    run = PipelineRun.objects.create(
        pipeline="shop",
        business_date=day,
        command="run_pipeline",
        status=RunStatus.SUCCEEDED,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=80),
    )
    counts = {"rows_in": 5, "rows_out": 4, "rejected": 1, "duplicates": 0, "filtered": {}}
    for i, (step, details) in enumerate(
        [
            ("extract", {"products": {"rows": 5}}),
            ("transform", {"datasets": {"products": counts}}),
            ("load", {}),
        ]
    ):
        StepRun.objects.create(
            run=run,
            step=step,
            status=RunStatus.SUCCEEDED,
            started_at=T0 + timedelta(seconds=20 * i),
            finished_at=T0 + timedelta(seconds=20 * i + 15),
            rows_in=5,
            rows_out=4,
            rows_rejected=1,
            details=details,
        )
    return run


@pytest.mark.django_db
def test_a_failed_run_replaces_the_pipelines_previous_push_and_keeps_the_warehouses_freshness(pushing, data):
    earlier = night_that_loaded(DAY)
    metrics_publish(run=earlier)
    before = gateway_samples(pushing, "shop")
    assert value(before, "etl_run_success", pipeline="shop") == 1
    assert value(before, "etl_step_success", pipeline="shop", step="transform") == 1

    failed = extract(DAY + timedelta(days=1))  # the products export is missing that day
    assert failed.status == RunStatus.FAILED and "metrics_publish_error" not in failed.parameters
    after = gateway_samples(pushing, "shop")
    p = {"pipeline": "shop"}
    assert value(after, "etl_run_id", **p) == failed.pk
    assert value(after, "etl_run_success", **p) == 0
    assert value(after, "etl_run_last_status", status="failed", **p) == 1
    assert value(after, "etl_step_success", step="extract", **p) == 0
    # The earlier push is gone whole: no series of the steps the failed run never reached.
    assert {dict(k).get("step") for n, k in after if dict(k).get("step")} == {"extract"}
    # What the warehouse holds did not change: the earlier night is still the last success.
    assert value(after, "etl_pipeline_last_success_timestamp_seconds", **p) == earlier.finished_at.timestamp()
    assert value(after, "etl_pipeline_last_loaded_business_date_timestamp_seconds", **p) == midnight(DAY)
    groups = [
        s
        for family in text_string_to_metric_families(gateway_text(pushing))
        for s in family.samples
        if s.name == "push_time_seconds" and s.labels.get("pipeline") == "shop"
    ]
    assert len(groups) == 1


@pytest.mark.django_db
def test_a_push_to_a_dead_url_or_with_a_wrong_password_does_not_fail_the_run_and_shows_no_credential(
    pushgateway, settings, data, tmp_path, caplog
):
    (data / f"products_{DAY:%Y%m%d}.csv").write_text("sku,name\nP1,Mug\n")
    settings.ETL_METRICS_TEXTFILE_DIR = tmp_path / "textfile"
    settings.ETL_PUSHGATEWAY_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings.ETL_PUSHGATEWAY_AUTH = (USER, PASSWORD)
    with caplog.at_level(logging.WARNING, logger="etlcore.metrics"):
        run = extract(DAY)
    assert run.status == RunStatus.SUCCEEDED
    error = run.parameters["metrics_publish_error"]
    assert error.startswith(f"push to http://***@{settings.ETL_PUSHGATEWAY_URL.removeprefix('http://')}: ")
    assert "Connection refused" in error
    (warning,) = [r for r in caplog.records if r.name == "etlcore.metrics"]
    assert warning.levelno == logging.WARNING and "\n" not in warning.getMessage()
    assert error in warning.getMessage() and PASSWORD not in warning.getMessage()
    # The textfile does not depend on the push.
    assert "etl_run_success" in (tmp_path / "textfile" / "etl_shop.prom").read_text()

    caplog.clear()
    wrong = "canary-wrong-password-5c2a"
    settings.ETL_PUSHGATEWAY_URL, settings.ETL_PUSHGATEWAY_AUTH = pushgateway, (USER, wrong)
    with caplog.at_level(logging.WARNING, logger="etlcore.metrics"):
        run = extract(DAY)
    assert run.status == RunStatus.SUCCEEDED
    error = run.parameters["metrics_publish_error"]
    assert "401" in error and wrong not in error and wrong not in caplog.text
