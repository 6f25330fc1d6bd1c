"""guards.ingest: every file accounted for, each unusable file quarantined with a specific reason."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import struct
import tracemalloc
import warnings
from io import BytesIO
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import MPEG2MPML

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
    assert _files(root) <= set(paths)  # guards.testdata's listing (what other tests use) is covered
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


HUGE_PRIVATE_BYTES = 3_000_000


CT_UID = b"1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"


def _ct_copy(n: int) -> bytes:
    """CT_small's bytes with its own SOPInstanceUID (same length): whole copies of one instance are duplicates."""
    data = CT.read_bytes()
    assert data.count(CT_UID) == 2  # Media Storage SOP Instance UID and SOP Instance UID
    return data.replace(CT_UID, CT_UID[:-2] + b"%02d" % n)


def _write_bad_corpus(root: Path) -> None:
    """The bad-input corpus of the acceptance list (plus the other cases the contract names), built from CT_small.

    Each usable copy has its own SOPInstanceUID: ingest indexes one file per instance UID."""
    root.mkdir()
    data = CT.read_bytes()
    (root / "truncated.dcm").write_bytes(data[: len(data) // 2])
    (root / "truncated_header.dcm").write_bytes(data[:300])
    (root / "zero.dcm").write_bytes(b"")
    (root / "random.dcm").write_bytes(np.random.default_rng(7).bytes(4096))
    (root / "nopreamble.dcm").write_bytes(_without_preamble(_ct_copy(1)))
    ds = dcmread(BytesIO(_ct_copy(2)))
    ds.add_new(0x00191010, "LO", "ACME")  # private creator
    ds.add_new(0x00191001, "OB", b"\0" * HUGE_PRIVATE_BYTES)  # a huge private element
    ds.save_as(root / "huge_private.dcm")
    bad_vr = bytearray(data)
    pos = bad_vr.find(b"\x10\x00\x10\x00PN")  # (0010,0010) Patient's Name, explicit VR "PN"
    bad_vr[pos + 4 : pos + 6] = b"ZZ"  # an invalid VR
    (root / "bad_vr.dcm").write_bytes(bytes(bad_vr))
    (root / "scan.jpg").write_bytes(data)  # a valid instance under a wrong extension
    long_sh = dcmread(BytesIO(_ct_copy(3)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on writing it too
        long_sh.StationName = "STATION" * 6  # SH allows 16 characters (PS3.5 6.2): invalid but readable
        long_sh.FrameOfReferenceUID = "1.2.SECRET"  # UI allows digits and dots: pydicom quotes the value
        long_sh.save_as(root / "invalid_value.dcm")
    (root / ".hidden.dcm").write_bytes(_ct_copy(4))
    (root / "link.dcm").symlink_to(root / "scan.jpg")
    short = dcmread(CT)
    short.Rows = int(short.Rows) + 10  # header promises more pixels than Pixel Data holds
    short.save_as(root / "pixel_length.dcm")
    video = dcmread(testdata.pydicom_test_dir() / "693_J2KI.dcm")
    video.file_meta.TransferSyntaxUID = MPEG2MPML  # video: pydicom 3 has no decoder for it
    video.save_as(root / "mpeg2.dcm")
    shutil.copyfile(testdata.pydicom_test_dir() / "test-SR.dcm", root / "report_sr.dcm")
    (root / "media").mkdir()
    shutil.copyfile(testdata.pydicom_test_dir() / "dicomdirtests" / "DICOMDIR", root / "media" / "DICOMDIR")
    (root / "labels.csv").write_text("StudyInstanceUID,label\n")


# file name -> (expected status, fragment of the reason)
BAD_CASES = [
    pytest.param("truncated.dcm", "quarantined", "truncated", id="truncated"),  # file ends inside Pixel Data
    pytest.param("truncated_header.dcm", "quarantined", "truncated", id="truncated-header"),  # ends in an element
    pytest.param("zero.dcm", "quarantined", "zero bytes", id="zero-bytes"),
    pytest.param("random.dcm", "quarantined", "not DICOM", id="random-bytes"),
    pytest.param("nopreamble.dcm", "indexed", "no preamble", id="no-preamble"),  # valid data set: usable, noted
    pytest.param("huge_private.dcm", "indexed", "", id="huge-private"),  # large, within ingest.max_file_bytes
    pytest.param("bad_vr.dcm", "quarantined", "Value Representation", id="bad-vr"),  # an unknown VR in the header
    pytest.param("scan.jpg", "indexed", "", id="wrong-extension"),  # the content matters, not the extension
    pytest.param("invalid_value.dcm", "indexed", "value warning", id="invalid-value"),  # usable: indexed, noted
    pytest.param(".hidden.dcm", "indexed", "", id="hidden-file"),  # hidden files are not skipped
    pytest.param("link.dcm", "excluded", "symbolic link", id="symlink"),  # not followed by default
    pytest.param("pixel_length.dcm", "quarantined", "does not match", id="pixel-length"),  # checked, not decoded
    pytest.param("mpeg2.dcm", "quarantined", "unsupported transfer syntax", id="unsupported-ts"),
    pytest.param("report_sr.dcm", "indexed", "", id="structured-report"),  # no pixels, still an instance
    pytest.param("media/DICOMDIR", "excluded", "DICOMDIR media directory", id="dicomdir"),
    pytest.param("labels.csv", "excluded", "sidecar", id="sidecar"),
]


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, dict[str, Any]]]:
    """The bad-input corpus ingested once: (source, out_dir, rows by path)."""
    base = tmp_path_factory.mktemp("bad")
    _write_bad_corpus(base / "src")
    result = ingest(base / "src", out_dir=base / "out", policy=POLICY)
    return base / "src", base / "out", {r["path"]: r for r in result.table.to_pylist()}


def _without_preamble(data: bytes) -> bytes:
    """Only the data set: no preamble, DICM prefix or file meta, as some old archives hold (PS3.10 7.1)."""
    ds = dcmread(BytesIO(data))
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)  # the data set alone, explicit VR little endian like its transfer syntax
    raw = buf.getvalue()
    assert raw[128:132] != b"DICM"
    return raw


@pytest.mark.parametrize(("name", "status", "fragment"), BAD_CASES)
def test_bad_input_ends_indexed_or_quarantined_with_its_reason(
    bad: tuple[Path, Path, dict[str, dict[str, Any]]], name: str, status: str, fragment: str
) -> None:
    src, out, rows = bad
    row = rows[name]
    assert row["status"] == status, (name, row["reason"])
    assert fragment.lower() in (row["reason"] or "").lower(), (name, row["reason"])
    if status == "quarantined":  # a byte-identical copy under quarantine/<path>
        assert (out / "quarantine" / name).read_bytes() == (src / name).read_bytes()
    else:
        assert not (out / "quarantine" / name).exists()
    if status == "indexed":
        assert row["sha256"] == hashlib.sha256((src / name).read_bytes()).hexdigest()
        assert row["SOPInstanceUID"]


def test_bad_corpus_every_file_exactly_once(bad: tuple[Path, Path, dict[str, dict[str, Any]]]) -> None:
    src, out, rows = bad
    on_disk = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file() or p.is_symlink()}
    assert set(rows) == on_disk == {p.values[0] for p in BAD_CASES}
    table = read_table(out / "index.parquet")
    assert table.schema.equals(MANIFEST_SCHEMA)
    assert sorted(table.column("path").to_pylist()) == sorted(on_disk)


