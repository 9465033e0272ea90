"""Pipeline definitions: one TOML file per pipeline, validated into typed, immutable objects."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings

from connectors import connector_kinds
from connectors.base import ExtractWindow
from connectors.options import (
    ANY,
    ANY_TABLE,
    FLAG,
    NUMBER,
    SCALAR,
    TEXT,
    TEXT_LIST,
    WHOLE,
    Among,
    Entries,
    ListOf,
    OneOf,
    OptionError,
    Table,
    table_check,
)
from connectors.records import ColumnSpec
from spark_jobs.contract import CONTRACTS, JobOption
from spark_jobs.rule_spec import (
    PATTERN_MATCHES,
    RULE_CHECKS,
    RULE_COMMON_KEYS,
    RULE_SEVERITIES,
    column_kind,
    condition_parse,
    condition_value_columns,
    value_text,
)

from .engines import DASK_MAX_ROWS_DEFAULT, ENGINES
from .engines import SPARK as SPARK_ENGINE
from .errors import ConfigurationError
from .logs import secret_names_register

COLUMN_TYPES = re.compile(r"^(string|int|long|boolean|date|timestamp|decimal\((\d+),\s*(\d+)\))$")
DRIFT_POLICIES = ("warn", "fail")
# Quality rules ([[datasets.<name>.rules]], docs/configuration.md "Quality rules"): the checks, the keys
# each takes, and the severities are declared once in spark_jobs.rule_spec (RULE_CHECKS, RULE_SEVERITIES),
# shared with the job engines.
# Names that become folders, file names or reason codes (pipelines, datasets, rule codes): one pattern, so
# none can climb out of the staging root ("../x") or outgrow a database column.
NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
NAME_WORDS = "a lowercase letter, then lowercase letters, digits or _ (at most 63 characters)"
_RULE_CODE = NAME
_RANGE_TYPES = re.compile(r"^(int|long|date|timestamp|decimal\((\d+),\s*(\d+)\))$")
# Volume guards ([datasets.<name>.guards], docs/configuration.md "Volume guards"): the bounds a dataset's
# transform accounting must keep, each failing the run or warning.
GUARD_NAMES = ("min_rows", "max_quarantined_share", "max_filtered_share", "max_drop")
GUARD_ACTIONS = ("fail", "warn")

# The pipeline file, declared table by table (docs/configuration.md): `pipeline_parse` checks every key
# and type against these before it reads a value, so a misspelt key fails instead of falling back to its
# default. A source's keys are its kind's (`Connector.option_schema`); a rule's are checked by `_parse_rule`.
# `pii`: true stages the column as its keyed pseudonym, "encrypt" as a Fernet token authorised code can read
# back (etlcore.pii); docs/configuration.md "Personal data".
PII_ENCRYPT = "encrypt"
PII = OneOf((FLAG, Among((PII_ENCRYPT,), '"encrypt"')), 'true, false or "encrypt"')
COLUMN = Table(
    {"from": TEXT, "type": TEXT, "required": FLAG, "pii": PII}, "a table like { from = ..., type = ... }"
)
# A guard is its bound, or `{ value = bound, on_breach = ... }`; the bound's own check says what it must be.
GUARD = OneOf((Table({"value": ANY, "on_breach": TEXT}), ANY), "a bound or { value = ..., on_breach = ... }")
GUARDS = Table({**dict.fromkeys(GUARD_NAMES, GUARD), "on_breach": TEXT}, "a table of guards")
DATASET = Table(
    {
        "source": ANY_TABLE,  # its keys: the `kind`'s declaration, checked with the kind
        "columns": Entries(COLUMN),
        "explode": TEXT,
        "key": TEXT_LIST,
        "version_column": TEXT,
        "business_date_column": TEXT,
        "drift": TEXT,
        "ignore_fields": TEXT_LIST,  # source field paths the drift check ignores
        "rules": ListOf(ANY_TABLE, "an array of tables ([[datasets.<name>.rules]])"),
        "guards": GUARDS,
    }
)
SPARK = Table(
    {
        "job": TEXT,
        "master": TEXT,
        "conf": Entries(SCALAR),
        "pseudonym_key_env": TEXT,
        "pii_keys_env": TEXT,
        "erasure_key_env": TEXT,
        "reporting_currency": TEXT,
        "timeout_seconds": NUMBER,
        "env": TEXT_LIST,
        "options": ANY_TABLE,  # the job's own options: declared by its contract (spark_options_schema)
    }
)
# [dask]: the light engine (etlcore/engines.py): where its job runs and the dates `engine = "auto"` gives it.
# The job's options, currency and pseudonym key stay in [spark] and apply to both engines.
DASK = Table({"scheduler_address": TEXT, "max_rows": WHOLE, "timeout_seconds": NUMBER})
ENGINE = Among(ENGINES, " or ".join(", ".join(f'"{e}"' for e in ENGINES).rsplit(", ", 1)))
# A dask.distributed scheduler's address, as `dask scheduler` prints it.
_SCHEDULER_ADDRESS = re.compile(r"^(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
# [run]: how the pipeline runs unattended (docs/operations.md): nightly catch-up, backfill batches, retries.
RETRIES = Table(
    {
        "attempts": WHOLE,
        "delay_seconds": NUMBER,
        "backoff": NUMBER,
        "max_delay_seconds": NUMBER,
        "steps": TEXT_LIST,
    }
)
RUN = Table({"catch_up": FLAG, "catch_up_max_dates": WHOLE, "dates_per_job": WHOLE, "retries": RETRIES})
# [queue]: the pipeline's runs as Celery tasks (docs/celery.md): their time limits. [trigger]: the sensor
# that starts a run when a source has data newer than its saved state; off unless enabled.
QUEUE = Table({"time_limit_seconds": NUMBER, "extract_time_limit_seconds": NUMBER})
TRIGGER = Table({"enabled": FLAG, "every_seconds": NUMBER})
PIPELINE = Table(
    {
        "name": TEXT,
        "description": TEXT,
        "timezone": TEXT,
        "staging_root": TEXT,
        "extract_workers": WHOLE,
        "engine": ENGINE,
        "spark": SPARK,
        "dask": DASK,
        "warehouse": Table({"database": TEXT}),
        "run": RUN,
        "queue": QUEUE,
        "trigger": TRIGGER,
        "datasets": Entries(DATASET),
    }
)
DEFAULT_EXTRACT_WORKERS = 4
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class RuleConfig:
    """One declared quality rule. ``params`` holds the check's own keys, values already validated and
    normalised to text in the column's type (min, max, values) so the job casts them exactly."""

    code: str
    check: str
    severity: str = "reject"
    column: str | None = None
    columns: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    message: str = ""

    def spec(self) -> dict[str, Any]:
        """The rule as the job spec carries it (spark_jobs.quality.Rule)."""
        spec: dict[str, Any] = {"code": self.code, "check": self.check, "severity": self.severity}
        if self.column is not None:
            spec["column"] = self.column
        if self.columns:
            spec["columns"] = list(self.columns)
        if self.message:
            spec["message"] = self.message
        return {**spec, **self.params}


