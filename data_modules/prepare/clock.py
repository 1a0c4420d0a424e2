"""One log line per preparation stage, with its rows and rows/s (flushed by logging: visible in Slurm logs and `| tee`)."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("fusionrec.prepare")


class StageClock:
    """`done(stage, rows)` logs `stage <name>: <rows> rows in <s> s (<rate> rows/s)` for the time since the previous
    stage ended (or since the clock was made)."""

    def __init__(self) -> None:
        self._t = time.perf_counter()

    def done(self, stage: str, rows: int, what: str = "rows", note: str = "") -> None:
        now = time.perf_counter()
        dt, self._t = now - self._t, now
        rate = f"{rows / dt:,.0f} {what}/s" if dt > 0 else "-"
        log.info("stage %-8s %s %s in %.2f s (%s)%s", stage, f"{rows:,}", what, dt, rate, f"; {note}" if note else "")
