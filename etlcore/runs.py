"""Run records: start a run, track each step, finish. Written outside any load transaction so a failed
step's record survives the rollback of its data.

A step function reports through one channel, the `StepOutcome` it is handed: it fills counts and details
as it goes, and `step_tracked` writes them on the step's record when the step ends, succeeded or failed,
so what a failed step knew (a log path, the sources that did succeed) is kept.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from django.utils import timezone

from .models import PipelineRun, RunStatus, StepRun


def run_start(
    *, pipeline: str, command: str, business_date: date | None, parameters: dict[str, Any], using: str
) -> PipelineRun:
    # A name the configuration refused is still recorded, cut to its column (PostgreSQL enforces the
    # length); the name as given stays in `parameters`.
    return PipelineRun.objects.using(using).create(
        pipeline=pipeline[: PipelineRun._meta.get_field("pipeline").max_length],
        command=command,
        business_date=business_date,
        parameters=parameters,
        started_at=timezone.now(),
        hostname=socket.gethostname()[:255],
        pid=os.getpid(),
    )


def run_finish(run: PipelineRun, *, error: str = "") -> PipelineRun:
    run.status = RunStatus.FAILED if error else RunStatus.SUCCEEDED
    run.error = error
    run.finished_at = timezone.now()
    run.save(using=run._state.db, update_fields=["status", "error", "finished_at", "business_date"])
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


@contextmanager
def step_tracked(run: PipelineRun, step: str) -> Iterator[StepOutcome]:
    """Record a step: the body fills the yielded outcome, saved on the StepRun however the body ends."""
    using = run._state.db
    record = StepRun.objects.using(using).create(run=run, step=step, started_at=timezone.now())
    outcome = StepOutcome(step=step, run_id=run.pk)
    try:
        yield outcome
    except BaseException as exc:
        record.status = RunStatus.FAILED
        record.error = error_text(exc)
        raise
    else:
        record.status = RunStatus.SUCCEEDED
    finally:
        record.rows_in, record.rows_out = outcome.rows_in, outcome.rows_out
        record.rows_rejected, record.details = outcome.rows_rejected, outcome.details
        record.finished_at = timezone.now()
        record.save(using=using)


def error_text(exc: BaseException) -> str:
    """One line for the user: our errors speak for themselves, anything else shows its type too."""
    from .errors import USER_ERRORS

    message = " ".join(str(exc).split()) or exc.__class__.__name__
    return message if isinstance(exc, USER_ERRORS) else f"{exc.__class__.__name__}: {message}"
