"""GDPR erasure: a customer out of a pipeline's warehouse, quarantine and staging, and kept out.

The customer is named by the value the source gives (the e-mail), turned into the pipeline's pseudonym by
the function extraction uses, or by the pseudonym itself, whose clear value is then looked for where the
pipeline keeps it decryptable or clear. The erasure list holds a token of the clear value under the erasure
key (a pseudonym's token, under the pseudonym key, when no clear value is held); the clear value itself is
never stored or logged. Their rows stay, attributed to no customer as a guest's are, so every total stays
right to the cent and every row is still loaded or quarantined; what identifies them is removed.
docs/architecture.md, "Erasure".
"""

from __future__ import annotations

import re
import socket
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from cryptography.fernet import InvalidToken, MultiFernet
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from connectors.records import erasure_token, pseudonym, rows_erase, rows_matching, suppression_token
from spark_jobs.contract import ENCRYPTED_MARK
from warehouse.models import DimCustomer, FactSalesLine, QuarantinedRow
from warehouse.quarantine import quarantined_rewrite, record_fingerprint

from .. import staging
from ..config import PipelineConfig, pipeline_load, pipeline_names
from ..erasure import (
    customer_keys,
    erasure_key_required,
    identity_columns,
    pseudonym_key_required,
)
from ..errors import EtlError
from ..models import ErasedCustomer, Erasure
from ..pii import pii_cipher
from ..runs import os_user
from .control import pipeline_controlled

COMMAND = "forget_customer"
PSEUDONYM_SHAPE = re.compile(r"[0-9a-f]{64}")
# The order of the summary line and of Erasure.counts.
PLACES = (
    "dim_customers",
    "sales_lines",
    "returns_unlinked",
    "quarantined_rows",
    "raw_partitions",
    "raw_rows",
    "transformed_partitions",
    "transformed_rows",
)


class ForgetError(EtlError):
    """The customer could not be named: no value, a blank one, or a pseudonym of the wrong shape."""


@dataclass
class ForgetOutcome:
    pipeline: str
    dry_run: bool
    newly_listed: bool
    by_pseudonym: bool = False
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PLACES, 0))
    erasure: Erasure | None = None

    def summary(self) -> str:
        counts = " ".join(f"{place}={self.counts[place]}" for place in PLACES)
        if self.dry_run:
            return f"{self.pipeline}: dry run, would change {counts}; nothing changed"
        listed = "added to the erasure list" if self.newly_listed else "on the erasure list already"
        if self.by_pseudonym:
            listed += (
                " by pseudonym alone (no clear value held: a new pseudonym key is refused until the customer "
                "is forgotten again by --email)"
            )
        return f"{self.pipeline}: erasure #{self.erasure.pk}: {counts}; {listed}"


def customer_forget(
    *,
    pipeline: str | None,
    value: str | None = None,
    customer_key: str | None = None,
    dry_run: bool = False,
    operator: str | None = None,
) -> list[ForgetOutcome]:
    """Erase one customer from `pipeline` (None: every pipeline), named by `value` as the source gives the
    customer key's column (the e-mail) or by `customer_key`, the pseudonym. Per pipeline, under its lock:
    the token goes on the erasure list first (a crash after it leaves the customer kept out of every later
    extraction; running the command again finishes the job), then staging's raw and transformed
    partitions are republished without the identity, then the warehouse changes in one transaction, then
    the `Erasure` record is written with the counts. `dry_run`: the counts only, nothing changed or
    locked."""
    if (value is None) == (customer_key is None):
        raise ForgetError("name the customer by exactly one of --value (or --email) and --customer-key")
    if customer_key is not None and not PSEUDONYM_SHAPE.fullmatch(customer_key):
        raise ForgetError("--customer-key must be a pseudonym: 64 lower-case hexadecimal digits")
    # Every pipeline's keys, pseudonym and token first: a missing key fails before any pipeline is changed.
    targets = []
    for name in [pipeline] if pipeline else pipeline_names():
        config = pipeline_load(name)
        key = pseudonym_key_required(config)
        hexed = customer_key if customer_key is not None else pseudonym(key, value)
        if hexed is None:
            raise ForgetError("the value is blank: a blank identity is a guest's, not a customer's")
        clear = value if value is not None else _customer_value(config, key, hexed)
        if clear is not None:
            listing = _Listing(
                ErasedCustomer.Scheme.VALUE, erasure_token(erasure_key_required(config), clear)
            )
        else:
            listing = _Listing(ErasedCustomer.Scheme.PSEUDONYM, suppression_token(key, hexed))
        targets.append((config, key, hexed, listing))
    outcomes = []
    for config, key, hexed, listing in targets:
        if dry_run:
            outcomes.append(_forget_plan(config, key, hexed, listing))
            continue
        with pipeline_controlled(config=config):
            outcomes.append(_forget(config, key, hexed, listing, operator=operator))
    return outcomes


