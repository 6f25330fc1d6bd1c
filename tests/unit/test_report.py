"""guards.report: index.html (valid, self-contained, names the failing check, subgroup, figures; shows inconclusive
checks with what would make them conclusive, and waivers with the steward's reason) and gate.json."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

from guards.checks.base import CheckResult, Finding
from guards.gate import decide
from guards.policy import GateSection, ReleasePolicy, Waiver
from guards.report import write_report
from guards.report.svg import bar_chart, line_chart, roc_chart

VOID = {"meta", "br", "hr", "img", "input", "link", "area", "base", "col", "embed", "source", "track", "wbr"}
SVG_EMPTY = {"line", "rect", "polyline", "path", "circle"}


class _Checker(HTMLParser):
    """Tags must nest and close properly; collects tag names, links, scripts and visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[str] = []
        self.hrefs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.hrefs += [v or "" for k, v in attrs if k in ("href", "src")]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _results() -> list[CheckResult]:
    membership = CheckResult(
        id="membership",
        findings=(
            Finding(metric="tpr_at_1pct_fpr", value=0.04, threshold=0.10, status="pass",
                    subgroup="ethnic_group=majority"),
            Finding(metric="tpr_at_1pct_fpr", value=0.31, threshold=0.10, status="fail",
                    subgroup="ethnic_group=minority",
                    evidence="duplicated studies <script>alert(1)</script>"),
        ),
        examined={"member_patients": 40, "non_member_patients": 40},
        summary="Membership risk concentrates on the minority.",
        advice="Remove duplicated studies of the flagged subgroup.",
        artefacts={"scores": "membership/scores.csv"},
        details={"roc": {"ethnic_group=minority": {"fpr": [0.0, 0.001, 0.01, 1.0], "tpr": [0.0, 0.2, 0.31, 1.0]},
                         "ethnic_group=majority": {"fpr": [0.0, 0.01, 1.0], "tpr": [0.0, 0.04, 1.0]}},
                 "curves": {"proxy_members": [0.5, 0.7, 0.9]}, "seed": 7},
    )
    phi = CheckResult(id="phi", findings=(Finding(metric="phi_hits", value=0, threshold=0, status="pass"),),
                      examined={"files": 3, "elements": 300})
    representation = CheckResult(
        id="representation",
        findings=(Finding(metric="share", value=0.5, threshold=0.02, status="pass", subgroup="sex=F"),
                  Finding(metric="share", value=0.5, threshold=0.02, status="pass", subgroup="sex=M")),
        examined={"rows": 80}, artefacts={"datadocs": "datadocs/index.html", "bad": "https://example.org/x"},
        details={"distributions": {"sex": {"F": 0.5, "M": 0.5}}},
    )
    return [phi, membership, representation]


def _policy(waivers: tuple[Waiver, ...] = ()) -> ReleasePolicy:
    return ReleasePolicy(gate=GateSection(blocking=("phi", "membership", "representation"), advisory=(),
                                          waivers=waivers))


def test_report_names_failing_check_subgroup_and_figures(tmp_path: Path) -> None:
    results = _results()
    policy = _policy()
    decision = decide(results, policy=policy)
    context = {"run_id": "r1", "counts": {"seen": 10, "published": 8, "quarantined": 1, "excluded": 1}}
    index = write_report(decision, results, tmp_path / "report", policy=policy, context=context)
    assert index == tmp_path / "report" / "index.html"
    html = index.read_text(encoding="utf-8")
    checker = _Checker()
    checker.feed(html)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    text = " ".join(checker.text)
    assert "FAILED" in text
    assert "'membership' failed for subgroup ethnic_group=minority" in text
    assert "off by 0.21" in text and "Remove duplicated studies" in text
    assert checker.tags.count("svg") >= 4  # tpr bars, ROC, learning curve, share bars / distribution
    assert "ROC per subgroup (log-log)" in text and "learning curves" in text
    assert "<script>" not in html and "&lt;script&gt;" in html  # evidence is escaped; no script at all
    assert "datadocs/index.html" in checker.hrefs and "membership/scores.csv" in checker.hrefs
    assert not any(h.startswith(("http:", "https:", "//")) for h in checker.hrefs)  # self-contained
    for k in ("seen", "published", "quarantined", "excluded"):
        assert k in text
    assert "Policy used" in text and "tpr_at_1pct_fpr_max" in text
    assert not list((tmp_path / "report").glob("*.tmp"))


