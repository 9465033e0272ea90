"""The one interface every source implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, ClassVar

import pyarrow as pa

from .errors import ConfigurationError, ProbeUnsupported
from .options import Table, table_check
from .secrets import FILE_SUFFIX, secret_get
from .watermarks import fingerprint

# A batch of raw records as the source returned them (nested dicts/lists allowed) or, for tabular
# sources, an Arrow record batch whose column names are the source's own.
RawBatch = list[dict[str, Any]] | pa.RecordBatch

DEFAULT_BATCH_SIZE = 10_000

# kind -> class, filled by `Connector.__init_subclass__`; read through `connectors.connector_kinds()`.
_KINDS: dict[str, type[Connector]] = {}


@dataclass(frozen=True)
class ExtractWindow:
    """What one extraction covers: a business date and its [start, end) instant range (tz-aware)."""

    business_date: date
    start: datetime
    end: datetime

    def template_values(self) -> dict[str, Any]:
        """Values a source's configuration may use in `{...}` placeholders (paths, query parameters)."""
        return {
            "date": self.business_date,
            "window_start": self.start.isoformat(),
            "window_end": self.end.isoformat(),
            "window_start_epoch": int(self.start.timestamp()),
            "window_end_epoch": int(self.end.timestamp()),
        }


@dataclass(frozen=True)
class LastExtract:
    """The latest extract of a source that a probe compares with, for kinds that keep no watermark (files,
    S3 in full mode): the window it read, and when its run began (anything changed after that instant may
    be missing from it, so it counts as newer)."""

    window: ExtractWindow
    started_at: datetime


@dataclass(frozen=True)
class Probe:
    """What a cheap look at a source found (`Connector.probe`).

    `fingerprint`: a small JSON-able summary of the data in the range a run of the window would look at
    (file names, sizes and times; object keys and ETags; a greatest watermark and counts), equal when the
    data is, different when it changed; None when there is nothing there. `newer`: whether any of it is
    newer than what was last extracted (the saved state, or `LastExtract`)."""

    fingerprint: dict[str, Any] | None
    newer: bool


class Connector(ABC):
    """A source of raw records. Subclasses set `kind` and read their options in `__init__`.

    Incremental sources read `state` (the watermark saved after the previous published extract, or None
    on the first run) and, while yielding, keep `next_state` up to date with the watermark to save once
    this extract's partition is durable. The extract service saves it in the same database transaction
    that records the published partition, never before.
    """

    kind: ClassVar[str]
    # Every option the kind reads, with its type: the one declaration the pipeline file is checked
    # against when it is read (`check_options`) and the connector's own unknown-option check.
    option_schema: ClassVar[Table]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A class that names its own `kind` is a source kind: defining it is its registration.
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind is None:
            return
        known = _KINDS.get(kind)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise TypeError(f"source kind {kind!r} is taken by {known.__module__}.{known.__qualname__}")
        if not isinstance(getattr(cls, "option_schema", None), Table):
            # Its options could not be checked when the pipeline file is read.
            raise TypeError(f"source kind {kind!r} ({cls.__name__}) declares no option_schema")
        _KINDS[kind] = cls

    def __init__(
        self, *, name: str, options: Mapping[str, Any], state: Mapping[str, Any] | None = None
    ) -> None:
        self.name = name
        self.options = dict(options)
        self.batch_size = int(self.options.get("batch_size", DEFAULT_BATCH_SIZE))
        if self.batch_size <= 0:
            raise ConfigurationError(f"source {name!r}: batch_size must be positive, got {self.batch_size}")
        self.state: dict[str, Any] | None = dict(state) if state else None
        self.next_state: dict[str, Any] | None = self.state

    @classmethod
    def check_options(cls, *, name: str, options: Mapping[str, Any]) -> None:
        """Checks that need neither the source nor the environment, run when the pipeline file is read
        (so a misspelt or misplaced option fails before any run): every key and type against
        `option_schema`, raising `connectors.options.OptionError` (path and key from the options' root).
        A kind adds its own checks after calling this one."""
        table_check(options, cls.option_schema)

    @abstractmethod
    def iter_batches(self, window: ExtractWindow) -> Iterator[RawBatch]:
        """Yield bounded batches for the window; raise `connectors.errors.SourceError` naming what failed."""

    @abstractmethod
    def describe(self) -> str:
        """Where the data comes from, for the manifest and messages. Never includes a secret."""

    def probe(self, window: ExtractWindow, *, last: LastExtract | None = None) -> Probe:
        """Look, cheaply and without reading the data, whether the source has data for `window` newer than
        its saved state (`self.state`) or, for a kind without one, than `last` (None: never extracted).
        Raise `SourceError` when the source cannot be reached, `ProbeUnsupported` when this kind or
        configuration has nothing to compare with (the sensor then counts the source as unknown)."""
        raise ProbeUnsupported(f"source {self.name!r}: a {self.kind} source cannot be probed")


# A probe's fingerprint names at most this many files or objects (the newest); its digest covers them all.
PROBE_NAMES_SHOWN = 10


def listing_fingerprint(
    entries: list[tuple[str, int, datetime, Any]], *, label: str
) -> dict[str, Any] | None:
    """The fingerprint of a listing: (name, size, modified, what else identifies a version) per file or
    object. Small whatever the listing's length: counts, the newest time and names, and a digest of it
    all. None for an empty listing."""
    if not entries:
        return None
    ordered = sorted(entries, key=lambda e: (e[2], e[0]))
    return {
        label: len(ordered),
        "bytes": sum(e[1] for e in ordered),
        "modified": ordered[-1][2].isoformat(),
        "newest": [e[0] for e in ordered[-PROBE_NAMES_SHOWN:]],
        "digest": fingerprint(sorted([e[0], e[1], e[2].isoformat(), e[3]] for e in ordered)),
    }


def reject_unknown_options(
    source: str, options: Mapping[str, Any], known: Collection[str], *, prefix: str = ""
) -> None:
    """Raise `ConfigurationError` for an option nobody reads: a misspelt key would silently fall back
    to its default."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigurationError(
            f"source {source!r}: unknown option {', '.join(prefix + k for k in unknown)} "
            f"(known: {', '.join(prefix + k for k in sorted(known))})"
        )


def render_template(template: str, values: Mapping[str, Any], *, source: str, option: str) -> str:
    """Fill `{placeholder}` fields of a configured string from the window's template values."""
    try:
        return template.format(**values)
    except KeyError as exc:
        raise ConfigurationError(
            f"source {source!r}: {option} {template!r} uses unknown placeholder {{{exc.args[0]}}} "
            f"(available: {', '.join(sorted(values))})"
        ) from None
    except (ValueError, IndexError) as exc:
        raise ConfigurationError(
            f"source {source!r}: {option} {template!r} is not a valid template: {exc}"
        ) from None


def secret_from_env(variable: str | None, *, source: str, option: str) -> str:
    """The secret whose environment variable a source's `option` names (secrets live only there, or in
    the file its `_FILE` twin names: connectors.secrets)."""
    try:
        value = secret_get(variable or "")
    except ConfigurationError as exc:
        raise ConfigurationError(f"source {source!r}: {exc}") from None
    if not value:
        raise ConfigurationError(
            f"source {source!r}: environment variable {variable} ({option}) is not set "
            f"(nor {variable}{FILE_SUFFIX})"
        )
    return value