@dataclass(frozen=True)
class _Listing:
    """The customer's entry on the erasure list."""

    scheme: str
    token: str


def _forget(
    config: PipelineConfig, key: bytes, hexed: str, listing: _Listing, *, operator: str | None
) -> ForgetOutcome:
    listed = ErasedCustomer.objects.using(config.database)
    _, created = listed.get_or_create(pipeline=config.name, token=listing.token, scheme=listing.scheme)
    if listing.scheme == ErasedCustomer.Scheme.VALUE:
        # Named by value now: an entry by pseudonym alone is not needed any more, and it would keep
        # rotate_pii_keys refusing a new pseudonym key.
        listed.filter(
            pipeline=config.name, scheme=ErasedCustomer.Scheme.PSEUDONYM, token=suppression_token(key, hexed)
        ).delete()
    outcome = ForgetOutcome(
        pipeline=config.name,
        dry_run=False,
        newly_listed=created,
        by_pseudonym=listing.scheme == ErasedCustomer.Scheme.PSEUDONYM,
    )
    _staging_erase(config, key, hexed, outcome.counts, publish=True)
    with transaction.atomic(using=config.database):
        outcome.counts |= _warehouse_erase(config, hexed, apply=True)
        outcome.erasure = Erasure.objects.using(config.database).create(
            pipeline=config.name,
            erased_at=timezone.now(),
            command=COMMAND,
            operator=operator if operator is not None else os_user(),
            hostname=socket.gethostname(),
            counts=dict(outcome.counts),
            newly_listed=created,
        )
    return outcome


def _forget_plan(config: PipelineConfig, key: bytes, hexed: str, listing: _Listing) -> ForgetOutcome:
    listed = (
        ErasedCustomer.objects.using(config.database)
        .filter(pipeline=config.name, token=listing.token, scheme=listing.scheme)
        .exists()
    )
    outcome = ForgetOutcome(pipeline=config.name, dry_run=True, newly_listed=not listed)
    _staging_erase(config, key, hexed, outcome.counts, publish=False)
    outcome.counts |= _warehouse_erase(config, hexed, apply=False)
    return outcome


# --- the clear value of a customer key --------------------------------------------------------------------


def _customer_value(config: PipelineConfig, key: bytes, hexed: str) -> str | None:
    """The clear value the customer key `hexed` was made from, where the pipeline keeps one: the warehouse
    customer's encrypted e-mail, else a raw partition's customer key column staged in clear or an encrypted
    personal column. None when nothing holds it."""
    encrypted = any(ds.encrypted for ds in config.datasets.values())
    tokens = DimCustomer.objects.using(config.database).filter(
        pipeline=config.name, customer_key=hexed, email_encrypted__isnull=False
    )
    cipher = pii_cipher(env=config.spark.pii_keys_env) if encrypted or tokens.exists() else None
    for token in tokens.values_list("email_encrypted", flat=True):
        text = _decrypted(cipher, token)
        if hexed in customer_keys(key, text):
            return text
    for dataset, columns in identity_columns(config).items():
        refs = staging.PartitionRef.raw(config.staging_root, config.name, dataset, _ANY_DATE)
        for day in staging.partition_dates(refs):
            ref = staging.PartitionRef.raw(config.staging_root, config.name, dataset, day)
            with staging.partitions_reading([ref]):
                for name in staging.manifest_read(ref).files:
                    found = _value_find(pq.read_table(ref.dir / name), key, hexed, columns, cipher)
                    if found is not None:
                        return found
    return None


def _value_find(
    table: pa.Table, key: bytes, hexed: str, columns: Iterable[str], cipher: MultiFernet | None
) -> str | None:
    """In one raw file: an identity column staged in clear (the customer key's column when the job
    pseudonymises it, or a personal one staged before pseudonyms), then an encrypted one, decrypted."""
    marks = {name: (table.schema.field(name).metadata or {}).get(b"pii") for name in table.schema.names}
    for name in [c for c in columns if c in marks and marks[c] is None]:
        for text in pc.unique(table.column(name)).to_pylist():
            if hexed in customer_keys(key, text, job_form=True):
                return text
    for name in [c for c, mark in marks.items() if mark == b"fernet" and cipher is not None]:
        for token in table.column(name).to_pylist():
            text = _decrypted(cipher, token)
            if hexed in customer_keys(key, text):
                return text
    return None


