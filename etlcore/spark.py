"""The transform job as a subprocess: spark-submit, or the same job on Dask in a Python process of its own
(etlcore/engines.py). An argument list, never a shell string; logged with secrets masked; run through the
child guard, with an allow-listed environment, a private log and a timeout, whichever the engine."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyspark
import structlog
from django.conf import settings

from connectors.secrets import secret_get

from . import child_guard
from .config import PipelineConfig
from .engines import DASK, SPARK, engine_job
from .errors import ConfigurationError, SparkJobError
from .files import PRIVATE_UMASK, private_dirs, private_open, private_write
from .logs import secret_values_register, secrets_mask

log = structlog.get_logger(__name__)
# Lines of the job's log kept on the step record (`details["log_tail"]`), masked.
LOG_TAIL_LINES = 20

# Secret-looking `[spark.conf]` keys: their values go to spark-submit in a file only the user can read, never
# on its command line (which every local user can read in `ps`), and are masked in logs and records.
_SECRET_CONF = re.compile(
    r"(secret|password|token|credential|access\.key|^spark\.executorEnv\.)", re.IGNORECASE
)
JOBS_PACKAGE = "spark_jobs"
# What a submit writes before spark-submit starts (named here so `--dry-run` shows them without writing them):
# each date's job spec in its work dir, the zipped jobs package under the staging root, and the secret
# settings in a private temporary directory.
SPEC_FILE = "_spec.json"
JOBS_ARCHIVE = f"{JOBS_PACKAGE}.zip"
PRIVATE_DIR_PREFIX = "etl-spark-"
PROPERTIES_FILE = "secret.properties"
# What a job run over several dates leaves in a date's work dir when that date failed (spark_jobs main()).
FAILED_FILE = "_failed.json"
CHILD_GUARD = Path(child_guard.__file__)
# What spark-submit, its JVM and the job's Python driver (or the Dask job's process) inherit from this
# process: what they need to run, the pseudonym key and the variables the pipeline names in `[spark] env`;
# never the rest (DATABASE_URL, API tokens, DJANGO_SECRET_KEY).
_CHILD_ENV_NAMES = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "JAVA_HOME", "JAVA_TOOL_OPTIONS"}
    | {"PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "PYTHONPATH", "PYTHONHASHSEED"}
)
_CHILD_ENV_PREFIXES = ("LC_", "SPARK_", "HADOOP_", "YARN_", "DASK_")
# How each engine's start and end are logged (docs/operations.md, "Logs").
_EVENTS = {SPARK: "spark_submit", DASK: "dask_job"}


@dataclass(frozen=True)
class SubmitResult:
    command: list[str]  # masked: safe to store and print
    returncode: int
    log_path: Path
    seconds: float
    log_tail: list[str] = field(default_factory=list)  # masked
    engine: str = SPARK

    def facts(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "exit_code": self.returncode,
            f"{self.engine}_seconds": round(self.seconds, 3),
            "log": str(self.log_path),
            "log_tail": self.log_tail,
        }


def spark_submit_binary() -> str:
    if settings.ETL_SPARK_SUBMIT:
        return settings.ETL_SPARK_SUBMIT
    return str(Path(pyspark.__file__).parent / "bin" / "spark-submit")


def job_script(job_module: str) -> Path:
    if not job_module.startswith(f"{JOBS_PACKAGE}."):
        raise ConfigurationError(f"spark job {job_module!r} must be a module of the {JOBS_PACKAGE} package")
    spec = importlib.util.find_spec(job_module)
    if spec is None or spec.origin is None:
        raise ConfigurationError(f"spark job module {job_module!r} not found")
    return Path(spec.origin)


def jobs_archive(build_dir: Path) -> Path:
    """Zip the spark_jobs package for --py-files, so executors on a cluster can import it."""
    package_dir = Path(importlib.util.find_spec(JOBS_PACKAGE).origin).parent
    sources = sorted(p for p in package_dir.rglob("*.py"))
    private_dirs(build_dir, owned_from=build_dir)
    archive = build_dir / JOBS_ARCHIVE
    tmp = archive.with_suffix(f".{os.getpid()}.tmp")
    fd = private_open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sources:
            zf.write(path, Path(JOBS_PACKAGE) / path.relative_to(package_dir))
    os.replace(tmp, archive)  # concurrent submits never see a half-written zip
    return archive


_LOCAL_MASTER = re.compile(r"^local(?:\[(\*|\d+)(?:,\s*\d+)?\])?$")
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
# In local mode the driver JVM is the only executor: give it this share of the machine's memory, within
# bounds. What does not fit in the cache spills to local disk; twice the heap saved little at 10 M lines
# (docs/scaling.md), and the ETL host also runs Django and maybe the database.
_LOCAL_DRIVER_MEMORY_SHARE = 0.25
_LOCAL_DRIVER_MEMORY_MB = (1024, 8192)
# The job's validation projection compiles to generated methods above HotSpot's 8,000-byte JIT limit, which
# the JVM would otherwise interpret forever: 2.3x slower on that stage (docs/scaling.md).
_JIT_HUGE_METHODS = "-XX:-DontCompileHugeMethods"


def local_cores(master: str) -> int | None:
    """Task slots of a ``local`` master (``local[*]`` = every CPU); None for a cluster master."""
    match = _LOCAL_MASTER.match(master.strip())
    if not match:
        return None
    if match.group(1) in (None, ""):
        return 1
    if match.group(1) == "*":
        return os.cpu_count() or 1
    return int(match.group(1))


def _memory_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError, AttributeError):
        return 4096


def _is_loopback_standalone(master: str) -> bool:
    """A standalone master on this machine only (spark://127.0.0.1:7077[,localhost:7078])."""
    if not master.startswith("spark://"):
        return False
    hosts = [urlsplit(f"spark://{part}").hostname or "" for part in master[len("spark://") :].split(",")]
    return bool(hosts) and all(h in _LOOPBACK_HOSTS for h in hosts)


def default_conf(master: str) -> dict[str, str]:
    """Spark settings chosen for the master, beneath the pipeline's ``[spark.conf]`` (which wins).

    Measured and explained in docs/scaling.md. A day's partition is small to mid-sized, so: adaptive
    execution on, with partition coalescing and skew handling, and a shuffle width of a few partitions
    per task slot that AQE trims to what the data needs; a 64 MB broadcast threshold so dimension
    exports never shuffle the order lines; JIT compilation of Spark's huge generated methods; and in
    local mode a driver heap sized to the machine.
    """
    conf = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.sql.adaptive.skewJoin.enabled": "true",
        "spark.sql.autoBroadcastJoinThreshold": str(64 * 1024 * 1024),
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.extraJavaOptions": _JIT_HUGE_METHODS,
        "spark.executor.extraJavaOptions": _JIT_HUGE_METHODS,
        # Hadoop's local file system sets the mode of what it writes from this, not from the process's
        # umask (its default, 022, makes the transformed Parquet files 0644 and their folders 0755).
        "spark.hadoop.fs.permissions.umask-mode": f"{PRIVATE_UMASK:03o}",
    }
    cores = local_cores(master)
    if cores is not None:
        conf["spark.sql.shuffle.partitions"] = str(max(2, 2 * cores))
        low, high = _LOCAL_DRIVER_MEMORY_MB
        memory = min(high, max(low, int(_memory_mb() * _LOCAL_DRIVER_MEMORY_SHARE)))
        conf["spark.driver.memory"] = f"{memory}m"
    elif _is_loopback_standalone(master):
        # Executors on this machine must reach the driver on the interface the master listens on, not on
        # whatever the host name resolves to. Never for a remote master: executors there could not connect.
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
    return conf


