"""A source file swapped between ingest and deid is quarantined, not published (issue 16).

Ingest records each indexed file's SHA-256; the index, the cohort and the representation check describe what
ingest read. Here pydicom's CT_small.dcm is indexed, then replaced on disk by MR_small.dcm (another patient and
study) before deid runs: deid must not publish the MR file under the CT's index row.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from guards.deid.tree import deidentify_index
from guards.ingest import ingest
from guards.keys import PseudonymKey
from guards.policy import ReleasePolicy
from guards.testdata import pydicom_test_dir

POLICY = ReleasePolicy().with_overrides({"pixels.ocr_all": False})


def _indexed(tmp_path: Path) -> tuple[Path, list[dict[str, object]]]:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("CT_small.dcm", "JPEG2000.dcm"):
        shutil.copy(pydicom_test_dir() / name, src / name)
    result = ingest(src, out_dir=tmp_path / "ingest", policy=POLICY.ingest)
    rows = result.table.to_pylist()
    assert [r["status"] for r in rows] == ["indexed", "indexed"], rows
    return src, rows


def test_a_file_swapped_after_ingest_is_quarantined_with_the_reason(tmp_path: Path, key: PseudonymKey) -> None:
    src, rows = _indexed(tmp_path)
    shutil.copy(pydicom_test_dir() / "MR_small.dcm", src / "CT_small.dcm")  # swapped after ingest
    result = deidentify_index(src, rows, tmp_path / "deid", policy=POLICY, key=key)
    by_path = {r["source_path"]: r for r in result.table.to_pylist()}
    swapped = by_path["CT_small.dcm"]
    assert swapped["status"] == "quarantined"
    assert "changed since ingest: its SHA-256 differs from the one ingest recorded" in swapped["reason"]
    assert by_path["JPEG2000.dcm"]["status"] == "published"  # the unchanged file is untouched by the check
    assert result.counts["published"] == 1 and result.counts["quarantined"] == 1
    published = list((tmp_path / "deid").rglob("*.dcm"))
    assert len(published) == 1  # only the JPEG 2000 instance: no MR instance under the CT's row


def test_an_indexed_row_without_a_recorded_hash_is_not_published(tmp_path: Path, key: PseudonymKey) -> None:
    src, rows = _indexed(tmp_path)
    rows[0] = {**rows[0], "sha256": None}
    result = deidentify_index(src, rows, tmp_path / "deid", policy=POLICY, key=key)
    row = next(r for r in result.table.to_pylist() if r["source_path"] == rows[0]["path"])
    assert row["status"] == "quarantined" and "no SHA-256 recorded at ingest" in row["reason"]


def test_unchanged_files_are_published_as_before(tmp_path: Path, key: PseudonymKey) -> None:
    src, rows = _indexed(tmp_path)
    result = deidentify_index(src, rows, tmp_path / "deid", policy=POLICY, key=key)
    assert result.counts["published"] == 2 and result.counts["quarantined"] == 0
