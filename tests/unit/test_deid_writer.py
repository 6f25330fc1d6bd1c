"""encode_part10 writes exactly what pydicom's save_as(enforce_file_format=True) writes, only faster."""

from __future__ import annotations

import copy
import warnings
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info

from guards.deid import deidentify_dataset
from guards.deid.writer import _encode_file_meta, encode_part10
from guards.keys import PseudonymKey
from guards.policy import DeidSection, ReleasePolicy
from guards.testdata import pydicom_test_dir

POLICY = ReleasePolicy(deid=DeidSection(clean_pixel_data=False))
# Explicit and implicit VR, encapsulated (JPEG, JPEG 2000, RLE), big endian and deflate (fallback), sequences,
# odd-sized values, overlays, multi-frame, an SR document.
FILES = (
    "CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm", "SC_rgb_rle_2frame.dcm",
    "image_dfl.dcm", "SC_rgb_small_odd.dcm", "examples_overlay.dcm", "rtplan.dcm", "reportsi.dcm", "liver_1frame.dcm",
    "JPEG-lossy.dcm",
)


@pytest.mark.parametrize("name", FILES)
def test_same_bytes_as_pydicom(name: str, key: PseudonymKey) -> None:
    path: Path = pydicom_test_dir() / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = deidentify_dataset(dcmread(path), policy=POLICY, key=key)
        ref = deidentify_dataset(dcmread(path), policy=POLICY, key=key)
    buf = BytesIO()
    ref.save_as(buf, enforce_file_format=True)
    data = encode_part10(ours)
    assert data == buf.getvalue()
    back = dcmread(BytesIO(data))
    assert back.SOPInstanceUID == ours.SOPInstanceUID
    assert back.PatientIdentityRemoved == "YES" and back.LongitudinalTemporalInformationModified == "MODIFIED"
    assert [i.CodeValue for i in back.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    source = dcmread(path)
    if "PixelData" in source:
        assert back.PixelData == source.PixelData  # pixel data byte-exact


def test_implicit_elements_in_an_explicit_file_are_reencoded(key: PseudonymKey) -> None:
    """SC_rgb_jpeg.dcm says explicit VR but holds implicit-VR elements; pydicom's own writer fails on it."""
    path = pydicom_test_dir() / "SC_rgb_jpeg.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = dcmread(path)
        with pytest.raises(TypeError):
            source.save_as(BytesIO(), enforce_file_format=True)
        ds = deidentify_dataset(dcmread(path), policy=POLICY, key=key)
        back = dcmread(BytesIO(encode_part10(ds)))
    assert back.PixelData == source.PixelData
    assert back.ImageType == source.ImageType and back.PatientIdentityRemoved == "YES"


def _pydicom_meta_bytes(meta: FileMetaDataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(fp, meta, enforce_standard=True)
    return fp.getvalue()


def test_file_meta_packed_as_pydicom_writes_it_for_every_test_file() -> None:
    """The packed File Meta Information equals pydicom's ``write_file_meta_info`` on every test file's meta."""
    compared = fallback = 0
    for path in sorted(pydicom_test_dir().glob("*.dcm")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                meta = dcmread(path, stop_before_pixels=True).file_meta
        except Exception:  # noqa: BLE001 - deliberately broken test files; not this test's subject
            continue
        if any(t not in meta or meta[t].is_empty for t in (0x00020002, 0x00020003, 0x00020010)):
            continue  # pydicom refuses these; encode_part10 then uses pydicom's writer and its error
        packed = _encode_file_meta(copy.deepcopy(meta))
        if packed is None:
            fallback += 1
            continue
        assert packed == _pydicom_meta_bytes(copy.deepcopy(meta)), path.name
        compared += 1
    assert compared >= 70 and fallback == 0, (compared, fallback)


def test_file_meta_with_odd_and_optional_elements() -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"  # odd length: padded with NUL
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    meta.SourceApplicationEntityTitle = "ODD"  # AE padded with a space
    meta.PrivateInformationCreatorUID = "1.2.3"
    meta.PrivateInformation = b"\x01\x02\x03"
    packed = _encode_file_meta(copy.deepcopy(meta))
    assert packed is not None
    assert packed == _pydicom_meta_bytes(copy.deepcopy(meta))
    meta.ImplementationVersionName = "A\\B"  # not a single value: pydicom's own writer handles it
    assert _encode_file_meta(copy.deepcopy(meta)) is None
