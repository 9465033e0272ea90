"""A quarantined record rewritten in place (an erasure, a key rotation): its fingerprint follows its new
text, and a record that thereby becomes another's copy is merged into it, occurrences added, since the
warehouse keeps one record per (pipeline, date, dataset, fingerprint) as the loader does."""

from __future__ import annotations

import hashlib

from .models import QuarantinedRow


def record_fingerprint(raw_record: str) -> str:
    """What the job stores as `record_fingerprint`: the sha256 of the raw record's text."""
    return hashlib.sha256(raw_record.encode("utf-8")).hexdigest()


def quarantined_rewrite(row: QuarantinedRow, *, raw_record: str, message: str, using: str) -> None:
    row.raw_record, row.message = raw_record, message
    row.record_fingerprint = record_fingerprint(raw_record)
    same = (
        QuarantinedRow.objects.using(using)
        .filter(
            pipeline=row.pipeline,
            business_date=row.business_date,
            dataset=row.dataset,
            record_fingerprint=row.record_fingerprint,
        )
        .exclude(pk=row.pk)
        .first()
    )
    if same is not None:  # another record's copy now: one record, both counted
        same.occurrences += row.occurrences
        same.save(using=using, update_fields=["occurrences"])
        row.delete(using=using)
        return
    row.save(using=using, update_fields=["message", "raw_record", "record_fingerprint"])
