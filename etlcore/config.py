"""Pipeline definitions: one TOML file per pipeline, validated into typed, immutable objects."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings

from connectors.base import ExtractWindow
from connectors.records import ColumnSpec

from .errors import ConfigurationError

COLUMN_TYPES = re.compile(r"^(string|int|long|boolean|date|timestamp|decimal\((\d+),\s*(\d+)\))$")
DRIFT_POLICIES = ("warn", "fail")
DEFAULT_EXTRACT_WORKERS = 4
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    source: Mapping[str, Any]
    columns: tuple[ColumnSpec, ...]
    explode: str | None = None
    key: tuple[str, ...] = ()
    version_column: str | None = None
    drift: str = "warn"  # what a source delivering other fields than declared does: warn (and record) or fail

    def spark_columns(self) -> dict[str, dict[str, Any]]:
        return {c.name: {"type": c.type, "required": c.required} for c in self.columns}


@dataclass(frozen=True)
class SparkConfig:
    job: str
    master: str
    conf: Mapping[str, str] = field(default_factory=dict)
    pseudonym_key_env: str = "ETL_PSEUDONYM_KEY"
    reporting_currency: str = "EUR"
    timeout_seconds: float | None = None


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

    def window(self, business_date: date) -> ExtractWindow:
        """The business date as a [midnight, next midnight) range in the pipeline's time zone."""
        start = datetime.combine(business_date, time.min, tzinfo=self.timezone)
        end = datetime.combine(business_date + timedelta(days=1), time.min, tzinfo=self.timezone)
        return ExtractWindow(business_date=business_date, start=start, end=end)


def pipeline_names() -> list[str]:
    return sorted(_pipeline_files())


def pipeline_load(name: str) -> PipelineConfig:
    files = _pipeline_files()
    if name not in files:
        known = ", ".join(sorted(files)) or "none"
        raise ConfigurationError(f"unknown pipeline {name!r} (known: {known})")
    config = pipeline_parse(files[name])
    if config.name != name:
        raise ConfigurationError(f"{files[name]}: `name` is {config.name!r} but the file is named {name!r}")
    return config


def pipeline_parse(path: Path, *, environ: Mapping[str, str] | None = None) -> PipelineConfig:
    """Read and validate one pipeline file; every error names the file and the offending key."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"{path}: cannot read pipeline file: {exc}") from exc
    doc = _substitute_env(raw, environ if environ is not None else os.environ, path)
    where = str(path)

    name = _required_str(doc, "name", where)
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
        reporting_currency=spark_doc.get("reporting_currency", "EUR"),
        timeout_seconds=spark_doc.get("timeout_seconds"),
    )

    database = doc.get("warehouse", {}).get("database", "default")
    if database not in settings.DATABASES:
        raise ConfigurationError(
            f"{where} [warehouse]: database alias {database!r} is not in settings.DATABASES"
        )

    datasets_doc = doc.get("datasets")
    if not isinstance(datasets_doc, dict) or not datasets_doc:
        raise ConfigurationError(f"{where}: at least one [datasets.<name>] table is required")
    datasets = {
        ds_name: _parse_dataset(ds_name, ds_doc, f"{where} [datasets.{ds_name}]")
        for ds_name, ds_doc in datasets_doc.items()
    }

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
    )


def _parse_dataset(name: str, doc: Mapping[str, Any], where: str) -> DatasetConfig:
    source = doc.get("source")
    if not isinstance(source, dict) or "kind" not in source:
        raise ConfigurationError(f"{where}: a [source] table with a `kind` is required")
    columns_doc = doc.get("columns")
    if not isinstance(columns_doc, dict) or not columns_doc:
        raise ConfigurationError(f"{where}: a [columns] table declaring the dataset's columns is required")
    columns = []
    for col_name, col in columns_doc.items():
        col_where = f"{where} column {col_name!r}"
        if not isinstance(col, dict):
            raise ConfigurationError(f"{col_where}: expected a table like {{ from = ..., type = ... }}")
        col_type = col.get("type", "string")
        if not COLUMN_TYPES.match(col_type):
            raise ConfigurationError(
                f"{col_where}: unknown type {col_type!r} "
                "(string, int, long, boolean, date, timestamp, decimal(p,s))"
            )
        columns.append(
            ColumnSpec(
                name=col_name,
                source=str(col.get("from", col_name)),
                type=col_type,
                required=bool(col.get("required", False)),
            )
        )
    column_names = {c.name for c in columns}
    key = tuple(doc.get("key", ()))
    unknown = [k for k in key if k not in column_names]
    if unknown:
        raise ConfigurationError(f"{where}: key column(s) {unknown} are not declared in [columns]")
    version_column = doc.get("version_column")
    if version_column is not None and version_column not in column_names:
        raise ConfigurationError(f"{where}: version_column {version_column!r} is not declared in [columns]")

    drift = doc.get("drift", "warn")
    if drift not in DRIFT_POLICIES:
        raise ConfigurationError(f"{where}: drift {drift!r} is not one of {', '.join(DRIFT_POLICIES)}")

    if source["kind"] == "file":
        source = {"base_dir": str(settings.BASE_DIR), **source}  # relative paths are from the project
    from connectors import connector_kinds  # late: connectors import this package's errors

    if source["kind"] not in connector_kinds():
        raise ConfigurationError(
            f"{where} [source]: unknown kind {source['kind']!r} "
            f"(expected one of: {', '.join(sorted(connector_kinds()))})"
        )
    return DatasetConfig(
        name=name,
        source=source,
        columns=tuple(columns),
        explode=doc.get("explode"),
        key=key,
        version_column=version_column,
        drift=drift,
    )


def _pipeline_files() -> dict[str, Path]:
    """Pipeline name -> file, from every *.toml under ETL_PIPELINE_PATHS (file name = pipeline name)."""
    found: dict[str, Path] = {}
    for entry in settings.ETL_PIPELINE_PATHS:
        entry = Path(entry)
        candidates = sorted(entry.glob("*.toml")) if entry.is_dir() else [entry] if entry.exists() else []
        for path in candidates:
            found.setdefault(path.stem, path)
    return found


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


def _required_str(doc: Mapping[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{where}: `{key}` is required and must be a non-empty string")
    return value


def _absolute(path: Path) -> Path:
    return path if path.is_absolute() else Path(settings.BASE_DIR) / path
