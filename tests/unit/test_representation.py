"""guards.checks.representation: the GX suite fails a subgroup under its floor and Data Docs name the expectation."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from guards.checks import representation
from guards.checks.base import CheckResult
from guards.cohort import COHORT_SCHEMA, UNKNOWN
from guards.errors import InputError
from guards.manifest import empty_row, to_table
from guards.policy import ReleasePolicy


def make_cohort(rows: list[dict[str, Any]]) -> pa.Table:
    full = []
    for i, r in enumerate(rows):
        base: dict[str, Any] = {f.name: UNKNOWN for f in COHORT_SCHEMA if pa.types.is_string(f.type)}
        base.update(StudyInstanceUID=f"2.25.{i}", PatientID=f"RG{i:06d}", label=-1, n_instances=1, included=True,
                    exclusion_reason="")
        base.update(r)
        full.append(base)
    return pa.Table.from_pylist(full, schema=COHORT_SCHEMA)


def balanced_rows(n: int = 120) -> list[dict[str, Any]]:
    """Groups A and B, both sexes, both labels, all included."""
    return [{"sex": "FM"[i % 2], "ethnic_group": "AB"[(i // 2) % 2], "label": (i // 4) % 2} for i in range(n)]


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> tuple[CheckResult, Path]:
    """Minority C: 3 studies (under the floor of 5), 2 of them excluded; required group D absent."""
    rows = balanced_rows() + [{"sex": "F", "ethnic_group": "C", "label": 1}] + [
        {"sex": "F", "ethnic_group": "C", "label": 0, "included": False, "exclusion_reason": "burned-in text"}] * 2
    report = tmp_path_factory.mktemp("report_fail")
    policy = ReleasePolicy().with_overrides({"representation.required": ["ethnic_group=D"]})
    index = to_table([{**empty_row("a.dcm"), "status": "indexed"}, {**empty_row("b"), "status": "quarantined"}])
    return representation.run(make_cohort(rows), source_index=index, policy=policy, report_dir=report), report


@pytest.fixture(scope="module")
def passing(tmp_path_factory: pytest.TempPathFactory) -> tuple[CheckResult, Path]:
    """A balanced cohort against a matching population reference, with required groups present."""
    tmp = tmp_path_factory.mktemp("report_pass")
    ref = tmp / "population.csv"
    ref.write_text("column,value,share\nethnic_group,A,0.5\nethnic_group,B,0.5\nsex,F,0.5\nsex,M,0.5\n")
    policy = ReleasePolicy().with_overrides(
        {"representation.reference": str(ref), "representation.required": ["ethnic_group=A", "sex=F"]})
    return representation.run(make_cohort(balanced_rows()), source_index=None, policy=policy,
                              report_dir=tmp / "report"), tmp / "report"


def test_subgroup_under_floor_fails_with_figures(failing: tuple[CheckResult, Path]) -> None:
    result, _ = failing
    assert result.status == "fail"
    c = {f.metric: f for f in result.findings if f.subgroup == "ethnic_group=C"}
    assert (c["subgroup_count"].value, c["subgroup_count"].threshold, c["subgroup_count"].status) == (1, 5, "fail")
    assert c["subgroup_share"].value == pytest.approx(1 / 121, abs=1e-6)
    # 2 of 3 excluded against 2 of 123 overall
    assert c["exclusion_rate_ratio"].value == pytest.approx((2 / 3) / (2 / 123), abs=1e-4)
    assert c["exclusion_rate_ratio"].status == "fail"
    req = next(f for f in result.findings if f.metric == "required_subgroups_present")
    assert (req.status, req.value) == ("fail", "D")
    assert {f.subgroup for f in result.findings if f.status == "fail"} == {"ethnic_group=C", "ethnic_group=D"}
    assert "ethnic_group=C" in result.summary
    assert result.examined["studies"] == 123 and result.examined["excluded_studies"] == 2
    assert (result.examined["source_files"], result.examined["source_files_quarantined"]) == (2, 1)


def test_datadocs_name_the_failing_expectation(failing: tuple[CheckResult, Path]) -> None:
    result, report = failing
    index = (report / result.artefacts["datadocs"]).read_text(encoding="utf-8")
    assert result.artefacts["datadocs"] == "datadocs/index.html"
    assert "FAILED" in index and "expect_subgroup_share_at_least</code> ethnic_group=C" in index
    assert "expect_column_distinct_values_to_contain_set" in index
    page = (report / result.artefacts["datadocs_validation"]).read_text(encoding="utf-8")
    words = " ".join(re.sub(r"<[^>]+>", " ", page).split())  # the rendered text, without its tags
    assert "Included rows of ethnic_group = C must number at least 5" in words
    assert not list(report.glob("*.tmp"))


def test_datadocs_load_nothing_from_the_network(failing: tuple[CheckResult, Path]) -> None:
    """No script, style sheet or image of any Data Docs page comes from another origin (they read offline)."""
    _, report = failing
    pages = list((report / "datadocs").rglob("*.html"))
    assert len(pages) >= 3  # the index, the suite and the validation result
    remote = re.compile(r'<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)="(?:https?:)?//', re.IGNORECASE)
    assert [p.name for p in pages if remote.search(p.read_text(encoding="utf-8"))] == []


def test_balanced_cohort_passes(passing: tuple[CheckResult, Path]) -> None:
    result, report = passing
    assert result.status == "pass", [f for f in result.findings if f.status != "pass"]
    kl = {f.subgroup: f.value for f in result.findings if f.metric == "kl_divergence"}
    assert set(kl) == {"ethnic_group", "sex"} and max(kl.values()) < 1e-4
    prevalence = [f for f in result.findings if f.metric == "label_prevalence"]
    assert {f.subgroup for f in prevalence} == {"sex=F", "sex=M", "ethnic_group=A", "ethnic_group=B"}
    assert all(f.value == 0.5 for f in prevalence)
    assert result.examined["expectations"] == 16  # 2 required (one per column) + 4 subgroups x 3 + 2 KL
    assert "passed" in (report / "datadocs" / "index.html").read_text(encoding="utf-8")


def test_reference_from_previous_release(tmp_path: Path) -> None:
    previous = make_cohort(balanced_rows(8) + [{"ethnic_group": "C", "included": False}])
    pq.write_table(previous, tmp_path / "cohort.parquet")
    ref = representation.load_reference(str(tmp_path / "cohort.parquet"), subgroups=("ethnic_group", "sex"))
    assert ref == {"ethnic_group": {"A": 0.5, "B": 0.5}, "sex": {"F": 0.5, "M": 0.5}}  # excluded C not counted


def test_bad_policy_inputs_are_refused(tmp_path: Path) -> None:
    cohort = make_cohort(balanced_rows(8))
    with pytest.raises(InputError, match="column=value"):
        representation.run(cohort, source_index=None, report_dir=tmp_path,
                           policy=ReleasePolicy().with_overrides({"representation.required": ["nocolumn"]}))
    with pytest.raises(InputError, match="does not exist"):
        representation.load_reference(str(tmp_path / "missing.csv"), subgroups=("sex",))


def test_relative_report_folder_builds_data_docs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`guard run src out` with a relative OUT: GX's store wants an absolute folder, the check resolves it."""
    monkeypatch.chdir(tmp_path)
    result = representation.run(make_cohort(balanced_rows()), source_index=None, policy=ReleasePolicy(),
                                report_dir=Path("out") / "report")
    assert result.examined["expectations"] > 0
    assert (tmp_path / "out" / "report" / "datadocs" / "index.html").is_file()


