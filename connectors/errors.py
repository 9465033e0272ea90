"""Errors the connectors raise. They sit at the bottom of the import graph: connectors never import
etlcore (which imports connectors), so etlcore re-exports these very classes as
`etlcore.errors.ConfigurationError` / `SourceError` and names `ConnectorError` in `USER_ERRORS`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .records import SchemaDrift

__all__ = [
    "EXCERPT_CHARS",
    "ConfigurationError",
    "ConnectorError",
    "ProbeUnsupported",
    "SchemaDriftError",
    "SourceError",
    "PicklableError",
    "library_error_text",
    "value_excerpt",
]

# Errors go to the run record, the command's stderr and the cron log: they may say where a source went
# wrong and quote a little of it, never carry its content (a whole CSV row, personal data, binary bytes).
EXCERPT_CHARS = 80
LIBRARY_ERROR_CHARS = 240
# pyarrow's CSV parser appends the row it could not split ("Expected 3 columns, got 2: <the row>").
ECHOED_ROW = re.compile(r"(Expected \d+ columns, got \d+)\s*: ?(.*)", re.S)


class PicklableError(Exception):
    """An error that crosses processes whole (a Celery pool's pipe pickles it): rebuilt from its message and
    attributes, whatever arguments its `__init__` takes."""

    def __reduce__(self) -> tuple[Any, ...]:
        return _error_rebuilt, (type(self), str(self), dict(self.__dict__))


def _error_rebuilt(cls: type[Exception], message: str, state: dict[str, Any]) -> Exception:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class ConnectorError(PicklableError):
    """Base class: the message is shown to the user as is, so it must name what was wrong and where."""


class ConfigurationError(ConnectorError):
    """A pipeline file, a source's options, or an option given on the command line, is invalid."""


class SourceError(ConnectorError):
    """A source is missing, unreachable, or answered something that cannot be read."""


class ProbeUnsupported(ConnectorError):
    """A source that cannot be asked cheaply whether it has newer data (`Connector.probe`): the sensor
    counts it as unknown, neither a reason to run nor one not to."""


class SchemaDriftError(SourceError):
    """A dataset whose drift policy is "fail" received other fields than declared."""

    def __init__(self, message: str, *, drift: SchemaDrift) -> None:
        super().__init__(message)
        self.drift = drift


def value_excerpt(value: Any, *, limit: int = EXCERPT_CHARS) -> str:
    """One value a source gave, quoted for an error message: its `repr` (quotes, control characters and
    undecodable bytes escaped, so it stays one printable line), cut to `limit` characters with "…".
    Never call it on a value that may be personal data: say where the value is instead."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in repr(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def library_error_text(exc: BaseException, *, limit: int = LIBRARY_ERROR_CHARS) -> str:
    """A library's error message (pyarrow, a driver) for a one-line error: without the source content
    the library echoes (pyarrow's CSV parser quotes the whole offending row), whitespace collapsed, control
    characters escaped, cut to `limit` characters."""
    text = ECHOED_ROW.sub(r"\1", str(exc))
    text = " ".join(text.split()) or type(exc).__name__
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
