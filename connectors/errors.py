"""Errors the connectors raise. They sit at the bottom of the import graph: connectors never import
etlcore (which imports connectors), so etlcore re-exports these very classes as
`etlcore.errors.ConfigurationError` / `SourceError` and names `ConnectorError` in `USER_ERRORS`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .records import SchemaDrift

__all__ = ["ConfigurationError", "ConnectorError", "SchemaDriftError", "SourceError"]


class ConnectorError(Exception):
    """Base class: the message is shown to the user as is, so it must name what was wrong and where."""


class ConfigurationError(ConnectorError):
    """A pipeline file, a source's options, or an option given on the command line, is invalid."""


class SourceError(ConnectorError):
    """A source is missing, unreachable, or answered something that cannot be read."""


class SchemaDriftError(SourceError):
    """A dataset whose drift policy is "fail" received other fields than declared."""

    def __init__(self, message: str, *, drift: SchemaDrift) -> None:
        super().__init__(message)
        self.drift = drift
