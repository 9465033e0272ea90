"""A pipeline run: one run record for one pipeline and business date, and its steps in order."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta

from ..config import PipelineConfig, pipeline_load
from ..errors import ETL_ERRORS, ConfigurationError
from ..models import PipelineRun
from ..preflight import preflight_enforce
from ..runs import error_text, run_finish, run_heartbeat, run_start, step_tracked
from .control import pipeline_controlled, run_tracked
from .extract import sources_extract
from .load import warehouse_load
from .transform import partition_transform

# A step: (config=, business_date=, outcome=) -> None, reporting only through the outcome.
StepFunction = Callable[..., None]

STEPS = ("extract", "transform", "load")
STEP_FUNCTIONS: dict[str, StepFunction] = {
    "extract": sources_extract,
    "transform": partition_transform,
    "load": warehouse_load,
}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def business_date_parse(text: str | None, *, config: PipelineConfig | None = None) -> date:
    """YYYY-MM-DD, or yesterday in the pipeline's time zone when not given (what a nightly cron wants)."""
    if text is None:
        tz = config.timezone if config else None
        return (datetime.now(tz) - timedelta(days=1)).date()
    if not _DATE.match(text):
        raise ConfigurationError(f"invalid --date {text!r}: expected YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise ConfigurationError(f"invalid --date {text!r}: {exc}") from None


def pipeline_execute(
    *, pipeline: str, business_date: str | None, steps: Sequence[str], command: str
) -> PipelineRun:
    """Run the given steps for one pipeline and date under one run record, holding the pipeline's lock.

    A bad pipeline name or date still leaves a failed run behind. A start that finds the pipeline
    running raises `PipelineBusy` and writes nothing. Raises one of `ETL_ERRORS` (after recording it)
    when a step fails, `RunTerminated` on SIGTERM or SIGINT. The runs this one took over (abandoned by a
    dead process) are on `run.taken_over`.
    """
    parameters = {"pipeline": pipeline, "date": business_date, "steps": list(steps)}
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
            config=config, lock=lock, command=command, business_date=day, parameters=parameters
        ) as run:
            # Fail before the first step spends time on what a later one fails for (etlcore/preflight.py).
            preflight_enforce(config=config, steps=steps)
            steps_run(run, config=config, steps=steps)
    return run


def steps_run(run: PipelineRun, *, config: PipelineConfig, steps: Sequence[str]) -> None:
    """Each step of the run's business date in turn, each under its own step record."""
    for step in steps:
        run_heartbeat(run)
        with step_tracked(run, step) as outcome:
            STEP_FUNCTIONS[step](config=config, business_date=run.business_date, outcome=outcome)
