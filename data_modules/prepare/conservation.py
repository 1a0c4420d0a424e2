"""No interaction row disappears uncounted: rows entering preparation = kept + quarantined (per rule) + merged
(duplicates) + filtered (per filter), computed for every reader, written to the manifest and checked.

The steps that remove interaction rows (timestamps, clean, filter) count every removal in the Quarantine under a
rule. `RowLedger` snapshots the counts before them and attributes the difference afterwards; if the rows removed
and the rows counted disagree, preparation stops: a step dropped rows without saying so (a bug, not bad data).

`entering` is what the reader handed over (it quarantined malformed lines itself, counted in `reader`, with
`rows_read` per file; its own invariant, rows_read = rows returned + quarantined, is tested per reader).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from data_modules.errors import Quarantine

MERGED = ("exact_duplicate", "duplicate_pair")  # rows folded into another row of the same (user, item)
FILTERED = ("below_rating_threshold", "k_core")  # rows removed on purpose by a filter
FLAGGED = ("empty_review_text",)  # counted, but the row is kept (its text is declared missing)


class ConservationError(RuntimeError):
    """A preparation step removed interaction rows that no rule counted (a bug in fusionrec, not in the data)."""


@dataclass
class RowLedger:
    entering: int
    reader: dict[str, int]
    rows_read: dict[str, int]
    _before: Counter = field(default_factory=Counter)

    @classmethod
    def start(cls, n_interactions: int, q: Quarantine, rows_read: dict[str, int]) -> RowLedger:
        """Call when the reader's tables are in hand, before any step that can drop interaction rows."""
        return cls(n_interactions, dict(q.counts), dict(rows_read), Counter(q.counts))

    def mark(self, q: Quarantine) -> None:
        """Call after steps that count only non-interaction rows (graphs, side tables): they are not attributed."""
        self._before = Counter(q.counts)

    def close(self, kept: int, q: Quarantine) -> dict[str, Any]:
        """The record for the manifest; ConservationError when entering != kept + removed."""
        delta = Counter(q.counts)
        delta.subtract(self._before)
        removed = {rule: n for rule, n in sorted(delta.items()) if n > 0 and rule not in FLAGGED}
        record = {
            "entering": self.entering,
            "kept": kept,
            "quarantined": {r: n for r, n in removed.items() if r not in MERGED and r not in FILTERED},
            "merged": {r: n for r, n in removed.items() if r in MERGED},
            "filtered": {r: n for r, n in removed.items() if r in FILTERED},
            "reader": {"rows_read": self.rows_read, "quarantined": self.reader},
        }
        accounted = kept + sum(removed.values())
        if accounted != self.entering:
            raise ConservationError(
                f"interaction rows not conserved: {self.entering} entered preparation but kept ({kept}) + "
                f"quarantined + merged + filtered ({sum(removed.values())}: {removed}) = {accounted}")
        return record
