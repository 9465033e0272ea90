"""Run control without Spark: retries per step ([run.retries]), the dates `--nightly` picks, `--resume`'s
plan, and the command line's usage errors. The backfill and resume through real Spark runs are in
tests/test_backfill.py."""

from __future__ import annotations

import threading
import time
from datetime import date, datetime, timedelta
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from etlcore.config import pipeline_load
from etlcore.errors import CatchUpTooFar, ConfigurationError
from etlcore.models import Backfill, PipelineRun, RunStatus, StepRun
from etlcore.services import pipeline as pipeline_service
from etlcore.services.backfill import nightly_dates
from etlcore.services.pipeline import run_resumable
from tests.pipelines import dataset, pipeline_toml

pytestmark = pytest.mark.django_db

DAY = date(2026, 11, 2)
HEADER = "sku,name\n"


def shop(pipeline_dir, data, run: str = "", drift: str = "warn") -> None:
    products = dataset(
        f"{data}/products_{{date:%Y%m%d}}.csv", sku={"required": True}, name={}, options={"drift": drift}
    )
    text = pipeline_toml(datasets={"products": products}, staging=data.parent / "staging", top="")
    (pipeline_dir / "shop.toml").write_text(text + run)


def extract(*args: str) -> str:
    out = StringIO()
    call_command(
        "extract", "--pipeline", "shop", "--date", DAY.isoformat(), *args, stdout=out, stderr=StringIO()
    )
    return out.getvalue()


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


# --- retries -------------------------------------------------------------------------------------------


def test_a_step_that_fails_once_succeeds_on_its_second_attempt_and_keeps_the_first_on_its_record(
    pipeline_dir, data, monkeypatch
):
    shop(pipeline_dir, data, "[run.retries]\nattempts = 3\ndelay_seconds = 1\nsteps = ['extract']\n")
    path = data / f"products_{DAY:%Y%m%d}.csv"
    waits: list[float] = []
    # `time.sleep` is the process's: a library thread an earlier test left behind sleeps too. Only this
    # thread's wait is the retry's.
    this_thread, real_sleep = threading.current_thread(), time.sleep

    def export_lands_meanwhile(seconds: float) -> None:  # a file still being copied at 02:15
        if threading.current_thread() is not this_thread:
            return real_sleep(seconds)
        waits.append(seconds)
        path.write_text(HEADER + "P1,Mug\n")

    monkeypatch.setattr(pipeline_service.time, "sleep", export_lands_meanwhile)
    extract()

    assert waits == [1.0]
    step = StepRun.objects.get(step="extract")
    assert (step.status, step.attempts, step.rows_out) == (RunStatus.SUCCEEDED, 2, 1)
    first = step.details["attempts"][0]
    assert first["attempt"] == 1 and first["retry_in_seconds"] == 1.0
    assert path.name in first["error"] and "\n" not in first["error"]
    assert step.error == "" and step.traceback == ""


def test_retries_that_run_out_fail_the_step_with_every_attempt_its_error_line_and_traceback(
    pipeline_dir, data
):
    shop(pipeline_dir, data, "[run.retries]\nattempts = 3\ndelay_seconds = 0.05\nbackoff = 2\n")
    with pytest.raises(CommandError) as failed:
        extract()

    step = StepRun.objects.get(step="extract")
    assert (step.status, step.attempts) == (RunStatus.FAILED, 3)
    assert [a["retry_in_seconds"] for a in step.details["attempts"]] == [0.05, 0.1]  # exponential
    assert str(failed.value) == step.error == step.run.error and "\n" not in step.error
    assert step.traceback.startswith("Traceback (most recent call last):")
    assert "sources_extract" in step.traceback and step.traceback.rstrip().endswith(
        step.error.split(": ", 1)[-1]
    )


def test_an_error_a_retry_cannot_cure_is_not_tried_again(pipeline_dir, data):
    shop(pipeline_dir, data, "[run.retries]\nattempts = 5\ndelay_seconds = 30\n", drift="fail")
    (data / f"products_{DAY:%Y%m%d}.csv").write_text("sku,name,colour\nP1,Mug,red\n")
    with pytest.raises(CommandError, match="colour"):
        extract()  # 30 s delays: a retry would show as a slow test, the attempt count says it directly
    step = StepRun.objects.get(step="extract")
    assert (step.status, step.attempts, step.details.get("attempts")) == (RunStatus.FAILED, 1, None)


