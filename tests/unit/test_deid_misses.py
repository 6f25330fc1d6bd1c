"""De-identification misses of issue 16: the File Preamble, DT ranges, FrameLabel in functional groups, and a
truncated copy of an image published next to the whole one. Real third-party files (pydicom's and
pydicom-data's test files, read from disk by :mod:`guards.testdata`) where they exist."""

from __future__ import annotations

import shutil
import warnings
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, EnhancedCTImageStorage, ExplicitVRLittleEndian

from guards.deid import deidentify_dataset, deidentify_tree
from guards.deid.dates import shift_dt
from guards.deid.pseudonyms import date_offset_days
from guards.deid.writer import encode_part10
from guards.ingest import ingest
from guards.keys import PseudonymKey
from guards.policy import DeidSection, IngestSection, ReleasePolicy
from guards.testdata import pydicom_data_dir, pydicom_test_dir

POLICY = ReleasePolicy(deid=DeidSection(clean_pixel_data=False))
CT = pydicom_test_dir() / "CT_small.dcm"
PID = "PID-448120"


def _read(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(BytesIO(data))


# --- 1. File Preamble (PS3.10 7.1) ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # explicit VR little endian: encode_part10's own writer
        "MR_small_bigendian.dcm",  # big endian: falls back to pydicom's save_as
    ],
)
def test_preamble_is_written_as_128_zero_bytes(name: str, key: PseudonymKey) -> None:
    source = (pydicom_test_dir() / name).read_bytes()
    assert source[:4] == b"II*\x00"  # pydicom's file: a TIFF header in its preamble (dual-personality file)
    phi = b"DOE^JOHN PID-448120 19610317".ljust(128, b"\x00")
    ds = _read(phi + source[128:])
    assert ds.preamble == phi
    out = encode_part10(deidentify_dataset(ds, policy=POLICY, key=key))
    assert out[:128] == b"\x00" * 128
    assert out[128:132] == b"DICM"
    assert b"DOE^JOHN" not in out and b"19610317" not in out
    back = _read(out)
    assert back.preamble == b"\x00" * 128 and back.PatientIdentityRemoved == "YES"


# --- 2. DT values and ranges (PS3.5 6.2) ---------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "shifted"),
    [
        ("20200101-20200102", "20191222-20191223"),  # a range: both ends move
        ("20200101120000+0100-20200102", "20191222120000+0100-20191223"),  # each end keeps offset and precision
        ("20200101120000-0500-20200102120000-0500", "20191222120000-0500-20191223120000-0500"),  # offsets, both ends
        ("20200101120000-0500", "20191222120000-0500"),  # one value with a negative offset, not a range
        ("20200101120000.123456+1400", "20191222120000.123456+1400"),  # fraction and the largest offset
        ("2020-2021", "2019-2020"),  # -2021 is no offset (ZZ at most 14): a range of years
        ("202003-", "202002-"),  # open end
        ("-20200315", "-20200305"),  # open start
        ("20200101\\20200102-20200103", "20191222\\20191223-20191224"),  # a multi-value holding a range
        ("-", ""),  # no end at all: not a value
        ("20200101 120000", ""),  # does not parse: removed, never kept
    ],
)
def test_dt_ranges_shift_both_ends(value: str, shifted: str) -> None:
    assert shift_dt(value, -10) == shifted


def test_dt_range_in_a_dataset_is_shifted_by_the_patients_offset(key: PseudonymKey) -> None:
    ds = _enhanced_ct_dataset()
    ds.AcquisitionDateTime = "20200101120000+0100-20200102"
    ds.FrameReferenceDateTime = "20200101120000-0500"
    out = _read(encode_part10(deidentify_dataset(ds, policy=POLICY, key=key)))
    low, high = POLICY.deid.date_shift_days
    days = date_offset_days(key, PID, low=low, high=high)
    assert out.AcquisitionDateTime == shift_dt("20200101120000+0100-20200102", days)
    start, end = str(out.AcquisitionDateTime).split("-")
    assert start.endswith("120000+0100") and len(end) == 8 and not end.startswith("20200102")
    assert out.FrameReferenceDateTime == shift_dt("20200101120000-0500", days)
    assert str(out.FrameReferenceDateTime).endswith("120000-0500")


# --- 3. FrameLabel (0020,9453) in Per-Frame Functional Groups > Frame Content ------------------------------

