"""Run control: every command that writes holds its pipeline's lock, traps SIGTERM and SIGINT, and keeps
its run record honest (business date and holder at start, heartbeat, abandoned runs taken over).

    with pipeline_controlled(config=config) as lock:
        with run_tracked(config=config, lock=lock, command=..., business_date=..., parameters=...) as run:
            ...  # steps

docs/operations.md describes what an operator sees: exit codes, locking, abandoned runs, signals.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import Any

import structlog

from ..config import PipelineConfig
from ..errors import RunTerminated
from ..files import umask_private
from ..locks import HeldLock, pipeline_lock
from ..models import Backfill, PipelineRun
from ..runs import error_text, run_finish, run_start, runs_abandon

TRAPPED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def signals_trapped() -> Iterator[None]:
    """SIGTERM and SIGINT raise `RunTerminated` in the main thread, so the run unwinds: the Spark job's
    process group is stopped, the attempt directory removed, the step and run recorded failed. A second
    signal while that happens ends the process at once (the default action): the OS frees the lock and
    the run shows as abandoned. Outside the main thread (a test, a task queue) nothing is trapped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: Any) -> None:
        for trapped in TRAPPED_SIGNALS:
            signal.signal(trapped, signal.SIG_DFL)
        raise RunTerminated(signum)

    previous = {trapped: signal.signal(trapped, on_signal) for trapped in TRAPPED_SIGNALS}
    try:
        yield
    finally:
        for trapped, handler in previous.items():
            signal.signal(trapped, handler)


@contextmanager
def pipeline_controlled(*, config: PipelineConfig) -> Iterator[HeldLock]:
    """Hold the pipeline's lock (or raise `PipelineBusy`, exit 75), with the termination signals trapped
    and a 0o077 umask: what the run and its Spark job create is private to this user (etlcore/files.py)."""
    with (
        umask_private(),
        signals_trapped(),
        pipeline_lock(pipeline=config.name, using=config.database) as lock,
    ):
        yield lock


@contextmanager
def run_tracked(
    *,
    config: PipelineConfig,
    lock: HeldLock,
    command: str,
    business_date: date,
    parameters: dict[str, Any],
    resumed_from: PipelineRun | None = None,
    backfill: Backfill | None = None,
) -> Iterator[PipelineRun]:
    """A run record for the block, written at its start with the date and the holder (host, pid); the
    pipeline's earlier `running` runs are closed as abandoned (the lock proves them dead) and listed on
    `run.taken_over`; the heartbeat runs while the block does; the record is finished however it ends."""
    run = run_start(
        pipeline=config.name,
        command=command,
        business_date=business_date,
        parameters=parameters,
        using=config.database,
        resumed_from=resumed_from,
        backfill=backfill,
    )
    run.taken_over = []
    # Every event of the block (threads started with a copy of the context included) names the run.
    with structlog.contextvars.bound_contextvars(
        run_id=run.pk, pipeline=config.name, business_date=business_date.isoformat()
    ):
        try:
            run.taken_over = runs_abandon(by=run)
            with lock.heartbeat(run):
                yield run
        except BaseException as exc:
            run_finish(run, error=error_text(exc))
            raise
        run_finish(run)
