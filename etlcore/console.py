"""What the ops console (the Django admin) shows, computed from run records: pure functions of their
values, so the pages stay templates and each figure is tested without a browser."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MASK = "•••"
EVERY = "*"  # as a personal column: mask every value (the pipeline's declaration could not be read)
LOG_TAIL_LINES = 40
# The tail is read from the end of the file: a Spark log of a long run is large and only its end matters.
_LOG_TAIL_BYTES = 64 * 1024


def duration_human(seconds: float | None) -> str:
    """`35.966081` -> `36s`, `754` -> `12m 34s`, `3725` -> `1h 2m`; `-` when unknown."""
    if seconds is None:
        return "-"
    whole = int(round(seconds))
    if whole < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def error_first_line(error: str, *, width: int = 100) -> str:
    """The error's first line, cut to `width` characters with an ellipsis."""
    line = (error or "").strip().splitlines()[0] if (error or "").strip() else ""
    return line if len(line) <= width else line[: width - 1].rstrip() + "…"


@dataclass(frozen=True)
class DatasetReconciliation:
    """One dataset of a transform: every row read is loaded, quarantined, a duplicate or filtered by a
    rule. `balanced` says whether the figures add up (the job checks it; the page shows it)."""

    dataset: str
    rows_in: int
    loaded: int
    quarantined: int
    duplicates: int
    filtered: dict[str, int] = field(default_factory=dict)
    # Every code a kept record broke, whatever counted it: which rules the quarantined rows failed.
    rule_failures: dict[str, int] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)

    @property
    def filtered_total(self) -> int:
        return sum(self.filtered.values())

    @property
    def accounted(self) -> int:
        return self.loaded + self.quarantined + self.duplicates + self.filtered_total

    @property
    def balanced(self) -> bool:
        return self.accounted == self.rows_in


def reconciliation(details: Mapping[str, Any]) -> list[DatasetReconciliation]:
    """The per-dataset accounting of a transform step's details (empty for other steps)."""
    rows = []
    for name, c in (details.get("datasets") or {}).items():
        if not isinstance(c, Mapping) or "rows_in" not in c:
            continue
        rows.append(
            DatasetReconciliation(
                dataset=name,
                rows_in=int(c["rows_in"]),
                loaded=int(c.get("rows_out", 0)),
                quarantined=int(c.get("rejected", 0)),
                duplicates=int(c.get("duplicates", 0)),
                filtered={k: int(v) for k, v in sorted((c.get("filtered") or {}).items())},
                rule_failures={k: int(v) for k, v in sorted((c.get("rule_failures") or {}).items())},
                warnings={k: int(v) for k, v in sorted((c.get("warnings") or {}).items())},
            )
        )
    return rows


def log_tail(details: Mapping[str, Any], *, lines: int = LOG_TAIL_LINES) -> tuple[str, str]:
    """(where, text): the step's recorded `log_tail` when it has one, else the last `lines` lines of the
    file its `log` names if that still exists; ("", "") when there is neither."""
    path = str(details.get("log") or "")
    recorded = details.get("log_tail")
    if recorded:
        text = recorded if isinstance(recorded, str) else "\n".join(map(str, recorded))
        return path or "recorded with the step", "\n".join(text.splitlines()[-lines:])
    if not path:
        return "", ""
    try:
        with Path(path).open("rb") as log:
            size = log.seek(0, 2)
            log.seek(max(0, size - _LOG_TAIL_BYTES))
            data = log.read()
    except OSError:
        return path, ""
    return path, "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def record_masked(raw_record: str, personal: Iterable[str]) -> str:
    """A quarantined raw record pretty-printed, every personal column replaced by a mask whatever it holds
    (a pseudonym, a Fernet token, `[encrypted]`, a clear value a bug let through). A record that is not a
    JSON object is shown masked whole: it cannot be told which part is personal."""
    try:
        record = json.loads(raw_record)
    except (TypeError, ValueError):
        return MASK
    if not isinstance(record, dict):
        return MASK
    hidden = {name.casefold() for name in personal}
    shown = {k: (MASK if k.casefold() in hidden or EVERY in hidden else v) for k, v in record.items()}
    return json.dumps(shown, indent=2, ensure_ascii=False)


@dataclass(frozen=True)
class Reason:
    """One part of a quarantine message: `invalid_unit_price: unit_price='abc' (note)`."""

    code: str
    column: str = ""
    value: str = ""  # as the message quotes it: 'abc', or null
    note: str = ""


_PART = re.compile(
    r"^(?P<code>[A-Za-z0-9_.-]+)(?:: (?P<column>[^=]+)=(?P<value>'.*?'|null))?(?P<note> \(.*\))?$"
)
_SPLIT = re.compile(r"; (?=[A-Za-z0-9_.-]+(?::| \(|;|$))")


def message_reasons(message: str, personal: Iterable[str] = ()) -> list[Reason]:
    """The codes of a quarantine message with the column and offending value of each; a personal
    column's value masked (it is a pseudonym or a token, still not for every viewer)."""
    hidden = {name.casefold() for name in personal}
    reasons = []
    for part in _SPLIT.split(message or ""):
        found = _PART.match(part.strip())
        if found is None:
            reasons.append(Reason(code=part.strip()))
            continue
        column, value = found["column"] or "", found["value"] or ""
        if (column.casefold() in hidden or EVERY in hidden) and value:
            value = MASK
        reasons.append(Reason(found["code"], column, value, (found["note"] or "").strip()))
    return reasons


def message_masked(message: str, personal: Iterable[str] = ()) -> str:
    """The message as stored, with personal columns' values masked."""
    parts = []
    for r in message_reasons(message, personal):
        text = r.code + (f": {r.column}={r.value}" if r.column else "") + (f" {r.note}" if r.note else "")
        parts.append(text)
    return "; ".join(parts)
