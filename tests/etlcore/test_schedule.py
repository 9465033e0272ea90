"""pipeline_schedule and etlcore/services/schedule.py: the pipelines' schedules as django-celery-beat
periodic tasks, and what a real `celery beat` and worker (tests/celery_site.py) do with them."""

from __future__ import annotations

import html
import json
import time
from datetime import UTC, datetime, timedelta
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    PeriodicTasks,
)
from django_celery_results.models import TaskResult

from etlcore.errors import SourceError
from etlcore.locks import lock_try
from etlcore.models import PipelineRun, RunStatus
from etlcore.runs import run_finish, run_start
from etlcore.tasks import REFUSED
from tests import celery_site
from tests.celery_site import until
from tests.pipelines import dataset, pipeline_toml

BERLIN = ZoneInfo("Europe/Berlin")
queue_site = celery_site.queue_site  # the fixture: real RabbitMQ, worker and beat


def shop_write(folder, data, *, zone: str = "Europe/Berlin", trigger: str = "") -> None:
    """`shop`: one file source (products_<date>.csv in `data`) in `zone`; `trigger`: a [trigger] table."""
    text = pipeline_toml(
        "shop",
        datasets={"products": dataset(f"{data}/products_{{date:%Y%m%d}}.csv", sku={"required": True})},
        top=f'timezone = "{zone}"',
    )
    (folder / "shop.toml").write_text(text + trigger, encoding="utf-8")


@pytest.fixture
def shop(pipeline_dir, staging_root, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shop_write(pipeline_dir, data)
    return data


def schedule(*args: str) -> str:
    out = StringIO()
    call_command("pipeline_schedule", *args, stdout=out)
    return out.getvalue()


def next_local(hour: int, minute: int, zone: ZoneInfo, after: datetime) -> datetime:
    """The first hour:minute in `zone` after `after`, counted by the calendar (not by celery)."""
    day = after.astimezone(zone).date()
    while True:
        candidate = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
        if candidate > after:
            return candidate
        day += timedelta(days=1)


# --- the command, on the test process's database ---------------------------------------------------


@pytest.mark.django_db
def test_cron_sets_one_nightly_task_in_the_pipelines_time_zone_and_a_second_call_replaces_it(shop, settings):
    before = PeriodicTasks.last_change()
    out = schedule("--pipeline", "shop", "--cron", "15 2 * * *")
    assert out.startswith("etl nightly shop: 15 2 * * * Europe/Berlin, enabled, next run ")
    first_change = PeriodicTasks.last_change()
    assert first_change is not None and (before is None or first_change > before)

    out = schedule("--pipeline", "shop", "--cron", "30 3 * * 1-5", "--steps", "extract,transform")
    assert PeriodicTask.objects.filter(name__startswith="etl ").count() == 1
    task = PeriodicTask.objects.get(name="etl nightly shop")
    assert (task.task, task.queue, task.enabled, task.one_off) == (
        "etl.pipeline_scheduled",
        settings.ETL_CELERY_QUEUE,
        True,
        False,
    )
    assert json.loads(task.kwargs) == {"pipeline": "shop", "steps": ["extract", "transform"]}
    c = task.crontab
    assert (c.minute, c.hour, c.day_of_month, c.month_of_year, c.day_of_week) == ("30", "3", "*", "*", "1-5")
    assert c.timezone == BERLIN
    # The first crontab, used by nothing now, is gone; beat was told of the change.
    assert list(CrontabSchedule.objects.values_list("hour", flat=True)) == ["3"]
    assert PeriodicTasks.last_change() > first_change
    assert "steps extract,transform" in out


@pytest.mark.django_db
def test_the_steps_are_kept_in_run_order_and_an_unknown_step_is_refused(shop):
    schedule("--pipeline", "shop", "--cron", "15 2 * * *", "--steps", "load,extract")
    assert json.loads(PeriodicTask.objects.get().kwargs)["steps"] == ["extract", "load"]
    with pytest.raises(CommandError, match=r"unknown step\(s\) 'spark': expected some of extract, transform"):
        schedule("--pipeline", "shop", "--cron", "15 2 * * *", "--steps", "extract,spark")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("cron", "says"),
    [
        ("61 2 * * *", "minute field '61' is not valid"),
        ("15 24 * * *", "hour field '24' is not valid"),
        ("15 2 0 * *", "day of month field '0' is not valid"),
        ("15 2 * 13 *", "month field '13' is not valid"),
        ("15 2 * * funday", "day of week field 'funday' is not valid"),
        ("15 2-1 * * *", "hour field '2-1' is not valid"),
        ("15 2 * *", "has 4 field(s); expected five fields"),
        ("@daily", "has 1 field(s)"),
    ],
)
def test_a_bad_cron_expression_is_refused_naming_it_and_its_field(shop, cron, says):
    with pytest.raises(CommandError) as caught:
        schedule("--pipeline", "shop", "--cron", cron)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"cron expression {cron!r}")
    assert says in message
    assert not PeriodicTask.objects.exists() and not CrontabSchedule.objects.exists()


