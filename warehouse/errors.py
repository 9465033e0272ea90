"""Errors of a load a user can act on: a broken partition, a load strategy the database cannot take.

They do not subclass anything in etlcore (which imports the warehouse): `etlcore.errors.USER_ERRORS` names
`WarehouseError` beside `EtlError` and `ConnectorError`, so the commands report them as one line and exit 1
like any other step failure."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date
from typing import Any

from django.db import models

from connectors.errors import PicklableError


class WarehouseError(PicklableError):
    """A load failed and was rolled back: the warehouse is as it was before it."""


class MissingDimensionError(WarehouseError):
    """A fact row names a dimension member the warehouse does not hold: the partition is broken."""

    def __init__(self, model: type[models.Model], natural_key: str, missing: Iterable[Any]) -> None:
        sample = ", ".join(sorted(map(str, missing))[:5])
        super().__init__(f"{model._meta.label}: no row for {natural_key} {sample}")


class DailyMismatchError(WarehouseError):
    """The daily aggregate does not add up to the line fact: the load is rolled back."""

    def __init__(self, pipeline: str, days: Sequence[date]) -> None:
        listed = ", ".join(d.isoformat() for d in days)
        super().__init__(f"daily sales disagree with the sales lines of pipeline {pipeline!r} on {listed}")


class LoadStrategyError(WarehouseError):
    """The load strategy asked for cannot run on this database (COPY needs PostgreSQL)."""


class PseudonymKeyMismatchError(WarehouseError):
    """A partition's customers were pseudonymised under another key than the warehouse's: loading it would
    give every customer a second identity."""

    def __init__(self, pipeline: str, *, warehouse: str, given: str, by: str = "this partition's") -> None:
        super().__init__(
            f"pipeline {pipeline!r}: the warehouse's customer keys were made with the pseudonym key of "
            f"fingerprint {warehouse}, {by} with {given}: loading it would give every "
            "customer a second identity. Set the key the warehouse was made with; a new key needs every "
            "stored pseudonym rewritten: set the old key in the variable's _PREVIOUS and finish with "
            "manage.py rotate_pii_keys"
        )
