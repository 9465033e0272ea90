import sys

from django.core.management.base import BaseCommand, CommandError

from etlcore.config import pipeline_names
from etlcore.database import database_check, pipeline_database
from etlcore.errors import USER_ERRORS, RunTerminated
from etlcore.management.pipeline_command import command_error
from etlcore.services.forget import customer_forget


class Command(BaseCommand):
    help = (
        "Erase a customer (GDPR): their member, the identity on their sales lines and quarantined records, "
        "and in every staged partition; put them on the erasure list so no later run brings them back. "
        "Their sales stay, as a guest's, so totals do not change."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--pipeline",
            help="pipeline name: a file conf/pipelines/<name>.toml (default: every pipeline)",
        )
        who = parser.add_mutually_exclusive_group(required=True)
        who.add_argument(
            "--value",
            "--email",
            dest="value",
            metavar="VALUE",
            help="the customer key's source value as the source gives it (the e-mail, or customer_key_from's "
            "column); '-' reads it from the first line of stdin, keeping it off the command line",
        )
        who.add_argument(
            "--customer-key",
            metavar="PSEUDONYM",
            help="the customer's pseudonym (DimCustomer.customer_key) instead of the value",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="print what would change in each place and change nothing (no lock, no erasure record)",
        )

    def handle(self, *args, pipeline, value, customer_key, dry_run, **options) -> None:
        if value == "-":
            value = sys.stdin.readline().rstrip("\n")
        try:
            for name in [pipeline] if pipeline else pipeline_names():
                database_check(using=pipeline_database(pipeline=name))
            outcomes = customer_forget(
                pipeline=pipeline, value=value, customer_key=customer_key, dry_run=dry_run
            )
        except (*USER_ERRORS, RunTerminated) as exc:
            raise command_error(exc) from exc
        if not outcomes:
            raise CommandError("no pipeline to erase from")
        for outcome in outcomes:
            self.stdout.write(self.style.SUCCESS(outcome.summary()))
