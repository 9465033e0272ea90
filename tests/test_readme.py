"""The README's first hour, run as a new user would: its step-by-step block, line by line, through
`manage.py` subprocesses on a fresh SQLite database in a temporary ETL_VAR_DIR, so the README cannot rot.

The block is the fenced `sh` code between `<!-- walkthrough ... -->` and `<!-- /walkthrough -->`. The
runner knows four shapes of line (a command, `export NAME=value`, a command ending in `&`, `kill %N`) and
fails on any other, so a README edit it cannot run fails here instead of going untested. Two deviations
from a user's shell, both outside the block: `.venv/bin/python` is the interpreter running the tests, and
ETL_DEMO_API_URL names a free port (the demo server and the pipeline both take their port from it), so
parallel runs do not fight over 8765.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings

from etlcore.demo.generate import DEMO_API_TOKEN_DEFAULT
from etlcore.demo.pipeline import DEMO_PII_KEYS, DEMO_PSEUDONYM_KEY

README = Path(settings.BASE_DIR) / "README.md"
WALKTHROUGH = re.compile(r"<!-- walkthrough\b[^>]*-->\s*```sh\n(.*?)```\s*<!-- /walkthrough -->", re.S)
VENV_PYTHON = ".venv/bin/python"
COMMAND_TIMEOUT = 600  # a spark-submit on a busy 2-core machine


def walkthrough_lines(text: str) -> list[list[str]]:
    """The walk-through's lines as shell words, comments and blank lines dropped, blocks in order."""
    blocks = WALKTHROUGH.findall(text)
    if not blocks:
        pytest.fail(f"{README} has no <!-- walkthrough --> ```sh block <!-- /walkthrough -->")
    return [words for block in blocks for line in block.splitlines() if (words := shlex.split(line, True))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def user_environ(var_dir: Path) -> dict[str, str]:
    """A new user's environment: none of the test run's Django or ETL settings, a fresh ETL_VAR_DIR."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("ETL_", "DJANGO_")) and name != "DATABASE_URL"
    }
    env |= {
        "ETL_VAR_DIR": str(var_dir),
        "ETL_DEMO_API_URL": f"http://127.0.0.1:{free_port()}",
        "PYTHONUNBUFFERED": "1",
    }
    return env


def port_wait(url: str, process: subprocess.Popen, *, timeout: float = 60) -> None:
    """Until the background server accepts connections (a user waits for its "Demo sales API on" line)."""
    address = urlsplit(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the background command exited with {process.returncode} before listening")
        try:
            with socket.create_connection((address.hostname, address.port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"nothing listens on {url} after {timeout} s")


class ShellSession:
    """Runs walk-through lines in order, as an interactive shell would; stops what it started."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.jobs: list[subprocess.Popen] = []
        self.outputs: list[tuple[str, str]] = []  # (line, stdout + stderr)

    def run(self, words: list[str]) -> None:
        line = shlex.join(words)
        if words[0] == "export":
            for assignment in words[1:]:
                name, equals, value = assignment.partition("=")
                if not equals:
                    pytest.fail(f"walk-through line {line!r}: export without a value")
                self.env[name] = value
        elif words[0] == "kill" and len(words) == 2 and words[1].startswith("%"):
            job = self.jobs[int(words[1][1:]) - 1]
            job.terminate()
            job.wait(timeout=30)
        elif words[-1] == "&":
            command = self._argv(words[:-1])
            if "serve_demo_api" not in command:
                pytest.fail(f"walk-through line {line!r}: the runner waits for serve_demo_api only")
            log = open(self.log_dir / f"job{len(self.jobs) + 1}.log", "w")  # noqa: SIM115 (outlives the call)
            job = subprocess.Popen(command, cwd=settings.BASE_DIR, env=dict(self.env), stdout=log, stderr=log)
            self.jobs.append(job)
            port_wait(self.env["ETL_DEMO_API_URL"], job)
        else:
            done = subprocess.run(
                self._argv(words),
                cwd=settings.BASE_DIR,
                env=dict(self.env),
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
            )
            self.outputs.append((line, done.stdout + done.stderr))
            assert done.returncode == 0, f"{line!r} failed:\n{done.stdout}{done.stderr}"

    def stop(self) -> None:
        for job in self.jobs:
            if job.poll() is None:
                job.kill()
                job.wait(timeout=30)

    def output_of(self, command: str) -> str:
        return "".join(out for line, out in self.outputs if command in line)

    @staticmethod
    def _argv(words: list[str]) -> list[str]:
        if words[0] != VENV_PYTHON:
            pytest.fail(f"walk-through line {shlex.join(words)!r}: the runner runs {VENV_PYTHON} commands")
        return [sys.executable, *words[1:]]


@pytest.fixture
def session(tmp_path):
    shell = ShellSession(user_environ(tmp_path / "var"), tmp_path)
    yield shell
    shell.stop()


@pytest.mark.spark_submit
def test_readme_walkthrough_runs_as_written_on_a_fresh_database(session, tmp_path):
    lines = walkthrough_lines(README.read_text(encoding="utf-8"))
    for words in lines:
        session.run(words)

    var = tmp_path / "var"
    status = session.output_of("pipeline_status")
    for command in ("extract", "transform", "load"):
        assert re.search(rf"retail_demo\s+2026-11-01\s+{command}\s+succeeded", status), status
    assert (var / "db.sqlite3").is_file()
    assert (var / "staging/retail_demo/transformed/date=2026-11-01/_manifest.json").is_file()
    assert all(job.poll() is not None for job in session.jobs), "the walk-through leaves a server running"
    assert "Traceback" not in "".join(out for _, out in session.outputs)


def test_readme_walkthrough_exports_the_demo_s_published_token_and_key():
    """One documented demo key: the README's and the one `make demo` uses when the variable is unset."""
    exported = {
        name: value
        for words in walkthrough_lines(README.read_text(encoding="utf-8"))
        if words[0] == "export"
        for name, _, value in (w.partition("=") for w in words[1:])
    }
    assert exported["ETL_PSEUDONYM_KEY"] == DEMO_PSEUDONYM_KEY
    assert exported["ETL_PII_KEYS"] == DEMO_PII_KEYS
    assert exported["ETL_DEMO_API_TOKEN"] == DEMO_API_TOKEN_DEFAULT


def test_etl_var_dir_moves_the_database_staging_and_demo_exports(session, tmp_path):
    """ETL_VAR_DIR alone moves the SQLite file, the demo's sources and every staging partition: no
    pipeline file or command re-defaults them under the repository's var/."""
    session.env |= {
        "ETL_DEMO_API_TOKEN": DEMO_API_TOKEN_DEFAULT,
        "ETL_PSEUDONYM_KEY": DEMO_PSEUDONYM_KEY,
        "ETL_PII_KEYS": DEMO_PII_KEYS,
    }
    for line in ("migrate", "serve_demo_api &", "extract --date 2026-11-02"):
        session.run([VENV_PYTHON, "manage.py", *line.split()])

    var = tmp_path / "var"
    assert (var / "db.sqlite3").is_file()
    assert sorted(p.name for p in (var / "demo/exports").iterdir())[:1] == ["products_20261101.csv"]
    manifests = sorted((var / "staging/retail_demo/raw").glob("*/date=2026-11-02/_manifest.json"))
    assert [m.parts[-3] for m in manifests] == ["order_lines", "products", "rates", "stores"]
    sources = [json.loads(m.read_text())["source"] for m in manifests]
    assert all(s.startswith(f"file:{var}/demo/exports/") for s in sources if s.startswith("file:")), sources