@pytest.mark.django_db
def test_an_unknown_pipeline_is_refused_like_every_command_refuses_it(shop):
    with pytest.raises(CommandError, match=r"^unknown pipeline 'nope' \(known: .*shop"):
        schedule("--pipeline", "nope", "--cron", "15 2 * * *")
    assert not PeriodicTask.objects.exists()


@pytest.mark.django_db
def test_list_shows_zone_state_and_the_next_run_as_the_calendar_counts_it(shop):
    schedule("--pipeline", "shop", "--cron", "15 2 * * *")
    now = timezone.now()
    expected = next_local(2, 15, BERLIN, now)
    lines = schedule("--list").splitlines()
    assert lines[0].split() == "pipeline name schedule time zone enabled last run next run".split()
    row = lines[1]
    assert row.startswith("shop") and "etl nightly shop" in row and "15 2 * * *" in row
    assert "Europe/Berlin" in row and " yes " in row
    assert row.endswith(f"{expected:%Y-%m-%d %H:%M:%S %Z}")

    # The same from the service, as an instant.
    from etlcore.services.schedule import schedule_list

    (listed,) = schedule_list(pipeline="shop")
    assert abs((listed.next_run_at - expected).total_seconds()) < 2
    assert (listed.enabled, listed.last_run_at, listed.timezone) == (True, None, "Europe/Berlin")


@pytest.mark.django_db
def test_disable_enable_and_remove_change_the_task_and_tell_beat(shop):
    schedule("--pipeline", "shop", "--cron", "15 2 * * *")
    changes = [PeriodicTasks.last_change()]

    assert ", disabled, next run -" in schedule("--pipeline", "shop", "--disable")
    assert PeriodicTask.objects.get(name="etl nightly shop").enabled is False
    changes.append(PeriodicTasks.last_change())
    assert " no " in schedule("--list", "--pipeline", "shop").splitlines()[1]

    assert ", enabled, next run 2" in schedule("--pipeline", "shop", "--enable")
    assert PeriodicTask.objects.get(name="etl nightly shop").enabled is True
    changes.append(PeriodicTasks.last_change())

    assert schedule("--pipeline", "shop", "--remove").strip() == "removed etl nightly shop"
    assert not PeriodicTask.objects.exists() and not CrontabSchedule.objects.exists()
    changes.append(PeriodicTasks.last_change())
    assert changes == sorted(set(changes)), "each change moves beat's marker forward"
    assert schedule("--list").strip() == "no schedules"

    with pytest.raises(CommandError, match=r"^pipeline 'shop' has no schedule 'etl nightly shop'"):
        schedule("--pipeline", "shop", "--remove")


@pytest.mark.django_db
def test_cron_with_disable_sets_the_schedule_disabled_and_cron_alone_sets_it_enabled(shop):
    assert ", disabled, next run -" in schedule("--pipeline", "shop", "--cron", "15 2 * * *", "--disable")
    assert PeriodicTask.objects.get().enabled is False
    schedule("--pipeline", "shop", "--cron", "15 2 * * *")
    assert PeriodicTask.objects.get().enabled is True


@pytest.mark.django_db
def test_two_pipelines_share_a_crontab_and_removing_one_schedule_keeps_the_others(shop, pipeline_dir):
    (pipeline_dir / "shop.toml").rename(pipeline_dir / "mart.toml")
    (pipeline_dir / "mart.toml").write_text(
        (pipeline_dir / "mart.toml").read_text().replace('name = "shop"', 'name = "mart"')
    )
    shop_write(pipeline_dir, shop)
    schedule("--pipeline", "shop", "--cron", "15 2 * * *")
    schedule("--pipeline", "mart", "--cron", "15 2 * * *")
    assert CrontabSchedule.objects.count() == 1
    schedule("--pipeline", "shop", "--remove")
    mart = PeriodicTask.objects.get()
    assert mart.name == "etl nightly mart" and mart.crontab.hour == "2"
    schedule("--pipeline", "mart", "--cron", "0 4 * * *")  # the old crontab goes with its last user
    assert list(CrontabSchedule.objects.values_list("hour", flat=True)) == ["4"]
    lines = schedule("--list").splitlines()[1:]
    assert [line.split()[0] for line in lines] == ["mart"]


