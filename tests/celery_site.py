"""The task-queue tests' real components: the RabbitMQ server on 127.0.0.1:5672 and real `celery worker`
and `celery beat` processes, pointed at the test's PostgreSQL database, pipelines and staging root.

Each test gets queues of its own (`etl-test-<random>` and its `.extract`), deleted afterwards, so
neither the other test process nor a message an earlier run left behind reaches its workers.

    @pytest.mark.django_db(databases="__all__", transaction=True)
    def test_x(queue_site):
        worker = queue_site.worker("w1")
        result = run_enqueue(pipeline="shop")
        queue_site.wait_for_run(...)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import _postgres_or_skip, skip_or_fail_in_ci

BROKER_URL = os.environ.get("ETL_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
READY_TIMEOUT = 90.0


def rabbitmq_or_skip() -> None:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=2):
            return
    except OSError as exc:
        skip_or_fail_in_ci(f"task-queue tests: no RabbitMQ on 127.0.0.1:5672 ({exc})", "RabbitMQ server")


def test_database_url() -> str:
    """The `postgres` test database, as a URL a child process's DATABASE_URL takes."""
    from django.db import connections

    db = connections["postgres"].settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def until(condition, what: str, *, timeout: float, site: QueueSite | None = None, every: float = 0.05):
    """`condition()`'s first true value, asked every `every` seconds; after `timeout` seconds an
    AssertionError naming `what`, with the end of the output of `site`'s workers and beat."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(every)
    logs = "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in (site.processes if site else []))
    raise AssertionError(f"{what}: not within {timeout:g} s\n{logs}")


@dataclass
class CeleryProcess:
    """A `celery worker` or `celery beat` in a process group of its own, its output in `log`."""

    name: str
    process: subprocess.Popen
    log: Path
    node: str = ""  # a worker's node name, `<name>-<the site's queue suffix>`: `<node>@<host>`

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def pool_children(self) -> list[int]:
        """The worker's pool processes (those that run tasks)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def kill(self) -> None:
        """SIGKILL to the worker and its pool processes at once (a lost machine). What a task started
        (spark-submit's guard) is left to notice its parent's death, as it must on a real machine."""
        for pid in [*self.pool_children(), self.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (a warm shutdown), then SIGKILL to the group for whatever is left."""
        if self.process.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.process.wait(timeout=timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)


@dataclass
class QueueSite:
    queue: str
    env: dict[str, str]
    folder: Path
    processes: list[CeleryProcess] = field(default_factory=list)

    @property
    def queues(self) -> tuple[str, str]:
        return self.queue, f"{self.queue}.extract"

    def _start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None) -> CeleryProcess:
        log = self.folder / f"{name}.log"
        with log.open("ab") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "conf", *argv],
                cwd=settings.BASE_DIR,
                env={**self.env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = CeleryProcess(name=name, process=process, log=log)
        self.processes.append(started)
        return started

    def worker(
        self,
        name: str,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = 1,
        env: Mapping[str, str] | None = None,
        ready: bool = True,
    ) -> CeleryProcess:
        """A `celery worker` consuming `queues` (both of the site's by default), named `<name>-<suffix of the
        site's queue>@<host>` (its `node`): a worker's control queue is exclusive to its name, and the other
        test process may run a worker called `name` too. Returns once it says it is ready (or at once
        with ready=False)."""
        node = f"{name}-{self.queue.rsplit('-', 1)[-1]}"
        argv = [
            "worker",
            "--hostname", f"{node}@%h",
            "--queues", ",".join(queues or self.queues),
            "--concurrency", str(concurrency),
            "--pool", "prefork",
            "--without-gossip", "--without-mingle",
            "--loglevel", "INFO",
        ]  # fmt: skip
        worker = self._start(name, argv, env)
        worker.node = node
        if ready:
            self.wait_ready(worker)
        return worker

    def wait_ready(self, worker: CeleryProcess, *, since: int = 0) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if "ready." in worker.output()[since:]:
                return
            if worker.process.poll() is not None:
                raise AssertionError(
                    f"worker {worker.name} exited {worker.process.returncode}:\n{worker.output()}"
                )
            time.sleep(0.1)
        raise AssertionError(
            f"worker {worker.name} not ready after {READY_TIMEOUT:g}s:\n{worker.output()[-4000:]}"
        )

    def beat(self, name: str = "beat", *, env: Mapping[str, str] | None = None) -> CeleryProcess:
        """`celery beat` with the database scheduler, looking at its schedules every second."""
        argv = [
            "beat",
            "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler",
            "--max-interval", "1",
            "--pidfile", str(self.folder / f"{name}.pid"),
            "--loglevel", "INFO",
        ]  # fmt: skip
        return self._start(name, argv, env)

    def close(self) -> None:
        for started in reversed(self.processes):
            started.stop()
        self._queues_delete()

    def _queues_delete(self) -> None:
        from kombu import Connection

        try:
            with Connection(BROKER_URL, connect_timeout=5) as connection:
                channel = connection.channel()
                for queue in self.queues:
                    try:
                        channel.queue_delete(queue)
                    except Exception:  # never declared (no task went there): nothing to delete
                        channel = connection.channel()
        except OSError:
            pass

    def messages_waiting(self, queue: str | None = None) -> int:
        """How many messages wait in `queue` (the run queue by default), not yet taken by a worker."""
        from kombu import Connection

        with Connection(BROKER_URL, connect_timeout=5) as connection:
            try:
                return connection.channel().queue_declare(queue or self.queue, passive=True).message_count
            except Exception:  # not declared yet: nothing was ever sent there
                return 0


@pytest.fixture
def queue_site(tmp_path, pipeline_dir, staging_root, settings, monkeypatch):
    """Queues of the test's own on the real broker, the test process sending to them, and a way to start
    workers and beat against the test's PostgreSQL database (`postgres` alias: their `default`)."""
    rabbitmq_or_skip()
    _postgres_or_skip()
    from celery import current_app

    queue = f"etl-test-{uuid.uuid4().hex[:12]}"
    folder = tmp_path / "celery"
    folder.mkdir()
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ETL_", "DJANGO_", "DATABASE_URL", "CELERY_", "PYTEST_"))
    }
    env = {
        **inherited,
        "DJANGO_SETTINGS_MODULE": "conf.settings.local",
        "DATABASE_URL": test_database_url(),
        "CELERY_BROKER_URL": BROKER_URL,
        "ETL_CELERY_QUEUE": queue,
        "ETL_PIPELINE_PATH": str(pipeline_dir),
        "ETL_STAGING_ROOT": str(staging_root),
        "ETL_VAR_DIR": str(tmp_path / "var"),
        "ETL_PII_KEYS": os.environ["ETL_PII_KEYS"],
        "ETL_ERASURE_KEY": os.environ["ETL_ERASURE_KEY"],
        "ETL_HEARTBEAT_SECONDS": "2",
        "PYTHONUNBUFFERED": "1",
    }
    # The test process sends to the same queues (its app was configured from the test settings).
    monkeypatch.setenv("CELERY_BROKER_URL", BROKER_URL)
    settings.ETL_CELERY_QUEUE = queue
    conf = current_app.conf
    saved = {"broker_url": conf.broker_url, "task_default_queue": conf.task_default_queue}
    saved["task_routes"] = conf.task_routes
    conf.broker_url = BROKER_URL
    conf.task_default_queue = queue
    conf.task_routes = {"etl.extract_source": {"queue": f"{queue}.extract"}}
    site = QueueSite(queue=queue, env=env, folder=folder)
    try:
        yield site
    finally:
        site.close()
        for key, value in saved.items():
            setattr(conf, key, value)
