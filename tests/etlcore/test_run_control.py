"""Run control through real `manage.py` processes, as cron and systemd start them: exit codes, one run per
pipeline at a time, runs killed with SIGKILL seen as abandoned and taken over, SIGTERM and SIGINT ending a
run cleanly, and a Spark job that dies with its command.

No Spark: a run is held where the test wants it by the loader's fault point (ETL_FAULT_POINT, see
warehouse.loading.specs.fault_point) or by a stand-in spark-submit that behaves like the real one (the
process started execs a long-lived "JVM", which starts a "Python driver" of its own) and never ends.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections

from etlcore.locks import lock_key
from etlcore.models import PipelineRun, StepRun
from tests.conftest import _postgres_or_skip
from tests.etlcore.lock_contenders import contend
from tests.etlcore.test_commands import publish_transformed
from tests.pipelines import dataset, pipeline_write, sales_datasets
from tests.warehouse.partitions import default_outputs, sale

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

DAY = "2026-11-01"
WAIT = 60  # seconds a child may take to reach the point the test waits for, on a busy 2-core machine
FAKE_SPARK_SUBMIT = """#!/bin/sh
# Like spark-submit: the process started execs the "JVM", which starts the "Python driver".
exec {python} -c '
import os, subprocess, sys, time
folder = os.environ["SPARK_FAKE_PIDS"]
driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
open(folder + "/jvm", "w").write(str(os.getpid()))
open(folder + "/driver.tmp", "w").write(str(driver.pid))
os.rename(folder + "/driver.tmp", folder + "/driver")
time.sleep(300)
'
"""


def postgres_url() -> str:
    db = connections["postgres"].settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@dataclass
class Site:
    """A pipeline `shop` and the database its manage.py processes use, as an operator's machine has."""

    backend: str
    root: Path
    url: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    def manage(self, *args: str, fault: Path | None = None, **env: str) -> subprocess.Popen:
        child_env = dict(self.env, **env)
        if fault is not None:
            child_env |= {"ETL_FAULT_POINT": "after_dimensions", "ETL_FAULT_MARKER": str(fault)}
        return subprocess.Popen(
            [sys.executable, str(settings.BASE_DIR / "manage.py"), *args],
            cwd=self.root,
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        proc = self.manage(*args, **env)
        out, err = proc.communicate(timeout=WAIT)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def runs(self, pipeline: str = "shop") -> list[dict]:
        """The pipeline's run records, oldest first (read as the operator's database holds them)."""
        fields = ["id", "status", "business_date", "command", "pid", "heartbeat_at", "finished_at", "error"]
        if self.backend == "postgres":
            rows = PipelineRun.objects.using("postgres").filter(pipeline=pipeline).order_by("id")
            return [
                {k: (str(v) if k == "business_date" else v) for k, v in r.items()}
                for r in rows.values(*fields)
            ]
        with sqlite3.connect(self.root / "db.sqlite3") as db:
            db.row_factory = sqlite3.Row
            cursor = db.execute(
                f"SELECT {', '.join(fields)} FROM etlcore_pipelinerun WHERE pipeline = ? ORDER BY id",
                (pipeline,),
            )
            return [dict(row) for row in cursor]

    def steps(self, run_id: int) -> list[tuple[str, str, str]]:
        if self.backend == "postgres":
            return list(
                StepRun.objects.using("postgres").filter(run_id=run_id).values_list("step", "status", "error")
            )
        with sqlite3.connect(self.root / "db.sqlite3") as db:
            return db.execute(
                "SELECT step, status, error FROM etlcore_steprun WHERE run_id = ? ORDER BY id", (run_id,)
            ).fetchall()

    def sales_lines(self) -> int:
        if self.backend == "postgres":
            with connections["postgres"].cursor() as cursor:
                cursor.execute("SELECT count(*) FROM warehouse_factsalesline")
                return cursor.fetchone()[0]
        with sqlite3.connect(self.root / "db.sqlite3") as db:
            return db.execute("SELECT count(*) FROM warehouse_factsalesline").fetchone()[0]


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory) -> Path:
    """One migrated SQLite file, copied for each test: migrating takes seconds."""
    folder = tmp_path_factory.mktemp("sqlite-template")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "conf.settings.local", "ETL_VAR_DIR": str(folder / "var")}
    env["DATABASE_URL"] = f"sqlite:///{folder / 'db.sqlite3'}"
    subprocess.run(
        [sys.executable, str(settings.BASE_DIR / "manage.py"), "migrate", "-v0"],
        env=env,
        check=True,
        timeout=120,
    )
    return folder / "db.sqlite3"


