"""Volume guards: per-dataset bounds on the transform's accounting, checked before anything is published.

A header-only export is not an error to the extract or the job (zero rows are a valid partition), but it
is rarely what happened on a trading day. The guards declared in the pipeline file
(``[datasets.<name>.guards]``, docs/configuration.md "Volume guards") turn such a day into a failed run
naming the dataset, the figure and its bound, or into a recorded warning.

``guards_evaluate`` is the pure core (counts in, breaches out); ``guards_enforce`` is what the transform
step calls between the job's accounting and publishing its partition, so a failing guard leaves no
partition that a later ``load`` could pick up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date
from decimal import Decimal
from fractions import Fraction
from typing import Any

from .config import GuardConfig, PipelineConfig
from .errors import VolumeGuardError
from .runs import StepOutcome

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreviousCounts:
    """The reference for ``max_drop``: the transform accounting of the nearest earlier business date
    with a successful run of the pipeline."""

    business_date: date
    run_id: int
    datasets: Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Breach:
    dataset: str
    guard: str
    on_breach: str
    value: float  # the figure: rows for min_rows, a share (0..1) for the others
    bound: float
    message: str


@dataclass(frozen=True)
class Skipped:
    """A declared guard that could not be evaluated, and why (the run record says so)."""

    dataset: str
    guard: str
    reason: str


@dataclass
class GuardReport:
    breaches: list[Breach] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    previous: PreviousCounts | None = None

    @property
    def failures(self) -> list[Breach]:
        return [b for b in self.breaches if b.on_breach == "fail"]

    def as_dict(self) -> dict[str, Any]:
        previous = None
        if self.previous is not None:
            previous = {"business_date": self.previous.business_date.isoformat(), "run": self.previous.run_id}
        return {
            "breaches": [asdict(b) for b in self.breaches],
            "skipped": [asdict(s) for s in self.skipped],
            "previous": previous,
        }


def guards_evaluate(
    *,
    business_date: date,
    guards: Mapping[str, tuple[GuardConfig, ...]],
    counts: Mapping[str, Mapping[str, Any]],
    previous: PreviousCounts | None,
) -> GuardReport:
    """Check each dataset's guards against its accounting (the job's ``_result.json`` ``datasets``).

    Figures: ``rows_in`` (rows the source delivered for the date) for min_rows and max_drop; shares of the
    records left after de-duplication (rows_in - duplicates) for the quarantined and filtered shares. A
    figure exactly at its bound passes; shares compare as exact fractions (30 of 100 is not above 0.3).
    """
    report = GuardReport(previous=previous)
    for dataset, declared in guards.items():
        for guard in declared:
            outcome = _check(guard, dataset, counts[dataset], previous, business_date)
            if isinstance(outcome, Breach):
                report.breaches.append(outcome)
            elif isinstance(outcome, Skipped):
                report.skipped.append(outcome)
    return report


def _check(
    guard: GuardConfig,
    dataset: str,
    c: Mapping[str, Any],
    previous: PreviousCounts | None,
    business_date: date,
) -> Breach | Skipped | None:
    where = f"{dataset} on {business_date.isoformat()}"
    bound = Fraction(guard.bound)
    if guard.name == "min_rows":
        if c["rows_in"] >= bound:
            return None
        return _breach(
            guard, dataset, c["rows_in"], f"{where}: {c['rows_in']} rows, the guard requires at least {bound}"
        )
    if guard.name in ("max_quarantined_share", "max_filtered_share"):
        records = c["rows_in"] - c["duplicates"]
        if records <= 0:
            return Skipped(dataset, guard.name, "no records: a share of nothing")
        quarantine = guard.name == "max_quarantined_share"
        part = c["rejected"] if quarantine else sum((c.get("filtered") or {}).values())
        share = Fraction(part, records)
        if share <= bound:
            return None
        return _breach(
            guard,
            dataset,
            share,
            f"{where}: {part} of {records} records {'quarantined' if quarantine else 'filtered'} "
            f"({_percent(share)}), the guard allows at most {_percent(bound)}",
        )
    if guard.name == "max_drop":
        if previous is None:
            return Skipped(dataset, guard.name, "no earlier date with a successful run")
        day = previous.business_date.isoformat()
        before = (previous.datasets.get(dataset) or {}).get("rows_in")
        if before is None:
            return Skipped(dataset, guard.name, f"no figure for the dataset on {day}")
        if before <= 0:
            return Skipped(dataset, guard.name, f"0 rows on {day}: nothing to drop from")
        drop = Fraction(before - c["rows_in"], before)
        if drop <= bound:
            return None
        return _breach(
            guard,
            dataset,
            drop,
            f"{where}: {c['rows_in']} rows, {_percent(drop)} fewer than the {before} of {day}, "
            f"the guard allows a drop of at most {_percent(bound)}",
        )
    raise ValueError(f"unknown guard {guard.name!r}")  # config validation rejects it; teach it here first


def guards_enforce(
    *,
    config: PipelineConfig,
    business_date: date,
    counts: Mapping[str, Mapping[str, Any]],
    previous: Callable[[], PreviousCounts | None],
    outcome: StepOutcome,
) -> GuardReport | None:
    """Evaluate the pipeline's guards, report them on the step, log warnings; raise on a `fail` breach.

    ``previous`` is asked for the reference counts only when a ``max_drop`` guard needs them.
    """
    guards = {name: ds.guards for name, ds in config.datasets.items() if ds.guards}
    if not guards:
        return None
    needs_previous = any(g.name == "max_drop" for declared in guards.values() for g in declared)
    report = guards_evaluate(
        business_date=business_date,
        guards=guards,
        counts=counts,
        previous=previous() if needs_previous else None,
    )
    outcome.details["guards"] = report.as_dict()
    for breach in report.breaches:
        if breach.on_breach == "warn":
            logger.warning("pipeline %s: volume guard: %s", config.name, breach.message)
    if report.failures:
        raise VolumeGuardError(f"pipeline {config.name}: " + "; ".join(b.message for b in report.failures))
    return report


def guard_lines(details: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A step record's guard breaches and unevaluated guards as (kind, line): kind is "fail", "warn" or
    "skipped" (pipeline_status, and the warnings a command prints)."""
    guards = details.get("guards") or {}
    lines = []
    for breach in guards.get("breaches") or ():
        label = "guard failed" if breach["on_breach"] == "fail" else "guard warning"
        lines.append((breach["on_breach"], f"{label}: {breach['message']}"))
    for skipped in guards.get("skipped") or ():
        text = f"guard not evaluated: {skipped['dataset']} {skipped['guard']} ({skipped['reason']})"
        lines.append(("skipped", text))
    return lines


def _breach(guard: GuardConfig, dataset: str, value: int | Fraction, text: str) -> Breach:
    return Breach(
        dataset=dataset,
        guard=guard.name,
        on_breach=guard.on_breach,
        value=round(float(value), 6),
        bound=float(guard.bound),
        message=f"{text} ({guard.name})",
    )


def _percent(share: Fraction | Decimal) -> str:
    text = f"{float(share) * 100:.2f}".rstrip("0").rstrip(".")
    return f"{text} %"