def _decrypted(cipher: MultiFernet, token: str | None) -> str | None:
    """The clear text of a Fernet token; None for a null or one no key of the pipeline's opens."""
    if token is None:
        return None
    try:
        return cipher.decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError):
        return None


# --- warehouse ----------------------------------------------------------------------------------------


def _links_declared(config: PipelineConfig) -> bool:
    """Whether a source names a return's original order: then the link is the source's, not one found by
    the customer, and it stays."""
    return any(c.name == "original_order_id" for ds in config.datasets.values() for c in ds.columns)


def _warehouse_erase(config: PipelineConfig, hexed: str, *, apply: bool) -> dict[str, int]:
    """The customer's member goes; their lines stay, attributed to no customer, as a guest's, so no total
    changes. A return linked to its purchase by the customer loses the link, as a load of the date would
    now leave it (declared links stay). Quarantined raw records show the identity null, as extraction now
    stages it, under the fingerprint a re-run gives them."""
    db = config.database
    members = DimCustomer.objects.using(db).filter(pipeline=config.name, customer_key=hexed)
    lines = FactSalesLine.objects.using(db).filter(pipeline=config.name, customer__in=members)
    unlinked = (
        FactSalesLine.objects.none()
        if _links_declared(config)
        else lines.filter(is_return=True, original_order_id__isnull=False)
    )
    quarantined = QuarantinedRow.objects.using(db).filter(
        Q(raw_record__contains=f'"{hexed}"') | Q(message__contains=hexed), pipeline=config.name
    )
    counts = {
        "dim_customers": members.count(),
        "sales_lines": lines.count(),
        "returns_unlinked": unlinked.count(),
        "quarantined_rows": quarantined.count(),
    }
    if not apply:
        return counts
    unlinked.update(original_order_id=None, linked_by_loader=False)
    lines.update(customer=None)
    members.delete()
    for row in quarantined.select_for_update().order_by("id"):
        dataset = config.datasets.get(row.dataset)
        _quarantined_erase(row, hexed, encrypted=dataset.encrypted if dataset else (), using=db)
    return counts


def _raw_record_erase(raw_record: str, hexed: str, encrypted: Iterable[str] = ()) -> str:
    """The record as extraction now stages it: the pseudonym null, and the encrypted columns' mark too (their
    tokens are nulled with the identity). A pseudonym is 64 hex digits: as a JSON string it occurs only as a
    value, never inside another; the job writes the record with Spark's `to_json` (no spaces)."""
    erased = raw_record.replace(f'"{hexed}"', "null")
    for column in encrypted:
        erased = erased.replace(f'"{column}":"{ENCRYPTED_MARK}"', f'"{column}":null')
    return erased


def _message_erase(message: str, hexed: str) -> str:
    """A rule on a personal column (presence, equality) shows its value as `column='<pseudonym>'`."""
    return message.replace(f"'{hexed}'", "null").replace(hexed, "null")


def _quarantined_erase(row: QuarantinedRow, hexed: str, *, encrypted: Iterable[str], using: str) -> None:
    quarantined_rewrite(
        row,
        raw_record=_raw_record_erase(row.raw_record, hexed, encrypted),
        message=_message_erase(row.message, hexed),
        using=using,
    )


# --- staging ------------------------------------------------------------------------------------------


def _staging_erase(
    config: PipelineConfig, key: bytes, hexed: str, counts: dict[str, int], *, publish: bool
) -> None:
    """Every published raw partition of a dataset with identity columns, and every transformed one, that
    holds the customer: republished without the identity (`staging.partition_rewrite`), or only counted."""
    links_declared = _links_declared(config)
    for dataset, columns in identity_columns(config).items():
        refs = staging.PartitionRef.raw(config.staging_root, config.name, dataset, _ANY_DATE)
        for day in staging.partition_dates(refs):
            ref = staging.PartitionRef.raw(config.staging_root, config.name, dataset, day)
            rows = _partition_erase(
                ref, partial(_raw_erase, columns=columns, key=key, hexed=hexed), publish=publish
            )
            if rows:
                counts["raw_partitions"] += 1
                counts["raw_rows"] += rows
    transformed = staging.PartitionRef.transformed(config.staging_root, config.name, _ANY_DATE)
    for day in staging.partition_dates(transformed):
        ref = staging.PartitionRef.transformed(config.staging_root, config.name, day)
        rewrite = partial(_transformed_erase, hexed=hexed, links_declared=links_declared)
        rows = _partition_erase(ref, rewrite, publish=publish)
        if rows:
            counts["transformed_partitions"] += 1
            counts["transformed_rows"] += rows


