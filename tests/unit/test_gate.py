"""guards.gate: blocking vs advisory, waivers, not run, no data, inconclusive (fail closed); gate.json shape
(ARCHITECTURE.md); the check JSON round trip of ``needs``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guards.checks.base import CheckResult, Finding
from guards.errors import PolicyError
from guards.gate import decide
from guards.policy import GateSection, ReleasePolicy, Waiver, policy_from_dict

GATE_KEYS = {"id", "status", "metric", "value", "threshold", "subgroup", "evidence", "needs"}
NEEDS = "about 40 more patients in subgroup sex=F (now 20)"


def _policy(*, blocking: tuple[str, ...] = ("phi", "reid"), advisory: tuple[str, ...] = ("attribute",),
            waivers: tuple[Waiver, ...] = ()) -> ReleasePolicy:
    return ReleasePolicy(gate=GateSection(blocking=blocking, advisory=advisory, waivers=waivers))


def _result(check_id: str, status: str = "pass", *, subgroup: str = "all", examined: int = 10) -> CheckResult:
    return CheckResult(
        id=check_id,
        findings=(Finding(metric="risk", value=0.3 if status == "fail" else 0.01, threshold=0.09,
                          status=status, subgroup=subgroup, evidence="measured",  # type: ignore[arg-type]
                          needs=NEEDS if status == "inconclusive" else ""),),
        examined={"rows": examined},
        advice="raise k or generalise age bands",
    )


def test_all_blocking_pass_passes() -> None:
    d = decide([_result("phi"), _result("reid"), _result("attribute")], policy=_policy())
    assert d.passed
    assert d.reasons == ()
    assert {o.id: o.outcome for o in d.outcomes} == {"phi": "pass", "reid": "pass", "attribute": "pass"}


def test_blocking_failure_names_check_subgroup_amount_and_advice() -> None:
    d = decide([_result("phi"), _result("reid", "fail", subgroup="ethnic_group=minority")], policy=_policy())
    assert not d.passed
    text = " ".join(d.reasons)
    assert "'reid'" in text and "ethnic_group=minority" in text
    assert "0.3" in text and "0.09" in text and "off by 0.21" in text
    assert "raise k or generalise age bands" in text


def test_empty_results_fail() -> None:
    d = decide([], policy=_policy())
    assert not d.passed
    assert any("no data" in r for r in d.reasons)
    assert d.to_json()["passed"] is False


def test_result_that_examined_nothing_fails() -> None:
    d = decide([_result("phi", examined=0), _result("reid")], policy=_policy())
    assert not d.passed
    assert {o.id: o.outcome for o in d.outcomes}["phi"] == "no data"
    assert any("examined nothing" in r for r in d.reasons)
    entry = [c for c in d.to_json()["checks"] if c["id"] == "phi"]
    assert entry and entry[0]["status"] == "fail"


def test_result_without_findings_fails() -> None:
    empty = CheckResult(id="reid", findings=(), examined={"rows": 5})
    d = decide([_result("phi"), empty], policy=_policy())
    assert not d.passed


def test_missing_blocking_check_fails_as_not_run() -> None:
    d = decide([_result("phi")], policy=_policy())
    assert not d.passed
    assert any("'reid' was not run" in r for r in d.reasons)
    not_run = [c for c in d.to_json()["checks"] if c["id"] == "reid"]
    assert not_run == [{"id": "reid", "status": "fail", "metric": "not run", "value": None, "threshold": None,
                        "subgroup": "all", "evidence": "blocking by policy but no result was produced", "needs": ""}]


def test_advisory_failure_does_not_fail_the_gate() -> None:
    d = decide([_result("phi"), _result("reid"), _result("attribute", "fail", subgroup="sex=F")], policy=_policy())
    assert d.passed
    assert any("'attribute'" in a and "sex=F" in a for a in d.advisories)
    attr = [c for c in d.to_json()["checks"] if c["id"] == "attribute"]
    assert [c["status"] for c in attr] == ["warn"]


def test_unclassified_check_is_blocking() -> None:
    d = decide([_result("phi"), _result("reid"), _result("novel", "fail")], policy=_policy())
    assert not d.passed


def test_waiver_turns_blocking_failure_into_waived_pass_and_is_recorded() -> None:
    w = Waiver(check="reid", reason="steward accepted: rare-site study, data use agreement in place")
    d = decide([_result("phi"), _result("reid", "fail")], policy=_policy(waivers=(w,)))
    assert d.passed
    assert d.waivers == (w,)
    assert {o.id: o.outcome for o in d.outcomes}["reid"] == "waived"
    assert d.to_json()["waivers"] == [{"check": "reid", "reason": w.reason}]


def test_waiver_does_not_cover_a_check_that_was_not_run() -> None:
    w = Waiver(check="reid", reason="steward accepted: rare-site study, data use agreement in place")
    d = decide([_result("phi")], policy=_policy(waivers=(w,)))
    assert not d.passed
    assert d.waivers == ()


@pytest.mark.parametrize("reason", ["", "   ", "ok"])  # empty, blank, too short to be a written reason
def test_waiver_without_reason_is_rejected(reason: str) -> None:
    with pytest.raises(PolicyError, match="written reason"):
        Waiver(check="reid", reason=reason)
    with pytest.raises(PolicyError, match="written reason"):
        policy_from_dict({"gate": {"waivers": [{"check": "reid", "reason": reason}]}})


def test_waiver_for_unknown_check_is_rejected() -> None:
    w = Waiver(check="nosuch", reason="a long enough reason for the test")
    with pytest.raises(PolicyError, match="nosuch"):
        decide([_result("phi"), _result("reid")], policy=_policy(waivers=(w,)))


def test_gate_json_shape() -> None:
    nan_result = CheckResult(id="reid", examined={"rows": 3}, findings=(
        Finding(metric="auc", value=float("nan"), threshold=0.65, status="fail", subgroup="sex=M"),
        Finding(metric="k", value=12, threshold=11, status="pass"),
    ))
    d = decide([_result("phi"), nan_result, _result("attribute", "fail")], policy=_policy())
    doc = json.loads(json.dumps(d.to_json(), allow_nan=False))
    assert doc["passed"] is False
    assert isinstance(doc["waivers"], list)
    assert len(doc["checks"]) == 4  # one entry per finding
    for c in doc["checks"]:
        assert set(c) == GATE_KEYS
        assert c["status"] in {"pass", "fail", "warn", "inconclusive"}
    assert doc["checks"][1]["value"] == "nan"
    assert {"passed", "checks", "waivers", "reasons", "advisories", "outcomes"} <= set(doc)


# --- fail closed: inconclusive ----------------------------------------------------------------------------------

def test_inconclusive_blocking_check_fails_the_gate_naming_the_check_and_its_needs() -> None:
    d = decide([_result("phi"), _result("reid", "inconclusive", subgroup="sex=F")], policy=_policy())
    assert not d.passed
    assert {o.id: o.outcome for o in d.outcomes}["reid"] == "inconclusive"
    text = " ".join(d.reasons)
    assert "'reid' is inconclusive for subgroup sex=F" in text and NEEDS in text
    assert "waive" in text  # says how a steward can accept it
    doc = d.to_json()
    entry = [c for c in doc["checks"] if c["id"] == "reid"]
    assert entry[0]["status"] == "inconclusive" and entry[0]["needs"] == NEEDS
    outcome = [o for o in doc["outcomes"] if o["id"] == "reid"][0]
    assert outcome["outcome"] == "inconclusive" and NEEDS in outcome["note"]


def test_inconclusive_blocking_check_with_a_waiver_passes_and_the_waiver_is_recorded() -> None:
    w = Waiver(check="reid", reason="steward: small pilot cohort, shared under a data use agreement")
    d = decide([_result("phi"), _result("reid", "inconclusive")], policy=_policy(waivers=(w,)))
    assert d.passed and d.reasons == ()
    assert d.waivers == (w,)
    doc = d.to_json()
    assert doc["waivers"] == [{"check": "reid", "reason": w.reason}]
    outcome = [o for o in doc["outcomes"] if o["id"] == "reid"][0]
    assert outcome["outcome"] == "waived" and outcome["was"] == "inconclusive"
    assert [c["status"] for c in doc["checks"] if c["id"] == "reid"] == ["inconclusive"]  # the finding is kept


def test_inconclusive_advisory_check_is_an_advisory_line() -> None:
    d = decide([_result("phi"), _result("reid"), _result("attribute", "inconclusive", subgroup="sex=F")],
               policy=_policy())
    assert d.passed
    assert {o.id: o.outcome for o in d.outcomes}["attribute"] == "inconclusive"
    assert any("'attribute' is inconclusive" in a and NEEDS in a for a in d.advisories)


def test_fail_outranks_inconclusive_outranks_warn() -> None:
    def result(*statuses: str) -> CheckResult:
        return CheckResult(id="x", examined={"n": 1}, findings=tuple(
            Finding(metric="m", value=1, threshold=1, status=s) for s in statuses))  # type: ignore[arg-type]

    assert result("pass", "warn", "inconclusive", "fail").status == "fail"
    assert result("pass", "warn", "inconclusive").status == "inconclusive"
    assert result("pass", "warn").status == "warn"
    assert result("pass").status == "pass"
    assert result("inconclusive").conclusive_when == ("m: more data (the check did not say what)",)


# --- not run (crashed, stale, missing) ---------------------------------------------------------------------------

def test_not_run_reasons_appear_and_a_waiver_never_passes_a_not_run_check() -> None:
    w = Waiver(check="reid", reason="steward accepted: rare-site study, data use agreement in place")
    why = "crashed in attempt 2: ValueError: bad pixel data"
    d = decide([_result("phi")], policy=_policy(waivers=(w,)), not_run={"reid": why})
    assert not d.passed and d.waivers == ()
    assert any("'reid' was not run" in r and why in r for r in d.reasons)
    outcome = [o for o in d.to_json()["outcomes"] if o["id"] == "reid"]
    assert outcome == [{"id": "reid", "role": "blocking", "outcome": "not run", "examined": {}, "note": why,
                        "was": ""}]
    entry = [c for c in d.to_json()["checks"] if c["id"] == "reid"]
    assert entry[0]["status"] == "fail" and entry[0]["evidence"] == why


def test_not_run_overrides_a_stale_result_of_the_same_check() -> None:
    why = "stale: result from attempt 1, this is attempt 2"
    d = decide([_result("phi"), _result("reid")], policy=_policy(), not_run={"reid": why})
    assert not d.passed
    assert {o.id: o.outcome for o in d.outcomes}["reid"] == "not run"
    assert [r.id for r in d.results] == ["phi"]
    assert any(why in r for r in d.reasons)


def test_not_run_advisory_check_is_an_advisory_line() -> None:
    d = decide([_result("phi"), _result("reid")], policy=_policy(), not_run={"attribute": "missing"})
    assert d.passed
    assert any("'attribute' was not run (missing)" in a for a in d.advisories)
    assert [c["status"] for c in d.to_json()["checks"] if c["id"] == "attribute"] == ["warn"]


def test_only_not_run_checks_fail_the_gate() -> None:
    d = decide([], policy=_policy(blocking=("phi",), advisory=()), not_run={"phi": "crashed: OSError"})
    assert not d.passed and any("crashed: OSError" in r for r in d.reasons)


# --- the check JSON round trip ----------------------------------------------------------------------------------

def test_needs_round_trip_and_old_json_without_needs_still_reads(tmp_path: Path) -> None:
    r = _result("membership", "inconclusive")
    r.write(tmp_path / "new.json")
    back = CheckResult.read(tmp_path / "new.json")
    assert back == r and back.findings[0].needs == NEEDS and back.status == "inconclusive"
    old = json.loads((tmp_path / "new.json").read_text())
    for f in old["findings"]:
        del f["needs"]
    old["findings"][0]["status"] = "warn"
    (tmp_path / "old.json").write_text(json.dumps(old))
    legacy = CheckResult.read(tmp_path / "old.json")
    assert legacy.findings[0].needs == "" and legacy.status == "warn"


def test_warnings_of_blocking_checks_are_not_listed_as_advisory() -> None:
    d = decide([_result("phi"), _result("reid", "warn", subgroup="sex=F"), _result("attribute", "warn")],
               policy=_policy())
    assert d.passed
    assert [w for w in d.warnings if "'reid'" in w and "sex=F" in w]
    assert not [a for a in d.advisories if "'reid'" in a]
    assert [a for a in d.advisories if "'attribute'" in a] and not [w for w in d.warnings if "'attribute'" in w]
    assert d.to_json()["warnings"] == list(d.warnings)


def test_a_value_that_was_not_measured_never_reads_as_none() -> None:
    unmeasured = CheckResult(id="reid", findings=(Finding(metric="tpr_at_1pct_fpr", value=None, threshold=0.1,
                                                          status="fail", subgroup="all", evidence="no scores"),),
                             examined={"rows": 3})
    d = decide([_result("phi"), unmeasured], policy=_policy())
    text = " ".join(d.reasons)
    assert "tpr_at_1pct_fpr is not measured against a threshold of 0.1" in text and "None" not in text


def test_advice_for_a_check_that_did_not_run_never_weakens_the_gate() -> None:
    d = decide([_result("phi")], policy=_policy(), not_run={"reid": "crashed: ValueError: no usable image"})
    [text] = [r for r in d.reasons if "'reid' was not run" in r]
    assert "crashed: ValueError: no usable image" in text and "resume the run" in text
    assert "gate.blocking" not in text and "remove" not in text
