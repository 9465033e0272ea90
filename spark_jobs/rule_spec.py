"""Quality rules as a pipeline declares them: the checks and their keys, values typed by their column, and
the ``when`` condition language. Meaning lives here once; engines compile it.

Plain Python (no pyspark, no Django), so both sides import it: the pipeline loader (``etlcore.config``)
validates a rule with it when the file is read, and a job engine (:mod:`spark_jobs.quality` for Spark)
compiles the same declarations into its own expressions. docs/configuration.md, "Quality rules".

A ``when`` condition is a small expression over the dataset's declared columns, like the ``where`` of a
dbt test or Great Expectations' ``row_condition``, but parsed here, never evaluated as code or SQL::

    condition  := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | "(" condition ")" | predicate
    predicate  := column ("=" | "!=" | "<>" | "<" | "<=" | ">" | ">=") literal
                | column ["not"] "in" "(" literal ("," literal)* ")"
                | column "is" ["not"] "null"
                | column ["not"] "like" 'text'
    literal    := 'text' ('' inside is a quote) | number | true | false

Keywords are case-insensitive; a column is a declared column's name. Every literal is checked against
its column's declared type and kept as exact text (a decimal never becomes a float): numbers for int,
long and decimal columns, text for string, date ('2026-11-01') and timestamp columns, true / false for
boolean ones. ``<``, ``<=``, ``>``, ``>=`` compare numbers, dates and timestamps; ``like`` (SQL: ``%``
any text, ``_`` one character, ``\\`` escapes) takes text columns. Text compares with the cleaned value
(trimmed, inner blanks collapsed), case-sensitive. As in SQL, a comparison with an empty (null) value is
unknown, and ``not`` of unknown is unknown: a rule is checked only where its condition is TRUE.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

# A rule as the job spec carries it (etlcore.config.RuleConfig.spec()): code, check, severity, column /
# columns, and the check's own keys (min, max, values, pattern, dataset, key, message).
Rule = Mapping[str, Any]

# The keys every rule takes, and each check's own (docs/configuration.md, "Quality rules").
RULE_COMMON_KEYS = ("code", "check", "severity", "message", "when")
RULE_CHECKS: dict[str, tuple[str, ...]] = {
    "required": ("column",),
    "range": ("column", "min", "max", "exclusive_min", "exclusive_max"),
    "allowed": ("column", "values", "ignore_case"),
    "not_allowed": ("column", "values", "ignore_case"),
    "pattern": ("column", "pattern", "match", "negate"),
    "unique": ("columns",),
    "reference": ("column", "dataset", "key"),
}
RULE_SEVERITIES = ("reject", "warn", "filter")
# `pattern`: the whole value must match ("full", the default), or a part of it ("search").
PATTERN_MATCHES = ("full", "search")

# Checks an engine evaluates on each row alone. ``max_length`` and ``digits`` are the implicit rules of
# the warehouse's limits (constraint_rules), not declared in a pipeline.
ROW_CHECKS = ("required", "range", "allowed", "not_allowed", "pattern", "max_length", "digits")

# The declared column types, and what text parses as each: a cast alone is too lenient ("2026" is a valid
# timestamp to Spark), so an engine checks the shape first.
SIMPLE_TYPES = ("string", "int", "long", "timestamp", "date", "boolean")
_DECIMAL_TYPE = re.compile(r"^decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
INT_RANGES = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
TIMESTAMP_SHAPE = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)?$"
DATE_SHAPE = r"^\d{4}-\d{2}-\d{2}$"


def decimal_shape(scale: int) -> str:
    """Plain notation only, and no more significant decimals than the scale: a price must not be rounded
    silently by the cast ("1e2" and "0.33335" for decimal(18,4) are invalid; "0.333500" is fine)."""
    return rf"^[+-]?(?=\.?\d)\d*(\.\d{{0,{scale}}}0*)?$"


def type_parse(type_name: str) -> tuple[str, int, int]:
    """A declared type as (kind, precision, scale): ``decimal(18,4)`` -> ("decimal", 18, 4), ``int`` ->
    ("int", 0, 0). Raises ValueError for a type no engine knows."""
    name = type_name.strip().lower()
    if name in SIMPLE_TYPES:
        return name, 0, 0
    match = _DECIMAL_TYPE.match(name)
    if match:
        return "decimal", int(match.group(1)), int(match.group(2))
    raise ValueError(f"unsupported column type {type_name!r}")


COMPARISONS = ("=", "!=", "<>", "<", "<=", ">", ">=")
ORDERED_KINDS = ("int", "long", "decimal", "date", "timestamp")
# The literal token each column kind takes (the others take 'text').
_LITERAL_TOKENS = {"int": "number", "long": "number", "decimal": "number", "boolean": "keyword"}
_KEYWORDS = ("and", "or", "not", "in", "is", "null", "like", "true", "false")
_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op><=|>=|!=|<>|=|<|>)|(?P<punct>[(),]))"
)
_MAX_CONDITION = 2000  # characters: a condition is a line of configuration, not a program


def column_kind(col_type: str) -> str:
    """``decimal(18,4)`` -> ``decimal``; other declared types are their own kind."""
    return col_type.strip().lower().split("(")[0]


def value_text(value: Any, col_type: str) -> str:
    """A rule's bound or listed value checked against the column's declared type, as the exact text an
    engine casts to that type. Raises ValueError saying what is wrong."""
    kind = column_kind(col_type)
    text = value.isoformat() if isinstance(value, date | datetime) else value
    try:
        if kind == "string":
            if not isinstance(value, str):
                raise ValueError("expected text")
            return value
        if isinstance(value, bool) != (kind == "boolean"):
            raise ValueError(f"expected a {kind} value")
        if kind == "boolean":
            return "true" if value else "false"
        if kind in ("int", "long"):
            if isinstance(value, float):
                raise ValueError("expected a whole number")
            return str(int(str(value).strip()))
        if kind == "decimal":
            number = Decimal(str(value).strip())
            if not number.is_finite():
                raise ValueError("expected a finite number")
            precision, scale = (int(x) for x in re.findall(r"\d+", col_type))
            exponent = number.normalize().as_tuple().exponent
            if isinstance(exponent, int) and -exponent > scale:
                raise ValueError(f"more than {scale} decimals")
            if abs(number) >= Decimal(10) ** (precision - scale):
                raise ValueError(f"does not fit {col_type}")
            return format(number, "f")
        if kind == "date":
            return date.fromisoformat(str(text)).isoformat()
        if kind == "timestamp":
            return datetime.fromisoformat(str(text)).isoformat()
    except (ValueError, InvalidOperation) as exc:
        raise ValueError(f"{value!r} is not a valid {col_type} value ({exc})") from None
    raise ValueError(f"no values of type {col_type}")


# --- the condition tree: what an engine compiles ------------------------------------------------------


@dataclass(frozen=True)
class Compare:
    column: str
    op: str  # one of COMPARISONS, "<>" read as "!="
    value: str  # value_text of the column's type


@dataclass(frozen=True)
class In:
    column: str
    values: tuple[str, ...]
    negate: bool = False


@dataclass(frozen=True)
class IsNull:
    column: str
    negate: bool = False


@dataclass(frozen=True)
class Like:
    column: str
    pattern: str  # SQL LIKE: % any text, _ one character, \ escapes the next
    negate: bool = False


@dataclass(frozen=True)
class Not:
    operand: Condition


@dataclass(frozen=True)
class And:
    operands: tuple[Condition, ...]


@dataclass(frozen=True)
class Or:
    operands: tuple[Condition, ...]


Condition = Compare | In | IsNull | Like | Not | And | Or


def condition_columns(condition: Condition) -> set[str]:
    """The columns a condition reads."""
    if isinstance(condition, Not):
        return condition_columns(condition.operand)
    if isinstance(condition, And | Or):
        return set().union(*(condition_columns(c) for c in condition.operands))
    return {condition.column}


def condition_value_columns(condition: Condition) -> set[str]:
    """The columns whose values a condition compares (an ``is [not] null`` reads only presence)."""
    if isinstance(condition, Not):
        return condition_value_columns(condition.operand)
    if isinstance(condition, And | Or):
        return set().union(*(condition_value_columns(c) for c in condition.operands))
    return set() if isinstance(condition, IsNull) else {condition.column}


def condition_parse(text: str, types: Mapping[str, str]) -> Condition:
    """Parse a ``when`` condition against the declared columns (name -> declared type).

    Raises ValueError naming the problem and where it is: a syntax error, an unknown column, a literal of
    the wrong type, an operator the column's type does not take.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a condition must be non-empty text")
    if len(text) > _MAX_CONDITION:
        raise ValueError(f"a condition holds at most {_MAX_CONDITION} characters")
    return _Parser(text, types).parse()


