"""The demo pipeline's date as a Celery task on real workers and RabbitMQ, against the command line.

The golden warehouse is `run_pipeline --date`, called in the test process onto the workers' database with
its job in the suite's Spark session (tests/spark_in_session.py). Then, from an empty warehouse and
staging, the same date is enqueued and its worker is killed with SIGKILL ten times in the middle of the
transform (the Spark job running) and ten times in the middle of the load (its transaction open after the
COPY), sometimes only the pool process that runs the task, sometimes the whole worker (started again).
Each time the task is delivered again, resumes its run from the step that did not finish, and in the end
the warehouse is the golden one, row for row; meanwhile no two deliveries ran at once.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from datetime import date
from functools import partial
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command

from etlcore.demo.api_server import TOKEN_ENV, demo_api_token, start_demo_api
from etlcore.demo.generate import generate_demo_data
from etlcore.models import PipelineRun, RunOrigin, RunStatus, StagedPartition, StepRun
from etlcore.tasks import run_enqueue
from tests.celery_site import queue_site  # noqa: F401
from tests.celery_site import until as _until
from tests.spark_in_session import jobs_in_session
from tests.test_end_to_end import expected_lines
from warehouse.checks import warehouse_checksums
from warehouse.loading.specs import FAULT_MARKER_ENV, FAULT_POINT_ENV
from warehouse.models import (
    DimCustomer,
    DimProduct,
    DimStore,
    FactDailySales,
    FactSalesLine,
    LoadedPartition,
    PseudonymKey,
    QuarantinedRow,
)

pytestmark = [pytest.mark.spark_submit, pytest.mark.django_db(databases="__all__", transaction=True)]

DAY = date(2026, 11, 1)
TRIALS = 10
DB = "postgres"  # the test's PostgreSQL database: the workers' and the command's `default`
# Tables whose rows say when or by which run something happened: equal content, different stamps.
STAMPED = {LoadedPartition._meta.db_table, PseudonymKey._meta.db_table}
WAIT = 180.0
until = partial(_until, timeout=WAIT)


@pytest.fixture
def demo(queue_site, tmp_path, pipeline_dir, monkeypatch):  # noqa: F811
    """The demo's sources for DAY, its orders API on loopback, and the environment the command, the
    workers and this process (which enqueues) share."""
    data_dir = tmp_path / "demo"
    generate_demo_data(out_dir=data_dir, business_dates=[DAY])
    shutil.copy(settings.BASE_DIR / "conf" / "pipelines" / "retail_demo.toml", pipeline_dir)
    token, _ = demo_api_token()
    with start_demo_api(orders_path=data_dir / "orders.jsonl", token=token) as api:
        shared = {
            "ETL_DEMO_DIR": str(data_dir),
            "ETL_DEMO_API_URL": api.url,
            TOKEN_ENV: token,
            "ETL_PSEUDONYM_KEY": "celery-e2e-pseudonym-key",
        }
        for name, value in shared.items():
            monkeypatch.setenv(name, value)
        queue_site.env |= shared
        yield data_dir


def command_run(day: date, folder: Path, monkeypatch, spark) -> None:
    """`run_pipeline --date` in this process, onto the workers' database (`DB`, their `default`): the demo
    pipeline file with that alias, read from `folder`; the job in this process's Spark session."""
    demo = (settings.BASE_DIR / "conf" / "pipelines" / "retail_demo.toml").read_text()
    onto_db = demo.replace('database = "default"', f'database = "{DB}"', 1)
    assert onto_db != demo
    folder.mkdir()
    (folder / "retail_demo.toml").write_text(onto_db)
    with monkeypatch.context() as command:
        command.setattr(settings, "ETL_PIPELINE_PATHS", [folder])
        jobs_in_session(command, spark)
        call_command(
            "run_pipeline", "--pipeline", "retail_demo", "--date", day.isoformat(), stdout=StringIO()
        )


def warehouse() -> dict[str, tuple[int, str]]:
    """Every warehouse row by content (ids replaced by natural keys)."""
    sums = warehouse_checksums(using=DB, mode="natural")
    return {table: value for table, value in sums.items() if table not in STAMPED}


def start_over(staging_root: Path) -> None:
    """An empty warehouse, no run record, no staging: as the command found it."""
    for model in (FactSalesLine, FactDailySales, QuarantinedRow, LoadedPartition, PseudonymKey):
        model.objects.using(DB).all().delete()
    for model in (DimCustomer, DimProduct, DimStore, StepRun, PipelineRun, StagedPartition):
        model.objects.using(DB).all().delete()
    shutil.rmtree(staging_root, ignore_errors=True)


def latest_run() -> PipelineRun | None:
    return PipelineRun.objects.using(DB).filter(pipeline="retail_demo").order_by("-started_at", "-id").first()


def step_running(step: str, *, after: int = 0):
    """The latest run, once its `step` is running (the run's pool process is at work in it), if it is a
    later run than run #`after` (the delivery before it)."""
    run = latest_run()
    if run is None or run.pk <= after or run.status != RunStatus.RUNNING:
        return None
    if StepRun.objects.using(DB).filter(run=run, step=step, status=RunStatus.RUNNING).exists():
        return run
    return None


