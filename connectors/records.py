"""Reshape a connector's raw batch into the staging batch: declared columns, in order, all text.

This module is the one definition of the raw layer's format (declared columns, in order, as text);
`etlcore.staging` only lays the batches out as a published partition. Staging is the raw layer, so every
value becomes a string here and typing happens in Spark, where a value
that does not cast is quarantined with its reason instead of failing the run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from .base import RawBatch
from .errors import ConfigurationError, SourceError

__all__ = [
    "MISSING",
    "ColumnSpec",
    "Encrypter",
    "Erasure",
    "FieldObserver",
    "SchemaDrift",
    "column_specs",
    "erasure_token",
    "pseudonym",
    "schema_drift",
    "resolve_path",
    "rows_erase",
    "rows_matching",
    "staging_schema",
    "suppression_token",
    "to_staging_batch",
    "to_text",
]


@dataclass(frozen=True)
class ColumnSpec:
    """One staged column: `source` is the field it reads (a header name or a dotted path)."""

    name: str
    source: str
    type: str = "string"
    required: bool = False
    # Personal data: staged as its keyed pseudonym (`pseudonym`), never as the clear value.
    pii: bool = False
    # Personal data authorised code must read back (`pii = "encrypt"`): staged as a Fernet token.
    encrypt: bool = False

    @classmethod
    def from_config(cls, name: str, table: Mapping[str, Any]) -> ColumnSpec:
        """Build from a pipeline file's column table (`{from = ..., type = ..., required = ...}`)."""
        source = table.get("from", table.get("from_", name))
        if not isinstance(source, str) or not source:
            raise ConfigurationError(f"column {name!r}: 'from' must be a non-empty string, got {source!r}")
        return cls(
            name=name,
            source=source,
            type=str(table.get("type", "string")),
            required=bool(table.get("required", False)),
            pii=table.get("pii") is True,
            encrypt=table.get("pii") == "encrypt",
        )


def column_specs(columns: Mapping[str, Any] | Iterable[ColumnSpec]) -> list[ColumnSpec]:
    """Normalise the accepted column declarations to `ColumnSpec`s, keeping the declared order.

    `columns` maps output name -> `ColumnSpec`, a config table (`from`/`from_`, `required`, `type`) or any
    object with `from_` (or `source`) and `required` attributes; a plain iterable of `ColumnSpec` works too.
    A column without a source reads the field of its own name.
    """
    if not isinstance(columns, Mapping):
        specs = list(columns)
        for spec in specs:
            if not isinstance(spec, ColumnSpec):
                raise ConfigurationError(f"expected ColumnSpec, got {type(spec).__name__}")
        return specs
    specs = []
    for name, decl in columns.items():
        if isinstance(decl, ColumnSpec):
            spec = (
                decl
                if decl.name == name
                else ColumnSpec(name, decl.source, decl.type, decl.required, decl.pii, decl.encrypt)
            )
        elif isinstance(decl, Mapping):
            spec = ColumnSpec.from_config(name, decl)
        else:
            source = getattr(decl, "from_", None) or getattr(decl, "source", None) or name
            spec = ColumnSpec(
                name=name,
                source=source,
                type=str(getattr(decl, "type", "string")),
                required=bool(getattr(decl, "required", False)),
                pii=getattr(decl, "pii", False) is True,
                encrypt=getattr(decl, "pii", False) == "encrypt" or getattr(decl, "encrypt", False) is True,
            )
        specs.append(spec)
    return specs


# A staged column's field metadata saying it holds pseudonyms, or Fernet tokens (the manifest's schema
# repeats it).
PSEUDONYM_METADATA = {b"pii": b"hmac-sha256"}
ENCRYPTED_METADATA = {b"pii": b"fernet"}


def staging_schema(columns: Mapping[str, Any] | Iterable[ColumnSpec]) -> pa.Schema:
    """The staged schema: every declared column, in order, as nullable text; personal ones say so."""
    return pa.schema(
        [
            pa.field(
                spec.name,
                pa.string(),
                metadata=PSEUDONYM_METADATA if spec.pii else ENCRYPTED_METADATA if spec.encrypt else None,
            )
            for spec in column_specs(columns)
        ]
    )


class Encrypter(Protocol):
    """What encrypts a `pii = "encrypt"` column: cryptography's `MultiFernet` (or `Fernet`), built from the
    keys by the caller, so connectors never read a key."""

    def encrypt(self, data: bytes) -> bytes: ...


