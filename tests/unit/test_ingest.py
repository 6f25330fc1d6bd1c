"""guards.ingest: every file accounted for, each unusable file quarantined with a specific reason."""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
import pytest
from pydicom import dcmread

from guards import testdata
from guards.ingest import ingest
from guards.manifest import MANIFEST_SCHEMA, read_table
from guards.policy import IngestSection

POLICY = IngestSection()
CT = testdata.pydicom_test_dir() / "CT_small.dcm"


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in testdata.files_under(root)}


@pytest.mark.parametrize(
    "root",
    [
        testdata.pydicom_test_dir(),  # pydicom's bundled test files: DICOM of every kind, plus non-DICOM files
        pytest.param(testdata.pydicom_data_dir(), marks=pytest.mark.skipif(
            testdata.pydicom_data_dir() is None, reason="pydicom-data not installed")),  # pydicom-data package
    ],
)
def test_every_third_party_file_is_accounted_for(root: Path, tmp_path: Path) -> None:
    result = ingest(root, out_dir=tmp_path, policy=POLICY)
    paths = result.table.column("path").to_pylist()
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert sorted(paths) == sorted(on_disk)  # exactly one row per file, none missing, none twice
    c = result.counts
    assert c["seen"] == len(on_disk) == c["indexed"] + c["quarantined"] + c["excluded"]
    assert c["indexed"] > 0
    for row in result.table.to_pylist():
        assert row["status"] in {"indexed", "quarantined", "excluded"}
        if row["status"] != "indexed":
            assert row["reason"], row["path"]
        if row["status"] == "quarantined":  # quarantine copies are byte-identical
            assert (tmp_path / "quarantine" / row["path"]).read_bytes() == (root / row["path"]).read_bytes()
    assert read_table(result.index_path).schema.equals(MANIFEST_SCHEMA)


def test_dicomdir_is_recognised_and_excluded(tmp_path: Path) -> None:
    result = ingest(testdata.pydicom_test_dir() / "dicomdirtests", out_dir=tmp_path, policy=POLICY)
    rows = {r["path"]: r for r in result.table.to_pylist()}
    assert rows["DICOMDIR"]["status"] == "excluded"
    assert rows["DICOMDIR"]["is_dicomdir"] is True
    assert "DICOMDIR" in rows["DICOMDIR"]["reason"]


def _bad_corpus(root: Path) -> dict[str, str]:
    """Write the bad-input corpus; returns file name -> expected status:reason fragment."""
    root.mkdir()
    data = CT.read_bytes()
    (root / "truncated.dcm").write_bytes(data[: len(data) // 2])
    (root / "zero.dcm").write_bytes(b"")
    (root / "random.dcm").write_bytes(os.urandom(4096))
    (root / "nopreamble.dcm").write_bytes(_without_preamble(data))
    ds = dcmread(CT)
    ds.add_new(0x00191010, "LO", "ACME")  # private creator
    ds.add_new(0x00191001, "OB", b"\0" * 3_000_000)  # a huge private element
    ds.save_as(root / "huge_private.dcm")
    bad_vr = bytearray(data)
    pos = bad_vr.find(b"\x10\x00\x10\x00PN")  # (0010,0010) Patient's Name, explicit VR "PN"
    bad_vr[pos + 4 : pos + 6] = b"ZZ"  # an invalid VR
    (root / "bad_vr.dcm").write_bytes(bytes(bad_vr))
    (root / "scan.jpg").write_bytes(data)  # a valid instance under a wrong extension
    (root / "labels.csv").write_text("StudyInstanceUID,label\n")
    return {
        "truncated.dcm": "quarantined:truncated",  # file ends inside Pixel Data
        "zero.dcm": "quarantined:zero bytes",
        "random.dcm": "quarantined:not DICOM",
        "nopreamble.dcm": "indexed:no preamble",  # valid data set without preamble: usable, noted
        "huge_private.dcm": "indexed:",  # large but within ingest.max_file_bytes
        "bad_vr.dcm": "quarantined:Value Representation",  # an unknown VR in the header
        "scan.jpg": "indexed:",  # the extension does not matter, the content does
        "labels.csv": "excluded:sidecar",
    }


def _without_preamble(data: bytes) -> bytes:
    """Only the data set: no preamble, DICM prefix or file meta, as some old archives hold (PS3.10 7.1)."""
    from io import BytesIO

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = dcmread(BytesIO(data))
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)  # the data set alone, explicit VR little endian like its transfer syntax
    raw = buf.getvalue()
    assert raw[128:132] != b"DICM"
    return raw


def test_bad_input_corpus_each_file_indexed_or_quarantined_with_reason(tmp_path: Path) -> None:
    expected = _bad_corpus(tmp_path / "src")
    result = ingest(tmp_path / "src", out_dir=tmp_path / "out", policy=POLICY)
    rows = {r["path"]: r for r in result.table.to_pylist()}
    assert set(rows) == set(expected)
    for name, want in expected.items():
        status, _, fragment = want.partition(":")
        assert rows[name]["status"] == status, (name, rows[name]["reason"])
        assert fragment.lower() in (rows[name]["reason"] or "").lower(), (name, rows[name]["reason"])
        if status == "quarantined":
            assert rows[name]["reason"]


def test_size_limit_quarantines_with_reason(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.dcm").write_bytes(CT.read_bytes())
    result = ingest(src, out_dir=tmp_path / "out", policy=IngestSection(max_file_bytes=1000))
    row = result.table.to_pylist()[0]
    assert row["status"] == "quarantined"
    assert "max_file_bytes" in row["reason"]


def test_memory_fsspec_source_is_fetched_locally(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/guardsrc/study/a.dcm", CT.read_bytes())
    fs.pipe("/guardsrc/notes.txt", b"hello")
    result = ingest("memory://guardsrc", out_dir=tmp_path, policy=POLICY)
    rows = {r["path"]: r for r in result.table.to_pylist()}
    assert rows["study/a.dcm"]["status"] == "indexed"
    assert rows["notes.txt"]["status"] == "quarantined"
    assert (result.root / "study" / "a.dcm").read_bytes() == CT.read_bytes()


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    from guards.errors import InputError

    with pytest.raises(InputError, match="not an existing folder"):
        ingest(tmp_path / "nope", out_dir=tmp_path / "out", policy=POLICY)


def test_rerun_gives_the_same_index(tmp_path: Path) -> None:
    expected = _bad_corpus(tmp_path / "src")
    a = ingest(tmp_path / "src", out_dir=tmp_path / "out", policy=POLICY).table
    b = ingest(tmp_path / "src", out_dir=tmp_path / "out", policy=POLICY).table
    assert a.equals(b)
    assert a.num_rows == len(expected)
