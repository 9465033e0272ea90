"""The light engine: the demo's sales job on Dask through the same transform step (etlcore/engines.py).

The demo pipeline end to end on `engine = "dask"` (its warehouse against the independent recomputation of
tests/test_end_to_end.py), a backfill on `auto` whose two dates fall on either side of `[dask] max_rows`
(the suite's one spark-submit here), a Dask job that fails, and a real `dask scheduler` and `dask worker`
on loopback running one date. The Dask job's process starts in a second or two: no JVM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import date
from decimal import Decimal
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db.models import Sum

from etlcore import staging
from etlcore.config import pipeline_load
from etlcore.demo.api_server import TOKEN_ENV, demo_api_token, start_demo_api
from etlcore.demo.generate import generate_demo_data
from etlcore.errors import PartitionNotFound, SparkJobError
from etlcore.models import PipelineRun
from etlcore.runs import StepOutcome, run_start
from etlcore.services.transform import partitions_transform
from etlcore.spark import jobs_root
from tests.test_end_to_end import expected_lines
from tests.test_personal_data_canaries import ChildSampler
from warehouse.models import FactDailySales, FactSalesLine, QuarantinedRow

pytestmark = pytest.mark.django_db(transaction=True)

DAY = date(2026, 11, 1)
NEXT_DAY = date(2026, 11, 2)
SECRET = "dask-engine-pseudonym-key-do-not-leak"
DEMO = (settings.BASE_DIR / "conf" / "pipelines" / "retail_demo.toml").read_text(encoding="utf-8")
DASK_JOB = "spark_jobs.sales_daily_dask"


@pytest.fixture
def demo(tmp_path, monkeypatch, pipeline_dir, staging_root):
    """The demo's sources for DAY and NEXT_DAY, its API on loopback; the pipeline file is each test's."""
    data_dir = tmp_path / "demo"
    generate_demo_data(out_dir=data_dir, business_dates=[DAY, NEXT_DAY])
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", SECRET)
    monkeypatch.setenv("ETL_DEMO_DIR", str(data_dir))
    token, _ = demo_api_token()
    monkeypatch.setenv(TOKEN_ENV, token)
    with start_demo_api(orders_path=data_dir / "orders.jsonl", token=token) as api:
        monkeypatch.setenv("ETL_DEMO_API_URL", api.url)
        yield SimpleNamespace(data=data_dir, staging=staging_root, pipelines=pipeline_dir)


def demo_pipeline(demo, *, engine: str, dask: str = "") -> None:
    """The shipped demo pipeline on `engine`, with `dask` as the body of a `[dask]` table."""
    tables = f"\n[dask]\n{dask}\n" if dask else ""
    (demo.pipelines / "retail_demo.toml").write_text(f'engine = "{engine}"\n{DEMO}{tables}', encoding="utf-8")


def command(name: str, *args: str) -> str:
    out = StringIO()
    call_command(name, *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def transform_step(day: date):
    return PipelineRun.objects.filter(business_date=day).latest("id").steps.get(step="transform")


def warehouse_lines(day: date) -> dict:
    return {
        (f.order_id, f.line_number): (f.currency, f.amount, f.amount_reporting)
        for f in FactSalesLine.objects.filter(date__date=day)
    }


def published_lines(day: date) -> dict:
    """The transformed partition's sales lines, read from the files its manifest names."""
    config = pipeline_load("retail_demo")
    ref = staging.PartitionRef.transformed(config.staging_root, config.name, day)
    files = staging.manifest_read(ref).outputs["sales_lines"]["files"]
    rows = [row for f in files for row in pq.read_table(ref.dir / f).to_pylist()]
    return {
        (r["order_id"], r["line_number"]): (r["currency"], r["amount"], r["amount_reporting"]) for r in rows
    }


def staged_rows(demo, day: date) -> int:
    config = pipeline_load("retail_demo")
    refs = [staging.PartitionRef.raw(config.staging_root, config.name, name, day) for name in config.datasets]
    return sum(staging.manifest_read(ref).row_count for ref in refs)