@dataclass(frozen=True)
class _Token:
    kind: str  # string, number, name, keyword, op, punct, end
    text: str
    at: int  # 1-based character position, for messages


def _tokens(text: str) -> list[_Token]:
    tokens = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match:
            start = len(text) - len(text[pos:].lstrip())
            if text[start] == "'":
                raise ValueError(f"the text opened at character {start + 1} is not closed with '")
            raise ValueError(f"unexpected {text[start]!r} at character {start + 1}")
        kind = match.lastgroup or ""
        word = match.group(kind)
        at = match.start(kind) + 1
        if kind == "name" and word.lower() in _KEYWORDS:
            kind, word = "keyword", word.lower()
        tokens.append(_Token(kind, word, at))
        pos = match.end()
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


class _Parser:
    """Recursive descent over the tokens; one method per grammar rule of the module docstring."""

    def __init__(self, text: str, types: Mapping[str, str]) -> None:
        self.tokens = _tokens(text)
        self.pos = 0
        self.types = types

    def parse(self) -> Condition:
        condition = self.disjunction()
        if self.peek().kind != "end":
            self.fail("expected `and`, `or` or the end")
        return condition

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def accept(self, kind: str, text: str) -> bool:
        token = self.peek()
        if token.kind == kind and token.text == text:
            self.pos += 1
            return True
        return False

    def expect(self, kind: str, text: str) -> None:
        if not self.accept(kind, text):
            self.fail(f"expected `{text}`")

    def fail(self, expected: str) -> NoReturn:
        token = self.peek()
        found = "the end" if token.kind == "end" else repr(token.text)
        raise ValueError(f"{expected}, found {found} at character {token.at}")

    def disjunction(self) -> Condition:
        operands = [self.conjunction()]
        while self.accept("keyword", "or"):
            operands.append(self.conjunction())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def conjunction(self) -> Condition:
        operands = [self.negation()]
        while self.accept("keyword", "and"):
            operands.append(self.negation())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def negation(self) -> Condition:
        if self.accept("keyword", "not"):
            return Not(self.negation())
        if self.accept("punct", "("):
            inner = self.disjunction()
            self.expect("punct", ")")
            return inner
        return self.predicate()

    def predicate(self) -> Condition:
        token = self.peek()
        if token.kind != "name":
            self.fail("expected a column name")
        self.take()
        column = token.text
        if column not in self.types:
            raise ValueError(
                f"unknown column {column!r} at character {token.at} (declared: {', '.join(self.types)})"
            )
        col_type = self.types[column]
        kind = column_kind(col_type)
        if self.accept("keyword", "is"):
            negate = self.accept("keyword", "not")
            self.expect("keyword", "null")
            return IsNull(column, negate)
        negate = self.accept("keyword", "not")
        if self.accept("keyword", "in"):
            self.expect("punct", "(")
            values = [self.literal(column, col_type)]
            while self.accept("punct", ","):
                values.append(self.literal(column, col_type))
            self.expect("punct", ")")
            return In(column, tuple(values), negate)
        if self.accept("keyword", "like"):
            if kind != "string":
                raise ValueError(
                    f"`like` needs a text column; {column} is {col_type} (at character {token.at})"
                )
            pattern = self.peek()
            if pattern.kind != "string":
                self.fail("expected a 'text' pattern after `like`")
            self.take()
            return Like(column, _unquote(pattern.text), negate)
        if negate:
            self.fail("expected `in` or `like` after `not`")
        op = self.peek()
        if op.kind != "op":
            self.fail(
                f"expected a comparison ({', '.join(COMPARISONS)}), `in`, `is` or `like` after {column}"
            )
        self.take()
        if op.text not in ("=", "!=", "<>") and kind not in ORDERED_KINDS:
            raise ValueError(
                f"{op.text!r} compares numbers, dates and timestamps; {column} is {col_type} "
                f"(at character {op.at}): use =, !=, in or like"
            )
        return Compare(column, "!=" if op.text == "<>" else op.text, self.literal(column, col_type))

    def literal(self, column: str, col_type: str) -> str:
        """The next literal as value_text of the column's type; its token kind must suit the type."""
        token = self.peek()
        kind = column_kind(col_type)
        wanted = _LITERAL_TOKENS.get(kind, "string")
        if token.kind == "keyword" and token.text in ("true", "false"):
            found = "keyword"
        elif token.kind in ("string", "number"):
            found = token.kind
        else:
            self.fail(f"expected a value for {column}")
        if found != wanted:
            shown = {"number": "a number", "string": "'text'", "keyword": "true or false"}[wanted]
            raise ValueError(
                f"{token.text} is not a value of {column} ({col_type}): write {shown} "
                f"(at character {token.at})"
            )
        self.take()
        value: Any = token.text == "true" if found == "keyword" else token.text
        if found == "string":
            value = _unquote(token.text)
        try:
            return value_text(value, col_type)
        except ValueError as exc:
            raise ValueError(f"{exc} for {column} at character {token.at}") from None


