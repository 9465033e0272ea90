"""The pipelines' schedules on the task queue: django-celery-beat's periodic tasks, which `celery beat
--scheduler django_celery_beat.schedulers:DatabaseScheduler` reads (docs/celery.md, "Schedules").

A pipeline has at most one nightly schedule, `etl nightly <pipeline>` (a crontab in the pipeline's time
zone), at most one sensor, `etl sensor <pipeline>` (every [trigger] every_seconds), and any number of
one-off runs, `etl once <pipeline> <local time, ISO>`. They send `etl.pipeline_scheduled` (kwargs
{"pipeline": P, "steps": [...]}) or `etl.pipeline_sensor` ({"pipeline": P}) to settings.ETL_CELERY_QUEUE.

Beat reloads its schedule when the `PeriodicTasks` row changes. django-celery-beat's signals touch that
row on every save, but always in the default database; `_beat_notify` touches it in the database the
change was made in, so a non-default `using` (the test suite's) is noticed too. Every change goes through
model `save()`/`delete()`, never `QuerySet.update()`, which sends no signal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from celery.schedules import crontab
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, transaction
from django.utils import timezone
from django_celery_beat import validators
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    PeriodicTasks,
)
from django_celery_results.models import TaskResult

from ..config import PipelineConfig, pipeline_load
from ..errors import ETL_ERRORS, ConfigurationError, EtlError
from .pipeline import STEPS

NIGHTLY, ONCE, SENSOR = "nightly", "once", "sensor"
KINDS = (NIGHTLY, ONCE, SENSOR)
SCHEDULED_TASK = "etl.pipeline_scheduled"
SENSOR_TASK = "etl.pipeline_sensor"
# A cron expression's fields in order: (name, CrontabSchedule field, celery's max_ and min_, the field's
# validator in django-celery-beat, which the admin's form applies too).
CRON_FIELDS = (
    ("minute", "minute", 60, 0, validators.minute_validator),
    ("hour", "hour", 24, 0, validators.hour_validator),
    ("day of month", "day_of_month", 31, 1, validators.day_of_month_validator),
    ("month", "month_of_year", 12, 1, validators.month_of_year_validator),
    ("day of week", "day_of_week", 7, 0, validators.day_of_week_validator),
)
CRON_FORM = 'five fields "minute hour day-of-month month day-of-week", e.g. "15 2 * * *"'


class ScheduleNotFound(EtlError):
    """The schedule a command names does not exist."""


@dataclass(frozen=True)
class ScheduleRow:
    """One schedule as `pipeline_schedule --list` shows it. `schedule`: the cron expression, the one-off's
    local time or the interval in seconds; `timezone`: the zone `schedule` is read in ("" for an interval);
    `next_run_at`: when beat should fire it next (None when disabled or a one-off that fired)."""

    pipeline: str
    name: str
    kind: str
    schedule: str
    timezone: str
    enabled: bool
    steps: tuple[str, ...] | None
    last_run_at: datetime | None
    next_run_at: datetime | None


def schedule_name(*, pipeline: str, kind: str = NIGHTLY, at: datetime | None = None) -> str:
    """The periodic task's name: `etl nightly P`, `etl sensor P`, `etl once P <at, ISO>`."""
    if kind == ONCE:
        if at is None:
            raise ValueError("a one-off schedule's name needs its time")
        return f"etl once {pipeline} {at.isoformat(timespec='seconds')}"
    return f"etl {kind} {pipeline}"


def cron_parse(expression: str) -> dict[str, str]:
    """A five-field cron expression as CrontabSchedule's fields; `ConfigurationError` naming the expression
    and the field that is wrong. Checked by celery's parser (what beat runs) and django-celery-beat's
    validators (what the admin's form accepts), so a schedule set here can be saved in the admin too."""
    parts = expression.split()
    if len(parts) != len(CRON_FIELDS):
        raise ConfigurationError(
            f"cron expression {expression!r} has {len(parts)} field(s); expected {CRON_FORM}"
        )
    fields = {}
    for value, (label, name, max_, min_, validator) in zip(parts, CRON_FIELDS, strict=True):
        try:
            crontab._expand_cronspec(value, max_, min_)
            validator(value)
        except (ValueError, ValidationError) as exc:
            reason = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
            raise ConfigurationError(
                f"cron expression {expression!r}: {label} field {value!r} is not valid ({reason.strip()}); "
                f"expected {CRON_FORM}"
            ) from None
        fields[name] = value
    return fields


