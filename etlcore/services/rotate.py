"""Key rotation: every stored Fernet token re-encrypted under the newest key of the pipeline's Fernet keys,
and every customer pseudonym re-keyed from the previous pseudonym key to the current one.

A pseudonym is an HMAC: it can only be recomputed from the clear value. The clear values come from what the
pipeline keeps decryptable or clear: a `pii = "encrypt"` twin of a `pii = true` column (same dataset, same
source field), the customer key's column when it is staged in clear (customer_key_from), and the warehouse
customers' `email_encrypted`. From them the old pseudonym -> new pseudonym mapping; a pipeline with a
pseudonymised column that has no twin, a stored pseudonym the mapping does not hold, or customers on the
erasure list by their pseudonym alone is refused before anything changes. The erasure list's other tokens
are made with the erasure key, which does not rotate, and stay as they are.

Resumable: staging's partitions first, each republished atomically (`staging.partition_rewrite`) and
recognised as done (a raw pseudonym recomputed from its twin is equal; a transformed partition records the
new key's fingerprint; a token the newest key decrypts is kept), then the warehouse in one transaction that
ends with `PseudonymKey`. Until that commits, runs with the new key are refused by the key check, so a
killed rotation is finished by running it again. docs/operations.md, "Rotating keys".
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date

import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.db import transaction

from connectors.records import pseudonym
from connectors.secrets import secret_get
from spark_jobs.contract import pseudonym_key_fingerprint
from warehouse.loading.specs import fault_point
from warehouse.models import DimCustomer, PseudonymKey, QuarantinedRow
from warehouse.quarantine import quarantined_rewrite, record_fingerprint

from .. import staging
from ..config import PipelineConfig, pipeline_load, pipeline_names
from ..erasure import customer_key_columns, customer_keys, pseudonym_key_required
from ..errors import EtlError
from ..models import ErasedCustomer
from ..pii import PiiDecryptError, pii_cipher
from ..selectors import pseudonym_key_held
from .control import pipeline_controlled

COMMAND = "rotate_pii_keys"
PREVIOUS_SUFFIX = "_PREVIOUS"
# Where the rotation stops between partitions when ETL_FAULT_POINT names it (the kill-and-resume test).
FAULT_AFTER_PARTITION = "rotate_after_partition"
PSEUDONYM_SHAPE = re.compile(r"[0-9a-f]{64}")
# The order of the summary line.
PLACES = (
    "raw_partitions",
    "raw_pseudonyms",
    "raw_tokens",
    "transformed_partitions",
    "transformed_pseudonyms",
    "transformed_tokens",
    "dim_customers",
    "customer_tokens",
    "quarantined_rows",
)
_ANY_DATE = date.min  # partition_dates lists a layer's dates from any of its partitions' references


class RotateError(EtlError):
    """A rotation that cannot be done safely: refused before anything changes."""


@dataclass
class RotateOutcome:
    pipeline: str
    dry_run: bool
    rekeyed: bool
    fingerprint: str
    counts: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        counts = " ".join(f"{place}={self.counts[place]}" for place in PLACES)
        key = (
            f"pseudonyms re-keyed to the key of fingerprint {self.fingerprint}"
            if self.rekeyed
            else f"pseudonym key unchanged ({self.fingerprint})"
        )
        if self.dry_run:
            return f"{self.pipeline}: dry run, would change {counts}; {key}; nothing changed"
        return f"{self.pipeline}: {counts}; {key}"


@dataclass
class _Rekey:
    """The pseudonym re-key of one pipeline: old and new keys, and the mapping built from clear values."""

    old_key: bytes
    new_key: bytes
    fingerprint: str
    twins: dict[str, dict[str, str]]  # dataset -> pii column -> its encrypted twin
    clear: dict[str, tuple[str, ...]]  # dataset -> customer key column staged in clear
    mapping: dict[str, str] = field(default_factory=dict)
    new_values: set[str] = field(default_factory=set)

    def learn(self, text: str | None, *, spark_form: bool = False) -> None:
        """Map the old pseudonym of a clear value to its new one: extraction's form (`pseudonym`) and, for
        a column the job pseudonymises itself, the job's (lower(trim), spaces only)."""
        pairs = zip(
            customer_keys(self.old_key, text, job_form=spark_form),
            customer_keys(self.new_key, text, job_form=spark_form),
            strict=True,
        )
        for old, new in pairs:
            self.mapping[old] = new
            self.new_values.add(new)

    def rekey(self, value: str | None) -> tuple[str | None, bool]:
        """(new value, mapped): a value under the new key already stays; None when it cannot be mapped."""
        if value is None or value in self.new_values:
            return value, True
        new = self.mapping.get(value)
        return (new, True) if new is not None else (value, False)

    def text_rekey(self, text: str | None) -> tuple[str | None, list[str]]:
        """Every old pseudonym in a quarantined record or message replaced by its new one; the 64-hex values
        neither key's mapping knows are returned, for the caller to judge."""
        if text is None:
            return None, []
        unknown: list[str] = []

        def one(match: re.Match[str]) -> str:
            hexed = match.group(0)
            if hexed in self.new_values:
                return hexed
            if hexed in self.mapping:
                return self.mapping[hexed]
            unknown.append(hexed)
            return hexed

        return PSEUDONYM_SHAPE.sub(one, text), unknown


