from django.core.management.base import BaseCommand, CommandError

from etlcore.database import database_check
from etlcore.errors import DatabaseNotReady
from etlcore.guards import guard_lines
from etlcore.selectors import run_status_shown, runs_latest


class Command(BaseCommand):
    help = "Show the latest pipeline runs with their steps, row counts and errors."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--pipeline", help="only runs of this pipeline")
        parser.add_argument("--limit", type=int, default=10, help="how many runs (default: %(default)s)")
        parser.add_argument("--database", default="default", help="database alias (default: %(default)s)")

    def handle(self, *args, pipeline: str | None, limit: int, database: str, **options) -> None:
        try:
            database_check(using=database)
        except DatabaseNotReady as exc:
            raise CommandError(str(exc)) from exc
        runs = runs_latest(pipeline=pipeline, limit=limit, using=database)
        if not runs:
            self.stdout.write("no runs yet")
            return
        held: dict[tuple[str, str], bool] = {}
        for run in runs:
            status = run_status_shown(run, held=held)
            styles = {"succeeded": self.style.SUCCESS, "running": self.style.WARNING}
            style = styles.get(status, self.style.ERROR)
            if status == "abandoned":  # its process is gone: when it was last seen, and which it was
                seen = run.heartbeat_at or run.started_at
                took = f"last seen {seen:%Y-%m-%d %H:%M:%S} (pid {run.pid} on {run.hostname})"
            elif status == "running":
                took = f"running, pid {run.pid} on {run.hostname}"
            else:
                took = f"{run.duration_seconds:.1f}s" if run.duration_seconds is not None else "-"
            self.stdout.write(
                style(
                    f"#{run.pk:<5} {run.pipeline:<16} {run.business_date!s:<10} {run.command:<13} "
                    f"{status:<9} {run.started_at:%Y-%m-%d %H:%M:%S} {took}  by {run.started_shown}"
                )
            )
            if run.backfill_id is not None or run.resumed_from_id is not None:
                self.stdout.write(f"        {run_origin(run)}")
            for step in run.steps.all():
                took = f"{step.duration_seconds:.1f}s" if step.duration_seconds is not None else "-"
                self.stdout.write(
                    f"        {step.step:<10} {step.status:<9} {took:>7}  in={step.rows_in} "
                    f"out={step.rows_out} rejected={step.rows_rejected}"
                    + (f" attempts={step.attempts}" if step.attempts > 1 else "")
                )
                for line in step_detail_lines(step.details or {}):
                    self.stdout.write(f"          {line}")
                for kind, line in guard_lines(step.details or {}):
                    style = {"fail": self.style.ERROR, "warn": self.style.WARNING}.get(kind, str)
                    self.stdout.write(style(f"          {line}"))
                if step.error:
                    self.stdout.write(self.style.ERROR(f"        error: {step.error}"))
            if run.error and not any(s.error for s in run.steps.all()):
                self.stdout.write(self.style.ERROR(f"        error: {run.error}"))


def run_origin(run) -> str:
    """Where a run belongs: the backfill that ran its date, the failed run it resumes."""
    parts = []
    if run.backfill_id is not None:
        b = run.backfill
        parts.append(f"backfill #{b.pk} {b.first_date}..{b.last_date} ({b.status})")
    if run.resumed_from_id is not None:
        parts.append(f"resumes run #{run.resumed_from_id}")
    return ", ".join(parts)


def _codes(counts: dict) -> str:
    return ",".join(f"{code}:{n}" for code, n in sorted(counts.items())) or "0"


def step_detail_lines(details: dict) -> list[str]:
    """The engine of a transform and why, its per-dataset accounting (in = out + rejected + duplicates +
    filtered, and warnings), what a load's lines were to the warehouse (new, updating another partition's
    version per business date, superseded by a newer one, deleted), and the outcome of a quarantine
    replay."""
    lines = []
    if details.get("engine"):  # which engine ran the transform, and why (etlcore/engines.py)
        lines.append(f"engine {details['engine']}: {details.get('engine_reason', '')}")
    for name, c in (details.get("datasets") or {}).items():
        if not isinstance(c, dict) or "rows_in" not in c:
            continue
        filtered = c.get("filtered") or {}
        lines.append(
            f"{name:<14} in={c['rows_in']} out={c['rows_out']} rejected={c['rejected']} "
            f"duplicates={c['duplicates']} filtered={sum(filtered.values())}"
            + (f" ({_codes(filtered)})" if filtered else "")
            + f" warnings={_codes(c.get('warnings') or {})}"
        )
    for output, load in (details.get("lines") or {}).items():
        updated = load.get("updated") or {}
        lines.append(
            f"{output:<14} staged={load['rows']} new={load['inserted']} "
            f"updated={sum(updated.values())}"
            + (f" ({_codes(updated)})" if updated else "")
            + f" superseded={load['superseded']} reloaded={load.get('reloaded', 0)}"
            + f" deleted={load['deleted']} "
            f"daily recomputed for {len(load['dates'])} date(s)"
        )
    if "released" in details:
        lines.append(
            f"replayed {details['selected']} quarantined record(s): released={details['released']} "
            f"still_quarantined={details['still_quarantined']} "
            f"quarantine {details['quarantine_before']} -> {details['quarantine_after']}"
        )
    return lines
