"""What the sales job means, whatever engine runs it: its options, the checks of its job spec, the
implicit rules the warehouse's limits add, the reason codes and their columns, the row accounting it
must balance, and how it reports a failure.

Plain Python (no pyspark, no pandas), so the Spark job (:mod:`spark_jobs.sales_daily`) and the Dask job
(:mod:`spark_jobs.sales_daily_dask`) read one declaration; each engine writes only its primitives, and
tests/spark_jobs/test_engine_equivalence.py holds them to the same outputs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import glob
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import pyarrow.parquet as pq

from spark_jobs import contract
from spark_jobs.rule_spec import Rule, constraint_rules

JOB_NAME = "sales_daily"
# The outputs and their schemas are the loader's contract, declared in spark_jobs/contract.py; so are the
# inputs the job reads and its options.
CONTRACT = contract.SALES_DAILY
DATASETS = tuple(i.name for i in CONTRACT.inputs)
_COLUMNS = {o.name: o.column_names for o in CONTRACT.outputs}


# --- the job's options ([spark.options]) ---------------------------------------------------------------

PRODUCT = "product"
DERIVE_FROM_LINES = "order_lines"
# The order lines' column holding the e-mail as a Fernet token (`pii = "encrypt"`): the customer dimension's
# email_encrypted, passed through, never decrypted.
ENCRYPTED_EMAIL = "customer_email_encrypted"
# The option keys, and each table option's keys, are the job's contract (spark_jobs/contract.py): the
# pipeline file is checked against the same declaration when it is read.
_OPTION_KEYS = frozenset(o.name for o in CONTRACT.options)


def _keys(option: str) -> set[str]:
    return set(CONTRACT.option(option).keys)


# Text that already names its offset is an instant; only wall-clock text is placed in source_timezone.
_HAS_OFFSET = r"(Z|[+-]\d{2}(:?\d{2})?)$"


@dataclass(frozen=True)
class LineType:
    """Lines whose sku is in ``skus`` or matches ``pattern`` (a regular expression) are of ``type``."""

    type: str
    skus: tuple[str, ...] = ()
    pattern: str | None = None


@dataclass(frozen=True)
class RetailOptions:
    line_number_from: str = "column"  # "row": numbered within the order, in a deterministic order
    customer_key_from: str = "customer_email"
    currency: str | None = None  # currency of every line when the source has no currency column
    return_order_prefix: str | None = None  # e.g. "C": such orders are returns even if quantity says not
    line_types: tuple[LineType, ...] = ()
    products_from_lines: bool = False
    product_name_from: str = "product_name"
    stores_from_lines: bool = False
    store_country_from: str | None = None
    rates_dataset: str | None = None
    source_timezone: str | None = None

    @classmethod
    def from_spec(cls, options: Mapping[str, Any] | None) -> RetailOptions:
        """Validate the job options; every error names the key."""
        options = dict(options or {})
        unknown = sorted(set(options) - _OPTION_KEYS)
        if unknown:
            raise ValueError(f"unknown job option(s) {unknown} (known: {sorted(_OPTION_KEYS)})")
        line_number_from = options.get("line_number_from", "column")
        numbering = CONTRACT.option("line_number_from").values
        if line_number_from not in numbering:
            raise ValueError(f"line_number_from must be one of {numbering}, got {line_number_from!r}")
        returns = _table(options.get("return_when", {}), "return_when", _keys("return_when"))
        products = _table(options.get("products", {}), "products", _keys("products"))
        stores = _table(options.get("stores", {}), "stores", _keys("stores"))
        rates = _table(options.get("rates", {}), "rates", _keys("rates"))
        for name, table in (("products", products), ("stores", stores)):
            if table.get("derive_from", DERIVE_FROM_LINES) != DERIVE_FROM_LINES:
                raise ValueError(f"{name}.derive_from must be {DERIVE_FROM_LINES!r}")
        return cls(
            line_number_from=line_number_from,
            customer_key_from=str(options.get("customer_key_from", "customer_email")),
            currency=options.get("currency"),
            return_order_prefix=returns.get("order_id_prefix"),
            line_types=_line_types(options.get("line_types", [])),
            products_from_lines="derive_from" in products,
            product_name_from=str(products.get("name_from", "product_name")),
            stores_from_lines="derive_from" in stores,
            store_country_from=stores.get("country_from"),
            rates_dataset=rates.get("dataset"),
            source_timezone=options.get("source_timezone"),
        )


def _table(value: Any, name: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"job option {name} must be a table")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise ValueError(f"job option {name}: unknown key(s) {unknown} (known: {sorted(keys)})")
    return dict(value)


def _line_types(value: Any) -> tuple[LineType, ...]:
    if not isinstance(value, list):
        raise ValueError("job option line_types must be a list of { type, skus, pattern } tables")
    rules = []
    for i, item in enumerate(value):
        table = _table(item, f"line_types[{i}]", _keys("line_types"))
        kind, skus, pattern = table.get("type"), table.get("skus", []), table.get("pattern")
        if not isinstance(kind, str) or not kind or kind == PRODUCT:
            raise ValueError(f"line_types[{i}]: type must be a name other than {PRODUCT!r}")
        if not skus and not pattern:
            raise ValueError(f"line_types[{i}]: give skus or a pattern")
        if pattern is not None:
            re.compile(pattern)
        rules.append(LineType(kind, tuple(str(s) for s in skus), pattern))
    return tuple(rules)


# --- the job spec, the implicit rules, the accounting -------------------------------------------------------


# Columns each input must declare in the spec (beyond them, extra declared columns are only validated),
# declared on the contract; the options can relax them (CONTRACT.input_columns).
REQUIRED_INPUT_COLUMNS: dict[str, tuple[str, ...]] = {i.name: i.columns for i in CONTRACT.inputs}

# Which staged value explains a business-rule rejection, for the quarantine message (declared rules
# name their own column).
LINE_REASON_COLUMNS = {
    "unsupported_currency": "currency",
    "missing_rate": "currency",
    "amount_out_of_range": "unit_price",
}
# The order lines' column holding their business date, unless the spec's input names another
# (``business_date_column``): its date in the pipeline's time zone (spec ``timezone``).
BUSINESS_DATE_FROM = "ordered_at"
MISSING_BUSINESS_DATE = "missing_business_date"
# Column types whose values order a line's versions as a long (see with_source_version).
VERSION_TYPES = ("timestamp", "date", "int", "long")


class Fill(NamedTuple):
    """An output column that a staged column fills."""

    output: str
    column: str
    # The job replaces a null (a derived product without a name is named by its sku).
    null_ok: bool = False


# The output columns each staged column fills, declared once: the warehouse's limits on them (the spec's
# "constraints", read from the models) become implicit rules on the staged column, checked in the
# validation pass (quality.constraint_rules). input_fills() adds the columns derived dimensions use.
INPUT_FILLS: dict[str, dict[str, tuple[Fill, ...]]] = {
    "order_lines": {
        "order_id": (Fill("sales_lines", "order_id"),),
        "line_number": (Fill("sales_lines", "line_number"),),
        "ordered_at": (Fill("sales_lines", "ordered_at"),),
        "store_code": (Fill("sales_lines", "store_code"),),
        "sku": (Fill("sales_lines", "stock_code"), Fill("sales_lines", "sku")),
        "quantity": (Fill("sales_lines", "quantity"),),
        "unit_price": (Fill("sales_lines", "unit_price"),),
        "currency": (Fill("sales_lines", "currency"),),
        "customer_country": (Fill("customers", "country"),),
        ENCRYPTED_EMAIL: (Fill("customers", "email_encrypted"),),
        "original_order_id": (Fill("sales_lines", "original_order_id"),),
    },
    "products": {c: (Fill("products", c),) for c in _COLUMNS["products"]},
    "stores": {c: (Fill("stores", c),) for c in _COLUMNS["stores"]},
}
# Staged text the job changes before writing it: its length is counted as written (quality.LOADED_FORMS).
LOADED_FORMS = {"order_lines": {"currency": "upper"}}

# A line's product and store must be in the warehouse (the facts reference them): these reference rules
# apply unless the order_lines declare their own reference rule on that column (code and message).
LINE_REFERENCES: tuple[Rule, ...] = (
    {"code": "unknown_product", "check": "reference", "severity": "reject", "column": "sku",
     "dataset": "products", "key": "sku"},
    {"code": "unknown_store", "check": "reference", "severity": "reject", "column": "store_code",
     "dataset": "stores", "key": "store_code"},
)  # fmt: skip


def input_fills(dataset: str, options: RetailOptions) -> dict[str, tuple[Fill, ...]]:
    """:data:`INPUT_FILLS` of ``dataset``, plus the order-line columns of the dimensions derived from them."""
    fills = dict(INPUT_FILLS.get(dataset, {}))
    if dataset != "order_lines":
        return fills
    derived: list[tuple[str, Fill]] = []
    if options.products_from_lines:
        derived += [
            ("sku", Fill("products", "sku")),
            (options.product_name_from, Fill("products", "name", True)),
        ]
    if options.stores_from_lines:
        derived += [("store_code", Fill("stores", "store_code")), ("store_code", Fill("stores", "name"))]
        if options.store_country_from:
            derived.append((options.store_country_from, Fill("stores", "country")))
    for column, fill in derived:
        fills[column] = (*fills.get(column, ()), fill)
    return fills


def _limit(constraints: Mapping[str, Any], fill: Fill) -> dict[str, Any]:
    try:
        limit = dict(constraints[fill.output][fill.column])
    except KeyError:
        raise ValueError(f"job spec constraints say nothing of {fill.output}.{fill.column}") from None
    return (limit | {"nullable": True}) if fill.null_ok else limit


def implicit_rules(
    dataset: str, input_spec: Mapping[str, Any], constraints: Mapping[str, Any], options: RetailOptions
) -> list[Rule]:
    """The reject rules that keep a row the warehouse would refuse out of the outputs: the limits of the
    output columns each declared column fills (docs/configuration.md, "Implicit rules")."""
    columns = input_spec["columns"]
    limits = {
        column: [_limit(constraints, fill) for fill in fills]
        for column, fills in input_fills(dataset, options).items()
        if column in columns
    }
    rules = constraint_rules(columns, limits, LOADED_FORMS.get(dataset))
    if dataset == "order_lines":
        # Computed, so no row check: only the quarantine message's note (apply_line_rules rejects it, at
        # the output type, which _check_constraints holds to the model's).
        amount = _limit(constraints, Fill("sales_lines", "amount"))
        note = (
            f"the amount does not fit decimal({amount['max_digits']},{amount['decimal_places']}): "
            f"warehouse column {amount['column']}"
        )
        rules.append(
            {"code": "amount_out_of_range", "check": "computed", "severity": "reject",
             "column": LINE_REASON_COLUMNS["amount_out_of_range"], "message": note}
        )  # fmt: skip
    return rules


def inputs_with_implicit_rules(spec: Mapping[str, Any], options: RetailOptions) -> dict[str, dict[str, Any]]:
    """The spec's inputs, each with its :func:`implicit_rules` after the declared ones."""
    inputs = {}
    for name, input_spec in spec["inputs"].items():
        declared = list(input_spec.get("rules") or ())
        implicit = implicit_rules(name, input_spec, spec["constraints"], options)
        clash = sorted({r["code"] for r in declared} & {r["code"] for r in implicit})
        if clash:
            raise ValueError(f"input {name!r}: rule codes {clash} are the job's implicit rules")
        inputs[name] = {**input_spec, "rules": declared + implicit}
    return inputs