def _enhanced_ct_dataset() -> Dataset:
    """An Enhanced CT header with two frames' functional groups (PS3.3 C.7.6.16), built in the test."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3.4.5.6.7.3")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4.5.6.7.1", "1.2.3.4.5.6.7.2"
    ds.SOPInstanceUID = "1.2.3.4.5.6.7.3"
    ds.PatientID = PID
    ds.PatientName = "Doe^John"
    frames = []
    for n in (1, 2):
        content = Dataset()
        content.FrameAcquisitionNumber = n
        content.FrameLabel = f"MRN {PID} slice {n + 2}"
        group = Dataset()
        group.FrameContentSequence = Sequence([content])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.NumberOfFrames = 2
    return ds


def _labelled_file(real: bool) -> bytes:
    ds: Dataset
    if real:
        path = (pydicom_data_dir() or Path("/nonexistent")) / "eCT_Supplemental.dcm"
        if not path.is_file():
            pytest.skip("pydicom-data's eCT_Supplemental.dcm is not installed")
        ds = dcmread(path)  # pydicom-data's Enhanced CT: 2 frames, Frame Content in each functional group
        ds.PatientID = PID
        ds.PerFrameFunctionalGroupsSequence[0].FrameContentSequence[0].FrameLabel = f"MRN {PID} slice 3"
    else:
        ds = _enhanced_ct_dataset()
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("real", [True, False], ids=["pydicom-data-eCT_Supplemental", "built"])
def test_frame_label_in_functional_groups_is_scrubbed(real: bool, key: PseudonymKey) -> None:
    ds = _read(_labelled_file(real))
    out = encode_part10(deidentify_dataset(ds, policy=POLICY, key=key))
    back = _read(out)
    labels = [str(item.FrameContentSequence[0].get("FrameLabel", ""))
              for item in back.PerFrameFunctionalGroupsSequence]
    assert labels[0] == "MRN *** slice 3"
    assert not any("448120" in label for label in labels)
    assert b"448120" not in out


# --- 4. A copy of an image cut short (PS3.10 7.1, PS3.3 C.7.6.3) -------------------------------------------

@pytest.mark.parametrize(
    "cut",
    [
        700,  # inside the header of (0008,0080) Institution Name: pydicom stops without a word
        694,  # at the boundary before (0008,0080): a clean prefix, SOP Class CT Image Storage and no Pixel Data
        3000,  # inside an element header among the private elements
    ],
)
def test_truncated_copy_is_quarantined_never_published(cut: int, tmp_path: Path, key: PseudonymKey) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(CT, src / "CT_small.dcm")
    (src / "cut.dcm").write_bytes(CT.read_bytes()[:cut])
    index = {r["path"]: r for r in ingest(src, out_dir=tmp_path / "ingest", policy=IngestSection()).table.to_pylist()}
    assert index["CT_small.dcm"]["status"] == "indexed"
    assert index["cut.dcm"]["status"] == "quarantined"
    assert "truncated" in index["cut.dcm"]["reason"], index["cut.dcm"]["reason"]

    result = deidentify_tree(src, tmp_path / "deid", policy=POLICY, key=key)
    rows = {r["source_path"]: r for r in result.table.to_pylist()}
    assert result.counts["published"] == 1
    assert rows["CT_small.dcm"]["status"] == "published"
    assert rows["cut.dcm"]["status"] == "quarantined" and "truncated" in rows["cut.dcm"]["reason"]
    published = list((tmp_path / "deid").rglob("*.dcm"))  # the quarantine copies are in deid.private/
    assert len(published) == 1
    assert _read(published[0].read_bytes()).SOPInstanceUID == rows["CT_small.dcm"]["SOPInstanceUID"]


def test_cut_in_the_header_is_named_in_the_reason(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "cut.dcm").write_bytes(CT.read_bytes()[:700])
    (row,) = ingest(src, out_dir=tmp_path / "ingest", policy=IngestSection()).table.to_pylist()
    assert row["status"] == "quarantined"
    assert row["reason"].startswith("truncated: file ends inside the header of the element after (0008,0070)")
    assert (tmp_path / "ingest" / "quarantine" / "cut.dcm").read_bytes() == CT.read_bytes()[:700]


def test_header_only_image_prefix_says_pixel_data_is_missing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "cut.dcm").write_bytes(CT.read_bytes()[:694])
    (row,) = ingest(src, out_dir=tmp_path / "ingest", policy=IngestSection()).table.to_pylist()
    assert row["status"] == "quarantined"
    assert "SOP Class CT Image Storage" in row["reason"] and "Pixel Data (7FE0,0010)" in row["reason"]


def test_one_published_file_per_sop_instance_uid(tmp_path: Path, key: PseudonymKey) -> None:
    """A whole copy of an instance that lost its study and series UIDs would be written under another path: it is
    still the same SOPInstanceUID (PS3.3 C.12.1.1.1), excluded as a duplicate."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(CT, src / "a.dcm")
    ds = dcmread(CT)
    del ds.StudyInstanceUID, ds.SeriesInstanceUID
    ds.save_as(src / "b.dcm")
    result = deidentify_tree(src, tmp_path / "deid", policy=POLICY, key=key)
    rows = {r["source_path"]: r for r in result.table.to_pylist()}
    assert rows["a.dcm"]["status"] == "published"
    assert rows["b.dcm"]["status"] == "excluded" and "duplicate SOPInstanceUID" in rows["b.dcm"]["reason"]
    assert result.counts["published"] == 1