# --- personal data ----------------------------------------------------------------------------------------

# Unicode's White_Space, the class Java's (?U)\s matches: the sales job cleans text with it, so the pseudonym
# made here from the clear value equals the customer key the job made from it before staging held pseudonyms.
_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_EDGE_SPACE = re.compile(f"^[{_WHITE_SPACE}]+|[{_WHITE_SPACE}]+$")
_INNER_SPACE = re.compile(f"[{_WHITE_SPACE}]+")


def _identity_text(text: str | None) -> str | None:
    """A personal value as pseudonyms and erasure tokens see it: trimmed, white space runs made one space,
    lower-cased; None for null or blank (a guest has no identity)."""
    if text is None:
        return None
    cleaned = _INNER_SPACE.sub(" ", _EDGE_SPACE.sub("", text))
    return cleaned.lower() if cleaned else None


def pseudonym(key: bytes, text: str | None) -> str | None:
    """A personal value's keyed pseudonym: HMAC-SHA256 (lower-case hex) of the value trimmed, its white
    space runs made one space, lower-cased. Null or blank gives None (a guest has no identity)."""
    cleaned = _identity_text(text)
    if cleaned is None:
        return None
    return hmac.digest(key, cleaned.encode("utf-8"), hashlib.sha256).hex()


def _encrypted(column: pa.Array, encrypter: Encrypter) -> pa.Array:
    """Every value of a staged text column as its own Fernet token (a fresh one per value: equal values
    give different tokens, so the raw layer does not even show which rows share one); null stays null."""
    return pa.array(
        [
            None if v is None else encrypter.encrypt(v.encode("utf-8")).decode("ascii")
            for v in column.to_pylist()
        ],
        type=pa.string(),
    )


def _pseudonyms(column: pa.Array, key: bytes) -> pa.Array:
    """`pseudonym` of every value of a staged text column, computed once per distinct value (an order's
    lines repeat its customer's e-mail, and customers come back)."""
    encoded = column.dictionary_encode()
    hashed = pa.array([pseudonym(key, v) for v in encoded.dictionary.to_pylist()], type=pa.string())
    return pc.take(hashed, encoded.indices)


# An erased customer's rows stay (every row is loaded or quarantined, sales totals stay right) with their
# identity columns made null, as a guest's: docs/architecture.md, "Erasure (forget_customer)".
_ERASURE_LABEL = b"django-spark-etl erasure list v2"
_SUPPRESSION_LABEL = b"django-spark-etl erasure list v1"


def erasure_token(key: bytes, text: str | None) -> str | None:
    """The erasure list's form of a customer: HMAC-SHA256 of the clear value as `pseudonym` cleans it, under
    a key derived from the erasure key (`[spark] erasure_key_env`) for this use alone. That key never
    rotates, so the list outlives a new pseudonym key; it is not the pseudonym, so the list by itself links to
    no warehouse row, and without the key it cannot be recomputed from an e-mail. None for null or blank."""
    cleaned = _identity_text(text)
    if cleaned is None:
        return None
    derived = hmac.digest(key, _ERASURE_LABEL, hashlib.sha256)
    return hmac.digest(derived, cleaned.encode("utf-8"), hashlib.sha256).hex()


def suppression_token(key: bytes, pseudonym_hex: str) -> str:
    """The erasure list's older form, kept for customers named by their pseudonym alone (forget_customer
    --customer-key where no clear value is held): HMAC-SHA256 of the pseudonym under a key derived from
    the pseudonym key. It dies with that key: rotate_pii_keys refuses a new pseudonym key while one is
    listed."""
    derived = hmac.digest(key, _SUPPRESSION_LABEL, hashlib.sha256)
    return hmac.digest(derived, pseudonym_hex.encode("ascii"), hashlib.sha256).hex()


def rows_matching(
    columns: Mapping[str, pa.Array | pa.ChunkedArray], match: Callable[[str, str], bool]
) -> Any:
    """Which rows have, in any of `columns`, a value `match(column, value)` accepts; it is asked once per
    distinct non-null value of a column (an order's lines repeat its customer)."""
    length = len(next(iter(columns.values()))) if columns else 0
    matched = pa.array([False] * length, type=pa.bool_())
    for name, column in columns.items():
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        encoded = column.cast(pa.string()).dictionary_encode()
        hits = [value is not None and match(name, value) for value in encoded.dictionary.to_pylist()]
        found = pc.fill_null(pc.take(pa.array(hits, type=pa.bool_()), encoded.indices), False)
        matched = pc.or_(matched, found)
    return matched