@dataclass(frozen=True)
class GuardConfig:
    """One declared volume guard: ``name`` is one of GUARD_NAMES, ``bound`` exact (a whole number of
    rows for min_rows, a share in [0, 1] for the others)."""

    name: str
    bound: Decimal
    on_breach: str = "fail"


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    source: Mapping[str, Any]
    columns: tuple[ColumnSpec, ...]
    explode: str | None = None
    key: tuple[str, ...] = ()
    version_column: str | None = None
    # The column whose date (in the pipeline's time zone) is a record's business date; None: the job's own
    # default (ordered_at for the sales job). Not the partition's date (docs/loading.md).
    business_date_column: str | None = None
    drift: str = "warn"  # what a source delivering other fields than declared does: warn (and record) or fail
    # Source fields (dotted paths) the dataset deliberately does not stage: the drift check ignores them
    # and everything under them, as a deselected field in a Singer catalog.
    ignore_fields: tuple[str, ...] = ()
    rules: tuple[RuleConfig, ...] = ()
    pii: frozenset[str] = frozenset()  # columns shown as their pseudonym in quarantined raw records
    guards: tuple[GuardConfig, ...] = ()
    # Columns staged as Fernet tokens (`pii = "encrypt"`); masked in quarantined raw records like `pii`.
    encrypted: frozenset[str] = frozenset()

    def spark_columns(self) -> dict[str, dict[str, Any]]:
        columns: dict[str, dict[str, Any]] = {}
        for c in self.columns:
            columns[c.name] = {"type": c.type, "required": c.required}
            if c.name in self.pii or c.name in self.encrypted:
                columns[c.name]["pii"] = True
        return columns

    def spark_rules(self) -> list[dict[str, Any]]:
        return [rule.spec() for rule in self.rules]


@dataclass(frozen=True)
class SparkConfig:
    job: str
    master: str
    conf: Mapping[str, str] = field(default_factory=dict)
    pseudonym_key_env: str = "ETL_PSEUDONYM_KEY"
    # The variable holding the Fernet keys of `pii = "encrypt"` columns, newest first (etlcore.pii). Read by
    # extraction and authorised readers only: the job passes tokens through and never gets it.
    pii_keys_env: str = "ETL_PII_KEYS"
    # The variable holding the erasure list's key (connectors.records.erasure_token): extraction and
    # forget_customer only, and never rotated, so the list outlives a new pseudonym key.
    erasure_key_env: str = "ETL_ERASURE_KEY"
    reporting_currency: str = "EUR"
    timeout_seconds: float | None = None
    # The job's own options ([spark.options]), passed verbatim in the job spec; their keys are the job's
    # contract's (spark_options_schema), checked when the file is read, their values by the job.
    options: Mapping[str, Any] = field(default_factory=dict)
    # Variables the job's processes get besides the pseudonym key (etlcore.spark.job_environment).
    env: tuple[str, ...] = ()


@dataclass(frozen=True)
class DaskConfig:
    """[dask]: the Dask engine's own settings. ``job``: the Dask module of ``[spark] job`` (its contract's
    ``dask_job``; None when it has none, which only ``engine = "spark"`` allows)."""

    job: str | None = None
    # A dask.distributed scheduler the job's process connects to; None: Dask's threaded scheduler in it.
    scheduler_address: str | None = None
    max_rows: int = DASK_MAX_ROWS_DEFAULT
    timeout_seconds: float | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failing step is tried again ([run.retries]): `attempts` tries in all (1: never again),
    waiting `delay_seconds`, then that times `backoff` for each further try, at most `max_delay_seconds`."""

    attempts: int = 1
    delay_seconds: float = 30.0
    backoff: float = 2.0
    max_delay_seconds: float = 600.0
    steps: tuple[str, ...] = ("extract", "transform", "load")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based) before the next one."""
        return min(self.delay_seconds * self.backoff ** (attempt - 1), self.max_delay_seconds)

    def attempts_of(self, step: str) -> int:
        return self.attempts if step in self.steps else 1


