"""The sales job on both engines, Dask and Spark, against the DuckDB reference, on one machine in one run.

    .venv/bin/python -m benchmarks.bench_transform_engines [--rows 10000,1000000,10000000] [--repeat 3]
                                                           [--sides dask,spark,duckdb]

Data: the generated dates of ``bench_transform_spark`` (one business date in the staging format, 3 lines an
order, 5% dirty rows, 5% of the lines in GBP or USD), cached under var/bench/transform_spark/.

- dask: the pipeline's Dask job (``[spark] job``'s ``dask_job``) started exactly as the transform step
  starts it: ``etlcore.spark.dask_command`` with the job's environment, in its own process, so wall time
  includes Python's start-up and imports. Its ``_result.json`` is checked against the Spark job's.
- spark: spark-submit, as ``bench_transform_spark`` runs it (JVM start-up included).
- duckdb: the reference in SQL of ``bench_transform_spark``.

Peak memory is the child's whole process tree (sampled every 0.2 s). ``ratio`` = Dask seconds / DuckDB
seconds at 1M lines (goal <= 2); ``dask_max_rows`` = where Spark overtakes Dask, interpolated between the
measured sizes on a log scale: the default of ``[dask] max_rows`` (etlcore.engines.DASK_MAX_ROWS_DEFAULT).
The sides run interleaved, so drift on the machine hits them alike; medians of ``--repeat``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.bench_transform_spark import (
    PIPELINE,
    PSEUDONYM_KEY,
    ROOT,
    generate_in_child,
    measure,
    run_duckdb,
    run_spark,
    spec_written,
)
from benchmarks.common import django_setup, load_average, side_summary, write_result

NAME = "transform_engines"
SIDES = ("dask", "spark", "duckdb")
RATIO_ROWS = 1_000_000
GOALS = {"ratio": 2.0, "demo_date_seconds": 3.0, "demo_rows": 10_000}


def run_dask(root: Path, work: Path) -> dict[str, Any]:
    from etlcore.config import pipeline_load
    from etlcore.engines import DASK
    from etlcore.spark import dask_command, job_environment

    config = pipeline_load(PIPELINE)
    output_dir = work / "dask"
    spec_path = spec_written(root, output_dir)
    environ = {**os.environ, config.spark.pseudonym_key_env: PSEUDONYM_KEY}
    env = job_environment(config, environ, engine=DASK)
    result = measure(dask_command(config, spec_path=spec_path), env=env, log=work / "dask.log")
    if result["exit_code"] != 0:
        raise SystemExit(f"dask job failed, see {result['log']}")
    result["result"] = json.loads((output_dir / "_result.json").read_text())
    return result


RUNNERS = {"dask": run_dask, "spark": run_spark, "duckdb": run_duckdb}


def crossover(sizes: dict[int, dict[str, float]]) -> dict[str, Any]:
    """Where Spark's seconds drop below Dask's, on a log scale of rows between the two measured sizes
    around it (both lines taken as straight there)."""
    rows = sorted(r for r in sizes if "dask" in sizes[r] and "spark" in sizes[r])
    gap = {r: sizes[r]["dask"] - sizes[r]["spark"] for r in rows}  # > 0: Spark faster
    if not rows:
        return {"rows": None, "why": "no size measured on both engines"}
    if gap[rows[0]] > 0:
        return {"rows": rows[0], "why": f"Spark already faster at the smallest size ({rows[0]:,} rows)"}
    for low, high in zip(rows, rows[1:], strict=False):
        if gap[high] > 0:
            lo, hi = math.log(low), math.log(high)
            at = lo + (hi - lo) * (-gap[low]) / (gap[high] - gap[low])
            return {"rows": int(round(math.exp(at), -3)), "why": f"between {low:,} and {high:,} rows"}
    return {"rows": None, "why": f"Dask faster at every measured size (up to {rows[-1]:,} rows)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,1000000,10000000", help="comma-separated order-line counts")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side per size (median)")
    parser.add_argument("--sides", default=",".join(SIDES), help="which of dask,spark,duckdb to run")
    args = parser.parse_args()
    django_setup()
    sides = [s for s in args.sides.split(",") if s]
    unknown = set(sides) - set(SIDES)
    if unknown:
        raise SystemExit(f"--sides: unknown {sorted(unknown)}; choose from {', '.join(SIDES)}")

    figures: dict[str, Any] = {"sizes": {}, "load_average_before": load_average(), "repeat": args.repeat}
    seconds: dict[int, dict[str, float]] = {}
    for rows in [int(r) for r in args.rows.split(",")]:
        root = generate_in_child(rows)
        work = ROOT.parent / NAME / f"work-{rows}"
        work.mkdir(parents=True, exist_ok=True)
        samples: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
        for _ in range(args.repeat):
            for side in sides:
                samples[side].append(RUNNERS[side](root, work))
                print(f"{rows:>11,} {side:<7} {samples[side][-1]['seconds']:7.2f} s", file=sys.stderr)
        entry: dict[str, Any] = {"load_average": load_average(), "measured_at": datetime.now(UTC).isoformat()}
        for side, runs in samples.items():
            entry[side] = side_summary(runs)
        seconds[rows] = {side: entry[side]["seconds"] for side in sides}
        if "dask" in entry and "spark" in entry:
            # The engines' contract: the same counts of everything (the equivalence test compares rows).
            dask_result = {k: entry["dask"]["result"][k] for k in ("datasets", "outputs")}
            spark_result = {k: entry["spark"]["result"][k] for k in ("datasets", "outputs")}
            entry["same_results"] = dask_result == spark_result
            if not entry["same_results"]:
                raise SystemExit(f"{rows:,} rows: the engines' results differ: {dask_result} {spark_result}")
        if "dask" in entry and "duckdb" in entry:
            entry["dask_over_duckdb"] = round(entry["dask"]["seconds"] / entry["duckdb"]["seconds"], 2)
        if "dask" in entry and "spark" in entry:
            entry["dask_over_spark"] = round(entry["dask"]["seconds"] / entry["spark"]["seconds"], 2)
        figures["sizes"][str(rows)] = entry
        shown = (f"{s} {entry[s]['seconds']:.2f} s / {entry[s]['peak_memory_mb']:.0f} MB" for s in sides)
        print(f"{rows:>11,} lines: " + ", ".join(shown), file=sys.stderr)

    at = figures["sizes"].get(str(RATIO_ROWS), {})
    largest = figures["sizes"][str(max(seconds))]
    figures |= {
        "ratio": at.get("dask_over_duckdb"),
        "ratio_at_rows": RATIO_ROWS,
        "peak_memory_mb": largest.get("dask", {}).get("peak_memory_mb"),
        "peak_memory_at_rows": max(seconds),
        "dask_max_rows": crossover(seconds),
        "goals": GOALS,
    }
    demo = figures["sizes"].get(str(GOALS["demo_rows"]), {}).get("dask")
    if demo:
        figures["demo_date_seconds"] = demo["seconds"]
    write_result(NAME, figures)


if __name__ == "__main__":
    main()
