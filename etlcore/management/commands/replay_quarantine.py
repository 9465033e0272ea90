from django.conf import settings
from django.core.management.base import BaseCommand

from etlcore.database import database_check, pipeline_database
from etlcore.errors import ETL_ERRORS, RunTerminated
from etlcore.management.pipeline_command import command_error
from etlcore.services.replay import quarantine_replay


class Command(BaseCommand):
    help = (
        "Send quarantined rows through the pipeline's current rules: transform and load again every date "
        "holding matching rows; rows that now pass are loaded, the others stay with their new reason."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--pipeline",
            default=settings.ETL_DEFAULT_PIPELINE,
            help="pipeline name: a file conf/pipelines/<name>.toml (default: %(default)s)",
        )
        parser.add_argument(
            "--run", type=int, dest="run_id", help="only rows first quarantined by this run id"
        )
        parser.add_argument("--dataset", help="only rows of this dataset")
        parser.add_argument("--rule", help="only rows failing this rule code (any of their codes)")
        parser.add_argument(
            "--date", dest="business_date", metavar="YYYY-MM-DD", help="only rows of this business date"
        )

    def handle(self, *args, pipeline, run_id, dataset, rule, business_date, **options) -> None:
        try:
            database_check(using=pipeline_database(pipeline=pipeline))
            outcomes = quarantine_replay(
                pipeline=pipeline, run_id=run_id, dataset=dataset, rule=rule, business_date=business_date
            )
        except (*ETL_ERRORS, RunTerminated) as exc:
            raise command_error(exc) from exc
        if not outcomes:  # nothing to do: exit 0 with one line (docs/operations.md, exit codes)
            self.stdout.write("nothing to do: no quarantined rows match")
            return
        for o in outcomes:
            reasons = ", ".join(f"{code}={n}" for code, n in o.reasons_now.items()) or "-"
            self.stdout.write(
                self.style.SUCCESS(
                    f"run #{o.run.pk} {pipeline} {o.business_date}: {o.selected} quarantined record(s) "
                    f"replayed, {o.released} released, {o.still_quarantined} still quarantined "
                    f"(reasons now: {reasons})"
                )
            )
