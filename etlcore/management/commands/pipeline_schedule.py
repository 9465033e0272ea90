from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from django.core.management.base import BaseCommand, CommandError

from etlcore.database import database_check
from etlcore.errors import USER_ERRORS
from etlcore.services.schedule import (
    NIGHTLY,
    ONCE,
    SENSOR,
    ScheduleRow,
    schedule_enable,
    schedule_list,
    schedule_once,
    schedule_remove,
    schedule_sensor_set,
    schedule_set,
)


class Command(BaseCommand):
    help = (
        "Schedule a pipeline's runs on the task queue (celery beat): a nightly cron, a one-off run, the "
        "sensor; enable, disable, remove or list them (docs/celery.md)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--pipeline", help="the pipeline whose schedules these are (optional with --list)"
        )
        what = parser.add_mutually_exclusive_group()
        what.add_argument(
            "--cron",
            metavar="EXPRESSION",
            help='set the nightly run: five cron fields in the pipeline\'s time zone, e.g. "15 2 * * *"',
        )
        what.add_argument(
            "--once",
            metavar="ISO_TIME",
            help="a one-off run at this time (e.g. 2026-12-08T02:15, local to the pipeline's time zone "
            "unless it has an offset); with --enable/--disable/--remove: that one-off run",
        )
        what.add_argument(
            "--sensor",
            action="store_true",
            help="the sensor, every [trigger] every_seconds (needs [trigger] enabled = true); with "
            "--enable/--disable/--remove: the sensor instead of the nightly run",
        )
        parser.add_argument(
            "--steps",
            metavar="STEP,STEP",
            help="with --cron or --once: the steps the run takes, e.g. extract,transform,load (default: all)",
        )
        action = parser.add_mutually_exclusive_group()
        action.add_argument("--enable", action="store_true", help="enable the schedule (nightly by default)")
        action.add_argument(
            "--disable",
            action="store_true",
            help="disable the schedule (nightly by default); with --cron: set it, disabled",
        )
        action.add_argument("--remove", action="store_true", help="delete the schedule (nightly by default)")
        action.add_argument("--list", action="store_true", help="list the schedules (of --pipeline, or all)")
        parser.add_argument(
            "--database",
            default="default",
            help="database alias holding the schedules, the one celery beat reads (default: %(default)s)",
        )

    def handle(self, *args, **options) -> None:
        pipeline, database = options["pipeline"], options["database"]
        cron, once, sensor, steps = options["cron"], options["once"], options["sensor"], options["steps"]
        if options["list"] and (cron or once or sensor or steps):
            raise CommandError("--list takes only --pipeline and --database")
        if not options["list"] and not pipeline:
            raise CommandError("--pipeline is required (but with --list)")
        if steps is not None and not (cron or (once and not (options["enable"] or options["remove"]))):
            raise CommandError("--steps goes with --cron or --once (the run the schedule starts)")
        if cron and (options["remove"] or options["enable"]):
            raise CommandError("--cron sets the nightly run: use --remove or --enable without it")
        at = _iso_time(once) if once else None
        step_list = [s.strip() for s in steps.split(",") if s.strip()] if steps is not None else None
        try:
            database_check(using=database)
            if options["list"]:
                self._list(schedule_list(pipeline=pipeline, using=database))
                return
            kind = ONCE if at is not None else SENSOR if sensor else NIGHTLY
            if options["remove"]:
                name = schedule_remove(pipeline=pipeline, kind=kind, at=at, using=database)
                self.stdout.write(self.style.SUCCESS(f"removed {name}"))
                return
            if options["enable"] or (options["disable"] and not cron):
                row = schedule_enable(
                    pipeline=pipeline, kind=kind, at=at, enabled=options["enable"], using=database
                )
            elif cron:
                row = schedule_set(
                    pipeline=pipeline,
                    cron=cron,
                    steps=step_list,
                    enabled=not options["disable"],
                    using=database,
                )
            elif at is not None:
                row = schedule_once(pipeline=pipeline, at=at, steps=step_list, using=database)
            elif sensor:
                row = schedule_sensor_set(pipeline=pipeline, using=database)
            else:
                raise CommandError(
                    "nothing to do: give --cron, --once, --sensor, --enable, --disable, --remove or --list"
                )
        except USER_ERRORS as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(_line(row)))

    def _list(self, rows: list[ScheduleRow]) -> None:
        if not rows:
            self.stdout.write("no schedules")
            return
        header = ("pipeline", "name", "schedule", "time zone", "enabled", "last run", "next run")
        lines = [header] + [
            (
                r.pipeline,
                r.name,
                r.schedule + (f" steps={','.join(r.steps)}" if r.steps else ""),
                r.timezone or "-",
                "yes" if r.enabled else "no",
                _when(r.last_run_at, r.timezone),
                _when(r.next_run_at, r.timezone),
            )
            for r in rows
        ]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        for line in lines:
            self.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def _iso_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"--once {text!r}: expected an ISO time such as 2026-12-08T02:15 (the pipeline's local time) "
            "or 2026-12-08T01:15+00:00"
        ) from None


def _when(moment: datetime | None, zone: str) -> str:
    if moment is None:
        return "-"
    return f"{moment.astimezone(ZoneInfo(zone or 'UTC')):%Y-%m-%d %H:%M:%S %Z}"


def _line(row: ScheduleRow) -> str:
    state = "enabled" if row.enabled else "disabled"
    steps = f", steps {','.join(row.steps)}" if row.steps else ""
    zone = f" {row.timezone}" if row.timezone else ""
    upcoming = _when(row.next_run_at, row.timezone)
    return f"{row.name}: {row.schedule}{zone}{steps}, {state}, next run {upcoming}"
