"""The ops console's actions: re-run a date, resume a failed run, replay quarantined rows. Only users
with `etlcore.operate_pipelines` see or use them; they POST with CSRF, start the same command an operator
would type as a detached process, and the run it records says origin `admin` and who.

The child processes write to the PostgreSQL test database (the test's own SQLite one is in memory), so
these tests read the runs there; the pipeline fails at extract (no source file), so no Spark runs."""

from __future__ import annotations

import stat
import time
from datetime import date

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from etlcore.models import PipelineRun, StepRun
from tests.celery_site import queue_site  # noqa: F401
from tests.conftest import _postgres_or_skip
from tests.pipelines import pipeline_write, sales_datasets
from warehouse.models import QuarantinedRow

DAY = date(2026, 11, 2)
CHILD_TIMEOUT = 90


def _operator(django_user_model, *, operate: bool):
    user = django_user_model.objects.create_user(f"op-{operate}", password="x", is_staff=True)
    codenames = ["view_pipelinerun", "view_quarantinedrow"] + (["operate_pipelines"] if operate else [])
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def _failed_run(using: str = "default", **fields) -> PipelineRun:
    return PipelineRun.objects.using(using).create(
        pipeline="shop",
        business_date=DAY,
        command="run_pipeline",
        started_at=timezone.now(),
        finished_at=timezone.now(),
        status="failed",
        error="source 'products': no file",
        parameters={"pipeline": "shop", "date": str(DAY), "steps": ["extract", "transform", "load"]},
        **fields,
    )


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["rerun", "resume", "replay"])
def test_an_action_needs_the_operate_permission_and_a_post(client, django_user_model, action):
    run = _failed_run()
    url = f"/admin/etlcore/pipelinerun/{run.pk}/{action}/"
    client.force_login(_operator(django_user_model, operate=False))
    assert client.post(url).status_code == 403
    client.force_login(_operator(django_user_model, operate=True))
    assert client.get(url).status_code == 405
    assert PipelineRun.objects.count() == 1  # nothing started


@pytest.mark.django_db
def test_the_quarantine_replay_needs_the_operate_permission(client, django_user_model):
    client.force_login(_operator(django_user_model, operate=False))
    response = client.post("/admin/warehouse/quarantinedrow/replay/", {"pipeline": "shop", "date": str(DAY)})
    assert response.status_code == 403


@pytest.mark.django_db
def test_an_action_without_the_csrf_token_is_refused(django_user_model):
    client = Client(enforce_csrf_checks=True)
    client.force_login(_operator(django_user_model, operate=True))
    run = _failed_run()
    assert client.post(f"/admin/etlcore/pipelinerun/{run.pk}/rerun/").status_code == 403


@pytest.mark.django_db
def test_an_operator_sees_the_actions_of_a_failed_run(client, django_user_model):
    run = _failed_run()
    client.force_login(_operator(django_user_model, operate=True))
    page = client.get(f"/admin/etlcore/pipelinerun/{run.pk}/change/").content.decode()
    assert 'id="run-actions"' in page and "Re-run shop 2026-11-02" in page
    assert f"Resume run #{run.pk} from its failed step" in page and "csrfmiddlewaretoken" in page


def _failed_run_to_act_on() -> PipelineRun:
    """A failed run with a quarantined row of its date, in the PostgreSQL database the actions' processes
    or workers use, and (same id) in the admin's own, whose pages the test posts to."""
    earlier = _failed_run("postgres")
    StepRun.objects.using("postgres").create(
        run=earlier, step="extract", status="failed", started_at=earlier.started_at, error=earlier.error
    )
    _failed_run("default", pk=earlier.pk)
    QuarantinedRow.objects.using("postgres").create(
        pipeline="shop", business_date=DAY, dataset="products", reason_code="bad", message="bad: sku='x'",
        raw_record='{"sku": "x"}', record_fingerprint="0" * 64,
    )  # fmt: skip
    return earlier


