"""Benchmark: Clean Pixel Data (PS3.15 E.3.1) with tesseract OCR, on CPU.

Measures, one process, one tesseract thread (``OMP_THREAD_LIMIT=1``):

1. synthetic burned-in instances (guards.deid.pixel_synth, ``--per-variant`` per photometric variant, seeded):
   clean_pixel_data time per image, share of images where an independent OCR of the cleaned image finds none
   of the drawn tokens, byte identity outside the boxes, share of pixels boxed;
2. guards.samples' generated corpus when that module is installed (same figures, on ``corpus.burned_in``);
3. real ultrasounds (pydicom-data ALOKA, US1 JPEG 2000 lossless and lossy, OBXXXX1A; deid-data GREYSCALE and RGB;
   the 30-frame cine with ``--multiframe``): time, tokens left, and the over-cleaning figure: the share of the
   image region (the file's ultrasound regions, else the fallback centre area of guards.deid.pixel_regions)
   whose displayed pixels cleaning changed;
4. the false-positive rate on every text-free CT and MR image among pydicom's test files (instances that were
   changed or boxed), with undecodable ones counted apart (they are quarantined, not cleaned);
5. the upscale variant: token recall of OCR at native size against 2x pixel repetition on small text.

    .venv/bin/python benchmarks/ocr/run.py --per-variant 10 --out benchmarks/ocr/results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from guards.deid.ocr import ocr_words  # noqa: E402
from guards.deid.pixel_display import display_frames  # noqa: E402
from guards.deid.pixel_phi import normalize  # noqa: E402
from guards.deid.pixel_regions import ImageRegions, fallback_rect, image_regions  # noqa: E402
from guards.deid.pixel_synth import VARIANTS, burned_in_sample  # noqa: E402
from guards.deid.pixels import PixelOutcome, clean_pixel_data  # noqa: E402
from guards.policy import PixelsSection  # noqa: E402
from guards.testdata import deid_data_dir, pydicom_data_dir, pydicom_test_files  # noqa: E402

log = logging.getLogger("benchmarks.ocr")
POLICY = PixelsSection()
REAL = [
    ("pydicom-data", "gdcm-US-ALOKA-16.dcm", ["WESTWAY", "MEDICAL", "24MAY"]),
    ("pydicom-data", "US1_J2KR.dcm", ["BAPTIST", "MED", "CTR", "630P630", "78F78", "44CG43"]),
    ("pydicom-data", "US1_J2KI.dcm", ["BAPTIST", "MED", "CTR", "630P630", "78F78", "44CG43"]),
    ("pydicom-data", "OBXXXX1A.dcm", []),
    ("deid-data", "ultrasounds/GREYSCALE_IMAGE.dcm", ["PATIENTFI", "00079241539", "08291951", "03022017", "CLEVELAN"]),
    (
        "deid-data",
        "ultrasounds/RGB_IMAGE.dcm",
        ["ZZZDOWNTIME", "MARY", "4142020", "120907058", "00047431395", "CLEVELAND"],
    ),
]
#: The 30-frame cine (technical overlay only, no PHI drawn), with --multiframe: about 30 tesseract calls.
MULTIFRAME = ("deid-data", "ultrasounds/ultrasound-multiframe.dcm", [])


def _text(ds: Dataset, *, scale: int = 1) -> str:
    return "".join(normalize(w.text) for im in display_frames(ds, ds.pixel_array) for w in ocr_words(im, scale=scale))


def _left(ds: Dataset, tokens: list[str]) -> list[str]:
    text = _text(ds)
    return [t for t in tokens if len(normalize(t)) >= 3 and normalize(t) in text]


def _raw(ds: Dataset) -> np.ndarray:
    frames, spp = int(ds.get("NumberOfFrames", 1) or 1), int(ds.get("SamplesPerPixel", 1))
    dtype = np.uint8 if int(ds.BitsAllocated) == 8 else np.uint16
    count = frames * int(ds.Rows) * int(ds.Columns) * spp
    return np.frombuffer(ds.PixelData, dtype=dtype, count=count).reshape(frames, int(ds.Rows), int(ds.Columns), spp)


def _outside_identical(before: np.ndarray, ds: Dataset, outcome: PixelOutcome) -> tuple[bool, float]:
    keep = np.ones(before.shape[:3], dtype=bool)
    for f, x0, y0, x1, y1 in outcome.boxes:
        keep[f, y0:y1, x0:x1] = False
    return bool(np.array_equal(before[keep], _raw(ds)[keep])), float(1.0 - keep.mean())


def _cpu() -> float:
    """CPU seconds of this process and its finished children (tesseract): a figure the machine's load does not
    inflate, unlike wall time."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _run_one(ds: Dataset, tokens: list[str]) -> dict[str, object]:
    native = ds.file_meta.TransferSyntaxUID.is_compressed is False
    before = _raw(ds).copy() if native else None
    start, cpu = time.perf_counter(), _cpu()
    outcome = clean_pixel_data(ds, policy=POLICY)
    seconds, cpu = time.perf_counter() - start, _cpu() - cpu
    row: dict[str, object] = {"action": outcome.action, "seconds": seconds, "words": outcome.ocr_words_examined}
    row["cpu_seconds"] = cpu
    row["frames"] = outcome.frames_examined
    if outcome.action == "cleaned":
        row["left"] = _left(ds, tokens)
        if before is not None:
            row["identical_outside"], row["boxed_share"] = _outside_identical(before, ds, outcome)
    return row


