"""Two engines' outputs of one job spec, compared row by row: what lets a second engine claim "the same job".

`job_outputs_differences(reference, candidate)` reads both `output_dir`s as the loader does (pyarrow, the
`part-*.parquet` files of each output), checks every file's schema against the contract's Arrow schema,
compares the rows of each output sorted by all columns, value for value (Decimals as Decimals, timestamps,
pseudonyms, quarantine messages and records), and compares the two `_result.json`. It returns one text per
difference, each naming the output and showing the first differing rows side by side;
`assert_same_job_outputs` fails with them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from spark_jobs import contract

# The columns that name a row of each output, to pair a differing row with its counterpart (the loader's
# keys; a quarantined record is named by its dataset and its staged text).
ROW_NAMES = {
    "sales_lines": ("order_id", "line_number"),
    "products": ("sku",),
    "stores": ("store_code",),
    "customers": ("customer_key",),
    "quarantine": ("dataset", "raw_record"),
}
RESULT_FILE = "_result.json"
SHOWN = 5  # differing rows shown per output


def output_rows(output_dir: Path, output: contract.Output) -> tuple[list[dict], list[str]]:
    """The output's rows as the loader reads them, and what is wrong with its files' schemas. Timestamps and
    dates are read as the integers stored (Micros, Days): exact, and whatever the year."""
    files = sorted((output_dir / output.name).glob("part-*.parquet"))
    if not files:
        return [], [f"{output.name}: no part-*.parquet file in {output_dir / output.name}"]
    expected = [(f.name, f.type) for f in contract.arrow_schema(output)]
    stored = {name: _STORED[kind] for name, kind in output.columns if kind in _STORED}
    problems, rows = [], []
    for path in files:
        table = pq.read_table(path)
        written = [(f.name, f.type) for f in table.schema]
        if written != expected:
            problems.append(
                f"{output.name}: {path.name} has schema {_fields(written)}, the contract {_fields(expected)}"
            )
            continue
        for name, (arrow_type, _) in stored.items():
            at = table.schema.get_field_index(name)
            table = table.set_column(at, name, table.column(at).cast(arrow_type))
        for row in table.to_pylist():
            for name, (_, wrap) in stored.items():
                row[name] = None if row[name] is None else wrap(row[name])
            rows.append(row)
    return rows, problems


@dataclass(frozen=True, order=True)
class Micros:
    """A timestamp as written, microseconds since 1970 UTC: exact, and whatever the year (Python's datetime
    stops at 9999, an engine may write more), shown as ISO text when a datetime can hold it."""

    value: int

    def __repr__(self) -> str:
        try:
            return (_EPOCH + timedelta(microseconds=self.value)).isoformat()
        except OverflowError:
            return f"{self.value} µs since 1970 UTC"


@dataclass(frozen=True, order=True)
class Days:
    """A date as written, days since 1970-01-01 (see Micros)."""

    value: int

    def __repr__(self) -> str:
        try:
            return (_EPOCH.date() + timedelta(days=self.value)).isoformat()
        except OverflowError:
            return f"{self.value} days since 1970-01-01"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STORED = {"timestamp": (pa.int64(), Micros), "date": (pa.int32(), Days)}


def _fields(fields: Sequence[tuple[str, Any]]) -> str:
    return "(" + ", ".join(f"{name} {kind}" for name, kind in fields) + ")"


def _sorted(rows: list[dict], columns: Sequence[str]) -> list[dict]:
    # By every column, nulls last (the values of a column share one type).
    return sorted(
        rows, key=lambda row: tuple((row[c] is None, row[c] if row[c] is not None else 0) for c in columns)
    )


def rows_differences(
    name: str, reference: list[dict], candidate: list[dict], columns: Sequence[str], labels: tuple[str, str]
) -> str | None:
    """The rows of one output that are not in both, paired by the output's row names, side by side."""
    left, right = labels
    count_ref = Counter(tuple(row[c] for c in columns) for row in reference)
    count_cand = Counter(tuple(row[c] for c in columns) for row in candidate)
    only_ref = _sorted(
        [dict(zip(columns, r, strict=True)) for r in (count_ref - count_cand).elements()], columns
    )
    only_cand = _sorted(
        [dict(zip(columns, r, strict=True)) for r in (count_cand - count_ref).elements()], columns
    )
    if not only_ref and not only_cand:
        return None
    names = ROW_NAMES.get(name, columns[:1])
    by_name: dict[tuple, list[dict]] = {}
    for row in only_cand:
        by_name.setdefault(tuple(row[c] for c in names), []).append(row)
    lines = [
        f"{name}: {len(only_ref)} of {len(reference)} {left} rows and {len(only_cand)} of {len(candidate)} "
        f"{right} rows are not in the other; first differing rows ({left} | {right}):"
    ]
    shown, unpaired = 0, []
    for row in only_ref:
        pair = by_name.get(tuple(row[c] for c in names))
        if not pair:
            unpaired.append(row)
            continue
        other = pair.pop(0)
        if shown < SHOWN:
            label = ", ".join(f"{c}={row[c]!r}" for c in names)
            lines.append(f"  row {label}:")
            lines += [f"    {c}: {row[c]!r} | {other[c]!r}" for c in columns if row[c] != other[c]]
        shown += 1
    rest = [row for rows in by_name.values() for row in rows]
    for label, rows in ((f"only in {left}", unpaired), (f"only in {right}", rest)):
        lines += [f"  {label}: {_row_text(row)}" for row in rows[:SHOWN]]
        if len(rows) > SHOWN:
            lines.append(f"  ... and {len(rows) - SHOWN} more only in {label.removeprefix('only in ')}")
    if shown > SHOWN:
        lines.append(f"  ... and {shown - SHOWN} more rows differing in some column")
    return "\n".join(lines)