@dataclass
class _Plan:
    config: PipelineConfig
    fingerprint: str
    cipher: MultiFernet | None
    newest: Fernet | None
    rekey: _Rekey | None
    unmapped: Counter[str] = field(default_factory=Counter)

    def token_rotate(self, token: str | None) -> tuple[str | None, bool]:
        """(token under the newest key, whether it changed); a token the newest key opens is kept."""
        if token is None or self.cipher is None:
            return token, False
        raw = token.encode("ascii")
        try:
            self.newest.decrypt(raw)
            return token, False
        except InvalidToken:
            pass
        try:
            return self.cipher.rotate(raw).decode("ascii"), True
        except InvalidToken:
            raise PiiDecryptError(
                f"pipeline {self.config.name!r}: a personal-data token does not decrypt with any key of "
                f"{self.config.spark.pii_keys_env} (a key since removed?): put that key back and rotate"
            ) from None

    def decrypt(self, token: str | None) -> str | None:
        if token is None:
            return None
        try:
            return self.cipher.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise PiiDecryptError(
                f"pipeline {self.config.name!r}: a personal-data token does not decrypt with any key of "
                f"{self.config.spark.pii_keys_env} (a key since removed?): put that key back and rotate"
            ) from None


def pii_keys_rotate(*, pipeline: str | None, dry_run: bool = False) -> list[RotateOutcome]:
    """Rotate the keys of `pipeline` (None: every pipeline). Every pipeline is checked before any is
    changed; each is rotated under its lock. `dry_run`: the counts only, nothing changed or locked."""
    configs = [pipeline_load(name) for name in ([pipeline] if pipeline else pipeline_names())]
    plans = [_plan(config) for config in configs]
    outcomes = []
    for plan in plans:
        if dry_run:
            outcomes.append(_rotate(plan, apply=False))
            continue
        with pipeline_controlled(config=plan.config):
            outcomes.append(_rotate(_plan(plan.config), apply=True))
    return outcomes


def _plan(config: PipelineConfig) -> _Plan:
    cipher = newest = None
    encrypted = any(ds.encrypted for ds in config.datasets.values())
    tokens = (
        DimCustomer.objects.using(config.database)
        .filter(pipeline=config.name, email_encrypted__isnull=False)
        .exists()
    )
    if encrypted or tokens:
        env = config.spark.pii_keys_env
        cipher = pii_cipher(env=env)
        newest = Fernet(secret_get(env).split(",")[0].strip().encode("ascii"))
    new_key = pseudonym_key_required(config)
    fingerprint = pseudonym_key_fingerprint(new_key)
    held = pseudonym_key_held(config=config)
    plan = _Plan(config=config, fingerprint=fingerprint, cipher=cipher, newest=newest, rekey=None)
    if held is not None and held != fingerprint:
        plan.rekey = _rekey_plan(config, held=held, new_key=new_key, fingerprint=fingerprint)
        _mapping_build(plan)  # twins imply encrypted columns, so the cipher is there
    return plan


