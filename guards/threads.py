"""How many CPU threads torch may use for the small models of protect and the checks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# The checks' SmallCNN (12k weights, batch 32): one thread. Measured on the shared 2-core machine: 1.7 s/epoch on
# 1 thread, 9.9 s/epoch on 2 (1,000 x 64x64; benchmarks/checks_suite/RESULTS.md).
CPU_THREADS = 1


def available_cores() -> int:
    """CPU cores this process may run on: the threads of protect's surrogate (width 32, batches of 256).

    Measured on the 2-core machine (benchmarks/protect_speed/RESULTS.md): 200 images at 64x64, 2 noise rounds,
    158 s on 1 thread and 93 s on 2 when quiet; 150 s and 169 s with both cores busy with other work. The
    surrogate's batches are large enough for a second thread to pay on a quiet machine."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Temporarily run torch's CPU ops on ``n`` threads (None: unchanged), restoring the previous setting."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
