"""The quality layer of :mod:`spark_jobs.quality` for pandas frames: the Dask engine's primitives.

The meaning is declared once (:mod:`spark_jobs.rule_spec`: checks, type shapes, implicit rules, quarantine
wording); this module is the pandas way to compute it, value for value what the Spark functions compute,
which tests/spark_jobs/test_engine_equivalence.py holds it to. Pure functions of frames, no I/O.

How a frame carries what Spark carries in arrays: one boolean column per check, in the order Spark appends
codes (:class:`Checks`), and the staged text of every column as ``_raw.<name>``. A reason list is built only
for the rows that need one (the quarantined), and counts are sums of the flag columns.

Values are parsed once per DISTINCT text (:func:`per_value`): a day's columns repeat (currencies, skus,
prices, timestamps), so the Python work grows with the distinct values, not the rows. Typed columns:
string as str, int / long as pandas Int64, decimal as :class:`decimal.Decimal` objects (never a float),
timestamp as Int64 microseconds since the epoch (UTC), date as Int64 days since the epoch, boolean as
pandas' nullable boolean.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from spark_jobs.contract import hmac_pads
from spark_jobs.rule_spec import (
    DATE_SHAPE,
    INT_RANGES,
    ROW_CHECKS,
    And,
    Compare,
    Condition,
    In,
    IsNull,
    Like,
    Not,
    Or,
    Rule,
    condition_parse,
    decimal_shape,
    rule_note,
    rule_reason_columns,
    type_parse,
)

RAW_PREFIX = "_raw."
DUP_COL = "_dup"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# Exact decimal arithmetic: a product of two decimal(18,x) has up to 37 digits; the default context's 28
# would round it.
EXACT = Context(prec=80)

# Java's White_Space (Spark's `(?U)\s`): Python's `\s` also takes \x1c-\x1f, Java's does not.
_WHITE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_EDGE_SPACE = re.compile(f"^[{_WHITE}]+|[{_WHITE}]+$")
_INNER_SPACE = re.compile(f"[{_WHITE}]+")
_ASCII_CONTROL_SPACE = re.compile(r"[\t\n\x0B\f\r]")
_SPACES = re.compile(" {2,}")
# Java's \d is ASCII; Python's takes every script's digits.
_DATE = re.compile(DATE_SHAPE, re.ASCII)
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_BOOLEANS = {"t": True, "true": True, "y": True, "yes": True, "1": True}
_BOOLEANS |= {"f": False, "false": False, "n": False, "no": False, "0": False}
LOADED_FORMS: dict[str, Callable[[str], str]] = {"upper": str.upper}


# Java's shorthand classes are ASCII (Pattern without UNICODE_CHARACTER_CLASS), and so is its (?i).
_JAVA_SHORTHANDS = {"d": "0-9", "w": "a-zA-Z_0-9", "s": " \\t\\n\\x0B\\f\\r"}


@functools.lru_cache(maxsize=256)
def java_regex(pattern: str) -> Any:
    """A Java (Spark ``rlike``) regular expression compiled to match as Java does: ``\\d``, ``\\w``, ``\\s``
    and ``(?i)`` ASCII-only. Python's ``re`` with ASCII is that, unless the pattern names a Unicode property
    (``\\p{Lu}``): then the ``regex`` package, the shorthands rewritten as ASCII classes."""
    if "\\p{" not in pattern and "\\P{" not in pattern:
        return re.compile(pattern, re.ASCII)
    import regex

    out, i, in_class = [], 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            escaped = pattern[i + 1]
            ascii_set = _JAVA_SHORTHANDS.get(escaped.lower())
            if ascii_set and in_class and escaped.islower():
                out.append(ascii_set)
            elif ascii_set and not in_class:
                out.append(f"[{'^' if escaped.isupper() else ''}{ascii_set}]")
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if char == "[" and not in_class:
            in_class = True
        elif char == "]" and in_class:
            in_class = False
        out.append(char)
        i += 1
    return regex.compile("".join(out), regex.V0)


# --- values ----------------------------------------------------------------------------------------------


def per_value(series: pd.Series, fn: Callable[[Any], Any], dtype: Any = object) -> pd.Series:
    """``fn`` of each value, computed once per distinct value (None for a missing one, fn not called)."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    mapped = [fn(v) for v in uniques]
    if dtype is object:
        table = np.empty(len(mapped) + 1, dtype=object)
        table[: len(mapped)] = mapped
        table[-1] = None
        return pd.Series(table[codes], index=series.index, dtype=object)
    out = pd.array([*mapped, None], dtype=dtype)
    return pd.Series(out.take(codes), index=series.index)


