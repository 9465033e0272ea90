from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from etlcore.services.validate import pipelines_validate


class Command(BaseCommand):
    help = (
        "Check pipeline files and what their run needs (job, columns, secrets' variables, Java) without "
        "reading data, starting Spark or writing anything; print what each pipeline will do."
    )

    def add_arguments(self, parser) -> None:
        which = parser.add_mutually_exclusive_group()
        which.add_argument(
            "--pipeline",
            help=f"pipeline name (default: {settings.ETL_DEFAULT_PIPELINE}, ETL_DEFAULT_PIPELINE)",
        )
        which.add_argument(
            "--all", action="store_true", help="every pipeline in conf/pipelines and ETL_PIPELINE_PATH"
        )
        parser.add_argument(
            "--demo-defaults",
            action="store_true",
            help="give the demo's published values to its secrets' variables left unset (what `make check` "
            "does on a fresh clone); never for a real deployment",
        )

    def handle(self, *args, pipeline: str | None, all: bool, demo_defaults: bool, **options) -> None:
        names = None if all else [pipeline or settings.ETL_DEFAULT_PIPELINE]
        results, defaults_used = pipelines_validate(pipelines=names, demo_defaults=demo_defaults)
        if defaults_used:
            self.stdout.write(self.style.WARNING(f"demo values for unset {', '.join(defaults_used)}"))
        for result in results:
            if result.valid:
                self.stdout.write(self.style.SUCCESS(f"{result.pipeline}: valid ({result.source_file})"))
            else:
                self.stdout.write(self.style.ERROR(f"{result.pipeline}: INVALID"))
            for line in result.plan:
                self.stdout.write(f"  {line}")
        invalid = [r.problem for r in results if not r.valid]
        if invalid:
            raise CommandError("\n".join(invalid))
