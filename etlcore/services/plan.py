"""`--dry-run`: what a run of the pipeline's steps over some dates would do, read without touching anything.

Reads the pipeline file, the saved extract states and the lock's state; writes no file, directory, row or
lock and starts neither a source read nor Spark. Where a real run writes a file before spark-submit
starts (each date's job spec, the jobs archive, the secret settings' properties file), the command line
shows the path it would use, with ``<token>`` / ``<random>`` for the part only the run picks. Each date's
engine is the one the run would choose (etlcore/engines.py); `auto` over a date the run extracts first is
chosen only then, so both engines' commands are shown with that date in each.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from django.db import connections

from connectors import build_connector
from connectors.base import ExtractWindow
from warehouse.loaders import loaded_models

from .. import staging
from ..config import PipelineConfig
from ..engines import AUTO, DASK, SPARK, engine_choose
from ..errors import ETL_ERRORS
from ..locks import lock_file, lock_held, lock_key
from ..selectors import extract_state_lookup
from ..spark import (
    JOBS_ARCHIVE,
    PRIVATE_DIR_PREFIX,
    PROPERTIES_FILE,
    SPEC_FILE,
    conf_is_secret,
    dask_command,
    jobs_build_dir,
    mask_command,
    submit_command,
    submit_conf,
)

# Stands for what only a real run picks: the attempt directory's token, the private directory's name.
ATTEMPT_PLACEHOLDER = f"{staging.ATTEMPT_PREFIX}<token>"
PRIVATE_DIR_PLACEHOLDER = f"$TMPDIR/{PRIVATE_DIR_PREFIX}<random>"


@dataclass(frozen=True)
class ExtractPlan:
    business_date: date
    dataset: str
    kind: str
    source: str  # the connector's describe(): no secret; or why it cannot be built
    window: ExtractWindow
    starts_from: str  # where the extract's state comes from, and the state when it is known now
    partition: Path  # the raw partition it would publish


@dataclass(frozen=True)
class TransformPlan:
    business_date: date
    inputs: tuple[tuple[Path, bool], ...]  # raw partition, published now?
    partition: Path  # the transformed partition it would publish
    spec: Path  # the job spec it would write (in the attempt directory the run creates)
    engine: str | None  # the engine the run would choose; None: auto, chosen once the date is extracted
    engine_reason: str


@dataclass(frozen=True)
class LoadPlan:
    business_date: date
    partition: Path  # the transformed partition it would read
    published: bool


@dataclass(frozen=True)
class RunPlan:
    """The facts of a run of `steps` over `dates`, none of them secret."""

    pipeline: str
    config_file: Path
    database: str
    vendor: str
    lock: str  # the lock a run would take: PostgreSQL advisory key or file
    lock_held: bool  # whether some process holds it now (a run would exit 75)
    dates: tuple[date, ...]
    steps: tuple[str, ...]
    extracts: tuple[ExtractPlan, ...]
    transforms: tuple[TransformPlan, ...]
    spark_submit: tuple[str, ...]  # masked as the step records it; one application for the Spark dates
    dask_command: tuple[str, ...]  # likewise, one Dask job process for the dates on Dask
    loads: tuple[LoadPlan, ...]
    tables: tuple[str, ...]  # the warehouse tables a load writes


def pipeline_plan(*, config: PipelineConfig, dates: Sequence[date], steps: Sequence[str]) -> RunPlan:
    """What running `steps` for each of `dates` (in date order) would do. Reads only."""
    days = tuple(sorted(set(dates)))
    vendor = connections[config.database].vendor
    if vendor == "postgresql":
        lock = f"PostgreSQL advisory lock {lock_key(config.name)} (session level)"
    else:
        lock = f"file lock {lock_file(pipeline=config.name, using=config.database)}"
    transforms = (
        tuple(_transform_plan(config, day, extracted_first="extract" in steps) for day in days)
        if "transform" in steps and days
        else ()
    )
    on_spark = [t for t in transforms if t.engine in (SPARK, None)]
    on_dask = [t for t in transforms if t.engine in (DASK, None)]
    return RunPlan(
        pipeline=config.name,
        config_file=config.source_file,
        database=config.database,
        vendor=vendor,
        lock=lock,
        lock_held=lock_held(pipeline=config.name, using=config.database),
        dates=days,
        steps=tuple(steps),
        extracts=_extract_plans(config, days) if "extract" in steps else (),
        transforms=transforms,
        spark_submit=_spark_submit_shown(config, on_spark) if on_spark else (),
        dask_command=_dask_command_shown(config, on_dask) if on_dask else (),
        loads=tuple(_load_plan(config, day) for day in days) if "load" in steps else (),
        tables=tuple(model._meta.db_table for model in loaded_models()) if "load" in steps else (),
    )


def _extract_plans(config: PipelineConfig, days: Sequence[date]) -> tuple[ExtractPlan, ...]:
    plans = []
    for dataset in config.datasets.values():
        kind = str(dataset.source.get("kind", "?"))
        source = _source_described(dataset.name, dataset.source)
        for i, day in enumerate(days):
            found = extract_state_lookup(config=config, dataset=dataset.name, business_date=day)
            if i > 0 and found.state_date != day:
                # The earlier date is extracted first, in this run: its new state_out is not known yet.
                starts_from = f"the state the extract of {days[i - 1]} leaves (known once it has run)"
            else:
                starts_from = _state_origin(day, found.state, found.state_date)
            plans.append(
                ExtractPlan(
                    business_date=day,
                    dataset=dataset.name,
                    kind=kind,
                    source=source,
                    window=config.window(day),
                    starts_from=starts_from,
                    partition=staging.PartitionRef.raw(
                        config.staging_root, config.name, dataset.name, day
                    ).dir,
                )
            )
    plans.sort(key=lambda plan: plan.business_date)  # stable: datasets keep their declared order
    return tuple(plans)


def _source_described(name: str, options: Mapping[str, Any]) -> str:
    """describe() builds no request and reads no secret; the connector is closed at once."""
    try:
        connector = build_connector(name=name, options=options)
    except ETL_ERRORS as exc:
        return f"not buildable: {' '.join(str(exc).split())}"
    try:
        return connector.describe()
    finally:
        close = getattr(connector, "close", None)
        if close is not None:
            close()


def _state_origin(day: date, state: Any, state_date: date | None) -> str:
    if state_date is None:
        return "no saved state: the source's configured start"
    shown = json.dumps(state, sort_keys=True, default=str) if state is not None else "none"
    if state_date == day:
        return f"its own saved state_in (a re-run of {day}): {shown}"
    return f"the saved state_out of {state_date}: {shown}"


def _transform_plan(config: PipelineConfig, day: date, *, extracted_first: bool) -> TransformPlan:
    raw = [staging.PartitionRef.raw(config.staging_root, config.name, name, day) for name in config.datasets]
    ref = staging.PartitionRef.transformed(config.staging_root, config.name, day)
    engine: str | None
    if config.engine != AUTO:
        engine, reason = engine_choose(config=config, staged_rows=0)
    elif extracted_first or not all(r.manifest_path.is_file() for r in raw):
        engine = None
        reason = (
            f"auto: chosen on the rows the extract stages (dask up to {config.dask.max_rows}, else spark)"
        )
    else:
        try:
            rows = sum(staging.manifest_read(r).row_count for r in raw)
        except ETL_ERRORS as exc:
            engine, reason = None, f"auto: the staged rows cannot be read ({' '.join(str(exc).split())})"
        else:
            engine, reason = engine_choose(config=config, staged_rows=rows)
    return TransformPlan(
        business_date=day,
        inputs=tuple((r.dir, r.manifest_path.is_file()) for r in raw),
        partition=ref.dir,
        spec=ref.dir / ATTEMPT_PLACEHOLDER / SPEC_FILE,
        engine=engine,
        engine_reason=reason,
    )


def _spark_submit_shown(config: PipelineConfig, transforms: Sequence[TransformPlan]) -> tuple[str, ...]:
    """The command `spark.jobs_submit` would run for these dates, built by the same function and masked
    the same way, with the paths of the files it would write first instead of writing them."""
    secret = any(conf_is_secret(key) for key in submit_conf(config))
    try:
        command = submit_command(
            config,
            spec_path=[t.spec for t in transforms],
            py_files=jobs_build_dir(config) / JOBS_ARCHIVE,
            properties_file=Path(PRIVATE_DIR_PLACEHOLDER) / PROPERTIES_FILE if secret else None,
        )
    except ETL_ERRORS as exc:  # e.g. a job module that is not there: the run's preflight would say so
        return (f"<not buildable: {' '.join(str(exc).split())}>",)
    return tuple(mask_command(command))


def _dask_command_shown(config: PipelineConfig, transforms: Sequence[TransformPlan]) -> tuple[str, ...]:
    """The Dask job's command `spark.jobs_submit` would run for these dates, built by the same function."""
    try:
        command = dask_command(config, spec_path=[t.spec for t in transforms])
    except (*ETL_ERRORS, ValueError) as exc:
        return (f"<not buildable: {' '.join(str(exc).split())}>",)
    return tuple(mask_command(command))


