"""The demo pipeline's transform on a real standalone Spark cluster (master + one worker on 127.0.0.1).

The cluster comes from the installed pyspark distribution (`bin/spark-class`: pip's pyspark has no
`sbin/start-master.sh`). The pipeline gets `spark://...` the way production does, via ETL_SPARK_MASTER;
spark-submit ships the `spark_jobs` archive with `--py-files`. About 50 s on 2 cores: cluster start-up
~5-15 s (while the demo extract runs), the transform on one 1-core executor.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from io import StringIO
from pathlib import Path

import pyspark
import pytest
from django.core.management import call_command

from etlcore.demo.api_server import demo_api_token, start_demo_api
from etlcore.demo.generate import generate_demo_data
from etlcore.models import PipelineRun
from etlcore.spark import default_conf, local_cores

DAY = date(2026, 11, 1)
START_TIMEOUT = 90.0  # a cold JVM on a loaded 2-core CI runner can take a while
SPARK_CLASS = Path(pyspark.__file__).parent / "bin" / "spark-class"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Cluster:
    master_url: str
    web_url: str
    work_dir: Path
    logs: list[Path]
    procs: list[subprocess.Popen] = field(default_factory=list)

    def state(self) -> dict:
        with urllib.request.urlopen(f"{self.web_url}/json/", timeout=5) as response:
            return json.load(response)

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:] for p in self.logs)

    def wait_for_worker(self) -> None:
        """Return once a worker has registered with the master; fail (skip outside CI) if none does."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    _unavailable(f"a daemon exited with {proc.returncode}\n{self.log_tail()}")
            try:
                if self.state().get("aliveworkers", 0):
                    return
            except (OSError, ValueError):  # ValueError: an empty or partial JSON page while it starts
                pass  # the master's web UI is not up yet
            time.sleep(0.5)
        _unavailable(f"no worker registered within {START_TIMEOUT:.0f} s\n{self.log_tail()}")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"standalone Spark cluster: {reason} (CI=true: fails instead of skipping)")
    pytest.skip(f"standalone Spark cluster: {reason}")


def _start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    # Own session (process group): the worker's executor JVMs and their Python workers join it, so one
    # killpg in teardown stops everything the test started.
    with open(log, "wb") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            # The leader is gone; children in its group may linger: the SIGKILL round reaches them too.
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def spark_cluster(tmp_path) -> Iterator[Cluster]:
    """The master and its worker, starting: the test calls `wait_for_worker()` once it needs them, so its own
    preparation runs while the JVMs start."""
    if not SPARK_CLASS.exists():
        _unavailable(f"{SPARK_CLASS} not found")
    port, web_port, worker_web_port = _free_port(), _free_port(), _free_port()
    env = {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_MASTER_HOST": "127.0.0.1",
        "SPARK_NO_DAEMONIZE": "1",
        "SPARK_LOCAL_DIRS": str(tmp_path / "scratch"),  # executor scratch space, removed with tmp_path
    }
    cluster = Cluster(
        master_url=f"spark://127.0.0.1:{port}",
        web_url=f"http://127.0.0.1:{web_port}",
        work_dir=tmp_path / "work",
        logs=[tmp_path / "master.log", tmp_path / "worker.log"],
    )
    procs = cluster.procs
    try:
        procs.append(
            _start(
                [str(SPARK_CLASS), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1"]
                + ["--port", str(port), "--webui-port", str(web_port)],
                cluster.logs[0],
                env,
            )
        )
        procs.append(
            _start(
                [str(SPARK_CLASS), "org.apache.spark.deploy.worker.Worker", cluster.master_url]
                + ["--host", "127.0.0.1", "--cores", "1", "--memory", "1g"]
                + ["--webui-port", str(worker_web_port), "--work-dir", str(cluster.work_dir)],
                cluster.logs[1],
                env,
            )
        )
        yield cluster
    finally:
        for proc in reversed(procs):
            _stop(proc)


@pytest.mark.spark_submit
@pytest.mark.django_db(transaction=True)
def test_transform_runs_on_a_standalone_cluster(spark_cluster, tmp_path, monkeypatch, staging_root):
    monkeypatch.setenv("ETL_SPARK_MASTER", spark_cluster.master_url)
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "cluster-test-key")
    data_dir = tmp_path / "demo"
    demo = generate_demo_data(out_dir=data_dir, business_dates=[DAY])
    monkeypatch.setenv("ETL_DEMO_DIR", str(data_dir))
    token, _ = demo_api_token()
    monkeypatch.setenv("ETL_DEMO_API_TOKEN", token)
    with start_demo_api(orders_path=data_dir / "orders.jsonl", token=token) as api:
        monkeypatch.setenv("ETL_DEMO_API_URL", api.url)
        call_command("extract", "--date", DAY.isoformat(), stdout=StringIO())

    spark_cluster.wait_for_worker()
    # The load is the end-to-end test's business; this one is about where the Spark job runs.
    call_command("transform", "--date", DAY.isoformat(), stdout=StringIO())

    transform = PipelineRun.objects.latest("id").steps.get(step="transform")
    assert transform.status == "succeeded", transform.error
    order_lines = transform.details["datasets"]["order_lines"]
    assert order_lines["rows_in"] == demo.day(DAY).lines
    assert transform.details["outputs"]["sales_lines"] == order_lines["rows_out"] > 0
    command = transform.details["command"]
    assert command[command.index("--master") + 1] == spark_cluster.master_url
    assert any(arg.endswith("spark_jobs.zip") for arg in command)
    assert "spark.driver.host=127.0.0.1" in command

    # It ran on the cluster: the master lists the job as a finished application that had an executor.
    apps = spark_cluster.state()["completedapps"]
    names = [app["name"] for app in apps]
    assert f"retail_demo:sales_daily:{DAY}" in names, names
    log = Path(transform.details["log"]).read_text(errors="replace")
    assert "Granted executor ID" in log, log[-3000:]
    # --py-files reached the executor (the job runs no Python there today, but a UDF would need it).
    assert list(spark_cluster.work_dir.glob("app-*/*/spark_jobs.zip"))


def test_default_conf_follows_the_master():
    local = default_conf("local[2]")
    assert local["spark.sql.shuffle.partitions"] == "4"
    assert local["spark.driver.memory"].endswith("m")
    assert "spark.driver.host" not in local

    on_this_host = default_conf("spark://127.0.0.1:7077")
    assert on_this_host["spark.driver.bindAddress"] == "127.0.0.1"
    assert "spark.driver.memory" not in on_this_host

    # A remote master's executors could never reach a driver bound to loopback.
    assert "spark.driver.host" not in default_conf("spark://spark-master.internal:7077")
    assert "spark.driver.host" not in default_conf("yarn")


def test_local_cores_of_master_urls():
    assert [local_cores(m) for m in ("local", "local[3]", "local[2,4]", "yarn")] == [1, 3, 2, None]
    assert local_cores("local[*]") == os.cpu_count()
