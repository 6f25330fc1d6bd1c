"""Codec between DICOM pixel data and float arrays, and back, with the noise budget held in stored units.

Reads the Image Pixel Module (PS3.3 C.7.6.3) and the Modality / VOI LUT attributes (PS3.3 C.11.1, C.11.2):

- Bit depths: ``BitsAllocated`` 8 or 16 with any ``BitsStored`` up to it, ``PixelRepresentation`` 0
  (unsigned) or 1 (two's complement); values are clipped to the ``BitsStored`` range when written back.
- ``PhotometricInterpretation`` (PS3.3 C.7.6.3.1.2): MONOCHROME2; MONOCHROME1 (inverted for the model so that
  bright means dense, and the delta's sign flipped back); RGB (the model sees the channel mean, the same delta goes
  to all three channels, so hue is kept); YBR_FULL and YBR_FULL_422 are converted to RGB by pydicom when decoded
  (``as_rgb``) and written back as RGB with the header updated (re-subsampling chroma would spend budget on
  rounding).
  PALETTE COLOR is not protected: it stores indices into a colour table, where adding noise is meaningless;
  it raises :class:`UnsupportedPixelsError` with the reason (the tree step quarantines such files).
- Multi-frame: every frame is an image (``NumberOfFrames``).
- Rescale slope / intercept: the budget is a fraction of the *displayed* range. With a VOI window
  (``WindowWidth``, first value) the range is ``WindowWidth / |RescaleSlope|`` in stored units; without one it
  is the stored range of the instance (max - min). The delta in stored units is clipped to
  ``floor(epsilon * range)`` after rounding, so the budget holds exactly on the values written.
- Display transform (:func:`to_unit`, also what ``guards.images`` gives every model-based check): the stored
  value ``s`` is shown as ``u = (s - lo) / range`` clipped to [0, 1], where ``[lo, lo + range]`` is the window
  in stored units (PS3.3 C.11.1 Modality LUT, then C.11.2 VOI LUT: the window is in modality units, so a
  negative ``RescaleSlope`` turns it round); the display grows with the modality value, so ``u`` is inverted for
  a negative slope, and once more for MONOCHROME1, where the lowest value is shown brightest.
- What is written is what the display shows (:func:`apply_delta`): a change is written only where every sample
  of the pixel lies strictly inside the window before and after it, i.e. ``0 < u < 1`` and ``0 < u + delta < 1``
  in unclipped display units; elsewhere (CT bone above the window top, air below its bottom, a pixel the delta
  would push out of it) nothing is written, so each written change is displayed whole. Without a window the
  range is the instance's own [min, max], and as the extremes are never changed nor crossed, the protected file
  decodes to the same ``lo`` and ``range``. :func:`protect_pixels` also holds a PSNR floor in the display.
- Compressed transfer syntaxes are decoded (:func:`guards.codec.decompress`, YCbCr converted to RGB by pydicom)
  and :func:`encode` writes Explicit VR Little Endian native data with ``TransferSyntaxUID`` updated; big-endian
  native data are rewritten as little endian too. The tree step then encodes an instance that arrived
  compressed again losslessly (:func:`guards.codec.store_pixels`, ``pixels.encode``). SOP Instance UIDs are
  kept: the de-identified release's UIDs are already pseudonyms and the labels table is keyed by them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from guards.codec import decompress as decompress_pixels
from guards.errors import GuardError

SUPPORTED_PHOTOMETRIC: tuple[str, ...] = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422")


class UnsupportedPixelsError(GuardError):
    """Raised when an instance's pixel data cannot be protected; the message is the reason recorded."""


@dataclass(frozen=True)
class PixelBlock:
    """Decoded pixels of one instance: ``stored`` is ``frames x rows x cols x samples`` in the original dtype."""

    stored: np.ndarray
    photometric: str
    bits_stored: int
    signed: bool
    lo: float  # low end of the displayed range, in stored units
    range: float  # displayed range in stored units (> 0)
    negative_slope: bool = False  # RescaleSlope < 0: a higher stored value is a lower modality value

    @property
    def frames(self) -> int:
        return int(self.stored.shape[0])

    @property
    def inverted(self) -> bool:
        """Whether a higher stored value is shown darker: MONOCHROME1 (PS3.3 C.7.6.3.1.2) or, for grey-scale
        images, a negative Rescale Slope (PS3.3 C.11.1: the VOI window applies to the modality values); both
        together cancel."""
        return (self.photometric == "MONOCHROME1") != (self.negative_slope and self.photometric.startswith("MONO"))

    def budget(self, epsilon: float) -> int:
        """The largest |delta| allowed in stored units: ``floor(epsilon * range)``."""
        return int(math.floor(epsilon * self.range + 1e-9))

    def value_limits(self) -> tuple[int, int]:
        if self.signed:
            return -(1 << (self.bits_stored - 1)), (1 << (self.bits_stored - 1)) - 1
        return 0, (1 << self.bits_stored) - 1


def _first(value: object) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        seq = list(value)  # type: ignore[call-overload]
        return None if not seq else float(seq[0])
    return float(value)  # type: ignore[arg-type]