def conf_is_secret(key: str) -> bool:
    return bool(_SECRET_CONF.search(key))


def submit_conf(config: PipelineConfig, extra_conf: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every Spark setting of the submit: the defaults for the master, the pipeline's, then the caller's."""
    conf = {**default_conf(config.spark.master), **config.spark.conf, **(extra_conf or {})}
    # Secret settings live in the pipeline file, in no variable: masked in logs like the variables' values.
    secret_values_register(value for key, value in conf.items() if conf_is_secret(key))
    return conf


def submit_command(
    config: PipelineConfig,
    *,
    spec_path: Path | Sequence[Path],
    py_files: Path,
    extra_conf: dict[str, str] | None = None,
    properties_file: Path | None = None,
) -> list[str]:
    """The spark-submit argument list (one ``--spec`` per date of `spec_path`). Secret settings are not in
    it: they are in `properties_file` (written by :func:`properties_write`), which spark-submit reads
    beside conf/spark-defaults.conf."""
    spec_paths = [spec_path] if isinstance(spec_path, Path) else list(spec_path)
    conf = submit_conf(config, extra_conf)
    if any(conf_is_secret(key) for key in conf) and properties_file is None:
        raise ValueError("secret Spark settings need a properties file, never the command line")
    command = [
        spark_submit_binary(),
        "--master",
        config.spark.master,
        "--name",
        f"{config.name}:{spec_paths[0].parent.name}",
        "--py-files",
        str(py_files),
    ]
    if properties_file is not None:
        command += ["--properties-file", str(properties_file), "--load-spark-defaults"]
    for key, value in conf.items():
        if not conf_is_secret(key):
            command += ["--conf", f"{key}={value}"]
    command.append(str(job_script(config.spark.job)))
    for path in spec_paths:
        command += ["--spec", str(path)]
    return command


def dask_command(config: PipelineConfig, *, spec_path: Path | Sequence[Path]) -> list[str]:
    """The Dask job's argument list: the job's Dask module (`[spark] job`'s `dask_job`) in this Python,
    one ``--spec`` per date, and ``--scheduler`` when the pipeline names a dask.distributed scheduler (else
    the job runs Dask's threaded scheduler in its own process). ``-P``: the job is imported from the
    project the child's PYTHONPATH names (:func:`job_environment`), never from the working directory."""
    spec_paths = [spec_path] if isinstance(spec_path, Path) else list(spec_path)
    command = [sys.executable, "-P", "-m", engine_job(config, DASK)]
    for path in spec_paths:
        command += ["--spec", str(path)]
    if config.dask.scheduler_address:
        command += ["--scheduler", config.dask.scheduler_address]
    return command


def jobs_root() -> Path:
    """The folder holding the jobs package this process imports: the Dask job's process imports the same."""
    return Path(importlib.util.find_spec(JOBS_PACKAGE).origin).parent.parent


def jobs_build_dir(config: PipelineConfig) -> Path:
    """Where the submit zips the jobs package (:func:`jobs_archive`)."""
    return config.staging_root / "_build"


def properties_write(conf: Mapping[str, str], directory: Path) -> Path:
    """The secret settings as a Java properties file readable by this user only (created 0600, without
    following a symlink), in a private directory the caller removes after the submit."""
    path = directory / PROPERTIES_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        for key, value in conf.items():
            if conf_is_secret(key):
                fh.write(f"{_properties_escape(key, key=True)}={_properties_escape(value)}\n")
    return path


def _properties_escape(text: str, *, key: bool = False) -> str:
    """java.util.Properties syntax (Spark reads the file as UTF-8): backslash escapes, control characters,
    a leading space or comment mark, and in keys the separators."""
    out = []
    for i, char in enumerate(text):
        if char == "\\":
            out.append("\\\\")
        elif char in "\n\r\t\f":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f"}[char])
        elif (key and char in "=: #!") or (i == 0 and char in " #!"):
            out.append("\\" + char)
        elif ord(char) < 0x20:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)


def child_environment(environ: Mapping[str, str] | None = None, wanted: Iterable[str] = ()) -> dict[str, str]:
    """The environment of any process the project starts (spark-submit, `java -version`): an allow-list of
    this process's (see `_CHILD_ENV_NAMES`) and the `wanted` variables, so that no secret a child does not
    need (DATABASE_URL, API tokens, DJANGO_SECRET_KEY) reaches it."""
    environ = os.environ if environ is None else environ
    wanted = set(wanted)
    return {
        name: value
        for name, value in environ.items()
        if name in _CHILD_ENV_NAMES or name.startswith(_CHILD_ENV_PREFIXES) or name in wanted
    }


def job_environment(
    config: PipelineConfig, environ: Mapping[str, str] | None = None, *, engine: str = SPARK
) -> dict[str, str]:
    """The job's environment, either engine: the allow-list, the pseudonym key and `[spark] env`; the Dask
    job's process also gets the project's jobs package first on its PYTHONPATH."""
    environ = os.environ if environ is None else environ
    wanted = {config.spark.pseudonym_key_env, *config.spark.env}
    env = child_environment(environ, wanted)
    # A secret given as a file (`NAME_FILE`) reaches the job as NAME: the job reads variables only.
    for name in sorted(wanted - env.keys()):
        value = secret_get(name, environ)
        if value:
            env[name] = value
    if engine == DASK:
        env["PYTHONPATH"] = os.pathsep.join([str(jobs_root()), *filter(None, [env.get("PYTHONPATH")])])
        return env
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    return env


def mask_command(command: list[str]) -> list[str]:
    masked = []
    for arg in command:
        key, sep, _ = arg.partition("=")
        masked.append(f"{key}=***" if sep and _SECRET_CONF.search(key) else arg)
    return masked


def job_submit(
    config: PipelineConfig,
    *,
    spec: dict[str, Any],
    work_dir: Path,
    log_path: Path,
    timeout: float | None = None,
    engine: str = SPARK,
) -> SubmitResult:
    """Write the job spec, run the job on `engine` (spark-submit, or the Dask job's process), capture its
    output in `log_path`; raise if it fails."""
    return jobs_submit(config, jobs=[(spec, work_dir)], log_path=log_path, timeout=timeout, engine=engine)


def jobs_submit(
    config: PipelineConfig,
    *,
    jobs: Sequence[tuple[dict[str, Any], Path]],
    log_path: Path,
    timeout: float | None = None,
    engine: str = SPARK,
) -> SubmitResult:
    """Several (spec, work dir) of the job, one date each, in one process of `engine`: one spark-submit
    (the JVM starts once) or one Dask job process.

    With one job, any failure raises. With several, the job ends each date with `_result.json` or
    `_failed.json` in its work dir and goes on: only an application that did not account for every
    date raises; the caller reads each date's outcome."""
    spec_paths = []
    for spec, work_dir in jobs:
        spec_path = work_dir / SPEC_FILE
        private_write(spec_path, json.dumps(spec, indent=2, sort_keys=True))
        spec_paths.append(spec_path)
    if engine == DASK:  # no archive and no Spark settings: the job imports the project's package
        command = dask_command(config, spec_path=spec_paths)
        env = job_environment(config, engine=DASK)
        return _jobs_run(config, jobs, command, env, log_path, timeout, engine=DASK)
    private = Path(tempfile.mkdtemp(prefix=PRIVATE_DIR_PREFIX))  # 0700
    try:
        conf = submit_conf(config)
        properties = properties_write(conf, private) if any(map(conf_is_secret, conf)) else None
        command = submit_command(
            config,
            spec_path=spec_paths,
            py_files=jobs_archive(jobs_build_dir(config)),
            properties_file=properties,
        )
        return _jobs_run(config, jobs, command, job_environment(config), log_path, timeout, engine=SPARK)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _jobs_run(
    config: PipelineConfig,
    jobs: Sequence[tuple[dict[str, Any], Path]],
    command: list[str],
    env: dict[str, str],
    log_path: Path,
    timeout: float | None,
    *,
    engine: str,
) -> SubmitResult:
    """Run the job's process over `jobs`; a failure that every date accounted for is the dates' to report."""
    try:
        return _command_run(config, command, env, log_path, timeout, engine=engine)
    except SparkJobError as exc:
        ended = ("_result.json", FAILED_FILE)
        accounted = all(any((work_dir / name).exists() for name in ended) for _, work_dir in jobs)
        if len(jobs) == 1 or not exc.facts or not accounted:
            raise
        return SubmitResult(
            command=exc.facts["command"],
            returncode=exc.facts["exit_code"],
            log_path=log_path,
            seconds=exc.facts[f"{engine}_seconds"],
            log_tail=exc.facts.get("log_tail", []),  # the dates' records keep the end of the log
            engine=engine,
        )


def _command_run(
    config: PipelineConfig,
    command: list[str],
    env: dict[str, str],
    log_path: Path,
    timeout: float | None,
    *,
    engine: str = SPARK,
) -> SubmitResult:
    pipeline_dir = config.staging_root / config.name
    private_dirs(log_path.parent, owned_from=pipeline_dir if pipeline_dir in log_path.parents else None)
    started = time.monotonic()
    job, event = engine_job(config, engine), _EVENTS[engine]
    where = (
        {"master": config.spark.master}
        if engine == SPARK
        else {"scheduler": config.dask.scheduler_address or "threaded, in the job's process"}
    )
    log.info(f"{event}_started", job=job, **where, log=str(log_path))
    with os.fdopen(private_open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as output:
        output.write(("$ " + " ".join(mask_command(command)) + "\n").encode())
        output.flush()
        # Through the guard (etlcore/child_guard.py): the JVM and its Python driver (or the Dask job's
        # process) die with this process, even by kill -9, and a signal that ends the run (RunTerminated)
        # stops them before it unwinds.
        proc = subprocess.Popen(
            [sys.executable, "-I", str(CHILD_GUARD), str(os.getpid()), "--", *command],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            umask=PRIVATE_UMASK,  # what the job's processes create is private too
        )
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            guard_stop(proc)
            log.error(f"{event}_finished", log=str(log_path), error="timed out", timeout_seconds=timeout)
            raise SparkJobError(f"{engine} job {job} timed out after {timeout} s; log: {log_path}") from None
        except BaseException:
            guard_stop(proc)
            raise
    result = SubmitResult(
        command=mask_command(command),
        returncode=returncode,
        log_path=log_path,
        seconds=time.monotonic() - started,
        log_tail=log_tail(log_path),
        engine=engine,
    )
    (log.info if returncode == 0 else log.error)(
        f"{event}_finished",
        log=str(log_path),
        exit_code=returncode,
        duration_seconds=round(result.seconds, 3),
    )
    if returncode != 0:
        raise SparkJobError(
            f"{engine} job {job} failed with exit code {returncode}: "
            f"{last_error_line(log_path, job)} (log: {log_path})",
            facts=result.facts(),
        )
    return result


def guard_stop(proc: subprocess.Popen) -> None:
    """Ask the guard to end the job's process group and wait for it (it gives the JVM a grace period)."""
    proc.terminate()
    try:
        proc.wait(timeout=child_guard.GRACE_SECONDS + 5)
    except subprocess.TimeoutExpired:
        proc.kill()  # its child (the JVM: spark-submit execs it) has a parent-death signal of its own
        proc.wait()


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last `lines` lines of a job's log, secrets masked (the log file itself is private to the user,
    the step record is not); [] when there is no log."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))  # a JVM's log can be large; its tail is at the end
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    tail = text.splitlines()[-lines:]
    return [secrets_mask(line)[:1000] for line in tail]


def last_error_line(log_path: Path, job_module: str) -> str:
    """The telling line of a failed job's log: the job's own `<job>: ...` line, else the last exception."""
    prefix = job_module.rsplit(".", 1)[-1] + ": "
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    for line in reversed(lines):
        if line.startswith(prefix):
            return line.removeprefix(prefix).strip()[:500]
    for line in reversed(lines):
        if re.match(r"^\w+(\.\w+)*(Error|Exception)\b", line.strip()):
            return line.strip()[:500]
    return lines[-1][:500] if lines else "no output"
