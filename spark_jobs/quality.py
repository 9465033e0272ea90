"""Dataset-independent typing, validation, de-duplication and quarantine for the raw (all-text) layer.

Everything here is a pure DataFrame -> DataFrame or Column helper: no I/O, no SparkSession. A validated
frame carries, next to its typed columns:

- ``_raw``: the staged row as it was read (a struct of its text values, fields sorted by name): the
  de-duplication tie-break, and for a rejected row the source of its quarantine record;
- ``_reasons``: array<string> of reason codes, empty when the row is valid (the row is rejected);
- ``_warnings``: array<string> of codes of ``warn`` rules the row breaks (it is kept);
- ``_filtered``: array<string> of codes of ``filter`` rules the row matches (removed on purpose, counted).

Codes stay in declaration order in each array. A rule with a ``when`` condition (spark_jobs.rule_spec,
compiled by :func:`condition_column`) is checked only on the rows where the condition is true.

Reason codes: ``missing_<col>`` (a required value is empty), ``invalid_<col>`` (text that does not parse
as the declared type), the codes of the dataset's declared rules (docs/configuration.md, "Quality
rules"), the implicit rules of the warehouse's limits (:func:`constraint_rules`: ``too_long_<col>``,
``too_many_digits_<col>``, ``out_of_range_<col>``), plus whatever a job adds with :func:`add_reasons`.

A row is, in this order of precedence: a duplicate (``_dup``), filtered, rejected, or accepted, so
``rows_in = rows_out + rejected + duplicates + sum(filtered)`` holds by construction (:func:`row_counts`),
and ``rule_failures`` counts, per code, every record that broke it, whatever counted the record.

Only rejected rows become quarantine records (:func:`quarantine_rows`): the JSON ``raw_record``, its
sha256 ``record_fingerprint`` and the masking of personal data are computed for them alone, not for
every row that passes through the job.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    BooleanType,
    DataType,
    DateType,
    DecimalType,
    IntegerType,
    LongType,
    StringType,
    TimestampType,
)

from spark_jobs.contract import QUARANTINE, hmac_pads, spark_schema
from spark_jobs.rule_spec import (
    DATE_SHAPE,
    ROW_CHECKS,
    TIMESTAMP_SHAPE,
    And,
    Compare,
    Condition,
    In,
    IsNull,
    Like,
    Not,
    Or,
    condition_parse,
    decimal_shape,
    rule_note,
    rule_reason_columns,
)

RAW_COL = "_raw"
REASONS_COL = "_reasons"
WARNINGS_COL = "_warnings"
FILTERED_COL = "_filtered"
DUP_COL = "_dup"
RAW_RECORD_COL = "raw_record"
FINGERPRINT_COL = "record_fingerprint"

# Declared with the other outputs in spark_jobs/contract.py: every job quarantines in these columns.
QUARANTINE_SCHEMA = spark_schema(QUARANTINE)

ColumnsSpec = Mapping[str, Mapping[str, Any]]
# A declared rule as the job spec carries it (etlcore.config.RuleConfig.spec()): code, check, severity,
# column / columns, and the check's own keys (min, max, values, pattern, dataset, key, message).
Rule = Mapping[str, Any]

# Where a broken rule's code goes, by severity.
SEVERITY_COLUMNS = {"reject": REASONS_COL, "warn": WARNINGS_COL, "filter": FILTERED_COL}
# What a job does to a cleaned text before writing it (the rule's ``as_loaded``): the warehouse counts the
# characters of that. Upper-casing can lengthen a text ("ß" is "SS").
LOADED_FORMS: dict[str, Callable[[Column], Column]] = {"upper": F.upper}

_DECIMAL_RE = re.compile(r"^decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
_SIMPLE_TYPES: dict[str, DataType] = {
    "string": StringType(),
    "int": IntegerType(),
    "long": LongType(),
    "timestamp": TimestampType(),
    "date": DateType(),
    "boolean": BooleanType(),
}
# (?U): Unicode white space (Java's White_Space), so a no-break space pasted into an export is a blank.
_EDGE_SPACE = r"(?U)^\s+|\s+$"
_INNER_SPACE = r"(?U)\s+"
# The white space other than the plain space that is ASCII: tab, line feed, vertical tab, form feed, CR.
_ASCII_CONTROL_SPACE = r"[\t\n\x0B\f\r]"


def spark_type(type_name: str) -> DataType:
    """The Spark type of a spec type name ("string", "int", "decimal(18,4)", ...)."""
    name = type_name.strip().lower()
    if name in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[name]
    match = _DECIMAL_RE.match(name)
    if match:
        return DecimalType(int(match.group(1)), int(match.group(2)))
    raise ValueError(f"unsupported column type {type_name!r}")


def clean_text(text: Column, *, collapse: bool = False) -> Column:
    """Trimmed text, internal whitespace runs collapsed to one space if asked; empty text -> null.

    White space is Unicode's, but almost every staged value holds none beyond plain spaces: for those,
    ``trim`` (spaces only) and a look for a double space are plain byte scans. A value with a non-ASCII
    character or an ASCII tab / line break takes the Unicode regular expressions. Profiled on the
    validation projection, the regex replace on every value (and ``btrim`` with an explicit character
    set, or ``translate``) cost several times this.
    """
    unusual = (F.octet_length(text) != F.length(text)) | text.rlike(_ASCII_CONTROL_SPACE)
    plain = F.trim(text)
    unicode = F.regexp_replace(text, _EDGE_SPACE, "")
    if collapse:
        plain = F.when(F.instr(plain, "  ") > 0, F.regexp_replace(plain, " {2,}", " ")).otherwise(plain)
        unicode = F.regexp_replace(unicode, _INNER_SPACE, " ")
    return F.nullif(F.when(unusual, unicode).otherwise(plain), F.lit(""))


def typed_value(cleaned: Column, type_name: str) -> Column:
    """Parse cleaned text as the spec type; null when it does not parse. Never throws (ANSI-safe)."""
    target = spark_type(type_name)
    if isinstance(target, StringType):
        return cleaned
    if isinstance(target, DecimalType):
        # String -> decimal directly: the value never passes through double.
        return F.when(cleaned.rlike(decimal_shape(target.scale)), cleaned.try_cast(target))
    if isinstance(target, TimestampType):
        # Without an offset the session time zone (UTC) applies.
        return F.when(cleaned.rlike(TIMESTAMP_SHAPE), cleaned.try_cast(target))
    if isinstance(target, DateType):
        return F.when(cleaned.rlike(DATE_SHAPE), cleaned.try_cast(target))
    return cleaned.try_cast(target)


def _column_checks(name: str, cleaned: Column, typed: Column, required: bool) -> list[Column]:
    checks = []
    if required:
        checks.append(F.when(cleaned.isNull(), F.lit(f"missing_{name}")))
    checks.append(F.when(cleaned.isNotNull() & typed.isNull(), F.lit(f"invalid_{name}")))
    return checks


def _reason_array(checks: Sequence[Column]) -> Column:
    if not checks:
        return F.array().cast("array<string>")
    return F.array_compact(F.array(*checks))


def _all(conditions: Sequence[Column]) -> Column:
    combined = conditions[0]
    for cond in conditions[1:]:
        combined = combined & cond
    return combined


def _any(conditions: Sequence[Column]) -> Column:
    combined = conditions[0]
    for cond in conditions[1:]:
        combined = combined | cond
    return combined


def rule_failed(rule: Rule, cleaned: Column, typed: Column, type_name: str) -> Column:
    """True where a row-level rule is broken by this column's value (its ``when`` aside: :func:`rule_when`).

    ``required`` looks at the cleaned text; ``pattern`` must match the whole cleaned text (Java regex), or a
    part of it with ``match = "search"``, and ``negate`` breaks the rule where it matches instead;
    ``range`` / ``allowed`` / ``not_allowed`` compare the typed value with bounds and values cast to the
    column's type (lower-cased on both sides with ``ignore_case``). Apart from ``required``, an empty or
    unparsable value breaks no rule: that is what ``required`` and ``invalid_<column>`` report.
    """
    check = rule["check"]
    target = spark_type(type_name)
    if check == "required":
        return cleaned.isNull()
    if check == "pattern":
        anchored = rule["pattern"] if rule.get("match") == "search" else f"^(?:{rule['pattern']})$"
        matched = cleaned.rlike(anchored)
        return cleaned.isNotNull() & (matched if rule.get("negate") else ~matched)
    if check == "range":
        outside = []
        if rule.get("min") is not None:
            low = F.lit(str(rule["min"])).cast(target)
            outside.append(typed <= low if rule.get("exclusive_min") else typed < low)
        if rule.get("max") is not None:
            high = F.lit(str(rule["max"])).cast(target)
            outside.append(typed >= high if rule.get("exclusive_max") else typed > high)
        return typed.isNotNull() & _any(outside)
    if check in ("allowed", "not_allowed"):
        values = [F.lit(str(v)).cast(target) for v in rule["values"]]
        if rule.get("ignore_case"):
            # The same function on both sides, so the value and the listed codes fold alike.
            listed = F.lower(typed).isin(*[F.lower(v) for v in values])
        else:
            listed = typed.isin(*values)
        return typed.isNotNull() & (~listed if check == "allowed" else listed)
    if check == "max_length":
        return cleaned.isNotNull() & (F.length(loaded_text(rule, cleaned)) > F.lit(rule["max_length"]))
    if check == "digits":
        # As the decimal(max_digits, decimal_places) column will store it: rounded to its places first.
        places = rule["decimal_places"]
        limit = Decimal(10) ** (rule["max_digits"] - places)
        return typed.isNotNull() & (F.abs(F.round(typed, places)) >= F.lit(limit))
    raise ValueError(f"rule {rule.get('code')!r}: {check!r} is not a row-level check")


def condition_column(condition: Condition, types: Mapping[str, str]) -> Column:
    """A parsed ``when`` condition (spark_jobs.rule_spec) as ONE Spark Column over the typed columns (a
    text column holds its cleaned value). Literals are cast from their exact text to the column's type;
    null semantics are SQL's (unknown where a compared value is empty)."""
    if isinstance(condition, Not):
        return ~condition_column(condition.operand, types)
    if isinstance(condition, And):
        return _all([condition_column(c, types) for c in condition.operands])
    if isinstance(condition, Or):
        return _any([condition_column(c, types) for c in condition.operands])
    value = F.col(condition.column)
    if isinstance(condition, IsNull):
        return value.isNotNull() if condition.negate else value.isNull()
    if isinstance(condition, Like):
        matched = value.like(condition.pattern)
        return ~matched if condition.negate else matched
    target = spark_type(types[condition.column])
    if isinstance(condition, In):
        listed = value.isin(*[F.lit(v).cast(target) for v in condition.values])
        return ~listed if condition.negate else listed
    if isinstance(condition, Compare):
        return _COMPARE[condition.op](value, F.lit(condition.value).cast(target))
    raise TypeError(f"not a condition: {condition!r}")


