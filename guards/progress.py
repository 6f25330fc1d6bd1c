"""Progress on long work, through logging (no print), so that Airflow task logs and the CLI both show it.

Lines come at a steady interval (``every_seconds``, 10 s by default) with the count, the rate and, when the total
is known, the time left at the rate so far::

    protect: surrogate warm-up: 120/300 batches (40%), 31s elapsed, ETA 46s
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

EVERY_SECONDS = 10.0


def duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Steps:
    """Counts steps of one piece of long work and logs progress at most every ``every_seconds``.

    ``total`` may be None (unknown); then no ETA is given. ``unit`` names what is counted ("files", "batches").
    ``every_seconds`` defaults to :data:`EVERY_SECONDS`, read when the work starts.
    """

    def __init__(self, total: int | None, *, what: str, logger: logging.Logger, unit: str = "",
                 every_seconds: float | None = None) -> None:
        self.total = total
        self.what = what
        self.logger = logger
        self.unit = f" {unit}" if unit else ""
        self.every_seconds = EVERY_SECONDS if every_seconds is None else every_seconds
        self.count = 0
        self.start = self._last = time.monotonic()

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more steps; log a line when ``every_seconds`` have passed since the last one."""
        self.count += n
        now = time.monotonic()
        if now - self._last >= self.every_seconds:
            self._last = now
            self.logger.info("%s: %s", self.what, self.line(now))

    def line(self, now: float | None = None) -> str:
        """``n/total unit (pct), elapsed, ETA`` (or ``n unit, elapsed, rate`` when the total is unknown)."""
        elapsed = (now if now is not None else time.monotonic()) - self.start
        if self.total:
            left = elapsed / self.count * (self.total - self.count) if self.count else None
            eta = duration(left) if left is not None else "unknown"
            pct = 100 * self.count / self.total
            return f"{self.count}/{self.total}{self.unit} ({pct:.0f}%), {duration(elapsed)} elapsed, ETA {eta}"
        rate = self.count / max(elapsed, 1e-9)
        return f"{self.count}{self.unit}, {duration(elapsed)} elapsed ({rate:.1f}/s)"

    def done(self) -> float:
        """Log the closing line; returns the seconds taken."""
        elapsed = time.monotonic() - self.start
        self.logger.info("%s: done, %d%s in %.1fs", self.what, self.count, self.unit, elapsed)
        return elapsed


def progress(items: Iterable[T], *, total: int | None, what: str, logger: logging.Logger,
             every_seconds: float | None = None) -> Iterator[T]:
    """Yield ``items``, logging ``what: n/total (pct), elapsed, ETA`` at a steady interval and once at the end."""
    steps = Steps(total, what=what, logger=logger, every_seconds=every_seconds)
    for item in items:
        yield item
        steps.advance()
    steps.done()