def _wait_for_runs(using: str, count: int, **filters) -> list[PipelineRun]:
    deadline = time.monotonic() + CHILD_TIMEOUT
    while time.monotonic() < deadline:
        runs = list(PipelineRun.objects.using(using).filter(**filters).exclude(status="running"))
        if len(runs) >= count:
            return runs
        time.sleep(0.2)
    raise AssertionError(f"no finished run matching {filters} after {CHILD_TIMEOUT}s")


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_actions_run_the_commands_in_the_background_recording_origin_admin_and_the_user(
    client, django_user_model, pipeline_dir, tmp_path, settings, monkeypatch
):
    _postgres_or_skip()
    from tests.warehouse.test_load_faults import postgres_url

    # Every dataset the sales job reads, from files that do not exist: each run fails at extract.
    pipeline_write(pipeline_dir, datasets=sales_datasets(tmp_path / "missing"), staging=tmp_path / "staging")
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "console-test-key")
    settings.VAR_DIR = tmp_path / "var"
    settings.ETL_BACKGROUND_ENV = {
        "DJANGO_SETTINGS_MODULE": "conf.settings.local",
        "DATABASE_URL": postgres_url(),  # the child's default database is the test's PostgreSQL one
        "ETL_VAR_DIR": str(tmp_path / "var"),
        "ETL_PIPELINE_PATH": str(pipeline_dir),
    }
    earlier = _failed_run_to_act_on()
    client.force_login(_operator(django_user_model, operate=True))

    # One at a time: each takes the pipeline's lock, a second started meanwhile would exit 75.
    rerun = client.post(f"/admin/etlcore/pipelinerun/{earlier.pk}/rerun/", follow=True)
    assert rerun.status_code == 200
    assert "Re-run of shop 2026-11-02 started in the background" in rerun.content.decode()
    _wait_for_runs("postgres", 1, origin="admin")
    resumed = client.post(f"/admin/etlcore/pipelinerun/{earlier.pk}/resume/")
    assert resumed.status_code == 302 and resumed["Location"].endswith("?pipeline=shop")
    _wait_for_runs("postgres", 2, origin="admin")
    replayed = client.post(
        "/admin/warehouse/quarantinedrow/replay/", {"pipeline": "shop", "date": str(DAY), "rule": "bad"}
    )
    assert replayed.status_code == 302

    started = _wait_for_runs("postgres", 3, origin="admin")
    assert {(r.started_by, r.status, r.business_date) for r in started} == {("op-True", "failed", DAY)}
    by_kind = {(r.command, r.resumed_from_id): r for r in started}
    assert set(by_kind) == {("run_pipeline", None), ("run_pipeline", earlier.pk), ("replay_quarantine", None)}
    assert "products" in by_kind[("run_pipeline", None)].error  # failed at extract: no source file
    assert by_kind[("replay_quarantine", None)].parameters["rule"] == "bad"
    logs = list((tmp_path / "var" / "console").glob("*.log"))
    assert len(logs) == 3 and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in logs)


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_with_actions_on_the_queue_they_run_as_tasks_on_a_worker_recording_the_admin_user(
    client,
    django_user_model,
    queue_site,  # noqa: F811
    pipeline_dir,
    tmp_path,
    settings,
    monkeypatch,
):
    from django_celery_results.models import TaskResult

    pipeline_write(pipeline_dir, datasets=sales_datasets(tmp_path / "missing"))
    settings.ETL_CONSOLE_ACTIONS = "queue"
    queue_site.env["ETL_PSEUDONYM_KEY"] = "console-test-key"
    earlier = _failed_run_to_act_on()
    queue_site.worker("w1", concurrency=2)  # a run's task and its extract tasks at once
    client.force_login(_operator(django_user_model, operate=True))

    rerun = client.post(f"/admin/etlcore/pipelinerun/{earlier.pk}/rerun/", follow=True)
    assert "Re-run of shop 2026-11-02 started on the task queue (task " in rerun.content.decode()
    _wait_for_runs("postgres", 1, origin="queue")
    client.post(f"/admin/etlcore/pipelinerun/{earlier.pk}/resume/")
    _wait_for_runs("postgres", 2, origin="queue")
    client.post(
        "/admin/warehouse/quarantinedrow/replay/", {"pipeline": "shop", "date": str(DAY), "rule": "bad"}
    )

    started = _wait_for_runs("postgres", 3, origin="queue")
    assert {(r.started_by, r.status, r.business_date) for r in started} == {("admin op-True", "failed", DAY)}
    by_kind = {(r.command, r.resumed_from_id): r for r in started}
    assert set(by_kind) == {("run_pipeline", None), ("run_pipeline", earlier.pk), ("replay_quarantine", None)}
    results = TaskResult.objects.using("postgres").exclude(task_name="etl.extract_source")  # the run's own
    tasks = {r.task_id: r.task_name for r in results}
    assert {r.parameters["task_id"] for r in started} == set(tasks)
    assert sorted(tasks.values()) == ["etl.pipeline_resume", "etl.pipeline_run", "etl.quarantine_replay"]
    assert not (tmp_path / "var" / "console").exists()  # no process of the web server's