def _summary(rows: list[dict[str, object]]) -> dict[str, object]:
    times = [float(r["seconds"]) for r in rows]  # type: ignore[arg-type]
    cleaned = [r for r in rows if r["action"] == "cleaned"]
    hidden = [r for r in rows if r["action"] == "quarantine" or (r["action"] == "cleaned" and not r["left"])]
    boxed = [float(r["boxed_share"]) for r in cleaned if "boxed_share" in r]  # type: ignore[arg-type]
    return {
        "images": len(rows),
        "cleaned": len(cleaned),
        "quarantined": sum(r["action"] == "quarantine" for r in rows),
        "all_tokens_hidden_share": len(hidden) / len(rows) if rows else 0.0,
        "identical_outside_boxes": all(r.get("identical_outside", True) for r in cleaned),
        "mean_boxed_share": statistics.mean(boxed) if boxed else 0.0,
        "seconds_per_image_median": statistics.median(times) if times else 0.0,
        "seconds_per_image_mean": statistics.mean(times) if times else 0.0,
        "cpu_seconds_per_image_median": statistics.median(float(r["cpu_seconds"]) for r in rows) if rows else 0.0,  # type: ignore[arg-type]
        "seconds_per_frame_mean": sum(times) / max(1, sum(int(r["frames"]) for r in rows)),  # type: ignore[call-overload]
    }


def synthetic(per_variant: int, seed: int) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    by_variant: dict[str, list[dict[str, object]]] = {v: [] for v in VARIANTS}
    for _ in range(per_variant):
        for variant in VARIANTS:
            sample = burned_in_sample(rng, variant=variant)
            by_variant[variant].append(_run_one(sample.dataset, sample.tokens))
    everything = [r for rows in by_variant.values() for r in rows]
    return {"all": _summary(everything), **{v: _summary(rows) for v, rows in by_variant.items()}}


def generated(studies: int, seed: int, limit: int) -> dict[str, object] | None:
    try:
        from guards.samples import generate_corpus  # type: ignore[import-not-found]
    except ImportError:
        log.warning("guards.samples is not installed: generated-corpus figures skipped")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        corpus = generate_corpus(Path(tmp), studies=studies, seed=seed)
        rows = [
            _run_one(pydicom.dcmread(Path(corpus.root) / rel), list(tokens))
            for rel, tokens in sorted(corpus.burned_in.items())[:limit]
        ]
    return _summary(rows)


def _image_area(ds: Dataset, rows: int, cols: int) -> tuple[np.ndarray, str]:
    """The image region of the over-cleaning figure: the ultrasound regions (PS3.3 C.8.5.5) when the file has
    them, else the fallback centre area (frame minus top, bottom and side text bands), as pixels.py uses them."""
    regions = image_regions(ds, rows, cols)
    if not regions.rects:
        regions = ImageRegions((fallback_rect(rows, cols),), "fallback centre", rows, cols)
    return regions.mask(), regions.source


def _blocks_changed(changed: np.ndarray, area: np.ndarray, size: int = 16) -> float:
    """Share of the size x size blocks lying wholly in the image region with any pixel changed (the issue's
    block figure)."""
    frames, rows, cols = changed.shape
    hit = total = 0
    for y in range(0, rows - size + 1, size):
        for x in range(0, cols - size + 1, size):
            if area[y : y + size, x : x + size].all():
                total += frames
                hit += int(changed[:, y : y + size, x : x + size].any(axis=(1, 2)).sum())
    return hit / total if total else 0.0


