"""Codec between DICOM pixel data and float arrays, and back, with the noise budget held in stored units.

Reads the Image Pixel Module (PS3.3 C.7.6.3) and the Modality / VOI LUT attributes (PS3.3 C.11.1, C.11.2):

- Bit depths: ``BitsAllocated`` 8 or 16 with any ``BitsStored`` up to it, ``PixelRepresentation`` 0
  (unsigned) or 1 (two's complement); values are clipped to the ``BitsStored`` range when written back.
- ``PhotometricInterpretation``: MONOCHROME2; MONOCHROME1 (inverted for the model so that bright means dense,
  and the delta's sign flipped back); RGB (the model sees the channel mean, the same delta goes to all three
  channels, so hue is kept); YBR_FULL and YBR_FULL_422 are converted to RGB by pydicom when decoded (``as_rgb``)
  and written back as RGB with the header updated (re-subsampling chroma would spend budget on rounding).
  PALETTE COLOR is not protected: it stores indices into a colour table, where adding noise is meaningless;
  it raises :class:`UnsupportedPixelsError` with the reason (the tree step quarantines such files).
- Multi-frame: every frame is an image (``NumberOfFrames``).
- Rescale slope / intercept: the budget is a fraction of the *displayed* range. With a VOI window
  (``WindowWidth``, first value) the range is ``WindowWidth / |RescaleSlope|`` in stored units; without one it
  is the stored range of the instance (max - min). The delta in stored units is clipped to
  ``floor(epsilon * range)`` after rounding, so the budget holds exactly on the values written.
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

    @property
    def frames(self) -> int:
        return int(self.stored.shape[0])

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
        stored=arr, photometric=photometric, bits_stored=bits_stored, signed=signed, lo=lo, range=max(rng, 1.0)
    )


def to_unit(block: PixelBlock) -> np.ndarray:
    """``frames x rows x cols`` float32 in [0, 1]: the displayed intensity the model sees (bright = dense)."""
    a = block.stored.astype(np.float64)
    if block.photometric == "RGB":
        a = a.mean(-1)
    else:
        a = a[..., 0]
    u = np.clip((a - block.lo) / block.range, 0.0, 1.0)
    if block.photometric == "MONOCHROME1":
        u = 1.0 - u
    return u.astype(np.float32)


def apply_delta(block: PixelBlock, delta_unit: np.ndarray, *, epsilon: float) -> np.ndarray:
    """Stored values with ``delta_unit`` (``frames x rows x cols``, displayed units) added, original dtype.

    The delta is rounded to stored units and clipped to ``block.budget(epsilon)`` before it is added, and the
    result is clipped to the ``BitsStored`` range, so ``|out - stored| <= floor(epsilon * range)`` exactly.
    """
    if delta_unit.shape != block.stored.shape[:3]:
        raise GuardError(f"delta shape {delta_unit.shape} does not match the pixels {block.stored.shape[:3]}")
    sign = -1.0 if block.photometric == "MONOCHROME1" else 1.0
    b = block.budget(epsilon)
    d = np.clip(np.rint(sign * delta_unit.astype(np.float64) * block.range), -b, b).astype(np.int64)
    out = block.stored.astype(np.int64)
    out += d[..., None]
    lo, hi = block.value_limits()
    return np.clip(out, lo, hi).astype(block.stored.dtype)


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
