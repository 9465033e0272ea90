"""Quarantined rows through the pipeline's current rules again."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from django.db.models import QuerySet

from warehouse.models import QuarantinedRow

from .. import staging
from ..config import PipelineConfig, pipeline_load
from ..errors import ETL_ERRORS, PartitionNotFound
from ..locks import HeldLock
from ..models import PipelineRun
from ..runs import error_text, run_finish, run_start, step_tracked
from ..selectors import quarantine_select
from .control import pipeline_controlled, run_tracked
from .pipeline import business_date_parse, steps_run


@dataclass
class ReplayOutcome:
    """One date's replay: quarantined records selected by the filters, and what became of them."""

    run: PipelineRun
    business_date: date
    selected: int
    released: int
    still_quarantined: int
    reasons_now: dict[str, int] = field(default_factory=dict)


def quarantine_replay(
    *,
    pipeline: str,
    run_id: int | None = None,
    dataset: str | None = None,
    rule: str | None = None,
    business_date: str | None = None,
) -> list[ReplayOutcome]:
    """Send quarantined rows through the pipeline's CURRENT rules again; load those that now pass.

    The raw layer keeps every extracted row, so the faithful replay is to transform and load again each
    date holding matching records: rows that now pass are loaded, rows that still fail stay in
    quarantine with their new reason (the loader upserts quarantine records by fingerprint and deletes
    those no longer produced; ``first_run`` is kept). Every other row of the date goes through the
    current rules too, as a re-run would. One run record (command ``replay_quarantine``) per date, with
    a ``replay`` step: selected / released / still quarantined, and the quarantine table before and after.
    Fails before replaying anything when a date's raw partition is gone.
    """
    config = pipeline_load(pipeline)
    day = business_date_parse(business_date, config=config) if business_date is not None else None
    filters = {"pipeline": pipeline, "run": run_id, "dataset": dataset, "rule": rule, "date": business_date}
    # One lock for every date: a run_pipeline of the pipeline never rewrites a partition mid-replay.
    with pipeline_controlled(config=config) as lock:
        return _selection_replay(config, lock, filters, run_id=run_id, dataset=dataset, rule=rule, day=day)


def _selection_replay(
    config: PipelineConfig,
    lock: HeldLock,
    filters: dict[str, Any],
    *,
    run_id: int | None,
    dataset: str | None,
    rule: str | None,
    day: date | None,
) -> list[ReplayOutcome]:
    selection = quarantine_select(config=config, run_id=run_id, dataset=dataset, rule=rule, business_date=day)
    dates = sorted(set(selection.values_list("business_date", flat=True)))
    missing = []
    for replay_day in dates:
        for name in config.datasets:
            try:
                staging.manifest_read(
                    staging.PartitionRef.raw(config.staging_root, config.name, name, replay_day)
                )
            except ETL_ERRORS as exc:
                missing.append(str(exc))
    if missing:
        error = PartitionNotFound(
            f"cannot replay quarantined rows: the raw layer no longer holds {'; '.join(missing)} "
            "(extract the date again first)"
        )
        run = run_start(
            pipeline=config.name,
            command="replay_quarantine",
            business_date=dates[0],
            parameters=filters,
            using=config.database,
        )
        run_finish(run, error=error_text(error))
        raise error
    return [_date_replay(config, lock, replay_day, selection, filters) for replay_day in dates]


def _date_replay(
    config: PipelineConfig,
    lock: HeldLock,
    day: date,
    selection: QuerySet[QuarantinedRow],
    filters: dict[str, Any],
) -> ReplayOutcome:
    using = config.database
    table = QuarantinedRow.objects.using(using).filter(pipeline=config.name, business_date=day)
    chosen = set(selection.filter(business_date=day).values_list("dataset", "record_fingerprint"))
    before = table.count()
    with run_tracked(
        config=config, lock=lock, command="replay_quarantine", business_date=day, parameters=filters
    ) as run:
        steps_run(run, config=config, steps=("transform", "load"))
        with step_tracked(run, "replay") as outcome:
            reasons_now = Counter(
                code
                for dataset, fingerprint, code in table.values_list(
                    "dataset", "record_fingerprint", "reason_code"
                )
                if (dataset, fingerprint) in chosen
            )
            replayed = ReplayOutcome(
                run=run,
                business_date=day,
                selected=len(chosen),
                released=len(chosen) - reasons_now.total(),
                still_quarantined=reasons_now.total(),
                reasons_now=dict(sorted(reasons_now.items())),
            )
            outcome.rows_in, outcome.rows_out = replayed.selected, replayed.released
            outcome.rows_rejected = replayed.still_quarantined
            outcome.details = {
                "filters": filters,
                "selected": replayed.selected,
                "released": replayed.released,
                "still_quarantined": replayed.still_quarantined,
                "reasons_now": replayed.reasons_now,
                "quarantine_before": before,
                "quarantine_after": table.count(),
            }
    return replayed