def test_the_demo_date_runs_end_to_end_on_dask_and_the_warehouse_equals_the_independent_computation(
    demo, monkeypatch
):
    demo_pipeline(demo, engine="dask")
    # What the job's process must not get: the database's URL and Django's key (etlcore.spark allow-list).
    monkeypatch.setenv("DATABASE_URL", "postgres://etl:db-CANARY@db/etl")
    monkeypatch.setenv("DJANGO_SECRET_KEY", "django-key-CANARY")
    with ChildSampler() as sampler:
        summary = command("run_pipeline", "--date", DAY.isoformat())

    run = PipelineRun.objects.latest("id")
    assert run.status == "succeeded", run.error
    steps = {s.step: s for s in run.steps.all()}
    transform = steps["transform"]
    assert (transform.details["engine"], transform.details["engine_reason"]) == (
        "dask",
        'configured: engine = "dask"',
    )
    assert " transform " in summary and "s on dask in=" in summary
    assert transform.details["command"][:4] == [sys.executable, "-P", "-m", DASK_JOB]
    assert transform.details["command"].count("--spec") == 1 and transform.details["exit_code"] == 0
    assert transform.details["log"].endswith(f"{DAY}-run{run.pk}-transform-dask-attempt1.log")
    assert not (demo.staging / "_build").exists()  # no spark-submit: no jobs archive

    expected, no_rate = expected_lines(demo.data, DAY)
    assert warehouse_lines(DAY) == expected
    assert {currency for currency, _, _ in expected.values()} == {"EUR", "GBP", "USD"} and no_rate
    total = sum((reporting for _, _, reporting in expected.values()), Decimal("0.00"))
    assert FactDailySales.objects.filter(date__date=DAY).aggregate(total=Sum("revenue"))["total"] == total
    lines = transform.details["datasets"]["order_lines"]
    assert lines["rows_in"] == steps["extract"].details["order_lines"]["rows"]
    quarantined = QuarantinedRow.objects.filter(business_date=DAY, dataset="order_lines")
    assert (
        lines["rows_in"]
        == len(expected) + quarantined.aggregate(n=Sum("occurrences"))["n"] + lines["duplicates"]
    )
    assert set(quarantined.values_list("reason_code", flat=True)) >= {
        "unknown_product",
        "unknown_store",
        "zero_quantity",
        "invalid_unit_price",
        "missing_rate",
    }
    manifest = staging.manifest_read(staging.PartitionRef.transformed(demo.staging, "retail_demo", DAY))
    assert manifest.source == f"dask job over raw partitions of {DAY}"

    # The job's process had the key it needs and the jobs package first on its path, and nothing else secret.
    (job,) = [(cmd, env) for cmd, env in sampler.seen.values() if cmd.startswith(f"{sys.executable} -P -m ")]
    assert f"-m {DASK_JOB} --spec " in job[0]
    environ = dict(line.split("=", 1) for line in job[1].splitlines() if "=" in line)
    assert environ["ETL_PSEUDONYM_KEY"] == SECRET
    assert environ["PYTHONPATH"].split(os.pathsep)[0] == str(jobs_root())
    assert not {"DJANGO_SECRET_KEY", "DATABASE_URL", TOKEN_ENV} & environ.keys()
    assert SECRET not in Path(transform.details["log"]).read_text(encoding="utf-8")
    assert SECRET not in json.dumps([s.details for s in steps.values()])


