"""Errors of orchestration a user can act on. Commands turn every `EtlError` into a one-line `CommandError`.

The base class lives in `etlbase.errors`, below every package, so the warehouse defines its own
(`warehouse.errors`) without importing etlcore; it is re-exported here for etlcore and its callers."""

from __future__ import annotations

from etlbase.errors import EtlError

__all__ = [
    "ConfigurationError",
    "EtlError",
    "PartitionNotFound",
    "ReconciliationError",
    "SourceError",
    "SparkJobError",
    "VolumeGuardError",
]


class ConfigurationError(EtlError):
    """A pipeline file, or an option given on the command line, is invalid."""


class SourceError(EtlError):
    """A source is missing, unreachable, or answered something that cannot be read."""


class PartitionNotFound(EtlError):
    """A step's input partition has not been published (run the previous step first)."""


class SparkJobError(EtlError):
    """spark-submit exited non-zero or its job broke its contract."""

    def __init__(self, message: str, *, facts: dict | None = None) -> None:
        super().__init__(message)
        self.facts = facts or {}  # masked command, exit code, seconds: for the step record


class ReconciliationError(EtlError):
    """Row counts of a step do not balance: some rows would be unaccounted for."""


class VolumeGuardError(EtlError):
    """A dataset's figures broke a volume guard declared `on_breach = "fail"` (an empty or truncated
    export, most rows quarantined): the message names the pipeline, dataset, date, figure and bound."""
