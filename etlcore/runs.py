"""Run records: start a run, track each step, finish. Written outside any load transaction so a failed
step's record survives the rollback of its data.

A step function reports through one channel, the `StepOutcome` it is handed: it fills counts and details
as it goes, and `step_tracked` writes them on the step's record when the step ends, succeeded or failed,
so what a failed step knew (a log path, the sources that did succeed) is kept.
"""

from __future__ import annotations

import contextvars
import getpass
import os
import socket
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import structlog
from django.conf import settings
from django.utils import timezone

from .models import Backfill, PipelineRun, RunStatus, StepRun

log = structlog.get_logger(__name__)


def run_start(
    *,
    pipeline: str,
    command: str,
    business_date: date | None,
    parameters: dict[str, Any],
    using: str,
    resumed_from: PipelineRun | None = None,
    backfill: Backfill | None = None,
    origin: str | None = None,
    started_by: str | None = None,
) -> PipelineRun:
    """`origin` and `started_by` default to the carrier's (`runs_carried_by`: a task queue's task), else
    this process's (settings ETL_RUN_ORIGIN / ETL_RUN_STARTED_BY, else the OS user), so every command
    records them without passing them along. A carrying task's id goes in `parameters`."""
    carrier = _CARRIER.get()
    if carrier is not None:
        origin, started_by = origin or carrier.origin, started_by or carrier.started_by
        parameters = {**parameters, "task_id": carrier.task_id}
    # A name the configuration refused is still recorded, cut to its column (PostgreSQL enforces the
    # length); the name as given stays in `parameters`.
    now = timezone.now()
    run = PipelineRun.objects.using(using).create(
        pipeline=pipeline[: PipelineRun._meta.get_field("pipeline").max_length],
        command=command,
        business_date=business_date,
        parameters=parameters,
        started_at=now,
        heartbeat_at=now,
        hostname=socket.gethostname()[:255],
        pid=os.getpid(),
        resumed_from=resumed_from,
        backfill=backfill,
        origin=origin or settings.ETL_RUN_ORIGIN,
        started_by=(started_by or settings.ETL_RUN_STARTED_BY or os_user())[:150],
    )
    log.info(
        "run_started",
        run_id=run.pk,
        pipeline=run.pipeline,
        business_date=_day(business_date),
        command=command,
        resumed_from=resumed_from.pk if resumed_from else None,
        backfill_id=backfill.pk if backfill else None,
    )
    return run


@dataclass(frozen=True)
class RunCarrier:
    """What carries the runs started in a block: a task queue's task (origin `queue`, its id)."""

    origin: str
    started_by: str
    task_id: str
    time_limit: float | None = None  # the task's soft time limit, named when it stops the run


_CARRIER: contextvars.ContextVar[RunCarrier | None] = contextvars.ContextVar("run_carrier", default=None)


@contextmanager
def runs_carried_by(carrier: RunCarrier) -> Iterator[None]:
    """Every run started in the block (a run, a backfill's dates, a replay's) records `carrier`."""
    token = _CARRIER.set(carrier)
    try:
        yield
    finally:
        _CARRIER.reset(token)


def _day(value: date | None) -> str | None:
    return value.isoformat() if value is not None else None


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid with no passwd entry (containers)
        return ""


def run_heartbeat(run: PipelineRun) -> None:
    """The run's process is alive now (written at each step's start; on PostgreSQL also by a thread)."""
    run.heartbeat_at = timezone.now()
    PipelineRun.objects.using(run._state.db).filter(pk=run.pk).update(heartbeat_at=run.heartbeat_at)


def runs_abandon(*, by: PipelineRun | Backfill) -> list[PipelineRun]:
    """Close the pipeline's `running` runs as abandoned. Only the holder of the pipeline's lock may call
    this, with its own run (or backfill) `by` started: holding the lock proves no other process runs the
    pipeline.

    `finished_at` is the run's last sign of life (its heartbeat), the best known time of its death."""
    using = by._state.db
    running = PipelineRun.objects.using(using).filter(pipeline=by.pipeline, status=RunStatus.RUNNING)
    if isinstance(by, PipelineRun):
        running, taker = running.exclude(pk=by.pk), f"run #{by.pk}"
    else:
        taker = f"backfill #{by.pk}"
    dead = list(running)
    for run in dead:
        seen = run.heartbeat_at or run.started_at
        run.status = RunStatus.ABANDONED
        run.finished_at = seen
        run.error = (
            f"abandoned: its process (pid {run.pid} on {run.hostname}) ended without finishing the run; "
            f"last seen {seen:%Y-%m-%d %H:%M:%S %Z}; taken over by {taker}"
        )
        run.save(using=using, update_fields=["status", "finished_at", "error"])
    StepRun.objects.using(using).filter(run__in=dead, status=RunStatus.RUNNING).update(
        status=RunStatus.ABANDONED, error="abandoned with its run"
    )
    Backfill.objects.using(using).filter(pipeline=by.pipeline, status=RunStatus.RUNNING).exclude(
        pk=by.pk if isinstance(by, Backfill) else None
    ).update(
        status=RunStatus.ABANDONED, finished_at=timezone.now(), error=f"abandoned; taken over by {taker}"
    )
    return dead


