"""guards.checks.attribute: withheld attributes predictable from released pixels or headers are flagged."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from test_images import corpus_module

from guards.checks import attribute
from guards.checks.base import CheckResult
from guards.manifest import empty_row, to_table, write_table
from guards.policy import ReleasePolicy, policy_from_dict


@pytest.fixture(scope="module")
def policy() -> ReleasePolicy:
    return policy_from_dict({"attribute": {"image_size": 16, "folds": 4}})


def _f(result: CheckResult, metric: str, subgroup: str):  # type: ignore[no-untyped-def]
    return next(f for f in result.findings if f.metric == metric and f.subgroup == subgroup)


def test_independent_attributes_pass(tmp_path: Path, policy: ReleasePolicy) -> None:
    c = corpus_module().make_corpus(tmp_path / "c", patients=80, size=16, seed=1, minority_share=0.2,
                                    images_per_study=1)
    r = attribute.run(c.root, cohort=c.cohort, policy=policy)
    assert [f for f in r.findings if f.status == "fail"] == []  # chance correlations may warn, never fail
    for target in ("ethnic_group", "sex"):
        f = _f(r, "auc", f"{target}=*")
        assert float(f.value) <= 0.7 and "4-fold patient-level" in f.evidence
        assert r.details["auc"][f"{target}=F" if target == "sex" else f"{target}=minority"]["ci"][0] <= 0.5
    assert r.examined["patients_sex"] == 80 and r.examined["images"] == 80


def test_attribute_visible_in_pixels_fails(tmp_path: Path, policy: ReleasePolicy) -> None:
    # the minority's images look different (their own texture): ethnic group is readable from the pixels
    c = corpus_module().make_corpus(tmp_path / "c", patients=80, size=16, seed=1, minority_share=0.2,
                                    minority_duplicated=True, duplicate=1, images_per_study=1)
    r = attribute.run(c.root, cohort=c.cohort, policy=policy)
    assert _f(r, "auc", "ethnic_group=*").status == "fail"
    assert float(_f(r, "auc", "ethnic_group=minority").value) > 0.9
    assert _f(r, "auc", "sex=*").status == "pass"
    assert "ethnic_group" in r.summary and r.advice


def test_attribute_stated_in_release_headers_fails(tmp_path: Path, policy: ReleasePolicy) -> None:
    c = corpus_module().make_corpus(tmp_path / "c", patients=40, size=16, seed=2, images_per_study=1)
    sex = {r["StudyInstanceUID"]: r["sex"] for r in c.cohort.to_pylist()}
    rows = []
    import pydicom

    for path in c.files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        row = empty_row(path.relative_to(c.root).as_posix())
        row.update(status="published", SOPInstanceUID=str(ds.SOPInstanceUID),
                   StudyInstanceUID=str(ds.StudyInstanceUID), PatientSex=sex[str(ds.StudyInstanceUID)],
                   Manufacturer="ACME")
        rows.append(row)
    write_table(to_table(rows), c.root / "manifest.parquet")
    r = attribute.run(c.root, cohort=c.cohort, policy=policy)
    disclosed = _f(r, "header_disclosure", "sex=*")
    assert disclosed.status == "fail" and disclosed.value == 40 and "PatientSex" in disclosed.evidence
    assert r.details["header_values_present"]["PatientSex"] == 40
    # the stated sex is a header feature when predicting other targets; its own header is left out
    assert _f(r, "auc", "sex=*").status == "pass"


def test_missing_and_unmeasurable_targets_warn(tmp_path: Path) -> None:
    c = corpus_module().make_corpus(tmp_path / "c", patients=12, size=8, seed=3, images_per_study=1)
    rows = c.cohort.to_pylist()
    for row in rows:
        row["sex"] = "unknown"
    cohort = pa.Table.from_pylist(rows).drop_columns(["ethnic_group"])
    policy = policy_from_dict({"attribute": {"image_size": 8, "targets": ["ethnic_group", "sex"]}})
    r = attribute.run(c.root, cohort=cohort, policy=policy)
    assert _f(r, "auc", "ethnic_group=*").status == "warn"
    assert "cannot be measured" in _f(r, "auc", "sex=*").evidence
    assert r.status == "warn"
