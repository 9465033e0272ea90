"""A backfill of N business dates (one Spark application per batch of dates) against running them one by one.

    .venv/bin/python -m benchmarks.bench_backfill [--dates 15] [--sample 3] [--start 2011-11-01] [--repeat 1]

Data: the real Online Retail II export (conf/pipelines/online_retail.toml, the CSV under ../shared/datasets
or ETL_ONLINE_RETAIL_CSV), `--dates` trading days from `--start` (the shop does not trade on Saturdays,
and a date with no line fails the pipeline's volume guard, so those are skipped: the dates are consecutive
trading days, not calendar days), about a hundred lines a date. Each side starts from a fresh warehouse
(SQLite in its own `ETL_VAR_DIR` under var/bench/backfill/, migrated before the clock starts, with its own
staging), Spark in local mode, JVM start-up included.

- backfill: `pipeline_backfill`, the service of `run_pipeline --from/--to`, over the N dates in one child
  process (the service, because `--from/--to` is a calendar range and would stop at the first Saturday):
  extraction per date, the transforms of up to `[run] dates_per_job` dates in ONE spark-submit, load per
  date. Median of `--repeat` runs, each into a fresh warehouse.
- date by date (the baseline): `manage.py run_pipeline --date D`, one process and one spark-submit a date,
  as a nightly cron line runs it. Running all N would take N times ~20 s, so only the first `--sample`
  dates of the N run, in date order, half before the backfill and half after it (so that drift in the
  machine's load falls on both sides); the median of their times, times N, is the extrapolated date-by-date
  time (`extrapolated_seconds`; `extrapolated: true` in the results).

`ratio` = backfill seconds / extrapolated date-by-date seconds (lower is better; `speedup` is its
inverse). After the clock stops, the facts of the sampled dates (sales lines, daily sales, quarantined rows)
must be identical on both sides, compared by content (`warehouse.checks` natural mode: surrogate ids
replaced by natural keys, so a fact names the dimension version it points at); the benchmark fails if not.
Dimension tables are not compared whole: the backfill's warehouse also holds the later dates, whose orders
add product versions and move a customer's latest country.

Peak memory is the whole process tree's resident set (the Python process and the spark-submit JVM with the
Python workers it starts), sampled every 0.2 s as in bench_transform_spark (`max_process_rss_mb`: the
largest single process's high-water mark from wait4).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

from benchmarks.bench_transform_spark import measure
from benchmarks.common import load_average, write_result

NAME = "backfill"
PIPELINE = "online_retail"
REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "var" / "bench" / NAME
# Where conf/pipelines/online_retail.toml and tests/test_online_retail.py read it.
CSV = (
    REPO
    / os.environ.get(
        "ETL_ONLINE_RETAIL_CSV", "../shared/datasets/online_retail_ii_subset/online_retail_ii_subset.csv"
    )
).resolve()
PSEUDONYM_KEY = "bench-pseudonym-key"
STEPS = ("extract", "transform", "load")


def trading_days(start: date, count: int) -> dict[date, int]:
    """The first `count` dates from `start` that have lines in the export, with their line counts."""
    lines: dict[date, int] = {}
    with open(CSV, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            day = date.fromisoformat(row["InvoiceDate"][:10])
            if day >= start:
                lines[day] = lines.get(day, 0) + 1
    days = sorted(lines)[:count]
    if len(days) < count:
        raise SystemExit(f"only {len(days)} trading days from {start} in {CSV}")
    return {day: lines[day] for day in days}


# --- the sides ----------------------------------------------------------------------------------------
def side_env(var_dir: Path) -> dict[str, str]:
    """A fresh SQLite warehouse and staging of its own, whatever the caller's environment points at."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "ETL_STAGING_ROOT"}}
    return env | {
        "DJANGO_SETTINGS_MODULE": "conf.settings.local",
        "ETL_VAR_DIR": str(var_dir),
        "ETL_PSEUDONYM_KEY": PSEUDONYM_KEY,
        "ETL_ONLINE_RETAIL_CSV": str(CSV),
    }


