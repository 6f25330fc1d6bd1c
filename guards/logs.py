"""Third-party log noise, silenced by default so that progress and findings stay readable."""

from __future__ import annotations

import logging

# Loggers that talk at INFO about their own internals: Great Expectations logs one "Skipping registering function"
# line per public function at import (214 per run).
NOISY: tuple[str, ...] = ("great_expectations",)


def quiet_third_party() -> None:
    """Raise each noisy logger to WARNING unless the user has set its level themselves."""
    for name in NOISY:
        log = logging.getLogger(name)
        if log.level == logging.NOTSET:
            log.setLevel(logging.WARNING)
