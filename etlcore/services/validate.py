"""`validate_pipeline`: a pipeline file parsed and preflighted for every step, and what it will do, told.

Reads no data, starts no Spark, writes nothing (no staging, no run record): safe on a production host and
in `make check`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from connectors import build_connector
from connectors.secrets import secret_problem
from spark_jobs.contract import CONTRACTS

from .. import staging
from ..config import PipelineConfig, pipeline_load, pipeline_names
from ..demo.pipeline import demo_secret_defaults, environ_defaults
from ..engines import AUTO, DASK, SPARK
from ..errors import ETL_ERRORS
from ..preflight import JavaFound, findings_line, java_find, pipeline_preflight, source_secret_variables
from .pipeline import STEPS, business_date_parse


@dataclass(frozen=True)
class PipelineValidation:
    """``problem``: one line naming the file and every finding (empty when valid); ``plan``: what a run
    of yesterday would do, no secret in it."""

    pipeline: str
    source_file: Path | None
    problem: str = ""
    plan: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problem


def pipelines_validate(
    *, pipelines: Sequence[str] | None = None, demo_defaults: bool = False
) -> tuple[list[PipelineValidation], list[str]]:
    """Each named pipeline (default: every pipeline found) validated, in name order, and the variables
    given the demo's published value (``demo_defaults``: only those left unset, for this call only)."""
    defaults = demo_secret_defaults() if demo_defaults else {}
    used = [name for name in defaults if not os.environ.get(name)]
    with environ_defaults(defaults):
        return [pipeline_validate(pipeline=name) for name in (pipelines or pipeline_names())], used


def pipeline_validate(*, pipeline: str) -> PipelineValidation:
    try:
        config = pipeline_load(pipeline)
    except ETL_ERRORS as exc:
        return PipelineValidation(pipeline=pipeline, source_file=None, problem=" ".join(str(exc).split()))
    findings = pipeline_preflight(config=config, steps=STEPS)
    return PipelineValidation(
        pipeline=pipeline,
        source_file=config.source_file,
        problem=findings_line(config, findings) if findings else "",
        plan=pipeline_plan(config=config),
    )


def pipeline_plan(*, config: PipelineConfig) -> list[str]:
    """What a run of yesterday does, step by step: sources (masked), window, staging paths, job and its
    outputs, warehouse, the pseudonym key variable (set or not, never its value), guards."""
    day = business_date_parse(None, config=config)
    window = config.window(day)
    secrets = source_secret_variables(config=config)
    lines = [
        f"business date {day} (yesterday in {config.timezone.key}): "
        f"window {window.start.isoformat()} to {window.end.isoformat()}"
    ]
    for dataset in config.datasets.values():
        try:
            source = build_connector(name=dataset.name, options=dataset.source).describe()
        except ETL_ERRORS as exc:
            source = f"not buildable: {exc}"
        variables = ", ".join(
            f"{name} ({'NOT SET' if problem else 'set'})"
            for name, problem in secrets.get(dataset.name, {}).items()
        )
        key = ", ".join(dataset.key) or "none"
        lines.append(
            f"extract {dataset.name}: {dataset.source['kind']} source {source}; "
            f"{len(dataset.columns)} columns, key {key}"
            + (f"; secrets from {variables}" if variables else "")
        )
        ref = staging.PartitionRef.raw(config.staging_root, config.name, dataset.name, day)
        lines.append(f"  staged to {ref.dir}")
        if dataset.guards:
            guards = ", ".join(f"{g.name} {g.bound} ({g.on_breach})" for g in dataset.guards)
            lines.append(f"  guards: {guards}")
    contract = CONTRACTS.get(config.spark.job)
    outputs = ", ".join(contract.names) if contract else "unknown (no contract)"
    lines.append(f"transform: {_engine_described(config)}; outputs {outputs}")
    lines.append(
        f"  written to {staging.PartitionRef.transformed(config.staging_root, config.name, day).dir}"
    )
    key_env = config.spark.pseudonym_key_env
    lines.append(f"  pseudonym key from {key_env} ({'NOT SET' if secret_problem(key_env) else 'set'})")
    if any(ds.encrypted for ds in config.datasets.values()):
        pii_env = config.spark.pii_keys_env
        lines.append(
            f"  encrypted columns' keys from {pii_env} ({'NOT SET' if secret_problem(pii_env) else 'set'}; "
            "read by extraction only, not passed to the job)"
        )
    lines.append(f"load: into warehouse database alias {config.database!r} (run records there too)")
    return lines


def _engine_described(config: PipelineConfig) -> str:
    """Where the job runs: Spark's master and Java, the Dask module and scheduler, or auto's rule."""
    on_spark = on_dask = ""
    if config.engine in (SPARK, AUTO):
        java = java_find()
        java_text = f"Java {java.major} at {java.path}" if isinstance(java, JavaFound) else "no usable Java"
        on_spark = f"{config.spark.job} on {config.spark.master} ({java_text})"
    if config.engine in (DASK, AUTO):
        where = config.dask.scheduler_address or "Dask's threaded scheduler"
        on_dask = f"{config.dask.job} on Dask ({where}, in a process of its own)"
    if config.engine == AUTO:
        return f"auto: {on_dask} for a date of at most {config.dask.max_rows} staged rows, else {on_spark}"
    return on_spark or on_dask