def test_gate_json_matches_documented_shape(tmp_path: Path) -> None:
    results = _results()
    policy = _policy()
    write_report(decide(results, policy=policy), results, tmp_path, policy=policy, context={})
    doc = json.loads((tmp_path / "gate.json").read_text(encoding="utf-8"))
    assert {"passed", "checks", "waivers"} <= set(doc)
    assert doc["passed"] is False
    assert len(doc["checks"]) == 5  # one per finding
    for c in doc["checks"]:
        assert set(c) == {"id", "status", "metric", "value", "threshold", "subgroup", "evidence", "needs"}
    failing = [c for c in doc["checks"] if c["status"] == "fail"]
    assert failing == [{"id": "membership", "status": "fail", "metric": "tpr_at_1pct_fpr", "value": 0.31,
                        "threshold": 0.10, "subgroup": "ethnic_group=minority",
                        "evidence": "duplicated studies <script>alert(1)</script>", "needs": ""}]


def test_waived_report_passes_and_records_the_reason(tmp_path: Path) -> None:
    results = _results()
    w = Waiver(check="membership", reason="ethics board accepted the residual risk for this cohort")
    policy = _policy((w,))
    index = write_report(decide(results, policy=policy), results, tmp_path, policy=policy, context={})
    html = index.read_text(encoding="utf-8")
    assert "PASSED" in html and w.reason in html and "waived" in html
    doc = json.loads((tmp_path / "gate.json").read_text(encoding="utf-8"))
    assert doc["passed"] is True and doc["waivers"] == [{"check": "membership", "reason": w.reason}]


def test_empty_results_report_fails(tmp_path: Path) -> None:
    policy = _policy()
    index = write_report(decide([], policy=policy), [], tmp_path, policy=policy, context={})
    html = index.read_text(encoding="utf-8")
    assert "FAILED" in html and "no data" in html
    assert json.loads((tmp_path / "gate.json").read_text(encoding="utf-8"))["passed"] is False


def test_svg_plots_skip_non_finite_values_and_escape_labels() -> None:
    bars = bar_chart({"a<b": 0.2, "nan": float("nan")}, title="t&t", threshold=0.1)
    assert "a&lt;b" in bars and "t&amp;t" in bars and bars.count("<rect") == 1
    roc = roc_chart({"g": ([0.0, 0.01, 1.0], [0.0, 0.5, 1.0])}, title="roc")
    assert roc.count("<polyline") == 1
    assert "<polyline" not in line_chart({"x": [float("nan")]}, title="c")


def test_report_shows_what_remediation_cost_and_who_paid(tmp_path: Path) -> None:
    results, policy = _results(), _policy()
    context = {"remediation": {
        "suppressed_studies": 3, "rewritten_files": 40,
        "generalisations": {"PatientAge": "age bands 0-17, 18-39, 40-64, 65-89, 90+"},
        "subgroup_losses": [{"subgroup": "ethnic_group=C<minority>", "records": 6, "suppressed": 2}],
    }}
    index = write_report(decide(results, policy=policy), results, tmp_path, policy=policy, context=context)
    text = index.read_text()
    assert "Re-identification remediation" in text
    assert "3 studies suppressed, 40 released files rewritten" in text
    assert "age bands 0-17" in text
    assert "ethnic_group=C&lt;minority&gt;" in text  # escaped, as every text in the report


NEEDS = "about 37 more patients in subgroup sex=F (now 20)"


