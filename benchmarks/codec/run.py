"""Encode cost of the lossless syntaxes Release Guard writes changed pixels in (issue 17, guards.codec).

For CT (pydicom's CT_small), MR (MR_small) and an ultrasound multi-frame (pydicom-data's color3d_jpeg_baseline,
120 RGB frames of 480 x 640; pydicom's examples_ybr_color, 30 frames of 240 x 320, when pydicom-data is absent),
and with pydicom-data also a 512 x 512 CT (693_UNCR), a 1024 x 1024 MR (MR2_UNCR) and a 10-frame MR (emri_small),
decoded once to native pixels: the time to encode them as JPEG-LS Lossless (pyjpegls), JPEG 2000 Lossless
(pylibjpeg-openjpeg) and RLE Lossless (pylibjpeg-rle), the size, the compression ratio, the time to decode the
result again (what guards.codec.store_pixels spends to check the round trip), and in the same run the ratio of
JPEG 2000's encode time to JPEG-LS's. Every encoding is checked to decode to exactly the native array.

    .venv/bin/python benchmarks/codec/run.py --repeats 5 --json benchmarks/codec/results.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels.utils import compress, pixel_array
from pydicom.uid import UID, JPEG2000Lossless, JPEGLSLossless, RLELossless

from guards import codec
from guards.testdata import pydicom_data_dir, pydicom_test_dir

SYNTAXES: dict[str, UID] = {"jpeg-ls": JPEGLSLossless, "jpeg2000": JPEG2000Lossless, "rle": RLELossless}


def _inputs() -> list[tuple[str, Path]]:
    test, data = pydicom_test_dir(), pydicom_data_dir()
    us = (data / "color3d_jpeg_baseline.dcm") if data is not None and (data / "color3d_jpeg_baseline.dcm").is_file() \
        else test / "examples_ybr_color.dcm"
    inputs = [("CT", test / "CT_small.dcm"), ("MR", test / "MR_small.dcm"), ("US multi-frame", us)]
    if data is not None:  # full-size slices beside pydicom's small ones
        inputs += [("CT 512", data / "693_UNCR.dcm"), ("MR 1024", data / "MR2_UNCR.dcm"),
                   ("MR multi-frame", data / "emri_small.dcm")]
    return [(label, path) for label, path in inputs if path.is_file()]


def _native(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            codec.decompress(ds)
    return ds


def _measure(ds: Dataset, uid: UID, repeats: int) -> dict[str, Any]:
    want = np.asarray(pixel_array(ds, raw=True))
    encode_s, decode_s, size = [], [], 0
    for _ in range(repeats):
        trial = copy.deepcopy(ds)  # compress() replaces Pixel Data and the file meta's syntax in place
        t0 = time.perf_counter()
        compress(trial, uid, generate_instance_uid=False)
        encode_s.append(time.perf_counter() - t0)
        size = len(trial.PixelData)
        t0 = time.perf_counter()
        back = np.asarray(pixel_array(trial, raw=True))
        decode_s.append(time.perf_counter() - t0)
        if not np.array_equal(back, want):
            raise SystemExit(f"{uid.name} did not round-trip")
    raw = len(ds.PixelData)
    encode = statistics.median(encode_s)
    return {"encode_s": encode, "decode_s": statistics.median(decode_s), "bytes": size, "ratio": raw / size,
            "encode_mb_s": raw / encode / 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="encodes per syntax and input (median reported)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "load_before": os.getloadavg()}, "inputs": []}
    print(f"{'input':16s} {'frames x rows x cols x spp':>26s} {'raw MB':>7s} | "
          + " | ".join(f"{k:>8s} s  ratio   dec s" for k in SYNTAXES) + " | j2k/jls time")
    for label, path in _inputs():
        ds = _native(path)
        shape = (int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns), int(ds.SamplesPerPixel))
        row: dict[str, Any] = {"input": label, "file": path.name, "shape": shape, "bits": int(ds.BitsAllocated),
                               "raw_bytes": len(ds.PixelData)}
        for name, uid in SYNTAXES.items():
            row[name] = _measure(ds, uid, args.repeats)
        row["j2k_over_jls_encode"] = row["jpeg2000"]["encode_s"] / row["jpeg-ls"]["encode_s"]
        results["inputs"].append(row)
        cells = " | ".join(f"{row[k]['encode_s']:10.4f} {row[k]['ratio']:6.2f} {row[k]['decode_s']:7.4f}"
                           for k in SYNTAXES)
        print(f"{label:16s} {'x'.join(map(str, shape)):>26s} {row['raw_bytes'] / 1e6:7.2f} | {cells} | "
              f"{row['j2k_over_jls_encode']:5.2f}x")
    results["machine"]["load_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
