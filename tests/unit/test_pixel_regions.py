"""guards.deid.pixel_regions: the image area of an ultrasound frame (PS3.3 C.8.5.5 US Region Calibration)."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset

from guards.deid.pixel_regions import fallback_rect, image_regions, is_ultrasound
from guards.testdata import pydicom_data_dir


def _region(x0: int, y0: int, x1: int, y1: int, spatial_format: int | None) -> Dataset:
    item = Dataset()
    if spatial_format is not None:
        item.RegionSpatialFormat = spatial_format
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1, y1
    return item


def test_aloka_regions_are_its_two_2d_regions_with_inclusive_ends() -> None:
    """gdcm-US-ALOKA-16.dcm declares two 2D regions (format 1) and a colour bar (format 0, not the image)."""
    root = pydicom_data_dir()
    if root is None or not (root / "gdcm-US-ALOKA-16.dcm").exists():
        pytest.skip("pydicom-data is not installed")
    ds = pydicom.dcmread(root / "gdcm-US-ALOKA-16.dcm", stop_before_pixels=True)
    regions = image_regions(ds, int(ds.Rows), int(ds.Columns))
    assert regions.source == "SequenceOfUltrasoundRegions"
    assert regions.rects == ((32, 24, 336, 416), (336, 24, 640, 416))
    assert regions.holds(336, 30, 400, 40)  # straddles the two regions: inside their union
    assert not regions.holds(81, 1, 159, 11)  # WESTWAY, in the top band


def test_formats_that_do_not_show_the_patient_and_bad_items_are_left_out() -> None:
    ds = Dataset()
    ds.Modality = "US"
    ds.SequenceOfUltrasoundRegions = [
        _region(0, 0, 99, 9, 5),  # graphics
        _region(0, 0, 99, 9, 0),  # none (a colour bar)
        _region(0, 0, 99, 9, None),  # no format: not trusted as image
        _region(50, 50, 10, 10, 1),  # empty box
        _region(10, 20, 500, 500, 3),  # spectral Doppler, clipped to the frame
    ]
    regions = image_regions(ds, 100, 200)
    assert regions.rects == ((10, 20, 200, 100),)


def test_ultrasound_without_regions_gets_the_fallback_centre_and_others_none() -> None:
    ds = Dataset()
    ds.Modality = "US"
    regions = image_regions(ds, 480, 640)
    assert regions.source == "fallback centre"
    assert regions.rects == (fallback_rect(480, 640),) == ((64, 120, 576, 420),)
    assert not regions.holds(20, 26, 168, 38)  # US1's institution line, in the top band
    assert regions.holds(250, 362, 358, 374)  # US1's LYMPH NODE label, in the image
    assert not regions.holds(40, 254, 78, 259)  # 14 of 38 columns inside
    assert regions.holds(60, 254, 78, 259)  # 14 of 18 columns inside
    ct = Dataset()
    ct.Modality = "CT"
    assert not is_ultrasound(ct)
    assert image_regions(ct, 480, 640).rects == ()
    assert not image_regions(ct, 480, 640).holds(0, 0, 10, 10)
    sop_only = Dataset()
    sop_only.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    assert is_ultrasound(sop_only)