def _rekey_plan(config: PipelineConfig, *, held: str, new_key: bytes, fingerprint: str) -> _Rekey:
    env = config.spark.pseudonym_key_env
    previous_env = env + PREVIOUS_SUFFIX
    previous = secret_get(previous_env)
    name = config.name
    if not previous:
        raise RotateError(
            f"pipeline {name!r}: the warehouse's customer keys were made with the pseudonym key of "
            f"fingerprint {held}, {env} holds {fingerprint}: to re-key them, set the key they were made "
            f"with in {previous_env} (or {previous_env}_FILE)"
        )
    old_key = previous.encode("utf-8")
    if pseudonym_key_fingerprint(old_key) != held:
        raise RotateError(
            f"pipeline {name!r}: {previous_env} has fingerprint {pseudonym_key_fingerprint(old_key)}, not "
            f"the warehouse's {held}: set the key the warehouse's customer keys were made with"
        )
    # The list's tokens of clear values are under the erasure key and stay valid; a pseudonym's die.
    by_pseudonym = (
        ErasedCustomer.objects.using(config.database)
        .filter(pipeline=name, scheme=ErasedCustomer.Scheme.PSEUDONYM)
        .count()
    )
    if by_pseudonym:
        raise RotateError(
            f"pipeline {name!r}: {by_pseudonym} customer(s) on the erasure list by their pseudonym alone, "
            "whose tokens are made with the pseudonym key and hold no identity to re-key: a new key would "
            "let them come back. Forget each again by --email (the erasure key keeps them listed across "
            f"rotations), or set {env} back to the warehouse's; Fernet keys still rotate"
        )
    twins: dict[str, dict[str, str]] = {}
    for dataset_name, dataset in config.datasets.items():
        sources = {c.source: c.name for c in dataset.columns if c.encrypt}
        for column in dataset.columns:
            if not column.pii:
                continue
            twin = sources.get(column.source)
            if twin is None:
                raise RotateError(
                    f"pipeline {name!r}: dataset {dataset_name!r} column {column.name!r} is pseudonymised "
                    'with no encrypted twin to recompute it from: declare a pii = "encrypt" column with '
                    f"from = {column.source!r} and re-extract, or keep the pseudonym key"
                )
            twins.setdefault(dataset_name, {})[column.name] = twin
    return _Rekey(
        old_key=old_key, new_key=new_key, fingerprint=fingerprint, twins=twins, clear=_clear_columns(config)
    )


def _clear_columns(config: PipelineConfig) -> dict[str, tuple[str, ...]]:
    """Per dataset, the customer key's column when it is staged in clear: the job pseudonymises it."""
    clear = {}
    for name, columns in customer_key_columns(config).items():
        personal = config.datasets[name].pii | config.datasets[name].encrypted
        if kept := tuple(c for c in columns if c not in personal):
            clear[name] = kept
    return clear


def _mapping_build(plan: _Plan) -> None:
    """Old -> new pseudonym of every clear value the pipeline holds: decrypted twins and clear key columns
    of every raw partition (and a personal column a partition staged before pseudonyms, in clear), and the
    warehouse customers' encrypted e-mails."""
    rekey = plan.rekey
    for dataset in sorted(set(rekey.twins) | set(rekey.clear)):
        twins = set(rekey.twins.get(dataset, {}).values())
        for ref, _manifest in _partitions(plan.config, dataset):
            for table in _tables(ref):
                marks = {n: (table.schema.field(n).metadata or {}).get(b"pii") for n in table.schema.names}
                clear = set(rekey.clear.get(dataset, ())) | {
                    n for n in rekey.twins.get(dataset, {}) if n in marks and marks[n] is None
                }
                for column in sorted((twins | clear) & set(marks)):
                    encrypted = column in twins
                    for value in table.column(column).to_pylist():
                        text = plan.decrypt(value) if encrypted else value
                        rekey.learn(text, spark_form=not encrypted)
    tokens = (
        DimCustomer.objects.using(plan.config.database)
        .filter(pipeline=plan.config.name, email_encrypted__isnull=False)
        .values_list("email_encrypted", flat=True)
    )
    for token in tokens.iterator():
        rekey.learn(plan.decrypt(token))


