"""Structured logs (etlcore/logs.py): JSON lines carrying the run's context, every HTTP retry observed and
counted on the step record, secrets masked in every event, progress bars only on a terminal.

The honest check is a real `manage.py extract` in a subprocess, as cron runs it, against a loopback API
(tests/connectors/test_rest.py's scripted server) that answers 429 with Retry-After and 5xx before
succeeding for one source, and fails for good for the other; with every secret set to a canary value.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import select
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import structlog
from cryptography.fernet import Fernet
from django.conf import settings

from etlcore.logs import log_formatter, secret_names_register, secrets_mask
from etlcore.spark import _command_run, log_tail
from tests.connectors.test_rest import Reply, Seen, api  # noqa: F401  (the scripted server fixture)
from tests.etlcore.test_run_control import sqlite_template  # noqa: F401  (one migrated SQLite file)
from tests.pipelines import dataset, pipeline_write, sales_datasets

DAY = "2026-11-01"
WAIT = 60
CANARIES = {
    "CANARY_API_TOKEN": "tok-canary-5e1f0b2a",
    "CANARY_QUERY_KEY": "qk-canary-8d03c7e1",
    "ETL_PSEUDONYM_KEY": "pk-canary-41aa9c0d",
    "ETL_ERASURE_KEY": "ek-canary-77f2e5b6",
    "DJANGO_SECRET_KEY": "dj-canary-0c9d8e7f6a5b4c3d2e1f",
}
PII_KEY = Fernet.generate_key().decode()  # a canary too: it must be a real Fernet key to be read
ORDERS = [{"id": i, "email": f"c{i}@example.com"} for i in range(7)]
PAGE = 3
RETRY_AFTER = 0.2
# Faults the server injects before answering the page at an offset: (status, Retry-After or None).
ORDER_FAULTS = {0: [(429, RETRY_AFTER), (500, None)], 3: [(503, None), (429, RETRY_AFTER), (502, None)]}


def _rest_source(path: str) -> dict:
    return {
        "kind": "rest",
        "base_url": "${CANARY_API_URL}",
        "path": path,
        "records_path": "items",
        "params": {"api_key": "${CANARY_QUERY_KEY}"},
        "auth": {"type": "bearer", "token_env": "CANARY_API_TOKEN"},
        "pagination": {"style": "offset", "limit": PAGE},
        "batch_size": PAGE,  # a batch a page: three for the orders
        "max_retries": 6 if path == "/orders" else 2,
        "backoff_factor": 0.01,
        "backoff_jitter": 0,
    }


class FaultyApi:
    """The scripted server's handler: /orders faults then pages, /refunds a 500 that never ends. It counts
    what it injected, per path and cause, as the connector should have counted it."""

    def __init__(self) -> None:
        self.faults = {offset: list(faults) for offset, faults in ORDER_FAULTS.items()}
        self.injected: Counter[tuple[str, str]] = Counter()
        self.requests: Counter[str] = Counter()
        self.throttle_seconds: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, seen: Seen) -> Reply:
        name = seen.path.strip("/")
        with self._lock:
            self.requests[name] += 1
            if seen.headers.get("Authorization") != f"Bearer {CANARIES['CANARY_API_TOKEN']}":
                return Reply(401, {"errors": "bad token"})
            if name == "refunds":
                self.injected[(name, "status_5xx")] += 1
                # A hostile API echoing the request: the key in the query comes back in the body.
                return Reply(500, {"error": f"refunds are down; you asked {seen.target}"})
            offset = int(seen.query["offset"][0])
            if self.faults.get(offset):
                status, retry_after = self.faults[offset].pop(0)
                cause = "status_429" if status == 429 else "status_5xx"
                self.injected[(name, cause)] += 1
                headers = {}
                if retry_after is not None:
                    headers["Retry-After"] = str(retry_after)
                    self.throttle_seconds[name] += retry_after
                return Reply(status, {"errors": "try later"}, headers)
        return Reply(body={"items": ORDERS[offset : offset + PAGE]})


@pytest.fixture
def site(tmp_path, sqlite_template, api):  # noqa: F811
    (tmp_path / "db.sqlite3").write_bytes(sqlite_template.read_bytes())
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    (data / "stores_20261101.csv").write_text("store_code,name\nS1,Rivoli\nS2,Opera\n", encoding="utf-8")
    columns = {"id": {"type": "int", "required": True}, "email": {"from": "email", "pii": True}}
    pipeline_write(
        pipelines,
        datasets={
            "orders": dataset(source=_rest_source("/orders"), **columns),
            "refunds": dataset(source=_rest_source("/refunds"), id={"type": "int"}),
            "stores": dataset(f"{data}/stores_{{date:%Y%m%d}}.csv", store_code={}, name={}),
        },
        staging=tmp_path / "staging",
    )
    faulty = FaultyApi()
    api.handler = faulty
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ETL_", "DJANGO_", "DATABASE_URL"))},
        **CANARIES,
        "ETL_PII_KEYS": PII_KEY,
        "CANARY_API_URL": api.url,
        "DJANGO_SETTINGS_MODULE": "conf.settings.local",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "ETL_VAR_DIR": str(tmp_path / "var"),
        "ETL_PIPELINE_PATH": str(pipelines),
        "PYTHONPATH": str(settings.BASE_DIR),
    }
    return {"root": tmp_path, "env": env, "api": faulty, "seen": api.seen}


def manage(site, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(settings.BASE_DIR / "manage.py"), *args],
        cwd=site["root"],
        env={**site["env"], **env},
        capture_output=True,
        text=True,
        timeout=WAIT,
    )


def step_details(root: Path, step: str) -> tuple[int, dict]:
    with sqlite3.connect(root / "db.sqlite3") as db:
        run_id, details = db.execute(
            "SELECT run_id, details FROM etlcore_steprun WHERE step = ? ORDER BY id DESC", (step,)
        ).fetchone()
    return run_id, json.loads(details)


def test_extract_logs_json_lines_with_every_http_retry_counted_as_the_server_injected_and_no_secret(site):
    done = manage(
        site, "extract", "--pipeline", "shop", "--date", DAY, ETL_LOG_FORMAT="json", ETL_LOG_LEVEL="DEBUG"
    )

    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON object: nothing else on stderr
    assert all({"timestamp", "level", "logger", "event"} <= e.keys() for e in events)
    assert all(e["timestamp"].endswith("Z") for e in events)  # ISO-8601, UTC

    # No canary anywhere: not in the logs (urllib3's DEBUG lines carry the query key), nor on stdout.
    secrets = [*CANARIES.values(), PII_KEY]
    leaked = [s for s in secrets if s in done.stderr or s in done.stdout]
    assert leaked == []
    assert any("api_key=***" in line for line in lines)  # the query key was there, masked

    run_id, details = step_details(site["root"], "extract")
    context = {"run_id": run_id, "pipeline": "shop", "business_date": DAY, "step": "extract"}
    named = {"run_started", "run_finished", "step_started", "step_finished", "http_retry", "source_finished"}
    assert named <= {e["event"] for e in events}
    for event in events:
        if event["event"] in {"http_retry", "source_finished", "source_failed", "step_finished"}:
            assert {k: event.get(k) for k in context} == context, event

    # Every retry is an event, with its dataset and cause, as many as the server injected.
    retries = [e for e in events if e["event"] == "http_retry"]
    logged = Counter((e["dataset"], e["cause"]) for e in retries)
    retried = site["api"].injected.copy()
    retried[("refunds", "status_5xx")] -= 1  # its last 500 is not retried: the source fails with it
    assert logged == retried
    assert logged[("orders", "status_429")] == 2 and logged[("orders", "status_5xx")] == 3
    throttled = [e for e in retries if e["throttle_wait"]]
    assert {(e["status"], e["wait_seconds"]) for e in throttled} == {(429, RETRY_AFTER)}
    assert [e["attempt"] for e in retries if e["dataset"] == "refunds"] == [2, 3]

    # The step record holds the same figures per source, succeeded or failed.
    for name in ("orders", "refunds"):
        http = details["sources"][name]["http"]
        injected = {cause: n for (source, cause), n in retried.items() if source == name}
        assert http == {
            "requests": site["api"].requests[name],
            "retries": injected,
            "throttle_waits": injected.get("status_429", 0),
            "throttle_wait_seconds": pytest.approx(site["api"].throttle_seconds[name]),
        }, name
    assert details["sources"]["orders"] | {"http": None} == {"batches": 3, "records": 7, "http": None}
    assert "http" not in details["sources"]["stores"]  # a file source sends no request

    finished = {e["dataset"]: e for e in events if e["event"] == "source_finished"}
    assert (finished["orders"]["rows"], finished["orders"]["requests"]) == (7, site["api"].requests["orders"])
    run_end = next(e for e in events if e["event"] == "run_finished")
    assert run_end["status"] == "failed" and "refunds" in run_end["error"] and run_end["duration_seconds"] > 0
    failed = next(e for e in events if e["event"] == "command_failed")
    assert failed["exit_code"] == 1 and "refunds" in failed["error"]


def _pty_run(site, *args: str) -> str:
    """The command with stderr on a pseudo-terminal (as an operator's shell has it); what it drew there."""
    leader, follower = os.openpty()
    # A terminal has a size (a new pty's is 0 x 0, on which tqdm draws nothing): 24 rows, 120 columns.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, str(settings.BASE_DIR / "manage.py"), *args],
        cwd=site["root"],
        env=site["env"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    out = b""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the follower closed: the process ended
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=WAIT)
    os.close(leader)
    return out.decode("utf-8", "replace")


def test_progress_bars_show_on_a_terminal_only_and_not_with_no_progress(site):
    args = ("extract", "--pipeline", "shop", "--date", DAY)

    on_terminal = _pty_run(site, *args)
    assert "extract orders" in on_terminal and "batch" in on_terminal, on_terminal
    assert "step_finished" in on_terminal  # the log lines are written above the bars

    told_not_to = _pty_run(site, *args, "--no-progress")
    assert "step_finished" in told_not_to  # the logs still come (console format on a terminal)
    assert "extract orders" not in told_not_to and "batch/s" not in told_not_to

    piped = manage(site, *args)  # as under cron: stderr is not a terminal
    assert "step_finished" in piped.stderr
    assert "extract orders" not in piped.stderr and "\r" not in piped.stderr


# --- in-process: the masking processor and the Spark log's tail --------------------------------------


def _json_handler(stream: io.StringIO) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(log_formatter(log_format="json"))
    return handler


def test_every_event_is_masked_stdlib_and_structlog_values_urls_dsns_and_tracebacks(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://etl:db-canary-pw-91c2@db.internal:5432/warehouse")
    monkeypatch.setenv("SHOP_API_SECRET_VALUE", "declared-canary-6f0e")
    monkeypatch.setenv("ETL_PII_KEYS", "fernet-canary-aaaa,fernet-canary-bbbb")
    secret_names_register(["SHOP_API_SECRET_VALUE"])
    stream = io.StringIO()
    logger = logging.getLogger("etlcore.test_logs")
    logger.addHandler(_json_handler(stream))
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        log = structlog.get_logger("etlcore.test_logs")
        log.info(
            "connecting", dsn="host=db user=etl password=dsn-canary-33aa", nested={"k": ["db-canary-pw-91c2"]}
        )
        log.warning("source", url="https://user:url-canary-77@api.example.com/x?access_token=qs-canary-12")
        logger.info("stdlib says %s", "declared-canary-6f0e", extra={"key": "fernet-canary-bbbb"})
        try:
            raise RuntimeError("failed with declared-canary-6f0e")
        except RuntimeError:
            log.exception("boom")
    finally:
        logger.handlers.clear()
        logger.propagate = True
    text = stream.getvalue()
    events = [json.loads(line) for line in text.splitlines()]
    assert [e["event"] for e in events] == ["connecting", "source", "stdlib says ***", "boom"]
    assert "canary" not in text, text
    assert (
        events[0]["nested"] == {"k": ["***"]}
        and events[1]["url"] == "https://***@api.example.com/x?access_token=***"
    )
    assert "RuntimeError: failed with ***" in events[3]["exception"]


def test_spark_log_tail_is_on_the_result_masked_when_the_job_succeeds_and_when_it_fails(
    tmp_path, monkeypatch
):
    from etlcore.config import pipeline_parse
    from etlcore.errors import SparkJobError

    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "pk-canary-tail-5c5c")
    path = pipeline_write(
        tmp_path, datasets={"stores": dataset("s.csv", code={})}, staging=tmp_path / "staging"
    )
    config = pipeline_parse(path)
    printer = (
        "import sys\nfor i in range(30): print('line', i)\nprint('key', 'pk-canary-tail-5c5c')\nsys.exit({})"
    )
    log_path = tmp_path / "staging" / "shop" / "logs" / "ok.log"

    result = _command_run(config, [sys.executable, "-c", printer.format(0)], dict(os.environ), log_path, 30)
    assert result.facts()["log"] == str(log_path)
    assert result.facts()["log_tail"] == [f"line {i}" for i in range(11, 30)] + ["key ***"]

    failed_path = log_path.with_name("failed.log")
    with pytest.raises(SparkJobError) as caught:
        _command_run(config, [sys.executable, "-c", printer.format(3)], dict(os.environ), failed_path, 30)
    assert caught.value.facts["exit_code"] == 3 and caught.value.facts["log_tail"][-1] == "key ***"
    assert log_tail(tmp_path / "missing.log") == []
    assert secrets_mask("pk-canary-tail-5c5c") == "***"


def test_backfill_shows_its_dates_on_a_terminal_and_logs_each_date_s_run(site):
    # The sales job's datasets (its preflight wants them) from exports these dates do not have, and the
    # failing API: every date fails at its extraction, before any Spark.
    datasets = {
        **sales_datasets(site["root"] / "data"),
        "refunds": dataset(source=_rest_source("/refunds"), id={}),
    }
    pipeline_write(site["root"] / "pipelines", "sales", datasets=datasets, staging=site["root"] / "staging")
    args = ("run_pipeline", "--pipeline", "sales", "--from", "2026-11-02", "--to", "2026-11-03")
    on_terminal = _pty_run(site, *args, "--continue-on-failure")
    assert "backfill 2026-11-03 extract" in on_terminal and "2/2" in on_terminal, on_terminal

    piped = manage(site, *args, "--continue-on-failure", ETL_LOG_FORMAT="json")
    events = [json.loads(line) for line in piped.stderr.splitlines()]
    assert "date/s" not in piped.stderr and "\r" not in piped.stderr  # no bar, only events
    steps = [e for e in events if e["event"] == "step_finished"]
    assert [(e["business_date"], e["step"], e["status"]) for e in steps] == [
        ("2026-11-02", "extract", "failed"),
        ("2026-11-03", "extract", "failed"),
    ]
    assert len({e["run_id"] for e in steps}) == 2 and len({e["backfill_id"] for e in steps}) == 1
    for step in steps:  # a source's retries name the date's own run
        retries = [
            e for e in events if e["event"] == "http_retry" and e["business_date"] == step["business_date"]
        ]
        assert retries and {e["run_id"] for e in retries} == {step["run_id"]}


@pytest.mark.parametrize(
    ("variable", "value"), [("ETL_LOG_FORMAT", "xml"), ("ETL_LOG_LEVEL", "loud")], ids=["format", "level"]
)
def test_a_wrong_log_setting_is_refused_in_one_line_naming_the_variable(site, variable, value):
    done = manage(site, "check", **{variable: value})
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert f"{variable} must be" in done.stderr.strip().splitlines()[-1]