def decode(ds: Dataset) -> PixelBlock:
    """Decode ``ds``'s pixel data in place (compressed -> native) and return it as a :class:`PixelBlock`."""
    if "PixelData" not in ds:
        raise UnsupportedPixelsError("no Pixel Data (7FE0,0010)")
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is not None and ts.is_compressed:
        try:
            decompress_pixels(ds)
        except Exception as e:  # pydicom raises many types for missing / failing decoders
            raise UnsupportedPixelsError(f"cannot decode transfer syntax {ts} ({type(e).__name__}: {e})") from e
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise UnsupportedPixelsError(
            f"PhotometricInterpretation {photometric!r} is not protected (supported: {list(SUPPORTED_PHOTOMETRIC)})"
        )
    bits_alloc = int(ds.get("BitsAllocated", 0))
    if bits_alloc not in (8, 16):
        raise UnsupportedPixelsError(f"BitsAllocated {bits_alloc} is not protected (supported: 8, 16)")
    bits_stored = int(ds.get("BitsStored", bits_alloc))
    if not 1 <= bits_stored <= bits_alloc:
        raise UnsupportedPixelsError(f"BitsStored {bits_stored} is inconsistent with BitsAllocated {bits_alloc}")
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as e:  # a corrupt or truncated value: reported as the reason, never hidden
        raise UnsupportedPixelsError(f"cannot read pixel data ({type(e).__name__}: {e})") from e
    samples = int(ds.get("SamplesPerPixel", 1))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if samples == 1:
        arr = arr.reshape(frames, arr.shape[-2], arr.shape[-1], 1)
    else:
        arr = arr.reshape(frames, arr.shape[-3], arr.shape[-2], samples)
    if photometric.startswith("MONO") and samples != 1 or not photometric.startswith("MONO") and samples != 3:
        raise UnsupportedPixelsError(f"SamplesPerPixel {samples} does not match {photometric}")
    if photometric.startswith("YBR"):
        photometric = "RGB"  # pydicom's pixel_array converts YCbCr to RGB (as_rgb=True)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    width = _first(ds.get("WindowWidth")) if photometric.startswith("MONO") else None
    slope = _first(ds.get("RescaleSlope")) or 1.0
    intercept = _first(ds.get("RescaleIntercept")) or 0.0
    if width is not None and width > 0:
        centre = _first(ds.get("WindowCenter"))
        rng = width / abs(slope)
        if centre is None:
            lo = float(arr.min())
        else:
            lo = (centre - width / 2 - intercept) / slope if slope > 0 else (centre + width / 2 - intercept) / slope
    else:
        lo = float(arr.min())
        rng = float(arr.max()) - lo
    return PixelBlock(
        stored=arr, photometric=photometric, bits_stored=bits_stored, signed=signed, lo=lo, range=max(rng, 1.0),
        negative_slope=slope < 0,
    )


def _unit(block: PixelBlock, stored: np.ndarray) -> np.ndarray:
    """``stored`` (shaped like ``block.stored``) through ``block``'s display transform, as :func:`to_unit`."""
    a = stored.astype(np.float64)
    a = a.mean(-1) if block.photometric == "RGB" else a[..., 0]
    u = np.clip((a - block.lo) / block.range, 0.0, 1.0)
    if block.inverted:
        u = 1.0 - u
    return u.astype(np.float32)


def to_unit(block: PixelBlock) -> np.ndarray:
    """``frames x rows x cols`` float32 in [0, 1]: the displayed intensity the model sees (bright = dense).

    Modality LUT (rescale), then the first VOI window (PS3.3 C.11.1, C.11.2; without one, the instance's own
    minimum and maximum), values outside it clipped; MONOCHROME1 and a negative slope inverted (see
    :attr:`PixelBlock.inverted`); an RGB pixel is shown as the mean of its channels.
    """
    return _unit(block, block.stored)


def stored_change(block: PixelBlock, delta_unit: np.ndarray, *, epsilon: float) -> tuple[np.ndarray, int]:
    """The change to write, ``frames x rows x cols`` int64 in stored units, and how many pixels lost theirs.

    ``delta_unit`` (displayed units) is rounded to stored units and clipped to ``block.budget(epsilon)``. The
    change is then kept only at pixels whose every sample lies strictly inside the display window
    ``(lo, lo + range)`` before and after it, and within the ``BitsStored`` range after it. For a grey-scale
    pixel that is exactly ``0 < u < 1`` and ``0 < u + delta < 1`` in unclipped display units, in either display
    direction (MONOCHROME1 or a negative slope only mirror the window, PS3.3 C.11.2); for RGB it keeps every
    channel, and so their mean, inside. Elsewhere the change is 0: it would be clipped away in the display
    (wholly at a pixel already outside the window, partly at one it would push out), so the model's view and
    the file would differ. The count returned is of the pixels whose rounded change was non-zero but dropped.
    """
    if delta_unit.shape != block.stored.shape[:3]:
        raise GuardError(f"delta shape {delta_unit.shape} does not match the pixels {block.stored.shape[:3]}")
    sign = -1.0 if block.inverted else 1.0
    b = block.budget(epsilon)
    d = np.clip(np.rint(sign * delta_unit.astype(np.float64) * block.range), -b, b).astype(np.int64)
    before = block.stored.astype(np.int64)
    after = before + d[..., None]
    top = block.lo + block.range
    vmin, vmax = block.value_limits()
    kept = (
        ((before > block.lo) & (before < top) & (after > block.lo) & (after < top)).all(-1)
        & ((after >= vmin) & (after <= vmax)).all(-1)
    )
    dropped = int(np.count_nonzero((d != 0) & ~kept))
    return np.where(kept, d, 0), dropped