def _partitions(config: PipelineConfig, dataset: str | None) -> Iterator[tuple[staging.PartitionRef, object]]:
    root = config.staging_root
    if dataset is None:
        refs = staging.PartitionRef.transformed(root, config.name, _ANY_DATE)
        make = lambda day: staging.PartitionRef.transformed(root, config.name, day)  # noqa: E731
    else:
        refs = staging.PartitionRef.raw(root, config.name, dataset, _ANY_DATE)
        make = lambda day: staging.PartitionRef.raw(root, config.name, dataset, day)  # noqa: E731
    for day in staging.partition_dates(refs):
        ref = make(day)
        yield ref, staging.manifest_read(ref)


def _tables(ref: staging.PartitionRef) -> Iterator[pa.Table]:
    with staging.partitions_reading([ref]):
        manifest = staging.manifest_read(ref)
        for name in manifest.files:
            yield pq.read_table(ref.dir / name)


# --- the rotation -------------------------------------------------------------------------------------


def _rotate(plan: _Plan, *, apply: bool) -> RotateOutcome:
    """Staging, then the warehouse. Applying starts with a pass that only counts, so a stored pseudonym
    that cannot be mapped refuses the rotation before anything is changed."""
    if apply:
        _rotate(plan, apply=False)
    plan.unmapped.clear()
    outcome = RotateOutcome(
        pipeline=plan.config.name,
        dry_run=not apply,
        rekeyed=plan.rekey is not None,
        fingerprint=plan.fingerprint,
    )
    if not apply:
        _staging_rotate(plan, outcome.counts, apply=False)
        _warehouse_rotate(plan, outcome.counts, apply=False)
        if plan.unmapped:
            places = ", ".join(f"{place} {count}" for place, count in sorted(plan.unmapped.items()))
            raise RotateError(
                f"pipeline {plan.config.name!r}: stored pseudonyms with no clear or decryptable value to "
                f"re-key them from ({places}); nothing changed: keep the pseudonym key"
            )
        return outcome
    _staging_rotate(plan, outcome.counts, apply=True)
    _warehouse_rotate(plan, outcome.counts, apply=True)
    return outcome


def _staging_rotate(plan: _Plan, counts: Counter[str], *, apply: bool) -> None:
    config = plan.config
    for dataset in config.datasets:
        for ref, _manifest in _partitions(config, dataset):
            changed = Counter[str]()
            rewrite = _counted(lambda _o, t, d=dataset: _raw_rotate(plan, d, t), changed)
            if _publish(ref, rewrite, apply=apply):
                counts["raw_partitions"] += 1
                counts["raw_pseudonyms"] += changed["pseudonyms"]
                counts["raw_tokens"] += changed["tokens"]
    for ref, manifest in _partitions(config, None):
        rekey = (
            plan.rekey if plan.rekey is not None and manifest.key_fingerprint != plan.fingerprint else None
        )
        changes = {"key_fingerprint": plan.fingerprint} if rekey is not None else None
        changed = Counter[str]()
        rewrite = _counted(lambda o, t, r=rekey: _transformed_rotate(plan, r, o, t), changed)
        if _publish(ref, rewrite, apply=apply, changes=changes):
            counts["transformed_partitions"] += 1
            counts["transformed_pseudonyms"] += changed["pseudonyms"]
            counts["transformed_tokens"] += changed["tokens"]


Rewrite = Callable[[str | None, pa.Table], tuple[pa.Table | None, Counter[str]]]


def _counted(rewrite: Rewrite, changed: Counter[str]) -> Callable[[str | None, pa.Table], pa.Table | None]:
    def counted(output: str | None, table: pa.Table) -> pa.Table | None:
        new, counts = rewrite(output, table)
        changed.update(counts)
        return new

    return counted


