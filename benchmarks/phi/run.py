"""Residual-PHI check throughput: guards.checks.phi.run on a de-identified tree of N generated instances.

Steps: generate N made-up CT instances (64x64, PHI in headers, free text, nested sequences, private block) with
``benchmarks/deid_throughput/synth.py``; de-identify them with ``guards.deid.deidentify_tree`` under a key drawn
at random in-process (never written or printed); then time ``phi.run`` without OCR on all N files, and with OCR
(``pixels.ocr_all``) on the first ``--ocr-files`` files of the tree, and write the figures as JSON.

    .venv/bin/python benchmarks/phi/run.py --instances 2000 --ocr-files 50 --out /tmp/phi_bench
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from guards.checks import phi
from guards.deid import deidentify_tree
from guards.keys import PseudonymKey
from guards.policy import PixelsSection, ReleasePolicy

log = logging.getLogger("benchmarks.phi")
HERE = Path(__file__).resolve().parent


def _timed_run(release: Path, source: Path, policy: ReleasePolicy, *, ocr: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = phi.run(release, source_dir=source, policy=policy, ocr=ocr)
    seconds = time.perf_counter() - t0
    files = result.examined["files"]
    return {"seconds": round(seconds, 2), "files_per_s": round(files / seconds, 1), "status": result.status,
            "examined": result.examined, "hits": result.findings[0].value,
            "hits_by_category": result.details["hits_by_category"],
            "first_hits": [f.evidence for f in result.findings[1:6]],
            "dates_scoped_to_patient_files": result.details["dates_scoped_to_patient_files"],
            "tokens_by_category": result.details["tokens_by_category"], "skipped": result.details["skipped"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=2000)
    ap.add_argument("--ocr-files", type=int, default=50)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None, help="folder for results.json (default: print only)")
    ap.add_argument("--work", type=Path, default=None,
                    help="keep the generated and de-identified trees here and reuse them on the next run")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sys.path.insert(0, str(HERE.parent / "deid_throughput"))
    from synth import generate  # type: ignore[import-not-found]

    work = args.work or Path(tempfile.mkdtemp(prefix="phi-bench-"))
    try:
        src, deid = work / "src", work / "deid"
        policy = ReleasePolicy()
        deid_s = float("nan")
        if not (deid / "manifest.parquet").is_file():
            shutil.rmtree(src, ignore_errors=True)
            shutil.rmtree(deid, ignore_errors=True)
            generate(src, instances=args.instances, seed=args.seed)
            t0 = time.perf_counter()
            deidentify_tree(src, deid, policy=policy, key=PseudonymKey(os.urandom(32)))
            deid_s = time.perf_counter() - t0
        shutil.rmtree(work / "ocr_subset", ignore_errors=True)
        no_ocr = _timed_run(deid, src, policy, ocr=False)
        sub = work / "ocr_subset"
        sub.mkdir()
        for p in sorted(deid.glob("*/**/*.dcm"))[: args.ocr_files]:
            target = sub / p.relative_to(deid)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
        ocr_policy = ReleasePolicy(pixels=PixelsSection(ocr_all=True))
        with_ocr = _timed_run(sub, src, ocr_policy, ocr=True)
        figures = {
            "instances": args.instances, "seed": args.seed, "deid_seconds": round(deid_s, 2),
            "phi_no_ocr": no_ocr, "phi_ocr_subset": with_ocr,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "cpu_count": os.cpu_count(),
        }
        text = json.dumps(figures, indent=2)
        log.info("figures:\n%s", text)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "results.json").write_text(text + "\n", encoding="utf-8")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