def rows_erase(table: pa.RecordBatch | pa.Table, columns: Iterable[str], erased: pa.Array) -> Any:
    """`table` with `columns` made null on the `erased` rows; every other value, and the schema, kept."""
    arrays = list(table.columns)
    for name in columns:
        index = table.schema.get_field_index(name)
        if index < 0:
            continue
        field_type = table.schema.field(index).type
        column = arrays[index]
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        arrays[index] = pc.if_else(erased, pa.scalar(None, type=field_type), column)
    if isinstance(table, pa.Table):
        return pa.Table.from_arrays(
            [a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in arrays], schema=table.schema
        )
    return pa.RecordBatch.from_arrays(arrays, schema=table.schema)


@dataclass(frozen=True)
class Erasure:
    """The erasure list as extraction applies it, to the clear values of `columns` before they are
    pseudonymised or encrypted: a row whose value has its `erasure_token` in `tokens` (under `key`, the
    erasure key), or its pseudonym's `suppression_token` in `pseudonym_tokens` (under `pseudonym_key`), is
    staged with those columns, and every personal one, null."""

    columns: tuple[str, ...]
    tokens: frozenset[str] = frozenset()
    key: bytes | None = None
    pseudonym_tokens: frozenset[str] = frozenset()
    pseudonym_key: bytes | None = None

    def __bool__(self) -> bool:
        return bool(self.tokens or self.pseudonym_tokens)

    def holds(self, _column: str, text: str) -> bool:
        if self.tokens and erasure_token(self.key, text) in self.tokens:
            return True
        if not self.pseudonym_tokens:
            return False
        hexed = pseudonym(self.pseudonym_key, text)
        return hexed is not None and suppression_token(self.pseudonym_key, hexed) in self.pseudonym_tokens


# --- value -> text --------------------------------------------------------------------------------------

MISSING: Any = object()  # what `resolve_path` answers for an absent field (None is a present null)


def to_text(value: Any) -> str | None:
    """The staged text of one value (None stays null)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Mapping | list | tuple):
        return _json_text(value)
    return str(value)


def _json_text(value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) that writes Decimals as the exact numbers they hold.

    `json.dumps` cannot do the latter without turning them into floats or strings, and the JSON Lines and
    REST connectors parse floats as Decimal precisely to keep a price's text.
    """
    if value is None or isinstance(value, bool | int | str):
        return json.dumps(value)
    if isinstance(value, float):
        return json.dumps(value)
    if isinstance(value, Decimal):
        return str(value) if value.is_finite() else json.dumps(float(value))
    if isinstance(value, datetime | date | time):
        return json.dumps(value.isoformat())
    if isinstance(value, Mapping):
        items = sorted((str(k), v) for k, v in value.items())
        return "{" + ",".join(f"{json.dumps(k)}:{_json_text(v)}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_json_text(v) for v in value) + "]"
    return json.dumps(str(value))


# --- field lookup in nested records ---------------------------------------------------------------------


def resolve_path(record: Any, path: str) -> Any:
    """The value at `path` in a nested record, or `MISSING` when absent.

    The exact key wins ("Customer ID", "unit.price" as one header), then every split at a dot is tried
    from the left, so {"customer": {"email": ...}} answers "customer.email".
    """
    if not isinstance(record, Mapping):
        return MISSING
    if path in record:
        return record[path]
    start = 0
    while (dot := path.find(".", start)) != -1:
        head = path[:dot]
        if head in record:
            found = resolve_path(record[head], path[dot + 1 :])
            if found is not MISSING:
                return found
        start = dot + 1
    return MISSING


def _value(record: Any, path: str | None) -> str | None:
    found = record if path is None else resolve_path(record, path)
    return None if found is MISSING else to_text(found)


# --- batch reshaping ------------------------------------------------------------------------------------


