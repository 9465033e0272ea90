"""The Dask engine is the Spark job: every job fixture of the suite through both, compared row by row.

Each fixture is a job spec and its staged Parquet inputs: the demo's three dates and three dates of the
real Online Retail II export, staged by the real extract step; the job-level rule fixtures of
tests/spark_jobs and a few small ones at the edges (Java pattern syntax, `when` conditions, wall-clock times
across daylight saving, far dates: tests/spark_jobs/job_fixtures.py); and a generated date of 100k lines
with 5 % dirty rows (tests/spark_jobs/dirty_sales.py). Spark runs it in the suite's shared session
(`run_job`), Dask in this process (threads; a day split in buckets: a pool of processes), each into its
own output_dir; every output must then hold the same rows in the contract's schema, and `_result.json`
the same accounting (engine_equivalence.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from io import StringIO
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.management import call_command

from etlcore.config import pipeline_load
from etlcore.demo.api_server import TOKEN_ENV, demo_api_token, start_demo_api
from etlcore.demo.generate import DEMO_BUSINESS_DATES, generate_demo_data
from etlcore.services.transform import _date_spec
from spark_jobs import quality_pandas, sales_daily, sales_daily_dask
from tests.conftest import skip_or_fail_in_ci
from tests.spark_jobs import job_fixtures
from tests.spark_jobs.dirty_sales import dirty_sales_spec
from tests.spark_jobs.engine_equivalence import assert_same_job_outputs, job_outputs_differences
from tests.test_online_retail import CSV as ONLINE_RETAIL_CSV
from tests.test_online_retail import DATES as ONLINE_RETAIL_DATES

# Several minutes: scheduled first (tests/conftest.py), beside the spark-submit files.
pytestmark = [pytest.mark.django_db, pytest.mark.long]

PSEUDONYM_KEY = "engine-equivalence-key"
ANN = b"ann@example.com"  # every customer of the every_output fixture


@dataclass(frozen=True)
class JobFixture:
    """A job spec with its staged inputs, built under a folder by `build(request, folder)`."""

    name: str
    build: Callable[[pytest.FixtureRequest, Path], dict]
    key: bytes = PSEUDONYM_KEY.encode()


@pytest.fixture(scope="module")
def demo_sources(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("demo")
    generate_demo_data(out_dir=folder, business_dates=DEMO_BUSINESS_DATES)
    return folder


def _extracted_spec(request: pytest.FixtureRequest, pipeline: str, day: date, folder: Path) -> dict:
    """The spec the transform step writes for `day`, once the real extract step has staged it."""
    request.getfixturevalue("staging_root")
    call_command("extract", "--pipeline", pipeline, "--date", day.isoformat(), stdout=StringIO())
    return _date_spec(pipeline_load(pipeline), day, folder / "out")


def _demo_date(day: date) -> Callable[[pytest.FixtureRequest, Path], dict]:
    def build(request: pytest.FixtureRequest, folder: Path) -> dict:
        sources = request.getfixturevalue("demo_sources")
        monkeypatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setenv("ETL_PSEUDONYM_KEY", PSEUDONYM_KEY)
        monkeypatch.setenv("ETL_DEMO_DIR", str(sources))
        token, _ = demo_api_token()
        monkeypatch.setenv(TOKEN_ENV, token)
        with start_demo_api(orders_path=sources / "orders.jsonl", token=token) as api:
            monkeypatch.setenv("ETL_DEMO_API_URL", api.url)
            return _extracted_spec(request, "retail_demo", day, folder)

    return build


def _online_retail_date(day: str) -> Callable[[pytest.FixtureRequest, Path], dict]:
    def build(request: pytest.FixtureRequest, folder: Path) -> dict:
        if not ONLINE_RETAIL_CSV.is_file():
            skip_or_fail_in_ci(f"Online Retail II subset not found at {ONLINE_RETAIL_CSV}", "dataset")
        monkeypatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setenv("ETL_PSEUDONYM_KEY", PSEUDONYM_KEY)
        monkeypatch.setenv("ETL_ONLINE_RETAIL_CSV", str(ONLINE_RETAIL_CSV))
        return _extracted_spec(request, "online_retail", date.fromisoformat(day), folder)

    return build


def _built(builder: Callable[[Path], dict]) -> Callable[[pytest.FixtureRequest, Path], dict]:
    return lambda request, folder: builder(folder)


FIXTURES = [
    *(JobFixture(f"demo-{day}", _demo_date(day)) for day in DEMO_BUSINESS_DATES),
    *(JobFixture(f"online_retail-{day}", _online_retail_date(day)) for day in ONLINE_RETAIL_DATES),
    JobFixture("every_output", _built(job_fixtures.every_output_spec), job_fixtures.KEY),
    JobFixture("declared_rules", _built(job_fixtures.declared_rules_spec), job_fixtures.KEY),
    JobFixture("warehouse_limits", _built(job_fixtures.warehouse_limits_spec), job_fixtures.KEY),
    JobFixture("rule_syntax", _built(job_fixtures.rule_syntax_spec), job_fixtures.KEY),
    JobFixture("unicode_class_pattern", _built(job_fixtures.unicode_class_pattern_spec), job_fixtures.KEY),
    JobFixture("wall_clock_times", _built(job_fixtures.wall_clock_times_spec), job_fixtures.KEY),
    JobFixture("far_dates", _built(job_fixtures.far_dates_spec), job_fixtures.KEY),
    JobFixture("generated_100k_dirty", _built(dirty_sales_spec)),
]


def engines_run(spark, spec: dict, key: bytes, folder: Path, **dask_options) -> tuple[Path, Path]:
    """The same spec through both engines, each into its own output_dir under `folder`."""
    spark_dir, dask_dir = folder / "spark", folder / "dask"
    sales_daily.run_job(spark, {**spec, "output_dir": str(spark_dir)}, pseudonym_key=key)
    returned = sales_daily_dask.run_job(
        {**spec, "output_dir": str(dask_dir)}, pseudonym_key=key, **dask_options
    )
    assert returned == json.loads((dask_dir / "_result.json").read_text())  # what it returns it wrote
    return spark_dir, dask_dir


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.name for f in FIXTURES])
def test_the_dask_engine_writes_what_the_spark_job_writes_row_for_row(fixture, spark, request, tmp_path):
    spec = fixture.build(request, tmp_path / "staged")

    spark_dir, dask_dir = engines_run(spark, spec, fixture.key, tmp_path)

    assert_same_job_outputs(spark_dir, dask_dir)


# Days split in many buckets, as a big day is, run on the pool of processes a big day gets: every line of an
# order, every copy and version of a line, must meet in one bucket, and what spans the day (unique conflicts,
# dimensions derived from the lines, returns linked to another bucket's purchase, customers) must reduce
# to Spark's answer whatever the split.
SPLIT = (f"online_retail-{ONLINE_RETAIL_DATES[0]}", "declared_rules", "generated_100k_dirty")


@pytest.mark.parametrize("fixture", [f for f in FIXTURES if f.name in SPLIT], ids=list(SPLIT))
def test_a_day_split_in_many_buckets_on_processes_writes_what_the_spark_job_writes(
    fixture, spark, request, tmp_path
):
    spec = fixture.build(request, tmp_path / "staged")
    staged = sum(pq.read_metadata(f).num_rows for f in spec["inputs"]["order_lines"]["files"])
    bucket_rows = max(1, staged // 6)  # 6 or 7 buckets

    spark_dir, dask_dir = engines_run(spark, spec, fixture.key, tmp_path, bucket_rows=bucket_rows)

    assert_same_job_outputs(spark_dir, dask_dir)
    quarantine_parts = len(list((dask_dir / "quarantine").glob("part-*.parquet")))
    assert quarantine_parts >= -(-staged // bucket_rows)  # one a bucket (and one a master dataset)


def test_buckets_run_on_worker_processes_in_the_jobs_process_group_and_one_bucket_on_threads():
    """The child guard and the timeout stop the Dask job by killing its process group: the pool's workers
    must be in it, and must be other processes than the job's (else the pool is not running the tasks)."""
    import dask
    from dask import delayed

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: the job runs every day on threads")

    def where(tasks: int) -> tuple[set[int], set[int]]:  # (pids, process groups) the tasks ran in
        pids = dask.compute(*[delayed(os.getpid, pure=False)() for _ in range(tasks)])
        groups = dask.compute(*[delayed(os.getpgid, pure=False)(0) for _ in range(tasks)])
        return set(pids), set(groups)

    with sales_daily_dask._local_workers(4):
        pids, groups = where(8)
    assert os.getpid() not in pids and len(pids) >= 1
    assert groups == {os.getpgid(0)}
    with sales_daily_dask._local_workers(1):
        assert where(4) == ({os.getpid()}, {os.getpgid(0)})