PAYLOAD = '"><img src=x onerror=alert(1)>'


def test_data_docs_escape_header_values_and_load_nothing_from_the_network(tmp_path: Path) -> None:
    """An EthnicGroup value carrying markup reaches every custom expectation's page escaped (GX's fallback for an
    expectation without a renderer printed the raw kwargs), and no page loads a script or style sheet from a CDN."""
    import re

    rows = balanced_rows() + [{"sex": "F", "ethnic_group": PAYLOAD, "label": 1}] * 2
    ref = tmp_path / "population.csv"
    ref.write_text(f"column,value,share\nethnic_group,A,0.5\nethnic_group,B,0.4\nethnic_group,{PAYLOAD[1:]},0.1\n")
    policy = ReleasePolicy().with_overrides({"representation.reference": str(ref),
                                             "representation.required": [f"ethnic_group={PAYLOAD}"]})
    representation.run(make_cohort(rows), source_index=None, policy=policy, report_dir=tmp_path / "report")
    pages = list((tmp_path / "report" / "datadocs").rglob("*.html"))
    assert len(pages) >= 3  # index, suite, validation
    text = {p.name: p.read_text(encoding="utf-8") for p in pages}
    assert not [n for n, t in text.items() if "<img src=x" in t]
    suite = next(t for n, t in text.items() if n == "release_representation.html")
    assert suite.count("&lt;img src=x onerror=alert(1)&gt;") >= 3  # share floor, prevalence, exclusion ratio
    assert "Included rows of" in suite and "expect_subgroup_share_at_least</span>(**{" not in suite
    remote = [m for t in text.values()
              for m in re.findall(r'<(?:script|link)\b[^>]*(?:src|href)="https?://[^"]*"', t)]
    assert remote == []
