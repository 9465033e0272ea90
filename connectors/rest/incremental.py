"""The REST connector's incremental read: the filter sent from the saved watermark, and which records of a
run are new (connectors/watermarks.py keeps the records seen at the watermark instant)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from ..base import ExtractWindow, reject_unknown_options
from ..errors import ConfigurationError, SourceError, value_excerpt
from ..options import ANY, NUMBER, TEXT, Table
from ..records import MISSING, resolve_path
from ..watermarks import Ties, fingerprint

__all__ = [
    "BOUNDS",
    "EXCLUSIVE_STEP",
    "INCREMENTAL_OPTIONS",
    "WATERMARK_FORMATS",
    "Incremental",
    "WatermarkFilter",
    "incremental_options",
    "saved_ties",
]

WATERMARK_FORMATS = ("iso", "epoch")
BOUNDS = ("inclusive", "exclusive")
# An exclusive filter is sent this much early, so records stamped later within the watermark's own second
# (the precision most APIs keep) are still read; what the step adds is dropped on arrival.
EXCLUSIVE_STEP = timedelta(seconds=1)
INCREMENTAL_OPTIONS = Table(
    {
        "param": TEXT,
        "cursor_field": TEXT,
        "lookback_seconds": NUMBER,
        "initial": ANY,  # text (iso), a number (epoch) or a TOML date-time: read by `format`
        "format": TEXT,
        "end_param": TEXT,
        "bound": TEXT,
        "id_field": TEXT,
    }
)
FORMAT_WORDS = {"iso": "an ISO 8601 instant", "epoch": "a Unix time in seconds"}


@dataclass(frozen=True)
class Incremental:
    """Filter by the saved watermark: `param` = watermark - lookback; `end_param` = the window's end.

    `bound` is how the API compares `param`: "inclusive" (>=) or "exclusive" (>)."""

    param: str
    cursor_field: str
    lookback: timedelta
    initial: Any
    format: str
    end_param: str | None
    bound: str
    id_field: str

    def step_back(self, instant: Any, delta: timedelta) -> Any:
        return instant - (delta if self.format == "iso" else Decimal(delta.total_seconds()))

    def floor(self, saved: Ties) -> Any:
        """The earliest instant a run reads: saved watermark - lookback, else `initial`, else None."""
        if saved.instant is not None:
            return self.step_back(saved.instant, self.lookback)
        return self.initial

    def params(self, floor: Any, window: ExtractWindow) -> dict[str, Any]:
        """The filter's request values: `param` from `floor`, `end_param` at the window's end."""
        params: dict[str, Any] = {}
        if floor is not None:
            since = step_back_exclusive(self, floor)
            params[self.param] = watermark_text(since, self.format)
        if self.end_param:
            end = window.end if self.format == "iso" else Decimal(int(window.end.timestamp()))
            params[self.end_param] = watermark_text(end, self.format)
        return params


def step_back_exclusive(incremental: Incremental, since: Any) -> Any:
    return incremental.step_back(since, EXCLUSIVE_STEP) if incremental.bound == "exclusive" else since


class WatermarkFilter:
    """Which records of a run are new, and the state to save after it.

    The request reads from `floor` = saved watermark - lookback inclusively (an exclusive API is asked one
    step early and the step's records dropped here). The records at exactly the saved watermark that the
    previous run delivered (same key, same content) are dropped; a new one, or one updated again within
    that instant, is kept. The state saved is the greatest instant seen and what was seen at it.
    """

    def __init__(self, incremental: Incremental, saved: Ties, floor: Any, *, source: str) -> None:
        self.incremental = incremental
        self.saved = saved
        self.floor = floor
        self.source = source
        # An inclusive re-read returns everything now at the saved instant, so what this run sees there
        # is the whole set, even when the saved state did not record one.
        self.seen = Ties(saved.instant) if saved.instant is not None else Ties()

    def admit(self, records: list[dict[str, Any]], shown: str) -> list[dict[str, Any]]:
        incremental = self.incremental
        kept = []
        for index, record in enumerate(records):
            value = resolve_path(record, incremental.cursor_field)
            if value is MISSING or value is None or value == "":
                kept.append(record)
                continue
            instant = parse_instant(value, incremental.format)
            if instant is None:
                record_id = value_excerpt(record.get("id", "?"))
                raise SourceError(
                    f"source {self.source!r}: {shown}: record {index} (id {record_id}) "
                    f"has {incremental.cursor_field} = {value_excerpt(value)}, "
                    f"not {FORMAT_WORDS[incremental.format]}"
                )
            key, print_ = self._identity(record)
            self.seen.observe(instant, key, print_, source=self.source)
            if incremental.bound == "exclusive" and self.floor is not None and instant < self.floor:
                continue  # asked for only because the exclusive bound was sent a step early
            if self.saved.delivered(instant, key, print_):
                continue
            kept.append(record)
        return kept

    def state(self) -> dict[str, Any] | None:
        ties = self.seen
        if ties.instant is None:
            return None
        state: dict[str, Any] = {"watermark": watermark_text(ties.instant, self.incremental.format)}
        if ties.complete:
            state["at_watermark"] = dict(sorted(ties.seen.items()))
        return state

    def _identity(self, record: dict[str, Any]) -> tuple[str, str]:
        print_ = fingerprint(record)
        key = resolve_path(record, self.incremental.id_field)
        return (print_ if key is MISSING or key is None else str(key)), print_


def saved_ties(source: str, state: Mapping[str, Any] | None, incremental: Incremental) -> Ties:
    """The saved watermark and the records at it; a state saved before those were recorded has only
    {"watermark": ...}, so nothing at it can be told apart as delivered."""
    state = state or {}
    value = state.get("watermark")
    if value is None:
        return Ties()
    instant = parse_instant(value, incremental.format)
    seen = state.get("at_watermark")
    if instant is None or (seen is not None and not isinstance(seen, Mapping)):
        raise SourceError(
            f"source {source!r}: the saved state {state!r} is not "
            f'{{"watermark": {FORMAT_WORDS[incremental.format]}, "at_watermark": {{id: digest}}}} '
            "(incremental.format changed?)"
        )
    return Ties(instant, seen, complete=seen is not None)


def incremental_options(
    source: str, table: dict[str, Any], *, params: Mapping[str, Any], body: Mapping[str, Any] | None
) -> Incremental | None:
    """The `incremental` table, checked. `body` is the POST body template (None for GET): a bound the
    filter sets must not also be set there or in `params`."""
    if not table:
        return None
    reject_unknown_options(source, table, INCREMENTAL_OPTIONS.keys, prefix="incremental.")
    for key in ("param", "cursor_field"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise ConfigurationError(f"source {source!r}: incremental.{key} is required (a name)")
    fmt = table.get("format", "iso")
    if fmt not in WATERMARK_FORMATS:
        raise ConfigurationError(
            f"source {source!r}: incremental.format {fmt!r} is not one of {', '.join(WATERMARK_FORMATS)}"
        )
    lookback = _seconds(source, table.get("lookback_seconds", 0))
    initial = table.get("initial")
    parsed_initial = None
    if initial is not None:
        parsed_initial = parse_instant(initial, fmt)
        if parsed_initial is None:
            raise ConfigurationError(
                f"source {source!r}: incremental.initial {initial!r} is not {FORMAT_WORDS[fmt]}"
            )
    end_param = table.get("end_param")
    if end_param is not None and (not isinstance(end_param, str) or not end_param):
        raise ConfigurationError(f"source {source!r}: incremental.end_param must be a parameter name")
    bound = table.get("bound", "inclusive")
    if bound not in BOUNDS:
        raise ConfigurationError(
            f"source {source!r}: incremental.bound {bound!r} is not one of {', '.join(BOUNDS)} "
            "(how the API compares incremental.param: >= or >)"
        )
    id_field = table.get("id_field", "id")
    if not isinstance(id_field, str) or not id_field:
        raise ConfigurationError(f"source {source!r}: incremental.id_field must be a field name")
    for option in ("param", "end_param"):
        name = table.get(option)
        in_body = body is not None and resolve_path(body, name or "") is not MISSING
        if name is not None and (name in params or in_body):
            # Both would set the same query parameter; one of them would be silently ignored.
            where = "body" if in_body else "params"
            raise ConfigurationError(
                f"source {source!r}: {where}.{name} is also incremental.{option}; remove it from "
                f"{where} (the incremental filter sets it from the saved watermark)"
            )
    return Incremental(
        param=table["param"],
        cursor_field=table["cursor_field"],
        lookback=timedelta(seconds=lookback),
        initial=parsed_initial,
        format=fmt,
        end_param=end_param,
        bound=bound,
        id_field=id_field,
    )


def parse_instant(value: Any, fmt: str) -> Any:
    """A comparable instant (aware datetime for iso, Decimal seconds for epoch), or None if unreadable."""
    if fmt == "epoch":
        if isinstance(value, bool):
            return None
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    else:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # no offset: read as UTC


def watermark_text(instant: Any, fmt: str) -> Any:
    if fmt == "epoch":
        return int(instant) if instant == int(instant) else float(instant)
    return instant.astimezone(UTC).isoformat()


def _seconds(source: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (number >= 0 and number != float("inf")):
        raise ConfigurationError(
            f"source {source!r}: incremental.lookback_seconds must be a positive number, got {value!r}"
        )
    return number