@pytest.mark.django_db
def test_a_schedule_of_a_pipeline_whose_file_is_gone_can_still_be_disabled_and_removed(shop, pipeline_dir):
    schedule("--pipeline", "shop", "--cron", "15 2 * * *")
    (pipeline_dir / "shop.toml").unlink()
    schedule("--pipeline", "shop", "--disable")
    with pytest.raises(CommandError, match="unknown pipeline 'shop'"):
        schedule("--pipeline", "shop", "--enable")
    assert "removed etl nightly shop" in schedule("--pipeline", "shop", "--remove")


@pytest.mark.django_db
def test_once_takes_a_local_time_of_the_pipeline_and_refuses_the_past_and_a_skipped_hour(shop):
    at = (timezone.now() + timedelta(days=2)).astimezone(BERLIN).replace(microsecond=0)
    local = at.replace(tzinfo=None).isoformat()
    out = schedule("--pipeline", "shop", "--once", local, "--steps", "extract")
    name = f"etl once shop {at.isoformat()}"
    assert out.startswith(f"{name}: once at {at:%Y-%m-%d %H:%M:%S} Europe/Berlin, steps extract, enabled")
    task = PeriodicTask.objects.get(name=name)
    assert (task.one_off, task.task, task.crontab) == (True, "etl.pipeline_scheduled", None)
    assert task.clocked.clocked_time == at.astimezone(UTC)
    assert json.loads(task.kwargs) == {"pipeline": "shop", "steps": ["extract"]}

    # The same time given in UTC names the same one-off: setting it again leaves one.
    schedule("--pipeline", "shop", "--once", at.astimezone(UTC).isoformat())
    assert PeriodicTask.objects.count() == 1 and ClockedSchedule.objects.count() == 1
    schedule("--pipeline", "shop", "--once", local, "--disable")
    assert PeriodicTask.objects.get().enabled is False
    assert "removed " + name in schedule("--pipeline", "shop", "--once", local, "--remove")
    assert not ClockedSchedule.objects.exists()

    past = (timezone.now() - timedelta(minutes=1)).astimezone(BERLIN).replace(tzinfo=None).isoformat()
    with pytest.raises(CommandError, match=r"one-off run at .* is in the past"):
        schedule("--pipeline", "shop", "--once", past)
    with pytest.raises(CommandError, match=r"2030-03-31T02:30:00 does not exist in Europe/Berlin"):
        schedule("--pipeline", "shop", "--once", "2030-03-31T02:30")
    with pytest.raises(CommandError, match="expected an ISO time"):
        schedule("--pipeline", "shop", "--once", "tomorrow")
    assert not PeriodicTask.objects.exists()


@pytest.mark.django_db
def test_the_sensor_is_refused_unless_trigger_is_enabled_then_runs_every_whole_second(shop, pipeline_dir):
    with pytest.raises(CommandError, match=r"'shop' has no sensor to schedule: .* \[trigger\] enabled"):
        schedule("--pipeline", "shop", "--sensor")
    assert not PeriodicTask.objects.exists()

    shop_write(pipeline_dir, shop, trigger="[trigger]\nenabled = true\nevery_seconds = 12.5\n")
    out = schedule("--pipeline", "shop", "--sensor")
    assert out.startswith("etl sensor shop: every 13 s, enabled")
    task = PeriodicTask.objects.get(name="etl sensor shop")
    assert (task.task, json.loads(task.kwargs)) == ("etl.pipeline_sensor", {"pipeline": "shop"})
    assert task.expire_seconds == 13  # a check that waited a whole interval is dropped, not run late
    assert (task.interval.every, task.interval.period) == (13, IntervalSchedule.SECONDS)
    schedule("--pipeline", "shop", "--sensor")
    assert PeriodicTask.objects.count() == 1

    schedule("--pipeline", "shop", "--sensor", "--disable")
    assert PeriodicTask.objects.get().enabled is False
    shop_write(pipeline_dir, shop)  # [trigger] off again: the sensor may not be enabled
    with pytest.raises(CommandError, match="has no sensor to schedule"):
        schedule("--pipeline", "shop", "--sensor", "--enable")
    schedule("--pipeline", "shop", "--sensor", "--remove")
    assert not IntervalSchedule.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--cron", "15 2 * * *"], "--pipeline is required"),
        (["--pipeline", "shop"], "nothing to do"),
        (["--list", "--cron", "15 2 * * *"], "--list takes only --pipeline"),
        (["--pipeline", "shop", "--steps", "extract", "--disable"], "--steps goes with --cron or --once"),
        (["--pipeline", "shop", "--cron", "15 2 * * *", "--remove"], "--cron sets the nightly run"),
        (["--pipeline", "shop", "--cron", "15 2 * * *", "--sensor"], "not allowed with argument"),
        (["--pipeline", "shop", "--enable", "--disable"], "not allowed with argument"),
    ],
)
def test_a_users_mistake_is_one_line(shop, args, says):
    with pytest.raises(CommandError) as caught:
        schedule(*args)
    assert says in str(caught.value) and "\n" not in str(caught.value)


