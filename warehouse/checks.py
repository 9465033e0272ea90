"""Order-independent table fingerprints: the proof that a re-run changed no warehouse row.

Two modes. `strict` (the default) digests every column as stored, surrogate keys included: the proof that
a re-run in the same database changed nothing. `natural` drops auto-increment primary keys and replaces
each foreign key by the referenced row's natural key, so two databases (or two load paths) that hold the
same facts compare equal even though their sequences handed out different ids. A dimension version's
natural key is its member's key and its valid_from, so a fact's reference names the version it points to.
In both modes a Fernet token (`EncryptedTextField`, e.g. DimCustomer.email_encrypted) counts by its presence:
every extraction encrypts anew, so two runs of the same data hold different tokens of the same values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from django.apps import apps
from django.db import models

from .models import EncryptedTextField

Mode = Literal["strict", "natural"]


def table_checksum(
    model: type[models.Model], *, using: str, mode: Mode = "strict", filters: dict[str, Any] | None = None
) -> tuple[int, str]:
    """(row count, digest) of every column of every row, whatever the row order; `filters` (queryset
    lookups) narrows it to some rows, e.g. the facts of some dates."""
    paths, converters = _columns(model, mode)
    total = 0
    count = 0
    rows = model.objects.using(using).filter(**(filters or {}))
    for row in rows.values_list(*paths).iterator(chunk_size=10_000):
        text = "\x1f".join(_canonical(convert(v)) for convert, v in zip(converters, row, strict=True))
        total = (total + int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big")) % (1 << 128)
        count += 1
    return count, f"{total:032x}"


def warehouse_checksums(*, using: str, mode: Mode = "strict") -> dict[str, tuple[int, str]]:
    return {
        model._meta.db_table: table_checksum(model, using=using, mode=mode)
        for model in apps.get_app_config("warehouse").get_models()
    }


def natural_key(model: type[models.Model]) -> tuple[str, ...] | None:
    """The fields that identify a row across databases: a non-generated primary key, else the only unique
    field or unconditional unique constraint (e.g. sku and valid_from of a product version); None when the
    model has no such key."""
    pk = model._meta.pk
    if not isinstance(pk, models.AutoField | models.BigAutoField | models.SmallAutoField):
        return (pk.name,)
    unique = [(f.name,) for f in model._meta.concrete_fields if f.unique and not f.primary_key]
    unique += [
        tuple(c.fields)
        for c in model._meta.constraints
        if isinstance(c, models.UniqueConstraint) and c.fields and c.condition is None
    ]
    return unique[0] if len(unique) == 1 else None


def _columns(model: type[models.Model], mode: Mode) -> tuple[list[str], list[Callable[[Any], Any]]]:
    paths: list[str] = []
    converters: list[Callable[[Any], Any]] = []
    for f in model._meta.concrete_fields:
        if isinstance(f, EncryptedTextField):
            # A Fernet token differs at every encryption of the same value: which one a row holds depends on
            # which load stored it first (by design, a re-run does not replace it). Its presence is compared.
            paths.append(f.attname)
            converters.append(_presence)
        elif mode == "strict":
            paths.append(f.attname)
            converters.append(_same)
        elif f.primary_key and natural_key(model) != (f.name,):
            continue
        elif f.is_relation:
            key = natural_key(f.related_model)
            if key is None:
                # e.g. the run that first quarantined a record: ids differ per database; compare presence.
                paths.append(f.attname)
                converters.append(_presence)
            else:
                paths.extend(f"{f.name}__{part}" for part in key)
                converters.extend(_same for _ in key)
        else:
            paths.append(f.attname)
            converters.append(_same)
    return paths, converters


def _same(value: Any) -> Any:
    return value


def _presence(value: Any) -> Any:
    return None if value is None else "set"


def _canonical(value: Any) -> str:
    # Backends hand back the same value in different Python types (SQLite: float-ish decimals, naive times).
    if value is None:
        return "\x00"
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)