def real(*, multiframe: bool = False) -> dict[str, object]:
    """Per real ultrasound: tokens read before cleaning, tokens left after (independent OCR), and the over-cleaning
    figure: the share of the image region's displayed pixels (all frames) that cleaning changed."""
    out: dict[str, object] = {}
    for package, name, tokens in REAL + ([MULTIFRAME] if multiframe else []):
        root = pydicom_data_dir() if package == "pydicom-data" else deid_data_dir()
        if root is None or not (root / name).exists():
            continue
        ds = pydicom.dcmread(root / name)
        before = np.stack(display_frames(ds, ds.pixel_array))
        area, source = _image_area(ds, before.shape[1], before.shape[2])
        read_before = [t for t in tokens if normalize(t) in _text(ds)]
        row = _run_one(ds, tokens)
        after = np.stack(display_frames(ds, ds.pixel_array)) if row["action"] == "cleaned" else before
        changed = before != after
        row["tokens_read_before"] = read_before
        row["image_region"] = source
        row["image_region_share_of_frame"] = float(area.mean())
        row["over_cleaned_share"] = float(changed[:, area].mean())
        row["changed_share_of_frame"] = float(changed.mean())
        row["over_cleaned_blocks_share"] = _blocks_changed(changed, area)
        row["text_hidden"] = row["action"] == "quarantine" or (row["action"] == "cleaned" and not row["left"])
        out[name] = row
    rows = [r for r in out.values() if isinstance(r, dict)]
    with_text = [r for r in rows if r["tokens_read_before"]]
    out["summary"] = {
        "files": len(rows),
        "text_hidden_share": sum(bool(r["text_hidden"]) for r in with_text) / len(with_text) if with_text else 0.0,
        "tokens_read_before": sum(len(r["tokens_read_before"]) for r in with_text),
        "tokens_left": sum(len(r.get("left", [])) for r in with_text),
        "over_cleaned_share_max": max(float(r["over_cleaned_share"]) for r in rows) if rows else 0.0,
        "over_cleaned_share_mean": statistics.mean(float(r["over_cleaned_share"]) for r in rows) if rows else 0.0,
        "over_cleaned_blocks_share_max": max(float(r["over_cleaned_blocks_share"]) for r in rows) if rows else 0.0,
    }
    return out


def false_positives() -> dict[str, object]:
    rows: dict[str, str] = {}
    seconds: list[float] = []
    for path in pydicom_test_files():
        try:
            ds = pydicom.dcmread(path)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError, KeyError, AttributeError):
            continue
        if str(ds.get("Modality", "")) not in ("CT", "MR") or "PixelData" not in ds:
            continue
        start = time.perf_counter()
        outcome = clean_pixel_data(ds, policy=POLICY)
        seconds.append(time.perf_counter() - start)
        undecodable = outcome.action == "quarantine" and "cannot be decoded" in outcome.reason
        rows[path.name] = "undecodable" if undecodable else ("flagged" if outcome.boxes else "clean")
    read = [k for k, v in rows.items() if v != "undecodable"]
    flagged = [k for k, v in rows.items() if v == "flagged"]
    return {
        "images_read": len(read),
        "flagged": flagged,
        "false_positive_rate": len(flagged) / len(read) if read else 0.0,
        "undecodable_quarantined": [k for k, v in rows.items() if v == "undecodable"],
        "seconds_per_image_mean": statistics.mean(seconds) if seconds else 0.0,
    }


def upscale(count: int, seed: int) -> dict[str, object]:
    """Token recall of OCR before cleaning, native against 2x, on small-font synthetic images and the ALOKA file."""
    result: dict[str, object] = {}
    for scale in (1, 2):
        found = total = 0
        start = time.perf_counter()
        local = np.random.default_rng(seed)
        for _ in range(count):
            sample = burned_in_sample(local, variant="mono2_8", rows=256, cols=384)
            text = _text(sample.dataset, scale=scale)
            found += sum(normalize(t) in text for t in sample.tokens)
            total += len(sample.tokens)
        result[f"scale_{scale}"] = {"recall": found / total, "seconds_per_image": (time.perf_counter() - start) / count}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-variant", type=int, default=10)
    parser.add_argument("--seed", type=int, default=20260101)
    parser.add_argument("--studies", type=int, default=24)
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", choices=("all", "synthetic", "real"), default="all")
    parser.add_argument("--multiframe", action="store_true", help="also the 30-frame deid-data cine in the real set")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.only == "real":
        results: dict[str, object] = {"real": real(multiframe=args.multiframe)}
    else:
        results = {"synthetic": synthetic(args.per_variant, args.seed)}
    if args.only == "all":
        results |= {
            "generated": generated(args.studies, args.seed, args.limit),
            "real": real(multiframe=args.multiframe),
            "false_positives": false_positives(),
            "upscale": upscale(12, args.seed),
        }
    text = json.dumps(results, indent=2, default=str)
    log.info("results\n%s", text)
    if args.out is not None:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
