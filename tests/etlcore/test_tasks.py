"""A run as tasks on real `celery worker` processes and RabbitMQ: its extractions fan out across workers and
run at the same time, its time limits stop it with a line that says so, and no broker is a one-line error.

The pipelines here only extract (no Spark): tests/test_celery_end_to_end.py runs the whole date.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django_celery_results.models import TaskResult

from etlcore.errors import ConfigurationError
from etlcore.models import PipelineRun, RunOrigin, RunStatus, StepRun
from etlcore.tasks import run_enqueue
from tests.celery_site import queue_site  # noqa: F401
from tests.pipelines import dataset, pipeline_write

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

DB = "postgres"  # the workers' `default`
DAY = date(2026, 11, 3)
WAIT = 90.0


class OrdersServer(ThreadingHTTPServer):
    """An orders API on loopback whose every answer waits, first, for `meet` requests to be in at once
    (a barrier: it opens only if the sources are extracted in parallel) or for `release` to be set."""

    daemon_threads = True

    def __init__(self, *, meet: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), _OrdersHandler)
        self.barrier = threading.Barrier(meet) if meet else None
        self.release = threading.Event()
        self.seen: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _OrdersHandler(BaseHTTPRequestHandler):
    server: OrdersServer

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.server.seen.append(self.path)
        status, body = 200, {"orders": [{"id": f"{self.path.strip('/')}-1"}]}
        if self.server.barrier is not None:
            try:
                self.server.barrier.wait(timeout=30)
            except threading.BrokenBarrierError:  # alone: the sources were not extracted in parallel
                status, body = 409, {"error": "the other source's request never came while this one waited"}
        else:
            self.server.release.wait(timeout=60)
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def orders_server(*, meet: int = 0) -> Iterator[OrdersServer]:
    server = OrdersServer(meet=meet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        if server.barrier is not None:
            server.barrier.abort()
        server.shutdown()
        server.server_close()


def orders(server: OrdersServer, path: str) -> dict:
    source = {
        "kind": "rest",
        "base_url": server.url,
        "path": path,
        "records_path": "orders",
        "pagination": {"style": "link_header"},
    }
    return dataset(source=source, id={"from": "id", "type": "string", "required": True})


def ended(pipeline: str) -> PipelineRun:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        run = PipelineRun.objects.using(DB).filter(pipeline=pipeline).order_by("-id").first()
        if run is not None and run.status != RunStatus.RUNNING:
            return run
        time.sleep(0.1)
    raise AssertionError(f"no run of {pipeline} ended within {WAIT:g}s")


def test_a_runs_sources_are_extracted_at_the_same_time_on_two_workers(queue_site, pipeline_dir):  # noqa: F811
    with orders_server(meet=2) as api:
        pipeline_write(
            pipeline_dir, datasets={"north": orders(api, "/north"), "south": orders(api, "/south")}
        )
        # One worker takes the run's task only, two others take extract tasks, one at a time each.
        runner, w1, w2 = started = [
            queue_site.worker("runner", queues=[queue_site.queue], ready=False),
            queue_site.worker("w1", queues=[f"{queue_site.queue}.extract"], ready=False),
            queue_site.worker("w2", queues=[f"{queue_site.queue}.extract"], ready=False),
        ]
        for worker in started:
            queue_site.wait_ready(worker)
        sent = run_enqueue(pipeline="shop", business_date=DAY.isoformat(), steps=["extract"], started_by="t")
        run = ended("shop")

    assert run.status == RunStatus.SUCCEEDED, run.error
    assert (run.origin, run.parameters["task_id"]) == (RunOrigin.QUEUE, sent.id)
    assert sorted(api.seen) == ["/north", "/south"]
    extracts = {r.task_id: r for r in TaskResult.objects.using(DB).filter(task_name="etl.extract_source")}
    assert {r.status for r in extracts.values()} == {"SUCCESS"}
    # Each on its own worker, and each started before the other ended: they ran at the same time.
    assert sorted(r.worker.split("@")[0] for r in extracts.values()) == [w1.node, w2.node]
    first, second = extracts.values()
    assert first.date_started < second.date_done and second.date_started < first.date_done
    # The run's step record names the task that extracted each source and the worker it ran on.
    sources = StepRun.objects.using(DB).get(run=run, step="extract").details["sources"]
    assert {facts["task_id"] for facts in sources.values()} == set(extracts)
    for name, facts in sources.items():
        assert facts["worker"] == extracts[facts["task_id"]].worker, name
    ran = TaskResult.objects.using(DB).get(task_id=sent.id)
    assert (ran.task_name, ran.status, ran.worker.split("@")[0]) == (
        "etl.pipeline_run",
        "SUCCESS",
        runner.node,
    )


def test_time_limits_stop_a_run_with_a_line_naming_the_limit_and_it_is_not_delivered_again(
    queue_site,  # noqa: F811
    pipeline_dir,
):
    with orders_server() as api:  # answers only when the test ends
        pipeline_write(
            pipeline_dir,
            "slow_run",
            datasets={"orders": orders(api, "/orders")},
            tables="[queue]\ntime_limit_seconds = 3\n",
        )
        pipeline_write(
            pipeline_dir,
            "slow_source",
            datasets={"orders": orders(api, "/orders")},
            tables="[queue]\nextract_time_limit_seconds = 2\n",
        )
        queue_site.worker("w1", concurrency=3)
        by_run = run_enqueue(pipeline="slow_run", business_date=DAY.isoformat(), steps=["extract"])
        by_source = run_enqueue(pipeline="slow_source", business_date=DAY.isoformat(), steps=["extract"])
        slow_run, slow_source = ended("slow_run"), ended("slow_source")
        time.sleep(3)  # a redelivery would have started a second run by now

        assert slow_run.status == RunStatus.FAILED
        assert slow_run.error == (
            "the task's time limit of 3 s was reached and the run stopped (docs/celery.md, [queue])"
        )
        assert slow_source.status == RunStatus.FAILED
        assert "source 'orders': extract task " in slow_source.error
        assert "stopped at its time limit of 2 s ([queue] extract_time_limit_seconds)" in slow_source.error
        for pipeline, sent in (("slow_run", by_run), ("slow_source", by_source)):
            assert PipelineRun.objects.using(DB).filter(pipeline=pipeline).count() == 1, pipeline
            result = TaskResult.objects.using(DB).get(task_id=sent.id)
            assert result.status == "FAILURE", pipeline
        assert queue_site.messages_waiting() == 0


def test_enqueueing_without_a_broker_fails_in_one_line_naming_the_variable(pipeline_dir, monkeypatch):
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_BROKER_URL_FILE", raising=False)
    from django.conf import settings

    monkeypatch.setattr(settings, "ETL_CELERY_BROKER_DEFAULT", None)
    pipeline_write(pipeline_dir, datasets={"orders": dataset("orders.csv", id={"type": "string"})})
    with pytest.raises(ConfigurationError) as raised:
        run_enqueue(pipeline="shop", business_date=DAY.isoformat())
    message = str(raised.value)
    assert "CELERY_BROKER_URL" in message and "\n" not in message


def test_an_extract_worker_that_does_not_share_the_staging_root_fails_the_run_naming_it(
    queue_site,  # noqa: F811
    pipeline_dir,
    staging_root,
    tmp_path,
):
    elsewhere = tmp_path / "another-machines-staging"
    with orders_server() as api:
        api.release.set()  # answers at once
        pipeline_write(pipeline_dir, datasets={"orders": orders(api, "/orders")})
        queue_site.worker("runner", queues=[queue_site.queue])
        queue_site.worker(
            "far", queues=[f"{queue_site.queue}.extract"], env={"ETL_STAGING_ROOT": str(elsewhere)}
        )
        run_enqueue(pipeline="shop", business_date=DAY.isoformat(), steps=["extract"])
        run = ended("shop")

    assert run.status == RunStatus.FAILED
    assert f"the staging root ({staging_root}) must be a filesystem every worker shares" in run.error
    assert list(elsewhere.rglob("_manifest.json"))  # published, on the other machine's staging root