def schedule_set(
    *,
    pipeline: str,
    cron: str,
    steps: Sequence[str] | None = None,
    enabled: bool = True,
    using: str = DEFAULT_DB_ALIAS,
) -> ScheduleRow:
    """Create or replace the pipeline's nightly schedule: `cron` read in the pipeline's time zone. Raises
    `ConfigurationError` for an unknown pipeline, a bad cron expression or unknown steps."""
    config = pipeline_load(pipeline)
    fields = cron_parse(cron)
    kwargs = _task_kwargs(pipeline, steps)
    with transaction.atomic(using=using):
        schedule, _ = CrontabSchedule.objects.using(using).get_or_create(**fields, timezone=config.timezone)
        task = _task_save(
            using,
            name=schedule_name(pipeline=pipeline),
            task=SCHEDULED_TASK,
            kwargs=kwargs,
            schedules={"crontab": schedule},
            enabled=enabled,
            description=f"{pipeline}: the run of yesterday, at {cron} {config.timezone.key}",
        )
    return _row(task, using=using)


def schedule_once(
    *, pipeline: str, at: datetime, steps: Sequence[str] | None = None, using: str = DEFAULT_DB_ALIAS
) -> ScheduleRow:
    """A one-off run of the pipeline's yesterday at `at`: a naive time is local to the pipeline's time
    zone. Raises `ConfigurationError` for an unknown pipeline, a time in the past or one the zone skips."""
    config = pipeline_load(pipeline)
    local = _local_time(at, config.timezone)
    if local <= timezone.now():
        raise ConfigurationError(f"one-off run at {local.isoformat(timespec='seconds')} is in the past")
    kwargs = _task_kwargs(pipeline, steps)
    with transaction.atomic(using=using):
        clocked, _ = ClockedSchedule.objects.using(using).get_or_create(clocked_time=local.astimezone(UTC))
        task = _task_save(
            using,
            name=schedule_name(pipeline=pipeline, kind=ONCE, at=local),
            task=SCHEDULED_TASK,
            kwargs=kwargs,
            schedules={"clocked": clocked},
            enabled=True,
            one_off=True,
            description=f"{pipeline}: one run of yesterday, at {local:%Y-%m-%d %H:%M:%S} {local.tzinfo}",
        )
    return _row(task, using=using)


def schedule_sensor_set(*, pipeline: str, using: str = DEFAULT_DB_ALIAS) -> ScheduleRow:
    """Create or update the pipeline's sensor: `etl.pipeline_sensor` every [trigger] every_seconds (whole
    seconds, rounded up). Refused unless the pipeline file says [trigger] enabled = true."""
    config = _trigger_enabled(pipeline_load(pipeline))
    every = math.ceil(config.trigger.every_seconds)
    with transaction.atomic(using=using):
        interval, _ = IntervalSchedule.objects.using(using).get_or_create(
            every=every, period=IntervalSchedule.SECONDS
        )
        task = _task_save(
            using,
            name=schedule_name(pipeline=pipeline, kind=SENSOR),
            task=SENSOR_TASK,
            kwargs={"pipeline": pipeline},
            schedules={"interval": interval},
            enabled=True,
            description=f"{pipeline}: a run when a source has data newer than its saved state, looked for "
            f"every {every} s",
            # Checks that wait behind a long run are dropped, not run in a burst when a worker frees up.
            expire_seconds=every,
        )
    return _row(task, using=using)


def schedule_enable(
    *,
    pipeline: str,
    kind: str = NIGHTLY,
    at: datetime | None = None,
    enabled: bool = True,
    using: str = DEFAULT_DB_ALIAS,
) -> ScheduleRow:
    """Enable or disable one of the pipeline's schedules (a one-off's by its time `at`). Enabling needs
    the pipeline to load (a sensor: [trigger] enabled = true); disabling does not."""
    if enabled:
        config = pipeline_load(pipeline)
        if kind == SENSOR:
            _trigger_enabled(config)
    with transaction.atomic(using=using):
        task = _task_find(pipeline=pipeline, kind=kind, at=at, using=using)
        if task.enabled != enabled:
            task.enabled = enabled
            task.save(using=using)
            _beat_notify(using)
    return _row(task, using=using)


