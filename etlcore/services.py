"""The pipeline's steps as service functions. Commands, cron and tests are thin interfaces over these.

Each step finds its input from (pipeline, business date) alone:
  extract   source           -> raw/<dataset>/date=D        (one partition per dataset)
  transform raw/*/date=D     -> transformed/date=D          (spark-submit)
  load      transformed/date=D -> warehouse tables          (one transaction)
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from django.db import connections, transaction
from django.utils import timezone

from connectors import build_connector
from connectors.base import ExtractWindow
from connectors.errors import SchemaDriftError
from connectors.records import (
    FieldObserver,
    SchemaDrift,
    schema_drift,
    staging_schema,
    to_staging_batch,
)
from spark_jobs.contract import JobContract, job_contract

from . import staging
from .config import DatasetConfig, PipelineConfig, pipeline_load
from .errors import (
    ETL_ERRORS,
    ConfigurationError,
    PartitionNotFound,
    ReconciliationError,
    SourceError,
    SparkJobError,
)
from .guards import guards_enforce
from .models import PipelineRun, StagedPartition, StepRun
from .runs import error_text, run_finish, run_start, step_tracked
from .spark import job_submit

logger = logging.getLogger(__name__)

STEPS = ("extract", "transform", "load")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass
class StepOutcome:
    step: str
    rows_in: int = 0
    rows_out: int = 0
    rows_rejected: int = 0
    details: dict[str, Any] = field(default_factory=dict)


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
        for step in steps:
            with step_tracked(run, step) as record:
                outcome = STEP_FUNCTIONS[step](config=config, business_date=run.business_date, step=record)
                _record_outcome(record, outcome)
    except BaseException as exc:
        run_finish(run, error=error_text(exc))
        raise
    run_finish(run)
    return run


def extract_partitions(*, config: PipelineConfig, business_date: date, step: StepRun) -> StepOutcome:
    """Pull every dataset's window from its source into a published raw partition.

    Sources are independent: they run concurrently (`extract_workers` at a time), each from its own saved
    state, and one failing does not stop the others. Each partition is recorded with its connector's
    next state once published, in the main thread; the step then fails naming every source that failed.
    """
    outcome = StepOutcome("extract")
    window = config.window(business_date)
    using = config.database
    plans = {
        name: extract_state_lookup(config=config, dataset=name, business_date=business_date)
        for name in config.datasets
    }
    failures: dict[str, BaseException] = {}
    workers = max(1, min(config.extract_workers, len(config.datasets)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="extract") as pool:
        futures = {
            pool.submit(
                _dataset_extract,
                config=config,
                dataset=dataset,
                window=window,
                run_id=step.run_id,
                state=plans[name].state,
                previous_fields=plans[name].previous_fields,
            ): name
            for name, dataset in config.datasets.items()
        }
        for future in as_completed(futures):
            name = futures[future]
            try:
                extracted = future.result()
            except Exception as exc:
                failures[name] = exc
                step.details[name] = {"error": error_text(exc)}
                if isinstance(exc, SchemaDriftError):
                    step.details[name]["drift"] = exc.drift.as_dict()
                continue
            _partition_record(extracted, run_id=step.run_id, state_in=plans[name].state, using=using)
            outcome.rows_in += extracted.manifest.row_count
            outcome.rows_out += extracted.manifest.row_count
            details: dict[str, Any] = {
                "rows": extracted.manifest.row_count,
                "partition": str(extracted.ref.dir),
                "checksum": extracted.manifest.checksum,
                "seconds": extracted.seconds,
            }
            if extracted.drift:
                details["drift"] = extracted.drift.as_dict()
            outcome.details[name] = step.details[name] = details
    if failures:
        step.rows_in, step.rows_out = outcome.rows_in, outcome.rows_out
        raise _extract_failure(failures, total=len(config.datasets))
    return outcome


@dataclass(frozen=True)
class ExtractState:
    """Where a dataset's extract of one date starts: the connector state, and the source fields of the
    previous partition (the reference for type drift)."""

    state: dict[str, Any] | None
    previous_fields: dict[str, str] | None


def extract_state_lookup(*, config: PipelineConfig, dataset: str, business_date: date) -> ExtractState:
    """The date's own `state_in` if it was extracted before (a re-run reads the same range again), else
    the `state_out` of the latest earlier date, else None (the connector's configured start)."""
    rows = StagedPartition.objects.using(config.database).filter(pipeline=config.name, dataset=dataset)
    same = rows.filter(business_date=business_date).first()
    before = rows.filter(business_date__lt=business_date).order_by("-business_date").first()
    if same is not None:
        state = same.state_in
    else:
        state = before.state_out if before is not None else None
    return ExtractState(state=state, previous_fields=before.source_fields if before is not None else None)


@dataclass
class _Extracted:
    dataset: str
    ref: staging.PartitionRef
    manifest: staging.Manifest
    source: str
    state_out: dict[str, Any] | None
    fields: dict[str, str]
    drift: SchemaDrift
    seconds: float


def _dataset_extract(
    *,
    config: PipelineConfig,
    dataset: DatasetConfig,
    window: ExtractWindow,
    run_id: int,
    state: Mapping[str, Any] | None,
    previous_fields: Mapping[str, str] | None,
) -> _Extracted:
    """One source into its partition; runs in a worker thread and touches no database."""
    started = time.monotonic()
    connector = None
    try:
        connector = build_connector(name=dataset.name, options=dataset.source, state=state)
        source = connector.describe()
        label = f"source {dataset.name!r} ({source})"
        observer = FieldObserver(explode=dataset.explode)
        drift: list[SchemaDrift] = []

        def batches() -> Iterator[Any]:
            for batch in connector.iter_batches(window):
                observer.observe(batch)
                yield to_staging_batch(
                    batch, columns=dataset.columns, explode=dataset.explode, source_label=label
                )
            # Raising here, after the last batch, still prevents the partition from being published.
            drift.append(_drift_check(dataset, observer, previous_fields))

        ref = _raw_ref(config, dataset.name, window.business_date)
        manifest = staging.raw_partition_write(
            ref,
            schema=staging_schema(dataset.columns),
            batches=batches(),
            source=source,
            window={"start": window.start.isoformat(), "end": window.end.isoformat()},
            run_id=run_id,
        )
        return _Extracted(
            dataset=dataset.name,
            ref=ref,
            manifest=manifest,
            source=source,
            state_out=connector.next_state,
            fields=observer.fields(),
            drift=drift[0],
            seconds=round(time.monotonic() - started, 3),
        )
    finally:
        close = getattr(connector, "close", None)
        if close is not None:
            close()
        connections.close_all()  # this thread's own connections, if anything opened one


def _drift_check(
    dataset: DatasetConfig, observer: FieldObserver, previous_fields: Mapping[str, str] | None
) -> SchemaDrift:
    if not observer.rows:
        return SchemaDrift()  # nothing delivered says nothing about the fields
    drift = schema_drift(
        observed=observer.fields(),
        columns=dataset.columns,
        null_paths=observer.null_paths,
        previous=previous_fields,
    )
    if drift and dataset.drift == "fail":
        raise SchemaDriftError(
            f'source {dataset.name!r}: schema drift (drift = "fail"): {drift.describe()}', drift=drift
        )
    if drift:
        logger.warning("source %r: schema drift: %s", dataset.name, drift.describe())
    return drift


def _partition_record(
    extracted: _Extracted, *, run_id: int, state_in: Mapping[str, Any] | None, using: str
) -> StagedPartition:
    """Record the published partition and the state to continue from, in one transaction."""
    manifest = extracted.manifest
    with transaction.atomic(using=using):
        row, _ = StagedPartition.objects.using(using).update_or_create(
            pipeline=manifest.pipeline,
            dataset=extracted.dataset,
            business_date=extracted.ref.business_date,
            defaults={
                "run_id": run_id,
                "row_count": manifest.row_count,
                "checksum": manifest.checksum,
                "manifest": str(extracted.ref.manifest_path),
                "source": extracted.source[:1000],
                "state_in": state_in,
                "state_out": extracted.state_out,
                "source_fields": extracted.fields,
                "drift": extracted.drift.as_dict() if extracted.drift else {},
                "published_at": timezone.now(),
            },
        )
    return row


def _extract_failure(failures: Mapping[str, BaseException], *, total: int) -> BaseException:
    """One failure as it was (it names its source); several as one SourceError naming each."""
    messages = []
    for name, exc in sorted(failures.items()):
        text = error_text(exc)
        messages.append(text if f"source {name!r}" in text else f"source {name!r}: {text}")
    if len(failures) == 1:
        ((name, exc),) = failures.items()
        if isinstance(exc, ETL_ERRORS) and messages[0] == error_text(exc):
            return exc
        error = SourceError(messages[0])
    else:
        error = SourceError(f"{len(failures)} of {total} sources failed: " + " | ".join(messages))
    error.__cause__ = next(iter(failures.values()))
    return error


def job_spec(
    config: PipelineConfig,
    *,
    business_date: date,
    staged: Mapping[str, tuple[Sequence[Path], int]],
    output_dir: Path,
) -> dict[str, Any]:
    """The Spark job's spec (docs/architecture.md) from the pipeline and each dataset's staged files and
    row count. The transform step and the transform benchmark both build it here. ``constraints`` are
    the warehouse's limits on each output column, from the models: the job checks them row by row."""
    from warehouse.loading.specs import output_constraints

    inputs = {
        dataset.name: {
            "files": [str(p) for p in staged[dataset.name][0]],
            "columns": dataset.spark_columns(),
            "rules": dataset.spark_rules(),
            "key": list(dataset.key),
            "version_column": dataset.version_column,
            "business_date_column": dataset.business_date_column,
            "rows": staged[dataset.name][1],
        }
        for dataset in config.datasets.values()
    }
    return {
        "pipeline": config.name,
        "business_date": business_date.isoformat(),
        "timezone": config.timezone.key,
        "inputs": inputs,
        "output_dir": str(output_dir),
        "pseudonym_key_env": config.spark.pseudonym_key_env,
        "reporting_currency": config.spark.reporting_currency,
        "options": dict(config.spark.options),
        "constraints": output_constraints(),
    }


def transform_partition(*, config: PipelineConfig, business_date: date, step: StepRun) -> StepOutcome:
    """Submit the pipeline's Spark job over the date's raw partitions; publish its outputs atomically."""
    contract = transform_contract(config=config)
    staged: dict[str, tuple[list[Path], int]] = {}
    for dataset in config.datasets.values():
        ref = _raw_ref(config, dataset.name, business_date)
        manifest = staging.manifest_read(ref)
        staged[dataset.name] = (staging.manifest_files(ref, manifest), manifest.row_count)
    ref = _transformed_ref(config, business_date)
    log_path = (
        config.staging_root
        / config.name
        / "logs"
        / f"{business_date.isoformat()}-run{step.run_id}-transform.log"
    )
    with staging.partition_attempt(ref) as attempt:
        spec = job_spec(config, business_date=business_date, staged=staged, output_dir=attempt)
        inputs = spec["inputs"]
        # Facts about the submit go on the step record before anything can fail, so a failure keeps them.
        step.details["log"] = str(log_path)
        try:
            submitted = job_submit(
                config, spec=spec, work_dir=attempt, log_path=log_path, timeout=config.spark.timeout_seconds
            )
        except SparkJobError as exc:
            step.details |= exc.facts
            raise
        step.details |= submitted.facts()
        result = _read_job_result(attempt, log_path, contract)
        _reconcile(result, inputs)
        # Volume guards (etlcore/guards.py) before publishing: a failing guard leaves no partition to load.
        step.details["datasets"] = result["datasets"]
        guards_enforce(config=config, business_date=business_date, counts=result["datasets"], step=step)
        manifest = _transformed_manifest(ref, attempt, result, step.run_id, contract)
        staging.partition_publish(ref, manifest, attempt)

    datasets = result["datasets"]
    return StepOutcome(
        "transform",
        rows_in=sum(d["rows_in"] for d in datasets.values()),
        rows_out=sum(d["rows_out"] for d in datasets.values()),
        rows_rejected=sum(d["rejected"] for d in datasets.values()),
        details={"datasets": datasets, "outputs": result["outputs"], "partition": str(ref.dir)},
    )


def load_partition(*, config: PipelineConfig, business_date: date, step: StepRun) -> StepOutcome:
    """Load the date's transformed partition into the warehouse in one transaction."""
    from warehouse.loaders import partition_load

    ref = _transformed_ref(config, business_date)
    manifest = staging.manifest_read(ref)
    outputs = {name: [ref.dir / f for f in out["files"]] for name, out in manifest.outputs.items()}
    result = partition_load(
        outputs=outputs,
        pipeline=config.name,
        business_date=business_date,
        run_id=step.run_id,
        using=config.database,
    )
    return StepOutcome(
        "load",
        rows_in=sum(out["rows"] for out in manifest.outputs.values()),
        rows_out=result.fact_rows,
        rows_rejected=result.rows_loaded.get("quarantine", 0),
        details={
            "loaded": result.rows_loaded,
            "deleted_stale": result.rows_deleted,
            # Reconciliation across partitions: which staged lines were new, which replaced a version another
            # partition supplied (per business date), which the warehouse holds newer; dates recomputed.
            "lines": {output: asdict(load) for output, load in result.facts.items()},
            "partition": str(ref.dir),
            "checksum": manifest.checksum,
        },
    )


STEP_FUNCTIONS = {"extract": extract_partitions, "transform": transform_partition, "load": load_partition}


@dataclass
class ReplayOutcome:
    """One date's replay: quarantined records selected by the filters, and what became of them."""

    run: PipelineRun
    business_date: date
    selected: int
    released: int
    still_quarantined: int
    reasons_now: dict[str, int] = field(default_factory=dict)


def quarantine_select(
    *,
    config: PipelineConfig,
    run_id: int | None = None,
    dataset: str | None = None,
    rule: str | None = None,
    business_date: date | None = None,
):
    """Quarantined records of the pipeline matching every given filter.

    ``run_id`` is the run that first quarantined the record; ``rule`` matches any of the record's codes
    (the first is ``reason_code``, all of them head a part of ``message``).
    """
    from django.db.models import Q

    from warehouse.models import QuarantinedRow

    if dataset is not None and dataset not in config.datasets:
        known = ", ".join(sorted(config.datasets))
        raise ConfigurationError(f"pipeline {config.name!r} has no dataset {dataset!r} (known: {known})")
    rows = QuarantinedRow.objects.using(config.database).filter(pipeline=config.name)
    if run_id is not None:
        rows = rows.filter(first_run_id=run_id)
    if dataset is not None:
        rows = rows.filter(dataset=dataset)
    if rule is not None:
        rows = rows.filter(Q(reason_code=rule) | Q(message__regex=rf"(^|; ){re.escape(rule)}(:| \(|;|$)"))
    if business_date is not None:
        rows = rows.filter(business_date=business_date)
    return rows


def quarantine_replay(
    *,
    pipeline: str,
    run_id: int | None = None,
    dataset: str | None = None,
    rule: str | None = None,
    business_date: str | None = None,
) -> list[ReplayOutcome]:
    """Send quarantined rows through the pipeline's CURRENT rules again; load those that now pass.

    The raw layer keeps every extracted row, so the faithful replay is to transform and load again each
    date holding matching records: rows that now pass are loaded, rows that still fail stay in
    quarantine with their new reason (the loader upserts quarantine records by fingerprint and deletes
    those no longer produced; ``first_run`` is kept). Every other row of the date goes through the
    current rules too, as a re-run would. One run record (command ``replay_quarantine``) per date, with
    a ``replay`` step: selected / released / still quarantined, and the quarantine table before and after.
    Fails before replaying anything when a date's raw partition is gone.
    """
    config = pipeline_load(pipeline)
    day = business_date_parse(business_date, config=config) if business_date is not None else None
    filters = {"pipeline": pipeline, "run": run_id, "dataset": dataset, "rule": rule, "date": business_date}
    selection = quarantine_select(config=config, run_id=run_id, dataset=dataset, rule=rule, business_date=day)
    dates = sorted(set(selection.values_list("business_date", flat=True)))
    missing = []
    for replay_day in dates:
        for name in config.datasets:
            try:
                staging.manifest_read(_raw_ref(config, name, replay_day))
            except ETL_ERRORS as exc:
                missing.append(str(exc))
    if missing:
        error = PartitionNotFound(
            f"cannot replay quarantined rows: the raw layer no longer holds {'; '.join(missing)} "
            "(extract the date again first)"
        )
        run = run_start(
            pipeline=config.name,
            command="replay_quarantine",
            business_date=dates[0],
            parameters=filters,
            using=config.database,
        )
        run_finish(run, error=error_text(error))
        raise error
    return [_replay_date(config, replay_day, selection, filters) for replay_day in dates]


def _replay_date(config: PipelineConfig, day: date, selection, filters: dict[str, Any]) -> ReplayOutcome:
    from warehouse.models import QuarantinedRow

    using = config.database
    table = QuarantinedRow.objects.using(using).filter(pipeline=config.name, business_date=day)
    chosen = set(selection.filter(business_date=day).values_list("dataset", "record_fingerprint"))
    before = table.count()
    run = run_start(
        pipeline=config.name, command="replay_quarantine", business_date=day, parameters=filters, using=using
    )
    try:
        for step in ("transform", "load"):
            with step_tracked(run, step) as record:
                _record_outcome(record, STEP_FUNCTIONS[step](config=config, business_date=day, step=record))
        with step_tracked(run, "replay") as record:
            remaining = [
                (row.dataset, row.record_fingerprint, row.reason_code)
                for row in table.only("dataset", "record_fingerprint", "reason_code")
                if (row.dataset, row.record_fingerprint) in chosen
            ]
            reasons_now: dict[str, int] = {}
            for _, _, code in remaining:
                reasons_now[code] = reasons_now.get(code, 0) + 1
            outcome = ReplayOutcome(
                run=run,
                business_date=day,
                selected=len(chosen),
                released=len(chosen) - len(remaining),
                still_quarantined=len(remaining),
                reasons_now=dict(sorted(reasons_now.items())),
            )
            record.rows_in, record.rows_out = outcome.selected, outcome.released
            record.rows_rejected = outcome.still_quarantined
            record.details = {
                "filters": filters,
                "selected": outcome.selected,
                "released": outcome.released,
                "still_quarantined": outcome.still_quarantined,
                "reasons_now": outcome.reasons_now,
                "quarantine_before": before,
                "quarantine_after": table.count(),
            }
    except BaseException as exc:
        run_finish(run, error=error_text(exc))
        raise
    run_finish(run)
    return outcome


def runs_latest(*, pipeline: str | None = None, limit: int = 20, using: str = "default") -> list[PipelineRun]:
    runs = PipelineRun.objects.using(using).prefetch_related("steps")
    if pipeline:
        runs = runs.filter(pipeline=pipeline)
    return list(runs.order_by("-started_at", "-id")[:limit])


def _raw_ref(config: PipelineConfig, dataset: str, business_date: date) -> staging.PartitionRef:
    return staging.PartitionRef(config.staging_root, config.name, staging.RAW, business_date, dataset)


def _transformed_ref(config: PipelineConfig, business_date: date) -> staging.PartitionRef:
    return staging.PartitionRef(config.staging_root, config.name, staging.TRANSFORMED, business_date)


def transform_contract(*, config: PipelineConfig) -> JobContract:
    """The outputs the pipeline's job declares (spark_jobs/contract.py)."""
    try:
        return job_contract(config.spark.job)
    except KeyError as exc:
        raise ConfigurationError(f"pipeline {config.name!r}: {exc.args[0]}") from None


def _read_job_result(attempt: Path, log_path: Path, contract: JobContract) -> dict[str, Any]:
    import json

    try:
        result = json.loads((attempt / "_result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SparkJobError(f"spark job wrote no readable _result.json ({exc}); log: {log_path}") from None
    missing = [name for name in contract.names if not (attempt / name).is_dir()]
    if missing:
        raise SparkJobError(f"spark job did not write output(s) {missing}; log: {log_path}")
    return result


def _reconcile(result: dict[str, Any], inputs: dict[str, Any]) -> None:
    """Every staged row must come out as kept, rejected, a removed duplicate or filtered by a named rule:
    rows extracted = rows_out + rejected + duplicates + sum(filtered). Nothing unaccounted."""
    for name, spec in inputs.items():
        counts = result["datasets"].get(name)
        if counts is None:
            raise ReconciliationError(f"transform reported nothing for dataset {name!r}")
        filtered = counts.get("filtered") or {}
        accounted = counts["rows_out"] + counts["rejected"] + counts["duplicates"] + sum(filtered.values())
        if counts["rows_in"] != spec["rows"] or accounted != spec["rows"]:
            by_rule = "".join(f" + {code} {n}" for code, n in sorted(filtered.items()))
            raise ReconciliationError(
                f"dataset {name!r}: {spec['rows']} rows staged, job read {counts['rows_in']}, "
                f"accounted {accounted} (out {counts['rows_out']} + rejected {counts['rejected']} "
                f"+ duplicates {counts['duplicates']}{by_rule})"
            )


def _transformed_manifest(
    ref: staging.PartitionRef, attempt: Path, result: dict[str, Any], run_id: int, contract: JobContract
) -> staging.Manifest:
    import pyarrow.parquet as pq

    outputs: dict[str, dict[str, Any]] = {}
    all_files: list[Path] = []
    for name in contract.names:
        files = sorted((attempt / name).glob("*.parquet"))
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        if rows != result["outputs"][name]:
            raise ReconciliationError(
                f"output {name!r}: job reported {result['outputs'][name]} rows, files hold {rows}"
            )
        outputs[name] = {"files": [str(f.relative_to(ref.dir)) for f in files], "rows": rows}
        all_files += files
    return staging.Manifest(
        pipeline=ref.pipeline,
        layer=ref.layer,
        dataset=None,
        business_date=ref.business_date.isoformat(),
        files=[str(f.relative_to(ref.dir)) for f in all_files],
        row_count=outputs[contract.primary]["rows"],
        schema=[],
        source=f"spark job over raw partitions of {ref.business_date.isoformat()}",
        checksum=staging.files_checksum(all_files),
        run_id=run_id,
        outputs=outputs,
    )


def _record_outcome(record: StepRun, outcome: StepOutcome) -> None:
    record.rows_in = outcome.rows_in
    record.rows_out = outcome.rows_out
    record.rows_rejected = outcome.rows_rejected
    record.details = {**record.details, **outcome.details}
