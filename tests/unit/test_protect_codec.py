"""guards.protect.codec: DICOM pixels <-> float arrays, budget exact after rounding, round trips on disk."""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from guards.protect.codec import UnsupportedPixelsError, apply_delta, decode, encode, to_unit
from guards.testdata import pydicom_test_files

EPS = 8 / 255


def _by_photometric() -> dict[str, list[Path]]:
    """pydicom's test files with pixel data, grouped by PhotometricInterpretation, smallest first."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in pydicom_test_files():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM: not an image to round-trip
            continue
        if "PhotometricInterpretation" in ds and "Rows" in ds and path.stat().st_size < 3_000_000:
            groups[str(ds.PhotometricInterpretation)].append(path)
    return {k: sorted(v, key=lambda p: p.stat().st_size) for k, v in groups.items()}


GROUPS = _by_photometric()


def test_test_files_cover_the_usual_photometric_interpretations() -> None:
    assert {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR"} <= set(GROUPS)


def _round_trip(path: Path, tmp_path: Path) -> tuple[np.ndarray, np.ndarray, int, Dataset]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
    block = decode(ds)
    rng = np.random.default_rng(7)
    delta = rng.uniform(-2 * EPS, 2 * EPS, size=block.stored.shape[:3])  # twice the budget: must be clipped
    stored = apply_delta(block, delta, epsilon=EPS)
    encode(ds, block, stored)
    out = tmp_path / "out.dcm"
    ds.save_as(out, enforce_file_format=True)
    back = pydicom.dcmread(out)
    return block.stored, np.asarray(back.pixel_array).reshape(stored.shape), block.budget(EPS), back


@pytest.mark.parametrize("photometric", sorted(GROUPS))
def test_round_trip_every_photometric_interpretation(photometric: str, tmp_path: Path) -> None:
    # One decodable file per photometric interpretation is written back and read from disk; a kind that cannot
    # be protected (PALETTE COLOR) must say why rather than pass through.
    if photometric == "PALETTE COLOR":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(GROUPS[photometric][0])
        with pytest.raises(UnsupportedPixelsError, match="PALETTE COLOR"):
            decode(ds)
        return
    reasons = []
    for path in GROUPS[photometric][:6]:
        try:
            before, after, budget, back = _round_trip(path, tmp_path)
        except UnsupportedPixelsError as e:
            reasons.append(f"{path.name}: {e}")
            continue
        assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert after.dtype.kind == before.dtype.kind and after.dtype.itemsize == before.dtype.itemsize
        diff = np.abs(after.astype(np.int64) - before.astype(np.int64))
        assert diff.max() <= budget  # the budget holds on the values read back from disk, exactly
        assert budget == 0 or diff.max() >= 1  # noise was written
        expected = "RGB" if photometric.startswith("YBR") else photometric
        assert back.PhotometricInterpretation == expected
        return
    pytest.skip(f"no decodable {photometric} file: {reasons}")  # pragma: no cover - decoders are installed


def _synthetic(bits: int, signed: bool, *, photometric: str = "MONOCHROME2", frames: int = 1) -> Dataset:
    rng = np.random.default_rng(bits + 100 * signed)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    dtype = {(8, False): np.uint8, (8, True): np.int8}.get((bits if bits <= 8 else 16, signed))
    dtype = dtype or (np.int16 if signed else np.uint16)
    arr = rng.integers(lo, hi + 1, size=(frames, 24, 20)).astype(dtype)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 24, 20, 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = arr.tobytes()
    return ds


@pytest.mark.parametrize(
    ("bits", "signed"),
    [
        (8, False),  # 8-bit unsigned (US, SC)
        (8, True),  # 8-bit signed, rare but legal
        (10, False),  # 10 bits stored in 16
        (12, False),  # CT / MR 12-bit
        (12, True),  # signed 12-bit
        (16, False),  # full 16-bit unsigned
        (16, True),  # 16-bit signed (CT with negative HU stored)
    ],
)
def test_budget_is_exact_after_rounding(bits: int, signed: bool) -> None:
    ds = _synthetic(bits, signed, frames=2)
    block = decode(ds)
    budget = block.budget(EPS)
    assert budget == int(np.floor(EPS * (float(block.stored.max()) - float(block.stored.min())) + 1e-9))
    delta = np.full(block.stored.shape[:3], 1.0)  # far over budget, clipped to +budget
    out = apply_delta(block, delta, epsilon=EPS)
    assert out.dtype == block.stored.dtype
    diff = out.astype(np.int64) - block.stored.astype(np.int64)
    assert diff.min() >= 0 and diff.max() == budget  # reached exactly where the value range allows
    lo, hi = block.value_limits()
    assert out.min() >= lo and out.max() <= hi


def test_window_and_rescale_define_the_range() -> None:
    ds = _synthetic(12, False)
    ds.RescaleSlope, ds.RescaleIntercept = 2.0, -1024.0
    ds.WindowCenter, ds.WindowWidth = 40.0, 400.0  # displayed units (HU)
    block = decode(ds)
    assert block.range == pytest.approx(200.0)  # 400 HU / slope 2 in stored units
    assert block.lo == pytest.approx((40 - 200 + 1024) / 2)
    assert block.budget(EPS) == 6  # floor(8/255 * 200)


def test_monochrome1_inverts_and_flips_the_delta() -> None:
    ds = _synthetic(8, False, photometric="MONOCHROME1")
    block = decode(ds)
    unit = to_unit(block)
    stored = block.stored[..., 0].astype(np.float64)
    assert np.corrcoef(unit.ravel(), stored.ravel())[0, 1] < -0.99  # bright on screen = low stored value
    out = apply_delta(block, np.full(unit.shape, EPS), epsilon=EPS)
    assert (out.astype(np.int64) <= block.stored.astype(np.int64)).all()  # +delta on screen lowers the value


def test_no_pixel_data_is_an_explicit_error() -> None:
    ds = _synthetic(8, False)
    del ds.PixelData
    with pytest.raises(UnsupportedPixelsError, match="no Pixel Data"):
        decode(ds)
