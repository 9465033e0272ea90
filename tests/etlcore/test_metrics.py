"""The metrics of a finished run, built from its records alone (etlcore/metrics.py); publishing them to a
Pushgateway and a textfile is in tests/test_metrics_pushgateway.py."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from etlcore.metrics import metric_families, metrics_registry
from etlcore.models import PipelineRun, RunStatus, StepRun
from etlcore.selectors import Freshness, pipeline_freshness
from tests.pipelines import dataset, pipeline_write

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 2, 2, 15, tzinfo=UTC)
DAY = date(2026, 11, 1)
NO_FRESHNESS = Freshness(last_loaded=None, last_success=None)


def hand_run(status: str = RunStatus.SUCCEEDED, *, pk: int = 42, pipeline: str = "shop") -> PipelineRun:
    return PipelineRun(
        id=pk,
        pipeline=pipeline,
        business_date=DAY,
        command="run_pipeline",
        status=status,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=95.5),
    )


def hand_step(
    step: str, *, start: float, seconds: float, status: str = RunStatus.SUCCEEDED, **fields
) -> StepRun:
    return StepRun(
        step=step,
        status=status,
        started_at=T0 + timedelta(seconds=start),
        finished_at=T0 + timedelta(seconds=start + seconds),
        **fields,
    )


# The extract record as issue 15's HTTP accounting writes it: per-source counters under "sources"; a file
# source has none. The step was tried twice: the first try's requests count too.
EXTRACT_DETAILS = {
    "order_lines": {"rows": 212, "partition": "/s/raw/order_lines/date=2026-11-01", "seconds": 3.2},
    "products": {"rows": 60, "partition": "/s/raw/products/date=2026-11-01", "seconds": 0.1},
    "sources": {
        "order_lines": {
            "http": {
                "requests": 9,
                "retries": {"status_429": 2, "status_5xx": 3},
                "throttle_waits": 2,
                "throttle_wait_seconds": 1.5,
            }
        },
        "products": {},
    },
    "attempts": [
        {
            "attempt": 1,
            "error": "RestSourceError: connection reset",
            "details": {
                "sources": {
                    "order_lines": {
                        "http": {
                            "requests": 4,
                            "retries": {"connect": 1, "status_5xx": 1},
                            "throttle_waits": 0,
                            "throttle_wait_seconds": 0.0,
                        }
                    }
                }
            },
        }
    ],
}
TRANSFORM_DETAILS = {
    "datasets": {
        "order_lines": {
            "rows_in": 212,
            "rows_out": 200,
            "rejected": 7,
            "duplicates": 2,
            "filtered": {"non_product": 2, "test_order": 1},
        },
        "products": {"rows_in": 60, "rows_out": 60, "rejected": 0, "duplicates": 0, "filtered": {}},
    },
    "log": "/s/logs/2026-11-01-run42-transform.log",
}


def full_run_steps() -> list[StepRun]:
    return [
        hand_step(
            "extract",
            start=0,
            seconds=10.25,
            rows_in=272,
            rows_out=272,
            rows_rejected=0,
            attempts=2,
            details=EXTRACT_DETAILS,
        ),
        hand_step(
            "transform",
            start=11,
            seconds=60,
            rows_in=272,
            rows_out=260,
            rows_rejected=7,
            details=TRANSFORM_DETAILS,
        ),
        hand_step("load", start=72, seconds=20, rows_in=267, rows_out=200, rows_rejected=7, details={}),
    ]


def samples(registry) -> dict[tuple[str, frozenset], float]:
    """Every sample as exposed (text format, parsed back): {(name, labels): value}."""
    return samples_of(generate_latest(registry).decode("utf-8"))


def value(found, name: str, **labels) -> float:
    return found[(name, frozenset(labels.items()))]


def test_http_counters_per_source_are_summed_over_the_steps_tries_and_absent_without_counters():
    registry = metrics_registry(run=hand_run(), steps=full_run_steps(), freshness=NO_FRESHNESS)
    found = samples(registry)
    src = {"pipeline": "shop", "dataset": "order_lines"}
    assert value(found, "etl_source_http_requests_total", **src) == 13
    retries = {
        dict(labels)["cause"]: v
        for (name, labels), v in found.items()
        if name == "etl_source_http_retries_total"
    }
    assert retries == {"status_429": 2, "status_5xx": 4, "connect": 1}
    assert value(found, "etl_source_http_throttle_waits_total", **src) == 2
    assert value(found, "etl_source_http_throttle_wait_seconds_total", **src) == 1.5
    # The file source counted nothing: no sample at all, not a zero.
    http = [labels for (name, labels) in found if name.startswith("etl_source_http")]
    assert all(dict(labels)["dataset"] == "order_lines" for labels in http)
    assert value(found, "etl_step_attempts", pipeline="shop", step="extract") == 2


def test_a_record_without_http_counters_gives_no_http_samples():
    steps = [
        hand_step(
            "extract",
            start=0,
            seconds=1,
            rows_in=3,
            rows_out=3,
            rows_rejected=0,
            details={"products": {"rows": 3}},
        )
    ]
    found = samples(metrics_registry(run=hand_run(), steps=steps, freshness=NO_FRESHNESS))
    assert not [name for name, _ in found if name.startswith("etl_source_http")]
    assert (
        value(found, "etl_dataset_rows", pipeline="shop", step="extract", dataset="products", kind="out") == 3
    )


def test_rows_per_step_and_dataset_account_for_every_staged_row():
    found = samples(metrics_registry(run=hand_run(), steps=full_run_steps(), freshness=NO_FRESHNESS))
    rows = {
        dict(labels)["kind"]: v
        for (name, labels), v in found.items()
        if name == "etl_dataset_rows"
        and dict(labels)["step"] == "transform"
        and dict(labels)["dataset"] == "order_lines"
    }
    assert rows == {"in": 212, "out": 200, "quarantined": 7, "duplicates": 2, "filtered": 3}
    assert rows["in"] == rows["out"] + rows["quarantined"] + rows["duplicates"] + rows["filtered"]
    assert value(found, "etl_step_rows", pipeline="shop", step="load", kind="quarantined") == 7
    assert value(found, "etl_step_rows", pipeline="shop", step="transform", kind="in") == 272
    assert value(found, "etl_step_duration_seconds", pipeline="shop", step="extract") == 10.25


def test_a_failed_run_is_status_failed_with_its_failed_step_and_no_series_for_steps_it_never_reached():
    steps = [
        hand_step(
            "extract",
            start=0,
            seconds=2,
            status=RunStatus.FAILED,
            rows_in=0,
            rows_out=0,
            rows_rejected=0,
            details={"products": {"error": "FileNotFoundError: gone"}},
        )
    ]
    freshness = Freshness(last_loaded=date(2026, 10, 31), last_success=T0 - timedelta(days=1))
    found = samples(metrics_registry(run=hand_run(RunStatus.FAILED), steps=steps, freshness=freshness))
    assert value(found, "etl_run_success", pipeline="shop") == 0
    statuses = {
        dict(labels)["status"]: v for (name, labels), v in found.items() if name == "etl_run_last_status"
    }
    assert statuses == {"succeeded": 0, "failed": 1, "abandoned": 0}
    assert value(found, "etl_step_success", pipeline="shop", step="extract") == 0
    assert not [labels for (name, labels) in found if dict(labels).get("step") in ("transform", "load")]
    # The pipeline's freshness is what the warehouse holds, whatever this run did.
    last_loaded = value(found, "etl_pipeline_last_loaded_business_date_timestamp_seconds", pipeline="shop")
    assert last_loaded == datetime(2026, 10, 31, tzinfo=UTC).timestamp()
    assert (
        value(found, "etl_pipeline_last_success_timestamp_seconds", pipeline="shop")
        == (T0 - timedelta(days=1)).timestamp()
    )
    assert value(found, "etl_run_duration_seconds", pipeline="shop") == 95.5
    assert (
        value(found, "etl_run_business_date_timestamp_seconds", pipeline="shop")
        == datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    )


def test_labels_are_bounded_no_business_date_label_and_names_carry_the_etl_prefix():
    families = metric_families(run=hand_run(), steps=full_run_steps(), freshness=NO_FRESHNESS)
    labels = {label for family in families for s in family.samples for label in s.labels}
    assert labels <= {"pipeline", "step", "dataset", "kind", "cause", "status"}
    assert all(family.name.startswith("etl_") for family in families)
    timestamps = [f.name for f in families if "timestamp" in f.name]
    assert timestamps and all(name.endswith("_timestamp_seconds") for name in timestamps)


@pytest.mark.django_db(databases="__all__")
def test_freshness_is_the_last_successful_run_that_loaded_and_the_latest_date_loaded(db_alias):
    def run(day: date, status: str, finished: datetime, steps: dict[str, str]) -> PipelineRun:
        made = PipelineRun.objects.using(db_alias).create(
            pipeline="shop",
            business_date=day,
            command="run_pipeline",
            status=status,
            started_at=finished,
            finished_at=finished,
        )
        for step, step_status in steps.items():
            StepRun.objects.using(db_alias).create(
                run=made, step=step, status=step_status, started_at=finished
            )
        return made

    assert pipeline_freshness(pipeline="shop", using=db_alias) == NO_FRESHNESS
    run(
        date(2026, 10, 30), "succeeded", T0 - timedelta(days=3), {"extract": "succeeded", "load": "succeeded"}
    )
    run(
        date(2026, 10, 31), "succeeded", T0 - timedelta(days=2), {"extract": "succeeded", "load": "succeeded"}
    )
    # Later: a date loaded again by hand; an extract alone that succeeded; a run that failed at its load;
    # another pipeline.
    run(date(2026, 10, 29), "succeeded", T0 - timedelta(days=1), {"load": "succeeded"})
    run(date(2026, 11, 1), "succeeded", T0, {"extract": "succeeded"})
    run(date(2026, 11, 1), "failed", T0, {"extract": "succeeded", "load": "failed"})
    # A run stopped by a signal after its load committed: the date is loaded, the run did not succeed.
    run(date(2026, 10, 31), "failed", T0, {"load": "succeeded"})
    PipelineRun.objects.using(db_alias).create(
        pipeline="other", business_date=date(2026, 11, 5), command="load", status="succeeded", started_at=T0
    )
    assert pipeline_freshness(pipeline="shop", using=db_alias) == Freshness(
        last_loaded=date(2026, 10, 31), last_success=T0 - timedelta(days=1)
    )


def settings_read(tmp_path: Path, url: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_PUSHGATEWAY")}
    env |= {
        "DJANGO_SETTINGS_MODULE": "conf.settings.local",
        "ETL_VAR_DIR": str(tmp_path),
        "ETL_PUSHGATEWAY_URL": url,
    }
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.ETL_PUSHGATEWAY_URL); print(s.ETL_PUSHGATEWAY_AUTH)"
    )
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)


def test_pushgateway_url_credentials_are_split_off_the_url_setting(tmp_path):
    done = settings_read(tmp_path, "https://etl:canary%40pw-9f3@push.example:9091/base")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["https://push.example:9091/base", "('etl', 'canary@pw-9f3')"]
    # Without a scheme the credentials could not be told from the host: refused, without showing them.
    done = settings_read(tmp_path, "etl:canary-pw-9f3@push.example:9091")
    assert done.returncode != 0 and "must start with http:// or https://" in done.stderr
    assert "canary-pw-9f3" not in done.stderr


# --- the textfile: a real run (extract alone, no Spark) publishes it ------------------------------------

CANARY = "canary-pseudonym-key-4f1d9a"


def shop(pipeline_dir: Path, data: Path) -> None:
    """A one-source pipeline: `extract` succeeds when the day's products file is there, fails without it."""
    products = dataset(f"{data}/products_{{date:%Y%m%d}}.csv", sku={"required": True}, name={})
    pipeline_write(pipeline_dir, datasets={"products": products}, staging=data.parent / "staging")