def line_reference_rules(rules: Sequence[Rule] | None = None) -> list[Rule]:
    """The order lines' declared reference rules, plus :data:`LINE_REFERENCES` for columns they omit."""
    declared = [r for r in rules or () if r["check"] == "reference"]
    covered = {r["column"] for r in declared}
    return declared + [r for r in LINE_REFERENCES if r["column"] not in covered]


def parquet_row_count(path: str) -> int:
    """Rows in the Parquet files Spark wrote under ``path``, from their footers (no Spark job).

    Counted from what is on disk because these numbers go into the partition manifest.
    """
    files = sorted(glob.glob(os.path.join(path, "*.parquet")))  # not _SUCCESS, not hidden .crc files
    return sum(pq.read_metadata(f).num_rows for f in files)


def _check_spec(spec: Mapping[str, Any], options: RetailOptions | None = None) -> None:
    options = options or RetailOptions()
    derived = {"products": options.products_from_lines, "stores": options.stores_from_lines}
    if options.rates_dataset and options.rates_dataset not in spec.get("inputs", {}):
        raise ValueError(f"job spec has no input {options.rates_dataset!r} (the rates dataset)")
    for dataset in DATASETS:
        if derived.get(dataset):
            if dataset in spec.get("inputs", {}):
                raise ValueError(f"input {dataset!r} is given but the options derive it from the lines")
            continue
        if dataset not in spec.get("inputs", {}):
            raise ValueError(f"job spec has no input {dataset!r}")
        input_spec = spec["inputs"][dataset]
        columns = CONTRACT.input_columns(dataset, spec.get("options") or {})
        missing = [c for c in columns if c not in input_spec.get("columns", {})]
        if missing:
            raise ValueError(f"job spec input {dataset!r} does not declare columns {missing}")
        if not input_spec.get("key"):
            raise ValueError(f"job spec input {dataset!r} has no key")
        if dataset != "order_lines" and any(r["check"] == "reference" for r in input_spec.get("rules") or ()):
            raise ValueError(f"{JOB_NAME} applies reference rules to order_lines only, not to {dataset!r}")
    lines_spec = spec["inputs"]["order_lines"]
    date_column = lines_spec.get("business_date_column") or BUSINESS_DATE_FROM
    date_type = lines_spec["columns"].get(date_column, {}).get("type")
    if date_type not in ("timestamp", "date"):
        raise ValueError(
            f"order_lines' business date column {date_column!r} must be a declared timestamp or date"
        )
    version = lines_spec.get("version_column")
    if version and lines_spec["columns"][version]["type"] not in VERSION_TYPES:
        raise ValueError(
            f"order_lines' version_column {version!r} must be one of {', '.join(VERSION_TYPES)} "
            "to order versions across partitions"
        )
    for rule in line_reference_rules(spec["inputs"]["order_lines"].get("rules")):
        # The facts reference the product and store dimensions: an unknown one cannot be loaded.
        if rule["column"] in ("sku", "store_code") and rule.get("severity", "reject") != "reject":
            raise ValueError(f"reference rule {rule['code']!r} on order_lines.{rule['column']} must reject")
        if rule["column"] in ("sku", "store_code") and rule.get("when"):
            raise ValueError(
                f"reference rule {rule['code']!r} on order_lines.{rule['column']} must check every line "
                "(no `when`)"
            )
    _check_constraints(spec, options)