def to_staging_batch(
    batch: RawBatch,
    *,
    columns: Mapping[str, Any] | Iterable[ColumnSpec],
    explode: str | None = None,
    source_label: str,
    pseudonym_key: bytes | None = None,
    encrypter: Encrypter | None = None,
    erasure: Erasure | None = None,
) -> pa.RecordBatch:
    """Turn one raw batch into the staged Arrow batch: exactly the declared columns, in order, as text.
    A personal column (`pii`) holds its `pseudonym` under `pseudonym_key`, an encrypted one
    (`pii = "encrypt"`) its Fernet token made by `encrypter`: the clear value is never staged.
    With `erasure`, an erased customer's rows are staged with their identity, personal and encrypted
    columns null (`Erasure`).

    Records (`list[dict]`): a column reads its source by exact key, then by dotted path; a missing field is
    null. With `explode`, each element of the list at that path becomes one row carrying the parent's
    fields, and a column whose source starts with `<explode>.` reads that element's field; a record whose
    list is missing, null or empty yields **no rows** (an order without lines has nothing to stage).

    Arrow batches (tabular sources): columns are selected by their source name and cast to text without
    per-row Python; a required column absent from the batch raises `SourceError`, an optional one is
    all-null. Nested Arrow columns, and `explode` on an Arrow batch, go through the records path.
    """
    specs = column_specs(columns)
    personal = [spec.name for spec in specs if spec.pii]
    if personal and not pseudonym_key:
        raise ConfigurationError(
            f"source {source_label!r}: column(s) {', '.join(personal)} are personal (pii = true) and are "
            "staged as pseudonyms: the pseudonym key is needed"
        )
    encrypted = [spec.name for spec in specs if spec.encrypt]
    if encrypted and encrypter is None:
        raise ConfigurationError(
            f'source {source_label!r}: column(s) {", ".join(encrypted)} are encrypted (pii = "encrypt"): '
            "the personal-data keys are needed"
        )
    if isinstance(batch, pa.RecordBatch) and not explode:
        staged = _arrow_to_batch(batch, specs, source_label)
    else:
        records = batch.to_pylist() if isinstance(batch, pa.RecordBatch) else batch
        staged = _records_to_batch(records, specs, explode, source_label)
    # Matched on the clear values, before they become pseudonyms and tokens: the erasure list is made of
    # clear values' tokens (`erasure_token`), and an encrypted column is as good an identity as any.
    erased = None
    if erasure:
        identity = [name for name in erasure.columns if name in staged.schema.names]
        erased = rows_matching({name: staged.column(name) for name in identity}, erasure.holds)
        if not pc.any(erased).as_py():
            erased = None
    if personal or encrypted:
        arrays = [
            _pseudonyms(column, pseudonym_key)
            if spec.pii
            else _encrypted(column, encrypter)
            if spec.encrypt
            else column
            for spec, column in zip(specs, staged.columns, strict=True)
        ]
        staged = pa.RecordBatch.from_arrays(arrays, schema=staged.schema)
    if erased is None:
        return staged
    return rows_erase(staged, dict.fromkeys([*identity, *personal, *encrypted]), erased)


def _records_to_batch(
    records: Sequence[Any], specs: list[ColumnSpec], explode: str | None, source_label: str
) -> pa.RecordBatch:
    values: list[list[str | None]] = [[] for _ in specs]
    # Per column: read from the exploded element (path inside it) or from the parent record.
    readers = [_reader(spec.source, explode) for spec in specs]
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise SourceError(
                f"source {source_label!r}: record {index} of a batch is a {type(record).__name__}, "
                "not an object"
            )
        if not explode:
            for column, (_, path) in zip(values, readers, strict=True):
                column.append(_value(record, path))
            continue
        elements = resolve_path(record, explode)
        if elements is MISSING or elements is None:
            continue
        if not isinstance(elements, list | tuple):
            raise SourceError(
                f"source {source_label!r}: field {explode!r} to explode is a {type(elements).__name__}, "
                f"not a list (record {index} of a batch)"
            )
        parent = [None if in_element else _value(record, path) for in_element, path in readers]
        for element in elements:
            for column, (in_element, path), parent_value in zip(values, readers, parent, strict=True):
                column.append(_value(element, path) if in_element else parent_value)
    arrays = [pa.array(column, type=pa.string()) for column in values]
    return pa.RecordBatch.from_arrays(arrays, schema=staging_schema(specs))


def _reader(source: str, explode: str | None) -> tuple[bool, str | None]:
    """(reads the exploded element?, path inside it or the parent; None = the element itself)."""
    if explode and source == explode:
        return True, None
    if explode and source.startswith(f"{explode}."):
        return True, source.removeprefix(f"{explode}.")
    return False, source


