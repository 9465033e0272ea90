"""A pipeline run: one run record for one pipeline and business date, and its steps in order."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, timedelta

import structlog
from django.utils import timezone

from ..config import PipelineConfig, pipeline_load
from ..errors import ETL_ERRORS, ConfigurationError, error_retryable
from ..models import PipelineRun, RunStatus
from ..preflight import preflight_enforce
from ..runs import StepOutcome, error_text, run_finish, run_heartbeat, run_start, step_tracked
from ..selectors import run_status_shown
from .control import pipeline_controlled, run_tracked
from .extract import sources_extract
from .load import warehouse_load
from .transform import partition_transform

log = structlog.get_logger(__name__)

# A step: (config=, business_date=, outcome=) -> None, reporting only through the outcome.
StepFunction = Callable[..., None]

STEPS = ("extract", "transform", "load")
STEP_FUNCTIONS: dict[str, StepFunction] = {
    "extract": sources_extract,
    "transform": partition_transform,
    "load": warehouse_load,
}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def business_date_parse(
    text: str | None, *, config: PipelineConfig | None = None, flag: str = "--date"
) -> date:
    """YYYY-MM-DD, or yesterday in the pipeline's time zone when not given (what a nightly cron wants)."""
    if text is None:
        tz = config.timezone if config else None
        return (datetime.now(tz) - timedelta(days=1)).date()
    if not _DATE.match(text):
        raise ConfigurationError(f"invalid {flag} {text!r}: expected YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise ConfigurationError(f"invalid {flag} {text!r}: {exc}") from None


def pipeline_execute(
    *,
    pipeline: str,
    business_date: str | None,
    steps: Sequence[str],
    command: str,
    resumed_from: PipelineRun | None = None,
    step_functions: Mapping[str, StepFunction] | None = None,
) -> PipelineRun:
    """Run the given steps for one pipeline and date under one run record, holding the pipeline's lock.

    A bad pipeline name or date still leaves a failed run behind. A start that finds the pipeline
    running raises `PipelineBusy` and writes nothing. Raises one of `ETL_ERRORS` (after recording it)
    when a step fails, `RunTerminated` on SIGTERM or SIGINT. The runs this one took over (abandoned by a
    dead process) are on `run.taken_over`. `resumed_from`: the failed run this one resumes.

    `step_functions` replaces some of `STEP_FUNCTIONS` (the task queue's extract, which fans its sources
    out to other workers).
    """
    parameters = {"pipeline": pipeline, "date": business_date, "steps": list(steps)}
    if resumed_from is not None:
        parameters["resume"] = resumed_from.pk
    config: PipelineConfig | None = None
    try:
        config = pipeline_load(pipeline)
    except ETL_ERRORS as exc:
        run = run_start(
            pipeline=pipeline, command=command, business_date=None, parameters=parameters, using="default"
        )
        run_finish(run, error=error_text(exc))
        raise
    try:
        day = business_date_parse(business_date, config=config)
    except ETL_ERRORS as exc:
        run = run_start(
            pipeline=pipeline,
            command=command,
            business_date=None,
            parameters=parameters,
            using=config.database,
        )
        run_finish(run, error=error_text(exc))
        raise
    with pipeline_controlled(config=config) as lock:
        with run_tracked(
            config=config,
            lock=lock,
            command=command,
            business_date=day,
            parameters=parameters,
            resumed_from=resumed_from,
        ) as run:
            # Fail before the first step spends time on what a later one fails for (etlcore/preflight.py).
            preflight_enforce(config=config, steps=steps)
            steps_run(run, config=config, steps=steps, step_functions=step_functions)
    return run


def steps_run(
    run: PipelineRun,
    *,
    config: PipelineConfig,
    steps: Sequence[str],
    step_functions: Mapping[str, StepFunction] | None = None,
) -> None:
    """Each step of the run's business date in turn, each under its own step record."""
    functions = {**STEP_FUNCTIONS, **(step_functions or {})}
    for step in steps:
        run_heartbeat(run)
        with step_tracked(run, step) as outcome:
            step_attempted(
                config=config,
                outcome=outcome,
                step=step,
                attempt=lambda o, step=step: functions[step](
                    config=config, business_date=run.business_date, outcome=o
                ),
                alive=lambda: run_heartbeat(run),
            )


def step_attempted(
    *,
    config: PipelineConfig,
    outcome: StepOutcome,
    step: str,
    attempt: Callable[[StepOutcome], None],
    alive: Callable[[], None] = lambda: None,
) -> None:
    """`attempt(outcome)` until it succeeds, tried again per the pipeline's `[run.retries]` when it fails
    with an error a retry may cure (`errors.error_retryable`), after an exponentially growing delay.
    Every failed try stays on the outcome (`attempts`); the last error propagates. A signal during the
    delay ends the run as it would during the step."""
    policy = config.run.retries
    for number in itertools.count(1):
        started = timezone.now()
        try:
            attempt(outcome)
            return
        except Exception as exc:
            if number >= policy.attempts_of(step) or not error_retryable(exc):
                raise
            delay = policy.delay(number)
            outcome.attempt_failed(exc, started=started, delay=delay)
            log.warning(
                "step_retry_scheduled",
                step=step,
                attempt=number,
                attempts=policy.attempts_of(step),
                delay_seconds=round(delay, 3),
                error=error_text(exc),
            )
        time.sleep(delay)
        alive()


def run_resumable(*, run_id: int, using: str = "default") -> tuple[PipelineRun, list[str]]:
    """The run `--resume RUN_ID` names, and the steps left to run: from its first step that did not
    succeed to the last it was to run (none when it succeeded). Raises `ConfigurationError` for a run
    that cannot be resumed: unknown, never started a date, or still running."""
    run = PipelineRun.objects.using(using).filter(pk=run_id).prefetch_related("steps").first()
    if run is None:
        raise ConfigurationError(f"--resume {run_id}: there is no run #{run_id}")
    if run.business_date is None:
        raise ConfigurationError(f"--resume {run_id}: run #{run_id} never started a date: {run.error}")
    if run.status == RunStatus.SUCCEEDED:
        return run, []
    if run_status_shown(run) == RunStatus.RUNNING:
        raise ConfigurationError(
            f"--resume {run_id}: run #{run_id} is still running (pid {run.pid} on {run.hostname})"
        )
    planned = [s for s in (run.parameters or {}).get("steps") or STEPS if s in STEP_FUNCTIONS]
    done = {step.step for step in run.steps.all() if step.status == RunStatus.SUCCEEDED}
    return run, list(itertools.dropwhile(lambda s: s in done, planned))