def apply_delta(block: PixelBlock, delta_unit: np.ndarray, *, epsilon: float) -> np.ndarray:
    """Stored values with ``delta_unit`` (``frames x rows x cols``, displayed units) added, original dtype.

    The change is :func:`stored_change`'s: rounded to stored units, within ``block.budget(epsilon)`` (so
    ``|out - stored| <= floor(epsilon * range)`` exactly), and written only where the display shows all of it, so
    ``to_unit`` of the result minus ``to_unit(block)`` is the rounded delta wherever anything changed.
    """
    d, _ = stored_change(block, delta_unit, epsilon=epsilon)
    return _add(block, d)


def _add(block: PixelBlock, d: np.ndarray) -> np.ndarray:
    out: np.ndarray = block.stored.astype(np.int64) + d[..., None]
    lo, hi = block.value_limits()
    clipped: np.ndarray = np.clip(out, lo, hi).astype(block.stored.dtype)  # a no-op after stored_change
    return clipped


def psnr_db(block: PixelBlock, stored: np.ndarray) -> float:
    """PSNR in dB of ``stored`` against ``block.stored``, both through ``block``'s display transform.

    ``10 * log10(1 / MSE)`` over every pixel of every frame of the displayed images (:func:`to_unit`, data
    range 1); ``inf`` when nothing changed.
    """
    before = to_unit(block).astype(np.float64)
    mse = float(np.mean((_unit(block, stored).astype(np.float64) - before) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


@dataclass(frozen=True)
class Protected:
    """The stored values :func:`protect_pixels` wrote and what is recorded of them (stored units, dB)."""

    stored: np.ndarray
    max_abs_delta: int
    budget: int
    psnr_db: float
    clipped: int  # pixels whose change was dropped because the display would not show it (stored_change)
    scale: float  # factor the delta was scaled by to meet the PSNR floor (1.0: none)


_PSNR_STEPS = 8  # scaling steps towards the PSNR floor before halving takes over


def protect_pixels(block: PixelBlock, delta_unit: np.ndarray, *, epsilon: float, min_psnr_db: float) -> Protected:
    """:func:`apply_delta` with a floor on the file's PSNR in its display window (:func:`psnr_db`).

    When the change is below ``min_psnr_db``, the delta is scaled by ``sqrt(MSE_target / MSE)`` (a hair less) and
    written again, a few times because rounding and the budget clip keep MSE from following the scale exactly;
    then halved until the floor holds. A zero change (infinite PSNR) always does, so the floor is guaranteed.
    """
    target = 10.0 ** (-min_psnr_db / 10.0)
    budget = block.budget(epsilon)
    scale = 1.0
    tries = 0
    while True:
        d, clipped = stored_change(block, delta_unit * scale if scale != 1.0 else delta_unit, epsilon=epsilon)
        stored = _add(block, d)
        psnr = psnr_db(block, stored)
        if psnr >= min_psnr_db or not d.any():
            max_abs = int(np.abs(d).max()) if d.size else 0
            return Protected(stored=stored, max_abs_delta=max_abs, budget=budget, psnr_db=psnr, clipped=clipped,
                             scale=scale)
        mse = 10.0 ** (-psnr / 10.0)
        tries += 1
        scale *= math.sqrt(target / mse) * 0.999 if tries <= _PSNR_STEPS else 0.5


def encode(ds: Dataset, block: PixelBlock, stored: np.ndarray) -> None:
    """Write ``stored`` (same shape and dtype as ``block.stored``) into ``ds`` as native little-endian data."""
    if stored.shape != block.stored.shape or stored.dtype != block.stored.dtype:
        raise GuardError(f"pixels {stored.shape}/{stored.dtype} differ from {block.stored.shape}/{block.stored.dtype}")
    frames, rows, cols, samples = stored.shape
    data = np.ascontiguousarray(stored.astype(stored.dtype.newbyteorder("<"))).tobytes()
    if len(data) % 2:
        data += b"\x00"
    ds.PixelData = data
    ds["PixelData"].VR = "OB" if stored.dtype.itemsize == 1 else "OW"
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = block.photometric
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in ("LargestImagePixelValue", "SmallestImagePixelValue"):
        if keyword in ds:
            del ds[keyword]
    if frames != int(ds.get("NumberOfFrames", 1) or 1) or rows != ds.Rows or cols != ds.Columns:
        raise GuardError(f"pixel shape {stored.shape} does not match Rows/Columns/NumberOfFrames of the header")