def fresh_warehouse(var_dir: Path) -> dict[str, str]:
    shutil.rmtree(var_dir, ignore_errors=True)
    env = side_env(var_dir)
    manage = [sys.executable, str(REPO / "manage.py")]
    subprocess.run([*manage, "migrate", "--verbosity", "0"], check=True, env=env, cwd=REPO)
    return env


def run_backfill(days: list[date], var_dir: Path) -> dict[str, Any]:
    env = fresh_warehouse(var_dir)
    argv = [sys.executable, "-m", "benchmarks.bench_backfill", "--step", "backfill"]
    argv += ["--days", ",".join(map(str, days))]
    result = measure(argv, env=env, log=var_dir / "backfill.log")
    if result["exit_code"] != 0:
        raise SystemExit(f"backfill failed, see {result['log']}")
    return result | {"load_average": load_average()}


def run_date_by_date(days: list[date], var_dir: Path, *, fresh: bool) -> list[dict[str, Any]]:
    env = fresh_warehouse(var_dir) if fresh else side_env(var_dir)
    results = []
    for day in days:
        argv = [sys.executable, str(REPO / "manage.py"), "run_pipeline", "--pipeline", PIPELINE]
        argv += ["--date", str(day)]
        result = measure(argv, env=env, log=var_dir / f"run-{day}.log")
        if result["exit_code"] != 0:
            raise SystemExit(f"run_pipeline --date {day} failed, see {result['log']}")
        results.append(result | {"load_average": load_average()})
        print(f"date by date {day}: {result['seconds']:6.1f} s (load {load_average()})", file=sys.stderr)
    return results


def inspect(var_dir: Path, days: list[date]) -> dict[str, Any]:
    """The side's warehouse content for `days` and its steps' times, read by a child on its database."""
    argv = [sys.executable, "-m", "benchmarks.bench_backfill", "--step", "inspect"]
    argv += ["--days", ",".join(map(str, days))]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, env=side_env(var_dir), cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- children ---------------------------------------------------------------------------------------------
def backfill_step(days: list[date]) -> None:
    from etlcore.services.backfill import pipeline_backfill

    report = pipeline_backfill(pipeline=PIPELINE, dates=days, command="bench_backfill")
    print(report.summary(), flush=True)
    if report.failed or report.not_started:
        raise SystemExit("\n".join(report.failure_lines()))


def inspect_step(days: list[date]) -> None:
    """Prints {"checksums": per fact table of `days`, "steps": seconds per step, "spark_applications"}."""
    from etlcore.models import StepRun
    from warehouse.checks import table_checksum
    from warehouse.models import FactDailySales, FactSalesLine, QuarantinedRow

    keys = [int(day.strftime("%Y%m%d")) for day in days]
    checksums = {
        model._meta.db_table: table_checksum(model, using="default", mode="natural", filters=filters)
        for model, filters in (
            (FactSalesLine, {"date_id__in": keys}),
            (FactDailySales, {"date_id__in": keys}),
            (QuarantinedRow, {"business_date__in": days}),
        )
    }
    steps = StepRun.objects.filter(run__pipeline=PIPELINE)
    seconds = {step: _covered_seconds(steps.filter(step=step)) for step in STEPS}
    applications = {json.dumps(s.details.get("command")) for s in steps.filter(step="transform")}
    print(json.dumps({"checksums": checksums, "steps": seconds, "spark_applications": len(applications)}))


def _covered_seconds(steps) -> float:
    """Wall time during which at least one of `steps` ran: a backfill's transform records of one Spark
    application overlap, so adding them up would count the application once per date."""
    total, end = 0.0, None
    for started, finished in sorted(steps.values_list("started_at", "finished_at")):
        if end is None or started > end:
            total += (finished - started).total_seconds()
            end = finished
        elif finished > end:
            total += (finished - end).total_seconds()
            end = finished
    return round(total, 2)


