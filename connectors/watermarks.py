"""What a source delivered at exactly its watermark, so the next run neither repeats nor skips it.

A watermark alone cannot say which records sharing its exact value were delivered: `>` skips the ones
that arrive later with that value, `>=` repeats the ones already read. Remembering them by key and by a
fingerprint of their content lets the next run re-read the watermark inclusively and drop only what it
already delivered; a record updated again within the same instant has a new fingerprint and comes
through.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_TIES", "Ties", "fingerprint"]

logger = logging.getLogger(__name__)

# Beyond this many records at one instant the state would grow without bound (a bulk update stamping a
# million rows alike); the set is then dropped and the next run re-reads that instant whole: at-least-once.
MAX_TIES = 10_000


def fingerprint(value: Any) -> str:
    """A short, stable digest of a record's content (key order and number types do not matter)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class Ties:
    """The greatest instant observed and {key: fingerprint} of the records observed at exactly it.

    `complete` is False when the records at the instant are not all known (a state saved before ties
    were recorded, or more than MAX_TIES of them): nothing can then be dropped as already delivered.
    """

    def __init__(self, instant: Any = None, seen: Mapping[str, str] | None = None, *, complete: bool = True):
        self.instant = instant
        self.seen = dict(seen or {})
        self.complete = complete

    def delivered(self, instant: Any, key: str, print_: str) -> bool:
        """Whether this exact record (same key, same content) was delivered at the instant."""
        return self.complete and instant == self.instant and self.seen.get(key) == print_

    def observe(self, instant: Any, key: str, print_: str, *, source: str) -> None:
        if self.instant is None or instant > self.instant:
            self.instant, self.seen, self.complete = instant, {}, True
        elif instant < self.instant or not self.complete:
            return
        self.seen[key] = print_
        if len(self.seen) > MAX_TIES:
            logger.warning(
                "source %s: more than %d records share the watermark %s; the next run reads them again",
                source,
                MAX_TIES,
                instant,
            )
            self.seen, self.complete = {}, False

    def copy(self) -> Ties:
        return Ties(self.instant, self.seen, complete=self.complete)