def _unquote(token: str) -> str:
    return token[1:-1].replace("''", "'")


# --- implicit rules and quarantine wording, the same in every engine ---------------------------------


def _tightest(limits: Sequence[Mapping[str, Any]], key: str, size: Callable[[Mapping[str, Any]], Any]):
    """The limit of the smallest ``size`` among those that have ``key`` (the first on a tie), or None."""
    having = [c for c in limits if c.get(key) is not None]
    return min(having, key=size) if having else None


def _fits(type_name: str, digits: int, places: int) -> bool:
    """Whether every value of the spec type fits decimal(digits + places, places) as it is."""
    kind, precision, scale = type_parse(type_name)
    if kind == "decimal":
        return precision - scale <= digits and scale <= places
    return kind in INT_RANGES and len(str(INT_RANGES[kind][0])) - 1 <= digits


def constraint_rules(
    columns_spec: Mapping[str, Mapping[str, Any]],
    limits: Mapping[str, Sequence[Mapping[str, Any]]],
    loaded_forms: Mapping[str, str] | None = None,
) -> list[Rule]:
    """Implicit reject rules that stop, in the validation pass, every row the warehouse would refuse.

    ``limits`` maps a declared column to what the warehouse accepts in each column it fills (a
    ``constraints`` entry of the job spec: ``column`` (the warehouse's name), ``nullable``,
    ``max_length``, ``max_digits`` + ``decimal_places``, ``min`` / ``max``); the tightest applies:

    - ``missing_<col>`` (``required``) where a column that takes no NULL is filled by a column not
      declared required (a declared one is already checked under that code);
    - ``too_long_<col>``: more characters than ``max_length``, counted on the cleaned text as loaded
      (``loaded_forms``: column -> the name of a form an engine applies, e.g. ``"upper"``);
    - ``too_many_digits_<col>``: a number that, rounded to the decimal places, has more integer digits
      than the decimal column holds (only where the declared type can have one);
    - ``out_of_range_<col>``: an integer outside the column's range (only where the declared type can
      hold one).
    """
    loaded_forms = loaded_forms or {}
    rules: list[Rule] = []
    for name, col_spec in columns_spec.items():
        columns = limits.get(name) or ()
        type_name = str(col_spec.get("type", "string")).strip().lower()
        is_text = type_parse(type_name)[0] == "string"
        not_null = next((c for c in columns if not c.get("nullable", True)), None)
        if not_null and not col_spec.get("required"):
            rules.append(
                _implicit("missing", name, "required", not_null, "the warehouse holds no empty value")
            )
        text = _tightest(columns, "max_length", lambda c: c["max_length"])
        if text and is_text:
            most = text["max_length"]
            form = {"as_loaded": loaded_forms[name]} if name in loaded_forms else {}
            message = f"the warehouse holds at most {most}"
            rules.append(_implicit("too_long", name, "max_length", text, message, max_length=most, **form))
        number = _tightest(columns, "max_digits", lambda c: (c["max_digits"] - c["decimal_places"], 0))
        if number and not is_text:
            size, places = number["max_digits"], number["decimal_places"]
            if not _fits(type_name, size - places, places):
                message = (
                    f"the warehouse holds at most {size - places} digits before the point, rounded to "
                    f"{places} places (decimal({size},{places}))"
                )
                rules.append(
                    _implicit("too_many_digits", name, "digits", number, message,
                              max_digits=size, decimal_places=places)
                )  # fmt: skip
        integer = _tightest(columns, "min", lambda c: c["max"] - c["min"])
        if integer and type_name in INT_RANGES:
            low, high = INT_RANGES[type_name]
            if integer["min"] > low or integer["max"] < high:
                message = f"the warehouse holds {integer['min']} to {integer['max']}"
                bounds = {"min": str(integer["min"]), "max": str(integer["max"])}
                rules.append(_implicit("out_of_range", name, "range", integer, message, **bounds))
    return rules


def _implicit(
    kind: str, column: str, check: str, limit: Mapping[str, Any], message: str, **params: Any
) -> Rule:
    """An implicit rule: code ``<kind>_<column>``, its message naming the warehouse column."""
    note = f"{message}: warehouse column {limit['column']}"
    return {"code": f"{kind}_{column}", "check": check, "severity": "reject", "column": column,
            "message": note, **params}  # fmt: skip


def rule_reason_columns(rules: Sequence[Rule]) -> dict[str, str]:
    """code -> the column whose staged value explains it (a unique rule: its first column)."""
    return {
        r["code"]: r.get("column") or r["columns"][0] for r in rules if r.get("column") or r.get("columns")
    }


def rule_note(rule: Rule) -> str:
    """What a quarantine message adds after a rule's code and value: its message and its condition."""
    when = f"when {rule['when']}" if rule.get("when") else ""
    return "; ".join(part for part in (rule.get("message"), when) if part)