def _publish(
    ref: staging.PartitionRef,
    rewrite: Callable[[str | None, pa.Table], pa.Table | None],
    *,
    apply: bool,
    changes: dict | None = None,
) -> bool:
    """Whether the partition changes (is republished, when applying)."""
    if apply:
        published = staging.partition_rewrite(ref, rewrite, manifest_changes=changes) is not None
        if published:
            fault_point(FAULT_AFTER_PARTITION)
        return published
    with staging.partitions_reading([ref]):
        manifest = staging.manifest_read(ref)
        owner = {f: name for name, out in manifest.outputs.items() for f in out.get("files", ())}
        files = [rewrite(owner.get(name), pq.read_table(ref.dir / name)) for name in manifest.files]
    return any(t is not None for t in files) or bool(changes)


def _column_set(table: pa.Table, name: str, values: list[str | None]) -> pa.Table:
    index = table.schema.get_field_index(name)
    return table.set_column(
        index, table.schema.field(name), pa.array(values, type=table.schema.field(name).type)
    )


def _tokens_rotate(plan: _Plan, table: pa.Table, column: str, changed: Counter[str]) -> pa.Table:
    rotated = [plan.token_rotate(v) for v in table.column(column).to_pylist()]
    moved = sum(flag for _, flag in rotated)
    if not moved:
        return table
    changed["tokens"] += moved
    return _column_set(table, column, [v for v, _ in rotated])


def _raw_rotate(plan: _Plan, dataset: str, table: pa.Table) -> tuple[pa.Table | None, Counter[str]]:
    """A raw file with its pseudonyms recomputed under the new key from their twin (or mapped), and its
    tokens under the newest Fernet key. The tokens are rotated last: the twin is read as it was."""
    changed = Counter[str]()
    original = table
    marks = {name: (table.schema.field(name).metadata or {}).get(b"pii") for name in table.schema.names}
    rekey = plan.rekey
    if rekey is not None:
        twins = rekey.twins.get(dataset, {})
        for name in [n for n, mark in marks.items() if mark == b"hmac-sha256"]:
            twin = twins.get(name)
            clears = (
                [plan.decrypt(v) for v in table.column(twin).to_pylist()]
                if twin in table.schema.names
                else None
            )
            values = table.column(name).to_pylist()
            new_values = []
            for row, value in enumerate(values):
                clear = clears[row] if clears is not None else None
                if clear is not None:
                    new = pseudonym(rekey.new_key, clear)
                else:
                    new, mapped = rekey.rekey(value)
                    if not mapped:
                        plan.unmapped[f"raw/{dataset}.{name}"] += 1
                new_values.append(new)
            moved = sum(a != b for a, b in zip(values, new_values, strict=True))
            if moved:
                changed["pseudonyms"] += moved
                table = _column_set(table, name, new_values)
    for name in [n for n, mark in marks.items() if mark == b"fernet"]:
        table = _tokens_rotate(plan, table, name, changed)
    return (table if table is not original else None), changed


def _transformed_rotate(
    plan: _Plan, rekey: _Rekey | None, output: str | None, table: pa.Table
) -> tuple[pa.Table | None, Counter[str]]:
    """A transformed file as the job makes it under the new keys: customer keys re-keyed (`rekey` None: the
    partition is under the new pseudonym key already), customers' tokens under the newest Fernet key, and
    quarantine records with their pseudonyms re-keyed and their fingerprints recomputed."""
    changed = Counter[str]()
    original = table
    names = table.schema.names
    if rekey is not None and output in ("sales_lines", "customers") and "customer_key" in names:
        values = table.column("customer_key").to_pylist()
        new_values = []
        for value in values:
            new, mapped = rekey.rekey(value)
            if not mapped:
                plan.unmapped[f"transformed/{output}.customer_key"] += 1
            new_values.append(new)
        moved = sum(a != b for a, b in zip(values, new_values, strict=True))
        if moved:
            changed["pseudonyms"] += moved
            table = _column_set(table, "customer_key", new_values)
    if output == "customers" and "email_encrypted" in names:
        table = _tokens_rotate(plan, table, "email_encrypted", changed)
    if rekey is not None and output == "quarantine" and "raw_record" in names:
        records = table.column("raw_record").to_pylist()
        new_records = [_record_rekey(plan, rekey, r, "transformed/quarantine") for r in records]
        hits = [a != b for a, b in zip(records, new_records, strict=True)]
        if any(hits):
            changed["pseudonyms"] += sum(hits)
            table = _column_set(table, "raw_record", new_records)
            if "record_fingerprint" in names:
                prints = [
                    _fingerprint(r) if hit else p
                    for r, p, hit in zip(
                        new_records, table.column("record_fingerprint").to_pylist(), hits, strict=True
                    )
                ]
                table = _column_set(table, "record_fingerprint", prints)
        if "message" in names:
            messages = table.column("message").to_pylist()
            new_messages = [rekey.text_rekey(m)[0] for m in messages]
            if new_messages != messages:
                table = _column_set(table, "message", new_messages)
    return (table if table is not original else None), changed


