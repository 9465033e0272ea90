"""Which engine runs a transform: `engine` and `[dask]` as the pipeline file declares them, and the choice
`auto` makes from a date's staged rows (etlcore/engines.py, a pure function)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from etlcore.config import DaskConfig, pipeline_parse
from etlcore.engines import DASK_MAX_ROWS_DEFAULT, engine_choose, engine_job, engine_timeout
from etlcore.errors import ConfigurationError
from tests.pipelines import dataset, pipeline_toml

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
PRODUCTS = {"products": dataset("products.csv", sku={"required": True})}


def parsed(
    folder: Path, *, top: str = "", tables: str = "", job: str = "spark_jobs.sales_daily", environ=None
):
    path = folder / "shop.toml"
    path.write_text(pipeline_toml(datasets=PRODUCTS, top=top, tables=tables, job=job), encoding="utf-8")
    return pipeline_parse(path, environ=environ or {})


def refusal(folder: Path, **parts) -> str:
    with pytest.raises(ConfigurationError) as raised:
        parsed(folder, **parts)
    message = str(raised.value)
    assert "\n" not in message
    return message.removeprefix(str(folder / "shop.toml"))


def test_a_pipeline_without_engine_runs_on_spark_and_the_dask_table_has_its_defaults(tmp_path):
    config = parsed(tmp_path)
    assert config.engine == "spark"
    assert config.dask == DaskConfig(
        job="spark_jobs.sales_daily_dask", scheduler_address=None, max_rows=10_000_000, timeout_seconds=None
    )


def test_the_default_threshold_is_where_the_benchmark_last_saw_spark_overtake_dask():
    """`auto`'s default follows the measurement: the crossover of benchmarks/bench_transform_engines.py,
    or, when Spark overtook Dask at no size, the largest size where Dask was measured faster."""
    figures = json.loads((RESULTS / "transform_engines.json").read_text())
    crossover = figures["dask_max_rows"]["rows"]
    if crossover is None:
        sizes = figures["sizes"]
        faster = [int(r) for r, e in sizes.items() if e["dask"]["seconds"] < e["spark"]["seconds"]]
        crossover = max(faster)
        assert max(int(r) for r in sizes) == crossover  # Dask faster up to the largest size measured
    assert DASK_MAX_ROWS_DEFAULT == crossover


def test_engine_and_the_dask_keys_parse_and_an_unset_scheduler_variable_means_the_threaded_scheduler(
    tmp_path,
):
    tables = '[dask]\nscheduler_address = "${ETL_TEST_SCHEDULER:-}"\nmax_rows = 5000\ntimeout_seconds = 90\n'
    alone = parsed(tmp_path, top='engine = "auto"', tables=tables)
    assert (alone.engine, alone.dask.scheduler_address) == ("auto", None)
    assert (alone.dask.max_rows, alone.dask.timeout_seconds) == (5000, 90.0)
    remote = parsed(
        tmp_path, top='engine = "dask"', tables=tables, environ={"ETL_TEST_SCHEDULER": "tcp://10.0.0.7:8786"}
    )
    assert (remote.engine, remote.dask.scheduler_address) == ("dask", "tcp://10.0.0.7:8786")


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ({"top": 'engine = "dusk"'}, ': engine must be "spark", "dask" or "auto", got \'dusk\''),
        ({"top": "engine = true"}, ': engine must be "spark", "dask" or "auto", got True'),
        (
            {"tables": "[dask]\nmax_row = 10\n"},
            " [dask]: unknown key 'max_row' (did you mean 'max_rows'? known: scheduler_address, max_rows, "
            "timeout_seconds)",
        ),
        ({"tables": '[dask]\nmax_rows = "10"\n'}, " [dask]: max_rows must be a whole number, got '10'"),
        ({"tables": "[dask]\nmax_rows = -1\n"}, " [dask]: max_rows must be 0 or more, got -1"),
        ({"tables": "[dask]\ntimeout_seconds = 0\n"}, " [dask]: timeout_seconds must be more than 0, got 0"),
        (
            {"tables": '[dask]\nscheduler_address = "localhost:8786"\n'},
            " [dask]: scheduler_address 'localhost:8786' is not a scheduler address: write tcp://host:port "
            "(or tls://host:port), as `dask scheduler` prints it",
        ),
        (
            {"top": 'engine = "auto"', "job": "spark_jobs.sales_hourly"},
            ": engine \"auto\" needs the Dask implementation of [spark] job 'spark_jobs.sales_hourly', "
            "and it has none (its contract in spark_jobs/contract.py declares no dask_job): "
            'use engine = "spark"',
        ),
    ],
    ids=[
        "unknown-engine",
        "engine-flag",
        "misspelt-key",
        "rows-text",
        "rows-negative",
        "timeout-zero",
        "address-no-scheme",
        "job-without-dask",
    ],
)
def test_a_bad_engine_or_dask_value_is_refused_in_one_line_naming_file_table_and_key(
    tmp_path, parts, expected
):
    assert refusal(tmp_path, **parts) == expected


def test_a_job_without_a_dask_implementation_still_parses_on_spark(tmp_path):
    # The preflight names the missing job module; the file itself is not wrong for Spark.
    assert parsed(tmp_path, job="spark_jobs.sales_hourly").dask.job is None


@pytest.mark.parametrize(
    ("staged_rows", "engine", "reason"),
    [
        (0, "dask", "auto: 0 staged rows <= dask max_rows 4812"),
        (4811, "dask", "auto: 4811 staged rows <= dask max_rows 4812"),
        (4812, "dask", "auto: 4812 staged rows <= dask max_rows 4812"),
        (4813, "spark", "auto: 4813 staged rows > dask max_rows 4812"),
        (10_000_000, "spark", "auto: 10000000 staged rows > dask max_rows 4812"),
    ],
)
def test_auto_picks_dask_up_to_max_rows_and_spark_above_saying_why(tmp_path, staged_rows, engine, reason):
    config = parsed(tmp_path, top='engine = "auto"', tables="[dask]\nmax_rows = 4812\n")
    assert engine_choose(config=config, staged_rows=staged_rows) == (engine, reason)


@pytest.mark.parametrize("configured", ["spark", "dask"])
def test_a_configured_engine_runs_whatever_the_rows(tmp_path, configured):
    config = replace(parsed(tmp_path), engine=configured, dask=replace(DaskConfig(), max_rows=10))
    for rows in (0, 10, 11, 10**9):
        assert engine_choose(config=config, staged_rows=rows) == (
            configured,
            f'configured: engine = "{configured}"',
        )


def test_each_engine_is_bounded_by_its_own_timeout_and_runs_its_own_module(tmp_path):
    config = parsed(tmp_path, top='engine = "auto"', tables="[dask]\ntimeout_seconds = 45\n")
    config = replace(config, spark=replace(config.spark, timeout_seconds=600.0))
    assert (engine_timeout(config, "dask"), engine_timeout(config, "spark")) == (45.0, 600.0)
    assert (engine_job(config, "dask"), engine_job(config, "spark")) == (
        "spark_jobs.sales_daily_dask",
        "spark_jobs.sales_daily",
    )
