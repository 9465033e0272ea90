"""Prometheus metrics of a finished run, for alerting on the nightly batch (docs/operations.md, "Metrics and
alerts"; the dashboard and alert rules are in deploy/).

A batch run is not a long-lived process to scrape: when a run ends (`runs.run_finish`), its metrics are
built in a registry of their own and published whole, to a file per pipeline that node-exporter's textfile
collector reads, and/or pushed to a Pushgateway under the grouping key {pipeline}. Either way the
pipeline's previous metrics are replaced at once, so every series describes the last run, and a step that
run did not reach has no series.

Labels are bounded: pipeline, step, dataset, kind, cause, status. The business date is a value
(`..._business_date_timestamp_seconds`), never a label, so a backfill of years adds no series.
"""

from __future__ import annotations

import calendar
import logging
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from django.conf import settings
from prometheus_client import CollectorRegistry, generate_latest, push_to_gateway
from prometheus_client.exposition import basic_auth_handler
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from .config import pipeline_names
from .files import private_dirs, private_open
from .models import PipelineRun, RunStatus, StepRun
from .runs import error_text
from .selectors import Freshness, pipeline_freshness

logger = logging.getLogger(__name__)

# The Pushgateway's `job` label; with `pipeline` it is the grouping key, so a push replaces the last run's.
PUSH_JOB = "etl"
# Where a failed publication is recorded on the run (its run record stays as it was otherwise).
PUBLISH_ERROR_KEY = "metrics_publish_error"
FINISHED = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.ABANDONED)
# The record's counts, named as the metrics name them: a rejected row is a quarantined one.
STEP_ROW_KINDS = {"in": "rows_in", "out": "rows_out", "quarantined": "rows_rejected"}
# The transform's per-dataset accounting: in = out + quarantined + duplicates + filtered (reconciled).
DATASET_ROW_KINDS = {
    "in": "rows_in",
    "out": "rows_out",
    "quarantined": "rejected",
    "duplicates": "duplicates",
}


class _Families:
    """A fixed list of metric families as a registry collector."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self.families)


def metrics_registry(
    *, run: PipelineRun, steps: Sequence[StepRun], freshness: Freshness
) -> CollectorRegistry:
    """The run's metrics (and its pipeline's freshness) in a registry of their own; reads nothing."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(metric_families(run=run, steps=steps, freshness=freshness)))
    return registry


