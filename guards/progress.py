"""Progress on long work, through logging (no print), so that Airflow task logs and the CLI both show it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], *, total: int | None, what: str, logger: logging.Logger,
             every_seconds: float = 5.0) -> Iterator[T]:
    """Yield ``items``, logging ``what: n/total (rate/s)`` at most every ``every_seconds`` and once at the end."""
    start = last = time.monotonic()
    n = 0
    for n, item in enumerate(items, start=1):
        yield item
        now = time.monotonic()
        if now - last >= every_seconds:
            last = now
            rate = n / max(now - start, 1e-9)
            logger.info("%s: %d/%s (%.1f/s)", what, n, total if total is not None else "?", rate)
    elapsed = time.monotonic() - start
    logger.info("%s: done, %d in %.1fs", what, n, elapsed)
