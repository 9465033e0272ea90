from django.core.management.base import BaseCommand, CommandError

from etlcore.config import pipeline_names
from etlcore.database import database_check, pipeline_database
from etlcore.errors import USER_ERRORS, RunTerminated
from etlcore.management.pipeline_command import command_error
from etlcore.services.rotate import pii_keys_rotate


class Command(BaseCommand):
    help = (
        "Rotate the personal-data keys: every stored Fernet token re-encrypted under the newest key of "
        "ETL_PII_KEYS, and, when the warehouse's customers were made with the key in "
        "ETL_PSEUDONYM_KEY_PREVIOUS, every pseudonym re-keyed to ETL_PSEUDONYM_KEY (staging, warehouse, "
        "quarantine). Safe to kill and run again; afterwards the old keys can be removed."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--pipeline",
            help="pipeline name: a file conf/pipelines/<name>.toml (default: every pipeline)",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="print what would change in each place and change nothing (no lock)",
        )

    def handle(self, *args, pipeline, dry_run, **options) -> None:
        try:
            for name in [pipeline] if pipeline else pipeline_names():
                database_check(using=pipeline_database(pipeline=name))
            outcomes = pii_keys_rotate(pipeline=pipeline, dry_run=dry_run)
        except (*USER_ERRORS, RunTerminated) as exc:
            raise command_error(exc) from exc
        if not outcomes:
            raise CommandError("no pipeline to rotate")
        for outcome in outcomes:
            self.stdout.write(self.style.SUCCESS(outcome.summary()))