def _check_constraints(spec: Mapping[str, Any], options: RetailOptions) -> None:
    """The warehouse's limits (spec ``constraints``) on what no staged row is to blame for: a computed
    decimal (an amount) is checked at its output type, which must be the model's; a configured text
    (line type, constant currency) must fit its column."""
    constraints = spec.get("constraints")
    if not constraints:
        raise ValueError("job spec has no constraints (the warehouse's limits, etlcore.services.job_spec)")
    for output in CONTRACT.outputs:
        for name, type_text in output.columns:
            limit = constraints.get(output.name, {}).get(name, {})
            if type_text.startswith("decimal") and "max_digits" in limit:
                model = f"decimal({limit['max_digits']},{limit['decimal_places']})"
                if type_text != model:
                    raise ValueError(
                        f"{JOB_NAME} writes {output.name}.{name} as {type_text}, the warehouse column "
                        f"{limit['column']} is {model}: update the job"
                    )
    texts = [("line_type", f"line type {t.type!r}", t.type) for t in options.line_types]
    if options.currency:
        texts.append(("currency", f"currency {options.currency!r}", options.currency.upper()))
    for column, what, value in texts:
        limit = constraints.get("sales_lines", {}).get(column, {})
        if len(value) > limit.get("max_length", len(value)):
            raise ValueError(
                f"{what} is {len(value)} characters, the warehouse holds at most {limit['max_length']}: "
                f"warehouse column {limit['column']}"
            )