def test_a_difference_injected_into_the_dask_engine_fails_the_comparison_naming_the_output_and_row(
    spark, tmp_path, monkeypatch
):
    def upper_cased_hmac(key: bytes) -> Callable[[str], str]:  # a normalisation bug in the pseudonym
        digest = quality_pandas.hmac_hex(key)
        return lambda text: digest(text.upper())

    monkeypatch.setattr(sales_daily_dask, "hmac_hex", upper_cased_hmac)
    spec = job_fixtures.every_output_spec(tmp_path / "staged")

    spark_dir, dask_dir = engines_run(spark, spec, job_fixtures.KEY, tmp_path)

    problems = job_outputs_differences(spark_dir, dask_dir)
    right, wrong = (hmac.new(job_fixtures.KEY, e, hashlib.sha256).hexdigest() for e in (ANN, ANN.upper()))
    sales_lines = next(p for p in problems if p.startswith("sales_lines:"))
    assert sales_lines.startswith("sales_lines: 2 of 2 spark rows and 2 of 2 dask rows are not in the other")
    assert f"  row order_id='O1', line_number=1:\n    customer_key: '{right}' | '{wrong}'" in sales_lines
    assert any(p.startswith("customers:") and f"customer_key='{wrong}'" in p for p in problems)
    with pytest.raises(AssertionError, match=r"(?s)sales_lines: .*row order_id='O1', line_number=2:"):
        assert_same_job_outputs(spark_dir, dask_dir)

    # The schema each output is written in and the accounting of _result.json are compared too.
    edited = tmp_path / "edited"
    shutil.copytree(spark_dir, edited)
    for part in (edited / "products").glob("part-*.parquet"):
        table = pq.read_table(part)
        at = table.schema.get_field_index("list_price")
        pq.write_table(
            table.set_column(at, "list_price", table["list_price"].cast(pa.decimal128(18, 3))), part
        )
    result = json.loads((edited / "_result.json").read_text())
    result["datasets"]["order_lines"]["rule_failures"]["unknown_product"] += 1
    (edited / "_result.json").write_text(json.dumps(result))

    problems = job_outputs_differences(spark_dir, edited, labels=("spark", "edited"))
    assert any(
        p.startswith("edited products: part-") and "list_price decimal128(18, 3)" in p for p in problems
    )
    assert "  datasets.order_lines.rule_failures.unknown_product: 1 | 2" in problems[-1]
