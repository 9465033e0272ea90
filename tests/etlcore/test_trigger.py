"""The sensor (etlcore/services/trigger.py, task etl.pipeline_sensor) against the real broker: what it
enqueues is counted and read back from RabbitMQ, not from the sensor's own record; one test runs it on a
real worker, whose run extracts the file that landed."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from etlcore.locks import pipeline_lock
from etlcore.models import PipelineRun, RunStatus, SensorCheck, SensorOutcome, StagedPartition
from etlcore.services import trigger
from etlcore.services.pipeline import pipeline_execute
from etlcore.services.trigger import pipeline_sense
from tests import celery_site
from tests.pipelines import dataset, pipeline_toml

queue_site = celery_site.queue_site  # the fixture, for this module's tests
NOW = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)  # yesterday: 2026-11-01
YESTERDAY = "2026-11-01"
ROWS = "id,amount\n1,2.50\n2,4.00\n3,1.25\n"


def write_pipeline(folder, data, *, enabled=True, path="orders_{date:%Y%m%d}*.csv", extra_datasets=None):
    datasets = {"orders": dataset(f"{data}/{path}", id={"required": True}, amount={})}
    datasets.update(extra_datasets or {})
    text = pipeline_toml("shop", datasets=datasets)
    text += f"[trigger]\nenabled = {'true' if enabled else 'false'}\nevery_seconds = 10\n"
    (folder / "shop.toml").write_text(text, encoding="utf-8")


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


def run_messages(site) -> list[dict]:
    """The run tasks waiting in the site's run queue, taken off it: id, task name and keyword arguments."""
    from kombu import Connection

    found: list[dict] = []
    if not site.messages_waiting():  # also: never declared, nothing was ever sent there
        return found
    with Connection(celery_site.BROKER_URL, connect_timeout=5) as connection:
        channel = connection.channel()
        while (message := channel.basic_get(site.queue, no_ack=True)) is not None:
            _args, kwargs, _embed = json.loads(message.body)
            found.append({"id": message.headers["id"], "task": message.headers["task"], "kwargs": kwargs})
    return found


def outcomes(pipeline="shop", using="default") -> list[str]:
    return list(
        SensorCheck.objects.using(using)
        .filter(pipeline=pipeline)
        .order_by("checked_at", "id")
        .values_list("outcome", flat=True)
    )


def later(minutes: int) -> datetime:
    return NOW + timedelta(minutes=minutes)


# --- the service, without a worker ----------------------------------------------------------------------


@pytest.mark.django_db
def test_new_file_enqueues_exactly_one_run_of_yesterday_and_the_same_file_never_again(
    queue_site, pipeline_dir, data
):
    write_pipeline(pipeline_dir, data)
    (data / "orders_20261102.csv").write_text(ROWS)  # today's, still open: not looked at

    nothing = pipeline_sense(pipeline="shop", now=NOW)
    assert nothing.outcome == SensorOutcome.UNCHANGED and queue_site.messages_waiting() == 0

    (data / "orders_20261101.csv").write_text(ROWS)
    landed = pipeline_sense(pipeline="shop", now=later(1), steps=["extract"])
    again = pipeline_sense(pipeline="shop", now=later(2), steps=["extract"])
    again_later = pipeline_sense(pipeline="shop", now=later(30), steps=["extract"])

    messages = run_messages(queue_site)
    assert [m["task"] for m in messages] == ["etl.pipeline_run"]
    assert messages[0]["kwargs"] == {
        "pipeline": "shop",
        "business_date": YESTERDAY,
        "steps": ["extract"],
        "started_by": "sensor",
    }
    assert landed.outcome == SensorOutcome.ENQUEUED and landed.task_id == messages[0]["id"]
    assert landed.sources["orders"]["newer"] is True
    assert again.outcome == again_later.outcome == SensorOutcome.UNCHANGED
    assert landed.task_id in again.reason
    assert outcomes() == ["unchanged", "enqueued", "unchanged", "unchanged"]


@pytest.mark.django_db
def test_another_file_while_the_enqueued_run_still_waits_enqueues_nothing_more(
    queue_site, pipeline_dir, data
):
    write_pipeline(pipeline_dir, data)
    (data / "orders_20261101.csv").write_text(ROWS)
    first = pipeline_sense(pipeline="shop", now=NOW)

    (data / "orders_20261101_b.csv").write_text(ROWS)
    second = pipeline_sense(pipeline="shop", now=later(1))

    assert [m["id"] for m in run_messages(queue_site)] == [first.task_id]
    assert second.outcome == SensorOutcome.BUSY
    assert second.fingerprint != first.fingerprint
    assert f"run task {first.task_id}" in second.reason and "has not started" in second.reason


