"""Errors a user can act on. Commands turn every one of `USER_ERRORS` into a one-line `CommandError`.

`EtlError` is orchestration's base. Imports run etlcore -> connectors and etlcore -> warehouse, so those
report their own errors without importing etlcore: `ConfigurationError` and `SourceError` are the
connectors' classes (`connectors.errors`, base `ConnectorError`), re-exported here as the same objects, and
the warehouse has `warehouse.errors.WarehouseError`. `USER_ERRORS` names the three bases, and is what every
command, step and run record catches."""

from __future__ import annotations

import signal

from connectors.errors import (
    ConfigurationError,
    ConnectorError,
    PicklableError,
    SchemaDriftError,
    SourceError,
)
from warehouse.errors import WarehouseError

__all__ = [
    "USER_ERRORS",
    "CatchUpTooFar",
    "ConfigurationError",
    "ConnectorError",
    "DatabaseNotReady",
    "ETL_ERRORS",
    "EXIT_ALREADY_RUNNING",
    "EtlError",
    "PartitionNotFound",
    "PipelineBusy",
    "ReconciliationError",
    "error_retryable",
    "RunTerminated",
    "SourceError",
    "SparkJobError",
    "UnsafePath",
    "VolumeGuardError",
]


class EtlError(PicklableError):
    """Base class: the message is shown to the user as is, so it must name what was wrong and where."""


# Every error a user can cause: shown as one line, exit 1, a failed run record.
USER_ERRORS: tuple[type[Exception], ...] = (EtlError, ConnectorError, WarehouseError)
# The errors etlcore's own steps raise: its classes and the connectors' (whose base is not EtlError).
ETL_ERRORS: tuple[type[Exception], ...] = (EtlError, ConnectorError)


def error_retryable(exc: BaseException) -> bool:
    """Whether trying a step again may cure `exc` ([run.retries]): a source or a database that failed, the
    Spark job dying, anything unforeseen; not a configuration, the data breaking a rule, guard or contract
    (the same input fails the same way), nor a signal."""
    permanent = (
        ConfigurationError,
        SchemaDriftError,
        ReconciliationError,
        VolumeGuardError,
        PartitionNotFound,
        DatabaseNotReady,
        PipelineBusy,
        WarehouseError,
    )
    return isinstance(exc, Exception) and not isinstance(exc, permanent)


class DatabaseNotReady(EtlError):
    """A command's database cannot be reached, or has not been migrated: nothing can be recorded there,
    not even a failed run, so the command stops before starting one."""


# sysexits.h EX_TEMPFAIL: "try again later", what cron wrappers and systemd can tell from a failure.
EXIT_ALREADY_RUNNING = 75


class PipelineBusy(EtlError):
    """Another process holds the pipeline's run lock: this start changes nothing and exits 75."""

    exit_code = EXIT_ALREADY_RUNNING


class RunTerminated(BaseException):
    """SIGTERM or SIGINT reached a run. A BaseException, like KeyboardInterrupt, so that no `except
    Exception` on the way swallows it: every step and run record on the stack is closed as failed."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention for "ended by signal N": 143, 130
        super().__init__(f"terminated by signal {signal.Signals(signum).name}")

    def __reduce__(self) -> tuple[type[RunTerminated], tuple[int]]:
        return type(self), (self.signum,)


class CatchUpTooFar(EtlError):
    """`run_pipeline --nightly` found more dates missing than `[run] catch_up_max_dates`: a backfill to
    start knowingly, not something a nightly run should take on by surprise."""


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


class UnsafePath(EtlError):
    """A lock or temporary file's path is a symbolic link: it is refused, never followed, so a link planted
    there cannot make the run write through it (etlcore/files.py)."""
