"""guards.atomic: a file appears complete under its final name or not at all."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from guards.atomic import copy_file, part10_bytes, save_dataset, write_bytes
from guards.deid.writer import encode_part10
from guards.testdata import pydicom_test_dir


def test_write_bytes_creates_folders_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "x.dcm"
    write_bytes(target, b"DICM" * 10)
    assert target.read_bytes() == b"DICM" * 10
    assert [p.name for p in target.parent.iterdir()] == ["x.dcm"]


def test_failed_encoding_leaves_the_previous_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "x.dcm"
    target.write_bytes(b"old")

    def broken(ds: Dataset) -> bytes:
        raise ValueError("cannot encode")

    with pytest.raises(ValueError, match="cannot encode"):
        save_dataset(Dataset(), target, encode=broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.dcm"]


def test_interrupted_write_removes_its_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.dcm"

    def interrupted(self: Path, target: Path) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_bytes(target, b"data")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("encode", [part10_bytes, encode_part10], ids=["pydicom", "release-guard writer"])
def test_save_dataset_returns_the_bytes_it_wrote_and_they_read_back(tmp_path: Path, encode) -> None:  # type: ignore[no-untyped-def]
    ds = pydicom.dcmread(pydicom_test_dir() / "CT_small.dcm")
    target = tmp_path / "ct.dcm"
    data = save_dataset(ds, target, encode=encode)
    assert target.read_bytes() == data
    back = pydicom.dcmread(target)
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert back.PixelData == ds.PixelData


def test_copy_file_is_byte_identical(tmp_path: Path) -> None:
    src = pydicom_test_dir() / "MR_small.dcm"
    copy_file(src, tmp_path / "q" / "mr.dcm")
    assert (tmp_path / "q" / "mr.dcm").read_bytes() == src.read_bytes()
    assert [p.name for p in (tmp_path / "q").iterdir()] == ["mr.dcm"]