# --- the admin -------------------------------------------------------------------------------------


@pytest.fixture
def staff_client(client, django_user_model):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("ops", "ops@example.com", "pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label__in=["django_celery_beat", "django_celery_results"],
            codename__startswith="view_",
        )
    )
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_the_admin_shows_the_schedules_and_the_task_results_to_staff(shop, pipeline_dir, staff_client):
    shop_write(pipeline_dir, shop, trigger="[trigger]\nenabled = true\n")
    schedule("--pipeline", "shop", "--cron", "15 2 * * *")
    schedule("--pipeline", "shop", "--sensor")
    at = (timezone.now() + timedelta(hours=3)).astimezone(BERLIN).replace(microsecond=0)
    schedule("--pipeline", "shop", "--once", at.isoformat())
    from celery import current_app

    current_app.backend.store_result("task-1", {"pipeline": "shop", "run_task": "task-2"}, "SUCCESS")
    current_app.backend.mark_as_failure("task-3", SourceError("source 'products': no file matches"))

    index = staff_client.get("/admin/")
    assert index.status_code == 200
    for title in (b"Periodic tasks", b"Task results", b"Crontabs", b"Clocked"):
        assert title in index.content
    listing = staff_client.get("/admin/django_celery_beat/periodictask/")
    assert listing.status_code == 200
    for task in PeriodicTask.objects.all():
        assert html.escape(task.name).encode() in listing.content
        page = staff_client.get(f"/admin/django_celery_beat/periodictask/{task.pk}/change/")
        assert page.status_code == 200 and b"etl.pipeline_" in page.content
    nightly = PeriodicTask.objects.get(name="etl nightly shop")
    page = staff_client.get(f"/admin/django_celery_beat/periodictask/{nightly.pk}/change/")
    assert b"At 02:15 AM Europe/Berlin" in page.content
    results = staff_client.get("/admin/django_celery_results/taskresult/")
    assert results.status_code == 200 and b"task-1" in results.content
    assert "SourceError: source 'products': no file matches" in html.unescape(results.content.decode())
    result = TaskResult.objects.get(task_id="task-1")
    page = staff_client.get(f"/admin/django_celery_results/taskresult/{result.pk}/change/")
    assert page.status_code == 200 and "task-2" in html.unescape(page.content.decode())


# --- a real beat and worker ------------------------------------------------------------------------


def beat_listening(site):
    """A beat that has read its schedule and noticed a change since. django-celery-beat misses a change
    made between its first read and its first look at the change marker (it takes that look as its
    baseline), so the test moves the marker until beat says it saw one, before changing a schedule."""
    beat = site.beat()

    def noticed() -> bool:
        PeriodicTasks.objects.using("postgres").update_or_create(
            ident=1, defaults={"last_update": timezone.now()}
        )
        return "Schedule changed." in beat.output()

    until(noticed, timeout=60, what="beat noticing a change", site=site)
    return beat


