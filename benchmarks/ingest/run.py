"""Ingest speed: files/s of guards.ingest on pydicom's test files, pydicom-data and a generated corpus.

The baseline is pydicom's bare header read (``dcmread(stop_before_pixels=True, force=True)``, one per file,
nothing written): the difference is what ingest's checks, checksums, quarantine copies and Parquet cost.
Each figure is the median of ``--repeats`` runs. Peak RSS is the whole process's maximum.

    .venv/bin/python benchmarks/ingest/run.py --studies 200 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import tempfile
import time
import warnings
from pathlib import Path

from pydicom import dcmread

from guards import testdata
from guards.ingest import ingest
from guards.policy import IngestSection
from guards.samples import generate_corpus

logger = logging.getLogger("benchmarks.ingest")


def _bare(root: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p in root.rglob("*"):
            if p.is_file():
                try:
                    dcmread(p, stop_before_pixels=True, force=True)
                except Exception:  # noqa: BLE001 - the baseline only times reads; failures are expected
                    pass


def _median_seconds(fn: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=200, help="generated studies (seed 5)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pydicom").setLevel(logging.ERROR)  # odd values in test files are expected
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        generated = Path(tmp) / "generated"
        generate_corpus(generated, studies=args.studies, seed=5)
        sources = {"pydicom test files": testdata.pydicom_test_dir(), "generated": generated}
        data_dir = testdata.pydicom_data_dir()
        if data_dir is not None:
            sources["pydicom-data"] = data_dir
        for name, root in sources.items():
            out = Path(tmp) / f"out-{len(results)}"
            last = {}

            def run(root: Path = root, out: Path = out, last: dict[str, object] = last) -> None:
                last["result"] = ingest(root, out_dir=out, policy=IngestSection())

            seconds = _median_seconds(run, args.repeats)
            bare = _median_seconds(lambda root=root: _bare(root), args.repeats)
            counts = last["result"].counts  # type: ignore[attr-defined]
            mib = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20
            results.append({"source": name, "counts": counts, "MiB": round(mib, 1), "ingest_s": round(seconds, 2),
                            "files_per_s": round(counts["seen"] / seconds, 1), "bare_dcmread_s": round(bare, 2)})
            logger.warning("%s", results[-1])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {"results": results, "peak_rss_mib": round(peak, 1), "repeats": args.repeats}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    logger.warning("peak RSS %.1f MiB; written %s", peak, args.out)


if __name__ == "__main__":
    main()