_COMPARE: dict[str, Callable[[Column, Column], Column]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def rule_when(rule: Rule, types: Mapping[str, str]) -> Column:
    """Where the rule is checked: TRUE of its ``when`` condition (false where the condition is false or
    unknown), everywhere without one."""
    if not rule.get("when"):
        return F.lit(True)
    try:
        condition = condition_parse(rule["when"], types)
    except ValueError as exc:
        raise ValueError(f"rule {rule.get('code')!r}: when {rule['when']!r}: {exc}") from None
    return F.coalesce(condition_column(condition, types), F.lit(False))


def declared_types(df: DataFrame) -> dict[str, str]:
    """The spec type name of each typed column of a validated frame (for :func:`rule_when` after it)."""
    names = {"bigint": "long", "integer": "int"}
    return {f.name: names.get(f.dataType.simpleString(), f.dataType.simpleString()) for f in df.schema.fields}


def loaded_text(rule: Rule, cleaned: Column) -> Column:
    """The cleaned text as the job will write it (the rule's ``as_loaded`` form, if any)."""
    form = rule.get("as_loaded")
    return LOADED_FORMS[form](cleaned) if form else cleaned


def _rule_arrays(results: Sequence[tuple[Rule, Column]]) -> dict[str, list[Column]]:
    """Severity column -> the ``when(failed, code)`` expressions that feed it."""
    arrays: dict[str, list[Column]] = {name: [] for name in SEVERITY_COLUMNS.values()}
    for rule, failed in results:
        arrays[SEVERITY_COLUMNS[rule.get("severity", "reject")]].append(F.when(failed, F.lit(rule["code"])))
    return arrays


def _cleaned_name(column: str) -> str:
    return f"__cleaned__{column}"


def cast_and_validate(
    df: DataFrame,
    columns_spec: ColumnsSpec,
    dataset: str,
    rules: Sequence[Rule] = (),
) -> DataFrame:
    """Typed columns (spec order) + ``_raw``, ``_reasons``, ``_warnings``, ``_filtered``.

    One pass over the data whatever the number of rules: the casts and every row-level rule
    (``ROW_CHECKS``) are expressions of stacked projections that Spark runs as one stage. The stacking
    is deliberate: each value is cleaned, then parsed, ONCE, and the checks refer to the results. (Spark
    keeps a projection whose costly expressions are used more than once; in a single select it would
    evaluate the cleaning and parsing again for every check that uses them.)
    ``unique`` and ``reference`` rules need other rows and are applied by :func:`apply_unique_rules` /
    :func:`apply_reference_rules`. A spec column absent from the staged file reads as null (and is
    ``missing_`` when required). Codes come in a fixed order: ``missing_``/``invalid_`` in column order,
    then rules as declared.
    """
    present = set(df.columns)
    types: dict[str, str] = {}
    for name, col_spec in columns_spec.items():
        types[name] = str(col_spec.get("type", "string"))
        try:
            spark_type(types[name])
        except ValueError as exc:
            raise ValueError(f"{dataset}.{name}: {exc}") from None

    def staged_text(name: str) -> Column:
        return F.col(name).cast("string") if name in present else F.lit(None).cast("string")

    raw = F.struct(*[F.col(c).cast("string").alias(c) for c in sorted(df.columns)])
    cleaned_cols = [
        clean_text(staged_text(name), collapse=isinstance(spark_type(type_name), StringType)).alias(
            _cleaned_name(name)
        )
        for name, type_name in types.items()
    ]
    cleaned = df.select(raw.alias(RAW_COL), *cleaned_cols)
    typed = cleaned.select("*", *[typed_value(F.col(_cleaned_name(n)), t).alias(n) for n, t in types.items()])

    checks: list[Column] = []
    values: dict[str, tuple[Column, Column, str]] = {}
    for name, type_name in types.items():
        values[name] = (F.col(_cleaned_name(name)), F.col(name), type_name)
        required = bool(columns_spec[name].get("required", False))
        checks.extend(_column_checks(name, *values[name][:2], required))

    results = []
    for rule in rules:
        if rule["check"] not in ROW_CHECKS:
            continue
        if rule["column"] not in values:
            raise ValueError(f"{dataset}: rule {rule['code']!r} checks undeclared column {rule['column']!r}")
        results.append((rule, rule_when(rule, types) & rule_failed(rule, *values[rule["column"]])))
    arrays = _rule_arrays(results)

    return typed.select(
        *types,
        RAW_COL,
        _reason_array([*checks, *arrays[REASONS_COL]]).alias(REASONS_COL),
        _reason_array(arrays[WARNINGS_COL]).alias(WARNINGS_COL),
        _reason_array(arrays[FILTERED_COL]).alias(FILTERED_COL),
    )


def pii_masks(
    columns_spec: ColumnsSpec, mask: Callable[[Column], Column]
) -> dict[str, Callable[[Column], Column]]:
    """``mask`` for every column declared ``pii = true``, as :func:`quarantine_rows` takes ``masks``."""
    return {name: mask for name, col_spec in columns_spec.items() if col_spec.get("pii")}


def add_rule_results(df: DataFrame, results: Sequence[tuple[Rule, Column]]) -> DataFrame:
    """Append each rule's code to the array of its severity where ``failed`` is true (null adds nothing)."""
    for name, exprs in _rule_arrays(results).items():
        if exprs:
            df = df.withColumn(name, F.concat(F.col(name), _reason_array(exprs)))
    return df


def apply_unique_rules(df: DataFrame, rules: Sequence[Rule]) -> DataFrame:
    """``unique`` rules over a frame marked by :func:`mark_duplicates`: one window per rule.

    Uniqueness is checked AFTER de-duplication, among the rows kept per ``key`` (``_dup`` false): rows
    that are versions or copies of one record never conflict, two different records sharing the rule's
    columns do, and then every one of them breaks the rule (none is chosen arbitrarily). A row with a
    null in any of the columns is not checked. Other reasons of the rows do not matter: a conflicting
    row is evidence even if it is rejected for something else.
    """
    results = []
    types = declared_types(df)
    for i, rule in enumerate(r for r in rules if r["check"] == "unique"):
        columns = list(rule["columns"])
        counted = f"_unique{i}"
        # Only the rows the rule's `when` selects compete with each other.
        checked = rule_when(rule, types)
        window = Window.partitionBy(*hash_first([F.col(DUP_COL), checked, *[F.col(c) for c in columns]]))
        df = df.withColumn(counted, F.count(F.lit(1)).over(window))
        known = _all([F.col(c).isNotNull() for c in columns])
        results.append((rule, ~F.col(DUP_COL) & checked & known & (F.col(counted) > 1), counted))
    checked = add_rule_results(df, [(rule, failed) for rule, failed, _ in results])
    return checked.drop(*[counted for _, _, counted in results])


def apply_reference_rules(
    df: DataFrame, rules: Sequence[Rule], references: Mapping[str, DataFrame]
) -> DataFrame:
    """``reference`` rules: ``column`` must be a ``key`` value of the referenced dataset's frame.

    ``references`` maps dataset name -> its ACCEPTED rows of the same run (a rejected product does not
    make its lines valid). One broadcast left join per rule against the distinct keys (a day's dimension
    is small; the lines are not shuffled and cannot be multiplied); all codes are added in one step.
    A null value is not checked (``required`` reports it).
    """
    results = []
    flags = []
    types = declared_types(df)
    for i, rule in enumerate(r for r in rules if r["check"] == "reference"):
        if rule["dataset"] not in references:
            raise ValueError(f"rule {rule['code']!r}: no frame for referenced dataset {rule['dataset']!r}")
        key, flag = f"_refkey{i}", f"_known{i}"
        known = (
            references[rule["dataset"]]
            .select(F.col(rule["key"]).alias(key))
            .where(F.col(key).isNotNull())
            .distinct()
            .withColumn(flag, F.lit(True))
        )
        df = df.join(F.broadcast(known), F.col(rule["column"]) == F.col(key), "left").drop(key)
        unknown = F.col(rule["column"]).isNotNull() & F.col(flag).isNull()
        results.append((rule, rule_when(rule, types) & unknown))
        flags.append(flag)
    return add_rule_results(df, results).drop(*flags)


def add_reasons(df: DataFrame, checks: Sequence[tuple[str, Column]]) -> DataFrame:
    """Append ``code`` to ``_reasons`` where its condition is true (a null condition adds nothing)."""
    new = _reason_array([F.when(cond, F.lit(code)) for code, cond in checks])
    return df.withColumn(REASONS_COL, F.concat(F.col(REASONS_COL), new))


def is_rejected() -> Column:
    return F.size(F.col(REASONS_COL)) > 0


def is_filtered() -> Column:
    return F.size(F.col(FILTERED_COL)) > 0


def is_accepted() -> Column:
    """Kept per key, not filtered, no reason: the row is loaded."""
    return ~F.col(DUP_COL) & ~is_filtered() & ~is_rejected()


def is_quarantined() -> Column:
    """Kept per key, not filtered, at least one reason: the row goes to quarantine."""
    return ~F.col(DUP_COL) & ~is_filtered() & is_rejected()


def row_counts(prepared: DataFrame) -> dict[str, Any]:
    """rows_in / rejected / duplicates / rows_out, ``filtered`` {code: rows}, ``warnings`` {code: rows} and
    ``rule_failures`` {code: rows} of a prepared (``_dup`` marked) frame, from ONE aggregation over it.

    Each row is counted once, under its status, and a filtered row under its first filter code (rules in
    declaration order): ``rows_in = rows_out + rejected + duplicates + sum(filtered)``. ``rule_failures``
    names every code a record (a row kept per key) broke, whatever counted it: a row filtered by two
    rules, or filtered and also rejected, counts under each of its codes there (so its figures may add up
    to more than the rows). Warnings are counted on loaded rows (a rejected or filtered row is not kept,
    whatever it also warns about); rule_failures holds warn codes of every record.

    Each row is tagged with its status, its first filter code when filtered, its distinct warning codes
    when loaded and its distinct codes of any severity when kept per key; one group-by counts the tags.
    Codes need not be known in advance, so codes a job adds in code are counted like declared ones.
    """
    status = (
        F.when(F.col(DUP_COL), F.lit("duplicates"))
        .when(is_filtered(), F.lit("filtered"))
        .when(is_rejected(), F.lit("rejected"))
        .otherwise(F.lit("rows_out"))
    )
    no_tags = F.array().cast("array<string>")

    def tagged(prefix: str, codes: Column) -> Column:
        return F.transform(F.array_distinct(codes), lambda code: F.concat(F.lit(prefix), code))

    every_code = F.concat(F.col(FILTERED_COL), F.col(REASONS_COL), F.col(WARNINGS_COL))
    tags = F.concat(
        F.array(F.concat(F.lit("n:"), status)),
        F.when(
            status == "filtered",
            F.array(F.concat(F.lit("f:"), F.try_element_at(F.col(FILTERED_COL), F.lit(1)))),
        ).otherwise(no_tags),
        F.when(status == "rows_out", tagged("w:", F.col(WARNINGS_COL))).otherwise(no_tags),
        F.when(status != "duplicates", tagged("r:", every_code)).otherwise(no_tags),
    )
    counted = prepared.select(F.explode(tags).alias("tag")).groupBy("tag").count().collect()
    counts: dict[str, Any] = {"rows_in": 0, "rejected": 0, "duplicates": 0, "rows_out": 0}
    by_code: dict[str, dict[str, int]] = {"f": {}, "w": {}, "r": {}}
    for row in counted:
        kind, name = row["tag"].split(":", 1)
        n = int(row["count"])
        if kind == "n":
            counts[name] = n
            counts["rows_in"] += n
        else:
            by_code[kind][name] = n
    counts.pop("filtered", None)
    counts["filtered"] = dict(sorted(by_code["f"].items()))
    counts["warnings"] = dict(sorted(by_code["w"].items()))
    counts["rule_failures"] = dict(sorted(by_code["r"].items()))
    return counts


def hash_first(partition: Sequence[Column]) -> list[Column]:
    """A window's partition columns led by their 64-bit hash: the same groups, but the sort before the
    window compares one long for almost every pair of rows (its sort prefix) instead of the key columns,
    whose text often shares its first bytes ("SO-2026..."), which made the de-duplication sort slow."""
    return [F.xxhash64(*partition), *partition]


def mark_duplicates(df: DataFrame, key: Sequence[str], version_column: str | None = None) -> DataFrame:
    """Add ``_dup``: true for every row but the one kept per key.

    Kept: the latest version, ties (and exact duplicates) broken by the staged text (``_raw``) desc, so
    the choice does not depend on partitioning. A row whose key or version did not parse cannot be
    placed among the versions of a key: it only competes with identical copies of itself (and is then
    rejected).
    """
    if not key:
        raise ValueError("a de-duplication key needs at least one column")
    known = [F.col(k).isNotNull() for k in key]
    if version_column:
        known.append(F.col(version_column).isNotNull())
    eligible = known[0]
    for cond in known[1:]:
        eligible = eligible & cond
    partition = [
        eligible,
        *[F.when(eligible, F.col(k)) for k in key],
        F.when(~eligible, F.col(RAW_COL)),
    ]
    order = [F.col(version_column).desc_nulls_last()] if version_column else []
    order.append(F.col(RAW_COL).desc())
    window = Window.partitionBy(*hash_first(partition)).orderBy(*order)
    return df.withColumn(DUP_COL, F.row_number().over(window) > 1)


def deduplicate(
    df: DataFrame, key: Sequence[str], version_column: str | None = None
) -> tuple[DataFrame, DataFrame]:
    """(kept rows, removed duplicates), both from one marked frame: cache it before using both."""
    marked = mark_duplicates(df, key, version_column)
    return marked.filter(~F.col(DUP_COL)).drop(DUP_COL), marked.filter(F.col(DUP_COL)).drop(DUP_COL)


def quarantine_rows(
    df: DataFrame,
    dataset: str,
    reason_columns: Mapping[str, str] | None = None,
    rules: Sequence[Rule] = (),
    masks: Mapping[str, Callable[[Column], Column]] | None = None,
) -> DataFrame:
    """Rejected rows in the quarantine schema.

    ``raw_record`` is the staged row (``_raw``) as a sorted-key JSON object, nulls included, and
    ``record_fingerprint`` its sha256. ``masks`` (column -> text Column function) replace personal data
    first: the record leaves the staging layer through the warehouse's quarantine table.
    ``message`` lists every code with the staged (masked) value that caused it, e.g.
    ``invalid_unit_price: unit_price='abc'; unknown_product: sku='X9'``: for ``missing_``/``invalid_``
    codes the column is in the code, others are looked up in ``reason_columns`` (code -> column) and the
    declared ``rules``, whose ``message`` follows in parentheses (a ``max_length`` rule's starts with the
    length it found). ``reason_code`` is the first code; the schema stays the loader's contract.
    """
    reason_columns = {**(reason_columns or {}), **rule_reason_columns(rules)}
    # A rule's message, and its `when`: the condition under which the value broke it.
    notes = {r["code"]: rule_note(r) for r in rules if r.get("message") or r.get("when")}
    masks = masks or {}
    raw_fields = df.schema[RAW_COL].dataType.fieldNames()  # type: ignore[attr-defined]
    staged = F.col(RAW_COL)
    shown_fields = [(masks[c](staged[c]) if c in masks else staged[c]).alias(c) for c in raw_fields]
    # Lengths as the max_length rules count them, from the unmasked text.
    lengths = {
        r["code"]: F.length(loaded_text(r, clean_text(staged[r["column"]], collapse=True)))
        for r in rules
        if r["check"] == "max_length" and r["column"] in raw_fields
    }
    # The masked record in a projection of its own, so the masks run once per row.
    shown = df.select(
        REASONS_COL,
        F.struct(*shown_fields).alias(RAW_COL),
        *[length.alias(f"_length_{code}") for code, length in lengths.items()],
    )
    raw_map = (
        F.create_map(*[part for name in raw_fields for part in (F.lit(name), staged.getField(name))])
        if raw_fields
        else None
    )

    def column_of(code: Column) -> Column:
        column = F.regexp_extract(code, r"^(?:missing|invalid)_(.+)$", 1)
        for reason, name in reason_columns.items():
            column = F.when(code == F.lit(reason), F.lit(name)).otherwise(column)
        return F.nullif(column, F.lit(""))

    def note_of(code: Column) -> Column:
        note = F.lit(None).cast("string")
        for reason, text in notes.items():
            parts = [F.lit(" (")]
            if reason in lengths:
                found = F.col(f"_length_{reason}").cast("string")
                parts += [F.lit(f"{reason_columns[reason]} is "), found, F.lit(" characters, ")]
            note = F.when(code == F.lit(reason), F.concat(*parts, F.lit(f"{text})"))).otherwise(note)
        return F.coalesce(note, F.lit(""))

    def describe(code: Column) -> Column:
        if raw_map is None:
            return F.concat(code, note_of(code))
        column = column_of(code)
        value = F.try_element_at(raw_map, column)
        shown = F.coalesce(F.concat(F.lit("'"), value, F.lit("'")), F.lit("null"))
        detail = F.concat(F.lit(": "), column, F.lit("="), shown)
        return F.concat(code, F.coalesce(detail, F.lit("")), note_of(code))

    reasons = F.col(REASONS_COL)
    described = shown.select(
        F.lit(dataset).alias("dataset"),
        F.try_element_at(reasons, F.lit(1)).alias("reason_code"),
        F.array_join(F.transform(reasons, describe), "; ").alias("message"),
        # Nulls are kept as JSON null so the record shows every staged column.
        F.to_json(staged, {"ignoreNullFields": "false"}).alias(RAW_RECORD_COL),
    )
    return described.withColumn(FINGERPRINT_COL, F.sha2(F.col(RAW_RECORD_COL), 256))


def hmac_sha256_hex(key: bytes, col: Column | str) -> Column:
    """HMAC-SHA256 (RFC 2104) of the UTF-8 bytes of ``col``, lower-case hex; null in, null out.

    Built from sha2/concat/unhex so it runs in the JVM without a Python UDF. The padded keys are
    computed here, on the driver, and travel as binary literals in the plan.
    """
    inner_pad, outer_pad = hmac_pads(key)
    message = (F.col(col) if isinstance(col, str) else col).cast("string").cast("binary")
    inner = F.unhex(F.sha2(F.concat(F.lit(inner_pad), message), 256))
    return F.sha2(F.concat(F.lit(outer_pad), inner), 256)