def metric_families(*, run: PipelineRun, steps: Sequence[StepRun], freshness: Freshness) -> list[Metric]:
    p = run.pipeline
    run_success = _gauge("etl_run_success", "1 when the pipeline's last run succeeded, else 0", ["pipeline"])
    run_success.add_metric([p], int(run.status == RunStatus.SUCCEEDED))
    run_status = _gauge(
        "etl_run_last_status",
        "1 for the status of the pipeline's last run, 0 for the others",
        ["pipeline", "status"],
    )
    for status in FINISHED:
        run_status.add_metric([p, status], int(run.status == status))
    run_id = _gauge("etl_run_id", "the last run's id (pipeline_status, the admin)", ["pipeline"])
    run_id.add_metric([p], run.pk)
    started = _gauge("etl_run_start_timestamp_seconds", "when the last run started", ["pipeline"])
    started.add_metric([p], run.started_at.timestamp())
    finished = _gauge("etl_run_finish_timestamp_seconds", "when the last run finished", ["pipeline"])
    duration = _gauge("etl_run_duration_seconds", "the last run's duration, start to finish", ["pipeline"])
    if run.finished_at is not None:
        finished.add_metric([p], run.finished_at.timestamp())
        duration.add_metric([p], run.duration_seconds)
    business_date = _gauge(
        "etl_run_business_date_timestamp_seconds",
        "the business date the last run was for, as its midnight UTC",
        ["pipeline"],
    )
    if run.business_date is not None:
        business_date.add_metric([p], _day_timestamp(run.business_date))

    step_success = _gauge(
        "etl_step_success", "1 when the step succeeded in the last run", ["pipeline", "step"]
    )
    step_duration = _gauge(
        "etl_step_duration_seconds", "the step's duration in the last run", ["pipeline", "step"]
    )
    step_attempts = _gauge(
        "etl_step_attempts",
        "tries of the step in the last run ([run.retries]; 1: no retry)",
        ["pipeline", "step"],
    )
    step_rows = _gauge(
        "etl_step_rows",
        "rows the step took in, put out and quarantined in the last run",
        ["pipeline", "step", "kind"],
    )
    dataset_rows = _gauge(
        "etl_dataset_rows",
        "rows per dataset in the last run: extract out = staged; transform in = out + quarantined "
        "+ duplicates + filtered",
        ["pipeline", "step", "dataset", "kind"],
    )
    http_requests = _counter(
        "etl_source_http_requests", "HTTP requests the last run made to the source", ["pipeline", "dataset"]
    )
    http_retries = _counter(
        "etl_source_http_retries", "HTTP retries in the last run, by cause", ["pipeline", "dataset", "cause"]
    )
    throttle_waits = _counter(
        "etl_source_http_throttle_waits",
        "waits the source asked for (429, Retry-After)",
        ["pipeline", "dataset"],
    )
    throttle_seconds = _counter(
        "etl_source_http_throttle_wait_seconds", "seconds spent in those waits", ["pipeline", "dataset"]
    )
    for step in steps:
        step_success.add_metric([p, step.step], int(step.status == RunStatus.SUCCEEDED))
        if step.duration_seconds is not None:
            step_duration.add_metric([p, step.step], step.duration_seconds)
        step_attempts.add_metric([p, step.step], step.attempts)
        for kind, field in STEP_ROW_KINDS.items():
            if getattr(step, field) is not None:
                step_rows.add_metric([p, step.step, kind], getattr(step, field))
        details = step.details if isinstance(step.details, Mapping) else {}
        for dataset, kind, value in _dataset_rows(step.step, details):
            dataset_rows.add_metric([p, step.step, dataset, kind], value)
        if step.step == "extract":
            for dataset, http in _http_counts(details).items():
                http_requests.add_metric([p, dataset], http["requests"])
                for cause, n in sorted(http["retries"].items()):
                    http_retries.add_metric([p, dataset, cause], n)
                throttle_waits.add_metric([p, dataset], http["throttle_waits"])
                throttle_seconds.add_metric([p, dataset], http["throttle_wait_seconds"])

    last_success = _gauge(
        "etl_pipeline_last_success_timestamp_seconds",
        "when a run of the pipeline that loaded a date last succeeded",
        ["pipeline"],
    )
    if freshness.last_success is not None:
        last_success.add_metric([p], freshness.last_success.timestamp())
    last_loaded = _gauge(
        "etl_pipeline_last_loaded_business_date_timestamp_seconds",
        "the latest business date loaded into the warehouse, as its midnight UTC (freshness)",
        ["pipeline"],
    )
    if freshness.last_loaded is not None:
        last_loaded.add_metric([p], _day_timestamp(freshness.last_loaded))
    return [
        run_success,
        run_status,
        run_id,
        started,
        finished,
        duration,
        business_date,
        step_success,
        step_duration,
        step_attempts,
        step_rows,
        dataset_rows,
        http_requests,
        http_retries,
        throttle_waits,
        throttle_seconds,
        last_success,
        last_loaded,
    ]


def _dataset_rows(step: str, details: Mapping[str, Any]) -> Iterable[tuple[str, str, int]]:
    if step == "extract":
        for dataset, facts in sorted(details.items()):
            if isinstance(facts, Mapping) and isinstance(facts.get("rows"), int):
                yield dataset, "out", facts["rows"]
    elif step == "transform":
        for dataset, counts in sorted((details.get("datasets") or {}).items()):
            for kind, key in DATASET_ROW_KINDS.items():
                if isinstance(counts.get(key), int):
                    yield dataset, kind, counts[key]
            if "rows_in" in counts:  # a result from before filters existed has no "filtered"
                yield dataset, "filtered", sum((counts.get("filtered") or {}).values())


