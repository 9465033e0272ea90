"""The pipeline lock in one process (real PostgreSQL sessions, real file locks): who holds it, what a
second taker sees, what pipeline_status shows for a run whose lock is free, the heartbeat thread.
Across real processes: tests/etlcore/test_run_control.py."""

from __future__ import annotations

import time
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from etlcore.locks import lock_held, lock_try
from etlcore.models import PipelineRun
from etlcore.runs import run_start
from etlcore.selectors import run_status_shown
from tests.conftest import _postgres_or_skip
from tests.pipelines import dataset, pipeline_write

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)


def test_a_second_taker_is_refused_until_the_holder_releases(db_alias):
    first = lock_try(pipeline="shop", using=db_alias)
    assert first is not None and lock_held(pipeline="shop", using=db_alias)
    other = lock_try(pipeline="other", using=db_alias)  # one lock per pipeline
    assert other is not None
    try:
        assert lock_try(pipeline="shop", using=db_alias) is None
    finally:
        first.release()
        other.release()
    assert not lock_held(pipeline="shop", using=db_alias)
    again = lock_try(pipeline="shop", using=db_alias)
    assert again is not None
    again.release()


def test_a_running_run_shows_as_abandoned_once_its_lock_is_free(db_alias):
    run = run_start(pipeline="shop", command="load", business_date=None, parameters={}, using=db_alias)
    held = lock_try(pipeline="shop", using=db_alias)
    try:
        assert run_status_shown(run) == "running"
    finally:
        held.release()
    assert run_status_shown(run) == "abandoned"
    out = StringIO()
    call_command("pipeline_status", "--database", db_alias, stdout=out)
    assert f"#{run.pk:<5} shop" in out.getvalue() and " abandoned " in out.getvalue()


def test_a_command_finding_the_pipeline_held_raises_exit_75_and_writes_no_run(
    db_alias, pipeline_dir, tmp_path
):
    products = dataset(tmp_path / "products.csv", sku={"required": True})
    pipeline_write(pipeline_dir, datasets={"products": products}, database=db_alias, staging=tmp_path / "s")
    held = lock_try(pipeline="shop", using=db_alias)
    try:
        with pytest.raises(CommandError, match=r"^pipeline 'shop' is already running") as refused:
            call_command("extract", "--pipeline", "shop", "--date", "2026-11-01", stdout=StringIO())
    finally:
        held.release()
    assert refused.value.returncode == 75
    assert not PipelineRun.objects.using(db_alias).exists()


def test_the_heartbeat_thread_writes_through_the_lock_connection_on_postgres():
    _postgres_or_skip()
    run = run_start(pipeline="shop", command="load", business_date=None, parameters={}, using="postgres")
    started = run.heartbeat_at
    held = lock_try(pipeline="shop", using="postgres")
    try:
        with held.heartbeat(run, seconds=0.05):
            time.sleep(0.5)
    finally:
        held.release()
    run.refresh_from_db(using="postgres")
    assert run.heartbeat_at > started