def _load_plan(config: PipelineConfig, day: date) -> LoadPlan:
    ref = staging.PartitionRef.transformed(config.staging_root, config.name, day)
    return LoadPlan(business_date=day, partition=ref.dir, published=ref.manifest_path.is_file())


def plan_lines(plan: RunPlan) -> list[str]:
    """The plan as an operator reads it: a header, then each date's steps, then the one Spark application."""
    dates = ", ".join(day.isoformat() for day in plan.dates)
    held = (
        "HELD now by another process: a real run would exit 75"
        if plan.lock_held
        else "free now (not taken by this dry run)"
    )
    lines = [
        f"dry run of {', '.join(plan.steps)} for pipeline {plan.pipeline} ({plan.config_file}): "
        "nothing is read from sources, written, started or locked",
        f"date(s): {dates}",
        f"database {plan.database!r} ({plan.vendor}); lock: {plan.lock}, {held}",
    ]
    for day in plan.dates:
        lines.append(f"{day}:")
        for extract in (e for e in plan.extracts if e.business_date == day):
            window = extract.window
            lines += [
                f"  extract {extract.dataset}: {extract.kind} source {extract.source}",
                f"    window {window.start.isoformat()} to {window.end.isoformat()}",
                f"    starts from {extract.starts_from}",
                f"    publishes {extract.partition}",
            ]
        for transform in (t for t in plan.transforms if t.business_date == day):
            lines.append(f"  transform: publishes {transform.partition}")
            lines.append(f"    engine {transform.engine or 'spark or dask'}: {transform.engine_reason}")
            for path, published in transform.inputs:
                lines.append(f"    reads {path} ({'published' if published else 'not published yet'})")
            lines.append(f"    job spec {transform.spec}")
        for load in (lo for lo in plan.loads if lo.business_date == day):
            state = "published" if load.published else "not published yet"
            lines.append(f"  load: reads {load.partition} ({state}) into database {plan.database!r}")
    if plan.spark_submit:
        count = sum(t.engine in (SPARK, None) for t in plan.transforms)
        lines.append(f"spark-submit, one application for {count} date(s), masked as the run records it:")
        lines.append("  " + " ".join(plan.spark_submit))
    if plan.dask_command:
        count = sum(t.engine in (DASK, None) for t in plan.transforms)
        lines.append(f"Dask job, one process for {count} date(s), as the run records it:")
        lines.append("  " + " ".join(plan.dask_command))
    if plan.tables:
        lines.append(f"load writes, in database {plan.database!r} ({plan.vendor}): {', '.join(plan.tables)}")
    return lines