def _row_text(row: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{c}={v!r}" for c, v in row.items()) + "}"


def result_differences(reference: Mapping, candidate: Mapping, labels: tuple[str, str]) -> str | None:
    """The `_result.json` entries (counts, rule failures, filtered, warnings, fingerprint) that differ."""
    left, right = _flat(reference), _flat(candidate)
    paths = sorted(set(left) | set(right))
    lines = [
        f"  {path}: {left.get(path, '<missing>')!r} | {right.get(path, '<missing>')!r}"
        for path in paths
        if left.get(path, "<missing>") != right.get(path, "<missing>")
    ]
    if not lines:
        return None
    return "\n".join([f"{RESULT_FILE} differs ({labels[0]} | {labels[1]}):", *lines])


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def job_outputs_differences(
    reference: Path,
    candidate: Path,
    *,
    labels: tuple[str, str] = ("spark", "dask"),
    job: contract.JobContract = contract.SALES_DAILY,
) -> list[str]:
    """Every difference between two output_dirs of the same spec: schemas, rows per output, _result.json."""
    problems: list[str] = []
    for output in job.outputs:
        rows = {}
        for label, folder in zip(labels, (reference, candidate), strict=True):
            rows[label], schema_problems = output_rows(folder, output)
            problems += [f"{label} {text}" for text in schema_problems]
        diff = rows_differences(output.name, rows[labels[0]], rows[labels[1]], output.column_names, labels)
        if diff:
            problems.append(diff)
    results = {
        label: folder / RESULT_FILE for label, folder in zip(labels, (reference, candidate), strict=True)
    }
    missing = [f"{label}: no {path}" for label, path in results.items() if not path.is_file()]
    if missing:
        return problems + missing
    diff = result_differences(*(json.loads(path.read_text()) for path in results.values()), labels)
    return problems + [diff] if diff else problems


def assert_same_job_outputs(reference: Path, candidate: Path, **kwargs: Any) -> None:
    problems = job_outputs_differences(reference, candidate, **kwargs)
    assert not problems, "\n".join(problems)
