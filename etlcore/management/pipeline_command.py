"""What extract, transform, load and run_pipeline share: options, error handling, the summary line."""

from __future__ import annotations

import io

import structlog
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, OutputWrapper

from etlcore.config import pipeline_load
from etlcore.database import database_check, pipeline_database
from etlcore.errors import USER_ERRORS, RunTerminated
from etlcore.guards import guard_lines
from etlcore.logs import progress_allowed, progress_logs
from etlcore.models import PipelineRun
from etlcore.services.pipeline import business_date_parse, pipeline_execute
from etlcore.services.plan import pipeline_plan, plan_lines

log = structlog.get_logger("etlcore.commands")


class PipelineStepCommand(BaseCommand):
    steps: tuple[str, ...] = ()

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--pipeline",
            default=settings.ETL_DEFAULT_PIPELINE,
            help="pipeline name: a file conf/pipelines/<name>.toml (default: %(default)s)",
        )
        parser.add_argument(
            "--date",
            dest="business_date",
            metavar="YYYY-MM-DD",
            help="business date to process (default: yesterday in the pipeline's time zone)",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="print what the run would do (dates, sources and their windows from the saved state, "
            "staging paths, the masked spark-submit command, warehouse tables) and touch nothing",
        )
        parser.add_argument(
            "--no-progress",
            action="store_true",
            help="no progress bars (they show only when stderr is a terminal, so never under cron)",
        )

    def execute(self, *args, **options):
        with progress_allowed(not options.get("no_progress")), progress_logs():
            try:
                return super().execute(*args, **options)
            except CommandError as exc:
                if settings.ETL_LOG_FORMAT == "json" and self._called_from_command_line:
                    # stderr holds JSON lines only: the failure is one more event, and Django's plain
                    # "CommandError: ..." line (written after this returns) goes nowhere. Exit code kept.
                    log.error(
                        "command_failed", command=self.command_name, error=str(exc), exit_code=exc.returncode
                    )
                    self.stderr = OutputWrapper(io.StringIO())
                raise

    def handle(self, *args, pipeline: str, business_date: str | None, **options) -> None:
        if options.get("dry_run"):
            self.dry_run(pipeline=pipeline, business_date=business_date)
            return
        self.run_one(pipeline=pipeline, business_date=business_date)

    def run_one(self, *, pipeline: str, business_date: str | None, steps=None, resumed_from=None) -> None:
        """The command's steps (or `steps`) for one pipeline and date; its summary, or one error line."""
        try:
            database_check(using=pipeline_database(pipeline=pipeline))
            run = pipeline_execute(
                pipeline=pipeline,
                business_date=business_date,
                steps=steps or self.steps,
                command=self.command_name,
                resumed_from=resumed_from,
            )
        except (*USER_ERRORS, RunTerminated) as exc:
            raise command_error(exc) from exc
        for dead in run.taken_over:
            self.stdout.write(self.style.WARNING(f"run #{dead.pk} {dead.error}"))
        self.stdout.write(self.style.SUCCESS(run_summary(run)))
        for step in run.steps.all():
            for kind, line in guard_lines(step.details or {}):
                if kind == "warn":
                    self.stdout.write(self.style.WARNING(line))

    def dry_run(self, *, pipeline: str, business_date: str | None = None, dates=None, steps=None) -> None:
        """The plan of the run, printed: no lock, no run record, no file (etlcore/services/plan.py).
        `dates`: a callable of the pipeline's configuration giving the dates (a backfill's, --nightly's)."""
        try:
            config = pipeline_load(pipeline)
            database_check(using=config.database)
            days = dates(config) if dates else [business_date_parse(business_date, config=config)]
            plan = pipeline_plan(config=config, dates=days, steps=steps or self.steps)
        except USER_ERRORS as exc:
            raise command_error(exc) from exc
        for line in plan_lines(plan):
            self.stdout.write(line)

    @property
    def command_name(self) -> str:
        return self.__module__.rsplit(".", 1)[-1]


def command_error(exc: BaseException) -> CommandError:
    """One line on stderr and the exit status docs/operations.md lists: 75 already running, 128 + N ended
    by signal N, 1 any other failure."""
    return CommandError(str(exc), returncode=getattr(exc, "exit_code", 1))


def run_summary(run: PipelineRun) -> str:
    parts = []
    for step in run.steps.all():
        engine = (step.details or {}).get("engine")
        parts.append(
            f"{step.step} {step.duration_seconds:.1f}s"
            + (f" on {engine}" if engine else "")
            + f" in={step.rows_in} out={step.rows_out} rejected={step.rows_rejected}"
        )
    return f"run #{run.pk} {run.pipeline} {run.business_date} {run.status}: " + "; ".join(parts)
