"""The pipeline's runs as Celery tasks, over the same services the commands call (docs/celery.md).

    run_enqueue(pipeline="retail_demo")           # yesterday's run, on any worker consuming the queue

Delivery is at least once: tasks are acknowledged when they end and put back when their worker dies
(settings CELERY_TASK_ACKS_LATE, CELERY_TASK_REJECT_ON_WORKER_LOST). A run task delivered again finds the
run its earlier delivery started (the run record carries the task id) and resumes it from the step that
did not finish, under the pipeline's lock like any run; a delivery whose run succeeded does nothing. So
a killed worker's run ends with the warehouse one run gives, and two deliveries never run at once.

A run is one task that holds the pipeline's lock for the whole run (so that the lock dies with its
process), and fans its sources out as a group of extract tasks on queue `<queue>.extract`, which any
worker may take; it waits for them, then transforms and loads.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import date
from functools import partial
from typing import Any, NoReturn

import structlog
from celery import group, shared_task
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from celery.result import AsyncResult
from django.conf import settings

from .broker import broker_url_required
from .config import PipelineConfig, pipeline_load
from .errors import ETL_ERRORS, PipelineBusy, SourceError
from .files import umask_private
from .models import PipelineRun, RunOrigin, RunStatus
from .runs import RunCarrier, error_text, runs_carried_by
from .selectors import ExtractState, run_status_shown
from .services.backfill import dates_between, pipeline_backfill
from .services.extract import SourceExtracted, source_account_read, source_extract_alone, sources_extract
from .services.pipeline import STEPS, business_date_parse, pipeline_execute, run_resumable
from .services.replay import quarantine_replay

log = structlog.get_logger(__name__)

# The state a run task ends in when the pipeline's lock refused it (a schedule that fired while the
# pipeline ran): shown as such in the admin's task results, and not retried.
REFUSED = "REFUSED"
# A run task delivered again while the lock still names its earlier delivery (the server has not yet
# seen the killed process's connection close) tries again this often, this many times.
REDELIVERY_RETRY_SECONDS = 5
REDELIVERY_RETRIES = 60


class BackfillFailed(Exception):
    """A backfill task with failed dates fails with the backfill's summary; each date's run says why."""


# How often the run task looks at its extract tasks' results.
EXTRACT_POLL_SECONDS = 0.25


def run_enqueue(
    *,
    pipeline: str,
    business_date: str | None = None,
    steps: Sequence[str] | None = None,
    started_by: str = "",
) -> AsyncResult:
    """Enqueue a run of `pipeline` for `business_date` (YYYY-MM-DD; None: yesterday in the pipeline's time
    zone, fixed now, so that a message that waits past midnight still loads the date it was sent for),
    with the pipeline's time limits ([queue]). Raises `ConfigurationError` for an unknown pipeline, a bad
    date or no broker configured, before anything is sent."""
    broker_url_required()
    config = pipeline_load(pipeline)
    day = business_date_parse(business_date, config=config)
    hard, soft = config.queue.limits()
    return pipeline_run.apply_async(
        kwargs={
            "pipeline": pipeline,
            "business_date": day.isoformat(),
            "steps": list(steps or STEPS),
            "started_by": started_by,
        },
        time_limit=hard,
        soft_time_limit=soft,
    )


@shared_task(bind=True, name="etl.pipeline_scheduled", ignore_result=False)
def pipeline_scheduled(self, *, pipeline: str, steps: Sequence[str] | None = None) -> dict[str, Any]:
    """What a schedule fires (pipeline_schedule, django-celery-beat): the run of yesterday in the pipeline's
    time zone, enqueued with the pipeline's time limits as they are configured now."""
    # django-celery-beat sends the periodic task's name as a message header, which becomes a request
    # attribute (not one of `request.properties`, the AMQP properties).
    schedule = getattr(self.request, "periodic_task_name", None) or "schedule"
    result = run_enqueue(pipeline=pipeline, steps=steps, started_by=f"schedule {schedule}")
    log.info("run_enqueued", pipeline=pipeline, task_id=result.id, started_by=f"schedule {schedule}")
    return {"pipeline": pipeline, "run_task": result.id}


