"""Clear errors for bad input, and the quarantine that counts rejected rows instead of dropping them silently."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input that stops preparation. The message names the file, the row or field, and what was expected."""

    def __init__(self, message: str, *, path: str | Path | None = None, row: int | None = None, field: str | None = None):
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")
        self.path, self.row, self.field = path, row, field


@dataclass
class Quarantine:
    """Rows rejected by a rule: every rejection is counted per rule; a bounded sample keeps the rows themselves.

    `max_bad_fraction` turns "too many bad rows" into a `DataError` at `check()` time.
    """

    sample_per_rule: int = 20
    counts: Counter = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)
    _sampled: Counter = field(default_factory=Counter)
    unused: Counter = field(default_factory=Counter)
    """Rows that are fine but reach nothing kept (a user row without interactions, a KG triple touching no item):
    reported as *unused*, apart from the rejections in `counts`; `unused_files` says where each came from."""
    unused_files: dict[str, str] = field(default_factory=dict)

    def note_unused(self, rule: str, count: int, *, path: str | Path | None = None) -> None:
        """Count `count` harmless rows that nothing uses (not a rejection: never counts towards a threshold)."""
        if count > 0:
            self.unused[rule] += count
            if path is not None:
                self.unused_files.setdefault(rule, str(path))

    def reject(self, rule: str, *, path: str | Path | None = None, row: int | None = None, reason: str = "", record: Any = None) -> None:
        self.counts[rule] += 1
        if self._sampled[rule] < self.sample_per_rule:
            self._sampled[rule] += 1
            self.samples.append(
                {"rule": rule, "file": None if path is None else str(path), "row": row, "reason": reason, "record": _jsonable(record)}
            )

    def reject_many(self, rule: str, count: int, *, path: str | Path | None = None, reason: str = "", records: list[Any] | None = None, rows: list[int] | None = None) -> None:
        """Count `count` rejections at once (vectorised rules) and sample up to `sample_per_rule` of `records`."""
        if count <= 0:
            return
        self.counts[rule] += count
        records = records or []
        rows = rows or [None] * len(records)  # type: ignore[list-item]
        for rec, r in zip(records, rows):
            if self._sampled[rule] >= self.sample_per_rule:
                break
            self._sampled[rule] += 1
            self.samples.append({"rule": rule, "file": None if path is None else str(path), "row": r, "reason": reason, "record": _jsonable(rec)})

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def check(self, rows_seen: int, max_bad_fraction: float, what: str) -> None:
        """Raise when the rejected share of `rows_seen` exceeds `max_bad_fraction`."""
        if rows_seen and self.total / rows_seen > max_bad_fraction:
            detail = ", ".join(f"{k}: {v}" for k, v in self.counts.most_common())
            first = self.samples[0] if self.samples else {}
            raise DataError(
                f"{self.total} of {rows_seen} rows rejected ({self.total / rows_seen:.1%}) in {what}, above "
                f"max_bad_fraction={max_bad_fraction} ({detail}); first rejected: {first}"
            )

    def merge(self, other: Quarantine) -> None:
        self.counts.update(other.counts)
        self.unused.update(other.unused)
        for k, v in other.unused_files.items():
            self.unused_files.setdefault(k, v)
        for s in other.samples:
            if self._sampled[s["rule"]] < self.sample_per_rule:
                self._sampled[s["rule"]] += 1
                self.samples.append(s)

    def write(self, path: Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            for s in self.samples:
                f.write(json.dumps(s, ensure_ascii=False) + "\n")


def _jsonable(x: Any) -> Any:
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, bytes):
        return x.decode("utf-8", errors="backslashreplace")
    try:
        return x.item()  # numpy scalar
    except AttributeError:
        return str(x)
