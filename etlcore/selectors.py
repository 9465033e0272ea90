"""Reads of the run records, staged partitions and quarantine that the services and commands need.

Selectors only read: everything that writes a run, a partition or a warehouse row is in
`etlcore/services/`. Each takes the pipeline's configuration, or its name and the database alias.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from django.db.models import Max, Q, QuerySet

from warehouse.models import PseudonymKey, QuarantinedRow

from .config import PipelineConfig
from .errors import ConfigurationError
from .guards import PreviousCounts
from .locks import lock_held
from .models import PipelineRun, RunStatus, StagedPartition, StepRun


@dataclass(frozen=True)
class ExtractState:
    """Where a dataset's extract of one date starts: the connector state, and the source fields of the
    previous partition (the reference for type drift)."""

    state: dict[str, Any] | None
    previous_fields: dict[str, str] | None
    # The date whose partition record `state` comes from: the date itself (its `state_in`, a re-run) or the
    # latest earlier one (its `state_out`); None when there is none (the connector's configured start).
    state_date: date | None = None


def extract_state_lookup(*, config: PipelineConfig, dataset: str, business_date: date) -> ExtractState:
    """The date's own `state_in` if it was extracted before (a re-run reads the same range again), else
    the `state_out` of the latest earlier date, else None (the connector's configured start)."""
    rows = StagedPartition.objects.using(config.database).filter(pipeline=config.name, dataset=dataset)
    same = rows.filter(business_date=business_date).first()
    before = rows.filter(business_date__lt=business_date).order_by("-business_date").first()
    if same is not None:
        state, state_date = same.state_in, business_date
    elif before is not None:
        state, state_date = before.state_out, before.business_date
    else:
        state, state_date = None, None
    return ExtractState(
        state=state,
        previous_fields=before.source_fields if before is not None else None,
        state_date=state_date,
    )


def guards_previous(*, config: PipelineConfig, business_date: date) -> PreviousCounts | None:
    """The transform accounting of the nearest earlier date with a successful run (its latest one).

    Earlier *dates*, not earlier runs: re-running a date never compares it with itself, and a backfill
    of an old date compares with the date before it. A run that failed (a guard, the load) is no
    reference; one that succeeded with a warning is.
    """
    step = (
        StepRun.objects.using(config.database)
        .filter(
            step="transform",
            status=RunStatus.SUCCEEDED,
            run__pipeline=config.name,
            run__status=RunStatus.SUCCEEDED,
            run__business_date__lt=business_date,
        )
        .select_related("run")
        .order_by("-run__business_date", "-run_id", "-id")
        .first()
    )
    if step is None:
        return None
    return PreviousCounts(
        business_date=step.run.business_date, run_id=step.run_id, datasets=step.details.get("datasets") or {}
    )


def last_loaded_date(*, config: PipelineConfig) -> date | None:
    """The latest business date whose load succeeded (`run_pipeline --nightly` catches up from there)."""
    return pipeline_freshness(pipeline=config.name, using=config.database).last_loaded


@dataclass(frozen=True)
class Freshness:
    """What a pipeline's warehouse holds: the latest business date loaded, and when a run that loaded a
    date (its load step succeeded) last succeeded."""

    last_loaded: date | None
    last_success: datetime | None


def pipeline_freshness(*, pipeline: str, using: str) -> Freshness:
    loads = StepRun.objects.using(using).filter(
        step="load", status=RunStatus.SUCCEEDED, run__pipeline=pipeline
    )
    found = loads.aggregate(
        last=Max("run__business_date"),
        success=Max("run__finished_at", filter=Q(run__status=RunStatus.SUCCEEDED)),
    )
    return Freshness(last_loaded=found["last"], last_success=found["success"])


def pseudonym_key_held(*, config: PipelineConfig) -> str | None:
    """The fingerprint of the pseudonym key the pipeline's warehouse customers were made with, if any."""
    held = PseudonymKey.objects.using(config.database).filter(pipeline=config.name).first()
    return held.fingerprint if held is not None else None


def quarantine_select(
    *,
    config: PipelineConfig,
    run_id: int | None = None,
    dataset: str | None = None,
    rule: str | None = None,
    business_date: date | None = None,
) -> QuerySet[QuarantinedRow]:
    """Quarantined records of the pipeline matching every given filter.

    ``run_id`` is the run that first quarantined the record; ``rule`` matches any of the record's codes
    (the first is ``reason_code``, all of them head a part of ``message``).
    """
    if dataset is not None and dataset not in config.datasets:
        known = ", ".join(sorted(config.datasets))
        raise ConfigurationError(f"pipeline {config.name!r} has no dataset {dataset!r} (known: {known})")
    rows = QuarantinedRow.objects.using(config.database).filter(pipeline=config.name)
    if run_id is not None:
        rows = rows.filter(first_run_id=run_id)
    if dataset is not None:
        rows = rows.filter(dataset=dataset)
    if rule is not None:
        rows = rows.filter(Q(reason_code=rule) | Q(message__regex=rf"(^|; ){re.escape(rule)}(:| \(|;|$)"))
    if business_date is not None:
        rows = rows.filter(business_date=business_date)
    return rows


def runs_latest(*, pipeline: str | None = None, limit: int = 20, using: str = "default") -> list[PipelineRun]:
    runs = PipelineRun.objects.using(using).select_related("backfill").prefetch_related("steps")
    if pipeline:
        runs = runs.filter(pipeline=pipeline)
    return list(runs.order_by("-started_at", "-id")[:limit])


def run_status_shown(run: PipelineRun, *, held: dict[tuple[str, str], bool] | None = None) -> str:
    """A run's status as an operator should read it: a `running` run whose pipeline's lock is free has no
    process left (killed, machine lost), so it shows as `abandoned` until the next run records it so.
    `held` caches the lock probes of one listing."""
    if run.status != RunStatus.RUNNING:
        return run.status
    key = (run.pipeline, run._state.db or "default")
    if held is None:
        held = {}
    if key not in held:
        held[key] = lock_held(pipeline=run.pipeline, using=key[1])
    return RunStatus.RUNNING if held[key] else RunStatus.ABANDONED
