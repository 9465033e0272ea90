"""What started a run and as whom: the process's origin (ETL_RUN_ORIGIN, `cron` in the documented crontab
line and systemd unit), the admin user, shown by pipeline_status."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from etlcore.runs import run_finish, run_start

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


def _run(**kwargs):
    return run_start(
        pipeline="shop", command="run_pipeline", business_date=None, parameters={}, using="default", **kwargs
    )


def test_a_run_started_by_hand_says_command_and_the_os_user():
    run = _run()
    run.refresh_from_db()
    assert (run.origin, run.started_by) == ("command", getpass.getuser())


def test_a_run_takes_the_origin_and_user_of_its_process_from_the_settings(settings):
    settings.ETL_RUN_ORIGIN, settings.ETL_RUN_STARTED_BY = "admin", "alice"
    run = _run()
    run.refresh_from_db()
    assert (run.origin, run.started_by, run.started_shown) == ("admin", "alice", "admin (alice)")


def test_a_caller_may_name_the_origin_itself(settings):
    settings.ETL_RUN_ORIGIN = "cron"
    run = _run(origin="queue", started_by="worker-1")
    run.refresh_from_db()
    assert (run.origin, run.started_by) == ("queue", "worker-1")


def test_pipeline_status_says_what_started_each_run(settings):
    settings.ETL_RUN_ORIGIN, settings.ETL_RUN_STARTED_BY = "cron", "etl"
    nightly = run_finish(_run())
    settings.ETL_RUN_ORIGIN, settings.ETL_RUN_STARTED_BY = "admin", "alice"
    rerun = run_finish(_run(), error="source 'products': no file")
    out = StringIO()
    call_command("pipeline_status", stdout=out)
    lines = {line.split()[0]: line for line in out.getvalue().splitlines() if line.startswith("#")}
    assert lines[f"#{nightly.pk}"].endswith(" by cron (etl)")
    assert lines[f"#{rerun.pk}"].endswith(" by admin (alice)")


def test_an_unknown_origin_in_the_environment_is_refused_at_start():
    env = {**os.environ, "ETL_RUN_ORIGIN": "crontab", "DJANGO_SETTINGS_MODULE": "conf.settings.local"}
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "ETL_RUN_ORIGIN='crontab': expected cron, command, admin or queue" in done.stderr
