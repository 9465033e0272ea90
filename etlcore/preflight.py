"""What a run will need, checked before it spends time: before any source is read and before the JVM starts.

`pipeline_preflight` looks at a parsed pipeline (etlcore.config has already checked its keys and types,
``[spark.options]`` included) for the steps about to run, and returns every problem found, not the first:

- extract: every environment variable a source names for its secrets (``token_env``, ``dsn_env``...) is
  set. S3 credentials come from boto3's chain and are not looked at.
- transform: the job module exists in ``spark_jobs`` and has a contract (spark_jobs/contract.py); the
  datasets and columns the job reads under the pipeline's options are declared; the pseudonym key
  variable is set; and per engine the pipeline may run (``engine``; auto: both):
  - spark: ``spark-submit`` is there, and the ``java`` it will run (``$JAVA_HOME/bin/java``, else ``java``
    on PATH, as Spark's launcher chooses) answers ``-version`` with a major version of at least `JAVA_MIN`;
  - dask: the job's Dask module is in ``spark_jobs`` and the packages it imports are installed (found,
    not imported: importing Dask here would cost a second of every run), and the ``[dask]
    scheduler_address``, when given, accepts a connection.

Nothing here reads data, writes a file or a record, or starts Spark or Dask. `preflight_enforce` raises the
findings as one `ConfigurationError` line (exit 1 and a failed run record, like every user error).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors import build_connector
from connectors.secrets import secret_problem
from spark_jobs.contract import CONTRACTS

from .config import PipelineConfig
from .engines import DASK, SPARK, engines_possible
from .errors import ETL_ERRORS, ConfigurationError
from .pii import pii_cipher
from .spark import child_environment, job_script, spark_submit_binary

# Spark 4 (the pyspark this project installs) runs on Java 17 or newer only.
JAVA_MIN = 17
_JAVA_TIMEOUT_SECONDS = 20
_JAVA_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?[^"]*"')
# (path, mtime, size) of a java binary -> (exit code, output of `java -version`).
_java_outputs: dict[tuple[str, int, int], tuple[int, str]] = {}
# What the Dask job's process imports besides the jobs package; `distributed` only to reach a scheduler.
DASK_PACKAGES = ("dask", "pandas", "pyarrow")
_SCHEDULER_TIMEOUT_SECONDS = 3


@dataclass(frozen=True)
class Finding:
    """One problem: ``check`` names what was checked (``job``, ``inputs``, ``pseudonym_key``, ``pii_keys``,
    ``java``, ``spark_submit``, ``dask``, ``dask_scheduler``, ``source_secret``), ``message`` says what is
    wrong and what is needed."""

    check: str
    message: str


@dataclass(frozen=True)
class JavaFound:
    path: str
    how: str  # "JAVA_HOME" or "PATH"
    major: int
    banner: str  # the first line of `java -version`


def pipeline_preflight(*, config: PipelineConfig, steps: Sequence[str]) -> list[Finding]:
    """Every problem that would make the given steps fail for want of configuration or environment."""
    findings: list[Finding] = []
    if "extract" in steps:
        findings += source_secrets_check(config=config)
        findings += pii_keys_check(config=config)
    if "transform" in steps:
        findings += job_check(config=config)
        findings += pseudonym_key_check(config=config)
        engines = engines_possible(config.engine)
        if SPARK in engines:
            findings += spark_submit_check()
            java = java_find()
            if isinstance(java, Finding):
                findings.append(java)
        if DASK in engines:
            findings += dask_check(config=config)
    return findings


def preflight_enforce(*, config: PipelineConfig, steps: Sequence[str]) -> None:
    """Raise the findings of `pipeline_preflight` as one line naming the pipeline file."""
    findings = pipeline_preflight(config=config, steps=steps)
    if findings:
        raise ConfigurationError(findings_line(config, findings))


def findings_line(config: PipelineConfig, findings: Iterable[Finding]) -> str:
    return f"{config.source_file}: " + "; ".join(f.message for f in findings)


def job_check(*, config: PipelineConfig) -> list[Finding]:
    """The job module exists, has a contract, and every dataset and column it reads is declared."""
    job = config.spark.job
    try:
        job_script(job)
    except ConfigurationError as exc:
        return [Finding("job", f"[spark] job: {exc}")]
    contract = CONTRACTS.get(job)
    if contract is None:
        return [
            Finding("job", f"[spark] job: {job!r} declares no contract in spark_jobs/contract.py CONTRACTS")
        ]
    findings = []
    options = config.spark.options
    for dataset in contract.inputs_derived(options):
        if dataset in config.datasets:
            findings.append(
                Finding(
                    "inputs",
                    f"[datasets.{dataset}]: {job} derives {dataset} from the lines "
                    f"([spark.options] {dataset}.derive_from): remove the dataset or that option",
                )
            )
    for dataset, columns in contract.inputs_needed(options).items():
        declared = config.datasets.get(dataset)
        if declared is None:
            known = ", ".join(config.datasets) or "none"
            findings.append(
                Finding(
                    "inputs",
                    f"[datasets]: {job} reads a dataset {dataset!r}, not declared (declared: {known})",
                )
            )
            continue
        names = {c.name for c in declared.columns}
        missing = [c for c in columns if c not in names]
        if missing:
            findings.append(
                Finding(
                    "inputs",
                    f"[datasets.{dataset}.columns]: {job} reads column(s) {', '.join(missing)}, not declared",
                )
            )
    return findings


def pseudonym_key_check(*, config: PipelineConfig) -> list[Finding]:
    problem = secret_problem(config.spark.pseudonym_key_env)
    if problem is None:
        return []
    return [
        Finding(
            "pseudonym_key",
            f"[spark] pseudonym_key_env: {problem} (the key the customer pseudonyms are made with)",
        )
    ]


def pii_keys_check(*, config: PipelineConfig) -> list[Finding]:
    """With an encrypted column (`pii = "encrypt"`), its keys' variable holds Fernet keys (only extraction
    and authorised readers need it: the job never gets it)."""
    if not any(ds.encrypted for ds in config.datasets.values()):
        return []
    try:
        pii_cipher(env=config.spark.pii_keys_env)
    except ConfigurationError as exc:
        return [Finding("pii_keys", f"[spark] pii_keys_env: {exc}")]
    return []


def source_secret_variables(*, config: PipelineConfig) -> dict[str, dict[str, str | None]]:
    """Dataset -> {variable: why it cannot be read, None when it can} for every ``*_env`` option of its
    source (a preset's included)."""
    found: dict[str, dict[str, str | None]] = {}
    for dataset in config.datasets.values():
        try:
            connector = build_connector(name=dataset.name, options=dataset.source)
        except ETL_ERRORS:
            continue  # the extract reports it, naming the source
        found[dataset.name] = {name: secret_problem(name) for name in _env_options(connector.options)}
    return found


def source_secrets_check(*, config: PipelineConfig) -> list[Finding]:
    return [
        Finding("source_secret", f"[datasets.{dataset}.source]: {problem}")
        for dataset, variables in source_secret_variables(config=config).items()
        for problem in variables.values()
        if problem is not None
    ]


def spark_submit_check() -> list[Finding]:
    binary = spark_submit_binary()
    if shutil.which(binary):  # a path, or a name on PATH (ETL_SPARK_SUBMIT=spark-submit)
        return []
    return [Finding("spark_submit", f"spark-submit {binary} is not an executable file (ETL_SPARK_SUBMIT)")]


def dask_check(*, config: PipelineConfig) -> list[Finding]:
    """The Dask job's module and the packages it imports are there (no Java needed), and its scheduler,
    when the pipeline names one, accepts a connection."""
    why = f'engine "{config.engine}" runs {config.spark.job} on Dask'
    module = config.dask.job  # etlcore.config refused a dask or auto pipeline whose job has none
    if module is None or importlib.util.find_spec(module) is None:
        return [Finding("dask", f"{why}: its Dask module {module!r} is not in the jobs package")]
    address = config.dask.scheduler_address
    packages = (*DASK_PACKAGES, "distributed") if address else DASK_PACKAGES
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        installed = "pip install 'dask[dataframe,distributed]'"
        return [Finding("dask", f"{why}: {', '.join(missing)} not installed ({installed})")]
    if address:
        problem = scheduler_problem(address)
        if problem:
            return [Finding("dask_scheduler", f"[dask] scheduler_address: {problem}")]
    return []


def scheduler_problem(address: str) -> str | None:
    """Why no Dask scheduler can be reached at `address` (tcp:// or tls://host:port), None when one
    accepts a connection. A connection only: the scheduler's protocol is the job's to speak."""
    host, _, port = address.split("://", 1)[1].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=_SCHEDULER_TIMEOUT_SECONDS):
            return None
    except OSError as exc:
        return f"no scheduler answers at {address} ({exc.strerror or exc})"