@shared_task(bind=True, name="etl.pipeline_run", max_retries=REDELIVERY_RETRIES)
def pipeline_run(
    self,
    *,
    pipeline: str,
    business_date: str | None = None,
    steps: Sequence[str] | None = None,
    started_by: str = "",
) -> dict[str, Any]:
    """One pipeline date, as `manage.py run_pipeline --date` runs it; a delivery after a lost worker
    resumes the run its earlier delivery started."""
    task_id = self.request.id
    steps = list(steps or STEPS)
    earlier = _run_of_task(pipeline=pipeline, task_id=task_id)
    resumed_from = None
    if earlier is not None:
        if earlier.status == RunStatus.SUCCEEDED:  # the worker died after the run, before acknowledging
            return _ended(earlier, again=True)
        if run_status_shown(earlier) == RunStatus.RUNNING:
            raise self.retry(countdown=REDELIVERY_RETRY_SECONDS)
        _, steps = run_resumable(run_id=earlier.pk, using=earlier._state.db)
        resumed_from, business_date = earlier, earlier.business_date.isoformat()
    carrier = _carrier(self, started_by)
    try:
        with runs_carried_by(carrier):
            run = pipeline_execute(
                pipeline=pipeline,
                business_date=business_date,
                steps=steps,
                command="run_pipeline",
                resumed_from=resumed_from,
                step_functions={"extract": partial(sources_extract, fan_out=sources_on_workers)},
            )
    except PipelineBusy as exc:
        if earlier is not None:  # our own earlier delivery's lock, not yet freed by the server
            raise self.retry(countdown=REDELIVERY_RETRY_SECONDS) from None
        _refused(self, pipeline=pipeline, business_date=business_date, reason=error_text(exc))
    return _ended(run, again=earlier is not None)


def _carrier(task: Any, started_by: str) -> RunCarrier:
    """What the runs a task starts record: origin queue, who enqueued it, its id and its soft time limit."""
    _, soft = task.request.timelimit or (None, None)
    return RunCarrier(origin=RunOrigin.QUEUE, started_by=started_by, task_id=task.request.id, time_limit=soft)


def _run_of_task(*, pipeline: str, task_id: str) -> PipelineRun | None:
    """The latest run an earlier delivery of task `task_id` started, if any."""
    try:
        using = pipeline_load(pipeline).database
    except ETL_ERRORS:
        return None  # the run itself fails on it, recorded
    return (
        PipelineRun.objects.using(using)
        .filter(pipeline=pipeline, parameters__task_id=task_id)
        .order_by("-started_at", "-id")
        .first()
    )


def _ended(run: PipelineRun, *, again: bool) -> dict[str, Any]:
    ended = {"run": run.pk, "pipeline": run.pipeline, "business_date": str(run.business_date)}
    return ended | {"status": run.status, "delivered_again": again}


def _refused(task: Any, *, pipeline: str, business_date: str | None, reason: str) -> NoReturn:
    """End the task in state REFUSED, recorded in the results with the reason, and acknowledged."""
    log.warning(
        "run_refused", pipeline=pipeline, business_date=business_date, task_id=task.request.id, reason=reason
    )
    task.update_state(
        state=REFUSED, meta={"pipeline": pipeline, "business_date": business_date, "reason": reason}
    )
    raise Ignore()


def sources_on_workers(
    *,
    config: PipelineConfig,
    business_date: date,
    run_id: int,
    plans: Mapping[str, ExtractState],
    facts: Mapping[str, dict[str, Any]],
) -> Iterator[tuple[str, SourceExtracted | Exception]]:
    """The extract step's fan-out on the task queue: one `extract_source` task per source, as a group any
    worker consuming `<queue>.extract` takes; each source's result as it finishes. Waits at most the
    extract tasks' hard time limit; tasks not finished when the run ends are revoked."""
    hard, soft = config.queue.limits(extract=True)
    names = list(config.datasets)
    signatures = [
        extract_source.signature(
            kwargs={
                "pipeline": config.name,
                "dataset": name,
                "business_date": business_date.isoformat(),
                "run_id": run_id,
            },
            time_limit=hard,
            soft_time_limit=soft,
        )
        for name in names
    ]
    pending = dict(zip(group(signatures).apply_async().results, names, strict=True))
    for result, name in pending.items():
        facts[name]["task_id"] = result.id
    queue = f"{settings.ETL_CELERY_QUEUE}.extract"
    deadline = time.monotonic() + hard
    try:
        while pending:
            for result in [r for r in pending if r.ready()]:
                name = pending.pop(result)
                yield name, _source_result(config, business_date, name, result, facts[name])
            if pending and time.monotonic() > deadline:
                raise SourceError(
                    f"{len(pending)} extract task(s) ({', '.join(sorted(pending.values()))}) did not finish "
                    f"within {hard:g} s: is a worker consuming queue {queue!r}? (docs/celery.md)"
                )
            time.sleep(EXTRACT_POLL_SECONDS)
    finally:
        for result in pending:  # the run ends early: what has not started never will
            result.revoke()


def _source_result(
    config: PipelineConfig, business_date: date, name: str, result: AsyncResult, facts: dict[str, Any]
) -> SourceExtracted | Exception:
    try:
        outcome = result.get(propagate=False, disable_sync_subtasks=False)
    except Exception as exc:  # an exception the backend could not rebuild
        outcome = exc
    if result.successful():
        facts.update(outcome.get("facts") or {}, worker=outcome.get("worker"))
        try:
            return source_account_read(config=config, business_date=business_date, account=outcome)
        except ETL_ERRORS as exc:
            return exc
    if isinstance(outcome, ETL_ERRORS):
        return outcome
    if isinstance(outcome, SoftTimeLimitExceeded):
        _, soft = config.queue.limits(extract=True)
        return SourceError(
            f"source {name!r}: extract task {result.id} stopped at its time limit of {soft:g} s "
            "([queue] extract_time_limit_seconds)"
        )
    return SourceError(f"source {name!r}: extract task {result.id} {result.state}: {error_text(outcome)}")


