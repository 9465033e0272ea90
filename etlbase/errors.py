"""The one base class of errors a user can act on.

Each package defines its own subclasses next to its code (`etlcore.errors`, `warehouse.errors`); the
commands catch this base, show the message as one line and exit 1 after recording the failed run."""

from __future__ import annotations


class EtlError(Exception):
    """Base class: the message is shown to the user as is, so it must name what was wrong and where."""