def java_find() -> JavaFound | Finding:
    """The java spark-submit will run, and its major version; a Finding when it is missing or too old."""
    needed = f"Spark needs Java {JAVA_MIN} or newer"
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        path, how = str(Path(java_home) / "bin" / "java"), "JAVA_HOME"
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return Finding("java", f"{needed}: JAVA_HOME is {java_home}, which has no executable bin/java")
    else:
        found = shutil.which("java")
        if found is None:
            return Finding("java", f"{needed}: no java found (JAVA_HOME is not set and no java is on PATH)")
        path, how = found, "PATH"
    try:
        stat = os.stat(path)
        key = (path, stat.st_mtime_ns, stat.st_size)
        if key not in _java_outputs:  # once per java binary and process: a run checks before each step
            proc = subprocess.run(
                [path, "-version"],
                capture_output=True,
                text=True,
                timeout=_JAVA_TIMEOUT_SECONDS,
                check=False,
                env=child_environment(),
            )
            _java_outputs[key] = (proc.returncode, (proc.stderr or "") + (proc.stdout or ""))
        returncode, output = _java_outputs[key]
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Finding("java", f"{needed}: {path} (from {how}) did not run: {exc}")
    banner = next((line.strip() for line in output.splitlines() if line.strip()), "no output")
    match = _JAVA_VERSION.search(output)
    if returncode != 0 or match is None:
        return Finding("java", f"{needed}: {path} (from {how}) gave no version: {banner[:120]}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_392" is Java 8
        major = int(match.group(2))
    if major < JAVA_MIN:
        return Finding("java", f"{needed}: found Java {major} at {path} (from {how}): {banner[:120]}")
    return JavaFound(path=path, how=how, major=major, banner=banner)


def _env_options(options: Mapping[str, Any]) -> list[str]:
    """Values of every ``*_env`` key, at any depth (``auth.token_env``, ``dsn_env``), in order."""
    names: list[str] = []
    for key, value in options.items():
        if isinstance(value, Mapping):
            names += [n for n in _env_options(value) if n not in names]
        elif key.endswith("_env") and isinstance(value, str) and value and value not in names:
            names.append(value)
    return names