@dataclass(frozen=True)
class RunConfig:
    """[run]: `catch_up` lets `run_pipeline --nightly` run every date missed since the last loaded one (off:
    only yesterday), at most `catch_up_max_dates` of them; a backfill transforms up to `dates_per_job` dates
    in one Spark application."""

    catch_up: bool = True
    catch_up_max_dates: int = 31
    dates_per_job: int = 366
    retries: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class QueueConfig:
    """[queue]: a run task's soft time limit (the run fails, recorded, its Spark job stopped) and the extract
    tasks' own; the hard limit that kills a task that ignores the soft one is `HARD_LIMIT_GRACE` later."""

    time_limit_seconds: float = 6 * 3600.0
    extract_time_limit_seconds: float = 3600.0

    HARD_LIMIT_GRACE = 120.0

    def limits(self, *, extract: bool = False) -> tuple[float, float]:
        """(hard, soft) seconds, as Celery's `time_limit` and `soft_time_limit` take them."""
        soft = self.extract_time_limit_seconds if extract else self.time_limit_seconds
        return soft + self.HARD_LIMIT_GRACE, soft


@dataclass(frozen=True)
class TriggerConfig:
    """[trigger]: the sensor task asks the pipeline's sources every `every_seconds` whether data newer than
    their saved state exists, and enqueues a run when one has (etlcore/services/trigger.py)."""

    enabled: bool = False
    every_seconds: float = 300.0


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    description: str
    timezone: ZoneInfo
    staging_root: Path
    spark: SparkConfig
    database: str
    datasets: Mapping[str, DatasetConfig]
    source_file: Path
    extract_workers: int = DEFAULT_EXTRACT_WORKERS  # sources extracted at once
    engine: str = SPARK_ENGINE  # what runs the transform: spark, dask or auto (etlcore/engines.py)
    dask: DaskConfig = field(default_factory=DaskConfig)
    run: RunConfig = field(default_factory=RunConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    trigger: TriggerConfig = field(default_factory=TriggerConfig)

    def window(self, business_date: date) -> ExtractWindow:
        """The business date as a [midnight, next midnight) range in the pipeline's time zone."""
        start = datetime.combine(business_date, time.min, tzinfo=self.timezone)
        end = datetime.combine(business_date + timedelta(days=1), time.min, tzinfo=self.timezone)
        return ExtractWindow(business_date=business_date, start=start, end=end)


def pipeline_names() -> list[str]:
    return sorted(_pipeline_files())


def pipeline_name_check(name: str) -> None:
    """A pipeline name as given (`--pipeline`), before it is looked up, recorded or made a path."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigurationError(f"pipeline name {_shown(name)} is not valid: {NAME_WORDS}")


def pipeline_load(name: str) -> PipelineConfig:
    pipeline_name_check(name)
    files = _pipeline_files()
    if name not in files:
        known = ", ".join(sorted(files)) or "none"
        raise ConfigurationError(f"unknown pipeline {name!r} (known: {known})")
    config = pipeline_parse(files[name])
    if config.name != name:
        raise ConfigurationError(f"{files[name]}: `name` is {config.name!r} but the file is named {name!r}")
    secret_names_register(config_secret_names(config))  # masked in every log event from now on
    return config


def config_secret_names(config: PipelineConfig) -> set[str]:
    """The variables a pipeline reads secrets from: its keys' and every source option named `*_env`."""
    names = {config.spark.pseudonym_key_env, config.spark.pii_keys_env, config.spark.erasure_key_env}

    def walk(value: Any, key: str = "") -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v, key)
        elif isinstance(value, str) and key.endswith("_env"):
            names.add(value)

    for dataset in config.datasets.values():
        walk(dataset.source)
    return names