def extract(day: date) -> PipelineRun:
    try:
        call_command("extract", "--pipeline", "shop", "--date", day.isoformat(), stdout=StringIO())
    except CommandError:
        pass
    return PipelineRun.objects.latest("id")


@pytest.fixture
def textfile_dir(tmp_path, settings, monkeypatch):
    settings.ETL_METRICS_TEXTFILE_DIR = tmp_path / "textfile"
    settings.ETL_PUSHGATEWAY_URL = ""
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", CANARY)
    return settings.ETL_METRICS_TEXTFILE_DIR


@pytest.mark.django_db
def test_a_failed_run_replaces_the_textfile_atomically_private_parseable_and_without_secrets(
    pipeline_dir, tmp_path, textfile_dir
):
    data = tmp_path / "data"
    data.mkdir()
    shop(pipeline_dir, data)
    (data / f"products_{DAY:%Y%m%d}.csv").write_text("sku,name\nP1,Mug\nP2,Cup\n")
    succeeded = extract(DAY)
    path = textfile_dir / "etl_shop.prom"
    assert succeeded.status == RunStatus.SUCCEEDED
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(textfile_dir.stat().st_mode) == 0o700

    with path.open("rb") as before:  # a reader (node-exporter) in the middle of the file
        failed = extract(DAY + timedelta(days=1))  # no products file that day
        assert failed.status == RunStatus.FAILED
        # Replaced by a rename: the reader's file is the whole earlier one, the path a new file.
        old = before.read().decode("utf-8")
        assert os.fstat(before.fileno()).st_ino != path.stat().st_ino
    new = path.read_text(encoding="utf-8")
    assert [p.name for p in textfile_dir.iterdir()] == ["etl_shop.prom"]  # no temporary file left
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert CANARY not in new and CANARY not in old

    was, now = samples_of(old), samples_of(new)
    assert value(was, "etl_run_id", pipeline="shop") == succeeded.pk
    assert (
        value(was, "etl_dataset_rows", pipeline="shop", step="extract", dataset="products", kind="out") == 2
    )
    assert value(now, "etl_run_id", pipeline="shop") == failed.pk
    assert value(now, "etl_run_success", pipeline="shop") == 0
    assert value(now, "etl_run_last_status", pipeline="shop", status="failed") == 1
    assert value(now, "etl_step_success", pipeline="shop", step="extract") == 0
    # An extract loads nothing: no date is loaded, no run that loaded succeeded.
    assert not [n for n, _ in now if n.startswith("etl_pipeline_")]


@pytest.mark.django_db
def test_textfile_mode_0640_lets_node_exporter_read_it_through_the_folders_group(
    pipeline_dir, tmp_path, textfile_dir, settings
):
    settings.ETL_METRICS_TEXTFILE_MODE = 0o640
    textfile_dir.mkdir(mode=0o750)
    shop(pipeline_dir, tmp_path)
    extract(DAY)
    assert stat.S_IMODE((textfile_dir / "etl_shop.prom").stat().st_mode) == 0o640


@pytest.mark.django_db
def test_a_run_of_no_pipeline_publishes_nothing(pipeline_dir, textfile_dir):
    with pytest.raises(CommandError, match="unknown pipeline"):
        call_command("extract", "--pipeline", "shpo", "--date", DAY.isoformat(), stdout=StringIO())
    assert PipelineRun.objects.get().status == RunStatus.FAILED
    assert not textfile_dir.exists()


def samples_of(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