def test_steps_not_named_in_retries_are_tried_once(pipeline_dir, data):
    shop(pipeline_dir, data, "[run.retries]\nattempts = 4\ndelay_seconds = 0\nsteps = ['load']\n")
    with pytest.raises(CommandError):
        extract()
    assert StepRun.objects.get(step="extract").attempts == 1


@pytest.mark.parametrize(
    ("run", "problem"),
    [
        ("[run.retries]\nattempts = 0\n", "attempts must be 1 or more"),
        ("[run.retries]\ndelay_seconds = -1\n", "delay_seconds must be 0 or more"),
        (
            "[run.retries]\nsteps = ['extract', 'publish']\n",
            "'publish' is not one of extract, transform, load",
        ),
        ("[run.retries]\nattemps = 2\n", "attemps"),
        ("[run]\ncatch_up = 'yes'\n", "catch_up"),
        ("[run]\ndates_per_job = 0\n", "dates_per_job must be 1 or more"),
    ],
)
def test_run_settings_are_checked_with_the_file_and_key_named(pipeline_dir, data, run, problem):
    shop(pipeline_dir, data, run)
    with pytest.raises(ConfigurationError, match=problem) as refused:
        pipeline_load("shop")
    assert "shop.toml" in str(refused.value) and "[run" in str(refused.value)


# --- nightly: which dates ------------------------------------------------------------------------------


def _yesterday(zone: str = "UTC") -> date:
    return datetime.now(ZoneInfo(zone)).date() - timedelta(days=1)


def _loaded(day: date, *, status: str = RunStatus.SUCCEEDED) -> None:
    now = timezone.now()
    run = PipelineRun.objects.create(
        pipeline="shop", business_date=day, command="run_pipeline", status=status, started_at=now
    )
    StepRun.objects.create(run=run, step="load", status=status, started_at=now)


def test_nightly_runs_yesterday_when_nothing_was_loaded_yet(pipeline_dir, data):
    shop(pipeline_dir, data)
    assert nightly_dates(config=pipeline_load("shop")) == [_yesterday()]


def test_nightly_catches_up_every_date_after_the_last_loaded_one_in_order(pipeline_dir, data):
    shop(pipeline_dir, data)
    yesterday = _yesterday()
    _loaded(yesterday - timedelta(days=4))
    _loaded(yesterday - timedelta(days=1), status=RunStatus.FAILED)  # a failed load is not loaded
    expected = [yesterday - timedelta(days=n) for n in (3, 2, 1, 0)]
    assert nightly_dates(config=pipeline_load("shop")) == expected


def test_nightly_without_catch_up_runs_only_yesterday(pipeline_dir, data):
    shop(pipeline_dir, data, "[run]\ncatch_up = false\n")
    _loaded(_yesterday() - timedelta(days=4))
    assert nightly_dates(config=pipeline_load("shop")) == [_yesterday()]


def test_nightly_refuses_to_catch_up_more_than_the_limit_and_names_the_backfill(pipeline_dir, data):
    shop(pipeline_dir, data, "[run]\ncatch_up_max_dates = 3\n")
    last = _yesterday() - timedelta(days=5)
    _loaded(last)
    with pytest.raises(CatchUpTooFar) as refused:
        nightly_dates(config=pipeline_load("shop"))
    first = last + timedelta(days=1)
    assert f"--from {first} --to {_yesterday()}" in str(refused.value)
    with pytest.raises(CommandError, match="catch_up_max_dates = 3") as failed:
        call_command("run_pipeline", "--pipeline", "shop", "--nightly", stdout=StringIO())
    assert failed.value.returncode == 1


def test_nightly_with_yesterday_loaded_has_nothing_to_do_and_writes_nothing(pipeline_dir, data):
    shop(pipeline_dir, data)
    _loaded(_yesterday())
    runs = PipelineRun.objects.count()
    out = StringIO()
    call_command("run_pipeline", "--pipeline", "shop", "--nightly", stdout=out)
    assert out.getvalue().startswith("nothing to do: shop has loaded yesterday")
    assert PipelineRun.objects.count() == runs and not Backfill.objects.exists()