@pytest.mark.spark_submit
def test_a_backfill_on_auto_runs_each_date_on_the_engine_its_staged_rows_choose(demo):
    demo_pipeline(demo, engine="auto")
    for day in (DAY, NEXT_DAY):
        command("extract", "--date", day.isoformat())
    rows = {day: staged_rows(demo, day) for day in (DAY, NEXT_DAY)}
    small, large = sorted(rows, key=rows.get)
    assert rows[small] < rows[large]
    # The threshold between the two dates: the smaller one is at it (Dask), the larger above it (Spark).
    demo_pipeline(demo, engine="auto", dask=f"max_rows = {rows[small]}")

    command("run_pipeline", "--from", DAY.isoformat(), "--to", NEXT_DAY.isoformat())

    on_dask, on_spark = transform_step(small), transform_step(large)
    assert (on_dask.status, on_spark.status) == ("succeeded", "succeeded")
    assert (on_dask.details["engine"], on_dask.details["engine_reason"]) == (
        "dask",
        f"auto: {rows[small]} staged rows <= dask max_rows {rows[small]}",
    )
    assert (on_spark.details["engine"], on_spark.details["engine_reason"]) == (
        "spark",
        f"auto: {rows[large]} staged rows > dask max_rows {rows[small]}",
    )
    # One process per engine, each with its own log and command.
    assert on_dask.details["command"][:4] == [sys.executable, "-P", "-m", DASK_JOB]
    assert "--master" in on_spark.details["command"]
    assert "-transform-dask-" in on_dask.details["log"] and "-transform-dask-" not in on_spark.details["log"]
    assert "dask_seconds" in on_dask.details and "spark_seconds" in on_spark.details
    for day in (DAY, NEXT_DAY):
        assert warehouse_lines(day) == expected_lines(demo.data, day)[0]


def test_a_failing_dask_job_fails_the_step_with_its_own_line_exit_code_and_log_tail_and_publishes_nothing(
    demo,
):
    demo_pipeline(demo, engine="dask")
    command("extract", "--date", DAY.isoformat())
    # A staged file the job cannot read: the job itself fails (a missing key or module fails the preflight).
    staged = demo.staging / "retail_demo" / "raw" / "products" / f"date={DAY}"
    next(staged.glob("attempt-*/*.parquet")).write_bytes(b"not parquet at all")

    with pytest.raises(CommandError, match=rf"dask job {DASK_JOB} failed with exit code 1: ") as raised:
        command("transform", "--date", DAY.isoformat())

    run = PipelineRun.objects.latest("id")
    step = run.steps.get()
    assert (run.status, step.status) == ("failed", "failed")
    assert step.details["engine"] == "dask" and step.details["exit_code"] == 1
    written = Path(step.details["log"]).read_text(encoding="utf-8").splitlines()
    # The job's own one line (`sales_daily_dask: [date: ]failed: ...`) is the step's error.
    (own,) = [line for line in written if line.startswith("sales_daily_dask: ")]
    assert own.removeprefix("sales_daily_dask: ") in step.error and "\n" not in step.error
    assert str(raised.value) == step.error
    assert 0 < len(step.details["log_tail"]) <= 20 and step.details["log_tail"] == written[-20:]
    transformed = demo.staging / "retail_demo" / "transformed" / f"date={DAY}"
    assert not (transformed / "_manifest.json").exists()
    assert not list(transformed.glob("attempt-*"))


def test_one_dask_process_transforms_a_batch_and_a_date_failing_in_it_stops_only_itself(demo):
    demo_pipeline(demo, engine="dask")
    for day in (DAY, NEXT_DAY):
        command("extract", "--date", day.isoformat())
    config = pipeline_load("retail_demo")
    lines = staging.PartitionRef.raw(config.staging_root, config.name, "order_lines", DAY)
    for part in staging.manifest_files(lines, staging.manifest_read(lines)):
        part.write_bytes(b"not parquet at all")
    outcomes = {
        day: StepOutcome(
            step="transform",
            run_id=run_start(
                pipeline=config.name, command="transform", business_date=day, parameters={}, using="default"
            ).pk,
        )
        for day in (DAY, NEXT_DAY)
    }

    errors = partitions_transform(config=config, outcomes=outcomes)

    assert isinstance(errors[DAY], SparkJobError) and f"dask job {DASK_JOB} failed on {DAY}: " in str(
        errors[DAY]
    )
    assert errors[NEXT_DAY] is None
    # One process for both dates: one command, one log, whose end both records keep.
    failed, done = outcomes[DAY].details, outcomes[NEXT_DAY].details
    assert failed["command"] == done["command"] and failed["command"].count("--spec") == 2
    assert failed["exit_code"] == done["exit_code"] == 1 and failed["log"] == done["log"]
    written = Path(failed["log"]).read_text(encoding="utf-8").splitlines()
    assert failed["log_tail"] == done["log_tail"] == written[-20:]
    with pytest.raises(PartitionNotFound):
        staging.manifest_read(staging.PartitionRef.transformed(config.staging_root, config.name, DAY))
    assert published_lines(NEXT_DAY) == expected_lines(demo.data, NEXT_DAY)[0]