def _record_rekey(plan: _Plan, rekey: _Rekey, record: str | None, place: str) -> str | None:
    """A quarantined raw record with its pseudonyms re-keyed: each 64-hex JSON string value the mapping
    knows. One that is the value of a personal column of its record, and unknown, cannot be re-keyed."""
    new, unknown = rekey.text_rekey(record)
    if unknown:
        personal = _personal_values(plan, record)
        missing = sum(1 for hexed in unknown if hexed in personal)
        if missing:
            plan.unmapped[place] += missing
    return new


def _personal_values(plan: _Plan, record: str) -> set[str]:
    try:
        doc = json.loads(record)
    except ValueError:
        return set()
    if not isinstance(doc, dict):
        return set()
    columns: set[str] = set()
    for dataset in plan.config.datasets.values():
        columns |= dataset.pii
    for clear in plan.rekey.clear.values():
        columns |= set(clear)
    return {v for k, v in doc.items() if k in columns and isinstance(v, str)}


def _fingerprint(record: str | None) -> str | None:
    return None if record is None else record_fingerprint(record)


# --- warehouse ----------------------------------------------------------------------------------------


def _warehouse_rotate(plan: _Plan, counts: Counter[str], *, apply: bool) -> None:
    """Customers' keys and tokens, quarantined records, and last the key's fingerprint, in one transaction:
    a kill before it commits leaves the warehouse as it was (under the old key, which runs then refuse)."""
    config = plan.config
    db = config.database
    with transaction.atomic(using=db):
        members = DimCustomer.objects.using(db).filter(pipeline=config.name).order_by("pk")
        if apply:
            members = members.select_for_update()
        changed_members = []
        for member in members:
            changed = False
            if plan.rekey is not None:
                new, mapped = plan.rekey.rekey(member.customer_key)
                if not mapped:
                    plan.unmapped["warehouse/dim_customers"] += 1
                if new != member.customer_key:
                    member.customer_key = new
                    changed = True
                    counts["dim_customers"] += 1
            token, moved = plan.token_rotate(member.email_encrypted)
            if moved:
                member.email_encrypted = token
                changed = True
                counts["customer_tokens"] += 1
            if changed:
                changed_members.append(member)
        if plan.rekey is None:
            if apply and changed_members:
                DimCustomer.objects.using(db).bulk_update(
                    changed_members, ["email_encrypted"], batch_size=500
                )
            return
        rows = QuarantinedRow.objects.using(db).filter(pipeline=config.name).order_by("pk")
        changed_rows = []
        for row in rows.select_for_update() if apply else rows:
            record = _record_rekey(plan, plan.rekey, row.raw_record, "warehouse/quarantined_rows")
            message = plan.rekey.text_rekey(row.message)[0]
            if record != row.raw_record or message != row.message:
                changed_rows.append((row, record, message))
        counts["quarantined_rows"] += len(changed_rows)
        if not apply:
            return
        # Old and new pseudonyms are disjoint sets: no update meets another row's key.
        DimCustomer.objects.using(db).bulk_update(
            changed_members, ["customer_key", "email_encrypted"], batch_size=500
        )
        for row, record, message in changed_rows:
            quarantined_rewrite(row, raw_record=record, message=message, using=db)
        PseudonymKey.objects.using(db).filter(pipeline=config.name).update(fingerprint=plan.fingerprint)
