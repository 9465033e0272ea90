from django.core.management.base import BaseCommand

from etlcore.services import runs_latest


class Command(BaseCommand):
    help = "Show the latest pipeline runs with their steps, row counts and errors."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--pipeline", help="only runs of this pipeline")
        parser.add_argument("--limit", type=int, default=10, help="how many runs (default: %(default)s)")
        parser.add_argument("--database", default="default", help="database alias (default: %(default)s)")

    def handle(self, *args, pipeline: str | None, limit: int, database: str, **options) -> None:
        runs = runs_latest(pipeline=pipeline, limit=limit, using=database)
        if not runs:
            self.stdout.write("no runs yet")
            return
        for run in runs:
            style = self.style.SUCCESS if run.status == "succeeded" else self.style.ERROR
            took = f"{run.duration_seconds:.1f}s" if run.duration_seconds is not None else "running"
            self.stdout.write(
                style(
                    f"#{run.pk:<5} {run.pipeline:<16} {run.business_date!s:<10} {run.command:<13} "
                    f"{run.status:<9} {run.started_at:%Y-%m-%d %H:%M:%S} {took}"
                )
            )
            for step in run.steps.all():
                took = f"{step.duration_seconds:.1f}s" if step.duration_seconds is not None else "-"
                self.stdout.write(
                    f"        {step.step:<10} {step.status:<9} {took:>7}  in={step.rows_in} "
                    f"out={step.rows_out} rejected={step.rows_rejected}"
                )
                if step.error:
                    self.stdout.write(self.style.ERROR(f"        error: {step.error}"))
            if run.error and not any(s.error for s in run.steps.all()):
                self.stdout.write(self.style.ERROR(f"        error: {run.error}"))