def pipeline_parse(path: Path, *, environ: Mapping[str, str] | None = None) -> PipelineConfig:
    """Read and validate one pipeline file; every error names the file and the offending key."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"{path}: cannot read pipeline file: {exc}") from exc
    doc = _substitute_env(raw, pipeline_environ(os.environ if environ is None else environ), path)
    where = str(path)
    _schema_check(doc, PIPELINE, where)

    name = _required_str(doc, "name", where)
    _name_check("name", name, where)
    tz_name = doc.get("timezone", "UTC")
    try:
        timezone = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(f"{where}: timezone {tz_name!r} is not a known IANA zone") from exc

    spark_doc = doc.get("spark", {})
    spark = SparkConfig(
        job=_required_str(spark_doc, "job", f"{where} [spark]"),
        master=spark_doc.get("master") or settings.ETL_SPARK_MASTER,
        conf={str(k): str(v) for k, v in spark_doc.get("conf", {}).items()},
        pseudonym_key_env=spark_doc.get("pseudonym_key_env", "ETL_PSEUDONYM_KEY"),
        pii_keys_env=spark_doc.get("pii_keys_env", "ETL_PII_KEYS"),
        erasure_key_env=spark_doc.get("erasure_key_env", "ETL_ERASURE_KEY"),
        reporting_currency=spark_doc.get("reporting_currency", "EUR"),
        timeout_seconds=spark_doc.get("timeout_seconds"),
        options=_table(spark_doc.get("options", {}), f"{where} [spark.options]"),
        env=_env_names(spark_doc.get("env", []), f"{where} [spark] env"),
    )
    _spark_options_check(spark, where)
    engine = doc.get("engine", SPARK_ENGINE)
    dask = _parse_dask(doc.get("dask", {}), spark.job, engine, where)

    database = doc.get("warehouse", {}).get("database", "default")
    if database not in settings.DATABASES:
        raise ConfigurationError(
            f"{where} [warehouse]: database alias {database!r} is not in settings.DATABASES"
        )

    datasets_doc = doc.get("datasets")
    if not isinstance(datasets_doc, dict) or not datasets_doc:
        raise ConfigurationError(f"{where}: at least one [datasets.<name>] table is required")
    for ds_name in datasets_doc:
        _name_check("dataset name", ds_name, f"{where} [datasets]")
    datasets = {
        ds_name: _parse_dataset(ds_name, ds_doc, f"{where} [datasets.{ds_name}]", file=where)
        for ds_name, ds_doc in datasets_doc.items()
    }
    _check_references(datasets, where)
    _encrypted_identity_check(spark, datasets, where)

    staging_root = Path(doc.get("staging_root") or settings.ETL_STAGING_ROOT)
    workers = doc.get("extract_workers", settings.ETL_EXTRACT_WORKERS)
    try:
        extract_workers = int(workers)
    except (TypeError, ValueError):
        extract_workers = 0
    if isinstance(workers, bool) or extract_workers < 1:
        raise ConfigurationError(f"{where}: extract_workers must be a positive whole number, got {workers!r}")
    return PipelineConfig(
        name=name,
        description=doc.get("description", ""),
        timezone=timezone,
        staging_root=_absolute(staging_root),
        spark=spark,
        database=database,
        datasets=datasets,
        source_file=path,
        extract_workers=extract_workers,
        engine=engine,
        dask=dask,
        run=_parse_run(doc.get("run", {}), f"{where} [run]"),
        queue=_parse_queue(doc.get("queue", {}), f"{where} [queue]"),
        trigger=_parse_trigger(doc.get("trigger", {}), f"{where} [trigger]"),
    )


def _parse_dask(doc: Mapping[str, Any], job: str, engine: str, file: str) -> DaskConfig:
    """[dask], and the Dask implementation `engine` needs: a job without one runs on Spark only."""
    where = f"{file} [dask]"
    contract = CONTRACTS.get(job)
    dask_job = contract.dask_job if contract else None
    if engine != SPARK_ENGINE and dask_job is None:
        raise ConfigurationError(
            f'{file}: engine "{engine}" needs the Dask implementation of [spark] job {job!r}, and it has '
            'none (its contract in spark_jobs/contract.py declares no dask_job): use engine = "spark"'
        )
    address = doc.get("scheduler_address") or None  # "${VAR:-}" unset: the job's own threaded scheduler
    if address is not None and not _SCHEDULER_ADDRESS.match(address):
        raise ConfigurationError(
            f"{where}: scheduler_address {_shown(address)} is not a scheduler address: write "
            "tcp://host:port (or tls://host:port), as `dask scheduler` prints it"
        )
    max_rows = doc.get("max_rows", DASK_MAX_ROWS_DEFAULT)
    if max_rows < 0:
        raise ConfigurationError(f"{where}: max_rows must be 0 or more, got {max_rows!r}")
    timeout = doc.get("timeout_seconds")
    if timeout is not None and timeout <= 0:
        raise ConfigurationError(f"{where}: timeout_seconds must be more than 0, got {timeout!r}")
    return DaskConfig(
        job=dask_job,
        scheduler_address=address,
        max_rows=max_rows,
        timeout_seconds=float(timeout) if timeout is not None else None,
    )


def _parse_queue(doc: Mapping[str, Any], where: str) -> QueueConfig:
    defaults = QueueConfig()
    for key in ("time_limit_seconds", "extract_time_limit_seconds"):
        if key in doc and doc[key] <= 0:
            raise ConfigurationError(f"{where}: {key} must be more than 0, got {doc[key]!r}")
    return QueueConfig(
        time_limit_seconds=float(doc.get("time_limit_seconds", defaults.time_limit_seconds)),
        extract_time_limit_seconds=float(
            doc.get("extract_time_limit_seconds", defaults.extract_time_limit_seconds)
        ),
    )


TRIGGER_MIN_SECONDS = 10.0


def _parse_trigger(doc: Mapping[str, Any], where: str) -> TriggerConfig:
    defaults = TriggerConfig()
    every = doc.get("every_seconds", defaults.every_seconds)
    if every < TRIGGER_MIN_SECONDS:
        raise ConfigurationError(
            f"{where}: every_seconds must be {TRIGGER_MIN_SECONDS:g} or more (each check asks every source), "
            f"got {every!r}"
        )
    return TriggerConfig(enabled=doc.get("enabled", defaults.enabled), every_seconds=float(every))


def _parse_run(doc: Mapping[str, Any], where: str) -> RunConfig:
    defaults, retry_defaults = RunConfig(), RetryPolicy()
    for key in ("catch_up_max_dates", "dates_per_job"):
        if key in doc and doc[key] < 1:
            raise ConfigurationError(f"{where}: {key} must be 1 or more, got {doc[key]!r}")
    retries = doc.get("retries", {})
    where_retries = f"{where.removesuffix(']')}.retries]"
    if retries.get("attempts", 1) < 1:
        raise ConfigurationError(f"{where_retries}: attempts must be 1 or more (1: no retry)")
    for key in ("delay_seconds", "max_delay_seconds"):
        if retries.get(key, 0) < 0:
            raise ConfigurationError(f"{where_retries}: {key} must be 0 or more, got {retries[key]!r}")
    if retries.get("backoff", 1) < 1:
        raise ConfigurationError(f"{where_retries}: backoff must be 1 or more, got {retries['backoff']!r}")
    steps = tuple(retries.get("steps", retry_defaults.steps))
    unknown = [s for s in steps if s not in retry_defaults.steps]
    if unknown:
        raise ConfigurationError(
            f"{where_retries}: steps: {unknown[0]!r} is not one of {', '.join(retry_defaults.steps)}"
        )
    policy = RetryPolicy(
        attempts=retries.get("attempts", retry_defaults.attempts),
        delay_seconds=float(retries.get("delay_seconds", retry_defaults.delay_seconds)),
        backoff=float(retries.get("backoff", retry_defaults.backoff)),
        max_delay_seconds=float(retries.get("max_delay_seconds", retry_defaults.max_delay_seconds)),
        steps=steps,
    )
    return RunConfig(
        catch_up=doc.get("catch_up", defaults.catch_up),
        catch_up_max_dates=doc.get("catch_up_max_dates", defaults.catch_up_max_dates),
        dates_per_job=doc.get("dates_per_job", defaults.dates_per_job),
        retries=policy,
    )


def spark_options_schema(job: str) -> Table | None:
    """The declaration of a job's ``[spark.options]``, from its contract (spark_jobs/contract.py); None for
    a job without one (etlcore.preflight reports that)."""
    contract = CONTRACTS.get(job)
    if contract is None:
        return None

    def spec(option: JobOption) -> Any:
        table = Table(dict.fromkeys(option.keys, ANY), f"a table ({', '.join(option.keys)})")
        if option.shape == "table":
            return table
        if option.shape == "tables":
            return ListOf(table, f"an array of tables ({', '.join(option.keys)})")
        return TEXT

    return Table({option.name: spec(option) for option in contract.options})


def _spark_options_check(spark: SparkConfig, file: str) -> None:
    """[spark.options] against the job's declaration, in the shape of every other key error."""
    schema = spark_options_schema(spark.job)
    if schema is None:
        return
    try:
        table_check(spark.options, schema, path=("spark", "options"))
    except OptionError as exc:
        raise ConfigurationError(f"{_located(file, exc.path)}: {exc.problem}") from None
    for option in CONTRACTS[spark.job].options:
        value = spark.options.get(option.name)
        if option.values and value is not None and value not in option.values:
            raise ConfigurationError(
                f"{_located(file, ('spark', 'options'))}: {option.name} {_shown(value)} is not one of "
                f"{', '.join(option.values)}"
            )


