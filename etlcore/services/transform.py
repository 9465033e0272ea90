"""The transform step: the pipeline's job over a date's raw partitions, on Spark or on Dask (chosen per date:
etlcore/engines.py), published atomically once every staged row is accounted for and the volume guards
pass."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import structlog

from connectors.secrets import secret_get
from spark_jobs.contract import JobContract, job_contract, pseudonym_key_fingerprint
from warehouse.errors import PseudonymKeyMismatchError
from warehouse.loading.specs import output_constraints

from .. import staging
from ..config import PipelineConfig
from ..engines import DASK, SPARK, engine_choose, engine_timeout, spec_staged_rows
from ..errors import ETL_ERRORS, ConfigurationError, ReconciliationError, SparkJobError
from ..guards import PreviousCounts, guards_enforce
from ..preflight import preflight_enforce
from ..runs import StepOutcome
from ..selectors import guards_previous, pseudonym_key_held
from ..spark import FAILED_FILE, job_submit, jobs_submit, log_tail

log = structlog.get_logger(__name__)


def partition_transform(*, config: PipelineConfig, business_date: date, outcome: StepOutcome) -> None:
    """Run the pipeline's job over the date's raw partitions, on the engine chosen for it (Spark or Dask,
    recorded with why on the outcome); publish its outputs atomically.

    The raw partitions are held for reading from before their manifests are read until the job is done,
    so an extract re-publishing the date meanwhile leaves the files the job reads."""
    raw = [
        staging.PartitionRef.raw(config.staging_root, config.name, name, business_date)
        for name in config.datasets
    ]
    with staging.partitions_reading(raw):
        _partition_transform_held(config=config, business_date=business_date, outcome=outcome)


def _partition_transform_held(*, config: PipelineConfig, business_date: date, outcome: StepOutcome) -> None:
    # What the job needs (its module, inputs, key, Java) before the JVM starts, not 30 s into it.
    preflight_enforce(config=config, steps=("transform",))
    contract = transform_contract(config=config)
    pseudonym_key_expect(config=config)
    ref = staging.PartitionRef.transformed(config.staging_root, config.name, business_date)
    with staging.partition_attempt(ref) as attempt:
        spec = _date_spec(config, business_date, attempt)
        engine = _engine_chosen(config, business_date, spec, outcome)
        log_path = _log_path(
            config, business_date, outcome.run_id, attempt=len(outcome.attempts) + 1, engine=engine
        )
        # Facts about the submit go on the outcome before anything can fail, so a failure keeps them.
        outcome.details["log"] = str(log_path)
        try:
            submitted = job_submit(
                config,
                spec=spec,
                work_dir=attempt,
                log_path=log_path,
                timeout=engine_timeout(config, engine),
                engine=engine,
            )
        except SparkJobError as exc:
            outcome.details |= exc.facts
            raise
        finally:
            # However the job ended (a timeout, a signal): the record shows the end of its log.
            if "log_tail" not in outcome.details:
                outcome.details["log_tail"] = log_tail(log_path)
        outcome.details |= submitted.facts()
        _attempt_publish(config, business_date, ref, attempt, spec, contract, log_path, outcome)
    outcome.details["partition"] = str(ref.dir)


def partitions_transform(
    *,
    config: PipelineConfig,
    outcomes: Mapping[date, StepOutcome],
    previous: Callable[[date], PreviousCounts | None] | None = None,
    published: dict[date, StepOutcome] | None = None,
) -> dict[date, BaseException | None]:
    """The transform step of several dates in ONE process per engine: the dates chosen for Spark in one
    Spark application (a backfill pays the JVM's start and the session once, not per date), those chosen
    for Dask in one Dask job process. Each date is what `partition_transform` makes of it: its engine
    (chosen on its own staged rows), its own attempt, result, reconciliation, guards and atomic publish,
    in date order, and its own outcome; a date that fails (in the job, its accounting or its guards), or
    whose engine's process fails as a whole, publishes nothing and does not stop the others. Returns each
    date's error, None when it succeeded.

    `previous(day)`: the `max_drop` reference of a date (default: the database's, `guards_previous`);
    `published` receives the outcome of every date published, in date order, as it is.
    """
    preflight_enforce(config=config, steps=("transform",))
    contract = transform_contract(config=config)
    pseudonym_key_expect(config=config)
    days = sorted(outcomes)
    first = outcomes[days[0]]
    errors: dict[date, BaseException | None] = {}
    with ExitStack() as stack:
        # Every date's raw partitions held for reading until the job is done, as in `partition_transform`.
        raw = [
            staging.PartitionRef.raw(config.staging_root, config.name, name, day)
            for day in days
            for name in config.datasets
        ]
        stack.enter_context(staging.partitions_reading(raw))
        refs = {day: staging.PartitionRef.transformed(config.staging_root, config.name, day) for day in days}
        attempts = {day: stack.enter_context(staging.partition_attempt(refs[day])) for day in days}
        specs = {day: _date_spec(config, day, attempts[day]) for day in days}
        engines = {day: _engine_chosen(config, day, specs[day], outcomes[day]) for day in days}
        log_paths: dict[date, Path] = {}
        failed: dict[date, BaseException] = {}
        for engine in (DASK, SPARK):
            batch = [day for day in days if engines[day] == engine]
            if not batch:
                continue
            log_path = _log_path(
                config, batch[0], first.run_id, last=batch[-1], attempt=len(first.attempts) + 1, engine=engine
            )
            for day in batch:
                log_paths[day] = log_path
                outcomes[day].details["log"] = str(log_path)
            try:
                submitted = jobs_submit(
                    config,
                    jobs=[(specs[day], attempts[day]) for day in batch],
                    log_path=log_path,
                    timeout=engine_timeout(config, engine),
                    engine=engine,
                )
            except SparkJobError as exc:  # the process as a whole: each of its dates failed with it
                for day in batch:
                    outcomes[day].details |= exc.facts
                    failed[day] = exc
                continue
            finally:
                for day in batch:
                    if "log_tail" not in outcomes[day].details:
                        outcomes[day].details["log_tail"] = log_tail(log_path)
            for day in batch:
                outcomes[day].details |= submitted.facts()
        for day in days:
            try:
                if day in failed:
                    raise failed[day]
                failed_file = attempts[day] / FAILED_FILE
                if failed_file.exists():
                    error = json.loads(failed_file.read_text(encoding="utf-8"))["error"]
                    job = config.spark.job if engines[day] == SPARK else config.dask.job
                    raise SparkJobError(
                        f"{engines[day]} job {job} failed on {day}: {error} (log: {log_paths[day]})"
                    )
                publish = (refs[day], attempts[day], specs[day], contract, log_paths[day], outcomes[day])
                _attempt_publish(config, day, *publish, previous=previous)
                outcomes[day].details["partition"] = str(refs[day].dir)
                errors[day] = None
                if published is not None:
                    published[day] = outcomes[day]
            except ETL_ERRORS as exc:
                staging.attempt_discard(refs[day], attempts[day])
                errors[day] = exc
    return errors


def _engine_chosen(config: PipelineConfig, day: date, spec: Mapping[str, Any], outcome: StepOutcome) -> str:
    """The engine of the date's job, on its staged rows (the spec's, from the manifests); on the record
    with why."""
    engine, reason = engine_choose(config=config, staged_rows=spec_staged_rows(spec))
    outcome.details |= {"engine": engine, "engine_reason": reason}
    log.info("engine_chosen", engine=engine, reason=reason, business_date=day.isoformat())
    return engine


def _log_path(
    config: PipelineConfig,
    day: date,
    run_id: int,
    *,
    attempt: int,
    last: date | None = None,
    engine: str = SPARK,
) -> Path:
    """One file per attempt: a retried step keeps the log of the try that failed (its path is on the
    record's `attempts`). A Dask job's log says so in its name (`-transform-dask-`)."""
    dates = day.isoformat() + (f"..{last.isoformat()}" if last is not None and last != day else "")
    step = "transform" if engine == SPARK else f"transform-{engine}"
    return config.staging_root / config.name / "logs" / f"{dates}-run{run_id}-{step}-attempt{attempt}.log"


def _date_spec(config: PipelineConfig, business_date: date, attempt: Path) -> dict[str, Any]:
    """The job spec of one date, from its raw partitions' manifests."""
    staged: dict[str, tuple[list[Path], int]] = {}
    pseudonymised: dict[str, list[str]] = {}
    for dataset in config.datasets.values():
        ref = staging.PartitionRef.raw(config.staging_root, config.name, dataset.name, business_date)
        manifest = staging.manifest_read(ref)
        staged[dataset.name] = (staging.manifest_files(ref, manifest), manifest.row_count)
        # Partitions staged before personal columns were pseudonymised at extraction hold clear values.
        pseudonymised[dataset.name] = [c["name"] for c in manifest.schema if c.get("pii") == "hmac-sha256"]
    return job_spec(
        config, business_date=business_date, staged=staged, output_dir=attempt, pseudonymised=pseudonymised
    )


def _attempt_publish(
    config: PipelineConfig,
    business_date: date,
    ref: staging.PartitionRef,
    attempt: Path,
    spec: Mapping[str, Any],
    contract: JobContract,
    log_path: Path,
    outcome: StepOutcome,
    *,
    previous: Callable[[date], PreviousCounts | None] | None = None,
) -> None:
    """A date's job result: counted on the outcome, reconciled, guarded, then published atomically."""
    result = _job_result_read(attempt, log_path, contract)
    datasets = result["datasets"]
    outcome.rows_in = sum(d["rows_in"] for d in datasets.values())
    outcome.rows_out = sum(d["rows_out"] for d in datasets.values())
    outcome.rows_rejected = sum(d["rejected"] for d in datasets.values())
    outcome.details["datasets"] = datasets
    outcome.details["outputs"] = result["outputs"]
    job_result_reconcile(result, spec["inputs"])
    # Volume guards (etlcore/guards.py) before publishing: a failing guard leaves no partition to load.
    guards_enforce(
        config=config,
        business_date=business_date,
        counts=datasets,
        previous=lambda: (
            previous(business_date)
            if previous
            else guards_previous(config=config, business_date=business_date)
        ),
        outcome=outcome,
    )
    engine = outcome.details.get("engine", SPARK)
    manifest = _transformed_manifest(ref, attempt, result, outcome.run_id, contract, engine=engine)
    staging.partition_publish(ref, manifest, attempt)


def pseudonym_key_expect(*, config: PipelineConfig) -> None:
    """Refuse, before Spark starts, a key other than the one the warehouse's customers were made with (the
    load refuses it too, by the fingerprint the job reports). An unset key is the preflight's to report."""
    env = config.spark.pseudonym_key_env
    key = secret_get(env)
    held = pseudonym_key_held(config=config)
    if not key or held is None:
        return
    given = pseudonym_key_fingerprint(key.encode("utf-8"))
    if given != held:
        raise PseudonymKeyMismatchError(config.name, warehouse=held, given=given, by=f"{env}'s")


def transform_contract(*, config: PipelineConfig) -> JobContract:
    """The outputs the pipeline's job declares (spark_jobs/contract.py)."""
    try:
        return job_contract(config.spark.job)
    except KeyError as exc:
        raise ConfigurationError(f"pipeline {config.name!r}: {exc.args[0]}") from None


def job_spec(
    config: PipelineConfig,
    *,
    business_date: date,
    staged: Mapping[str, tuple[Sequence[Path], int]],
    output_dir: Path,
    pseudonymised: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The Spark job's spec (docs/architecture.md) from the pipeline and each dataset's staged files and
    row count. The transform step and the transform benchmark both build it here. ``constraints`` are
    the warehouse's limits on each output column, from the models: the job checks them row by row.
    ``pseudonymised``: per dataset, the columns its partition stages as pseudonyms, not clear values;
    ``encrypted`` (from the pipeline): those staged as Fernet tokens."""
    inputs = {
        dataset.name: {
            "files": [str(p) for p in staged[dataset.name][0]],
            "columns": dataset.spark_columns(),
            "rules": dataset.spark_rules(),
            "key": list(dataset.key),
            "version_column": dataset.version_column,
            "business_date_column": dataset.business_date_column,
            "rows": staged[dataset.name][1],
            "pseudonymised": list((pseudonymised or {}).get(dataset.name, ())),
            # Fernet tokens (pii = "encrypt"): new at every extraction, so a quarantined record shows a
            # fixed mark instead, and a re-run quarantines the same record (the same fingerprint).
            "encrypted": sorted(dataset.encrypted),
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


def job_result_reconcile(result: Mapping[str, Any], inputs: Mapping[str, Any]) -> None:
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


def _job_result_read(attempt: Path, log_path: Path, contract: JobContract) -> dict[str, Any]:
    try:
        result = json.loads((attempt / "_result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SparkJobError(f"the job wrote no readable _result.json ({exc}); log: {log_path}") from None
    missing = [name for name in contract.names if not (attempt / name).is_dir()]
    if missing:
        raise SparkJobError(f"the job did not write output(s) {missing}; log: {log_path}")
    return result


def _transformed_manifest(
    ref: staging.PartitionRef,
    attempt: Path,
    result: Mapping[str, Any],
    run_id: int,
    contract: JobContract,
    *,
    engine: str = SPARK,
) -> staging.Manifest:
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
        source=f"{engine} job over raw partitions of {ref.business_date.isoformat()}",
        checksum=staging.files_checksum(all_files),
        run_id=run_id,
        outputs=outputs,
        key_fingerprint=result.get("pseudonym_key_fingerprint"),
    )