def _inconclusive() -> CheckResult:
    return CheckResult(
        id="unlearnability",
        findings=(
            Finding(metric="balanced_accuracy_protected", value=0.55, threshold=0.60, status="inconclusive",
                    subgroup="sex=F", evidence="95% CI 0.41-0.71", needs=NEEDS),
            Finding(metric="balanced_accuracy_clean", value=0.52, threshold=0.60, status="inconclusive",
                    needs="a clean victim that learns: more labelled studies or more epochs"),
        ),
        examined={"images": 40},
        summary="Unlearnability not shown.",
    )


def test_report_shows_an_inconclusive_check_and_what_would_make_it_conclusive(tmp_path: Path) -> None:
    results = [_results()[0], _inconclusive()]
    policy = ReleasePolicy(gate=GateSection(blocking=("phi", "unlearnability"), advisory=()))
    index = write_report(decide(results, policy=policy), results, tmp_path, policy=policy, context={})
    html = index.read_text(encoding="utf-8")
    checker = _Checker()
    checker.feed(html)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    text = " ".join(checker.text)
    assert "FAILED" in text
    assert "inconclusive: not shown safe" in text  # its own label, not "fail" or "warn"
    assert 'class="inconclusive"' in html and ".inconclusive{" in html  # and its own colour
    assert NEEDS in text and "a clean victim that learns" in text
    assert "What would make it conclusive" in text
    doc = json.loads((tmp_path / "gate.json").read_text(encoding="utf-8"))
    assert [c["needs"] for c in doc["checks"] if c["id"] == "unlearnability"][0] == NEEDS


def test_waived_inconclusive_check_shows_the_stewards_reason(tmp_path: Path) -> None:
    results = [_results()[0], _inconclusive()]
    w = Waiver(check="unlearnability", reason="pilot cohort: too small to train a victim, shared under a DUA")
    policy = ReleasePolicy(gate=GateSection(blocking=("phi", "unlearnability"), advisory=(), waivers=(w,)))
    index = write_report(decide(results, policy=policy), results, tmp_path, policy=policy, context={})
    text = index.read_text(encoding="utf-8")
    assert "PASSED" in text
    assert "waived (was inconclusive: not shown safe)" in text
    assert text.count(w.reason) >= 2  # the waivers table, the outcome table and the check's own section
    assert NEEDS in text


def test_report_counts_each_cause_in_its_own_row_and_no_indexed_row(tmp_path: Path) -> None:
    results, policy = _results(), _policy()
    context = {"counts": {"seen": 12, "published": 2, "quarantined": 1, "excluded": 9},
               "causes": [("excluded", "re-identification risk", 8), ("excluded", "sidecar table (ingest.sidecars)", 1),
                          ("quarantined", "zero bytes", 1)]}
    text = write_report(decide(results, policy=policy), results, tmp_path, policy=policy, context=context).read_text()
    assert "<td>excluded</td><td>re-identification risk</td><td>8</td>" in text
    assert "<td>excluded</td><td>sidecar table (ingest.sidecars)</td><td>1</td>" in text
    assert "<td>quarantined</td><td>zero bytes</td><td>1</td>" in text
    assert "indexed" not in text and ">None<" not in text


def test_bars_are_coloured_by_their_findings_status_not_by_the_side_of_the_threshold() -> None:
    """A share floor: both subgroups above the threshold pass (green); a risk: above the threshold fails (red)."""
    from guards.report.svg import STATUS_COLOUR

    floor = bar_chart({"sex=F": 0.5, "sex=M": 0.5}, title="share", threshold=0.02,
                      statuses={"sex=F": "pass", "sex=M": "pass"})
    assert floor.count(f'fill="{STATUS_COLOUR["pass"]}"') == 2 and STATUS_COLOUR["fail"] not in floor
    risk = bar_chart({"a": 0.3, "b": 0.01}, title="risk", threshold=0.09, statuses={"a": "fail", "b": "pass"})
    assert risk.count(f'fill="{STATUS_COLOUR["fail"]}"') == 1 and risk.count(f'fill="{STATUS_COLOUR["pass"]}"') == 1
    assert 'transform="rotate(-35' in risk  # slanted labels: many subgroups do not overlap