@contextmanager
def dask_cli(tmp_path: Path, name: str, *args: str):
    """`dask <args>` as a subprocess in a session of its own, output in `<name>.log`; the worker and the job
    import the project's jobs package. Stopped, with whatever it started, when the block ends."""
    env = {**os.environ, "PYTHONPATH": str(jobs_root())}
    with (tmp_path / f"{name}.log").open("wb") as log:
        process = subprocess.Popen(
            [Path(sys.executable).parent / "dask", *args],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def dask_scheduler(tmp_path):
    """A real `dask scheduler` on loopback, on a free port, no dashboard: its address."""
    scheduler_file = tmp_path / "scheduler.json"
    args = ("--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file))
    with dask_cli(tmp_path, "scheduler", "scheduler", *args) as process:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.1)
        yield json.loads(scheduler_file.read_text())["address"]
    assert process.returncode is not None


@pytest.fixture
def dask_cluster(tmp_path, dask_scheduler):
    """The scheduler and one real `dask worker` (one process, 2 threads); a client to ask them."""
    from distributed import Client

    args = ("--nworkers", "1", "--nthreads", "2", "--host", "127.0.0.1", "--no-dashboard")
    with dask_cli(
        tmp_path, "worker", "worker", dask_scheduler, *args, "--local-directory", "worker"
    ) as worker:
        with Client(dask_scheduler, timeout="60s") as client:
            client.wait_for_workers(1, timeout=60)
            yield SimpleNamespace(address=dask_scheduler, client=client)
    assert worker.returncode is not None


def executed(client) -> dict[str, int]:
    """Tasks each worker of the cluster has run."""
    return client.run(lambda dask_worker: dask_worker.state.executed_count)


def test_a_real_dask_scheduler_and_worker_on_loopback_run_one_date(demo, dask_cluster):
    demo_pipeline(demo, engine="dask", dask=f'scheduler_address = "{dask_cluster.address}"')
    command("extract", "--date", DAY.isoformat())
    assert list(executed(dask_cluster.client).values()) == [0]

    command("transform", "--date", DAY.isoformat())

    step = transform_step(DAY)
    assert step.status == "succeeded", step.error
    assert step.details["command"][-2:] == ["--scheduler", dask_cluster.address]
    # The job's tasks ran on the cluster's one worker, not in the job's process.
    (count,) = executed(dask_cluster.client).values()
    assert count > 0
    assert published_lines(DAY) == expected_lines(demo.data, DAY)[0]


def test_a_dask_job_past_its_timeout_is_stopped_and_fails_the_step(demo, dask_scheduler):
    # A scheduler without a worker: the job's tasks wait for one for ever, so only the timeout ends it.
    demo_pipeline(demo, engine="dask", dask=f'scheduler_address = "{dask_scheduler}"\ntimeout_seconds = 5')
    command("extract", "--date", DAY.isoformat())
    with ChildSampler() as sampler:
        with pytest.raises(CommandError, match=rf"^dask job {DASK_JOB} timed out after 5\.0 s; log: "):
            command("transform", "--date", DAY.isoformat())

    step = transform_step(DAY)
    assert step.status == "failed" and step.details["engine"] == "dask" and step.details["log_tail"]
    jobs = [pid for pid, (cmd, _) in sampler.seen.items() if cmd.startswith(f"{sys.executable} -P -m ")]
    assert jobs and not [pid for pid in jobs if Path(f"/proc/{pid}").exists()], "the job outlived its timeout"
    transformed = demo.staging / "retail_demo" / "transformed" / f"date={DAY}"
    assert not (transformed / "_manifest.json").exists() and not list(transformed.glob("attempt-*"))
