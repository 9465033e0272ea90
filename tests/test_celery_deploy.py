"""deploy/systemd: the Celery worker and beat units pass `systemd-analyze verify`, start the commands
docs/celery.md describes (both queues, a pool that can hold a run and its extracts, the database
scheduler), and their environment file names only variables the project reads."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail_in_ci

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "deploy" / "systemd"
WORKER, BEAT = UNITS / "etl-celery-worker.service", UNITS / "etl-celery-beat.service"
ENV_EXAMPLE = UNITS / "etl.env.example"
INSTALLED = "/srv/etl"  # where the units expect the checkout


def unit_lines(unit: Path, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.read_text().splitlines() if line.startswith(f"{key}=")]


def exec_start(unit: Path) -> list[str]:
    """ExecStart as systemd runs it: ${VAR} from the unit's Environment= lines, %% as %, then split."""
    (line,) = unit_lines(unit, "ExecStart")
    env = dict(item.split("=", 1) for item in unit_lines(unit, "Environment"))
    line = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], line).replace("%%", "%")
    return shlex.split(line)


@pytest.mark.parametrize("unit", [WORKER, BEAT], ids=lambda u: u.name)
def test_the_unit_passes_systemd_analyze_verify(unit, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        skip_or_fail_in_ci("systemd-analyze is not installed", "systemd-analyze (package systemd)")
    # Installed at this checkout instead of /srv/etl, so that verify finds the ExecStart program.
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(INSTALLED, str(ROOT)))
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 on an unknown key or a value it cannot parse, but says so: no output is the pass.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_the_worker_consumes_both_queues_with_room_for_a_run_and_its_extracts():
    argv = exec_start(WORKER)
    assert argv[0] == f"{INSTALLED}/.venv/bin/celery" and argv[1:4] == ["-A", "conf", "worker"]
    options = dict(zip(argv[4::2], argv[5::2], strict=False))
    assert options["--queues"] == "etl,etl.extract"
    assert int(options["--concurrency"]) >= 2
    assert options["--hostname"] == "etl@%h"
    assert unit_lines(WORKER, "KillMode") == ["mixed"]  # SIGTERM to the main process: a warm shutdown


def test_beat_reads_the_schedules_from_the_database():
    argv = exec_start(BEAT)
    assert argv[1:4] == ["-A", "conf", "beat"]
    options = dict(zip(argv[4::2], argv[5::2], strict=False))
    assert options["--scheduler"] == "django_celery_beat.schedulers:DatabaseScheduler"
    assert options["--pidfile"].startswith("/run/" + unit_lines(BEAT, "RuntimeDirectory")[0] + "/")


@pytest.mark.parametrize("unit", [WORKER, BEAT], ids=lambda u: u.name)
def test_the_command_line_loads_the_project_app(unit):
    argv = exec_start(unit)
    argv[0] = str(ROOT / ".venv" / "bin" / "celery")
    done = subprocess.run(
        [*argv, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120, env=_local_env()
    )
    assert done.returncode == 0, done.stderr
    assert f"Usage: celery {argv[3]}" in done.stdout


def test_the_environment_file_names_only_what_the_project_reads_and_holds_no_secret():
    read = "\n".join(
        p.read_text() for d in ("conf", "etlcore", "connectors") for p in (ROOT / d).rglob("*.py")
    )
    units = WORKER.read_text() + BEAT.read_text()
    names = re.findall(r"^([A-Z_]+)=(.*)$", ENV_EXAMPLE.read_text(), flags=re.M)
    assert names
    for name, value in names:
        base = name.removesuffix("_FILE")
        assert f'"{base}"' in read or f"${{{name}}}" in units, f"{name}: nothing reads it"
        if name != base:
            assert value.startswith("/etc/etl/secrets/"), f"{name}: a path, not a value"
    # Every secret the production settings require comes as a file.
    assert {"DJANGO_SECRET_KEY_FILE", "DATABASE_URL_FILE", "CELERY_BROKER_URL_FILE"} <= {n for n, _ in names}
    assert not any(n in {"DJANGO_SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL"} for n, _ in names)
    for variable in set(re.findall(r"\$\{(\w+)\}", units)):
        assert variable in dict(names), f"{variable} is not in {ENV_EXAMPLE.name}"


def _local_env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL", "CELERY_"))}
    return env | {"DJANGO_SETTINGS_MODULE": "conf.settings.local"}
