"""Float and Double Float Pixel Data are quarantined, never published unread (issue 16).

Neither pydicom's test files, pydicom-data nor deid-data hold a Float Pixel Data carrier, so the carrier is made
from a real file: pydicom's CT_small.dcm, its Hounsfield values as float32 in Float Pixel Data (7FE0,0008) (or
float64 in Double Float Pixel Data, 7FE0,0009), with a name and an MRN drawn into the pixels and Burned In
Annotation YES. Before this change the engine ran Clean Pixel Data only when Pixel Data (7FE0,0010) was present,
so this instance was published unchanged, its header claiming the Clean Pixel Data option, and protect skipped it
("no Pixel Data").
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pydicom import dcmread
from pydicom.dataset import Dataset

from guards.deid.engine import InstanceQuarantined, deidentify_dataset
from guards.deid.tree import deidentify_tree
from guards.keys import PseudonymKey
from guards.policy import ReleasePolicy
from guards.testdata import pydicom_test_dir

BURNED = "DOE^JANE 12345678"


def float_ct(*, double: bool = False) -> Dataset:
    """CT_small.dcm with its pixels as (double) float Hounsfield values and text burned in."""
    ds = dcmread(pydicom_test_dir() / "CT_small.dcm")
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    img = Image.fromarray(hu, mode="F")
    ImageDraw.Draw(img).text((4, 4), BURNED, fill=float(hu.max()))
    pixels = np.asarray(img, dtype=np.float64 if double else np.float32)
    del ds.PixelData
    for keyword in ("BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope", "RescaleIntercept"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.BitsAllocated = 64 if double else 32
    if double:
        ds.DoubleFloatPixelData = pixels.tobytes()
    else:
        ds.FloatPixelData = pixels.tobytes()
    ds.BurnedInAnnotation = "YES"
    return ds


def test_the_carrier_is_a_readable_float_image_with_text() -> None:
    arr = float_ct().pixel_array
    assert arr.dtype == np.float32 and arr.shape == (128, 128)
    assert float_ct(double=True).pixel_array.dtype == np.float64


@pytest.mark.parametrize(("double", "name"), [(False, "Float Pixel Data (7FE0,0008)"),
                                              (True, "Double Float Pixel Data (7FE0,0009)")])
def test_float_pixels_are_quarantined_by_clean_pixel_data(double: bool, name: str, key: PseudonymKey) -> None:
    policy = ReleasePolicy()
    assert policy.deid.clean_pixel_data
    expected = f"pixel data: {re.escape(name)}: Clean Pixel Data and the protect noise handle integer"
    with pytest.raises(InstanceQuarantined, match=expected):
        deidentify_dataset(float_ct(double=double), policy=policy, key=key)


def test_float_pixels_are_quarantined_for_protect_without_clean_pixel_data(key: PseudonymKey) -> None:
    policy = ReleasePolicy().with_overrides({"deid.clean_pixel_data": False})
    assert policy.protect.enabled
    with pytest.raises(InstanceQuarantined, match=r"Float Pixel Data \(7FE0,0008\)"):
        deidentify_dataset(float_ct(), policy=policy, key=key)


def test_float_pixels_pass_only_when_neither_pixel_step_is_asked_for(key: PseudonymKey) -> None:
    # No Clean Pixel Data claimed and no noise promised: the header-only de-identification applies as to any image.
    policy = ReleasePolicy().with_overrides({"deid.clean_pixel_data": False, "protect.enabled": False})
    out = deidentify_dataset(float_ct(), policy=policy, key=key)
    assert "FloatPixelData" in out


def test_a_float_image_in_a_tree_is_quarantined_not_published(tmp_path: Path, key: PseudonymKey) -> None:
    src = tmp_path / "src"
    src.mkdir()
    float_ct().save_as(src / "float_ct.dcm", enforce_file_format=True)
    result = deidentify_tree(src, tmp_path / "dst", policy=ReleasePolicy(), key=key)
    rows = result.table.to_pylist()
    assert [r["status"] for r in rows] == ["quarantined"]
    assert not list((tmp_path / "dst").rglob("*.dcm"))  # nothing published
