"""What every benchmark shares: figures printed and written to benchmarks/results/<name>.json.

Benchmarks are scripts (`python -m benchmarks.<name>`), never timed tests. Each measures its baseline in
the same run, repeats every timing (median of `--repeat`, default 3), and records at least `ratio`
(against its baseline) and `peak_memory_mb`, so runs can be compared over time.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def median_seconds(fn: Callable[[], Any], *, repeat: int) -> tuple[float, list[float]]:
    """Median wall time of `repeat` calls, and every sample."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), samples


def run_child(argv: Sequence[str], *, env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run a measured step in its own process: (wall seconds, peak RSS MB of that process, stdout).

    Peak memory is the child's own maximum resident set (wait4 rusage), not the benchmark driver's."""
    started = time.perf_counter()
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, env=env)
    out = proc.stdout.read().decode() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"benchmark step failed: {' '.join(argv)}")
    return seconds, usage.ru_maxrss / 1024, out


def load_average() -> str:
    """The machine's load averages (1, 5, 15 min), recorded beside figures: a loaded machine's are loose."""
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def django_setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "conf.settings.local")
    import django

    django.setup()


def side_summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One side's repeated child runs (``seconds``, ``peak_memory_mb``, ``max_process_rss_mb``,
    ``result``): the median time, every sample, the largest peaks and the last result."""
    return {
        "seconds": round(statistics.median(r["seconds"] for r in runs), 2),
        "samples": [round(r["seconds"], 2) for r in runs],
        "peak_memory_mb": round(max(r["peak_memory_mb"] for r in runs), 1),
        "max_process_rss_mb": round(max(r["max_process_rss_mb"] for r in runs), 1),
        "result": runs[-1]["result"],
    }


def self_peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_result(name: str, figures: dict[str, Any]) -> Path:
    """Print the figures and write them with the machine they were measured on."""
    missing = {"ratio", "peak_memory_mb"} - figures.keys()
    if missing:
        raise ValueError(f"benchmark {name} must report {sorted(missing)}")
    record = {
        "benchmark": name,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        **figures,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2, sort_keys=True))
    print(f"written to {path}", file=sys.stderr)
    return path
