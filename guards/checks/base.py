"""The result every check returns, and the finding rows it is made of (see ARCHITECTURE.md, gate.json).

Checks return findings; only :mod:`guards.gate` turns them into a pass or a failure, once, with all of them.
A check that finds nothing proves it looked: ``examined`` counts what it examined.

Fail closed: a blocking check passes only when it shows the release is safe. A finding is ``inconclusive`` when
it could not show either (an interval that straddles the threshold, too few patients, a reference model that did
not learn); its ``needs`` says, in plain words, what would make it conclusive. ``warn`` is for genuinely
advisory signals only.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from guards.atomic import write_text

Status = Literal["pass", "fail", "warn", "inconclusive"]


@dataclass(frozen=True)
class Finding:
    """One measured figure against its threshold, overall (subgroup "all") or for one subgroup."""

    metric: str
    value: float | int | str | None
    threshold: float | int | str | None
    status: Status
    subgroup: str = "all"  # "all", or "column=value" e.g. "ethnic_group=minority"
    evidence: str = ""  # plain words: what was seen, where (file and element path), by how much
    needs: str = ""  # inconclusive findings: what would make them conclusive (e.g. "about 40 more patients ...")


@dataclass(frozen=True)
class CheckResult:
    """A check's findings, the counts of what it examined, and artefacts (plots, tables) for the report."""

    id: str  # "phi", "representation", "reid", "membership", "unlearnability", "attribute"
    findings: tuple[Finding, ...]
    examined: dict[str, int]  # e.g. {"files": 120, "elements": 40210}
    summary: str = ""  # one plain-language sentence for the steward
    advice: str = ""  # what the steward can change when it fails
    artefacts: dict[str, str] = field(default_factory=dict)  # name -> path relative to the report folder
    details: dict[str, Any] = field(default_factory=dict)  # JSON-able extra data for the report

    @property
    def status(self) -> Status:
        """fail if any finding fails, else inconclusive if any is, else warn if any warns, else pass; no findings
        at all is a fail."""
        if not self.findings or not any(self.examined.values()):
            return "fail"
        statuses = {f.status for f in self.findings}
        order: tuple[Status, ...] = ("fail", "inconclusive", "warn")
        return next((s for s in order if s in statuses), "pass")

    @property
    def conclusive_when(self) -> tuple[str, ...]:
        """What would make the inconclusive findings conclusive, one line per distinct need."""
        needs: list[str] = []
        for f in self.findings:
            if f.status == "inconclusive":
                line = f.needs or "more data (the check did not say what)"
                where = "" if f.subgroup == "all" else f" ({f.subgroup})"
                text = f"{f.metric}{where}: {line}"
                if text not in needs:
                    needs.append(text)
        return tuple(needs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status  # derived; ``read`` drops it (``conclusive_when`` is derived from ``needs``)
        return d

    def write(self, path: Path) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=2, default=str))

    @classmethod
    def read(cls, path: Path) -> CheckResult:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckResult:
        """The inverse of :meth:`to_dict`: ``status`` is derived, so it is dropped; other keys (a stamp) too."""
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in data.items() if k in names}
        d["findings"] = tuple(Finding(**f) for f in d["findings"])  # ``needs`` absent in older files: ""
        return cls(**d)


def interval_verdict(low: float, high: float, threshold: float) -> Status:
    """Fail-closed verdict for a figure whose safe side is ``<= threshold``, from its 95 % interval.

    The whole interval at or below the threshold: ``pass`` (shown safe). The whole interval above it: ``fail``
    (shown unsafe). Otherwise, or when the interval is not finite: ``inconclusive`` (not enough data to show
    either).
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if high <= threshold:
        return "pass"
    if low > threshold:
        return "fail"
    return "inconclusive"


def scaled_count(n: int, half_width: float, distance: float) -> int | None:
    """How many units (patients) a figure needs for its interval to stop reaching across the threshold.

    A 95 % interval's half-width shrinks as ``1 / sqrt(n)``; for it to shrink from ``half_width`` (the part of
    the interval on the threshold's side of the estimate) to ``distance`` (from the estimate to the threshold),
    ``n`` must grow to ``n * (half_width / distance) ** 2``, assuming the estimate itself stays where it is.
    Returns that total (at least ``n + 1``), or None when it cannot be estimated (estimate on the threshold,
    non-finite figures, or no units at all).
    """
    if n <= 0 or not (math.isfinite(half_width) and math.isfinite(distance)) or distance <= 0:
        return None
    return max(n + 1, math.ceil(n * (max(half_width, 0.0) / distance) ** 2))


def more_patients_needs(*, patients: int, value: float, low: float, high: float, threshold: float,
                        where: str) -> str:
    """The ``needs`` text of an interval that straddles ``threshold`` (safe side ``<=``), by :func:`scaled_count`.

    When the estimate is on the safe side, the count is what would show the release safe; when it is on the
    unsafe side, more data would more likely confirm a failure, and the count is what would make it conclusive
    either way.
    """
    rule = "95% intervals narrow as 1/sqrt(n): n x (half-width / distance to threshold)^2"
    if value < threshold:
        total = scaled_count(patients, high - value, threshold - value)
        if total is not None:
            return (f"about {total - patients} more patients {where} (now {patients}; {rule}) to show the figure"
                    f" below {threshold:.4g}")
    elif value > threshold:
        total = scaled_count(patients, value - low, value - threshold)
        if total is not None:
            return (f"the estimate {value:.4g} is above {threshold:.4g}, so more data would more likely confirm a"
                    f" failure; about {total - patients} more patients {where} (now {patients}; {rule}) would make"
                    " it conclusive either way, or a release that lowers the figure")
    return (f"more patients {where} (now {patients}); the estimate sits on the threshold {threshold:.4g}, so the"
            " number cannot be estimated")