def _arrow_to_batch(batch: pa.RecordBatch, specs: list[ColumnSpec], source_label: str) -> pa.RecordBatch:
    names = batch.schema.names
    missing = [spec for spec in specs if spec.required and _arrow_column(batch, spec.source) is None]
    if missing:
        wanted = ", ".join(f"{spec.source!r} (column {spec.name})" for spec in missing)
        raise SourceError(
            f"source {source_label!r}: required field not found: {wanted}; "
            f"available fields: {', '.join(repr(n) for n in names)}"
        )
    arrays = []
    for spec in specs:
        column = _arrow_column(batch, spec.source)
        arrays.append(pa.nulls(batch.num_rows, pa.string()) if column is None else _arrow_text(column))
    return pa.RecordBatch.from_arrays(arrays, schema=staging_schema(specs))


def _arrow_column(batch: pa.RecordBatch, path: str) -> pa.Array | None:
    """The column at `path`: an exact column name, else a dotted path into struct columns."""
    if path in batch.schema.names:
        return batch.column(path)
    start = 0
    while (dot := path.find(".", start)) != -1:
        head = path[:dot]
        if head in batch.schema.names and pa.types.is_struct(batch.schema.field(head).type):
            found = _struct_field(batch.column(head), path[dot + 1 :])
            if found is not None:
                return found
        start = dot + 1
    return None


def _struct_field(array: pa.Array, path: str) -> pa.Array | None:
    struct_type = array.type
    names = [struct_type.field(i).name for i in range(struct_type.num_fields)]
    if path in names:
        return pc.struct_field(array, path)
    start = 0
    while (dot := path.find(".", start)) != -1:
        head = path[:dot]
        if head in names and pa.types.is_struct(struct_type.field(head).type):
            found = _struct_field(pc.struct_field(array, head), path[dot + 1 :])
            if found is not None:
                return found
        start = dot + 1
    return None


def _arrow_text(array: pa.Array) -> pa.Array:
    kind = array.type
    if pa.types.is_dictionary(kind):
        array = array.dictionary_decode()
        kind = array.type
    if pa.types.is_string(kind):
        return array
    if pa.types.is_timestamp(kind):
        if kind.tz is not None:
            # Local-offset text ("+0100") is not read by every parser; the same instant in UTC ("Z") is.
            array = array.cast(pa.timestamp(kind.unit, tz="UTC"))
        text = pc.cast(array, pa.string())
        return pc.replace_substring(text, " ", "T", max_replacements=1)  # ISO 8601 separator
    if pa.types.is_nested(kind) or pa.types.is_duration(kind) or pa.types.is_interval(kind):
        # No vectorised text for these; keep the records path's rules (JSON for nested values).
        return pa.array([to_text(v) for v in array.to_pylist()], type=pa.string())
    return pc.cast(array, pa.string())


# --- schema drift ---------------------------------------------------------------------------------------

# JSON value types as drift compares them: an int and a decimal are both numbers (10 vs 10.5 is no drift).
_JSON_TYPES: dict[type, str] = {
    str: "string",
    bool: "boolean",
    int: "number",
    float: "number",
    Decimal: "number",
    dict: "object",
    list: "array",
}


class FieldObserver:
    """Collects the fields a source actually delivered, and their types, batch by batch.

    Records: every key, nested objects as dotted paths (`customer.email`), and the elements of the
    `explode` list as `<explode>.<key>`; other lists are not entered (they are staged as JSON text). Types
    are JSON's (string, number, boolean, object, array; nulls say nothing). Arrow batches: the schema's
    field names, struct children as dotted paths, with their Arrow types.
    """

    def __init__(self, *, explode: str | None = None) -> None:
        self.explode = explode
        self.types: dict[str, set[str]] = {}
        self.null_paths: set[str] = set()
        self.rows = 0
        # Records of one source mostly share a shape: a shape already walked is not walked again.
        self._shapes: set[tuple[Any, ...]] = set()

    def observe(self, batch: RawBatch) -> None:
        if isinstance(batch, pa.RecordBatch):
            self.rows += batch.num_rows
            if batch.num_rows:
                self._observe_arrow(batch.schema)
            return
        self.rows += len(batch)
        for record in batch:
            if isinstance(record, Mapping):
                self._observe_record(record)

    def fields(self) -> dict[str, str]:
        """Field path -> type: "a|b" when its non-null values had several types, "null" if only nulls."""
        observed = {path: "|".join(sorted(kinds)) or "null" for path, kinds in self.types.items()}
        return dict(sorted(observed.items()))

    def _observe_arrow(self, schema: pa.Schema, prefix: str = "") -> None:
        for field_ in schema:
            path = prefix + field_.name
            self.types.setdefault(path, set()).add(str(field_.type))
            if pa.types.is_struct(field_.type):
                self._observe_arrow(pa.schema(list(field_.type)), path + ".")

    def _observe_record(self, record: Mapping[str, Any]) -> None:
        shape = _shape(record, self.explode, "")
        if shape in self._shapes:
            return
        self._shapes.add(shape)
        self._walk(record, "")

    def _walk(self, record: Mapping[str, Any], prefix: str) -> None:
        for key, value in record.items():
            path = prefix + str(key)
            kinds = self.types.setdefault(path, set())
            if value is None:
                self.null_paths.add(path)
                continue
            kinds.add(_JSON_TYPES.get(type(value), type(value).__name__))
            if isinstance(value, Mapping):
                self._walk(value, path + ".")
            elif path == self.explode and isinstance(value, list | tuple):
                for element in value:
                    if isinstance(element, Mapping):
                        self._walk(element, path + ".")


