"""Order-independent table fingerprints: the proof that a re-run changed no warehouse row."""

from __future__ import annotations

import hashlib
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.apps import apps
from django.db import models


def table_checksum(model: type[models.Model], *, using: str) -> tuple[int, str]:
    """(row count, digest) of every column of every row, whatever the row order."""
    fields = [f.attname for f in model._meta.concrete_fields]
    total = 0
    count = 0
    for row in model.objects.using(using).values_list(*fields).iterator(chunk_size=10_000):
        text = "\x1f".join(_canonical(v) for v in row)
        total = (total + int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big")) % (1 << 128)
        count += 1
    return count, f"{total:032x}"


def warehouse_checksums(*, using: str) -> dict[str, tuple[int, str]]:
    return {
        model._meta.db_table: table_checksum(model, using=using)
        for model in apps.get_app_config("warehouse").get_models()
    }


def _canonical(value: Any) -> str:
    # Backends hand back the same value in different Python types (SQLite: float-ish decimals, naive times).
    if value is None:
        return "\x00"
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)