def _parse_columns(columns_doc: Mapping[str, Any], where: str) -> list[ColumnSpec]:
    columns = []
    for col_name, col in columns_doc.items():
        col_type = col.get("type", "string")
        if not COLUMN_TYPES.match(col_type):
            raise ConfigurationError(
                f"{where} column {col_name!r}: unknown type {col_type!r} "
                "(string, int, long, boolean, date, timestamp, decimal(p,s))"
            )
        columns.append(
            ColumnSpec(
                name=col_name,
                source=str(col.get("from", col_name)),
                type=col_type,
                required=bool(col.get("required", False)),
                pii=col.get("pii") is True,
                encrypt=col.get("pii") == PII_ENCRYPT,
            )
        )
    return columns


def _parse_dataset(name: str, doc: Mapping[str, Any], where: str, *, file: str) -> DatasetConfig:
    source = doc.get("source")
    if not isinstance(source, dict) or "kind" not in source:
        raise ConfigurationError(f"{where}: a [source] table with a `kind` is required")
    columns_doc = doc.get("columns")
    if not isinstance(columns_doc, dict) or not columns_doc:
        raise ConfigurationError(f"{where}: a [columns] table declaring the dataset's columns is required")
    columns = _parse_columns(columns_doc, where)
    pii = {c.name for c in columns if c.pii}
    encrypted = {c.name for c in columns if c.encrypt}
    column_names = {c.name for c in columns}
    key = tuple(doc.get("key", ()))
    unknown = [k for k in key if k not in column_names]
    if unknown:
        raise ConfigurationError(f"{where}: key column(s) {unknown} are not declared in [columns]")
    version_column = doc.get("version_column")
    if version_column is not None and version_column not in column_names:
        raise ConfigurationError(f"{where}: version_column {version_column!r} is not declared in [columns]")

    business_date_column = doc.get("business_date_column")
    if business_date_column is not None and types_of(columns).get(business_date_column) not in (
        "timestamp",
        "date",
    ):
        raise ConfigurationError(
            f"{where}: business_date_column {business_date_column!r} must be a declared timestamp or "
            "date column"
        )

    drift = doc.get("drift", "warn")
    if drift not in DRIFT_POLICIES:
        raise ConfigurationError(f"{where}: drift {drift!r} is not one of {', '.join(DRIFT_POLICIES)}")

    ignore_fields = tuple(doc.get("ignore_fields", ()))  # its type: the DATASET declaration
    if not all(ignore_fields):
        raise ConfigurationError(f"{where}: ignore_fields holds an empty field path")

    source_where = ("datasets", name, "source")
    if source["kind"] not in connector_kinds():
        raise ConfigurationError(
            f"{_located(file, source_where)}: unknown kind {source['kind']!r} "
            f"(expected one of: {', '.join(sorted(connector_kinds()))})"
        )
    try:
        connector_kinds()[source["kind"]].check_options(name=name, options=source)
    except OptionError as exc:
        raise ConfigurationError(f"{_located(file, (*source_where, *exc.path))}: {exc.problem}") from None
    except ConfigurationError as exc:
        # The connector names the source; here the table path does.
        problem = str(exc).removeprefix(f"source {name!r}: ")
        raise ConfigurationError(f"{_located(file, source_where)}: {problem}") from None
    if source["kind"] == "file":
        source = {"base_dir": str(settings.BASE_DIR), **source}  # relative paths are from the project
    types = {c.name: c.type for c in columns}
    rules_doc = doc.get("rules", [])
    if not isinstance(rules_doc, list):
        raise ConfigurationError(f"{where}: `rules` must be an array of tables ([[datasets.{name}.rules]])")
    rules = tuple(
        _parse_rule(rule_doc, types, f"{where} rule {i + 1}") for i, rule_doc in enumerate(rules_doc)
    )
    codes = [r.code for r in rules]
    repeated = sorted({c for c in codes if codes.count(c) > 1})
    if repeated:
        raise ConfigurationError(f"{where}: rule code(s) {repeated} are declared more than once")
    _personal_rules_check(rules, pii, types, where)
    _personal_rules_check(rules, encrypted, types, where, safe=_ENCRYPTED_SAFE_CHECKS, staged_as="a token")
    return DatasetConfig(
        name=name,
        source=source,
        columns=tuple(columns),
        explode=doc.get("explode"),
        key=key,
        version_column=version_column,
        business_date_column=business_date_column,
        drift=drift,
        ignore_fields=tuple(ignore_fields),
        rules=rules,
        pii=frozenset(pii),
        encrypted=frozenset(encrypted),
        guards=_parse_guards(doc.get("guards", {}), f"{where.removesuffix(']')}.guards]"),
    )