def _shape(record: Mapping[str, Any], explode: str | None, prefix: str) -> tuple[Any, ...]:
    """The keys and value types of a record, nested objects and exploded elements included."""
    parts: list[Any] = []
    for key, value in record.items():
        kind = type(value)
        if isinstance(value, Mapping):
            parts.append((key, _shape(value, explode, f"{prefix}{key}.")))
        elif explode is not None and f"{prefix}{key}" == explode and isinstance(value, list | tuple):
            parts.append(
                (
                    key,
                    frozenset(_shape(e, None, "") if isinstance(e, Mapping) else type(e) for e in value),
                )
            )
        else:
            parts.append((key, kind))
    return tuple(parts)


@dataclass(frozen=True)
class SchemaDrift:
    """How the delivered fields differ from the declared columns and from the previous partition."""

    added: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    changed: tuple[dict[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.missing or self.changed)

    def as_dict(self) -> dict[str, Any]:
        return {"added": list(self.added), "missing": list(self.missing), "changed": list(self.changed)}

    def describe(self) -> str:
        parts = []
        if self.added:
            parts.append(f"new field(s) {', '.join(self.added)}")
        if self.missing:
            parts.append(f"declared field(s) never present {', '.join(self.missing)}")
        if self.changed:
            parts.append(
                "type changed: " + ", ".join(f"{c['field']} {c['was']} -> {c['now']}" for c in self.changed)
            )
        return "; ".join(parts)


def schema_drift(
    *,
    observed: Mapping[str, str],
    columns: Mapping[str, Any] | Iterable[ColumnSpec],
    null_paths: Iterable[str] = (),
    previous: Mapping[str, str] | None = None,
    ignored: Iterable[str] = (),
) -> SchemaDrift:
    """Compare the delivered fields (`FieldObserver.fields()`) with the declared columns.

    `ignored` are source fields the dataset knowingly leaves unstaged (its `ignore_fields`): they and the
    fields under them are neither added nor changed.

    added: a delivered field no declared column reads, reported at its highest unread level (a new
    `shipping` object is one entry, not one per key inside it). missing: a declared source never
    delivered (a field under a null parent counts as delivered). changed: a field whose type differs from
    the previous partition's, ignoring fields that were only null in either.
    """
    sources = {spec.source for spec in column_specs(columns)}
    nulls = set(null_paths)
    skipped = tuple(ignored)
    observed = {
        path: kind
        for path, kind in observed.items()
        if not any(path == field or path.startswith(field + ".") for field in skipped)
    }

    def read(path: str) -> bool:
        # The field itself, a parent of a declared field, or a child of one (kept inside its JSON text).
        return any(
            path == source or source.startswith(path + ".") or path.startswith(source + ".")
            for source in sources
        )

    added = []
    for path in observed:
        if read(path):
            continue
        parent = path.rpartition(".")[0]
        if parent and parent in observed and not read(parent):
            continue
        added.append(path)

    def delivered(source: str) -> bool:
        if source in observed:
            return True
        head = source
        while "." in head:
            head = head.rpartition(".")[0]
            if head in nulls:
                return True
        return False

    missing = [source for source in sorted(sources) if not delivered(source)]
    changed = []
    for path, now in observed.items():
        was = (previous or {}).get(path)
        if was and was != now and "null" not in (was, now):
            changed.append({"field": path, "was": was, "now": now})
    return SchemaDrift(tuple(sorted(added)), tuple(missing), tuple(changed))