@pytest.fixture(params=["sqlite", "postgres"])
def site(request, tmp_path, sqlite_template) -> Site:
    if request.param == "postgres":
        _postgres_or_skip()
        url = postgres_url()
    else:
        (tmp_path / "db.sqlite3").write_bytes(sqlite_template.read_bytes())
        url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    pipelines, data, pids = tmp_path / "pipelines", tmp_path / "data", tmp_path / "pids"
    for folder in (pipelines, data, pids):
        folder.mkdir()
    # Every dataset and column the sales job reads, so that a transform passes its preflight.
    sources = {
        "products": "SKU,Product Name,category,list_price\nP1,Mug,Kitchen,9.99\n",
        "stores": "store_code,name,city,region,country\nS1,Rivoli,Paris,West,FR\n",
        "lines": "order_id,line_number,ordered_at,store_code,customer_email,sku,quantity,unit_price,"
        "currency\nO1,1,2026-11-01T10:00:00Z,S1,a@example.com,P1,2,9.99,EUR\n",
    }
    for name, text in sources.items():
        (data / f"{name}_20261101.csv").write_text(text, encoding="utf-8")
    pipeline_write(pipelines, datasets=sales_datasets(data), staging=tmp_path / "staging")
    fake = tmp_path / "spark-submit"
    fake.write_text(FAKE_SPARK_SUBMIT.format(python=sys.executable), encoding="utf-8")
    fake.chmod(0o755)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "conf.settings.local",
        "DATABASE_URL": url,
        "ETL_VAR_DIR": str(tmp_path / "var"),
        "ETL_PIPELINE_PATH": str(pipelines),
        "ETL_SPARK_SUBMIT": str(fake),
        "ETL_HEARTBEAT_SECONDS": "0.2",
        "ETL_PSEUDONYM_KEY": "run-control-test-key",
        "SPARK_FAKE_PIDS": str(pids),
        "PYTHONPATH": str(settings.BASE_DIR),
    }
    env.pop("ETL_FAULT_POINT", None)
    return Site(backend=request.param, root=tmp_path, url=url, env=env)


def transformed_publish(site: Site) -> None:
    publish_transformed(
        {"staging": site.staging}, DAY, default_outputs([sale("O1", 1), sale("O2", 1, sku="P2")])
    )


