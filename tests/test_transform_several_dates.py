"""Several dates in one Spark application: each date comes out exactly as when transformed alone.

The real extract of four demo dates, then ONE real spark-submit over all of them
(`services.transform.partitions_transform`). Each published date is compared row by row with the sales
job run on that date alone (`run_job` in the test's Spark session, on the same staged files). One date
fails its volume guard and one fails inside the job (a corrupt staged file): each publishes nothing and
the others are published regardless.
"""

from __future__ import annotations

from datetime import date
from io import StringIO

import pyarrow.parquet as pq
import pytest
from django.conf import settings
from django.core.management import call_command

from etlcore import staging
from etlcore.config import pipeline_load
from etlcore.demo.api_server import TOKEN_ENV, demo_api_token, start_demo_api
from etlcore.demo.generate import generate_demo_data
from etlcore.errors import PartitionNotFound, SparkJobError, VolumeGuardError
from etlcore.runs import StepOutcome, run_start
from etlcore.services.transform import _date_spec, partitions_transform
from spark_jobs.sales_daily import run_job

pytestmark = pytest.mark.django_db

DAYS = [date(2026, 11, d) for d in (1, 2, 3, 4)]
GUARD_FAILS, JOB_FAILS = DAYS[1], DAYS[2]
DEMO = (settings.BASE_DIR / "conf" / "pipelines" / "retail_demo.toml").read_text()


@pytest.fixture
def extracted(tmp_path, monkeypatch, pipeline_dir, staging_root):
    data_dir = tmp_path / "demo"
    generate_demo_data(out_dir=data_dir, business_dates=DAYS)
    (pipeline_dir / "retail_demo.toml").write_text(DEMO)
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "several-dates-key")
    monkeypatch.setenv("ETL_DEMO_DIR", str(data_dir))
    token, _ = demo_api_token()
    monkeypatch.setenv(TOKEN_ENV, token)
    products = data_dir / "exports" / f"products_{GUARD_FAILS:%Y%m%d}.csv"
    products.write_text(products.read_text().splitlines()[0] + "\n")  # header only: min_rows fails
    with start_demo_api(orders_path=data_dir / "orders.jsonl", token=token) as api:
        monkeypatch.setenv("ETL_DEMO_API_URL", api.url)
        for day in DAYS:
            call_command("extract", "--date", day.isoformat(), stdout=StringIO(), stderr=StringIO())
    config = pipeline_load("retail_demo")
    lines = staging.PartitionRef.raw(config.staging_root, config.name, "order_lines", JOB_FAILS)
    for part in staging.manifest_files(lines, staging.manifest_read(lines)):
        part.write_bytes(b"not parquet at all")
    return config


def _rows(files) -> list[tuple]:
    rows = [tuple(sorted(r.items())) for f in files for r in pq.read_table(f).to_pylist()]
    return sorted(rows, key=repr)


def test_one_application_transforms_each_date_as_alone_and_a_failing_date_stops_only_itself(
    extracted, spark, tmp_path
):
    config = extracted
    runs = {
        day: run_start(
            pipeline=config.name, command="transform", business_date=day, parameters={}, using="default"
        )
        for day in DAYS
    }
    outcomes = {day: StepOutcome(step="transform", run_id=run.pk) for day, run in runs.items()}

    errors = partitions_transform(config=config, outcomes=outcomes)

    assert isinstance(errors[GUARD_FAILS], VolumeGuardError)
    assert isinstance(errors[JOB_FAILS], SparkJobError) and f"failed on {JOB_FAILS}" in str(errors[JOB_FAILS])
    ok = [day for day in DAYS if day not in (GUARD_FAILS, JOB_FAILS)]
    assert [errors[day] for day in ok] == [None, None]
    # One application: one log, one spark-submit command with a --spec per date.
    command = outcomes[DAYS[0]].details["command"]
    assert command.count("--spec") == len(DAYS)
    assert {outcomes[day].details["log"] for day in DAYS} == {outcomes[DAYS[0]].details["log"]}

    for day in (GUARD_FAILS, JOB_FAILS):
        ref = staging.PartitionRef.transformed(config.staging_root, config.name, day)
        with pytest.raises(PartitionNotFound):
            staging.manifest_read(ref)
        assert not list(ref.dir.glob("attempt-*"))

    for day in ok:
        ref = staging.PartitionRef.transformed(config.staging_root, config.name, day)
        manifest = staging.manifest_read(ref)
        alone = tmp_path / "alone" / day.isoformat()
        alone.mkdir(parents=True)
        result = run_job(spark, _date_spec(config, day, alone))
        assert outcomes[day].details["datasets"] == result["datasets"]
        for name, output in manifest.outputs.items():
            published = _rows(ref.dir / f for f in output["files"])
            assert published == _rows(sorted((alone / name).glob("*.parquet"))), (day, name)
            assert len(published) == output["rows"] == result["outputs"][name]
