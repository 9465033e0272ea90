"""One factory for the small pipeline files tests write: each test declares only the parts it needs.

    pipeline_write(tmp_path, datasets={"products": dataset("products.csv", sku={"required": True})})

gives a parseable `shop.toml` with the sales job; `database`, `staging`, `spark_conf`, `top` (extra
top-level keys), `tables` (more tables after the rest: `[run]`, `[queue]`...) and a dataset's `extra`
(rules, guards: TOML text appended after its columns) add the rest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def toml_value(value: Any) -> str:
    """A value as inline TOML: strings, booleans, numbers, lists and inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def _key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "")
    return key if bare.isascii() and bare.isalnum() else json.dumps(key, ensure_ascii=False)


def dataset(
    path: str | Path | None = None,
    *,
    key: list[str] | None = None,
    source: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    extra: str = "",
    **columns: dict[str, Any],
) -> dict[str, Any]:
    """One `[datasets.<name>]`: a file source at `path` (or any `source` table), its key (the first column's
    name unless given; `key=[]` for none), other dataset keys in `options` (explode, version_column...),
    its columns as keyword arguments, and `extra` TOML text after the columns."""
    if source is None:
        source = {"kind": "file", "path": str(path)}
    if key is None and columns:
        key = [next(iter(columns))]
    return {"key": key, "options": options or {}, "source": source, "columns": columns, "extra": extra}


def pipeline_toml(
    name: str = "shop",
    *,
    datasets: dict[str, dict[str, Any]],
    job: str = "spark_jobs.sales_daily",
    spark: dict[str, Any] | None = None,
    spark_conf: dict[str, str] | None = None,
    database: str | None = None,
    staging: str | Path | None = None,
    top: str = "",
    tables: str = "",
) -> str:
    """The text of a pipeline file (see the module docstring)."""
    lines = [top.rstrip("\n")] if top else []
    lines.append(f"name = {toml_value(name)}")
    if staging is not None:
        lines.append(f"staging_root = {toml_value(staging)}")
    lines += ["[spark]", f"job = {toml_value(job)}"]
    lines += [f"{_key(k)} = {toml_value(v)}" for k, v in (spark or {}).items()]
    if spark_conf:
        lines.append("[spark.conf]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in spark_conf.items()]
    if database is not None:
        lines += ["[warehouse]", f"database = {toml_value(database)}"]
    for name, declared in datasets.items():
        table = _key(name)  # quoted when it is not a bare key, so a hostile name reaches the parser as is
        lines.append(f"[datasets.{table}]")
        if declared["key"]:
            lines.append(f"key = {toml_value(declared['key'])}")
        lines += [f"{_key(k)} = {toml_value(v)}" for k, v in declared["options"].items()]
        lines.append(f"[datasets.{table}.source]")
        lines += [f"{_key(k)} = {toml_value(v)}" for k, v in declared["source"].items()]
        lines.append(f"[datasets.{table}.columns]")
        lines += [f"{_key(k)} = {toml_value(v)}" for k, v in declared["columns"].items()]
        if declared["extra"]:
            lines.append(declared["extra"].rstrip("\n"))
    if tables:
        lines.append(tables.rstrip("\n"))
    return "\n".join(lines) + "\n"


def pipeline_write(folder: Path, name: str = "shop", *, text: str | None = None, **parts: Any) -> Path:
    """Write `<folder>/<name>.toml` from `pipeline_toml(name, **parts)` (or `text`); return its path."""
    path = folder / f"{name}.toml"
    path.write_text(text if text is not None else pipeline_toml(name, **parts), encoding="utf-8")
    return path


def sales_datasets(data: str | Path) -> dict[str, dict[str, Any]]:
    """Products, stores and order lines from CSV files in `data`, declaring every column the sales job
    reads: a pipeline its preflight (etlcore/preflight.py) accepts."""
    return {
        "products": dataset(
            f"{data}/products_{{date:%Y%m%d}}.csv",
            sku={"from": "SKU", "required": True},
            name={"from": "Product Name"},
            category={},
            list_price={"type": "decimal(18,2)"},
        ),
        "stores": dataset(
            f"{data}/stores_{{date:%Y%m%d}}.csv",
            store_code={"required": True},
            name={},
            city={},
            region={},
            country={},
        ),
        "order_lines": dataset(
            f"{data}/lines_{{date:%Y%m%d}}.csv",
            key=["order_id", "line_number"],
            order_id={"required": True},
            line_number={"type": "int"},
            ordered_at={"type": "timestamp"},
            store_code={},
            customer_email={"pii": True},
            sku={},
            quantity={"type": "int"},
            unit_price={"type": "decimal(18,4)"},
            currency={},
        ),
    }
