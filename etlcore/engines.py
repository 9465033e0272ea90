"""Which engine runs a date's transform: Spark, or the same job on Dask for dates too small to be worth a
JVM (docs/architecture.md, "Engines"). Pure functions of the pipeline's configuration and the date's staged
row count; the transform service reads the counts and launches the engine chosen (etlcore.spark)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import PipelineConfig

SPARK = "spark"
DASK = "dask"
AUTO = "auto"
ENGINES = (SPARK, DASK, AUTO)
# `engine = "auto"` runs a date on Dask when its raw partitions hold at most this many rows in all, on Spark
# above ([dask] max_rows). Where Spark overtakes Dask is measured by benchmarks/bench_transform_engines.py:
# on 2 cores it did not up to 10M lines (110 s against 147 s), so the default is the largest size measured;
# Spark's case above it is scale-out (a cluster) and the unmeasured sizes (docs/scaling.md).
DASK_MAX_ROWS_DEFAULT = 10_000_000


def engines_possible(engine: str) -> tuple[str, ...]:
    """The engines a pipeline may run its transform on: what its preflight checks (auto: either)."""
    return (SPARK, DASK) if engine == AUTO else (engine,)


def engine_choose(*, config: PipelineConfig, staged_rows: int) -> tuple[str, str]:
    """(engine, why) for one date whose raw partitions hold `staged_rows` rows in all datasets.

    Each date is chosen on its own rows, in a backfill too: the dates run one after another in the job's
    process, so a date's size, not the batch's, is what its memory and its work depend on."""
    if config.engine != AUTO:
        return config.engine, f'configured: engine = "{config.engine}"'
    limit = config.dask.max_rows
    if staged_rows <= limit:
        return DASK, f"auto: {staged_rows} staged rows <= dask max_rows {limit}"
    return SPARK, f"auto: {staged_rows} staged rows > dask max_rows {limit}"


def spec_staged_rows(spec: Mapping[str, Any]) -> int:
    """The rows a job spec's inputs hold, as their manifests counted them (etlcore.services.transform)."""
    return sum(int(spec_input["rows"]) for spec_input in spec["inputs"].values())


def engine_job(config: PipelineConfig, engine: str) -> str:
    """The module an engine runs: `[spark] job`, or its Dask implementation (its contract's `dask_job`)."""
    if engine == DASK:
        if config.dask.job is None:
            raise ValueError(f"{config.spark.job} has no Dask implementation")
        return config.dask.job
    return config.spark.job


def engine_timeout(config: PipelineConfig, engine: str) -> float | None:
    return config.dask.timeout_seconds if engine == DASK else config.spark.timeout_seconds
