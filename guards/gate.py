"""The release gate: every CheckResult and the policy in, one GateDecision out (ARCHITECTURE.md, Gate semantics).

Rules, in order:

- no data is a failure, never a pass: an empty result list fails the gate, and so does a check that examined
  nothing (all ``examined`` counts zero) or returned no finding;
- a check is blocking or advisory by ``policy.gate``; a check id in neither list is treated as blocking
  (fail safe: a check nobody classified cannot pass silently);
- a check without a valid result is "not run": a blocking check named by the policy but absent from the
  results, or any check named in ``decide(..., not_run=...)`` with why it has no valid result (crashed, stale,
  missing). A blocking check that was not run fails the gate; an advisory one is an advisory line;
- fail closed: a blocking check passes only when it shows the release is safe. An ``inconclusive`` blocking
  check (it could not show the release safe: an interval that straddles the threshold, too few patients, a
  reference that did not learn) blocks, and the reasons name it and what would make it conclusive (its
  findings' ``needs``). An inconclusive advisory check is an advisory line;
- a failed or inconclusive blocking check with a waiver (``policy.gate.waivers``: check id and a written reason)
  becomes a waived pass; the waiver is recorded in the decision and in gate.json. A waiver never covers
  "not run" or "examined nothing": there is nothing to waive when nothing was measured;
- a failed advisory check never fails the gate; it appears as ``warn`` with its reason.

Checks return findings; only this module turns findings into a failure, once, with all of them (STYLE.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from guards.checks.base import CheckResult, Finding
from guards.errors import PolicyError
from guards.policy import ReleasePolicy, Waiver

log = logging.getLogger(__name__)

Role = Literal["blocking", "advisory"]
Outcome = Literal["pass", "fail", "warn", "inconclusive", "waived", "not run", "no data"]
NOT_RUN_DEFAULT = "blocking by policy but no result was produced"


@dataclass(frozen=True)
class CheckOutcome:
    """How the gate judged one check: its role by policy and the outcome after waivers."""

    id: str
    role: Role
    outcome: Outcome
    examined: dict[str, int]
    note: str = ""  # "not run": why there is no valid result; inconclusive: what would make it conclusive
    was: str = ""  # a waived check: the status it had before the waiver ("fail" or "inconclusive")


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict: passed, plain-language reasons, the waivers applied, and the results judged."""

    passed: bool
    reasons: tuple[str, ...]
    waivers: tuple[Waiver, ...]
    results: tuple[CheckResult, ...]
    outcomes: tuple[CheckOutcome, ...]
    advisories: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # warn findings of blocking checks: they do not block, but they are not advisory

    def to_json(self) -> dict[str, Any]:
        """gate.json as in ARCHITECTURE.md: ``passed``, ``checks`` (one entry per finding) and ``waivers``.

        Extra keys: ``reasons`` and ``advisories`` (plain language) and ``outcomes`` (per check: role, outcome
        after waivers, examined counts, ``note``: why it was not run or what would make it conclusive, and
        ``was``: a waived check's status before the waiver). Every check entry has ``needs`` (what would make an
        inconclusive finding conclusive; "" otherwise). A finding of an advisory check that failed is written as
        ``warn``; a check that was not run or examined nothing gets one ``fail`` entry of its own (``warn`` for an
        advisory check that was not run).
        """
        roles = {o.id: o for o in self.outcomes}
        checks: list[dict[str, Any]] = []
        for result in self.results:
            role = roles[result.id].role if result.id in roles else "blocking"
            if not result.findings or not any(result.examined.values()):
                checks.append(_entry(result.id, _no_data_finding(result)))
                continue
            for finding in result.findings:
                status = finding.status
                if role == "advisory" and status == "fail":
                    status = "warn"
                checks.append(_entry(result.id, finding, status=status))
        for o in self.outcomes:
            if o.outcome == "not run":
                evidence = o.note if o.role == "blocking" else f"advisory by policy; not run: {o.note}"
                checks.append(
                    _entry(o.id, Finding(metric="not run", value=None, threshold=None,
                                         status="fail" if o.role == "blocking" else "warn",
                                         evidence=evidence or NOT_RUN_DEFAULT))
                )
        return {
            "passed": self.passed,
            "checks": checks,
            "waivers": [{"check": w.check, "reason": w.reason} for w in self.waivers],
            "reasons": list(self.reasons),
            "advisories": list(self.advisories),
            "warnings": list(self.warnings),
            "outcomes": [
                {"id": o.id, "role": o.role, "outcome": o.outcome, "examined": dict(o.examined), "note": o.note,
                 "was": o.was}
                for o in self.outcomes
            ],
        }


