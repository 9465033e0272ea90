"""Source connectors. `build_connector` chooses the class from the source's `kind`.

A source kind is one module of this package whose `Connector` subclass sets `kind`: defining the class
registers it (`Connector.__init_subclass__`), and `connector_kinds()` imports every module of the package
once, so adding a kind needs no edit here nor in etlcore.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .base import Connector, ExtractWindow, RawBatch

__all__ = ["Connector", "ExtractWindow", "RawBatch", "build_connector", "connector_kinds"]

_discovered = False


def connector_kinds() -> dict[str, type[Connector]]:
    """kind -> connector class, for every source kind defined in this package."""
    global _discovered
    if not _discovered:
        # Imported on first use, not at package import: some kinds pull in heavy clients (boto3, psycopg2).
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _discovered = True
    from .base import _KINDS

    return dict(_KINDS)


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


def __getattr__(name: str) -> Any:
    # The base classes (and pyarrow with them) load on first use: the settings import connectors.secrets,
    # and a process that reads no source (the admin, `manage.py check`) should not pay for them.
    if name in ("Connector", "ExtractWindow", "RawBatch"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
