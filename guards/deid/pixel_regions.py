"""Where the image is in an ultrasound frame, so that Clean Pixel Data hides text and not anatomy.

PS3.15 E.3.1 (Clean Pixel Data Option) asks that burned-in identifying text be removed; it does not ask that the
image be blacked out. Ultrasound scanners draw their text in known places (a top band with the institution,
the patient's name, ID and dates; corners and side panels with technical labels) and the image in a rectangle
that the instance declares: the Sequence of Ultrasound Regions (0018,6011), PS3.3 C.8.5.5 (US Region
Calibration Module), each item giving Region Location Min X0 / Min Y0 / Max X1 / Max Y1 (the top-left and
bottom-right pixels of the region, both inclusive, C.8.5.5.1) and Region Spatial Format (C.8.5.5.1.1).

:func:`image_regions` returns the image area of a frame as a mask:

- the union of the ultrasound regions whose Region Spatial Format shows the patient: 1 (2D tissue or flow),
  2 (M-Mode), 3 (Spectral Doppler) and 4 (Wave form); regions of format 0 (none, e.g. a colour bar) and 5
  (graphics) are annotation areas;
- for an ultrasound instance (Modality US or an Ultrasound SOP Class) without usable regions, the documented
  fallback :data:`FALLBACK_CENTRE`: the frame minus a top band of a quarter of the rows, a bottom band of an
  eighth, and side panels of a tenth of the columns each (where scanners print their labels, e.g. GE's LOGIQ in
  pydicom-data's US1 files: institution and IDs in the top 21 % of rows, side labels in the outer 6 %);
- otherwise nothing (``ImageRegions.none``): the whole frame is treated as an annotation area.

A word is "in the image" when more than half of its box lies inside the mask (:meth:`ImageRegions.holds`); a word
mostly in an annotation area is annotation. Tesseract's boxes around speckle at a region's edge (``ast`` at the
left edge of US1_J2KI's centre area) straddle it; a label in a band does not reach into the image. Words that
match the vocabulary or look like a date or an ID are hidden wherever they are (:mod:`guards.deid.pixels`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

#: Region Spatial Format values (PS3.3 C.8.5.5.1.1) of regions that show the patient: 2D, M-Mode, Spectral, Wave form.
IMAGE_SPATIAL_FORMATS = frozenset({1, 2, 3, 4})
#: Fallback image area as shares of the frame (top, bottom, left, right bands excluded), see the module docstring.
FALLBACK_CENTRE = (0.25, 0.125, 0.10, 0.10)

_US_SOP_PREFIXES = ("1.2.840.10008.5.1.4.1.1.6.", "1.2.840.10008.5.1.4.1.1.3.1")

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1 and y1 exclusive)


@dataclass(frozen=True)
class ImageRegions:
    """The image area of every frame of one instance: rectangles (exclusive ends) and where they came from."""

    rects: tuple[Rect, ...]
    source: str  # "SequenceOfUltrasoundRegions", "fallback centre" or "" (no image area: all annotation)
    rows: int
    cols: int

    @classmethod
    def none(cls, rows: int, cols: int) -> ImageRegions:
        return cls(rects=(), source="", rows=rows, cols=cols)

    def mask(self) -> npt.NDArray[np.bool_]:
        """True on the image area's pixels (rows x columns)."""
        out = np.zeros((self.rows, self.cols), dtype=bool)
        for x0, y0, x1, y1 in self.rects:
            out[y0:y1, x0:x1] = True
        return out

    def holds(self, x0: int, y0: int, x1: int, y1: int, *, mask: npt.NDArray[np.bool_] | None = None) -> bool:
        """True when more than half of the box (x1, y1 exclusive) lies inside the image area."""
        if not self.rects or x1 <= x0 or y1 <= y0:
            return False
        area = self.mask() if mask is None else mask
        box = area[max(0, y0) : y1, max(0, x0) : x1]
        return bool(box.size and box.mean() > 0.5)

    def describe(self) -> str:
        """A stable text form (for the OCR cache key and the outcome's evidence)."""
        return f"{self.source}:{list(self.rects)}" if self.source else ""


def is_ultrasound(ds: Dataset) -> bool:
    """Modality US, or an Ultrasound (multi-frame) Image Storage SOP Class (PS3.4 Annex B)."""
    sop = str(ds.get("SOPClassUID", "")).strip()
    return str(ds.get("Modality", "")).strip().upper() == "US" or sop.startswith(_US_SOP_PREFIXES)


def _int(item: Dataset, keyword: str) -> int | None:
    value = item.get(keyword)
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def ultrasound_rects(ds: Dataset, rows: int, cols: int) -> list[Rect]:
    """Rectangles (exclusive ends, clipped to the frame) of the image regions of the Sequence of Ultrasound
    Regions (PS3.3 C.8.5.5); items without a location, with an empty box or a format that does not show the patient
    are left out."""
    rects: list[Rect] = []
    for item in ds.get("SequenceOfUltrasoundRegions", None) or []:
        if _int(item, "RegionSpatialFormat") not in IMAGE_SPATIAL_FORMATS:
            continue
        corners = [_int(item, k) for k in ("RegionLocationMinX0", "RegionLocationMinY0",
                                            "RegionLocationMaxX1", "RegionLocationMaxY1")]
        if any(c is None for c in corners):
            continue
        x0, y0, x1, y1 = (int(c) for c in corners)  # type: ignore[arg-type]
        x0, y0 = max(0, x0), max(0, y0)
        x1, y1 = min(cols, x1 + 1), min(rows, y1 + 1)  # Max X1 / Max Y1 are inclusive (C.8.5.5.1)
        if x1 > x0 and y1 > y0:
            rects.append((x0, y0, x1, y1))
    return rects


def fallback_rect(rows: int, cols: int) -> Rect:
    """The fallback image area (:data:`FALLBACK_CENTRE`) of a rows x cols frame."""
    top, bottom, left, right = FALLBACK_CENTRE
    return (int(round(cols * left)), int(round(rows * top)), int(round(cols * (1 - right))),
            int(round(rows * (1 - bottom))))


def image_regions(ds: Dataset, rows: int, cols: int) -> ImageRegions:
    """The image area of ``ds``'s frames (see the module docstring)."""
    rects = ultrasound_rects(ds, rows, cols)
    if rects:
        return ImageRegions(rects=tuple(rects), source="SequenceOfUltrasoundRegions", rows=rows, cols=cols)
    if is_ultrasound(ds):
        return ImageRegions(rects=(fallback_rect(rows, cols),), source="fallback centre", rows=rows, cols=cols)
    return ImageRegions.none(rows, cols)
