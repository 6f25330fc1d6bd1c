"""The gate report: ``index.html`` for the data steward and ``gate.json`` for machines (ARCHITECTURE.md).

Both files are written to a temporary name in ``out_dir`` and renamed, so a crash never leaves a partial
report under its final name. The report has no access to the pseudonym key.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from guards.checks.base import CheckResult
from guards.gate import GateDecision
from guards.policy import ReleasePolicy
from guards.report.html import render_html

log = logging.getLogger(__name__)

__all__ = ["write_report", "render_html"]


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(decision: GateDecision, results: list[CheckResult], out_dir: Path, *, policy: ReleasePolicy,
                 context: dict[str, Any]) -> Path:
    """Write ``out_dir/gate.json`` and ``out_dir/index.html``; return the path of index.html."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gate = json.dumps(decision.to_json(), indent=2, allow_nan=False, default=str)
    _atomic_write(out_dir / "gate.json", gate + "\n")
    index = out_dir / "index.html"
    _atomic_write(index, render_html(decision, results, policy=policy, context=context))
    log.info("report: %s (%s)", index, "passed" if decision.passed else "failed")
    return index