def test_nightly_yesterday_is_the_pipelines_time_zone_not_the_machines(pipeline_dir, data):
    # Kiritimati (UTC+14) is a day ahead of UTC from 10:00 UTC, Niue (UTC-11) a day behind until 11:00.
    zone = "Pacific/Kiritimati" if datetime.now(ZoneInfo("UTC")).hour >= 12 else "Pacific/Niue"
    assert _yesterday(zone) != _yesterday()
    shop(pipeline_dir, data)
    text = (pipeline_dir / "shop.toml").read_text()
    (pipeline_dir / "shop.toml").write_text(f'timezone = "{zone}"\n' + text)
    assert nightly_dates(config=pipeline_load("shop")) == [_yesterday(zone)]


# --- resume: which steps -------------------------------------------------------------------------------


def _run(steps_done: dict[str, str], *, status=RunStatus.FAILED, steps=("extract", "transform", "load")):
    now = timezone.now()
    run = PipelineRun.objects.create(
        pipeline="shop",
        business_date=DAY,
        command="run_pipeline",
        status=status,
        started_at=now,
        parameters={"steps": list(steps)},
    )
    for step, step_status in steps_done.items():
        StepRun.objects.create(run=run, step=step, status=step_status, started_at=now)
    return run


def test_resume_starts_at_the_first_step_that_did_not_succeed():
    run = _run({"extract": RunStatus.SUCCEEDED, "transform": RunStatus.FAILED})
    assert run_resumable(run_id=run.pk) == (run, ["transform", "load"])
    abandoned = _run({"extract": RunStatus.SUCCEEDED, "transform": RunStatus.SUCCEEDED}, status="abandoned")
    assert run_resumable(run_id=abandoned.pk)[1] == ["load"]
    never = _run({}, steps=("transform", "load"))  # a failed preflight: nothing ran
    assert run_resumable(run_id=never.pk)[1] == ["transform", "load"]
    done = _run({"extract": RunStatus.SUCCEEDED}, status=RunStatus.SUCCEEDED, steps=("extract",))
    assert run_resumable(run_id=done.pk)[1] == []


def test_resume_refuses_an_unknown_run_and_one_that_never_had_a_date():
    with pytest.raises(ConfigurationError, match="there is no run #999"):
        run_resumable(run_id=999)
    bad = PipelineRun.objects.create(
        pipeline="shop",
        command="run_pipeline",
        status="failed",
        started_at=timezone.now(),
        error="bad --date",
    )
    with pytest.raises(ConfigurationError, match="never started a date: bad --date"):
        run_resumable(run_id=bad.pk)


def test_resuming_a_succeeded_run_has_nothing_to_do(pipeline_dir, data):
    shop(pipeline_dir, data)
    done = _run({"extract": RunStatus.SUCCEEDED}, status=RunStatus.SUCCEEDED, steps=("extract",))
    out = StringIO()
    call_command("run_pipeline", "--pipeline", "shop", "--resume", str(done.pk), stdout=out)
    assert out.getvalue() == f"nothing to do: run #{done.pk} succeeded\n"


# --- the command line ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["--date", "2026-11-01", "--from", "2026-11-01", "--to", "2026-11-02"], "cannot be combined", 2),
        (["--nightly", "--resume", "4"], "cannot be combined", 2),
        (["--from", "2026-11-01"], "needs both --from and --to", 2),
        (["--date", "2026-11-01", "--continue-on-failure"], "applies to a backfill", 2),
        (["--from", "2026-11-03", "--to", "2026-11-01"], "--to 2026-11-01 is before --from 2026-11-03", 1),
        (["--from", "2026-11-31", "--to", "2026-12-01"], "invalid --from '2026-11-31'", 1),
    ],
)
def test_run_pipeline_usage_errors_are_one_line_and_write_nothing(pipeline_dir, data, args, message, code):
    shop(pipeline_dir, data)
    with pytest.raises(CommandError, match=message) as refused:
        call_command("run_pipeline", "--pipeline", "shop", *args, stdout=StringIO())
    assert refused.value.returncode == code and "\n" not in str(refused.value)
    assert not PipelineRun.objects.exists() and not Backfill.objects.exists()
