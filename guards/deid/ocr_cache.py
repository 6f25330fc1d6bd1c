"""OCR verdicts kept across runs, so that a nightly run does not read the same pixels again.

OCR is the slow part of de-identification (about 0.1 s per 256 x 256 frame here, and ``pixels.ocr_all`` reads
every instance). A nightly run over a source that mostly did not change would read the same frames every night.
:func:`guards.deid.pixels.clean_pixel_data` therefore records each completed decision (the boxes it filled, pass
by pass, and its counts) under a key that covers everything the decision depends on:

- the displayed frames, byte for byte (so every attribute that changes what OCR sees changes the key);
- the instance's PHI header tokens, its risk reason and its Burned In Annotation;
- the ``[pixels]`` settings and the tesseract version;
- :data:`VERSION`, raised when the decision rules change.

A later instance with the same key replays the recorded boxes without OCR and gets the same bytes. Only
completed decisions are recorded: OCR failures and pixels that cannot be rewritten are decided afresh every
time. One small JSON file per key (``root/<k[:2]>/<k>.json``, written atomically), so de-identification shards
running in parallel can share the cache. It holds box coordinates and counts, never text; the key is a hash that
includes the PHI tokens, and it lives under the private ``OUT/private/ocr-cache/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from guards.atomic import write_bytes
from guards.deid.ocr import OcrError, tesseract_path
from guards.policy import PixelsSection

VERSION = 2


@lru_cache(maxsize=1)
def tesseract_version() -> str:
    """The first line of ``tesseract --version`` (different engines may read differently)."""
    try:
        done = subprocess.run([tesseract_path(), "--version"], capture_output=True, check=False, timeout=30)
    except (OcrError, OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (done.stdout or done.stderr).decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else "unknown"


class OcrCache:
    """Recorded Clean Pixel Data decisions under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def key(
        self, images: list[npt.NDArray[np.uint8]], *, tokens: set[str], risk: str, burned_in: str,
        policy: PixelsSection, regions: str = "",
    ) -> str:
        h = hashlib.sha256()
        settings = {"version": VERSION, "tesseract": tesseract_version(), "policy": dataclasses.asdict(policy),
                    "risk": risk, "burned_in": burned_in, "tokens": sorted(tokens), "regions": regions}
        h.update(json.dumps(settings, sort_keys=True, default=list).encode("utf-8"))
        for image in images:
            h.update(f"{image.shape}{image.dtype}".encode("ascii"))
            h.update(np.ascontiguousarray(image).tobytes())
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # none yet, or unreadable: decided afresh (and overwritten)
            self.misses += 1
            return None
        self.hits += 1
        return record

    def put(self, key: str, record: dict[str, Any]) -> None:
        write_bytes(self._path(key), json.dumps(record, sort_keys=True).encode("utf-8"))
