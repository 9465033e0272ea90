"""The sensor: a run when a pipeline's sources have data newer than what was last extracted.

    pipeline_sense(pipeline="shop")   # one look; what the task etl.pipeline_sensor does every few minutes

It looks at the date a schedule runs, yesterday in the pipeline's time zone. Today is not looked at: its
window is still open, so a run of it would stage part of a day, and every record arriving during the day
would start a whole run (extract, Spark, load); a date is run once it has closed. So a file of yesterday
landing at 02:00 starts its run at the next check, and so does a late row or object stamped yesterday; an
incremental source's records of today start the run of today tomorrow, once today is yesterday.

Each source is asked with `Connector.probe` from the state the last extract saved (the latest partition
of this date or an earlier one: its `state_out`), and for kinds that keep none (files, S3 in full mode)
from when that extract's run began. A run is enqueued when a source shows newer data, unless:

- the same data (the same combined fingerprint) already enqueued a run of this date: whatever that run
  did, the same data does not enqueue again (a failed run is the nightly schedule's or an operator's);
- the pipeline is running (its lock is held);
- the run the sensor enqueued last has not started yet (it waits in the queue: it will read the newer
  data when it runs), for at most the pipeline's run time limit, after which it counts as lost;
- a source's probe failed: the check records the error and enqueues nothing, even when another source
  has newer data (the run would fail on that source too); the next check asks again.

A source that cannot be probed (`ProbeUnsupported`: PostgreSQL full refresh, REST without incremental)
counts as unknown: it neither starts a run nor prevents one.

Every check is recorded (`SensorCheck`); a pipeline keeps its latest SENSOR_CHECKS_KEPT checks and its
latest `enqueued` one, the reference that keeps the same data from enqueuing twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

import structlog
from django.db import transaction
from django.utils import timezone

from connectors import build_connector
from connectors.base import LastExtract
from connectors.errors import ProbeUnsupported
from connectors.watermarks import fingerprint

from ..config import PipelineConfig, pipeline_load
from ..errors import ETL_ERRORS
from ..locks import busy_message, lock_held, lock_try
from ..models import SensorCheck, SensorOutcome, StagedPartition
from ..runs import error_text

log = structlog.get_logger(__name__)

# What the run records of the sensor's runs say started them.
STARTED_BY = "sensor"
# Checks kept per pipeline (besides its latest `enqueued` one): a few hours at the default interval.
SENSOR_CHECKS_KEPT = 50


def pipeline_sense(
    *, pipeline: str, now: datetime | None = None, steps: Sequence[str] | None = None
) -> SensorCheck:
    """Ask every source of `pipeline` whether it has data newer than its last extract, for yesterday in
    the pipeline's time zone (at `now`), and enqueue a run of that date (`steps`, default all) when one
    has and nothing above forbids it. Returns the check, recorded. Raises `ConfigurationError` for an
    unknown pipeline; a source's failure is the check's outcome, never an exception."""
    config = pipeline_load(pipeline)
    now = now or timezone.now()
    day = (now.astimezone(config.timezone) - timedelta(days=1)).date()
    check = SensorCheck(pipeline=pipeline, business_date=day, checked_at=now)
    if not config.trigger.enabled:
        check.outcome = SensorOutcome.DISABLED
        check.reason = f"[trigger] enabled is false in {config.source_file.name}"
        return _recorded(config, check)
    # The sensor's own lock: two checks of one pipeline at once (a backlog of sensor tasks taken by two
    # workers) would both enqueue. Not the pipeline's lock, which a run starting meanwhile must find free.
    held = lock_try(pipeline=f"{pipeline}.sensor", using=config.database)
    if held is None:
        check.outcome = SensorOutcome.BUSY
        check.reason = "another check of this pipeline is running"
        return _recorded(config, check)
    try:
        return _sense(config, check, steps=steps)
    finally:
        held.release()


def _sense(config: PipelineConfig, check: SensorCheck, *, steps: Sequence[str] | None) -> SensorCheck:
    check.sources = sources_probe(config=config, business_date=check.business_date)
    check.fingerprint = fingerprint({name: seen.get("fingerprint") for name, seen in check.sources.items()})
    failed = {name: seen["error"] for name, seen in check.sources.items() if "error" in seen}
    if failed:
        check.outcome = SensorOutcome.ERROR
        check.error = " | ".join(failed.values())
        return _recorded(config, check)
    newer = sorted(name for name, seen in check.sources.items() if seen["newer"])
    unknown = sorted(name for name, seen in check.sources.items() if seen["newer"] is None)
    unknown_said = f" ({', '.join(unknown)}: cannot be probed)" if unknown else ""
    if not newer:
        check.outcome = SensorOutcome.UNCHANGED
        check.reason = f"no source has data newer than its last extract{unknown_said}"
        return _recorded(config, check)
    check.reason = f"newer data in {', '.join(newer)}{unknown_said}"
    last = (
        SensorCheck.objects.using(config.database)
        .filter(pipeline=config.name, outcome=SensorOutcome.ENQUEUED)
        .order_by("-checked_at", "-id")
        .first()
    )
    seen = (check.business_date, check.fingerprint)
    if last is not None and (last.business_date, last.fingerprint) == seen:
        check.outcome = SensorOutcome.UNCHANGED
        check.reason = f"the same data enqueued run task {last.task_id} at {_when(last.checked_at)}"
        return _recorded(config, check)
    if lock_held(pipeline=config.name, using=config.database):
        check.outcome = SensorOutcome.BUSY
        check.reason = busy_message(pipeline=config.name, using=config.database)
        return _recorded(config, check)
    if last is not None and _still_queued(config, last, now=check.checked_at):
        check.outcome = SensorOutcome.BUSY
        check.reason = (
            f"run task {last.task_id}, enqueued at {_when(last.checked_at)}, has not started; it reads the "
            f"newer data when it does ({check.reason})"
        )
        return _recorded(config, check)
    from ..tasks import run_enqueue  # the task module imports the services: imported when used

    try:
        result = run_enqueue(
            pipeline=config.name,
            business_date=check.business_date.isoformat(),
            steps=steps,
            started_by=STARTED_BY,
        )
    except Exception as exc:  # the broker down: recorded, the next check tries again
        check.outcome = SensorOutcome.ERROR
        check.error = f"the run could not be enqueued: {error_text(exc)}"
        return _recorded(config, check)
    check.outcome = SensorOutcome.ENQUEUED
    check.task_id = result.id
    return _recorded(config, check)


def sources_probe(*, config: PipelineConfig, business_date: date) -> dict[str, dict[str, Any]]:
    """Every source's probe for the date's window, from what its last extract saved: per source
    {"fingerprint", "newer": true | false | null (cannot be probed)}, or {"error"} when its probe failed
    (one source's failure never stops the others)."""
    window = config.window(business_date)
    seen: dict[str, dict[str, Any]] = {}
    for name, dataset in config.datasets.items():
        partition = (
            StagedPartition.objects.using(config.database)
            .filter(pipeline=config.name, dataset=name, business_date__lte=business_date)
            .select_related("run")
            .order_by("-business_date")
            .first()
        )
        state = partition.state_out if partition is not None else None
        last = _last_extract(config, partition)
        source = None
        try:
            source = build_connector(name=name, options=dataset.source, state=state)
            found = source.probe(window, last=last)
        except ProbeUnsupported as exc:
            seen[name] = {"fingerprint": None, "newer": None, "unsupported": error_text(exc)}
        except (*ETL_ERRORS, OSError) as exc:
            text = error_text(exc)
            seen[name] = {"error": text if f"source {name!r}" in text else f"source {name!r}: {text}"}
            log.warning("sensor_probe_failed", pipeline=config.name, dataset=name, error=seen[name]["error"])
        except Exception as exc:  # a library's own error: still this source's alone
            seen[name] = {"error": f"source {name!r}: {error_text(exc)}"}
            log.warning("sensor_probe_failed", pipeline=config.name, dataset=name, error=seen[name]["error"])
        else:
            seen[name] = {"fingerprint": found.fingerprint, "newer": found.newer}
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
    return seen


def _last_extract(config: PipelineConfig, partition: StagedPartition | None) -> LastExtract | None:
    """When the partition's extract began reading: its run's start (the extract began after it, so a
    change at that instant counts as newer), else its publication for a partition whose run is gone."""
    if partition is None:
        return None
    started = partition.run.started_at if partition.run is not None else partition.published_at
    return LastExtract(window=config.window(partition.business_date), started_at=started)


def _still_queued(config: PipelineConfig, last: SensorCheck, *, now: datetime) -> bool:
    """Whether the run task the sensor enqueued last waits in the queue: no worker has reported it (the
    results record a task once it starts), and it is younger than the run's time limit (beyond it, a
    message purged or lost is not waited for)."""
    from celery.result import AsyncResult

    if not last.task_id or now - last.checked_at > timedelta(seconds=config.queue.time_limit_seconds):
        return False
    return AsyncResult(last.task_id).state == "PENDING"


def _recorded(config: PipelineConfig, check: SensorCheck) -> SensorCheck:
    """Save the check, drop the pipeline's checks beyond the kept ones, and log it."""
    using = config.database
    with transaction.atomic(using=using):
        check.save(using=using)
        checks = SensorCheck.objects.using(using).filter(pipeline=check.pipeline)
        kept = list(checks.order_by("-checked_at", "-id").values_list("id", flat=True)[:SENSOR_CHECKS_KEPT])
        enqueued = checks.filter(outcome=SensorOutcome.ENQUEUED).order_by("-checked_at", "-id")
        kept += list(enqueued.values_list("id", flat=True)[:1])
        checks.exclude(id__in=kept).delete()
    log.info(
        "sensor_checked",
        pipeline=check.pipeline,
        business_date=str(check.business_date),
        outcome=check.outcome,
        task_id=check.task_id or None,
        reason=check.reason or None,
        error=check.error or None,
    )
    return check


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S %Z}"
