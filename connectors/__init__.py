"""Source connectors. `build_connector` chooses the class from the source's `kind`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from etlcore.errors import ConfigurationError

from .base import Connector, ExtractWindow, RawBatch

__all__ = ["Connector", "ExtractWindow", "RawBatch", "build_connector", "connector_kinds"]


def connector_kinds() -> dict[str, type[Connector]]:
    from .files import FileConnector
    from .postgres import PostgresConnector
    from .rest import RestConnector
    from .s3 import S3Connector

    return {cls.kind: cls for cls in (FileConnector, RestConnector, PostgresConnector, S3Connector)}


def build_connector(
    *, name: str, options: Mapping[str, Any], state: Mapping[str, Any] | None = None
) -> Connector:
    kind = options.get("kind")
    kinds = connector_kinds()
    if kind not in kinds:
        raise ConfigurationError(
            f"source {name!r}: unknown kind {kind!r} (expected one of: {', '.join(sorted(kinds))})"
        )
    return kinds[kind](name=name, options=options, state=state)