def types_of(columns: Sequence[ColumnSpec]) -> dict[str, str]:
    return {c.name: c.type for c in columns}


def _parse_guards(doc: Any, where: str) -> tuple[GuardConfig, ...]:
    """[datasets.<name>.guards]: `min_rows = 1`, `max_drop = 0.5`, ..., `on_breach = "fail"` for all of
    them; one guard may take its own action: `max_drop = { value = 0.8, on_breach = "warn" }`."""
    default = _guard_action(doc.get("on_breach", "fail"), f"{where} on_breach")
    guards = []
    for name in GUARD_NAMES:
        if name not in doc:
            continue
        value, action = doc[name], default
        if isinstance(value, dict):
            if "value" not in value:
                raise ConfigurationError(f"{where} {name}: the table needs a `value`")
            action = _guard_action(value.get("on_breach", default), f"{where} {name}.on_breach")
            value = value["value"]
        bound = _guard_bound(name, value, f"{where} {name}")
        guards.append(GuardConfig(name=name, bound=bound, on_breach=action))
    return tuple(guards)


def _guard_bound(name: str, value: Any, where: str) -> Decimal:
    if name == "min_rows":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigurationError(f"{where}: must be a whole number of rows, 0 or more, got {value!r}")
        return Decimal(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{where}: must be a share between 0 and 1 (0.05 = 5 %), got {value!r}")
    bound = Decimal(str(value))  # the number as written: 0.3 stays exactly 3/10
    if not bound.is_finite() or not 0 <= bound <= 1:
        raise ConfigurationError(f"{where}: must be a share between 0 and 1 (0.05 = 5 %), got {value!r}")
    return bound


def _guard_action(value: Any, where: str) -> str:
    if value not in GUARD_ACTIONS:
        raise ConfigurationError(f"{where}: {value!r} is not one of {', '.join(GUARD_ACTIONS)}")
    return value


# Checks that hold on a pseudonym as on the clear value: equal values have equal pseudonyms.
_PSEUDONYM_SAFE_CHECKS = ("required", "unique", "reference")
# A Fernet token differs at every encryption, even of the same value: only presence can be checked.
_ENCRYPTED_SAFE_CHECKS = ("required",)


def _personal_rules_check(
    rules: Sequence[RuleConfig],
    pii: set[str],
    types: Mapping[str, str],
    where: str,
    *,
    safe: Sequence[str] = _PSEUDONYM_SAFE_CHECKS,
    staged_as: str = "its pseudonym",
) -> None:
    """A personal column is staged as its pseudonym (or a token): a rule may test its presence or equality
    (presence alone for a token), not text."""
    for rule in rules:
        columns = {rule.column, *rule.columns} & pii
        if columns and rule.check not in safe:
            raise ConfigurationError(
                f"{where}: rule {rule.code!r} ({rule.check}) reads personal column {sorted(columns)[0]!r}, "
                f"which is staged as {staged_as}: only {', '.join(safe)} can check it"
            )
        when = rule.params.get("when")
        read = condition_value_columns(condition_parse(when, types)) & pii if when else set()
        if read:
            raise ConfigurationError(
                f"{where}: rule {rule.code!r}: its `when` compares personal column {sorted(read)[0]!r}, "
                f"which is staged as {staged_as} (only `is null` / `is not null` can test it)"
            )


def _encrypted_identity_check(spark: SparkConfig, datasets: Mapping[str, DatasetConfig], where: str) -> None:
    """A Fernet token differs at every extraction of the same value: it cannot identify a row (key,
    version) nor a customer (a job's column option such as customer_key_from)."""
    for name, dataset in datasets.items():
        used = [c for c in (*dataset.key, dataset.version_column) if c in dataset.encrypted]
        if used:
            raise ConfigurationError(
                f'{where} [datasets.{name}]: column {used[0]!r} is encrypted (pii = "encrypt"), a new token '
                "at every extraction: it cannot be the key or the version_column"
            )
    contract = CONTRACTS.get(spark.job)
    for job_input in contract.inputs if contract else ():
        dataset = datasets.get(job_input.name)
        for option, default in job_input.column_options:
            column = spark.options.get(option, default)
            if dataset is not None and column in dataset.encrypted:
                raise ConfigurationError(
                    f'{where} [spark.options]: {option} {column!r} is encrypted (pii = "encrypt"), a new '
                    "token at every extraction: name a clear or pseudonymised (pii = true) column"
                )


def _env_names(names: Sequence[str], where: str) -> tuple[str, ...]:
    """`[spark] env`: the variables the job needs besides the pseudonym key (its child's allow-list)."""
    bad = [name for name in names if not _ENV_NAME.match(name)]
    if bad:
        raise ConfigurationError(f"{where}: {bad[0]!r} is not an environment variable name")
    return tuple(names)


def _schema_check(doc: Mapping[str, Any], schema: Table, file: str) -> None:
    """Every key and type of the document against its declaration, as one line naming the file, the
    table and the key."""
    try:
        table_check(doc, schema)
    except OptionError as exc:
        raise ConfigurationError(f"{_located(file, exc.path)}: {exc.problem}") from None


def _located(file: str, table: tuple[str, ...]) -> str:
    """`<file> [datasets.orders.columns.quantity]`; the file alone for a top-level key."""
    return f"{file} [{'.'.join(table)}]" if table else file


def _name_check(what: str, name: str, where: str) -> None:
    if not NAME.match(name):
        raise ConfigurationError(f"{where}: {what} {_shown(name)} is not valid: {NAME_WORDS}")


def _shown(value: Any) -> str:
    """A value for a one-line message: a hostile 500-character name is cut, with its length."""
    text = repr(value)
    return (
        text
        if len(text) <= 70
        else f"{text[:60]}... ({len(value) if isinstance(value, str) else '?'} characters)"
    )


def _parse_rule(doc: Any, types: Mapping[str, str], where: str) -> RuleConfig:
    """Validate one [[datasets.<name>.rules]] table; errors name the file, dataset and rule.

    What each key means is declared once in spark_jobs.rule_spec (shared with the job engines)."""
    if not isinstance(doc, dict):
        raise ConfigurationError(f"{where}: expected a table {{ code = ..., check = ..., ... }}")
    code = doc.get("code")
    if not isinstance(code, str) or not _RULE_CODE.match(code):
        raise ConfigurationError(f"{where}: `code` must be lower_snake_case text (a-z, 0-9, _), got {code!r}")
    where = f"{where} ({code})"
    check = doc.get("check")
    if check not in RULE_CHECKS:
        raise ConfigurationError(f"{where}: check {check!r} is not one of {', '.join(RULE_CHECKS)}")
    severity = doc.get("severity", "reject")
    if severity not in RULE_SEVERITIES:
        raise ConfigurationError(f"{where}: severity {severity!r} is not one of {', '.join(RULE_SEVERITIES)}")
    message = doc.get("message", "")
    if not isinstance(message, str):
        raise ConfigurationError(f"{where}: `message` must be text")
    unknown = sorted(set(doc) - {*RULE_COMMON_KEYS, *RULE_CHECKS[check]})
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key(s) {unknown} for check {check!r} (takes {', '.join(RULE_CHECKS[check])})"
        )
    params: dict[str, Any] = {}
    if "when" in doc:
        try:
            condition_parse(doc["when"], types)
        except ValueError as exc:
            raise ConfigurationError(f"{where}: when {doc['when']!r}: {exc}") from None
        params["when"] = doc["when"]

    if check == "unique":
        columns = doc.get("columns")
        if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
            raise ConfigurationError(f"{where}: `columns` must be a non-empty list of column names")
        undeclared = [c for c in columns if c not in types]
        if undeclared:
            raise ConfigurationError(f"{where}: column(s) {undeclared} are not declared in [columns]")
        return RuleConfig(
            code=code, check=check, severity=severity, columns=tuple(columns), params=params, message=message
        )

    column = doc.get("column")
    if not isinstance(column, str) or column not in types:
        raise ConfigurationError(
            f"{where}: `column` must name a column declared in [columns], got {column!r}"
        )
    params |= _column_rule_params(doc, check, column, types[column], where)
    return RuleConfig(
        code=code, check=check, severity=severity, column=column, params=params, message=message
    )