# partition_dates lists a layer's (or dataset's) dates from any of its partitions' references.
_ANY_DATE = date.min

# (rewritten table or None when unchanged, rows changed)
Rewrite = Callable[[str | None, pa.Table], tuple[pa.Table | None, int]]


def _partition_erase(ref: staging.PartitionRef, rewrite: Rewrite, *, publish: bool) -> int:
    changed = Counter[str]()

    def counted(output: str | None, table: pa.Table) -> pa.Table | None:
        new, rows = rewrite(output, table)
        changed["rows"] += rows
        return new

    if publish:
        staging.partition_rewrite(ref, counted)
        return changed["rows"]
    with staging.partitions_reading([ref]):
        manifest = staging.manifest_read(ref)
        owner = {f: name for name, out in manifest.outputs.items() for f in out.get("files", ())}
        for name in manifest.files:
            counted(owner.get(name), pq.read_table(ref.dir / name))
    return changed["rows"]


def _raw_erase(
    _output: str | None, table: pa.Table, *, columns: tuple[str, ...], key: bytes, hexed: str
) -> tuple[pa.Table | None, int]:
    """The raw rows of the customer with their identity columns null: what extraction stages for a
    customer on the erasure list. A column the file marks as pseudonyms is compared as it is; one staged
    in clear (before pseudonyms, or not declared personal) through `customer_keys`. An encrypted column
    holds a fresh token per value and matches nothing: it is nulled with the row's identity."""
    marks = {name: (table.schema.field(name).metadata or {}).get(b"pii") for name in table.schema.names}
    pseudonymised = {name for name, mark in marks.items() if mark == b"hmac-sha256"}
    encrypted = {name for name, mark in marks.items() if mark == b"fernet"}
    present = [name for name in columns if name in table.schema.names and name not in encrypted]
    if not present:
        return None, 0

    def customers(column: str, value: str) -> bool:
        return (
            value == hexed if column in pseudonymised else hexed in customer_keys(key, value, job_form=True)
        )

    erased = rows_matching({name: table.column(name) for name in present}, customers)
    rows = pc.sum(pc.cast(erased, pa.int64())).as_py() or 0
    if not rows:
        return None, 0
    nulled = dict.fromkeys([*present, *sorted(pseudonymised), *sorted(encrypted)])
    return rows_erase(table, nulled, erased), rows


def _transformed_erase(
    output: str | None, table: pa.Table, *, hexed: str, links_declared: bool
) -> tuple[pa.Table | None, int]:
    """What the job now makes of the rewritten raw rows: sales lines of no customer (and a return linked by
    the customer unlinked), no customer row, quarantine records with the identity null."""
    if output == "sales_lines" and "customer_key" in table.schema.names:
        erased = pc.fill_null(pc.equal(table.column("customer_key"), hexed), False)
        rows = pc.sum(pc.cast(erased, pa.int64())).as_py() or 0
        if not rows:
            return None, 0
        columns = ["customer_key"]
        if not links_declared and "original_order_id" in table.schema.names:
            returns = pc.and_(erased, pc.fill_null(table.column("is_return"), False))
            table = rows_erase(table, ["original_order_id"], returns)
        return rows_erase(table, columns, erased), rows
    if output == "customers" and "customer_key" in table.schema.names:
        keep = pc.invert(pc.fill_null(pc.equal(table.column("customer_key"), hexed), False))
        kept = table.filter(keep)
        rows = table.num_rows - kept.num_rows
        return (kept, rows) if rows else (None, 0)
    if output == "quarantine" and "raw_record" in table.schema.names:
        records = table.column("raw_record").to_pylist()
        hits = [r is not None and f'"{hexed}"' in r for r in records]
        rows = sum(hits)
        if not rows:
            return None, 0
        new_records = [
            _raw_record_erase(r, hexed) if hit else r for r, hit in zip(records, hits, strict=True)
        ]
        arrays = dict(zip(table.schema.names, table.columns, strict=True))
        arrays["raw_record"] = pa.array(new_records, type=table.schema.field("raw_record").type)
        if "message" in arrays:
            arrays["message"] = pa.array(
                [m if m is None else _message_erase(m, hexed) for m in table.column("message").to_pylist()],
                type=table.schema.field("message").type,
            )
        if "record_fingerprint" in arrays:
            prints = table.column("record_fingerprint").to_pylist()
            arrays["record_fingerprint"] = pa.array(
                [
                    record_fingerprint(r) if hit else p
                    for r, p, hit in zip(new_records, prints, hits, strict=True)
                ],
                type=table.schema.field("record_fingerprint").type,
            )
        return pa.Table.from_arrays(list(arrays.values()), schema=table.schema), rows
    return None, 0
