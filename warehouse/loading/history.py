"""Dimension history (SCD type 2): what observing a member's attributes on one business date does to its
versions. The rules live here as a pure function over one member's versions; the portable path applies it
member by member, the PostgreSQL path states the same rules set-wise in SQL (`postgres._plan_history`), and
the equivalence tests hold the two together.

A member's versions are contiguous ranges [valid_from, valid_to), the last one open-ended (the current one).
Read them as points (valid_from, attributes), each lasting until the next point. Observing attributes A on
date D, with E the earliest date after D that the warehouse has loaded (a DimDate row):

1. V is the version valid on D. If V holds A, nothing changes: no row is written.
2. The point at D, if any, is replaced by (D, A), keeping its row: a re-run of D with a corrected export
   corrects that version in place.
3. The loaded dates from E on saw V's attributes, so when E falls inside V the point (E, V's attributes)
   keeps them there: a backfill of D changes D up to the next loaded date, not the dates already loaded.
   Without a version on D (a backfill before the member's first version), nothing is kept: the new
   version reaches the first one, as a load in date order would have carried it over the dates in between.
4. A point holding the same attributes as the point before it is absorbed, so every version differs from
   its neighbours. This is what makes loading dates in any order end in the same versions as loading
   them in date order (tests/warehouse/test_history.py loads every order).
5. Each remaining point is a version up to the next point. It keeps the row of its own point, else the row
   of the earliest point it absorbed (whose facts then stay put), else it is a new row. Rows no version
   keeps are deleted once their facts are re-pointed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date
from typing import Any


@dataclass(frozen=True)
class Version:
    id: int | None  # None: a version to insert
    valid_from: date
    valid_to: date | None
    attributes: tuple[Any, ...]

    @property
    def is_current(self) -> bool:
        return self.valid_to is None

    def covers(self, day: date) -> bool:
        return self.valid_from <= day and (self.valid_to is None or day < self.valid_to)


def version_on(versions: Sequence[Version], day: date) -> Version | None:
    return next((v for v in versions if v.covers(day)), None)


def observe(
    versions: Sequence[Version], *, day: date, attributes: tuple[Any, ...], next_loaded: date | None
) -> list[Version] | None:
    """The member's versions after observing `attributes` on `day` (sorted by valid_from), or None when
    nothing changes. `next_loaded` is E, the earliest loaded date after `day`."""
    current = version_on(versions, day)
    if current is not None and current.attributes == attributes:
        return None
    own = next((v.id for v in versions if v.valid_from == day), None)
    points = [(v.valid_from, v.attributes, v.id) for v in versions if v.valid_from != day]
    points.append((day, attributes, own))
    if current is not None and next_loaded is not None and current.covers(next_loaded):
        points.append((next_loaded, current.attributes, None))
    points.sort(key=lambda point: point[0])

    kept: list[Version] = []
    for valid_from, attrs, row in points:
        if kept and kept[-1].attributes == attrs:
            if kept[-1].id is None:
                kept[-1] = replace(kept[-1], id=row)
            continue
        kept.append(Version(row, valid_from, None, attrs))
    return [
        replace(v, valid_to=kept[i + 1].valid_from if i + 1 < len(kept) else None) for i, v in enumerate(kept)
    ]