def run_finish(run: PipelineRun, *, error: str = "") -> PipelineRun:
    run.status = RunStatus.FAILED if error else RunStatus.SUCCEEDED
    run.error = error
    run.finished_at = timezone.now()
    run.save(using=run._state.db, update_fields=["status", "error", "finished_at", "business_date"])
    (log.error if error else log.info)(
        "run_finished",
        run_id=run.pk,
        pipeline=run.pipeline,
        business_date=_day(run.business_date),
        status=run.status,
        duration_seconds=round((run.finished_at - run.started_at).total_seconds(), 3),
        error=error or None,
    )
    from .metrics import metrics_publish  # here: metrics reads selectors, which import this module

    metrics_publish(run=run)  # never raises: a metrics outage does not fail the run
    return run


@dataclass
class StepOutcome:
    """What a step reports on its record: rows in / out / rejected and details (JSON)."""

    step: str
    run_id: int
    rows_in: int = 0
    rows_out: int = 0
    rows_rejected: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    # Earlier tries of the step ([run.retries]): what each knew when it failed; kept on the record.
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def attempt_failed(self, exc: BaseException, *, started: datetime, delay: float) -> None:
        """Close a try that failed and is to be tried again after `delay` seconds: its error and details
        go to `attempts`; the counts and details start afresh for the next try."""
        self.attempts.append(
            {
                "attempt": len(self.attempts) + 1,
                "started_at": started.isoformat(),
                "seconds": round((timezone.now() - started).total_seconds(), 3),
                "error": error_text(exc),
                "retry_in_seconds": round(delay, 3),
                "details": self.details,
            }
        )
        self.rows_in = self.rows_out = self.rows_rejected = 0
        self.details = {}


def step_begin(run: PipelineRun, step: str) -> tuple[StepRun, StepOutcome]:
    """A step's record, written `running`, and the outcome its function fills (see `step_tracked`)."""
    record = StepRun.objects.using(run._state.db).create(run=run, step=step, started_at=timezone.now())
    # run_id/date explicitly: a backfill's steps of several runs share one context.
    log.info("step_started", run_id=run.pk, business_date=_day(run.business_date), step=step)
    return record, StepOutcome(step=step, run_id=run.pk)


def step_end(record: StepRun, outcome: StepOutcome, *, error: BaseException | None = None) -> None:
    """Write what the step reported on its record, succeeded or failed with `error` and its traceback."""
    if error is None:
        record.status = RunStatus.SUCCEEDED
    else:
        record.status = RunStatus.FAILED
        record.error = error_text(error)
        record.traceback = "".join(traceback.format_exception(error)).strip()
    record.rows_in, record.rows_out = outcome.rows_in, outcome.rows_out
    record.rows_rejected, record.details = outcome.rows_rejected, outcome.details
    if outcome.attempts:
        record.details = {**outcome.details, "attempts": outcome.attempts}
    record.attempts = len(outcome.attempts) + 1
    record.finished_at = timezone.now()
    record.save(using=record._state.db)
    (log.error if error is not None else log.info)(
        "step_finished",
        run_id=record.run_id,
        step=record.step,
        status=record.status,
        rows_in=record.rows_in,
        rows_out=record.rows_out,
        rows_rejected=record.rows_rejected,
        duration_seconds=round((record.finished_at - record.started_at).total_seconds(), 3),
        attempts=record.attempts,
        error=record.error or None,
    )


@contextmanager
def step_tracked(run: PipelineRun, step: str) -> Iterator[StepOutcome]:
    """Record a step: the body fills the yielded outcome, saved on the StepRun however the body ends."""
    with structlog.contextvars.bound_contextvars(step=step):
        record, outcome = step_begin(run, step)
        try:
            yield outcome
        except BaseException as exc:
            step_end(record, outcome, error=exc)
            raise
        step_end(record, outcome)


def error_text(exc: BaseException) -> str:
    """One line for the user: our errors speak for themselves, anything else shows its type too."""
    from .errors import USER_ERRORS, RunTerminated

    if _time_limit_reached(exc):
        carrier = _CARRIER.get()
        limit = f" of {carrier.time_limit:g} s" if carrier and carrier.time_limit else ""
        return f"the task's time limit{limit} was reached and the run stopped (docs/celery.md, [queue])"
    message = " ".join(str(exc).split()) or exc.__class__.__name__
    speaks_for_itself = isinstance(exc, (*USER_ERRORS, RunTerminated))
    return message if speaks_for_itself else f"{exc.__class__.__name__}: {message}"


def _time_limit_reached(exc: BaseException) -> bool:
    """A task queue's soft time limit, raised inside whatever the run was doing."""
    try:
        from celery.exceptions import SoftTimeLimitExceeded
    except ImportError:  # pragma: no cover - celery is a dependency; runs work without it
        return False
    return isinstance(exc, SoftTimeLimitExceeded)