def _json_number(value: float | int | str | None) -> float | int | str | None:
    """JSON has no NaN or infinity: those become their text, so gate.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _entry(check_id: str, finding: Finding, *, status: str | None = None) -> dict[str, Any]:
    return {
        "id": check_id,
        "status": status or finding.status,
        "metric": finding.metric,
        "value": _json_number(finding.value),
        "threshold": _json_number(finding.threshold),
        "subgroup": finding.subgroup,
        "evidence": finding.evidence,
        "needs": finding.needs,
    }


def _no_data_finding(result: CheckResult) -> Finding:
    seen = ", ".join(f"{k}={v}" for k, v in sorted(result.examined.items())) or "no counts"
    return Finding(metric="examined", value=sum(result.examined.values()), threshold=">0", status="fail",
                   evidence=f"the check examined nothing or reported no finding ({seen})")


def _role(check_id: str, policy: ReleasePolicy) -> Role:
    if check_id in policy.gate.advisory:
        return "advisory"
    return "blocking"


def _by_how_much(finding: Finding) -> str:
    v, t = finding.value, finding.threshold
    if isinstance(v, int | float) and isinstance(t, int | float) and not isinstance(v, bool):
        if math.isfinite(float(v)) and math.isfinite(float(t)):
            return f"{v:.4g} against a threshold of {t:.4g} (off by {abs(float(v) - float(t)):.4g})"
    value = "not measured" if v is None else str(v)
    if t is None:
        return f"{value} (no threshold)"
    return f"{value} against a threshold of {t!s}"


def _explain(result: CheckResult, *, role: Role) -> list[str]:
    """One sentence per failed finding: which check, which subgroup, by how much, what the steward can change."""
    lines = []
    failed = [f for f in result.findings if f.status == "fail"]
    for f in failed[:10]:
        where = "overall" if f.subgroup == "all" else f"for subgroup {f.subgroup}"
        text = f"{role.capitalize()} check '{result.id}' failed {where}: {f.metric} is {_by_how_much(f)}."
        if f.evidence:
            text += f" Evidence: {f.evidence}."
        lines.append(text)
    if len(failed) > 10:
        lines.append(f"Check '{result.id}': {len(failed) - 10} more failed findings (see the report).")
    if result.advice:
        lines.append(f"What you can change for '{result.id}': {result.advice}")
    return lines


def _explain_inconclusive(result: CheckResult, *, role: Role) -> list[str]:
    """One sentence per inconclusive finding: which check, which subgroup, what was measured, what would make it
    conclusive."""
    lines = []
    unsure = [f for f in result.findings if f.status == "inconclusive"]
    for f in unsure[:10]:
        where = "overall" if f.subgroup == "all" else f"for subgroup {f.subgroup}"
        measured = "could not be measured" if f.value is None else f"is {_by_how_much(f)}"
        text = (f"{role.capitalize()} check '{result.id}' is inconclusive {where}: {f.metric} {measured}, which"
                " does not show the release safe.")
        if f.evidence:
            text += f" Evidence: {f.evidence}."
        text += f" Conclusive with: {f.needs or 'more data (the check did not say what)'}."
        lines.append(text)
    if len(unsure) > 10:
        lines.append(f"Check '{result.id}': {len(unsure) - 10} more inconclusive findings (see the report).")
    if role == "blocking":
        lines.append(f"An inconclusive blocking check blocks the release: make '{result.id}' conclusive, or have a"
                     f" steward waive it in guard.toml ([[gate.waivers]] check = '{result.id}', with a written"
                     " reason).")
    return lines


def _validate_waivers(policy: ReleasePolicy, known: set[str]) -> None:
    for w in policy.gate.waivers:
        # Waiver validates itself on construction; re-check here so a hand-built policy cannot slip past.
        if not w.check.strip() or len(w.reason.strip()) < 10:
            raise PolicyError(
                f"gate.waivers: waiver for {w.check!r} needs a check id and a written reason (10+ characters)"
            )
        if w.check not in known:
            raise PolicyError(
                f"gate.waivers: waiver names check {w.check!r}, which is neither configured nor run; "
                f"use one of {sorted(known)}"
            )


def decide(results: list[CheckResult], *, policy: ReleasePolicy,
           not_run: Mapping[str, str] | None = None) -> GateDecision:
    """Judge ``results`` under ``policy.gate`` (see the module docstring for the rules).

    ``not_run``: check id -> why it has no valid result (e.g. "crashed: ValueError ...", "stale: result from
    attempt 1, this is attempt 2", "missing"). Such a check is "not run" (blocking: the gate fails and no waiver
    covers it; advisory: an advisory line), whatever result of that id is also passed.
    """
    missing = dict(not_run or {})
    known = set(policy.gate.blocking) | set(policy.gate.advisory) | {r.id for r in results} | set(missing)
    _validate_waivers(policy, known)
    waivers = {w.check: w for w in policy.gate.waivers}
    reasons: list[str] = []
    advisories: list[str] = []
    warnings: list[str] = []
    applied: list[Waiver] = []
    outcomes: list[CheckOutcome] = []
    passed = True
    invalid = [r for r in results if r.id in missing]
    results = [r for r in results if r.id not in missing]
    for r in invalid:
        log.warning("gate: result of check %r ignored: %s", r.id, missing[r.id])
    if not results and not missing:
        passed = False
        reasons.append(
            "No check produced a result: there is no data to judge, and a gate without data never passes. "
            "Run the checks (guard check RELEASE --source SRC) on a release that holds at least one study."
        )
    for result in results:
        role = _role(result.id, policy)
        note = ""
        was = ""
        if not result.findings or not any(result.examined.values()):
            outcome: Outcome = "no data"
            counts = ", ".join(f"{k}={v}" for k, v in sorted(result.examined.items())) or "no counts"
            text = (
                f"Check '{result.id}' examined nothing ({counts}), so it proves nothing; a check without data is "
                "a failure, never a pass. Make sure the release holds published studies and the check's inputs exist."
            )
            if role == "blocking":
                passed = False
                reasons.append(text)
            else:
                advisories.append(text)
        elif result.status in ("fail", "inconclusive"):
            status = result.status
            note = "; ".join(result.conclusive_when) if status == "inconclusive" else ""
            explain = _explain if status == "fail" else _explain_inconclusive
            if role == "advisory":
                outcome = "warn" if status == "fail" else "inconclusive"
                advisories.extend(explain(result, role=role))
            elif result.id in waivers:
                outcome = "waived"
                was = status
                w = waivers[result.id]
                applied.append(w)
                log.warning("gate: %s blocking check %r waived by steward: %s", status, result.id, w.reason)
            else:
                outcome = status
                passed = False
                reasons.extend(explain(result, role=role))
        else:
            outcome = result.status
        if outcome != "no data":
            (warnings if role == "blocking" else advisories).extend(
                f"Check '{result.id}' warns for {f.subgroup}: {f.metric} is {_by_how_much(f)}."
                for f in result.findings if f.status == "warn"
            )
        outcomes.append(CheckOutcome(id=result.id, role=role, outcome=outcome, examined=dict(result.examined),
                                     note=note, was=was))
    ran = {r.id for r in results}
    absent = {c: "missing: no result was produced" for c in policy.gate.blocking if c not in ran and c not in missing}
    for check_id, why in {**missing, **absent}.items():
        role = _role(check_id, policy)
        note = why if check_id in missing else NOT_RUN_DEFAULT
        outcomes.append(CheckOutcome(id=check_id, role=role, outcome="not run", examined={}, note=note))
        if role == "advisory":
            advisories.append(f"Advisory check '{check_id}' was not run ({why}); it does not block the release.")
            continue
        passed = False
        text = f"Blocking check '{check_id}' was not run ({why}), so the release cannot pass; no waiver covers a check"
        text += (" that was not run. Fix what stopped it (its error is in the run's checks/ folder and the task log)"
                 " and resume the run; the checks already measured are carried.")
        reasons.append(text)
    log.info("gate: %s (%d checks, %d reasons, %d waivers)", "PASSED" if passed else "FAILED",
             len(outcomes), len(reasons), len(applied))
    return GateDecision(passed=passed, reasons=tuple(reasons), waivers=tuple(applied), results=tuple(results),
                        outcomes=tuple(outcomes), advisories=tuple(advisories), warnings=tuple(warnings))
