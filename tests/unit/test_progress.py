"""guards.progress: steady-interval progress lines with a count, a share and an ETA."""

from __future__ import annotations

import logging

import pytest

from guards import progress as progress_mod
from guards.progress import Steps, duration, progress


def test_lines_carry_count_share_elapsed_and_eta(monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    clock = iter([0.0, 10.0, 20.0, 30.0, 30.0])
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: next(clock))
    log = logging.getLogger("test.progress")
    with caplog.at_level("INFO", logger="test.progress"):
        steps = Steps(4, what="work", unit="files", logger=log, every_seconds=10.0)
        steps.advance()  # t=10: 1 of 4 in 10 s, 30 s left
        steps.advance()  # t=20
        steps.advance(2)  # t=30
        steps.done()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "work: 1/4 files (25%), 10s elapsed, ETA 30s"
    assert lines[1] == "work: 2/4 files (50%), 20s elapsed, ETA 20s"
    assert lines[2] == "work: 4/4 files (100%), 30s elapsed, ETA 0s"
    assert lines[3] == "work: done, 4 files in 30.0s"


def test_no_line_before_the_interval_and_unknown_total_gives_a_rate(monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    clock = iter([0.0, 1.0, 2.0, 12.0, 12.0])
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: next(clock))
    log = logging.getLogger("test.progress")
    with caplog.at_level("INFO", logger="test.progress"):
        assert list(progress(iter("abc"), total=None, what="scan", logger=log, every_seconds=10.0)) == ["a", "b", "c"]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["scan: 3, 12s elapsed (0.2/s)", "scan: done, 3 in 12.0s"]


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (59, "59s"), (61, "1m01s"), (3725, "1h02m")])
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text
