"""Declared shapes of configuration tables, one declaration per table, checked before anything runs.

The pipeline file's own tables (`etlcore.config`) and each source kind's options (a connector's
`option_schema`) are declared with the few classes here. `table_check` walks a parsed TOML document against
a declaration and raises `OptionError` for a key nobody declared (naming the closest declared key and all of
them) or a value of the wrong type. It knows no file: the caller that does (etlcore) puts it in front, so
connectors never need etlcore.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError

__all__ = [
    "ANY",
    "ANY_TABLE",
    "FLAG",
    "NUMBER",
    "SCALAR",
    "TEXT",
    "TEXT_LIST",
    "WHOLE",
    "Among",
    "Entries",
    "ListOf",
    "OneOf",
    "OptionError",
    "Scalar",
    "Spec",
    "Table",
    "Tagged",
    "table_check",
]

Path = tuple[str, ...]


class OptionError(ConfigurationError):
    """A key no declaration has, or a value not of its declared type.

    `path` is the table holding the key, as keys from the checked document's root (`("auth",)` for a REST
    source's auth table); `key` the offending key; `problem` what is wrong with it. The message is
    `<table path>: <problem>`, and callers that know more (the file, where the document sits in it)
    rebuild it from the parts."""

    def __init__(self, problem: str, *, path: Path, key: str) -> None:
        self.problem = problem
        self.path = path
        self.key = key
        super().__init__(f"{'.'.join(path)}: {problem}" if path else problem)


class Spec(ABC):
    """What one key may hold. `words` says it in a message: "must be <words>"."""

    words: str

    @abstractmethod
    def accepts(self, value: Any) -> bool:
        """Whether the value has this shape at its top (a table's keys are checked by `check`)."""

    def check(self, value: Any, path: Path, key: str) -> None:
        if not self.accepts(value):
            raise OptionError(f"{key} must be {self.words}, got {_shown(value)}", path=path, key=key)


@dataclass(frozen=True)
class Scalar(Spec):
    """One TOML value of the given Python types. A boolean is never a number (TOML keeps them apart)."""

    types: tuple[type, ...]
    words: str

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) and bool not in self.types and object not in self.types:
            return False
        return isinstance(value, self.types)


@dataclass(frozen=True)
class ListOf(Spec):
    item: Spec
    words: str = "a list"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, list)

    def check(self, value: Any, path: Path, key: str) -> None:
        super().check(value, path, key)
        for index, item in enumerate(value):
            if isinstance(self.item, Table | Entries | Tagged):
                self.item.check(item, path, f"{key}[{index}]")
            elif not self.item.accepts(item):
                problem = f"{key} must be {self.words}, got {_shown(item)} at position {index + 1}"
                raise OptionError(problem, path=path, key=key)


@dataclass(frozen=True)
class Table(Spec):
    """A table whose keys are declared: every other key is an error."""

    keys: Mapping[str, Spec]
    words: str = "a table"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, Mapping)

    def check(self, value: Any, path: Path, key: str) -> None:
        super().check(value, path, key)
        self.keys_check(value, (*path, key) if key else path)

    def keys_check(self, doc: Mapping[str, Any], where: Path) -> None:
        for name, item in doc.items():
            spec = self.keys.get(name)
            if spec is None:
                raise OptionError(unknown_key(name, self.keys), path=where, key=name)
            spec.check(item, where, name)


@dataclass(frozen=True)
class Entries(Spec):
    """A table whose keys the user names (datasets, columns, query parameters), each holding `value`."""

    value: Spec
    words: str = "a table"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, Mapping)

    def check(self, value: Any, path: Path, key: str) -> None:
        super().check(value, path, key)
        where = (*path, key) if key else path
        for name, item in value.items():
            self.value.check(item, where, name)


@dataclass(frozen=True)
class Among(Spec):
    """One of a few fixed values (`pii = "encrypt"`); a boolean never equals a text."""

    values: tuple[Any, ...]
    words: str

    def accepts(self, value: Any) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values)


@dataclass(frozen=True)
class OneOf(Spec):
    """Any one of several shapes, e.g. a number or a `{ value, on_breach }` table."""

    choices: tuple[Spec, ...]
    words: str

    def accepts(self, value: Any) -> bool:
        return any(choice.accepts(value) for choice in self.choices)

    def check(self, value: Any, path: Path, key: str) -> None:
        for choice in self.choices:
            if choice.accepts(value):
                choice.check(value, path, key)
                return
        super().check(value, path, key)


@dataclass(frozen=True)
class Tagged(Spec):
    """A table whose `tag` key chooses which keys it takes (`pagination.style`, `auth.type`).

    `variants` is called when first needed, so a registry filled by class definitions (the paging styles)
    is the declaration. `choose` reads the variant from the whole table when the tag alone does not say
    it (an older spelling). A key of another variant is named as such, so it reads as misplaced, not
    misspelt."""

    tag: str
    variants: Callable[[], Mapping[str, Table]]
    default: str | None = None
    choose: Callable[[Mapping[str, Any]], Any] | None = None
    words: str = "a table"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, Mapping)

    def check(self, value: Any, path: Path, key: str) -> None:
        super().check(value, path, key)
        where = (*path, key) if key else path
        variants = self.variants()
        chosen = self.choose(value) if self.choose else value.get(self.tag, self.default)
        if chosen is None and not value:
            return
        if not isinstance(chosen, str) or chosen not in variants:
            raise OptionError(
                f"{self.tag} {_shown(chosen)} is not one of {', '.join(variants)}", path=where, key=self.tag
            )
        table = variants[chosen]
        others = [name for name, other in variants.items() if name != chosen]
        for name in value:
            if name not in table.keys:
                readers = [o for o in others if name in variants[o].keys]
                elsewhere = f"{self.tag} {', '.join(map(repr, readers))} reads it" if readers else ""
                problem = unknown_key(name, table.keys, elsewhere, of=f"{self.tag} {chosen!r}")
                raise OptionError(problem, path=where, key=name)
        table.keys_check(value, where)


def unknown_key(key: str, known: Mapping[str, Any], elsewhere: str = "", *, of: str = "") -> str:
    """`unknown key 'x' (did you mean 'y'? known: a, b, y)`: the closest declared key, then all of them."""
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    extra = f"; {elsewhere}" if elsewhere else ""
    for_what = f" for {of}" if of else ""
    return f"unknown key {key!r}{for_what} ({hint}known: {', '.join(known)}{extra})"


def table_check(doc: Mapping[str, Any], spec: Table | Tagged, *, path: Path = ()) -> None:
    """Check a whole document (a pipeline file, a source's options) against its declaration."""
    spec.check(doc, path, "")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


ANY = Scalar((object,), "any value")
TEXT = Scalar((str,), "text")
WHOLE = Scalar((int,), "a whole number")
NUMBER = Scalar((int, float), "a number")
FLAG = Scalar((bool,), "true or false")
SCALAR = Scalar((str, int, float, bool), "text, a number or true/false")
TEXT_LIST = ListOf(TEXT, "a list of texts")
ANY_TABLE = Entries(ANY)