def schedule_remove(
    *, pipeline: str, kind: str = NIGHTLY, at: datetime | None = None, using: str = DEFAULT_DB_ALIAS
) -> str:
    """Delete one of the pipeline's schedules, and its crontab, time or interval when no other task uses
    it; returns the removed task's name. The pipeline's file need not exist any more."""
    with transaction.atomic(using=using):
        task = _task_find(pipeline=pipeline, kind=kind, at=at, using=using)
        name, schedule = task.name, task.scheduler
        task.delete()
        if schedule is not None and _unused(schedule, using):
            schedule.delete(using=using)
        _beat_notify(using)
    return name


def schedule_list(*, pipeline: str | None = None, using: str = DEFAULT_DB_ALIAS) -> list[ScheduleRow]:
    """The pipelines' schedules (one pipeline's with `pipeline`), by pipeline, then nightly, sensor and
    one-offs in time order."""
    tasks = PeriodicTask.objects.using(using).select_related("crontab", "clocked", "interval")
    if pipeline is None:
        tasks = tasks.filter(name__regex=r"^etl (nightly|once|sensor) ")
    else:
        names = [schedule_name(pipeline=pipeline), schedule_name(pipeline=pipeline, kind=SENSOR)]
        tasks = tasks.filter(name__in=names) | tasks.filter(name__startswith=f"etl once {pipeline} ")
    rows = [_row(task, using=using) for task in tasks]
    order = {NIGHTLY: 0, SENSOR: 1, ONCE: 2}
    return sorted(rows, key=lambda r: (r.pipeline, order[r.kind], r.next_run_at or r.last_run_at or _EPOCH))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _task_kwargs(pipeline: str, steps: Sequence[str] | None) -> dict[str, object]:
    kwargs: dict[str, object] = {"pipeline": pipeline}
    if steps is not None:
        kwargs["steps"] = steps_check(steps)
    return kwargs


def steps_check(steps: Sequence[str]) -> list[str]:
    """Steps a schedule runs, in the order a run takes them; `ConfigurationError` for an unknown one."""
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise ConfigurationError(
            f"unknown step(s) {', '.join(map(repr, unknown))}: expected some of {', '.join(STEPS)}"
            if unknown
            else f"no steps given: expected some of {', '.join(STEPS)}"
        )
    return [s for s in STEPS if s in steps]


def _trigger_enabled(config: PipelineConfig) -> PipelineConfig:
    if not config.trigger.enabled:
        raise ConfigurationError(
            f"pipeline {config.name!r} has no sensor to schedule: its file {config.source_file} does not "
            "say [trigger] enabled = true (docs/configuration.md)"
        )
    return config


def _local_time(at: datetime, zone: ZoneInfo) -> datetime:
    """`at` in `zone`: a naive time is read as local there, and refused when the zone skips it (the hour
    clocks go forward)."""
    if at.tzinfo is not None:
        return at.astimezone(zone)
    local = at.replace(tzinfo=zone)
    if local.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != at:
        raise ConfigurationError(
            f"{at.isoformat(timespec='seconds')} does not exist in {zone.key} (the clocks skip it)"
        )
    return local


def _task_save(
    using: str,
    *,
    name: str,
    task: str,
    kwargs: dict[str, object],
    schedules: dict[str, object],
    enabled: bool,
    description: str,
    one_off: bool = False,
    expire_seconds: int | None = None,
) -> PeriodicTask:
    """Create or update the periodic task `name`, one schedule set and the others cleared, and drop the
    schedule it used before when nothing else uses it. `expire_seconds`: a message not taken by then is
    dropped by the worker, not run late."""
    existing = PeriodicTask.objects.using(using).select_for_update().filter(name=name).first()
    previous = existing.scheduler if existing is not None else None
    periodic = existing or PeriodicTask(name=name)
    periodic.task = task
    periodic.kwargs = json.dumps(kwargs)
    periodic.queue = settings.ETL_CELERY_QUEUE
    periodic.one_off = one_off
    periodic.enabled = enabled
    periodic.description = description
    periodic.expire_seconds = expire_seconds
    for field in ("interval", "crontab", "solar", "clocked"):
        setattr(periodic, field, schedules.get(field))
    if one_off and existing is not None:  # a one-off set again fires again
        periodic.total_run_count = 0
        periodic.last_run_at = None
    periodic.save(using=using)
    if previous is not None and previous != periodic.scheduler and _unused(previous, using):
        previous.delete(using=using)
    _beat_notify(using)
    return periodic


