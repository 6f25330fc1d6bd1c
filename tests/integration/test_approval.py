"""The named sign-off (guards.approval): publish needs this attempt's approval, a rejection publishes nothing, and
who signed off (with when and the comment) is in the release's datasheet and gate.json.

The Airflow side (the DAG's ``approve`` task answered in the Required actions page, and its timeout) is in
tests/browser/test_approval_ui.py; this file runs the steps in-process with the light policy of test_run.py.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import pytest

from guards import approval as approvals
from guards import pipeline
from guards.errors import InputError, PolicyError
from guards.keys import PseudonymKey
from guards.policy import ApprovalSection, ReleasePolicy
from guards.samples import generate_corpus

LIGHT = ReleasePolicy().with_overrides({
    "pixels.ocr_all": False, "protect.enabled": False, "reid.remediate": False,
    "reid.k": 1, "reid.max_risk": 1.0,
    "gate.blocking": ["reid"], "gate.advisory": [],
    "gate.off": ["representation", "phi", "membership", "unlearnability", "attribute", "inversion"],
})


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src")
    generate_corpus(root, studies=4, seed=5, image_size=64)
    return root


def _gated(source: Path, out: Path, key: PseudonymKey, policy: ReleasePolicy = LIGHT) -> pipeline.Run:
    """A run taken through its gate, as the DAG's tasks do before ``approve``."""
    run = pipeline.begin(source, out, "manual__approval", policy=policy, key=key)
    pipeline.step_deid(run, key=key)
    pipeline.step_protect(run, key=key)
    pipeline.step_cohort(run, key=key)
    pipeline.step_remediate(run)
    for check_id in pipeline.enabled_checks(policy):
        pipeline.run_check(run, check_id)
    pipeline.step_gate(run)
    return run


def _approval(decision: approvals.Decision, by: str = "dr.steward", comment: str = "") -> approvals.Approval:
    return approvals.Approval(decision=decision, by=by, at=approvals.now(), comment=comment,
                              via="Airflow Required actions")


def test_publish_needs_a_sign_off_and_records_it(source: Path, tmp_path: Path, key: PseudonymKey) -> None:
    run = _gated(source, tmp_path, key)
    with pytest.raises(InputError, match="nobody signed off"):
        pipeline.step_publish(run, key=key)
    assert not (tmp_path / "releases").exists()
    approvals.record(run, _approval("approved", comment="reviewed the report <b>ok</b>"))
    outcome = pipeline.step_publish(run, key=key)
    assert outcome["published"] and outcome["version"] == "v0001"
    assert outcome["approval"] is not None and "approved by dr.steward" in outcome["approval"]
    release = Path(str(outcome["release"]))
    gate = json.loads((release / "gate.json").read_text(encoding="utf-8"))
    assert gate["approval"]["by"] == "dr.steward" and gate["approval"]["decision"] == "approved"
    assert gate["approval"]["comment"] == "reviewed the report <b>ok</b>" and gate["approval"]["at"]
    sheet = (release / "datasheet.md").read_text(encoding="utf-8")
    assert "## Sign-off" in sheet and "- By: dr.steward" in sheet and "reviewed the report" in sheet


def test_a_rejection_publishes_nothing(source: Path, tmp_path: Path, key: PseudonymKey) -> None:
    run = _gated(source, tmp_path, key)
    approvals.record(run, _approval("rejected", comment="labels of site B not yet verified"))
    outcome = pipeline.step_publish(run, key=key)
    assert not outcome["published"] and outcome["release"] is None
    assert outcome["approval"] is not None and outcome["approval"].startswith("rejected by dr.steward")
    assert not (tmp_path / "releases").exists()
    gate = json.loads((run.paths.report / "gate.json").read_text(encoding="utf-8"))
    assert gate["approval"]["decision"] == "rejected"


def test_an_approval_is_bound_to_its_attempt(source: Path, tmp_path: Path, key: PseudonymKey) -> None:
    run = _gated(source, tmp_path, key)
    approvals.record(run, _approval("approved"))
    assert approvals.current(run) is not None
    again = pipeline.begin(source, tmp_path, run.run_id, policy=LIGHT, key=key)  # the next attempt
    assert again.attempt == 2 and approvals.current(again) is None


def test_a_failed_gate_cannot_be_approved(source: Path, tmp_path: Path, key: PseudonymKey) -> None:
    failing = LIGHT.with_overrides({"reid.k": 1000})
    run = _gated(source, tmp_path, key, failing)
    with pytest.raises(InputError, match="gate failed, so it cannot be approved"):
        approvals.record(run, _approval("approved"))
    approvals.record(run, _approval("rejected"))  # stopping it is always allowed
    assert pipeline.step_publish(run, key=key)["published"] is False


def test_guard_run_records_who_ran_it(source: Path, tmp_path: Path, key: PseudonymKey) -> None:
    result = pipeline.run_pipeline(source, tmp_path, policy=LIGHT, key=key, run_id="cli")
    assert result.release is not None
    gate = json.loads((result.release / "gate.json").read_text(encoding="utf-8"))
    assert gate["approval"]["by"] == getpass.getuser() and gate["approval"]["via"] == "guard run on the command line"


def test_comments_are_bounded_and_control_characters_dropped() -> None:
    a = approvals.Approval(decision="approved", by="x\x00y", at="2026-12-03T00:00:00+00:00",
                           comment="a\x1b[31m" + "b" * 5000, via="test")
    assert a.by == "xy" and "\x1b" not in a.comment and len(a.comment) == approvals.COMMENT_MAX
    with pytest.raises(InputError):
        approvals.Approval(decision="maybe", by="", at="", comment="", via="")  # type: ignore[arg-type]


def test_the_timeout_must_be_positive() -> None:
    with pytest.raises(PolicyError, match="approval.timeout_hours"):
        ApprovalSection(timeout_hours=0.0)
