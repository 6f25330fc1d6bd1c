"""guards.protect.codec: DICOM pixels <-> float arrays, budget exact after rounding, round trips on disk."""

from __future__ import annotations

import dataclasses
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from guards.protect.codec import (
    PixelBlock,
    UnsupportedPixelsError,
    apply_delta,
    decode,
    encode,
    protect_pixels,
    psnr_db,
    stored_change,
    to_unit,
)
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


# A CT-like slice: Rescale Slope 1, Intercept -1024 (HU = stored - 1024), soft-tissue window C40 W400, so the
# window is HU [-160, 240], stored [864, 1264]; air (stored 0..200) lies below it and bone (2400..2524) above.
CENTRE, WIDTH = 40.0, 400.0


def _ct(photometric: str = "MONOCHROME2", *, slope: float = 1.0, intercept: float = -1024.0) -> Dataset:
    rng = np.random.default_rng(11)
    ds = _synthetic(12, False, photometric=photometric)
    rows, cols = int(ds.Rows), int(ds.Columns)
    lo_s, hi_s = sorted(((CENTRE - WIDTH / 2 - intercept) / slope, (CENTRE + WIDTH / 2 - intercept) / slope))
    n = rows * cols
    values = np.concatenate([
        rng.integers(0, 201, n // 4),  # below or above the window (air for slope 1)
        rng.integers(2400, 2525, n // 4),  # the other side (bone for slope 1)
        rng.integers(int(lo_s) - 15, int(hi_s) + 16, n - 2 * (n // 4)),  # in the window and just around its ends
    ])
    rng.shuffle(values)
    ds.PixelData = values.reshape(1, rows, cols).astype(np.uint16).tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.WindowCenter, ds.WindowWidth = CENTRE, WIDTH
    return ds


def _expected(block: PixelBlock, delta: np.ndarray, *, slope: float, intercept: float) -> np.ndarray:
    """The change in stored units that the display shows whole, worked out in modality units (HU)."""
    # A brighter display is a higher HU (PS3.3 C.11.2), so a higher stored value when the slope is positive;
    # MONOCHROME1 shows the lowest value brightest (C.7.6.3.1.2). |slope| is 1 here: 1 HU per stored unit.
    sign = (-1.0 if block.photometric == "MONOCHROME1" else 1.0) * np.sign(slope)
    d = np.clip(np.rint(sign * delta * WIDTH), -12, 12)
    stored = block.stored[..., 0].astype(np.float64)
    hu, hu_after = slope * stored + intercept, slope * (stored + d) + intercept
    bottom, top = CENTRE - WIDTH / 2, CENTRE + WIDTH / 2
    inside = (hu > bottom) & (hu < top) & (hu_after > bottom) & (hu_after < top)
    return np.where(inside, d, 0.0)


@pytest.mark.parametrize(
    ("photometric", "slope", "intercept"),
    [
        ("MONOCHROME2", 1.0, -1024.0),  # CT as usually stored
        ("MONOCHROME1", 1.0, -1024.0),  # inverted display: a brighter pixel is a lower stored value
        ("MONOCHROME2", -1.0, 1024.0),  # negative slope: a higher stored value is a lower HU, shown darker
    ],
)
def test_change_is_written_only_where_the_window_shows_all_of_it(photometric: str, slope: float,
                                                                 intercept: float) -> None:
    block = decode(_ct(photometric, slope=slope, intercept=intercept))
    assert block.range == pytest.approx(WIDTH) and block.budget(EPS) == 12
    delta = np.random.default_rng(5).uniform(-1.5 * EPS, 1.5 * EPS, size=block.stored.shape[:3])
    out = apply_delta(block, delta, epsilon=EPS)
    written = out[..., 0].astype(np.int64) - block.stored[..., 0].astype(np.int64)
    expected = _expected(block, delta, slope=slope, intercept=intercept)
    hu = slope * block.stored[..., 0].astype(np.float64) + intercept
    outside = (hu <= CENTRE - WIDTH / 2) | (hu >= CENTRE + WIDTH / 2)
    assert outside.sum() > 100 and (written[outside] == 0).all()  # air and bone: nothing invisible written
    assert np.array_equal(written, expected)  # in the window: the rounded delta, unless it would leave it
    assert (written != 0).sum() > 50
    # What the display shows changed by exactly the rounded delta the optimiser asked for, wherever a change is.
    shown = to_unit(dataclasses.replace(block, stored=out)).astype(np.float64) - to_unit(block).astype(np.float64)
    rounded = np.clip(np.rint(delta * WIDTH), -12, 12) / WIDTH
    changed = written != 0
    np.testing.assert_allclose(shown[changed], rounded[changed], atol=1e-6)
    assert (shown[~changed] == 0).all()


def test_stored_change_counts_the_pixels_it_drops() -> None:
    block = decode(_ct())
    delta = np.random.default_rng(5).uniform(-1.5 * EPS, 1.5 * EPS, size=block.stored.shape[:3])
    d, dropped = stored_change(block, delta, epsilon=EPS)
    asked = np.clip(np.rint(delta * WIDTH), -12, 12)
    assert dropped == int(((asked != 0) & (d == 0)).sum()) and dropped > 100


def test_display_transform_follows_the_modality_value() -> None:
    # PS3.3 C.11.2: the window applies to the modality value, so brightness grows with HU whatever the slope.
    for slope, intercept in ((1.0, -1024.0), (-1.0, 1024.0)):
        block = decode(_ct(slope=slope, intercept=intercept))
        hu = slope * block.stored[..., 0].astype(np.float64) + intercept
        expected = np.clip((hu - (CENTRE - WIDTH / 2)) / WIDTH, 0.0, 1.0)
        np.testing.assert_allclose(to_unit(block), expected, atol=1e-6)
    mono1 = decode(_ct("MONOCHROME1"))
    np.testing.assert_allclose(to_unit(mono1), 1.0 - to_unit(decode(_ct())), atol=1e-6)


def test_without_a_window_the_written_file_decodes_to_the_same_display() -> None:
    # The range is the instance's [min, max]; the extremes are never changed or crossed, so the protected
    # file is shown (and checked, guards.images) through the very transform the noise was made in.
    for photometric in ("MONOCHROME2", "RGB"):
        ds = _synthetic(8, False) if photometric == "MONOCHROME2" else _rgb()
        block = decode(ds)
        delta = np.full(block.stored.shape[:3], EPS)
        delta[:, ::2] *= -1
        out = apply_delta(block, delta, epsilon=EPS)
        assert (out != block.stored).any()
        encode(ds, block, out)
        again = decode(ds)
        assert (again.lo, again.range) == (block.lo, block.range)


def _rgb() -> Dataset:
    ds = _synthetic(8, False)
    rng = np.random.default_rng(3)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = rng.integers(0, 256, size=(int(ds.Rows), int(ds.Columns), 3)).astype(np.uint8).tobytes()
    return ds


def test_psnr_floor_scales_the_change_down_until_it_holds() -> None:
    block = decode(_ct())
    delta = np.where(np.random.default_rng(2).random(block.stored.shape[:3]) < 0.5, -EPS, EPS)  # dense, full
    free = protect_pixels(block, delta, epsilon=EPS, min_psnr_db=0.0)
    assert free.scale == 1.0 and np.array_equal(free.stored, apply_delta(block, delta, epsilon=EPS))
    assert free.psnr_db < 38.0  # the dense full-budget change is below the default floor
    held = protect_pixels(block, delta, epsilon=EPS, min_psnr_db=38.0)
    strict = protect_pixels(block, delta, epsilon=EPS, min_psnr_db=60.0)
    for p, floor in ((held, 38.0), (strict, 60.0)):
        assert p.psnr_db >= floor and p.scale < 1.0
        assert p.psnr_db == pytest.approx(psnr_db(block, p.stored))
        diff = np.abs(p.stored.astype(np.int64) - block.stored.astype(np.int64))
        assert diff.max() == p.max_abs_delta <= p.budget == 12
    assert held.psnr_db < 38.5  # scaled to the floor, not far past it
    changed = [float(np.abs(p.stored.astype(np.int64) - block.stored.astype(np.int64)).sum()) for p in (held, strict)]
    assert changed[1] < changed[0]


def test_psnr_is_in_the_display_window() -> None:
    block = decode(_ct())
    assert psnr_db(block, block.stored) == float("inf")
    stored = block.stored.copy()
    u = to_unit(block)
    inside = np.argwhere((u[0] > 0.1) & (u[0] < 0.9))[0]
    stored[0, inside[0], inside[1], 0] += 4  # one pixel, 4 stored units = 4/400 of the display
    mse = (4 / WIDTH) ** 2 / u.size
    assert psnr_db(block, stored) == pytest.approx(10 * np.log10(1 / mse))