def wait_for(condition, what: str, procs: list[subprocess.Popen], *, alive: bool = True) -> None:
    """Wait for `condition`; with `alive`, fail at once (with its stderr) when one of `procs` ends first."""
    deadline = time.monotonic() + WAIT
    while not condition():
        ended = [p for p in procs if alive and p.poll() is not None]
        if ended:
            raise AssertionError(f"ended before {what}: exit {ended[0].returncode}: {ended[0].stderr.read()}")
        if time.monotonic() > deadline:
            for proc in procs:
                proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """A process that still runs (a zombie has finished: only its parent has not read its status)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], seconds: float = 15) -> list[int]:
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


# --- exit codes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("site", ["sqlite"], indirect=True)  # the codes do not depend on the database
def test_exit_codes_success_failure_usage_and_nothing_to_do(site):
    transformed_publish(site)
    done = site.run("load", "--pipeline", "shop", "--date", DAY)
    # stderr has the run's events (docs/operations.md, "Logs"), none of them a warning or an error.
    assert done.returncode == 0 and not re.search(r"\[(warning|error)", done.stderr), done.stderr
    assert "succeeded" in done.stdout

    failed = site.run("load", "--pipeline", "nope", "--date", DAY)
    assert failed.returncode == 1
    line = failed.stderr.splitlines()[-1]  # after the failed run's events, the one line that says why
    assert re.fullmatch(r"CommandError: unknown pipeline 'nope' \(known: .*\bshop\b.*\)", line), line

    usage = site.run("load", "--pipeline", "shop", "--no-such-option")
    assert usage.returncode == 2 and "unrecognized arguments: --no-such-option" in usage.stderr

    nothing = site.run("replay_quarantine", "--pipeline", "shop", "--rule", "no_such_rule")
    assert (nothing.returncode, nothing.stderr) == (0, "")
    assert nothing.stdout.strip() == "nothing to do: no quarantined rows match"


# --- one run per pipeline -----------------------------------------------------------------------------


@pytest.mark.parametrize("starts", [2, 10])
def test_simultaneous_starts_leave_one_holder_and_every_other_exits_75_naming_it(
    site, starts, record_property
):
    """`starts` loads of one pipeline and date at once; whoever takes the lock pauses inside its load
    (lock held, transaction open) until every other start has ended. Exactly one reaches the pause (two
    holders would both pause, and the losers' count would never be reached); each other exits 75 while
    it holds, with one line naming it."""
    transformed_publish(site)
    marker = site.root / "paused"
    begun, ended = {}, {}
    procs = []
    for _ in range(starts):
        procs.append(site.manage("load", "--pipeline", "shop", "--date", DAY, fault=marker))
        begun[procs[-1].pid] = time.monotonic()

    def losers_done() -> bool:
        for proc in procs:
            if proc.poll() is not None and proc.pid not in ended:
                ended[proc.pid] = time.monotonic()
        return len(ended) == starts - 1 and marker.exists()

    wait_for(losers_done, f"{starts - 1} refused starts and one paused holder", procs, alive=False)
    (holder,) = [p for p in procs if p.pid not in ended]
    assert int(marker.read_text()) == holder.pid and holder.poll() is None
    seconds = sorted(ended[pid] - begun[pid] for pid in ended)
    record_property("loser_seconds", seconds)
    named = 0
    for proc in procs:
        if proc is holder:
            continue
        out, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 75, err
        (line,) = err.splitlines()
        match = re.fullmatch(
            r"CommandError: pipeline 'shop' is already running(?:: run #\d+ \(load 2026-11-01\) pid (\d+) "
            r"on \S+ since [\d-]+ [\d:]+ UTC, last seen [\d-]+ [\d:]+ UTC| \(its run record is being "
            r"written\); try again later)",
            line,
        )
        assert match, line
        if match.group(1):
            assert int(match.group(1)) == holder.pid
            named += 1
    marker.unlink()
    out, err = holder.communicate(timeout=WAIT)
    assert holder.returncode == 0, err
    runs = site.runs()
    # A refused start writes no run record: only the holder's, and it succeeded.
    assert [(r["status"], r["pid"]) for r in runs] == [("succeeded", holder.pid)]
    assert named >= 1  # the holder writes its run at once: most refusals can name it
    print(f"{site.backend} {starts} starts: losers exited after {[round(s, 2) for s in seconds]} s")


TRIALS = 50


def test_fifty_trials_of_two_to_ten_simultaneous_starts_never_give_the_lock_to_two(site, record_property):
    """The lock itself, many times over: ten spawned processes (their own Django, their own connections)
    and 50 trials, each with 2 to 10 of them trying the pipeline's lock at the same instant. The holder
    keeps it until every other has answered, so two holders in a trial would both report `took`; every
    other must be refused, well within the second the issue promises (exit 75 on the full command: the
    test above, with real manage.py starts)."""
    import multiprocessing
    import random

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    env = {k: v for k, v in site.env.items() if k.startswith(("DJANGO_", "DATABASE_", "ETL_"))}
    workers = []
    for _ in range(10):
        orders = context.Queue()
        proc = context.Process(target=contend, args=(env, "shop", orders, results), daemon=True)
        proc.start()
        workers.append((proc, orders))
    try:
        assert sorted(results.get(timeout=WAIT)[0] for _ in workers) == ["ready"] * 10
        chooser = random.Random(13)
        refusals: list[float] = []
        for trial in range(TRIALS):
            starters = chooser.sample(workers, chooser.randint(2, 10))
            start_at = time.time() + 0.05
            for _, orders in starters:
                orders.put(("try", start_at))
            answers = [results.get(timeout=WAIT) for _ in starters]
            takers = [pid for outcome, pid, _ in answers if outcome == "took"]
            assert len(takers) == 1, f"trial {trial}: {len(starters)} starts, holders {takers}"
            refusals += [seconds for outcome, _, seconds in answers if outcome == "refused"]
            (holder,) = [orders for proc, orders in starters if proc.pid == takers[0]]
            holder.put(("release",))
            assert results.get(timeout=WAIT) == ("released", takers[0], 0.0)
    finally:
        for _, orders in workers:
            orders.put(None)
        for proc, _ in workers:
            proc.join(timeout=WAIT)
            if proc.is_alive():
                proc.kill()
    record_property("slowest_refusal_seconds", max(refusals))
    assert len(refusals) >= TRIALS and max(refusals) < 1.0, sorted(refusals)[-5:]


def test_a_start_against_a_held_pipeline_is_refused_within_a_second(site, record_property):
    """The refusal's own cost: a refused start against the same command failing on a bad date just before
    it would take the lock (same imports, same configuration read). Medians of three, alternated."""
    if site.backend == "postgres":
        import psycopg2

        holder = psycopg2.connect(site.url)
        holder.autocommit = True
        holder.cursor().execute("SELECT pg_advisory_lock(%s)", [lock_key("shop")])
    else:
        path = site.root / "db.sqlite3.locks" / "shop.lock"
        path.parent.mkdir()
        import fcntl

        holder = open(path, "w")  # noqa: SIM115 - held for the test's length
        fcntl.flock(holder, fcntl.LOCK_EX)
    refused, baseline = [], []
    try:
        for _ in range(3):
            started = time.monotonic()
            bad = site.run("load", "--pipeline", "shop", "--date", "2026-13-01")
            baseline.append(time.monotonic() - started)
            assert bad.returncode == 1, bad.stderr
            started = time.monotonic()
            busy = site.run("load", "--pipeline", "shop", "--date", DAY)
            refused.append(time.monotonic() - started)
            assert busy.returncode == 75, busy.stderr
    finally:
        holder.close()
    extra = statistics.median(refused) - statistics.median(baseline)
    record_property("refusal_extra_seconds", extra)
    print(f"{site.backend}: refused in {refused} s, failed before the lock in {baseline} s")
    assert extra < 1.0, (refused, baseline)


# --- dead runs ----------------------------------------------------------------------------------------


def test_a_run_killed_during_its_load_is_abandoned_and_the_next_start_takes_over(site):
    transformed_publish(site)
    marker = site.root / "paused"
    victim = site.manage("load", "--pipeline", "shop", "--date", DAY, fault=marker)
    wait_for(marker.exists, "the load's pause", [victim])
    (dead,) = site.runs()
    assert (dead["status"], dead["business_date"], dead["pid"]) == ("running", DAY, victim.pid)
    status = site.run("pipeline_status", "--pipeline", "shop")
    assert re.search(rf"#{dead['id']}\s.*\srunning\s.*running, pid {victim.pid} on ", status.stdout), (
        status.stdout
    )

    victim.kill()
    victim.wait(timeout=WAIT)
    status = site.run("pipeline_status", "--pipeline", "shop")
    assert re.search(
        rf"#{dead['id']}\s.*\sabandoned\s.*last seen [\d-]+ [\d:]+ \(pid {victim.pid} on ", status.stdout
    )

    marker.unlink()
    rerun = site.run("load", "--pipeline", "shop", "--date", DAY)
    assert rerun.returncode == 0, rerun.stderr
    assert f"run #{dead['id']} abandoned: its process (pid {victim.pid} on " in rerun.stdout
    old, new = site.runs()
    assert (old["status"], new["status"]) == ("abandoned", "succeeded")
    assert old["finished_at"] == old["heartbeat_at"] and f"taken over by run #{new['id']}" in old["error"]
    assert site.steps(old["id"]) == [("load", "abandoned", "abandoned with its run")]
    assert site.sales_lines() == 2


@pytest.fixture
def stalling_api():
    """An orders API on loopback whose first request never gets an answer (a source hanging mid-extract);
    every later request gets one order."""
    first_request, release = threading.Event(), threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if not first_request.is_set():
                first_request.set()
                release.wait(WAIT)
                return
            body = b'[{"id": "O1"}]'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", first_request
    release.set()
    server.shutdown()
    server.server_close()


def test_a_run_killed_during_its_extract_is_abandoned_and_the_next_extract_takes_over(site, stalling_api):
    url, first_request = stalling_api
    source = {"kind": "rest", "base_url": url, "max_retries": 0}
    orders = dataset(source=source, order_id={"from": "id", "required": True})
    pipeline_write(site.root / "pipelines", "slow", datasets={"orders": orders}, staging=site.staging)
    victim = site.manage("extract", "--pipeline", "slow", "--date", DAY)
    wait_for(first_request.is_set, "the extract's request", [victim])
    partition = site.staging / "slow" / "raw" / "orders" / f"date={DAY}"
    (dead_attempt,) = partition.glob("attempt-*")

    victim.kill()
    victim.wait(timeout=WAIT)
    rerun = site.run("extract", "--pipeline", "slow", "--date", DAY)
    assert rerun.returncode == 0, rerun.stderr
    assert f"abandoned: its process (pid {victim.pid} on " in rerun.stdout
    assert not dead_attempt.exists() and len(list(partition.glob("attempt-*"))) == 1
    dead, new = site.runs("slow")
    assert (dead["pid"], dead["status"], dead["business_date"]) == (victim.pid, "abandoned", DAY)
    assert new["status"] == "succeeded" and site.steps(dead["id"]) == [
        ("extract", "abandoned", "abandoned with its run")
    ]


def test_a_run_killed_during_its_spark_job_takes_the_job_with_it_and_is_taken_over(site):
    """kill -9 of manage.py only: the stand-in JVM and its driver (a grandchild) end with it."""
    assert site.run("extract", "--pipeline", "shop", "--date", DAY).returncode == 0
    victim = site.manage("transform", "--pipeline", "shop", "--date", DAY)
    wait_for((site.root / "pids" / "driver").exists, "the stand-in Spark job", [victim])
    job = [int((site.root / "pids" / name).read_text()) for name in ("jvm", "driver")]
    assert all(alive(pid) for pid in job)

    victim.kill()
    victim.wait(timeout=WAIT)
    assert wait_gone(job) == [], "the Spark job outlived its manage.py"
    transformed_publish(site)
    rerun = site.run("load", "--pipeline", "shop", "--date", DAY)
    assert rerun.returncode == 0, rerun.stderr
    _extract, killed, load = site.runs()
    assert (killed["command"], killed["status"], load["status"]) == ("transform", "abandoned", "succeeded")


# --- signals ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("site", "signum"),
    [("sqlite", signal.SIGTERM), ("sqlite", signal.SIGINT), ("postgres", signal.SIGTERM)],
    ids=["sqlite-SIGTERM", "sqlite-SIGINT", "postgres-SIGTERM"],
    indirect=["site"],
)
def test_a_signal_ends_a_run_cleanly_children_stopped_attempt_removed_run_failed(site, signum):
    assert site.run("extract", "--pipeline", "shop", "--date", DAY).returncode == 0
    proc = site.manage("transform", "--pipeline", "shop", "--date", DAY)
    wait_for((site.root / "pids" / "driver").exists, "the stand-in Spark job", [proc])
    job = [int((site.root / "pids" / name).read_text()) for name in ("jvm", "driver")]

    proc.send_signal(signum)
    out, err = proc.communicate(timeout=WAIT)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, err
    assert err.splitlines()[-1] == f"CommandError: terminated by signal {name}"
    assert wait_gone(job, seconds=2) == [], "a child of the run outlived it"
    *_, run = site.runs()
    assert (run["command"], run["status"], run["error"]) == (
        "transform",
        "failed",
        f"terminated by signal {name}",
    )
    assert site.steps(run["id"]) == [("transform", "failed", f"terminated by signal {name}")]
    partition = site.staging / "shop" / "transformed" / f"date={DAY}"
    assert not list(partition.glob("attempt-*")), "the attempt directory outlived the run"
    # The lock went with it: the next start runs.
    assert site.run("extract", "--pipeline", "shop", "--date", DAY).returncode == 0