def _column_rule_params(
    doc: Mapping[str, Any], check: str, column: str, col_type: str, where: str
) -> dict[str, Any]:
    """The check's own keys of a one-column rule, validated against the column's declared type."""
    params: dict[str, Any] = {}
    if check == "range":
        if not _RANGE_TYPES.match(col_type):
            raise ConfigurationError(
                f"{where}: range needs a number, decimal, date or timestamp column; {column} is {col_type}"
            )
        if doc.get("min") is None and doc.get("max") is None:
            raise ConfigurationError(f"{where}: range needs `min`, `max` or both")
        for bound in ("min", "max"):
            if doc.get(bound) is not None:
                params[bound] = _rule_value(doc[bound], col_type, f"{where} {bound}")
        for flag in ("exclusive_min", "exclusive_max"):
            if flag in doc:
                params[flag] = _rule_flag(doc, flag, where)
        if "min" in params and "max" in params:
            low, high = (_comparable(params[b], col_type) for b in ("min", "max"))
            if low > high:
                raise ConfigurationError(f"{where}: min {params['min']} is greater than max {params['max']}")
    elif check in ("allowed", "not_allowed"):
        values = doc.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigurationError(f"{where}: `values` must be a non-empty list")
        params["values"] = [_rule_value(v, col_type, f"{where} values") for v in values]
        if "ignore_case" in doc:
            if column_kind(col_type) != "string":
                raise ConfigurationError(f"{where}: ignore_case needs a text column; {column} is {col_type}")
            params["ignore_case"] = _rule_flag(doc, "ignore_case", where)
    elif check == "pattern":
        pattern = doc.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise ConfigurationError(f"{where}: `pattern` must be a non-empty regular expression")
        try:
            re.compile(pattern)  # the job uses Java's syntax: close enough to catch typos here
        except re.error as exc:
            raise ConfigurationError(
                f"{where}: pattern {pattern!r} is not a valid regular expression: {exc}"
            ) from None
        params["pattern"] = pattern
        if "match" in doc:
            if doc["match"] not in PATTERN_MATCHES:
                raise ConfigurationError(
                    f"{where}: match {doc['match']!r} is not one of {', '.join(PATTERN_MATCHES)}"
                )
            params["match"] = doc["match"]
        if "negate" in doc:
            params["negate"] = _rule_flag(doc, "negate", where)
    elif check == "reference":
        for name in ("dataset", "key"):
            if not isinstance(doc.get(name), str) or not doc[name]:
                raise ConfigurationError(f"{where}: reference needs `{name}`")
            params[name] = doc[name]
    return params


