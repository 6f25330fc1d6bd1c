"""Text detection in a displayed frame with Debian's tesseract-ocr, called as a subprocess with TSV output.

Used by the Clean Pixel Data Option (PS3.15 E.3.1, :mod:`guards.deid.pixels`). The frame is written as an 8-bit
PGM (grey) to a temporary file and read by ``tesseract FILE stdout --psm 11 tsv``:

- page segmentation mode 11 ("sparse text: find as much text as possible in no particular order") is the mode
  for burned-in annotations, which are short labels scattered over the corners of an image rather than a page of
  paragraphs; the default mode 3 looks for columns and blocks and misses isolated labels, and is slower;
- ``OMP_THREAD_LIMIT=1``: one thread per call (the shared machine has two cores; OpenMP threads in tesseract
  slow small images down);
- the frame is framed by a 16-pixel black border before OCR: tesseract misses text that touches the image edge
  (on gdcm-US-ALOKA-16.dcm the date in the top row is read only with the border), boxes are shifted back;
- only word rows (TSV level 5) with a non-empty text are returned, with tesseract's confidence (0-100).

No model or data is downloaded: the ``eng`` traineddata comes with the Debian package.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from guards.errors import GuardError

log = logging.getLogger(__name__)

#: Page segmentation mode used for burned-in annotations (sparse text, see the module docstring).
SPARSE_TEXT_PSM = 11
#: Black border (pixels) added around a frame before OCR.
BORDER = 16


class OcrError(GuardError):
    """Raised when tesseract is missing or fails on a frame (the caller quarantines the instance)."""


@dataclass(frozen=True)
class OcrWord:
    """One word found by tesseract in a frame: its box in frame pixel coordinates (x1, y1 exclusive)."""

    text: str
    confidence: float
    x0: int
    y0: int
    x1: int
    y1: int
    line: tuple[int, int, int] = (0, 0, 0)  # tesseract's (block, paragraph, line) numbers within the frame


def tesseract_path() -> str:
    """The tesseract executable, or :class:`OcrError` saying how to install it."""
    found = shutil.which("tesseract")
    if found is None:
        raise OcrError(
            "tesseract was not found on PATH; install Debian's tesseract-ocr (apt-get install tesseract-ocr)"
        )
    return found


def _write_pgm(path: Path, image: npt.NDArray[np.uint8]) -> None:
    rows, cols = image.shape
    with path.open("wb") as f:
        f.write(f"P5 {cols} {rows} 255\n".encode("ascii"))
        f.write(np.ascontiguousarray(image).tobytes())


def parse_tsv(text: str, *, scale: float = 1.0, shift: int = 0) -> list[OcrWord]:
    """Word rows (level 5) of tesseract's TSV output; boxes moved by ``-shift`` then divided by ``scale``."""
    words: list[OcrWord] = []
    reader = csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    for row in reader:
        if row.get("level") != "5":
            continue
        word = (row.get("text") or "").strip()
        if not word:
            continue
        left, top = int(row["left"]) - shift, int(row["top"]) - shift
        width, height = int(row["width"]), int(row["height"])
        words.append(
            OcrWord(
                text=word,
                confidence=float(row["conf"]),
                x0=int(np.floor(left / scale)),
                y0=int(np.floor(top / scale)),
                x1=int(np.ceil((left + width) / scale)),
                y1=int(np.ceil((top + height) / scale)),
                line=(int(row["block_num"]), int(row["par_num"]), int(row["line_num"])),
            )
        )
    return words


def ocr_words(
    image: npt.NDArray[np.uint8],
    *,
    language: str = "eng",
    psm: int = SPARSE_TEXT_PSM,
    scale: int = 1,
    timeout_s: float = 120.0,
) -> list[OcrWord]:
    """Words tesseract finds in an 8-bit grey ``image`` (rows x columns), boxes in the image's coordinates.

    ``scale`` > 1 enlarges the frame by pixel repetition before OCR (a variant for small text; its effect is
    measured in benchmarks/ocr/RESULTS.md); boxes are mapped back to the frame.
    """
    if scale < 1:
        raise OcrError(f"ocr_words scale must be 1 or more, got {scale}")
    if image.ndim != 2 or image.dtype != np.uint8:
        raise OcrError(f"ocr_words needs a 2-D uint8 image, got shape {image.shape} dtype {image.dtype}")
    exe = tesseract_path()
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    with tempfile.TemporaryDirectory(prefix="guard-ocr-") as tmp:
        pgm = Path(tmp) / "frame.pgm"
        big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1) if scale > 1 else image
        _write_pgm(pgm, np.pad(big, BORDER, constant_values=0))
        cmd = [exe, str(pgm), "stdout", "--psm", str(psm), "-l", language, "tsv"]
        try:
            done = subprocess.run(cmd, capture_output=True, check=False, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired as e:
            raise OcrError(f"tesseract took over {timeout_s} s on a {image.shape} frame; raise timeout_s") from e
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip()[-500:]
        raise OcrError(
            f"tesseract exited with {done.returncode} on a {image.shape} frame ({err}); "
            f"check that the '{language}' traineddata is installed (tesseract --list-langs)"
        )
    rows, cols = image.shape
    words = parse_tsv(done.stdout.decode("utf-8", "replace"), shift=BORDER, scale=float(scale))
    return [
        OcrWord(w.text, w.confidence, max(0, w.x0), max(0, w.y0), min(cols, w.x1), min(rows, w.y1), w.line)
        for w in words
        if w.x1 > 0 and w.y1 > 0 and w.x0 < cols and w.y0 < rows
    ]