def _http_counts(details: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per dataset, the HTTP counters of every try of the extract step (a retried step's earlier tries are
    in `attempts`): the requests the run made, not only its last try's. A source with no counters (a file,
    a record from before they existed) has none: no sample, rather than a zero that was never counted."""
    tries = [details] + [
        a.get("details") or {} for a in details.get("attempts") or [] if isinstance(a, Mapping)
    ]
    totals: dict[str, dict[str, Any]] = {}
    for one in tries:
        for dataset, source in sorted((one.get("sources") or {}).items()):
            http = source.get("http") if isinstance(source, Mapping) else None
            if not isinstance(http, Mapping):
                continue
            total = totals.setdefault(
                dataset, {"requests": 0, "retries": {}, "throttle_waits": 0, "throttle_wait_seconds": 0.0}
            )
            total["requests"] += http.get("requests") or 0
            for cause, n in (http.get("retries") or {}).items():
                total["retries"][cause] = total["retries"].get(cause, 0) + n
            total["throttle_waits"] += http.get("throttle_waits") or 0
            total["throttle_wait_seconds"] += http.get("throttle_wait_seconds") or 0.0
    return totals


def _gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


def _counter(name: str, documentation: str, labels: list[str]) -> CounterMetricFamily:
    # Counted over one run and replaced by the next run's: read the value, not rate() or increase().
    return CounterMetricFamily(name, documentation + " (count of the last run)", labels=labels)


def _day_timestamp(day: date) -> int:
    return calendar.timegm(day.timetuple())


def metrics_publish(*, run: PipelineRun) -> None:
    """Publish a finished run's metrics where settings say (textfile and/or Pushgateway); nothing when
    neither is set. Never raises: metrics must not fail a run. A failure is one warning line and
    `run.parameters["metrics_publish_error"]`, the URL's credentials masked."""
    directory, url = settings.ETL_METRICS_TEXTFILE_DIR, settings.ETL_PUSHGATEWAY_URL
    if not directory and not url:
        return
    errors = []
    try:
        # A name that is no pipeline (a typo on the command line) would leave a series failing forever.
        if run.pipeline not in pipeline_names():
            return
        using = run._state.db or "default"
        registry = metrics_registry(
            run=run,
            steps=list(StepRun.objects.using(using).filter(run=run)),
            freshness=pipeline_freshness(pipeline=run.pipeline, using=using),
        )
    except Exception as exc:
        errors.append(f"not built: {_error_text(exc)}")
    else:
        if directory:
            try:
                metrics_textfile_write(
                    registry=registry,
                    directory=Path(directory),
                    pipeline=run.pipeline,
                    mode=settings.ETL_METRICS_TEXTFILE_MODE,
                )
            except Exception as exc:
                errors.append(f"textfile in {directory}: {_error_text(exc)}")
        if url:
            try:
                metrics_push(registry=registry, url=url, pipeline=run.pipeline)
            except Exception as exc:
                errors.append(f"push to {pushgateway_shown()}: {_error_text(exc)}")
    if errors:
        text = "; ".join(errors)
        logger.warning("metrics of run #%s (%s) not published: %s", run.pk, run.pipeline, text)
        _error_record(run, text)


def metrics_textfile_write(*, registry: CollectorRegistry, directory: Path, pipeline: str, mode: int) -> Path:
    """`<directory>/etl_<pipeline>.prom`, replaced atomically: written to a temporary file beside it (a name
    node-exporter does not read), then renamed, as `prometheus_client.write_to_textfile` does, but with the
    project's file mode and no link followed. Missing folders are made 0700."""
    private_dirs(directory)
    path = directory / f"etl_{pipeline}.prom"
    temporary = directory / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        with os.fdopen(private_open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # explicit: the umask a run holds would narrow a 0640
            fh.write(generate_latest(registry))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def metrics_push(*, registry: CollectorRegistry, url: str, pipeline: str) -> None:
    """PUT to the Pushgateway under {job="etl", pipeline}: it replaces the pipeline's last push."""
    auth = settings.ETL_PUSHGATEWAY_AUTH

    def handler(url: str, method: str, timeout: float | None, headers: list, data: bytes) -> Any:
        return basic_auth_handler(url, method, timeout, headers, data, *auth)

    push_to_gateway(
        url,
        job=PUSH_JOB,
        registry=registry,
        grouping_key={"pipeline": pipeline},
        timeout=settings.ETL_PUSHGATEWAY_TIMEOUT,
        **({"handler": handler} if auth else {}),
    )


def pushgateway_shown() -> str:
    """The Pushgateway's URL as logs and records may show it: credentials as ***."""
    url = settings.ETL_PUSHGATEWAY_URL
    if settings.ETL_PUSHGATEWAY_AUTH and "://" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest}"
    return url


def _error_text(exc: BaseException) -> str:
    text = error_text(exc)
    for secret in settings.ETL_PUSHGATEWAY_AUTH or ():
        if len(secret) >= 4:  # a one-letter user name masked would garble the line, not protect it
            text = text.replace(secret, "***")
    return text


def _error_record(run: PipelineRun, text: str) -> None:
    try:
        run.parameters = {**(run.parameters or {}), PUBLISH_ERROR_KEY: text}
        PipelineRun.objects.using(run._state.db).filter(pk=run.pk).update(parameters=run.parameters)
    except Exception as exc:  # the run's own record was saved already: this note is all that is lost
        logger.warning("run #%s: the metrics error could not be recorded: %s", run.pk, type(exc).__name__)