def _products_for_yesterday(data, zone: ZoneInfo) -> None:
    yesterday = (datetime.now(zone) - timedelta(days=1)).date()
    (data / f"products_{yesterday:%Y%m%d}.csv").write_text("sku\nA-1\nB-2\n", encoding="utf-8")


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_beat_fires_a_one_off_schedule_exactly_once(shop, queue_site):
    from etlcore.services.schedule import schedule_list, schedule_once

    _products_for_yesterday(shop, BERLIN)
    queue_site.worker(f"sched-{queue_site.queue}", concurrency=2)
    beat = beat_listening(queue_site)
    # Set after beat started: beat must notice the change to fire it.
    at = (timezone.now() + timedelta(seconds=4)).astimezone(BERLIN)
    row = schedule_once(pipeline="shop", at=at, steps=["extract"], using="postgres")
    assert row.name == f"etl once shop {at.isoformat(timespec='seconds')}"

    runs = PipelineRun.objects.using("postgres").filter(pipeline="shop")
    run = until(
        lambda: runs.filter(status__in=[RunStatus.SUCCEEDED, RunStatus.FAILED]).first(),
        timeout=60,
        what="the scheduled run ended",
        site=queue_site,
    )
    time.sleep(4)  # long enough for beat (looking every second) to fire it again, if it would

    assert run.status == RunStatus.SUCCEEDED, run.error
    assert runs.count() == 1
    assert (run.origin, run.started_by) == ("queue", f"schedule {row.name}")
    assert [s.step for s in run.steps.all()] == ["extract"]
    fired = TaskResult.objects.using("postgres").filter(task_name="etl.pipeline_scheduled")
    assert [(r.status, r.periodic_task_name) for r in fired] == [("SUCCESS", row.name)]
    run_tasks = TaskResult.objects.using("postgres").filter(task_name="etl.pipeline_run")
    assert [(r.status, r.task_id) for r in run_tasks] == [("SUCCESS", run.parameters["task_id"])]
    assert queue_site.messages_waiting() == 0
    # Beat wrote at once that it fired it (CELERY_BEAT_SYNC_EVERY), so the list knows...
    task = PeriodicTask.objects.using("postgres").get(name=row.name)
    assert task.total_run_count == 1 and task.last_run_at >= at - timedelta(seconds=1)
    (listed,) = schedule_list(pipeline="shop", using="postgres")
    assert listed.next_run_at is None and listed.last_run_at == task.last_run_at
    # ... and a beat killed, then started again, does not fire it a second time: it disables it.
    beat.kill()
    again = queue_site.beat("beat-again")
    until(
        lambda: not PeriodicTask.objects.using("postgres").get(name=row.name).enabled,
        timeout=30,
        what="the one-off disabled by the new beat",
        site=queue_site,
    )
    time.sleep(2)
    assert "Sending due task" not in again.output()
    assert runs.count() == 1 and fired.count() == 1 and queue_site.messages_waiting() == 0


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_a_schedule_firing_while_the_pipeline_runs_is_refused_and_recorded(shop, queue_site, admin_client):
    from etlcore.services.schedule import schedule_once

    _products_for_yesterday(shop, BERLIN)
    held = lock_try(pipeline="shop", using="postgres")
    assert held is not None
    holder = run_start(
        pipeline="shop", command="run_pipeline", business_date=None, parameters={}, using="postgres"
    )
    try:
        queue_site.worker(f"sched-{queue_site.queue}", concurrency=2)
        beat_listening(queue_site)
        row = schedule_once(
            pipeline="shop", at=timezone.now() + timedelta(seconds=3), steps=["extract"], using="postgres"
        )
        results = TaskResult.objects.using("postgres").filter(task_name="etl.pipeline_run")
        refused = until(
            lambda: results.filter(status=REFUSED).first(), timeout=60, what="REFUSED", site=queue_site
        )
        time.sleep(4)  # a retry or a second firing would show by now

        reason = json.loads(refused.result)["reason"]
        assert reason.startswith(f"pipeline 'shop' is already running: run #{holder.pk} (run_pipeline ")
        assert [r.status for r in results.all()] == [REFUSED]
        assert list(PipelineRun.objects.using("postgres").values_list("pk", flat=True)) == [holder.pk]
        assert queue_site.messages_waiting() == 0
        assert queue_site.messages_waiting(f"{queue_site.queue}.extract") == 0
        fired = TaskResult.objects.using("postgres").filter(task_name="etl.pipeline_scheduled")
        assert [(r.status, r.periodic_task_name) for r in fired] == [("SUCCESS", row.name)]
    finally:
        held.release()
        run_finish(holder)

    # What the worker recorded reads in the admin: the state and the reason, in the list and the page.
    fields = {f.name: getattr(refused, f.name) for f in TaskResult._meta.local_fields if f.name != "id"}
    copy = TaskResult.objects.using("default").create(**fields)
    listing = html.unescape(admin_client.get("/admin/django_celery_results/taskresult/").content.decode())
    assert REFUSED in listing and reason in listing
    page = admin_client.get(f"/admin/django_celery_results/taskresult/{copy.pk}/change/")
    assert page.status_code == 200 and reason in html.unescape(page.content.decode())


@pytest.fixture
def admin_client(client, django_user_model):
    user = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    return client