# --- driver -----------------------------------------------------------------------------------------------
def _side(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "samples": [round(r["seconds"], 2) for r in runs],
        "load_average_after_each": [r["load_average"] for r in runs],
        "peak_memory_mb": round(max(r["peak_memory_mb"] for r in runs), 1),
        "max_process_rss_mb": round(max(r["max_process_rss_mb"] for r in runs), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dates", type=int, default=15, help="trading days in the backfill (N)")
    parser.add_argument(
        "--sample", type=int, default=3, help="the first this many of them also run one by one (k)"
    )
    parser.add_argument("--start", default="2011-11-01", help="first date (YYYY-MM-DD)")
    parser.add_argument("--repeat", type=int, default=1, help="backfill runs, each into a fresh warehouse")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--days", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "conf.settings.local")
        import django

        django.setup()
        days = [date.fromisoformat(d) for d in args.days.split(",")]
        {"backfill": backfill_step, "inspect": inspect_step}[args.step](days)
        return
    if not 1 <= args.sample <= args.dates:
        parser.error("--sample must be between 1 and --dates")
    if not CSV.is_file():
        raise SystemExit(f"Online Retail II subset not found at {CSV} (README, Tests)")

    lines = trading_days(date.fromisoformat(args.start), args.dates)
    days = list(lines)
    sampled = days[: args.sample]
    figures: dict[str, Any] = {"load_average_before": load_average()}
    # The backfill runs between the two halves of the sample, so drift in the machine's load (other jobs
    # on the same cores) falls on both sides alike.
    half = (len(sampled) + 1) // 2
    one_by_one = run_date_by_date(sampled[:half], ROOT / "date_by_date", fresh=True)
    backfills = []
    for n in range(args.repeat):
        backfills.append(run_backfill(days, ROOT / f"backfill-{n}"))
        print(
            f"backfill of {len(days)} dates: {backfills[-1]['seconds']:6.1f} s (load {load_average()})",
            file=sys.stderr,
        )
    one_by_one += run_date_by_date(sampled[half:], ROOT / "date_by_date", fresh=False)
    figures["load_average_after"] = load_average()

    ours = inspect(ROOT / f"backfill-{args.repeat - 1}", sampled)
    theirs = inspect(ROOT / "date_by_date", sampled)
    same = ours["checksums"] == theirs["checksums"]
    per_date = statistics.median(r["seconds"] for r in one_by_one)
    backfill_seconds = statistics.median(r["seconds"] for r in backfills)
    extrapolated = per_date * len(days)
    figures |= {
        "pipeline": PIPELINE,
        "dates": [str(d) for d in days],
        "lines": sum(lines.values()),
        "backfill": _side(backfills)
        | {
            "seconds": round(backfill_seconds, 2),
            "seconds_per_date": round(backfill_seconds / len(days), 2),
            "spark_applications": ours["spark_applications"],
            "step_seconds": ours["steps"],
        },
        "date_by_date": _side(one_by_one)
        | {
            "sampled_dates": [str(d) for d in sampled],
            "seconds_per_date": round(per_date, 2),
            "extrapolated": True,
            "extrapolated_seconds": round(extrapolated, 2),
            "how": f"median of the {len(sampled)} sampled dates run one by one, times {len(days)} dates",
            "step_seconds": theirs["steps"],
        },
        "ratio": round(backfill_seconds / extrapolated, 3),
        "speedup": round(extrapolated / backfill_seconds, 2),
        "peak_memory_mb": _side(backfills)["peak_memory_mb"],
        "same_content_for_sampled_dates": same,
        "compared": {table: count for table, (count, _) in theirs["checksums"].items()},
        "repeat": args.repeat,
    }
    print(
        f"{len(days)} dates: backfill {backfill_seconds:.1f} s, date by date {per_date:.1f} s a date "
        f"(median of {len(sampled)}) x {len(days)} = {extrapolated:.0f} s extrapolated; ratio "
        f"{figures['ratio']:.3f}, speedup {figures['speedup']:.1f}x; same content: {same}",
        file=sys.stderr,
    )
    write_result(NAME, figures)
    if not same:
        raise SystemExit(f"the sampled dates differ: backfill {ours['checksums']} vs {theirs['checksums']}")


if __name__ == "__main__":
    main()