def _write_json_atomically(path: str, payload: Mapping[str, Any]) -> None:
    tmp = f"{path}.tmp"
    # 0600, not through a link: the work dir holds customer data (etlcore/files.py, which this package
    # cannot import, says why).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _pseudonym_key_from_env(spec: Mapping[str, Any]) -> bytes:
    env = spec.get("pseudonym_key_env") or "ETL_PSEUDONYM_KEY"
    value = os.environ.get(env, "")
    if not value:
        raise RuntimeError(f"the customer pseudonym key is missing: environment variable {env} is not set")
    return value.encode("utf-8")


@dataclasses.dataclass(frozen=True)
class JobOptions:
    """What :func:`transform` needs besides the staged frames: the inputs' declarations (with the implicit
    rules), the day, the pseudonym key and the options of the job spec."""

    inputs: Mapping[str, Mapping[str, Any]]
    business_date: dt.date
    pseudonym_key: bytes
    retail: RetailOptions = dataclasses.field(default_factory=RetailOptions)
    reporting_currency: str | None = None
    timezone: str = "UTC"

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], pseudonym_key: bytes | None = None) -> JobOptions:
        """Checked job spec -> options; the key defaults to the environment variable the spec names."""
        retail = RetailOptions.from_spec(spec.get("options"))
        _check_spec(spec, retail)
        key = pseudonym_key if pseudonym_key is not None else _pseudonym_key_from_env(spec)
        return cls(
            inputs=inputs_with_implicit_rules(spec, retail),
            business_date=dt.date.fromisoformat(spec["business_date"]),
            pseudonym_key=key,
            retail=retail,
            reporting_currency=spec.get("reporting_currency"),
            timezone=spec.get("timezone") or "UTC",
        )