def _task_find(*, pipeline: str, kind: str, at: datetime | None, using: str) -> PeriodicTask:
    tasks = PeriodicTask.objects.using(using).select_for_update()
    if kind == ONCE:
        if at is None:
            raise ConfigurationError("a one-off schedule is named by its time")
        if at.tzinfo is None:
            at = _local_time(at, pipeline_load(pipeline).timezone)
        found = tasks.filter(name__startswith=f"etl once {pipeline} ", clocked__clocked_time=at).first()
        name = schedule_name(pipeline=pipeline, kind=ONCE, at=at)
    elif kind in KINDS:
        name = schedule_name(pipeline=pipeline, kind=kind)
        found = tasks.filter(name=name).first()
    else:
        raise ValueError(f"unknown schedule kind {kind!r}")
    if found is None:
        raise ScheduleNotFound(f"pipeline {pipeline!r} has no schedule {name!r} (pipeline_schedule --list)")
    return found


def _unused(schedule: object, using: str) -> bool:
    field = {CrontabSchedule: "crontab", ClockedSchedule: "clocked", IntervalSchedule: "interval"}
    name = field.get(type(schedule), "solar")
    return not PeriodicTask.objects.using(using).filter(**{name: schedule}).exists()


def _beat_notify(using: str) -> None:
    """Make beat reload its schedule: the change marker in `using`, the database beat reads."""
    PeriodicTasks.objects.using(using).update_or_create(ident=1, defaults={"last_update": timezone.now()})


def _row(task: PeriodicTask, *, using: str) -> ScheduleRow:
    _, kind, pipeline = task.name.split(" ", 3)[:3]
    kwargs = json.loads(task.kwargs or "{}")
    steps = tuple(kwargs["steps"]) if "steps" in kwargs else None
    last = task.last_run_at or _last_fired(task, using=using)
    now = timezone.now()
    if task.crontab is not None:
        c = task.crontab
        zone = str(c.timezone)
        text = " ".join((c.minute, c.hour, c.day_of_month, c.month_of_year, c.day_of_week))
        since = (task.last_run_at or task.date_changed or now).astimezone(c.timezone)
        upcoming = None
        if task.enabled:  # celery's own arithmetic, as beat does it, in wall-clock time of the zone
            start, delta, _ = c.schedule.remaining_delta(since)
            upcoming = (start + delta).astimezone(UTC)
    elif task.clocked is not None:
        zone_info = _pipeline_zone(pipeline)
        zone = zone_info.key
        at = task.clocked.clocked_time.astimezone(zone_info)
        text = f"once at {at:%Y-%m-%d %H:%M:%S}"
        upcoming = at if task.enabled and not task.total_run_count and last is None else None
    elif task.interval is not None:
        zone = ""
        seconds = timedelta(**{task.interval.period: task.interval.every}).total_seconds()
        text = f"every {seconds:g} s"
        since = task.last_run_at or task.date_changed or now
        upcoming = since + timedelta(seconds=seconds) if task.enabled else None
    else:
        zone, text, upcoming = "", "no schedule", None
    if upcoming is not None and upcoming < now:
        upcoming = now  # due: beat fires it at its next look
    return ScheduleRow(
        pipeline=pipeline,
        name=task.name,
        kind=kind,
        schedule=text,
        timezone=zone,
        enabled=task.enabled,
        steps=steps,
        last_run_at=last,
        next_run_at=upcoming,
    )


def _last_fired(task: PeriodicTask, *, using: str) -> datetime | None:
    """When beat last sent the task, from its results (beat clears `last_run_at` of a disabled task, so
    a one-off that fired has none)."""
    return (
        TaskResult.objects.using(using)
        .filter(periodic_task_name=task.name)
        .order_by("-date_created")
        .values_list("date_created", flat=True)
        .first()
    )


def _pipeline_zone(pipeline: str) -> ZoneInfo:
    try:
        return pipeline_load(pipeline).timezone
    except ETL_ERRORS:  # the file is gone: the time is still shown, in UTC
        return ZoneInfo("UTC")
