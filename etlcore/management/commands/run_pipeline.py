from __future__ import annotations

from datetime import date

from django.core.management.base import CommandError

from etlcore.config import pipeline_load
from etlcore.database import database_check, pipeline_database
from etlcore.errors import USER_ERRORS, RunTerminated
from etlcore.management.pipeline_command import PipelineStepCommand, command_error
from etlcore.services.backfill import BackfillReport, dates_between, nightly_dates, pipeline_backfill
from etlcore.services.pipeline import STEPS, business_date_parse, run_resumable


class Command(PipelineStepCommand):
    help = (
        "Run extract, transform and load for one pipeline and business date (the nightly job); or every "
        "date of a range (--from/--to, a backfill), the dates missed since the last loaded one "
        "(--nightly), or the rest of a failed run (--resume)."
    )
    steps = STEPS

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--from",
            dest="first_date",
            metavar="YYYY-MM-DD",
            help="backfill: the first business date of a range (with --to); each date its own run record",
        )
        parser.add_argument(
            "--to",
            dest="last_date",
            metavar="YYYY-MM-DD",
            help="backfill: the last business date (inclusive)",
        )
        parser.add_argument(
            "--continue-on-failure",
            action="store_true",
            help="backfill: go on past a failed date (default: stop there; earlier dates stay loaded)",
        )
        parser.add_argument(
            "--nightly",
            action="store_true",
            help="yesterday in the pipeline's time zone, after every date missed since the last one loaded "
            "([run] catch_up); 'nothing to do' when yesterday is loaded",
        )
        parser.add_argument(
            "--resume",
            type=int,
            metavar="RUN_ID",
            help="run a failed run's date again from its failed step, reusing what earlier steps published",
        )

    def handle(
        self,
        *args,
        pipeline: str,
        business_date: str | None,
        first_date: str | None,
        last_date: str | None,
        continue_on_failure: bool,
        nightly: bool,
        resume: int | None,
        **options,
    ) -> None:
        ranged = first_date is not None or last_date is not None
        chosen = [name for name, given in (("--date", business_date), ("--from/--to", ranged)) if given]
        chosen += [
            name for name, given in (("--nightly", nightly), ("--resume", resume is not None)) if given
        ]
        if len(chosen) > 1:
            raise CommandError(f"{' and '.join(chosen)} cannot be combined: choose one", returncode=2)
        if ranged and (first_date is None or last_date is None):
            raise CommandError("a backfill needs both --from and --to", returncode=2)
        if continue_on_failure and not ranged:
            raise CommandError("--continue-on-failure applies to a backfill (--from/--to)", returncode=2)
        if not (ranged or nightly or resume is not None):
            return super().handle(*args, pipeline=pipeline, business_date=business_date, **options)
        if options.get("dry_run"):
            return self._dry_run(pipeline, first_date, last_date, nightly, resume)
        try:
            database_check(using=pipeline_database(pipeline=pipeline))
            if resume is not None:
                return self._resume(pipeline, resume)
            if nightly:
                return self._nightly(pipeline)
            days = dates_between(
                business_date_parse(first_date, flag="--from"), business_date_parse(last_date, flag="--to")
            )
            self._backfill(pipeline, days, continue_on_failure=continue_on_failure)
        except (*USER_ERRORS, RunTerminated) as exc:
            raise command_error(exc) from exc

    def _dry_run(
        self, pipeline: str, first_date: str | None, last_date: str | None, nightly: bool, resume: int | None
    ) -> None:
        """The plan of a backfill, a nightly catch-up or a resume; nothing is run or written."""
        if resume is not None:
            try:
                failed, steps = run_resumable(run_id=resume, using=pipeline_database(pipeline=pipeline))
            except USER_ERRORS as exc:
                raise command_error(exc) from exc
            if not steps:
                self.stdout.write(f"nothing to do: run #{failed.pk} {failed.status}")
                return
            day = failed.business_date.isoformat()
            return self.dry_run(pipeline=failed.pipeline, business_date=day, steps=steps)
        if nightly:
            try:
                if not nightly_dates(config=pipeline_load(pipeline)):
                    self.stdout.write(f"nothing to do: {pipeline} has loaded yesterday's date already")
                    return
            except USER_ERRORS as exc:
                raise command_error(exc) from exc
            return self.dry_run(pipeline=pipeline, dates=lambda config: nightly_dates(config=config))
        self.dry_run(
            pipeline=pipeline,
            dates=lambda config: dates_between(
                business_date_parse(first_date, flag="--from"), business_date_parse(last_date, flag="--to")
            ),
        )

    def _nightly(self, pipeline: str) -> None:
        days = nightly_dates(config=pipeline_load(pipeline))
        if not days:
            self.stdout.write(f"nothing to do: {pipeline} has loaded yesterday's date already")
        elif len(days) == 1:
            self.run_one(pipeline=pipeline, business_date=days[0].isoformat())
        else:
            self.stdout.write(f"catching up {len(days)} dates: {days[0]}..{days[-1]}")
            self._backfill(pipeline, days, continue_on_failure=False, nightly=True)

    def _resume(self, pipeline: str, run_id: int) -> None:
        # The run is looked up where --pipeline's runs are recorded; it names its own pipeline.
        failed, steps = run_resumable(run_id=run_id, using=pipeline_database(pipeline=pipeline))
        if not steps:
            self.stdout.write(f"nothing to do: run #{failed.pk} {failed.status}")
            return
        self.stdout.write(f"resuming run #{failed.pk} ({failed.business_date}) from {steps[0]}")
        self.run_one(
            pipeline=failed.pipeline,
            business_date=failed.business_date.isoformat(),
            steps=steps,
            resumed_from=failed,
        )

    def _backfill(
        self, pipeline: str, days: list[date], *, continue_on_failure: bool, nightly: bool = False
    ) -> None:
        report = pipeline_backfill(
            pipeline=pipeline,
            dates=days,
            command="run_pipeline",
            continue_on_failure=continue_on_failure,
            parameters={"nightly": True} if nightly else None,
        )
        self._backfill_report(report)

    def _backfill_report(self, report: BackfillReport) -> None:
        for dead in report.taken_over:
            self.stdout.write(self.style.WARNING(f"run #{dead.pk} {dead.error}"))
        for outcome in report.outcomes:
            if outcome.loaded:
                self.stdout.write(self.style.SUCCESS(f"{outcome.business_date} run #{outcome.run.pk} loaded"))
        for line in report.failure_lines():
            self.stdout.write(self.style.ERROR(line))
        if report.failed or report.not_started:
            raise CommandError(report.summary(), returncode=1)
        self.stdout.write(self.style.SUCCESS(report.summary()))