@pytest.mark.django_db
def test_running_pipeline_enqueues_nothing_until_it_has_finished(queue_site, pipeline_dir, data):
    write_pipeline(pipeline_dir, data)
    (data / "orders_20261101.csv").write_text(ROWS)

    with pipeline_lock(pipeline="shop", using="default"):
        running = pipeline_sense(pipeline="shop", now=NOW)
        assert queue_site.messages_waiting() == 0
    free = pipeline_sense(pipeline="shop", now=later(1))

    assert running.outcome == SensorOutcome.BUSY and "already running" in running.reason
    assert free.outcome == SensorOutcome.ENQUEUED
    assert [m["id"] for m in run_messages(queue_site)] == [free.task_id]


@pytest.mark.django_db
def test_file_the_last_extract_read_is_not_newer_and_a_rewrite_after_it_is(queue_site, pipeline_dir, data):
    write_pipeline(pipeline_dir, data)
    (data / "orders_20261101.csv").write_text(ROWS)
    time.sleep(0.02)
    pipeline_execute(pipeline="shop", business_date=YESTERDAY, steps=["extract"], command="run_pipeline")
    assert StagedPartition.objects.get(dataset="orders").row_count == 3

    read = pipeline_sense(pipeline="shop", now=NOW)
    assert read.outcome == SensorOutcome.UNCHANGED and read.sources["orders"]["newer"] is False

    (data / "orders_20261101.csv").write_text(ROWS + "4,9.99\n")
    rewritten = pipeline_sense(pipeline="shop", now=later(1))

    assert rewritten.outcome == SensorOutcome.ENQUEUED
    assert [m["id"] for m in run_messages(queue_site)] == [rewritten.task_id]


@pytest.mark.django_db
def test_source_whose_probe_fails_records_its_error_enqueues_nothing_and_the_others_are_still_probed(
    queue_site, pipeline_dir, data
):
    import socket

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    api = dataset(
        source={
            "kind": "rest",
            "base_url": f"http://127.0.0.1:{port}",
            "path": "/orders",
            "max_retries": 0,
            "timeout_seconds": 2,
            "incremental": {"param": "since", "cursor_field": "updated_at"},
        },
        id={"required": True},
    )
    write_pipeline(pipeline_dir, data, extra_datasets={"api_orders": api})
    (data / "orders_20261101.csv").write_text(ROWS)

    check = pipeline_sense(pipeline="shop", now=NOW)

    assert check.outcome == SensorOutcome.ERROR
    assert check.error.startswith("source 'api_orders': ") and "/orders" in check.error
    assert check.sources["orders"]["newer"] is True and check.sources["orders"]["fingerprint"]["files"] == 1
    assert queue_site.messages_waiting() == 0


@pytest.mark.django_db
def test_source_that_cannot_be_probed_is_unknown_and_neither_starts_nor_stops_a_run(
    queue_site, pipeline_dir, data, monkeypatch
):
    monkeypatch.setenv("SHOP_DB_URL", "postgres://nobody@127.0.0.1:1/none")  # never connected to
    full = dataset(source={"kind": "postgres", "dsn_env": "SHOP_DB_URL", "table": "rates"}, code={})
    write_pipeline(pipeline_dir, data, extra_datasets={"rates": full})

    alone = pipeline_sense(pipeline="shop", now=NOW)
    (data / "orders_20261101.csv").write_text(ROWS)
    landed = pipeline_sense(pipeline="shop", now=later(1))

    assert alone.outcome == SensorOutcome.UNCHANGED and "rates: cannot be probed" in alone.reason
    assert alone.sources["rates"]["newer"] is None
    assert landed.outcome == SensorOutcome.ENQUEUED
    assert queue_site.messages_waiting() == 1


@pytest.mark.django_db
def test_disabled_trigger_probes_nothing_and_enqueues_nothing(queue_site, pipeline_dir, data):
    write_pipeline(pipeline_dir, data, enabled=False)
    (data / "orders_20261101.csv").write_text(ROWS)

    check = pipeline_sense(pipeline="shop", now=NOW)

    assert check.outcome == SensorOutcome.DISABLED and check.sources == {}
    assert "enabled is false" in check.reason
    assert queue_site.messages_waiting() == 0


@pytest.mark.django_db
def test_checks_are_bounded_and_the_latest_enqueued_one_is_kept_so_its_data_never_enqueues_again(
    queue_site, pipeline_dir, data, monkeypatch
):
    monkeypatch.setattr(trigger, "SENSOR_CHECKS_KEPT", 3)
    write_pipeline(pipeline_dir, data)
    (data / "orders_20261101.csv").write_text(ROWS)
    enqueued = pipeline_sense(pipeline="shop", now=NOW)

    for minute in range(1, 8):
        assert pipeline_sense(pipeline="shop", now=later(minute)).outcome == SensorOutcome.UNCHANGED

    kept = SensorCheck.objects.filter(pipeline="shop")
    assert kept.count() == 4
    assert kept.filter(pk=enqueued.pk).exists()
    assert outcomes() == ["enqueued", "unchanged", "unchanged", "unchanged"]
    assert queue_site.messages_waiting() == 1