def _check_conservation(result: Mapping[str, Any]) -> None:
    datasets, outputs = result["datasets"], result["outputs"]
    for name, c in datasets.items():
        filtered = sum(c.get("filtered", {}).values())
        if c["rows_in"] != c["rows_out"] + c["rejected"] + c["duplicates"] + filtered:
            raise RuntimeError(f"row conservation broken for {name}: {c}")
    written = {o.rows_of: o.name for o in CONTRACT.outputs if o.rows_of}
    for dataset, output in written.items():
        if dataset not in datasets:  # derived from the order lines: no input to account for
            continue
        if datasets[dataset]["rows_out"] != outputs[output]:
            raise RuntimeError(
                f"{output} has {outputs[output]} rows on disk, expected {datasets[dataset]['rows_out']}"
            )
    rejected = sum(c["rejected"] for c in datasets.values())
    if outputs["quarantine"] != rejected:
        raise RuntimeError(f"quarantine has {outputs['quarantine']} rows on disk, expected {rejected}")


def _one_line(exc: BaseException, secrets: Sequence[str]) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    # Plans in Spark errors print the HMAC pads as binary literals: never echo them.
    for secret in secrets:
        for variant in {secret, secret.upper(), secret.lower()}:
            text = text.replace(variant, "***")
    return text[:500]


FAILED_FILE = "_failed.json"


class SpecsUnreadable(Exception):
    """A job spec cannot be read, or the pseudonym key is missing: the job exits 2 before any date."""


def specs_read(paths: Sequence[str]) -> tuple[list[dict[str, Any]], bytes]:
    """The ``--spec`` files, and the pseudonym key the first names (every date of a batch shares it)."""
    specs = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as fh:
                specs.append(json.load(fh))
        except (OSError, ValueError) as exc:
            raise SpecsUnreadable(f"cannot read job spec {path}: {exc}") from exc
    try:
        return specs, _pseudonym_key_from_env(specs[0])
    except RuntimeError as exc:
        raise SpecsUnreadable(str(exc)) from exc


def specs_run(
    job_name: str, specs: Sequence[Mapping[str, Any]], key: bytes, run: Callable[[Mapping[str, Any]], Any]
) -> int:
    """``run`` each spec in turn, whatever the others do: a date that fails ends with ``_failed.json``
    holding its one-line error (also on stderr, secrets masked). 0 when every date succeeded, else 1:
    the job's contract with the transform step, either engine."""
    failed = 0
    for spec in specs:
        try:
            run(spec)
        except Exception as exc:
            line = _one_line(exc, contract.secret_fragments(key))
            prefix = f"{spec.get('business_date')}: " if len(specs) > 1 else ""
            print(f"{job_name}: {prefix}failed: {line}", file=sys.stderr)
            _write_json_atomically(os.path.join(spec["output_dir"], FAILED_FILE), {"error": line})
            failed += 1
    return 1 if failed else 0
