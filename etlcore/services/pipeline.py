"""A pipeline run: one run record for one pipeline and business date, and its steps in order."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta

from ..config import PipelineConfig, pipeline_load
from ..errors import ETL_ERRORS, ConfigurationError
from ..models import PipelineRun
from ..runs import error_text, run_finish, run_start, step_tracked
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
    """Run the given steps for one pipeline and date under one run record.

    The run record is written first, so a bad pipeline name or date still leaves a failed run behind.
    Raises one of `ETL_ERRORS` (after recording it) when a step fails.
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
    run = run_start(
        pipeline=pipeline, command=command, business_date=None, parameters=parameters, using=config.database
    )
    try:
        run.business_date = business_date_parse(business_date, config=config)
        steps_run(run, config=config, steps=steps)
    except BaseException as exc:
        run_finish(run, error=error_text(exc))
        raise
    run_finish(run)
    return run


def steps_run(run: PipelineRun, *, config: PipelineConfig, steps: Sequence[str]) -> None:
    """Each step of the run's business date in turn, each under its own step record."""
    for step in steps:
        with step_tracked(run, step) as outcome:
            STEP_FUNCTIONS[step](config=config, business_date=run.business_date, outcome=outcome)
