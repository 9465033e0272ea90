from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from etlcore.database import database_check, pipeline_database
from etlcore.demo.pipeline import DEMO_PIPELINE, demo_run
from etlcore.errors import USER_ERRORS


class Command(BaseCommand):
    help = (
        "Run the demo: generate a retail company's sources, serve its orders API on loopback and run the "
        "nightly pipeline (extract, spark-submit transform, load) for each demo date."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--data-dir",
            type=Path,
            default=Path(settings.ETL_DEMO_DIR),
            help="where the demo sources are written (default: %(default)s)",
        )

    def handle(self, *args, data_dir: Path, **options) -> None:
        try:
            database_check(using=pipeline_database(pipeline=DEMO_PIPELINE))
        except USER_ERRORS as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"Demo sources in {data_dir}; running the pipeline (a spark-submit a date, 20 s to a minute each)"
        )
        try:
            report = demo_run(data_dir=data_dir)
        except USER_ERRORS as exc:
            raise CommandError(str(exc)) from exc
        for name in report.defaults_used:
            self.stdout.write(f"  ({name} unset: using the demo's published value)")
        self.stdout.write(f"Orders API served at {report.api_url}\n")
        for run in report.runs:
            self._print_run(run, report)
        self._print_tables(report)
        self.stdout.write(
            "\nWhere to look next:\n"
            "  .venv/bin/python manage.py pipeline_status          latest runs, steps, row counts, errors\n"
            "  .venv/bin/python manage.py createsuperuser && .venv/bin/python manage.py runserver\n"
            "      then http://127.0.0.1:8000/admin/ : ETL runs, the warehouse tables, quarantined rows\n"
            "  .venv/bin/python manage.py dbshell                  tables warehouse_factsalesline, "
            "warehouse_factdailysales, warehouse_dim*, warehouse_quarantinedrow\n"
            f"  {settings.ETL_STAGING_ROOT}                 staging partitions, manifests and Spark logs"
        )

    def _print_run(self, run, report) -> None:
        steps = {s.step: s for s in run.steps.all()}
        extract, transform, load = steps["extract"], steps["transform"], steps["load"]
        # Sources are extracted concurrently: list them in the pipeline file's order, not finishing order.
        order = {name: i for i, name in enumerate(report.datasets)}

        def in_order(names):
            return sorted(names, key=lambda name: order.get(name, len(order)))

        named = [name for name in extract.details if name in order]  # not "sources" (per-source counters)
        extracted = ", ".join(f"{name} {extract.details[name]['rows']}" for name in in_order(named))
        datasets = transform.details.get("datasets", {})
        loaded = load.details.get("loaded", {})
        currencies = ", ".join(
            f"{c} {n}" for c, n in report.lines_by_currency.get(run.business_date, {}).items()
        )
        reasons = ", ".join(f"{c} {n}" for c, n in report.quarantined.get(run.business_date, {}).items())
        self.stdout.write(self.style.SUCCESS(f"{run.business_date}  run #{run.pk} {run.status}"))
        self.stdout.write(f"  extract   {extract.duration_seconds:6.1f}s  extracted: {extracted}")
        self.stdout.write(f"  transform {transform.duration_seconds:6.1f}s  kept + rejected + duplicates:")
        for name in in_order(datasets):
            d = datasets[name]
            self.stdout.write(
                f"  {'':19}{name:<12} {d['rows_out']:>4} + {d['rejected']:>2} + {d['duplicates']:>2}"
            )
        self.stdout.write(
            f"  load      {load.duration_seconds:6.1f}s  loaded: {loaded.get('sales_lines', 0)} sales lines, "
            f"daily sales of {len(load.details.get('lines', {}).get('sales_lines', {}).get('dates', []))} "
            f"date(s) recomputed, {loaded.get('quarantine', 0)} quarantined rows"
        )
        self.stdout.write(f"  {'':19}sales lines by currency: {currencies or '-'}")
        self.stdout.write(f"  {'':19}quarantined by reason:   {reasons or '-'}")

    def _print_tables(self, report) -> None:
        changed = report.changed_tables
        verdict = (
            "no warehouse row changed (a re-run is a no-op)"
            if not changed
            else f"changed tables: {', '.join(changed)}"
        )
        self.stdout.write(f"\nWarehouse after the run: {verdict}")
        for table, (rows, _digest) in report.tables_after.items():
            self.stdout.write(f"  {table:<28} {rows:>7} rows")
