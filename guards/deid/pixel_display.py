"""Display frames for OCR: every stored frame as an 8-bit grey image at native resolution.

Follows the PS3.3 C.7.6.3.1.2 Photometric Interpretation and the PS3.3 C.11.2 VOI LUT display pipeline, far
enough for text detection:

- MONOCHROME1 / MONOCHROME2: Modality LUT (Rescale Slope/Intercept), then the first Window Center/Width pair
  when the header has one, else a 0.5-99.5 percentile window of the frame; 8-bit data is shown as stored
  (burned-in text is usually drawn at full intensity, a percentile window would only saturate it);
  MONOCHROME1 is inverted so that the display is white-on-black like MONOCHROME2;
- PALETTE COLOR: the Red/Green/Blue Palette Color LUTs (PS3.3 C.7.6.3.1.5), then luminance;
- RGB and YBR_*: luminance (pydicom returns RGB for YBR data; Y is the luminance of YBR_FULL kept as stored);
- signed data and 8 to 16 bits are handled by the windowing; multi-frame data gives one image per frame.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut

_LUMA = np.array([0.299, 0.587, 0.114])


def frames_of(ds: Dataset, pixels: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    """``pixels`` (as ``ds.pixel_array`` returns it) with a leading frame axis."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        return pixels[np.newaxis]
    return pixels


def _first(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        return float(value[0]) if len(value) else None
    return float(value)  # type: ignore[arg-type]


def _to_uint8(values: npt.NDArray[np.float64], low: float, high: float) -> npt.NDArray[np.uint8]:
    if high <= low:
        high = low + 1.0
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _monochrome(ds: Dataset, frame: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if bits <= 8 and not signed and "RescaleSlope" not in ds:
        out = frame.astype(np.uint8)
    else:
        values = np.asarray(apply_modality_lut(frame, ds), dtype=np.float64)
        center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        if center is not None and width is not None and width > 1:
            low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
        else:
            low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
        out = _to_uint8(values, low, high)
    if ds.get("PhotometricInterpretation", "") == "MONOCHROME1":
        out = np.asarray(255 - out, dtype=np.uint8)
    return out


def _luminance(rgb: npt.NDArray[np.generic], bits: int) -> npt.NDArray[np.uint8]:
    grey = rgb.astype(np.float64) @ _LUMA
    top = float(2**bits - 1)
    return _to_uint8(grey, 0.0, top)


def display_frames(ds: Dataset, pixels: npt.NDArray[np.generic]) -> list[npt.NDArray[np.uint8]]:
    """One 8-bit grey display image per frame of ``pixels`` (the decoded Pixel Data of ``ds``)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    stack = frames_of(ds, pixels)
    images: list[npt.NDArray[np.uint8]] = []
    for frame in stack:
        if photometric.startswith("MONOCHROME"):
            images.append(_monochrome(ds, frame))
        elif photometric == "PALETTE COLOR":
            rgb = apply_color_lut(frame, ds)
            bits = 16 if rgb.dtype == np.uint16 else 8
            images.append(_luminance(rgb, bits))
        else:
            bits = int(ds.get("BitsStored", 8))
            if frame.ndim == 2:  # a single-sample frame under a colour name: treat as grey
                images.append(_to_uint8(frame.astype(np.float64), 0.0, float(2**bits - 1)))
            else:
                images.append(_luminance(frame, bits))
    return images