def _rule_flag(doc: Mapping[str, Any], flag: str, where: str) -> bool:
    if not isinstance(doc[flag], bool):
        raise ConfigurationError(f"{where}: {flag} must be true or false")
    return doc[flag]


def _rule_value(value: Any, col_type: str, where: str) -> Any:
    """A rule's bound or listed value, checked against the column's type, as the text the job casts."""
    try:
        return value_text(value, col_type)
    except ValueError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None


def _comparable(text: str, col_type: str) -> Any:
    if col_type.startswith("date"):
        return date.fromisoformat(text)
    if col_type == "timestamp":
        moment = datetime.fromisoformat(text)
        return moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo("UTC"))
    return Decimal(text)


def _check_references(datasets: Mapping[str, DatasetConfig], where: str) -> None:
    """A reference rule names another dataset of the pipeline and a column it declares."""
    for dataset in datasets.values():
        for rule in dataset.rules:
            if rule.check != "reference":
                continue
            target, key = rule.params["dataset"], rule.params["key"]
            rule_where = f"{where} [datasets.{dataset.name}] rule {rule.code!r}"
            if target == dataset.name or target not in datasets:
                others = ", ".join(sorted(set(datasets) - {dataset.name})) or "none"
                raise ConfigurationError(
                    f"{rule_where}: dataset {target!r} is not another dataset of the pipeline ({others})"
                )
            if key not in {c.name for c in datasets[target].columns}:
                raise ConfigurationError(f"{rule_where}: key {key!r} is not a column of dataset {target!r}")


def _pipeline_files() -> dict[str, Path]:
    """Pipeline name -> file, from every *.toml under ETL_PIPELINE_PATHS (file name = pipeline name)."""
    found: dict[str, Path] = {}
    for entry in settings.ETL_PIPELINE_PATHS:
        entry = Path(entry)
        candidates = sorted(entry.glob("*.toml")) if entry.is_dir() else [entry] if entry.exists() else []
        for path in candidates:
            found.setdefault(path.stem, path)
    return found


def pipeline_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """What `${VAR}` in a pipeline file reads: `environ` over the values the settings derive, so
    `${ETL_DEMO_DIR}` follows ETL_VAR_DIR without the file repeating (and drifting from) its default."""
    derived = {
        "ETL_VAR_DIR": str(settings.VAR_DIR),
        "ETL_DEMO_DIR": str(settings.ETL_DEMO_DIR),
        "ETL_DEMO_API_URL": settings.ETL_DEMO_API_URL,
    }
    return {**derived, **{name: value for name, value in environ.items() if value}}


def _substitute_env(value: Any, environ: Mapping[str, str], path: Path) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string of the document."""
    if isinstance(value, dict):
        return {k: _substitute_env(v, environ, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_env(v, environ, path) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        var, default = match.group(1), match.group(2)
        if environ.get(var):
            return environ[var]
        if default is not None:
            return default
        raise ConfigurationError(f"{path}: environment variable {var} is not set and has no default")

    return _ENV_REF.sub(replace, value)


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigurationError(f"{where}: expected a table")
    return value


def _required_str(doc: Mapping[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{where}: `{key}` is required and must be a non-empty string")
    return value


def _absolute(path: Path) -> Path:
    return path if path.is_absolute() else Path(settings.BASE_DIR) / path