class LiveRuns:
    """Watches, from a thread, how many run records are `running` with their process alive: two at once
    would be two deliveries running the pipeline."""

    def __init__(self) -> None:
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> LiveRuns:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        from django.db import connections

        try:
            while not self._stop.is_set():
                pids = (
                    PipelineRun.objects.using(DB)
                    .filter(status=RunStatus.RUNNING)
                    .values_list("pid", flat=True)
                )
                self.most = max(self.most, sum(1 for pid in pids if _alive(pid)))
                time.sleep(0.05)
        finally:
            connections.close_all()


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has died


def test_a_queued_run_killed_twenty_times_loads_what_the_command_loads(
    demo,
    queue_site,  # noqa: F811
    staging_root,
    monkeypatch,
    spark,
    tmp_path,
):
    command_run(DAY, tmp_path / "command", monkeypatch, spark)
    assert latest_run().status == RunStatus.SUCCEEDED
    golden = warehouse()
    # The golden warehouse is right on its own terms: each line the rules keep, recomputed in Python.
    loaded, _ = expected_lines(demo, DAY)
    assert golden[FactSalesLine._meta.db_table][0] == len(loaded)
    start_over(staging_root)

    marker = queue_site.folder / "load-paused"
    paused_in_load = {FAULT_POINT_ENV: "after_copy", FAULT_MARKER_ENV: str(marker)}
    # Two pool processes: one runs the run's task, the other its extract tasks.
    worker = queue_site.worker("w1", env=paused_in_load, concurrency=2)
    kills: list[tuple[str, str, float]] = []  # (step, what was killed, when)
    rng = random.Random(16)

    def kill(step: str, run: PipelineRun, n: int) -> None:
        nonlocal worker
        # Odd trials: the pool process running the task (as the OOM killer does), the worker lives on and
        # takes the message back; even trials: the whole worker, started again (a lost machine).
        if n % 2:
            os.kill(run.pid, 9)
            until(lambda: not _alive(run.pid), f"pool process {run.pid} gone")
            kills.append((step, "pool process", time.time()))
        else:
            worker.kill()
            kills.append((step, "worker", time.time()))
            worker = queue_site.worker(f"{step}{n}", env=paused_in_load, concurrency=2)

    with LiveRuns() as live:
        result = run_enqueue(pipeline="retail_demo", business_date=DAY.isoformat(), started_by="e2e")
        run = None
        for n in range(1, TRIALS + 1):
            earlier = run.pk if run else 0
            run = until(
                lambda after=earlier: step_running("transform", after=after), f"transform running (trial {n})"
            )
            time.sleep(rng.uniform(0.2, 3.0))  # JVM start, planning or the job itself
            transform = StepRun.objects.using(DB).get(run=run, step="transform")
            assert transform.status == RunStatus.RUNNING, (n, run.pk, transform.status, transform.error)
            kill("transform", run, n)
        for n in range(1, TRIALS + 1):
            until(marker.exists, f"load paused after its COPY (trial {n})")
            run = step_running("load", after=run.pk)
            assert run is not None and int(marker.read_text()) == run.pid, n
            marker.unlink()  # the next delivery writes it anew
            kill("load", run, n)
        until(marker.exists, "the last delivery's load paused")
        marker.unlink()  # this one carries on
        done = until(
            lambda: (r := latest_run()) and r.status != RunStatus.RUNNING and r,
            "the last delivery's run ends",
        )

    assert done.status == RunStatus.SUCCEEDED, done.error
    assert warehouse() == golden
    runs = list(PipelineRun.objects.using(DB).filter(pipeline="retail_demo").order_by("started_at", "id"))
    # One run record per delivery, each carried by the same task, each resuming the one before.
    assert len(runs) == 2 * TRIALS + 1
    assert {r.parameters["task_id"] for r in runs} == {result.id}
    assert {(r.origin, r.started_by) for r in runs} == {(RunOrigin.QUEUE, "e2e")}
    assert [r.status for r in runs] == [RunStatus.ABANDONED] * 2 * TRIALS + [RunStatus.SUCCEEDED]
    assert all(later.resumed_from_id == earlier.pk for earlier, later in zip(runs, runs[1:], strict=False))
    # The first delivery extracted; the next ten began at transform (the tenth of them finished it and was
    # killed in its load), the last ten at load.
    first_steps = [r.steps.order_by("started_at", "id").first().step for r in runs]
    assert first_steps == ["extract"] + ["transform"] * TRIALS + ["load"] * TRIALS
    # Never two deliveries at once: each started after the one before was killed, and at no moment were
    # two runs running with their processes alive.
    for (step, killed, at), later in zip(kills, runs[1:], strict=True):
        assert later.started_at.timestamp() > at, (step, killed)
    assert live.most == 1
    assert [k[1] for k in kills].count("worker") == TRIALS
