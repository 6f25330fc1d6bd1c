"""Synthetic instances with burned-in PHI, for the Clean Pixel Data tests and the OCR benchmark.

Made-up names, IDs, dates and institutions (never real patient data) are drawn into the pixels the way
ultrasound and secondary-capture overlays print them (``DOE, JANE``, ``ID 00012345678``, ``03/02/2017``) and are
also written into the header, so the instance's own PHI header values (PS3.15 Table E.1-1) can be matched.
Photometric variants cover PS3.3 C.7.6.3.1.2: MONOCHROME2 8-bit, MONOCHROME1 16-bit, signed 16-bit with a
window, RGB, PALETTE COLOR, and multi-frame. Every random choice comes from the ``numpy.random.Generator``
passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

VARIANTS = ("mono2_8", "mono1_16", "signed_16", "rgb", "palette", "multiframe")
_SURNAMES = ("DOE", "ROE", "MOSS", "KLINE", "VARGA", "OKAFOR", "LINDQVIST", "PETROV", "HALE", "NAKANO")
_GIVEN = ("JANE", "JOHN", "ALMA", "BORIS", "CLARA", "DMITRI", "ELENA", "FELIX", "GRETA", "HUGO")
_CLINICS = ("NORTHFIELD CLINIC", "LAKESIDE IMAGING", "ST ORBAN HOSPITAL", "RIVERBEND MEDICAL")
_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
_SOP = {"US": "1.2.840.10008.5.1.4.1.1.6.1", "SC": "1.2.840.10008.5.1.4.1.1.7", "CT": "1.2.840.10008.5.1.4.1.1.2"}


@dataclass(frozen=True)
class BurnedInSample:
    """A synthetic instance and the normalized tokens drawn into its pixels."""

    dataset: Dataset
    tokens: list[str]
    variant: str


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if _FONT.exists():
        return ImageFont.truetype(str(_FONT), size)
    return ImageFont.load_default(size=size)


def _background(rng: np.random.Generator, rows: int, cols: int) -> npt.NDArray[np.float64]:
    """A smooth anatomy-like blob with speckle, values in [0, 0.7] (text is drawn at 1.0)."""
    y, x = np.mgrid[0:rows, 0:cols]
    cy, cx = rows * rng.uniform(0.4, 0.6), cols * rng.uniform(0.4, 0.6)
    ry, rx = rows * rng.uniform(0.25, 0.35), cols * rng.uniform(0.25, 0.35)
    blob = np.exp(-(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2))
    return np.asarray(np.clip(0.6 * blob + rng.normal(0.0, 0.04, (rows, cols)), 0.0, 0.7), dtype=np.float64)


def _text_mask(rng: np.random.Generator, rows: int, cols: int, lines: list[str]) -> npt.NDArray[np.bool_]:
    canvas = Image.new("L", (cols, rows), 0)
    draw = ImageDraw.Draw(canvas)
    size = int(rng.integers(13, 20))
    font = _font(size)
    corners = [(6, 4), (cols // 2, 4), (6, rows - 2 * (size + 4) - 4), (cols // 2, rows - size - 8)]
    for (x, y), line in zip(corners, lines, strict=False):
        draw.text((x, y), line, fill=255, font=font)
    return np.asarray(canvas) > 127


def _person(rng: np.random.Generator) -> tuple[str, str, str, str, str]:
    surname, given = str(rng.choice(_SURNAMES)), str(rng.choice(_GIVEN))
    pid = f"{int(rng.integers(10**9, 10**10)):011d}"
    year, month, day = int(rng.integers(1990, 2024)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    return surname, given, pid, f"{year:04d}{month:02d}{day:02d}", str(rng.choice(_CLINICS))


def burned_in_sample(rng: np.random.Generator, *, variant: str, rows: int = 384, cols: int = 512) -> BurnedInSample:
    """One synthetic instance of ``variant`` (one of :data:`VARIANTS`) with a name, ID, date and clinic burned in."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; use one of {VARIANTS}")
    surname, given, pid, date, clinic = _person(rng)
    shown = f"{date[4:6]}/{date[6:8]}/{date[:4]}"
    lines = [f"{surname}, {given}", f"ID {pid}", shown, clinic]
    frames = 2 if variant == "multiframe" else 1
    stack = [np.where(_text_mask(rng, rows, cols, lines), 1.0, _background(rng, rows, cols)) for _ in range(frames)]
    ds = _header(surname, given, pid, date, clinic, modality="CT" if variant == "signed_16" else "US")
    _store(ds, np.stack(stack), variant)
    tokens = [surname, given, pid, date[4:6] + date[6:8] + date[:4]] + [w for w in clinic.split() if len(w) >= 3]
    return BurnedInSample(dataset=ds, tokens=tokens, variant=variant)


def _header(surname: str, given: str, pid: str, date: str, clinic: str, *, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = _SOP[modality]
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = modality
    ds.PatientName = f"{surname}^{given}"
    ds.PatientID = pid
    ds.StudyDate = date
    ds.InstitutionName = clinic
    ds.BurnedInAnnotation = "YES"
    return ds


def _store(ds: Dataset, stack: npt.NDArray[np.float64], variant: str) -> None:
    frames, rows, cols = stack.shape
    ds.Rows, ds.Columns = rows, cols
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    if variant in ("mono2_8", "multiframe", "palette"):
        values: npt.NDArray[np.generic] = np.rint(stack * 255).astype(np.uint8)
        bits = 8
        ds.PhotometricInterpretation = "MONOCHROME2"
        if variant == "palette":
            ds.PhotometricInterpretation = "PALETTE COLOR"
            ramp = (np.arange(256, dtype=np.uint16) * 257).tobytes()
            for colour in ("Red", "Green", "Blue"):
                setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
                setattr(ds, f"{colour}PaletteColorLookupTableData", ramp)
    elif variant == "mono1_16":
        values, bits = np.rint((1.0 - stack) * 4095).astype(np.uint16), 16
        ds.PhotometricInterpretation = "MONOCHROME1"
    elif variant == "signed_16":
        values, bits = np.rint(stack * 3000 - 1000).astype(np.int16), 16
        ds.PhotometricInterpretation, ds.PixelRepresentation = "MONOCHROME2", 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.WindowCenter, ds.WindowWidth = 400, 2400
    else:  # rgb: text white, background tinted
        grey = np.rint(stack * 255).astype(np.uint8)
        values = np.stack([grey, (grey * 0.8).astype(np.uint8), grey], axis=-1)
        bits = 8
        ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = "RGB", 3, 0
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if variant == "mono1_16" else bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelData = (values[0] if frames == 1 else values).tobytes()
