"""Several business dates under one command: `run_pipeline --from/--to` (a backfill) and `--nightly`
catching up the dates missed since the last one loaded.

Each date is its own run record, grouped under one `Backfill`, with the steps of a date-by-date run:
extraction and loading per date, in date order; the transforms of up to `[run] dates_per_job` dates share
ONE Spark application (`services.transform.partitions_transform`), so a year of history pays the JVM's
start and the session once, not 365 times (the dates a pipeline's `engine` gives Dask share one Dask job
process likewise: etlcore/engines.py). Each date still gets its own attempt, result, reconciliation,
guards and atomic publish, so what lands in the warehouse is what date-by-date runs would have loaded
(tests/test_backfill.py compares both ways row by row).

A date that fails stops the backfill there: dates before it are loaded, later ones are not (their runs
say why). With `continue_on_failure` every other date goes on. Either way the report lists each failed
date with its step and error, and the command exits non-zero.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import structlog
from django.utils import timezone

from ..config import PipelineConfig, pipeline_load
from ..errors import ETL_ERRORS, CatchUpTooFar, ConfigurationError, error_retryable
from ..guards import PreviousCounts
from ..logs import progress_bar
from ..models import Backfill, PipelineRun, RunStatus
from ..preflight import preflight_enforce
from ..runs import (
    StepOutcome,
    error_text,
    run_finish,
    run_heartbeat,
    run_start,
    runs_abandon,
    step_begin,
    step_end,
)
from ..selectors import guards_previous, last_loaded_date
from .control import pipeline_controlled
from .pipeline import STEP_FUNCTIONS, STEPS, business_date_parse, step_attempted
from .transform import partitions_transform


@dataclass
class DateOutcome:
    """How one date of a backfill ended: loaded, or failed at `step` with `error`."""

    business_date: date
    run: PipelineRun
    step: str | None = None  # the step that failed; None when the date was loaded
    error: str = ""

    @property
    def loaded(self) -> bool:
        return self.step is None and not self.error


@dataclass
class BackfillReport:
    backfill: Backfill
    dates: list[date]
    outcomes: list[DateOutcome] = field(default_factory=list)
    taken_over: list[PipelineRun] = field(default_factory=list)

    @property
    def failed(self) -> list[DateOutcome]:
        return [o for o in self.outcomes if not o.loaded]

    @property
    def not_started(self) -> list[date]:
        started = {o.business_date for o in self.outcomes}
        return [day for day in self.dates if day not in started]

    def summary(self) -> str:
        b = self.backfill
        loaded = len(self.outcomes) - len(self.failed)
        text = (
            f"backfill #{b.pk} {b.pipeline} {b.first_date}..{b.last_date} {b.status}: "
            f"{len(self.dates)} date(s), {loaded} loaded, {len(self.failed)} failed"
        )
        return text + (f", {len(self.not_started)} not started" if self.not_started else "")

    def failure_lines(self) -> list[str]:
        """One line per date that was not loaded, and why, in date order."""
        lines = [f"{o.business_date} run #{o.run.pk} failed at {o.step}: {o.error}" for o in self.failed]
        if self.not_started:
            first, last = self.not_started[0], self.not_started[-1]
            lines.append(f"{first}..{last}: not started (the backfill stopped at the first failed date)")
        return lines


def dates_between(first: date, last: date) -> list[date]:
    if last < first:
        raise ConfigurationError(f"--to {last} is before --from {first}")
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def nightly_dates(*, config: PipelineConfig) -> list[date]:
    """The dates `run_pipeline --nightly` runs: yesterday in the pipeline's time zone, and with `[run]
    catch_up` every date since the last one loaded; none when yesterday is loaded. Raises
    `CatchUpTooFar` when more than `catch_up_max_dates` are missing: that is a backfill to start knowingly."""
    yesterday = business_date_parse(None, config=config)
    last = last_loaded_date(config=config)
    if last is not None and last >= yesterday:
        return []
    if last is None or not config.run.catch_up:
        return [yesterday]
    missed = dates_between(last + timedelta(days=1), yesterday)
    if len(missed) > config.run.catch_up_max_dates:
        raise CatchUpTooFar(
            f"pipeline {config.name!r} last loaded {last}: {len(missed)} dates to catch up, more than "
            f"[run] catch_up_max_dates = {config.run.catch_up_max_dates}; run a backfill "
            f"(run_pipeline --pipeline {config.name} --from {missed[0]} --to {missed[-1]}) or raise the limit"
        )
    return missed


def pipeline_backfill(
    *,
    pipeline: str,
    dates: Sequence[date],
    command: str,
    continue_on_failure: bool = False,
    parameters: dict | None = None,
) -> BackfillReport:
    """Run every date of `dates` (ascending, consecutive or not) through extract, transform and load,
    holding the pipeline's lock throughout. Raises `PipelineBusy` (nothing written) when the pipeline
    runs, `RunTerminated` on a signal (every open run recorded failed); a failing date does not raise: it
    is in the report, whose backfill record is `failed` when any date was not loaded."""
    days = sorted(set(dates))
    parameters = {"pipeline": pipeline, "from": str(days[0]), "to": str(days[-1]), **(parameters or {})}
    try:
        config = pipeline_load(pipeline)
    except ETL_ERRORS as exc:
        _backfill_refused(pipeline, days, command, parameters, exc)
        raise
    with pipeline_controlled(config=config) as lock:
        backfill = Backfill.objects.using(config.database).create(
            pipeline=config.name,
            first_date=days[0],
            last_date=days[-1],
            command=command,
            started_at=timezone.now(),
            parameters={**parameters, "continue_on_failure": continue_on_failure},
            hostname=socket.gethostname()[:255],
            pid=os.getpid(),
        )
        report = BackfillReport(backfill=backfill, dates=days)
        bound = structlog.contextvars.bound_contextvars(pipeline=config.name, backfill_id=backfill.pk)
        try:
            report.taken_over = runs_abandon(by=backfill)
            # The bar counts the dates ended (loaded or failed); its description says what runs now.
            with (
                bound,
                progress_bar(desc="backfill", unit="date", total=len(days)) as bar,
                lock.heartbeat(backfill),
            ):
                preflight_enforce(config=config, steps=STEPS)
                size = config.run.dates_per_job
                for chunk in (days[i : i + size] for i in range(0, len(days), size)):
                    if not _dates_run(config, report, chunk, command, continue_on_failure, bar=bar):
                        break
        except BaseException as exc:
            _backfill_finish(backfill, error=error_text(exc))
            raise
        failed = report.failure_lines()
        _backfill_finish(backfill, error="; ".join(failed))
    return report


def _dates_run(
    config: PipelineConfig, report: BackfillReport, days: list[date], command: str, go_on: bool, *, bar: Any
) -> bool:
    """Extract each date in order, transform those extracted in one Spark application, load each in
    order. Returns False when a date failed and the backfill is to stop (not `go_on`)."""
    runs: dict[date, PipelineRun] = {}
    ended: dict[date, DateOutcome] = {}
    stop_at: date | None = None

    def fail(day: date, step: str, error: BaseException | str) -> None:
        nonlocal stop_at
        text = error if isinstance(error, str) else error_text(error)
        run_finish(runs[day], error=text)
        ended[day] = DateOutcome(business_date=day, run=runs[day], step=step, error=text)
        bar.update(1)
        if not go_on and stop_at is None:
            stop_at = day

    try:
        for day in days:
            if stop_at is not None:
                break
            runs[day] = run_start(
                pipeline=config.name,
                command=command,
                business_date=day,
                parameters={"pipeline": config.name, "date": str(day), "steps": list(STEPS)},
                using=config.database,
                backfill=report.backfill,
            )
            bar.set_description(f"backfill {day} extract")
            try:
                _step_run(config, runs[day], "extract")
            except Exception as exc:
                fail(day, "extract", exc)
        extracted = [day for day in runs if day not in ended]
        if extracted:
            bar.set_description(f"backfill {extracted[0]}..{extracted[-1]} transform")
        for day, error in _transform_batch(config, {day: runs[day] for day in extracted}).items():
            if error is not None:
                fail(day, "transform", error)
        for day in sorted(runs):
            if day in ended:
                continue
            if stop_at is not None and day > stop_at:
                fail(day, "load", f"not loaded: the backfill stopped at {stop_at}, which failed")
                continue
            bar.set_description(f"backfill {day} load")
            try:
                _step_run(config, runs[day], "load")
            except Exception as exc:
                fail(day, "load", exc)
                continue
            run_finish(runs[day])
            ended[day] = DateOutcome(business_date=day, run=runs[day])
            bar.update(1)
    except BaseException as exc:
        # A signal (or a bug): the dates not yet ended go down with the backfill, recorded failed.
        for day, run in runs.items():
            if day not in ended:
                run_finish(run, error=error_text(exc))
        raise
    finally:
        report.outcomes += [ended[day] for day in sorted(ended)]
    return stop_at is None


def _step_run(config: PipelineConfig, run: PipelineRun, step: str) -> None:
    with structlog.contextvars.bound_contextvars(
        run_id=run.pk, business_date=run.business_date.isoformat(), step=step
    ):
        _step_run_bound(config, run, step)


def _step_run_bound(config: PipelineConfig, run: PipelineRun, step: str) -> None:
    run_heartbeat(run)
    record, outcome = step_begin(run, step)
    try:
        step_attempted(
            config=config,
            outcome=outcome,
            step=step,
            attempt=lambda o: STEP_FUNCTIONS[step](config=config, business_date=run.business_date, outcome=o),
            alive=lambda: run_heartbeat(run),
        )
    except BaseException as exc:
        step_end(record, outcome, error=exc)
        raise
    step_end(record, outcome)


def _transform_batch(
    config: PipelineConfig, runs: dict[date, PipelineRun]
) -> dict[date, BaseException | None]:
    """The transform step of every date of `runs` in one Spark application, each under its own step
    record; dates failing with an error a retry may cure are tried again together, per `[run.retries]`.
    Returns each date's error (None: published)."""
    if not runs:
        return {}
    steps = {day: step_begin(run, "transform") for day, run in runs.items()}
    outcomes = {day: outcome for day, (_, outcome) in steps.items()}
    errors: dict[date, BaseException | None] = {}
    transformed: dict[date, StepOutcome] = {}
    policy = config.run.retries
    pending = sorted(runs)
    try:
        for number in itertools.count(1):
            started = timezone.now()
            for day in pending:
                run_heartbeat(runs[day])
            try:
                batch = partitions_transform(
                    config=config,
                    outcomes={day: outcomes[day] for day in pending},
                    previous=lambda day: _previous_counts(config, day, transformed),
                    published=transformed,
                )
            except Exception as exc:  # the application as a whole: every date failed with it
                batch = dict.fromkeys(pending, exc)
            errors |= batch
            again = [d for d in pending if batch[d] is not None and error_retryable(batch[d])]
            if not again or number >= policy.attempts_of("transform"):
                break
            delay = policy.delay(number)
            for day in again:
                outcomes[day].attempt_failed(batch[day], started=started, delay=delay)
            time.sleep(delay)
            pending = again
    except BaseException as exc:
        for record, outcome in steps.values():
            step_end(record, outcome, error=exc)
        raise
    for day, (record, outcome) in steps.items():
        step_end(record, outcome, error=errors[day])
    return errors


def _previous_counts(
    config: PipelineConfig, day: date, transformed: dict[date, StepOutcome]
) -> PreviousCounts | None:
    """The `max_drop` reference of `day` in a backfill: the nearest earlier date, whether it succeeded
    in an earlier run (the database) or was transformed earlier in this backfill, the latter winning a
    tie as the newer run (date by date it would have been loaded by now)."""
    stored = guards_previous(config=config, business_date=day)
    earlier = max((d for d in transformed if d < day), default=None)
    if earlier is not None and (stored is None or earlier >= stored.business_date):
        outcome = transformed[earlier]
        return PreviousCounts(
            business_date=earlier, run_id=outcome.run_id, datasets=outcome.details.get("datasets") or {}
        )
    return stored


def _backfill_refused(
    pipeline: str, days: list[date], command: str, parameters: dict, exc: BaseException
) -> None:
    """A backfill whose pipeline cannot be read still leaves a failed record, like a run does."""
    now = timezone.now()
    Backfill.objects.create(
        pipeline=pipeline[: Backfill._meta.get_field("pipeline").max_length],
        first_date=days[0],
        last_date=days[-1],
        command=command,
        status=RunStatus.FAILED,
        started_at=now,
        finished_at=now,
        parameters=parameters,
        hostname=socket.gethostname()[:255],
        pid=os.getpid(),
        error=error_text(exc),
    )


def _backfill_finish(backfill: Backfill, *, error: str) -> None:
    backfill.status = RunStatus.FAILED if error else RunStatus.SUCCEEDED
    backfill.error = error
    backfill.finished_at = timezone.now()
    backfill.save(using=backfill._state.db, update_fields=["status", "error", "finished_at"])