def per_pair(left: pd.Series, right: pd.Series, fn: Callable[[Any, Any], Any]) -> pd.Series:
    """``fn(l, r)`` of each row where both are present, once per distinct pair; None elsewhere."""
    left_codes, left_values = pd.factorize(left, use_na_sentinel=True)
    right_codes, right_values = pd.factorize(right, use_na_sentinel=True)
    known = (left_codes >= 0) & (right_codes >= 0)
    width = len(right_values) + 1
    pairs, uniques = pd.factorize(left_codes[known].astype(np.int64) * width + right_codes[known])
    table = np.empty(len(uniques), dtype=object)
    table[:] = [fn(left_values[c // width], right_values[c % width]) for c in uniques]
    out = np.full(len(left), None, dtype=object)
    out[known] = table[pairs]
    return pd.Series(out, index=left.index, dtype=object)


# Products of scaled integers below this are exact in int64 (a float estimate decides, with a margin).
_INT64_SAFE = float(2**62)


def decimals_scaled(series: pd.Series, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Decimal objects or integers -> (each value x 10**scale as int64, where that is exact): converted by
    Arrow's decimal128, in C. False for a missing value and for one beyond int64; ValueError when a value
    has more digits after the point than ``scale``."""
    if series.dtype != object:  # a nullable integer column
        present = series.notna().to_numpy()
        return series.fillna(0).to_numpy(dtype=np.int64) * 10**scale, present
    try:
        values = pa.array(series.to_numpy(), type=pa.decimal128(38, scale), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"not decimals of scale {scale}: {exc}") from exc
    data = values.buffers()[1]
    words = np.frombuffer(data, dtype=np.int64, count=2 * len(values), offset=16 * values.offset)
    low, high = words[0::2], words[1::2]  # little-endian 128-bit two's complement
    fits = values.is_valid().to_numpy(zero_copy_only=False) & (high == (low >> 63))
    return np.where(fits, low, 0), fits


def decimals_from_scaled(values: np.ndarray, present: np.ndarray, scale: int) -> np.ndarray:
    """int64 values x 10**-scale -> Decimal objects of that exponent (None where not present), by Arrow."""
    words = np.empty((len(values), 2), dtype=np.int64)
    words[:, 0], words[:, 1] = values, values >> 63
    validity = pa.py_buffer(np.packbits(present, bitorder="little"))
    array = pa.Array.from_buffers(pa.decimal128(38, scale), len(values), [validity, pa.py_buffer(words)])
    return array.to_numpy(zero_copy_only=False)


def _half_up(values: np.ndarray, digits: int) -> np.ndarray:
    """Scaled integers with ``digits`` fewer digits after the point, rounded half away from zero (Java's
    and Spark's HALF_UP)."""
    if digits <= 0:
        return values * 10**-digits
    unit = 10**digits
    magnitude = (np.abs(values) + unit // 2) // unit
    return np.where(values < 0, -magnitude, magnitude)


def decimal_products(
    left: pd.Series,
    left_scale: int,
    right: pd.Series,
    right_scale: int,
    *,
    scale: int,
    limit: Decimal,
    exact: Callable[[Any, Any], Any],
) -> pd.Series:
    """``left x right`` rounded HALF_UP to ``scale`` digits, None where either is missing or the result's
    magnitude is not below ``limit``: in int64 arithmetic, vectorised; ``exact(l, r)`` (the same in
    Decimal) for the rows whose product could leave int64 and when a side is not of its scale."""
    try:
        a, a_ok = decimals_scaled(left, left_scale)
        b, b_ok = decimals_scaled(right, right_scale)
    except ValueError:
        return per_pair(left, right, exact)
    widen = float(10 ** max(0, scale - left_scale - right_scale))
    both = a_ok & b_ok
    fast = both & (np.abs(a.astype(float)) * np.abs(b.astype(float)) * widen < _INT64_SAFE)
    rounded = _half_up(np.where(fast, a * b, 0), left_scale + right_scale - scale)
    bound = int(limit.scaleb(scale))
    present = fast & (np.abs(rounded) < bound) if bound < 2**63 else fast
    out = decimals_from_scaled(rounded, present, scale)
    slow = (left.notna().to_numpy() & right.notna().to_numpy()) & ~fast
    if slow.any():
        out[slow] = per_pair(left[slow], right[slow], exact).to_numpy()
    return pd.Series(out, index=left.index, dtype=object)


def clean_and_parse(staged: pd.Series, ctype: ColumnType) -> tuple[pd.Series, pd.Series]:
    """(cleaned text, typed value) of each staged text (:func:`clean_value`, then ``ctype``'s parser), both
    computed once per distinct staged text; missing where the text is or cleans to nothing."""
    codes, uniques = pd.factorize(staged, use_na_sentinel=True)
    collapse = ctype.kind == "string"
    texts = np.empty(len(uniques) + 1, dtype=object)  # the last one for a missing value (code -1)
    texts[:-1] = [clean_value(text, collapse) for text in uniques]
    texts[-1] = None
    cleaned = pd.Series(texts[codes], index=staged.index, dtype=object)
    if ctype.kind == "timestamp":
        typed = timestamps_micros(pd.Series(texts, dtype=object)).array.take(codes)
    else:
        parse = ctype.parser()
        values = [None if text is None else parse(text) for text in texts]
        if ctype.dtype is object:
            table = np.empty(len(values), dtype=object)
            table[:] = values
            typed = table[codes]
        else:
            typed = pd.array(values, dtype=ctype.dtype).take(codes)
    return cleaned, pd.Series(typed, index=staged.index)


def clean_value(text: str | None, collapse: bool = False) -> str | None:
    """Spark's ``clean_text``: trimmed (spaces, or Unicode white space when the text has a non-ASCII
    character or an ASCII control space), inner runs collapsed when asked; empty text -> None."""
    if text is None:
        return None
    if text.isascii() and not _ASCII_CONTROL_SPACE.search(text):
        out = text.strip(" ")
        if collapse and "  " in out:
            out = _SPACES.sub(" ", out)
    else:
        out = _EDGE_SPACE.sub("", text)
        if collapse:
            out = _INNER_SPACE.sub(" ", out)
    return out or None


def _integer(text: str, kind: str) -> int | None:
    if not _INTEGER.match(text):
        return None
    value = int(text)
    low, high = INT_RANGES[kind]
    return value if low <= value <= high else None


def decimal_of(text: str, precision: int, scale: int, shape: re.Pattern[str] | None = None) -> Decimal | None:
    """Text -> the decimal(precision, scale) value, or None when it is not plain notation within the scale
    or does not fit (what the Spark job's shape check and ``try_cast`` give)."""
    if shape is not None and not shape.match(text):
        return None
    try:
        value = Decimal(text).quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP, context=EXACT)
    except InvalidOperation:
        return None
    return value if abs(value) < Decimal(10) ** (precision - scale) else None


def timestamp_micros(text: str) -> int | None:
    """ISO text (Spark's accepted shapes) -> microseconds since the epoch, UTC when it names no offset;
    nanoseconds are truncated, as Spark does. One value of :func:`timestamps_micros`."""
    value = timestamps_micros(pd.Series([text], dtype=object)).iloc[0]
    return None if pd.isna(value) else int(value)


def _days_from_civil(year: np.ndarray, month: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's days_from_civil), vectorised."""
    year = year - (month <= 2)
    era = np.floor_divide(year, 400)
    yoe = year - era * 400
    doy = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


_MONTH_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def timestamps_micros(texts: pd.Series) -> pd.Series:
    """:func:`timestamp_micros` of a whole column at once (Arrow's regex extraction and numpy arithmetic;
    the same shapes, ranges and truncation), as Int64."""
    n = len(texts)
    out = pd.array(np.zeros(n, dtype=np.int64), dtype="Int64")
    out[:] = pd.NA
    if n == 0:
        return pd.Series(out, index=texts.index)
    array = pa.array(texts.to_numpy(dtype=object), pa.string(), from_pandas=True)
    parts = pc.extract_regex(array, _TIMESTAMP_GROUPS)
    matched = pc.is_valid(parts).to_numpy(zero_copy_only=False)
    if not matched.any():
        return pd.Series(out, index=texts.index)
    parts = parts.filter(pa.array(matched))

    def number(name: str, default: int = 0) -> np.ndarray:
        field = parts.field(name)
        empty = pc.equal(field, "")
        return pc.if_else(empty, str(default), field).cast(pa.int64()).to_numpy()

    year, month, day = number("y"), number("mo"), number("d")
    hour, minute, second = number("h"), number("mi"), number("s")
    fraction = (
        pc.utf8_rpad(pc.utf8_slice_codeunits(parts.field("f"), 0, 6), 6, "0").cast(pa.int64()).to_numpy()
    )
    sign = np.where(pc.equal(parts.field("sign"), "-").to_numpy(zero_copy_only=False), -1, 1)
    off_h, off_m = number("oh"), number("om")
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_ok = (month >= 1) & (month <= 12)
    last_day = np.where(month_ok, _MONTH_DAYS[np.clip(month, 0, 12)], 0) + ((month == 2) & leap)
    valid = (
        month_ok & (day >= 1) & (day <= last_day)
        & (hour <= 23) & (minute <= 59) & (second <= 59)
        & (off_m <= 59) & (off_h * 60 + off_m <= 18 * 60)
    )  # fmt: skip
    days = _days_from_civil(year, month, day)
    seconds = days * 86_400 + hour * 3600 + minute * 60 + second - sign * (off_h * 3600 + off_m * 60)
    micros = seconds * 1_000_000 + fraction
    values = np.zeros(n, dtype=np.int64)
    known = np.zeros(n, dtype=bool)
    rows = np.flatnonzero(matched)
    values[rows] = micros
    known[rows] = valid
    out = pd.array(values, dtype="Int64")
    out[~known] = pd.NA
    return pd.Series(out, index=texts.index)


# rule_spec.TIMESTAMP_SHAPE with its parts named.
_TIMESTAMP_GROUPS = (
    r"^(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})[T ](?P<h>\d{2}):(?P<mi>\d{2})"
    r"(?::(?P<s>\d{2})(?:\.(?P<f>\d{1,9}))?)?(?P<z>Z|(?P<sign>[+-])(?P<oh>\d{2}):?(?P<om>\d{2})?)?$"
)


def date_days(text: str) -> int | None:
    """ISO date text -> days since the epoch; the proleptic calendar of Java's LocalDate (year 0 too)."""
    if not _DATE.match(text):
        return None
    year, month, day = (int(part) for part in text.split("-"))
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not 1 <= month <= 12 or not 1 <= day <= _MONTH_DAYS[month] + (month == 2 and leap):
        return None
    return int(_days_from_civil(np.array([year]), np.array([month]), np.array([day]))[0])


@dataclass(frozen=True)
class ColumnType:
    """A declared type and how text parses as it."""

    name: str
    kind: str
    precision: int = 0
    scale: int = 0

    @classmethod
    def of(cls, type_name: str) -> ColumnType:
        kind, precision, scale = type_parse(type_name)
        return cls(type_name, kind, precision, scale)

    @property
    def dtype(self) -> Any:
        return {"int": "Int64", "long": "Int64", "timestamp": "Int64", "date": "Int64"}.get(
            self.kind, "boolean" if self.kind == "boolean" else object
        )

    def parser(self) -> Callable[[str], Any]:
        if self.kind == "string":
            return lambda text: text
        if self.kind in ("int", "long"):
            return lambda text: _integer(text, self.kind)
        if self.kind == "decimal":
            shape = re.compile(decimal_shape(self.scale), re.ASCII)
            return lambda text: decimal_of(text, self.precision, self.scale, shape)
        if self.kind == "timestamp":
            return timestamp_micros
        if self.kind == "date":
            return date_days
        return lambda text: _BOOLEANS.get(text.lower())

    def literal(self, text: str) -> Any:
        """A rule's bound or listed value (rule_spec.value_text) as a typed value, as Spark casts it."""
        if self.kind == "timestamp":
            return timestamp_micros(text.replace("+00:00", "Z"))
        if self.kind == "decimal":
            return decimal_of(text, self.precision, self.scale)
        return self.parser()(text)


# --- checks --------------------------------------------------------------------------------------------


@dataclass
class Checks:
    """The checks of a frame in the order Spark appends their codes: (flag column, code, severity).

    Built when the job is planned, the same for every partition, so each partition only fills the flag
    columns."""

    entries: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, code: str, severity: str = "reject") -> str:
        column = f"_c{len(self.entries)}"
        self.entries.append((column, code, severity))
        return column

    def of(self, severity: str) -> list[tuple[str, str]]:
        return [(column, code) for column, code, sev in self.entries if sev == severity]

    def flagged(self, df: pd.DataFrame, severity: str) -> np.ndarray:
        columns = [column for column, _ in self.of(severity)]
        if not columns:
            return np.zeros(len(df), dtype=bool)
        return df[columns].to_numpy(dtype=bool).any(axis=1)

    def rejected(self, df: pd.DataFrame) -> np.ndarray:
        return self.flagged(df, "reject")

    def accepted(self, df: pd.DataFrame) -> np.ndarray:
        return ~df[DUP_COL].to_numpy(dtype=bool) & ~self.flagged(df, "filter") & ~self.rejected(df)

    def quarantined(self, df: pd.DataFrame) -> np.ndarray:
        return ~df[DUP_COL].to_numpy(dtype=bool) & ~self.flagged(df, "filter") & self.rejected(df)

    def reasons(self, df: pd.DataFrame) -> list[list[str]]:
        """Each row's reject codes in order (for the rows of ``df``: call it on the quarantined alone)."""
        codes = self.of("reject")
        if not codes:
            return [[] for _ in range(len(df))]
        flags = df[[c for c, _ in codes]].to_numpy(dtype=bool)
        names = [code for _, code in codes]
        return [[names[i] for i in np.flatnonzero(row)] for row in flags]


def flag(values: pd.Series | np.ndarray) -> np.ndarray:
    """A condition as a flag: unknown (NA) adds no code, as Spark's ``when(cond, code)``."""
    if isinstance(values, pd.Series):
        if values.dtype == object:
            values = values.astype("boolean")
        return values.fillna(False).to_numpy(dtype=bool)
    return np.asarray(values, dtype=bool)


def raw_columns(df: pd.DataFrame) -> list[str]:
    """The staged columns a frame carries as ``_raw.<name>``, sorted by name (Spark's ``_raw`` struct)."""
    return sorted(c[len(RAW_PREFIX) :] for c in df.columns if c.startswith(RAW_PREFIX))


# --- validation ------------------------------------------------------------------------------------------


def rule_failed(rule: Rule, cleaned: pd.Series, typed: pd.Series, ctype: ColumnType) -> np.ndarray:
    """spark_jobs.quality.rule_failed for pandas: True where the row-level rule is broken (``when`` aside)."""
    check = rule["check"]
    if check == "required":
        return cleaned.isna().to_numpy()
    if check == "pattern":
        anchored = rule["pattern"] if rule.get("match") == "search" else f"^(?:{rule['pattern']})$"
        pattern = java_regex(anchored)
        matched = per_value(cleaned, lambda text: pattern.search(text) is not None)
        known = cleaned.notna().to_numpy()
        hit = flag(matched)
        return known & (hit if rule.get("negate") else ~hit)
    known = typed.notna().to_numpy()
    if check == "range":
        low = ctype.literal(str(rule["min"])) if rule.get("min") is not None else None
        high = ctype.literal(str(rule["max"])) if rule.get("max") is not None else None

        def outside(value: Any) -> bool:
            below = low is not None and (value <= low if rule.get("exclusive_min") else value < low)
            above = high is not None and (value >= high if rule.get("exclusive_max") else value > high)
            return below or above

        return known & flag(per_value(typed, outside))
    if check in ("allowed", "not_allowed"):
        values = [ctype.literal(str(v)) for v in rule["values"]]
        if rule.get("ignore_case") and ctype.kind == "string":
            listed_values = {v.lower() for v in values if v is not None}
            listed = per_value(typed, lambda value: value.lower() in listed_values)
        else:
            known_values = {v for v in values if v is not None}
            listed = per_value(typed, lambda value: value in known_values)
        hit = flag(listed)
        return known & (~hit if check == "allowed" else hit)
    if check == "max_length":
        form = LOADED_FORMS[rule["as_loaded"]] if rule.get("as_loaded") else None
        most = rule["max_length"]
        too_long = per_value(cleaned, lambda text: len(form(text) if form else text) > most)
        return cleaned.notna().to_numpy() & flag(too_long)
    if check == "digits":
        places = rule["decimal_places"]
        limit = Decimal(10) ** (rule["max_digits"] - places)
        quantum = Decimal(1).scaleb(-places)

        def too_big(value: Any) -> bool:
            return abs(Decimal(value).quantize(quantum, rounding=ROUND_HALF_UP, context=EXACT)) >= limit

        return known & flag(per_value(typed, too_big))
    raise ValueError(f"rule {rule.get('code')!r}: {check!r} is not a row-level check")


def _kleene(values: np.ndarray, known: np.ndarray) -> pd.Series:
    out = pd.array(values.astype(bool), dtype="boolean")
    out[~known] = pd.NA
    return pd.Series(out)


def _like_regex(pattern: str) -> re.Pattern[str]:
    out, escaped = [], False
    for char in pattern:
        if escaped:
            out.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%":
            out.append(".*")
        elif char == "_":
            out.append(".")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def condition_values(condition: Condition, df: pd.DataFrame, types: Mapping[str, ColumnType]) -> pd.Series:
    """A parsed ``when`` condition over the typed columns, in SQL's three-valued logic (NA: unknown)."""
    if isinstance(condition, Not):
        return ~condition_values(condition.operand, df, types)
    if isinstance(condition, And | Or):
        parts = [condition_values(c, df, types) for c in condition.operands]
        combined = parts[0]
        for part in parts[1:]:
            combined = (combined & part) if isinstance(condition, And) else (combined | part)
        return combined
    series = df[condition.column].reset_index(drop=True)
    known = series.notna().to_numpy()
    if isinstance(condition, IsNull):
        present = known if condition.negate else ~known
        return pd.Series(pd.array(present, dtype="boolean"))
    if isinstance(condition, Like):
        pattern = _like_regex(condition.pattern)
        matched = flag(per_value(series, lambda text: pattern.fullmatch(text) is not None))
        return _kleene(~matched if condition.negate else matched, known)
    ctype = types[condition.column]
    if isinstance(condition, In):
        listed = [ctype.literal(v) for v in condition.values]
        hit = flag(per_value(series, lambda value: value in listed))
        # x IN (..., NULL) is unknown where x is not found.
        unknown = ~known | (~hit if any(v is None for v in listed) else np.zeros(len(series), dtype=bool))
        return _kleene(~hit if condition.negate else hit, ~unknown)
    if isinstance(condition, Compare):
        literal = ctype.literal(condition.value)
        if literal is None:
            return _kleene(np.zeros(len(series), dtype=bool), np.zeros(len(series), dtype=bool))
        compare = _COMPARE["!=" if condition.op == "<>" else condition.op]
        return _kleene(flag(per_value(series, lambda value: compare(value, literal))), known)
    raise TypeError(f"not a condition: {condition!r}")


def rule_when(rule: Rule, df: pd.DataFrame, types: Mapping[str, ColumnType]) -> np.ndarray:
    """Where the rule is checked: TRUE of its ``when`` (false where false or unknown); everywhere without."""
    if not rule.get("when"):
        return np.ones(len(df), dtype=bool)
    names = {name: t.name for name, t in types.items()}
    try:
        condition = condition_parse(rule["when"], names)
    except ValueError as exc:
        raise ValueError(f"rule {rule.get('code')!r}: when {rule['when']!r}: {exc}") from None
    return flag(condition_values(condition, df, types))


@dataclass(frozen=True)
class Validation:
    """How one dataset is validated: its declared types and the checks its rows get, planned once."""

    dataset: str
    types: dict[str, ColumnType]
    required: dict[str, bool]
    rules: tuple[Rule, ...]
    checks: Checks
    # (rule, flag column) of the row-level rules, in declaration order.
    row_rules: tuple[tuple[Rule, str], ...]
    column_checks: tuple[tuple[str, str, str], ...]  # (column, kind "missing"/"invalid", flag column)

    @classmethod
    def plan(
        cls, columns_spec: Mapping[str, Mapping[str, Any]], dataset: str, rules: Sequence[Rule]
    ) -> Validation:
        types = {}
        for name, col_spec in columns_spec.items():
            try:
                types[name] = ColumnType.of(str(col_spec.get("type", "string")))
            except ValueError as exc:
                raise ValueError(f"{dataset}.{name}: {exc}") from None
        checks = Checks()
        column_checks = []
        required = {name: bool(columns_spec[name].get("required", False)) for name in types}
        for name in types:
            if required[name]:
                column_checks.append((name, "missing", checks.add(f"missing_{name}")))
            column_checks.append((name, "invalid", checks.add(f"invalid_{name}")))
        row_rules = []
        for rule in rules:
            if rule["check"] not in ROW_CHECKS:
                continue
            if rule["column"] not in types:
                raise ValueError(
                    f"{dataset}: rule {rule['code']!r} checks undeclared column {rule['column']!r}"
                )
            row_rules.append((rule, checks.add(rule["code"], rule.get("severity", "reject"))))
        return cls(dataset, types, required, tuple(rules), checks, tuple(row_rules), tuple(column_checks))

    def validate(self, raw: pd.DataFrame) -> pd.DataFrame:
        """Staged text (object columns, None for a missing value: what Arrow's strings give) -> typed
        columns (declared order), ``_raw.<col>`` of every staged column, and the flags of the column checks
        and row-level rules (spark_jobs.quality.cast_and_validate)."""
        raw = raw.reset_index(drop=True)
        n = len(raw)
        out: dict[str, Any] = {}
        cleaned: dict[str, pd.Series] = {}
        for name, ctype in self.types.items():
            staged = raw[name] if name in raw.columns else pd.Series([None] * n, dtype=object)
            cleaned[name], out[name] = clean_and_parse(staged, ctype)
        for name in raw.columns:
            out[RAW_PREFIX + name] = raw[name]
        frame = pd.DataFrame(out, index=pd.RangeIndex(n))
        for name, kind, column in self.column_checks:
            missing = cleaned[name].isna().to_numpy()
            frame[column] = missing if kind == "missing" else (~missing & frame[name].isna().to_numpy())
        for rule, column in self.row_rules:
            name = rule["column"]
            failed = rule_failed(rule, cleaned[name], frame[name], self.types[name])
            frame[column] = rule_when(rule, frame, self.types) & failed
        return frame


# --- duplicates and unique rules -------------------------------------------------------------------------


def sort_codes(series: pd.Series) -> np.ndarray:
    """Int codes that sort as the values do (strings by code point, i.e. UTF-8 bytes as Spark compares
    them); a missing value is -1, below every value, as Spark orders a null field of a struct."""
    codes, _ = pd.factorize(series, sort=True, use_na_sentinel=True)
    return codes.astype(np.int64)


def group_ids(columns: Sequence[pd.Series | np.ndarray]) -> np.ndarray:
    """One id per distinct combination of the columns (missing values form groups of their own)."""
    if not columns:
        return np.zeros(0, dtype=np.int64)
    frame = pd.DataFrame({i: pd.Series(c).reset_index(drop=True) for i, c in enumerate(columns)})
    return frame.groupby(list(frame.columns), dropna=False, sort=False).ngroup().to_numpy()


def row_numbers(groups: np.ndarray, order: Sequence[np.ndarray]) -> np.ndarray:
    """1-based row_number() within each group, rows ordered by ``order`` (codes, first key first)."""
    n = len(groups)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    sequence = np.lexsort([*reversed(list(order)), groups]) if order else np.lexsort([groups])
    ranked = np.empty(n, dtype=np.int64)
    sorted_groups = groups[sequence]
    starts = np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]
    positions = np.arange(n)
    first = np.maximum.accumulate(np.where(starts, positions, 0))
    ranked[sequence] = positions - first + 1
    return ranked


def raw_codes(df: pd.DataFrame, descending: bool) -> list[np.ndarray]:
    """The staged row (``_raw``, fields by name) as sort codes, ascending or descending (nulls first
    ascending, last descending: a null field is the smallest)."""
    return [(-1 if descending else 1) * sort_codes(df[RAW_PREFIX + c]) for c in raw_columns(df)]


def raw_group(df: pd.DataFrame) -> list[pd.Series]:
    return [df[RAW_PREFIX + c] for c in raw_columns(df)]


def mark_duplicates(df: pd.DataFrame, key: Sequence[str], version_column: str | None = None) -> pd.DataFrame:
    """``_dup``: true for every row but the one kept per key (spark_jobs.quality.mark_duplicates): the
    latest version, ties by the staged text descending; a row with an unparsed key or version competes
    only with identical copies of itself."""
    if not key:
        raise ValueError("a de-duplication key needs at least one column")
    df = df.copy()
    eligible = np.ones(len(df), dtype=bool)
    for column in [*key, *([version_column] if version_column else [])]:
        eligible &= df[column].notna().to_numpy()
    partition: list[pd.Series | np.ndarray] = [eligible]
    partition += [
        df[k].where(eligible, None) if df[k].dtype == object else df[k].where(eligible) for k in key
    ]
    partition += [s.where(~eligible, None) for s in raw_group(df)]
    groups = group_ids(partition)
    # Only keys with more than one row need ordering.
    sizes = np.bincount(groups) if len(groups) else np.zeros(0, dtype=np.int64)
    shared = sizes[groups] > 1 if len(groups) else np.zeros(0, dtype=bool)
    dup = np.zeros(len(df), dtype=bool)
    if shared.any():
        sub = df[shared]
        order = [-sort_codes(sub[version_column])] if version_column else []
        order += raw_codes(sub, descending=True)
        dup[shared] = row_numbers(groups[shared], order) > 1
    df[DUP_COL] = dup
    return df


def unique_failed(df: pd.DataFrame, rule: Rule, checked: np.ndarray) -> np.ndarray:
    """Rows of a ``unique`` rule's conflict among the kept rows (spark_jobs.quality.apply_unique_rules)."""
    columns = list(rule["columns"])
    kept = ~df[DUP_COL].to_numpy(dtype=bool)
    known = np.ones(len(df), dtype=bool)
    for column in columns:
        known &= df[column].notna().to_numpy()
    groups = group_ids([df[DUP_COL].to_numpy(), checked, *[df[c] for c in columns]])
    counts = np.bincount(groups)[groups] if len(groups) else np.zeros(0, dtype=np.int64)
    return kept & checked & known & (counts > 1)


# --- counts and quarantine -------------------------------------------------------------------------------


def row_counts(df: pd.DataFrame, checks: Checks) -> dict[str, Any]:
    """spark_jobs.quality.row_counts of a prepared frame: counts by status, filtered by first code,
    warnings of loaded rows, and every code of each kept row (``rule_failures``)."""
    dup = df[DUP_COL].to_numpy(dtype=bool)
    filtered = checks.flagged(df, "filter") & ~dup
    rejected = checks.rejected(df) & ~dup & ~filtered
    loaded = ~dup & ~filtered & ~rejected
    counts: dict[str, Any] = {
        "rows_in": len(df),
        "rejected": int(rejected.sum()),
        "duplicates": int(dup.sum()),
        "rows_out": int(loaded.sum()),
    }
    first_filter: dict[str, int] = {}
    taken = np.zeros(len(df), dtype=bool)
    for column, code in checks.of("filter"):
        hit = filtered & ~taken & df[column].to_numpy(dtype=bool)
        taken |= hit
        if hit.any():
            first_filter[code] = first_filter.get(code, 0) + int(hit.sum())
    counts["filtered"] = dict(sorted(first_filter.items()))
    counts["warnings"] = _codes_count(df, checks.of("warn"), loaded)
    every = checks.of("filter") + checks.of("reject") + checks.of("warn")
    counts["rule_failures"] = _codes_count(df, every, ~dup)
    return counts


def _codes_count(df: pd.DataFrame, codes: Iterable[tuple[str, str]], rows: np.ndarray) -> dict[str, int]:
    """Per code, the rows among ``rows`` that have it (a code with several flags counts a row once)."""
    by_code: dict[str, np.ndarray] = {}
    for column, code in codes:
        hit = df[column].to_numpy(dtype=bool)
        by_code[code] = by_code[code] | hit if code in by_code else hit
    counted = {code: int((hit & rows).sum()) for code, hit in by_code.items()}
    return dict(sorted((code, n) for code, n in counted.items() if n))


def merge_counts(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The counts of a dataset from the counts of its partitions."""
    total: dict[str, Any] = {"rows_in": 0, "rejected": 0, "duplicates": 0, "rows_out": 0}
    maps: dict[str, dict[str, int]] = {"filtered": {}, "warnings": {}, "rule_failures": {}}
    for part in parts:
        for name in total:
            total[name] += part[name]
        for name, counted in maps.items():
            for code, n in part[name].items():
                counted[code] = counted.get(code, 0) + n
    return total | {name: dict(sorted(counted.items())) for name, counted in maps.items()}


def hmac_hex(key: bytes) -> Callable[[str], str]:
    """HMAC-SHA256 of a text's UTF-8 bytes, lower-case hex: the pads the Spark job builds its HMAC from."""
    inner_pad, outer_pad = hmac_pads(key)

    def digest(text: str) -> str:
        inner = hashlib.sha256(inner_pad + text.encode("utf-8")).digest()
        return hashlib.sha256(outer_pad + inner).hexdigest()

    return digest


# A \\u00xx escape of json.dumps (not an escaped backslash followed by "u00xx").
_LOWER_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u00([0-9a-f]{2})")


def spark_json(record: Mapping[str, Any]) -> str:
    """A record as Spark's ``to_json`` writes it: keys in order, no spaces, non-ASCII as is, control
    characters without a short escape as ``\\u00XX`` in upper case (Jackson's), nulls kept."""
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    return _LOWER_ESCAPE.sub(lambda m: f"{m.group(1)}\\u00{m.group(2).upper()}", text)


_CODE_COLUMN = re.compile(r"^(?:missing|invalid)_(.+)$", re.DOTALL)


def quarantine_records(
    df: pd.DataFrame,
    reasons: Sequence[Sequence[str]],
    dataset: str,
    reason_columns: Mapping[str, str] | None = None,
    rules: Sequence[Rule] = (),
    masks: Mapping[str, Callable[[str], str | None]] | None = None,
) -> pd.DataFrame:
    """spark_jobs.quality.quarantine_rows for the rejected rows of ``df`` and their ``reasons``: the
    quarantine columns, with the same message, masked JSON record and fingerprint."""
    reason_columns = {**(reason_columns or {}), **rule_reason_columns(rules)}
    notes = {r["code"]: rule_note(r) for r in rules if r.get("message") or r.get("when")}
    masks = masks or {}
    fields = raw_columns(df)
    lengths = {
        r["code"]: (r["column"], LOADED_FORMS[r["as_loaded"]] if r.get("as_loaded") else None)
        for r in rules
        if r["check"] == "max_length" and r["column"] in fields
    }
    staged = {name: df[RAW_PREFIX + name].tolist() for name in fields}
    shown = {
        name: (per_value(pd.Series(values, dtype=object), masks[name]).tolist() if name in masks else values)
        for name, values in staged.items()
    }
    records = []
    for i, codes in enumerate(reasons):
        record = {name: shown[name][i] for name in fields}
        parts = []
        for code in codes:
            text = code
            if fields:
                match = _CODE_COLUMN.match(code)
                column = reason_columns.get(code) or (match.group(1) if match else None)
                if column:
                    value = record.get(column)
                    text += f": {column}=" + (f"'{value}'" if value is not None else "null")
            if code in notes:
                if code in lengths:
                    column, form = lengths[code]
                    cleaned = clean_value(staged[column][i], collapse=True)
                    if cleaned is None:  # Spark's concat of a null length: no note at all
                        parts.append(text)
                        continue
                    found = len(form(cleaned) if form else cleaned)
                    text += f" ({reason_columns[code]} is {found} characters, {notes[code]})"
                else:
                    text += f" ({notes[code]})"
            parts.append(text)
        raw_record = spark_json(record)
        records.append(
            (dataset, codes[0] if codes else None, "; ".join(parts), raw_record,
             hashlib.sha256(raw_record.encode("utf-8")).hexdigest())
        )  # fmt: skip
    return pd.DataFrame.from_records(
        records, columns=["dataset", "reason_code", "message", "raw_record", "record_fingerprint"]
    )
