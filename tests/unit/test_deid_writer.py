"""encode_part10 writes exactly what pydicom's save_as(enforce_file_format=True) writes, only faster."""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread

from guards.deid import deidentify_dataset
from guards.deid.writer import encode_part10
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
