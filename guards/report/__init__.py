"""The gate report: ``index.html`` for the data steward and ``gate.json`` for machines (ARCHITECTURE.md).

Both files are written to a temporary name in ``out_dir`` and renamed, so a crash never leaves a partial
report under its final name. The report has no access to the pseudonym key.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from guards.atomic import write_text
from guards.checks.base import CheckResult
from guards.gate import GateDecision
from guards.policy import ReleasePolicy
from guards.report.html import render_html

log = logging.getLogger(__name__)

__all__ = ["write_report", "render_html"]


def write_report(decision: GateDecision, results: list[CheckResult], out_dir: Path, *, policy: ReleasePolicy,
                 context: dict[str, Any]) -> Path:
    """Write ``out_dir/gate.json`` and ``out_dir/index.html``; return the path of index.html.

    gate.json names the run and attempt it decided (``context['run_id']``, ``context['attempt']``) first."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    which = {k: context[k] for k in ("run_id", "attempt") if k in context}
    gate = json.dumps({**which, **decision.to_json()}, indent=2, allow_nan=False, default=str)
    write_text(out_dir / "gate.json", gate + "\n")
    index = out_dir / "index.html"
    write_text(index, render_html(decision, results, policy=policy, context=context))
    log.info("report: %s (%s)", index, "passed" if decision.passed else "failed")
    return index
