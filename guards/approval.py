"""The named sign-off between a passed gate and publish: who approved or rejected, when, and why.

The DAG's ``approve`` task (guards.approval_task, an Airflow 3 human-in-the-loop ApprovalOperator) asks a steward
in Airflow's Required actions page; ``guard run`` records the user who ran it. Either way the answer is one
:class:`Approval`, recorded by :func:`record` in the run folder (``approval.json``, bound to the attempt and the
inputs the gate judged) and in the report's ``gate.json``; publish reads it back with :func:`current` and
publishes nothing without an approval of this attempt (a rejection, a timeout, or no answer).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from guards.atomic import write_text
from guards.errors import InputError

if TYPE_CHECKING:
    from guards.run import Run

logger = logging.getLogger(__name__)

APPROVAL = "approval.json"
Decision = Literal["approved", "rejected", "not required"]
PUBLISHES: frozenset[str] = frozenset({"approved", "not required"})
COMMENT_MAX = 2000
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class Approval:
    """One answer to "publish this release?" for one attempt of a run."""

    decision: Decision
    by: str  # the steward's user name; "" when nobody answered (a timeout) or nobody was asked (policy)
    at: str  # ISO 8601, UTC
    comment: str
    via: str  # how the answer came: "Airflow Required actions", "timeout after 72 h", "guard run", "policy ..."

    def __post_init__(self) -> None:
        if self.decision not in ("approved", "rejected", "not required"):
            raise InputError(f"approval decision {self.decision!r}: expected approved, rejected or not required")
        object.__setattr__(self, "by", _clean(self.by, 200))
        object.__setattr__(self, "comment", _clean(self.comment, COMMENT_MAX))

    @property
    def publishes(self) -> bool:
        return self.decision in PUBLISHES

    def sentence(self) -> str:
        """One line for logs and the datasheet: "approved by steward at ... (Airflow Required actions): ..."."""
        who = f" by {self.by}" if self.by else ""
        why = f": {self.comment}" if self.comment else ""
        return f"{self.decision}{who} at {self.at} ({self.via}){why}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Approval:
        return cls(decision=data["decision"], by=data.get("by") or "", at=data["at"],
                   comment=data.get("comment") or "", via=data.get("via") or "")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _clean(text: str | None, limit: int) -> str:
    """Free text from a form: control characters dropped, at most ``limit`` characters (escaped where shown)."""
    value = _CONTROL.sub("", str(text or "")).strip()
    return value if len(value) <= limit else value[: limit - 1] + "…"


def required(run: Run, *, scheduled: bool) -> str | None:
    """Why this run publishes without asking anyone (policy), or None when a steward must sign off."""
    policy = run.policy.approval
    if not policy.required:
        return "policy approval.required = false"
    if scheduled and not policy.scheduled:
        return "scheduled run, policy approval.scheduled = false"
    return None


def _judged(run: Run) -> dict[str, Any]:
    """The gate record of this attempt on the Run's current inputs (an approval is bound to it)."""
    from guards import run as runs

    gate = runs.read_record(run, "gate")
    if gate is None or gate.attempt != run.attempt or gate.fingerprint != run.input_fingerprint():
        raise InputError(f"run {run.run_id!r}: the gate has not judged attempt {run.attempt}, so there is nothing "
                         "to approve yet; run the gate step first")
    return {"attempt": gate.attempt, "fingerprint": gate.fingerprint, "passed": bool(gate.outcome["passed"])}


def record(run: Run, approval: Approval) -> Approval:
    """Write ``approval`` for this attempt (``approval.json``) and into the report's ``gate.json``.

    Approving a failed gate is refused: a sign-off can stop a passed release, never pass a failed one."""
    judged = _judged(run)
    if approval.decision != "rejected" and not judged["passed"]:
        raise InputError(f"run {run.run_id!r} attempt {run.attempt}: the gate failed, so it cannot be approved; "
                         "the report says what to do")
    write_text(run.paths.run / APPROVAL, json.dumps({**approval.to_json(), "attempt": judged["attempt"],
                                                     "inputs": judged["fingerprint"]}, indent=2))
    gate_json = run.paths.report / "gate.json"
    if gate_json.is_file():
        gate = json.loads(gate_json.read_text(encoding="utf-8"))
        gate["approval"] = approval.to_json()
        write_text(gate_json, json.dumps(gate, indent=2))
    logger.info("sign-off of run %s attempt %d: %s", run.run_id, run.attempt, approval.sentence())
    return approval


def current(run: Run) -> Approval | None:
    """The approval recorded for this attempt on its current inputs, or None (none yet, or an earlier attempt's)."""
    path = run.paths.run / APPROVAL
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("attempt") != run.attempt or data.get("inputs") != run.input_fingerprint():
        return None
    return Approval.from_json(data)


def datasheet_lines(approval: dict[str, Any] | None) -> list[str]:
    """The datasheet's "Sign-off" section from gate.json's ``approval``."""
    if not approval:
        return ["## Sign-off", "", "None recorded.", ""]
    a = Approval.from_json(approval)
    return ["## Sign-off", "",
            f"- Decision: {a.decision}", f"- By: {a.by or 'nobody (' + a.via + ')'}", f"- When: {a.at}",
            f"- How: {a.via}", f"- Comment: {a.comment or 'none'}", ""]