@shared_task(bind=True, name="etl.extract_source")
def extract_source(self, *, pipeline: str, dataset: str, business_date: str, run_id: int) -> dict[str, Any]:
    """One source of run `run_id` into its raw partition (the run's task records it)."""
    config = pipeline_load(pipeline)
    day = date.fromisoformat(business_date)
    facts: dict[str, Any] = {}
    with (
        umask_private(),
        structlog.contextvars.bound_contextvars(
            run_id=run_id,
            pipeline=pipeline,
            business_date=business_date,
            step="extract",
            task_id=self.request.id,
        ),
    ):
        account = source_extract_alone(
            config=config, dataset=dataset, business_date=day, run_id=run_id, facts=facts
        )
    return account | {"worker": self.request.hostname or socket.gethostname()}


@shared_task(bind=True, name="etl.pipeline_backfill")
def pipeline_backfill_task(
    self,
    *,
    pipeline: str,
    first_date: str,
    last_date: str,
    continue_on_failure: bool = False,
    started_by: str = "",
) -> dict[str, Any]:
    """`run_pipeline --from --to`: every date of the range, each its own run record (extracting on this
    worker: a backfill batches its dates' transforms into one Spark application, docs/operations.md)."""
    days = dates_between(
        business_date_parse(first_date, flag="--from"), business_date_parse(last_date, flag="--to")
    )
    carrier = _carrier(self, started_by)
    try:
        with runs_carried_by(carrier):
            report = pipeline_backfill(
                pipeline=pipeline,
                dates=days,
                command="run_pipeline",
                continue_on_failure=continue_on_failure,
            )
    except PipelineBusy as exc:
        _refused(self, pipeline=pipeline, business_date=f"{first_date}..{last_date}", reason=error_text(exc))
    if report.failed or report.not_started:
        raise BackfillFailed(report.summary())
    return {"pipeline": pipeline, "summary": report.summary()}


@shared_task(bind=True, name="etl.pipeline_resume")
def pipeline_resume(self, *, pipeline: str, run_id: int, started_by: str = "") -> dict[str, Any]:
    """`run_pipeline --resume RUN_ID`: a failed run's date again from its failed step."""
    failed, steps = run_resumable(run_id=run_id, using=pipeline_load(pipeline).database)
    if not steps:
        return _ended(failed, again=False)
    carrier = _carrier(self, started_by)
    try:
        with runs_carried_by(carrier):
            run = pipeline_execute(
                pipeline=failed.pipeline,
                business_date=failed.business_date.isoformat(),
                steps=steps,
                command="run_pipeline",
                resumed_from=failed,
            )
    except PipelineBusy as exc:
        _refused(self, pipeline=pipeline, business_date=str(failed.business_date), reason=error_text(exc))
    return _ended(run, again=False)


@shared_task(bind=True, name="etl.quarantine_replay")
def quarantine_replay_task(
    self,
    *,
    pipeline: str,
    run_id: int | None = None,
    dataset: str | None = None,
    rule: str | None = None,
    business_date: str | None = None,
    started_by: str = "",
) -> dict[str, Any]:
    """`manage.py replay_quarantine`: quarantined rows through the current rules again, date by date."""
    carrier = _carrier(self, started_by)
    try:
        with runs_carried_by(carrier):
            outcomes = quarantine_replay(
                pipeline=pipeline, run_id=run_id, dataset=dataset, rule=rule, business_date=business_date
            )
    except PipelineBusy as exc:
        _refused(self, pipeline=pipeline, business_date=business_date, reason=error_text(exc))
    return {
        "pipeline": pipeline,
        "replayed": [
            {"run": o.run.pk, "business_date": str(o.business_date), "released": o.released} for o in outcomes
        ],
    }


@shared_task(bind=True, name="etl.pipeline_sensor", ignore_result=False)
def pipeline_sensor(self, *, pipeline: str, steps: Sequence[str] | None = None) -> dict[str, Any]:
    """What the sensor's schedule fires ("etl sensor <pipeline>"): one look at the pipeline's sources, a
    run of yesterday enqueued when one has newer data (etlcore/services/trigger.py). A source that fails
    is the check's outcome, recorded, not the task's failure."""
    from .services.trigger import pipeline_sense  # here: this task is the file's only user

    check = pipeline_sense(pipeline=pipeline, steps=steps)
    return {
        "pipeline": pipeline,
        "business_date": str(check.business_date),
        "outcome": check.outcome,
        "run_task": check.task_id or None,
        "reason": check.error or check.reason,
    }
