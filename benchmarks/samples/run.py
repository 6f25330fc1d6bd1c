"""Benchmark: guards.samples generation speed and the quality of what it generates.

Measures, in one process:

1. wall time and peak RSS of ``generate_corpus`` for each ``--studies`` size (files, bytes, burned-in files);
2. the share of burned-in tokens (ASCII ones: the English model cannot spell accented names) that tesseract
   reads back exactly from the native-resolution pixels, on the first ``--ocr-images`` burned-in images;
3. the held-out balanced accuracy of a numpy logistic regression on 16x16 downsampled radiographs
   (``--learn-studies`` studies at 64x64, 70/30 split, fixed seed), i.e. how learnable the nodule label is.

    .venv/bin/python benchmarks/samples/run.py --studies 24 500 --out benchmarks/samples/results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from guards.samples import Population, generate_corpus  # noqa: E402

logger = logging.getLogger("benchmarks.samples")


def _timing(n: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        corpus = generate_corpus(Path(d), studies=n, seed=seed)
        seconds = time.perf_counter() - start
        return {"studies": n, "seconds": round(seconds, 2), "files": len(corpus.files),
                "bytes": sum(p.stat().st_size for p in corpus.files), "burned_in_files": len(corpus.burned_in),
                "patients": len(corpus.demographics)}


def _ocr_rate(images: int, seed: int) -> dict[str, Any]:
    if shutil.which("tesseract") is None:
        return {"skipped": "tesseract not installed"}
    with tempfile.TemporaryDirectory() as d:
        corpus = generate_corpus(Path(d) / "c", studies=max(20, images * 6), seed=seed)
        read = total = 0
        for rel, tokens in list(corpus.burned_in.items())[:images]:
            ds = dcmread(corpus.root / rel)
            a = ds.pixel_array.astype(np.float32)
            if ds.PhotometricInterpretation == "MONOCHROME1":
                a = 4095 - a
            png = Path(d) / "frame.png"
            Image.fromarray((a / 16).astype(np.uint8)).save(png)
            text = subprocess.run(["tesseract", str(png), "-", "--psm", "11"], capture_output=True, text=True,
                                  check=True, env={"OMP_THREAD_LIMIT": "1", "PATH": "/usr/bin:/bin"}).stdout
            compact = "".join(text.split())
            for token in tokens:
                if token.isascii():
                    total += 1
                    read += token in compact
        return {"images": min(images, len(corpus.burned_in)), "tokens": total, "read_exactly": read,
                "share": round(read / total, 3) if total else None}


def _learnability(studies: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        corpus = generate_corpus(Path(d), studies=studies, seed=seed, image_size=64,
                                 population=Population(ct_share=0.0, burned_in_share=0.0))
        xs, ys = [], []
        for path in corpus.files:
            ds = dcmread(path)
            a = ds.pixel_array.astype(np.float32) / 4095
            if ds.PhotometricInterpretation == "MONOCHROME1":
                a = 1 - a
            xs.append(a.reshape(16, 4, 16, 4).mean(axis=(1, 3)).ravel())
            ys.append(corpus.labels[ds.StudyInstanceUID])
    x, y = np.array(xs), np.array(ys, dtype=np.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    cut = int(0.7 * len(y))
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(800):
        p = 1 / (1 + np.exp(-(x[:cut] @ w + b)))
        w -= 0.1 * (x[:cut].T @ (p - y[:cut]) / len(p) + 0.01 * w)
        b -= 0.1 * float(np.mean(p - y[:cut]))
    pred = (x[cut:] @ w + b) > 0
    tpr = float(np.mean(pred[y[cut:] == 1]))
    tnr = float(np.mean(~pred[y[cut:] == 0]))
    return {"studies": studies, "held_out": len(y) - cut, "balanced_accuracy": round((tpr + tnr) / 2, 3),
            "prevalence": round(float(y.mean()), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--studies", type=int, nargs="+", default=[24, 500])
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--ocr-images", type=int, default=12)
    parser.add_argument("--learn-studies", type=int, default=400)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results: dict[str, Any] = {"timing": [_timing(n, args.seed) for n in args.studies]}
    results["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    results["ocr"] = _ocr_rate(args.ocr_images, args.seed)
    results["learnability"] = _learnability(args.learn_studies, args.seed)
    text = json.dumps(results, indent=2)
    logger.info("%s", text)
    if args.out:
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
