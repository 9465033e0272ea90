"""Run records: start a run, track each step, finish. Written outside any load transaction so a failed
step's record survives the rollback of its data."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import Any

from django.utils import timezone

from .models import PipelineRun, RunStatus, StepRun


def run_start(
    *, pipeline: str, command: str, business_date: date | None, parameters: dict[str, Any], using: str
) -> PipelineRun:
    return PipelineRun.objects.using(using).create(
        pipeline=pipeline,
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


@contextmanager
def step_tracked(run: PipelineRun, step: str) -> Iterator[StepRun]:
    """Record a step; the body fills rows_in/out/rejected and details on the yielded StepRun."""
    using = run._state.db
    record = StepRun.objects.using(using).create(run=run, step=step, started_at=timezone.now())
    try:
        yield record
    except BaseException as exc:
        record.status = RunStatus.FAILED
        record.error = error_text(exc)
        raise
    else:
        record.status = RunStatus.SUCCEEDED
    finally:
        record.finished_at = timezone.now()
        record.save(using=using)


def error_text(exc: BaseException) -> str:
    """One line for the user: our errors speak for themselves, anything else shows its type too."""
    from .errors import USER_ERRORS

    message = " ".join(str(exc).split()) or exc.__class__.__name__
    return message if isinstance(exc, USER_ERRORS) else f"{exc.__class__.__name__}: {message}"