@pytest.mark.django_db
def test_yesterday_is_taken_in_the_pipeline_time_zone(queue_site, pipeline_dir, data):
    datasets = {"orders": dataset(f"{data}/orders_{{date:%Y%m%d}}.csv", id={"required": True})}
    text = pipeline_toml("shop", datasets=datasets, top='timezone = "Pacific/Auckland"')
    (pipeline_dir / "shop.toml").write_text(text + "[trigger]\nenabled = true\n", encoding="utf-8")
    (data / "orders_20261102.csv").write_text(ROWS)  # 12:00 UTC on the 2nd is 01:00 on the 3rd there

    check = pipeline_sense(pipeline="shop", now=datetime(2026, 11, 2, 12, 0, tzinfo=UTC))

    assert check.outcome == SensorOutcome.ENQUEUED and str(check.business_date) == "2026-11-02"
    assert run_messages(queue_site)[0]["kwargs"]["business_date"] == "2026-11-02"


# --- on a real worker -----------------------------------------------------------------------------------


def sensed(checks_before: int) -> SensorCheck:
    """Send the sensor task (to the worker), and wait for the check it records in the worker's database."""
    from etlcore.tasks import pipeline_sensor

    pipeline_sensor.apply_async(kwargs={"pipeline": "shop", "steps": ["extract"]})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        checks = SensorCheck.objects.using("postgres").filter(pipeline="shop").order_by("-checked_at", "-id")
        if checks.count() > checks_before:
            return checks.first()
        time.sleep(0.2)
    raise AssertionError("the sensor task recorded no check within 60 s")


def finished_run(task_id: str, worker) -> PipelineRun:
    """The run task `task_id` started, once it has ended (in the worker's database)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        run = PipelineRun.objects.using("postgres").filter(parameters__task_id=task_id).first()
        if run is not None and run.status != RunStatus.RUNNING:
            return run
        time.sleep(0.5)
    raise AssertionError(f"no run of task {task_id} ended within 90 s:\n{worker.output()[-3000:]}")


def staged_rows() -> int:
    return StagedPartition.objects.using("postgres").get(pipeline="shop", dataset="orders").row_count


@pytest.mark.postgres
@pytest.mark.django_db(databases="__all__", transaction=True)
def test_file_lands_the_sensor_task_on_a_worker_enqueues_a_run_that_extracts_it(
    queue_site, pipeline_dir, data
):
    write_pipeline(pipeline_dir, data, path="orders.csv")  # one file for every date: no race at midnight
    # Two processes: the run task waits for its extract task. A name of its own: the broker is shared, and
    # a worker's control queue is exclusive to its name.
    worker = queue_site.worker(f"sensor-{uuid.uuid4().hex[:8]}", concurrency=2)

    assert sensed(0).outcome == SensorOutcome.UNCHANGED
    (data / "orders.csv").write_text(ROWS + "4,0.99\n")
    landed = sensed(1)
    assert landed.outcome == SensorOutcome.ENQUEUED, (landed.error, worker.output()[-3000:])

    run = finished_run(landed.task_id, worker)
    assert run.status == RunStatus.SUCCEEDED, (run.error, worker.output()[-3000:])
    assert run.started_by == "sensor" and run.origin == "queue"
    assert run.business_date == landed.business_date
    expected_day = (datetime.now(UTC) - timedelta(days=1)).date()
    assert abs((run.business_date - expected_day).days) <= 1  # yesterday, whichever side of midnight
    assert staged_rows() == len((data / "orders.csv").read_text().splitlines()) - 1 == 4

    after = sensed(2)
    assert after.outcome == SensorOutcome.UNCHANGED, after.reason

    # A new version once the sensor's run has run (its task no longer waiting): another run, which reads it.
    (data / "orders.csv").write_text(ROWS + "4,0.99\n5,7.00\n")
    again = sensed(3)
    assert again.outcome == SensorOutcome.ENQUEUED, again.reason
    assert finished_run(again.task_id, worker).status == RunStatus.SUCCEEDED
    assert staged_rows() == 5
    assert outcomes(using="postgres") == ["unchanged", "enqueued", "unchanged", "enqueued"]
    assert queue_site.messages_waiting() == 0


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_checks_of_one_pipeline_at_the_same_moment_enqueue_one_run(queue_site, pipeline_dir, data):
    """A backlog of sensor tasks taken by several workers at once: they decide one at a time."""
    import threading

    from django.db import connections

    datasets = {"orders": dataset(f"{data}/orders_{{date:%Y%m%d}}*.csv", id={"required": True}, amount={})}
    text = pipeline_toml("shop", datasets=datasets, database="postgres")
    (pipeline_dir / "shop.toml").write_text(text + "[trigger]\nenabled = true\n", encoding="utf-8")
    (data / "orders_20261101.csv").write_text(ROWS)
    start, checks = threading.Barrier(6), []

    def check() -> None:
        try:
            start.wait(timeout=30)
            checks.append(pipeline_sense(pipeline="shop", now=later(1), steps=["extract"]))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=check) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(checks) == 6
    assert [m["task"] for m in run_messages(queue_site)] == ["etl.pipeline_run"]
    assert sorted(c.outcome for c in checks).count(SensorOutcome.ENQUEUED) == 1
    assert outcomes(using="postgres").count("enqueued") == 1
