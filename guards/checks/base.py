"""The result every check returns, and the finding rows it is made of (see ARCHITECTURE.md, gate.json).

Checks return findings; only :mod:`guards.gate` turns them into a pass or a failure, once, with all of them.
A check that finds nothing proves it looked: ``examined`` counts what it examined.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from guards.atomic import write_text

Status = Literal["pass", "fail", "warn"]


@dataclass(frozen=True)
class Finding:
    """One measured figure against its threshold, overall (subgroup "all") or for one subgroup."""

    metric: str
    value: float | int | str | None
    threshold: float | int | str | None
    status: Status
    subgroup: str = "all"  # "all", or "column=value" e.g. "ethnic_group=minority"
    evidence: str = ""  # plain words: what was seen, where (file and element path), by how much


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
        """fail if any finding fails, else warn if any warns, else pass; no findings at all is a fail."""
        if not self.findings or not any(self.examined.values()):
            return "fail"
        statuses = {f.status for f in self.findings}
        return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status
        return d

    def write(self, path: Path) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=2, default=str))

    @classmethod
    def read(cls, path: Path) -> CheckResult:
        d = json.loads(path.read_text(encoding="utf-8"))
        d.pop("status", None)
        d["findings"] = tuple(Finding(**f) for f in d["findings"])
        return cls(**d)