def test_pixel_flags(bad: tuple[Path, Path, dict[str, dict[str, Any]]]) -> None:
    _, _, rows = bad
    assert rows["report_sr.dcm"]["has_pixels"] is False  # SR: no Pixel Data element
    assert rows["scan.jpg"]["has_pixels"] is True
    assert (rows["scan.jpg"]["Rows"], rows["scan.jpg"]["BitsAllocated"]) == (128, 16)
    assert rows["media/DICOMDIR"]["is_dicomdir"] is True
    assert rows["scan.jpg"]["is_dicomdir"] is False
    assert rows["scan.jpg"]["reason"] == ""  # a clean instance has no note
    note = rows["invalid_value.dcm"]["reason"]
    assert "2 value warning(s)" in note
    assert "STATION" not in note and "SECRET" not in note  # values (possibly PHI) are never quoted


def test_logs_hold_no_header_values(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """pydicom's own log lines quote values (possibly PHI): none reach the log during ingest."""
    src = tmp_path / "src"
    src.mkdir()
    ds = dcmread(CT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.FrameOfReferenceUID = "1.2.SECRET"
        ds.save_as(src / "a.dcm")
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # writing the file above logged the value already; only ingest's records count
    before = logging.getLogger("pydicom").level
    result = ingest(src, out_dir=tmp_path / "out", policy=POLICY)
    assert result.counts["indexed"] == 1
    assert "value warning" in result.table.column("reason")[0].as_py()  # the warning was seen, and counted
    assert "ingest: done, 1" in caplog.text  # progress was logged
    assert "SECRET" not in caplog.text
    assert logging.getLogger("pydicom").level == before  # the level is restored after the scan


def test_huge_private_element_is_not_loaded(tmp_path: Path) -> None:
    """The header check leaves a large value on disk: peak Python memory stays below the value's size."""
    src = tmp_path / "src"
    src.mkdir()
    ds = dcmread(CT)
    ds.add_new(0x00191010, "LO", "ACME")
    ds.add_new(0x00191001, "OB", b"\0" * 8_000_000)
    ds.save_as(src / "huge.dcm")
    del ds
    tracemalloc.start()
    try:
        result = ingest(src, out_dir=tmp_path / "out", policy=POLICY)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.counts["indexed"] == 1
    assert peak < 4_000_000, peak  # the 8 MB element was never read into memory


def test_symlinks_followed_when_asked(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    shutil.copyfile(CT, src / "sub" / "a.dcm")
    (src / "link.dcm").symlink_to(src / "sub" / "a.dcm")
    (src / "linkdir").symlink_to(src / "sub")
    (src / "broken.dcm").symlink_to(src / "missing.dcm")
    result = ingest(src, out_dir=tmp_path / "out", policy=IngestSection(follow_symlinks=True))
    rows = {r["path"]: r for r in result.table.to_pylist()}
    assert set(rows) == {"sub/a.dcm", "link.dcm", "linkdir", "broken.dcm"}
    assert rows["link.dcm"]["status"] == "indexed"
    assert (rows["linkdir"]["status"], rows["broken.dcm"]["status"]) == ("excluded", "excluded")
    assert "folder" in rows["linkdir"]["reason"] and "broken" in rows["broken.dcm"]["reason"]
    # The followed link and its target are one instance (one SOPInstanceUID): the first in path order is indexed.
    assert rows["sub/a.dcm"]["status"] == "excluded" and "duplicate SOPInstanceUID" in rows["sub/a.dcm"]["reason"]
    assert result.counts == {"seen": 4, "indexed": 1, "quarantined": 0, "excluded": 3}


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


def test_file_url_source_reads_in_place(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(CT, src / "a.dcm")
    result = ingest(f"file://{src}", out_dir=tmp_path / "out", policy=POLICY)
    assert result.counts == {"seen": 1, "indexed": 1, "quarantined": 0, "excluded": 0}
    assert result.root == src  # local: nothing fetched
    assert not (tmp_path / "out" / "fetched").exists()


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    from guards.errors import InputError

    with pytest.raises(InputError, match="not an existing folder"):
        ingest(tmp_path / "nope", out_dir=tmp_path / "out", policy=POLICY)


def test_rerun_gives_the_same_index(tmp_path: Path) -> None:
    _write_bad_corpus(tmp_path / "src")
    a = ingest(tmp_path / "src", out_dir=tmp_path / "out", policy=POLICY).table
    b = ingest(tmp_path / "src", out_dir=tmp_path / "out", policy=POLICY).table
    assert a.equals(b)
    assert a.num_rows == len(BAD_CASES)


@pytest.mark.timeout(60)  # opening the FIFO would block forever
def test_a_fifo_is_excluded_unread_and_the_run_goes_on(tmp_path: Path) -> None:
    import os

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(testdata.pydicom_test_files()[0], src / "a.dcm")
    os.mkfifo(src / "pipe.dcm")
    result = ingest(src, out_dir=tmp_path / "out", policy=POLICY)
    rows = {r["path"]: r for r in result.table.to_pylist()}
    assert set(rows) == {"a.dcm", "pipe.dcm"}
    assert rows["pipe.dcm"]["status"] == "excluded" and "not a regular file (FIFO)" in rows["pipe.dcm"]["reason"]
    assert rows["a.dcm"]["status"] in ("indexed", "quarantined")


# Issue 16: per-file failures that stopped the whole ingest, and files that vanished without a row.
def _deep_sequence_copy(levels: int) -> bytes:
    """CT_small with ContentSequence items nested ``levels`` deep (undefined lengths, PS3.5 7.5.2) before Pixel Data."""
    with CT.open("rb") as f:
        dcmread(f, stop_before_pixels=True)
        pixels_at = f.tell()
    data = _ct_copy(50)
    opening = (struct.pack("<HH", 0x0040, 0xA730) + b"SQ\0\0" + b"\xff" * 4
               + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)) * levels
    closing = (struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)) * levels
    return data[:pixels_at] + opening + closing + data[pixels_at:]


def test_per_file_failures_are_quarantined_and_the_ingest_goes_on(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(CT, src / "good.dcm")
    deflated = (testdata.pydicom_test_dir() / "image_dfl.dcm").read_bytes()
    start = 132 + 12 + int(dcmread(BytesIO(deflated), stop_before_pixels=True).file_meta.FileMetaInformationGroupLength)
    corrupt = bytearray(deflated)  # the data set after the file meta is one deflate stream (PS3.5 A.5)
    corrupt[start + 200 : start + 260] = bytes(b ^ 0xFF for b in corrupt[start + 200 : start + 260])
    (src / "deflated_corrupt.dcm").write_bytes(bytes(corrupt))
    (src / "deep.dcm").write_bytes(_deep_sequence_copy(320))  # pydicom's reader recurses per level
    shutil.copyfile(CT, os.path.join(os.fsencode(src), b"name_\xff\xfe.dcm"))  # not valid UTF-8
    result = ingest(src, out_dir=tmp_path / "out", policy=POLICY)
    rows = {r["path"]: r for r in result.table.to_pylist()}
    assert rows["good.dcm"]["status"] == "indexed"
    assert rows["deflated_corrupt.dcm"]["status"] == "quarantined"
    assert "corrupt deflated data set" in rows["deflated_corrupt.dcm"]["reason"]
    assert rows["deep.dcm"]["status"] == "quarantined" and "nested too deep" in rows["deep.dcm"]["reason"]
    name = r"name_\xff\xfe.dcm"  # the undecodable bytes written \xNN in the index
    assert rows[name]["status"] == "quarantined" and "not valid UTF-8" in rows[name]["reason"]
    assert (tmp_path / "out" / "quarantine" / name).read_bytes() == CT.read_bytes()
    assert result.counts == {"seen": 4, "indexed": 1, "quarantined": 3, "excluded": 0}


def test_trailing_pixel_padding_is_indexed_with_a_note(tmp_path: Path) -> None:
    """MR_small_padded: Pixel Data 128 bytes longer than its pixels; pydicom decodes it (the excess is ignored)."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(testdata.pydicom_test_dir() / "MR_small_padded.dcm", src / "padded.dcm")
    (row,) = ingest(src, out_dir=tmp_path / "out", policy=POLICY).table.to_pylist()
    assert row["status"] == "indexed", row["reason"]
    assert "128 bytes of trailing padding" in row["reason"]


def test_one_sop_instance_uid_in_two_studies_is_indexed_once(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "study_a").mkdir(parents=True)
    (src / "study_b").mkdir()
    shutil.copyfile(CT, src / "study_a" / "1.dcm")
    other = dcmread(CT)
    other.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.16"
    other.save_as(src / "study_b" / "1.dcm")
    result = ingest(src, out_dir=tmp_path / "out", policy=POLICY)
    rows = {r["path"]: r for r in result.table.to_pylist()}
    assert rows["study_a/1.dcm"]["status"] == "indexed"
    assert rows["study_b/1.dcm"]["status"] == "excluded"
    assert "duplicate SOPInstanceUID" in rows["study_b/1.dcm"]["reason"]
    assert "another study" in rows["study_b/1.dcm"]["reason"]


def test_an_unreadable_folder_is_a_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fsspec's walk drops a folder it cannot list; the folder is a quarantined row, and the run goes on.

    Listing is refused by a patched os.scandir (chmod 0 does not stop root, and the tests may run as root)."""
    src = tmp_path / "src"
    (src / "locked").mkdir(parents=True)
    shutil.copyfile(CT, src / "a.dcm")
    (src / "locked" / "b.dcm").write_bytes(_ct_copy(5))
    locked = str(src / "locked")
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        if os.fspath(path).rstrip("/") == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = ingest(src, out_dir=tmp_path / "out", policy=POLICY)
    rows = {r["path"]: r for r in result.table.to_pylist()}
    assert set(rows) == {"a.dcm", "locked/"}
    assert rows["locked/"]["status"] == "quarantined"
    assert "folder cannot be read" in rows["locked/"]["reason"] and "PermissionError" in rows["locked/"]["reason"]
    assert result.counts == {"seen": 2, "indexed": 1, "quarantined": 1, "excluded": 0}


def test_a_file_over_the_size_limit_is_not_copied_into_quarantine(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.dcm").write_bytes(CT.read_bytes())
    out = tmp_path / "out"
    (row,) = ingest(src, out_dir=out, policy=IngestSection(max_file_bytes=1000)).table.to_pylist()
    assert row["status"] == "quarantined" and "not copied into quarantine" in row["reason"]
    assert not (out / "quarantine" / "a.dcm").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="chmod 0 does not stop root from listing a folder; the patched "
                    "listing in test_an_unreadable_folder_is_a_row covers it there")
def test_a_folder_without_permissions_is_a_row(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "locked").mkdir(parents=True)
    shutil.copyfile(CT, src / "a.dcm")
    (src / "locked" / "b.dcm").write_bytes(_ct_copy(6))
    os.chmod(src / "locked", 0)
    try:
        result = ingest(src, out_dir=tmp_path / "out", policy=POLICY)
    finally:
        os.chmod(src / "locked", 0o755)
    rows = {r["path"]: r for r in result.table.to_pylist()}
    assert rows["locked/"]["status"] == "quarantined" and "PermissionError" in rows["locked/"]["reason"]
