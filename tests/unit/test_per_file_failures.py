"""One bad file never stops a run (issue 16): deid and protect quarantine the file that fails, the rest goes on.

Big-endian input (PS3.5 A.3, retired; pydicom's MR_small_bigendian) stopped protect: pydicom's ``save_as`` refuses
to write a data set read big endian as little endian, and protect writes new pixels little endian.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import UID

from guards import testdata
from guards.deid import engine
from guards.deid.tree import deidentify_tree
from guards.keys import PseudonymKey
from guards.manifest import empty_row, read_table, to_table, write_table
from guards.policy import ReleasePolicy, policy_from_dict
from guards.protect.tree import protect_tree

T = testdata.pydicom_test_dir()
DEID = ReleasePolicy().with_overrides({"pixels.ocr_all": False})
PROTECT = policy_from_dict({
    "release": {"seed": 16},
    "protect": {"image_size": 16, "max_rounds": 1, "steps": 2, "train_steps": 2, "warmup_epochs": 1,
                "warmup_min_steps": 0, "batch_size": 8, "surrogate_width": 8, "reuse": False},
})


def test_an_error_in_one_file_at_deid_quarantines_that_file(
    tmp_path: Path, key: PseudonymKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(T / "CT_small.dcm", src / "good.dcm")
    shutil.copyfile(T / "MR_small.dcm", src / "bad.dcm")
    real = engine._deidentify

    def deidentify(ds, **kwargs):  # type: ignore[no-untyped-def]
        if ds.Modality == "MR":  # what pydicom raises on sequences nested past the recursion limit
            raise RecursionError("maximum recursion depth exceeded")
        return real(ds, **kwargs)

    monkeypatch.setattr("guards.deid.tree._deidentify", deidentify)
    result = deidentify_tree(src, tmp_path / "deid", policy=DEID, key=key)
    rows = {r["source_path"]: r for r in result.table.to_pylist()}
    assert rows["good.dcm"]["status"] == "published"
    assert rows["bad.dcm"]["status"] == "quarantined"
    assert rows["bad.dcm"]["reason"].startswith("cannot be de-identified: RecursionError")


def _deid_like_tree(root: Path, names: dict[str, str]) -> Path:
    """A tree as deid leaves it (files + manifest of published rows), each file with its own UIDs."""
    rows = []
    for n, (rel, name) in enumerate(names.items()):
        ds = dcmread(T / name)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(f"2.25.1616{n}")
        ds.StudyInstanceUID = f"2.25.1617{n}"
        ds.save_as(root / rel)  # written as read: big endian stays big endian (a header-only deid edit)
        row = empty_row(rel)
        row.update(status="published", reason="", size=(root / rel).stat().st_size,
                   TransferSyntaxUID=str(ds.file_meta.TransferSyntaxUID))
        rows.append(row)
    write_table(to_table(rows), root / "manifest.parquet")
    return root


def test_big_endian_input_is_protected_and_written_little_endian(tmp_path: Path) -> None:
    src = tmp_path / "deid"
    src.mkdir()
    _deid_like_tree(src, {"be.dcm": "MR_small_bigendian.dcm", "le.dcm": "MR_small.dcm"})
    result = protect_tree(src, tmp_path / "protect", policy=PROTECT, labels=None)
    rows = {r["path"]: r for r in read_table(result.manifest_path).to_pylist()}
    assert rows["be.dcm"]["status"] == "published", rows["be.dcm"]["reason"]
    out = dcmread(tmp_path / "protect" / "be.dcm")
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"  # Explicit VR Little Endian
    original = dcmread(T / "MR_small_bigendian.dcm")
    assert (out.Rows, out.Columns, str(out.PatientName)) == (original.Rows, original.Columns, str(original.PatientName))
    diff = abs(out.pixel_array.astype(int) - original.pixel_array.astype(int))
    assert diff.max() <= result.budget["be.dcm"]  # the pixels are the image plus bounded noise, not byte-swapped


def test_a_file_protect_cannot_write_is_quarantined_and_the_rest_is_protected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "deid"
    src.mkdir()
    _deid_like_tree(src, {"a.dcm": "MR_small.dcm", "b.dcm": "CT_small.dcm"})
    real = __import__("guards.protect.tree", fromlist=["save_dataset"]).save_dataset

    def save(ds, path, **kwargs):  # type: ignore[no-untyped-def]
        if path.name == "b.dcm":
            raise ValueError("cannot be encoded")
        return real(ds, path, **kwargs)

    monkeypatch.setattr("guards.protect.tree.save_dataset", save)
    result = protect_tree(src, tmp_path / "protect", policy=PROTECT, labels=None)
    rows = {r["path"]: r for r in read_table(result.manifest_path).to_pylist()}
    assert rows["a.dcm"]["status"] == "published"
    assert rows["b.dcm"]["status"] == "quarantined" and "ValueError" in rows["b.dcm"]["reason"]
    assert not (tmp_path / "protect" / "b.dcm").exists()
    assert (tmp_path / "protect" / "quarantine" / "b.dcm").is_file()
    assert "b.dcm" in result.quarantined
