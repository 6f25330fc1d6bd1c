"""Benchmark: the model-inversion check (issue 18): false-alarm rate on balanced cells, and its time on 2,000
images at 64x64 beside the membership check's time in the same run.

1. False alarms: ``--seeds`` synthetic releases (``benchmarks/checks_suite/corpus.py``, no real patient data) of
   ``--fa-patients`` patients with one image each at ``--fa-size``, half of them in the minority group, so that
   every label x subgroup cell (label x sex, x age band, x ethnic group) holds 30 or more patients; the release is
   the source with class-wise noise of ``protect.epsilon``. Nothing in these releases lets one patient stand out,
   so any ``fail`` finding is a false alarm. Default policy but ``image_size = --fa-size``.
2. Time: the checks_suite corpus (``--patients`` x 2 images at ``--size``, 10 % minority, class-wise noise of
   8/255), then the membership and the inversion check, each in its own child process (peak RSS is that check's),
   default policy at ``image_size = --size``.

    .venv/bin/python benchmarks/inversion/run.py --out /tmp/inversion_bench [--device cpu|cuda]

Writes ``--out/results.json`` and prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "checks_suite"))
sys.path.insert(0, str(HERE.parents[1]))

logger = logging.getLogger("inversion_bench")


def _policy(size: int):  # type: ignore[no-untyped-def]
    from guards.policy import policy_from_dict

    return policy_from_dict({"membership": {"image_size": size}, "inversion": {"image_size": size}})


def false_alarms(out: Path, *, seeds: int, first_seed: int, patients: int, size: int,
                 device: str) -> dict[str, Any]:
    from corpus import make_corpus, protect_release

    from guards.checks import inversion
    from guards.policy import ReleasePolicy

    rows = []
    for seed in range(first_seed, first_seed + seeds):
        work = out / f"fa-{seed}"
        shutil.rmtree(work, ignore_errors=True)
        src = make_corpus(work / "source", patients=patients, size=size, seed=seed, images_per_study=1,
                          minority_share=0.5)
        protect_release(src, work / "release", epsilon=ReleasePolicy().protect.epsilon, mode="classwise", seed=seed)
        t0 = time.monotonic()
        r = inversion.run(work / "release", source_dir=work / "source", cohort=src.cohort, policy=_policy(size),
                          device=device)
        seconds = time.monotonic() - t0
        cells = r.details["proxies"]["protected"]["cells"]
        alpha_cell = r.details["bonferroni"]["threshold"]
        auc_max = ReleasePolicy().inversion.auc_max
        row = {
            "seed": seed, "seconds": round(seconds, 1), "status": r.status,
            "failed": sorted({f.subgroup for f in r.findings if f.status == "fail"}),
            # the first rule tried (significance after Bonferroni and a point AUC above auc_max), for comparison
            "failed_significance_only": sorted(n for n, c in cells.items() if c["p"] <= alpha_cell
                                               and c["auc"] > auc_max),
            "cells_tested": r.examined["cells_tested"], "cells_too_few_patients": r.examined["cells_too_few_patients"],
            "smallest_tested_cell": min(c["training"] + c["held_out"] for c in cells.values()),
            "max_auc": max(c["auc"] for c in cells.values()),
            "max_lower": max(c["lower"] for c in cells.values()),
            "min_p": min(c["p"] for c in cells.values()),
            "bonferroni_threshold": alpha_cell,
            "auc_all": cells["all"]["auc"],
            "auc_all_clean": r.details["proxies"]["clean"]["cells"]["all"]["auc"],
            "accuracy_held_out": r.details["proxies"]["protected"]["accuracy_held_out"],
        }
        rows.append(row)
        logger.info("false alarms: %s", json.dumps(row))
        shutil.rmtree(work, ignore_errors=True)
    flagged = sum(1 for r in rows if r["failed"])
    flagged_first = sum(1 for r in rows if r["failed_significance_only"])
    return {"seeds": [first_seed, first_seed + seeds - 1], "patients": patients, "size": size, "flagged": flagged,
            "false_alarm_rate": flagged / max(seeds, 1),
            "flagged_significance_only": flagged_first, "runs": rows}


def prepare(out: Path, *, patients: int, size: int, seed: int) -> None:
    from corpus import make_corpus, protect_release

    from guards.policy import ReleasePolicy

    src = make_corpus(out / "source", patients=patients, size=size, seed=seed, images_per_study=2, signal=0.09)
    protect_release(src, out / "release", epsilon=ReleasePolicy().protect.epsilon, mode="classwise", seed=seed)
    pq.write_table(src.cohort, out / "cohort.parquet")


def run_one(out: Path, check: str, *, size: int, device: str) -> dict[str, Any]:
    from guards.checks import inversion, membership

    cohort = pq.read_table(out / "cohort.parquet")
    t0 = time.monotonic()
    module = inversion if check == "inversion" else membership
    r = module.run(out / "release", source_dir=out / "source", cohort=cohort, policy=_policy(size), device=device)
    seconds = time.monotonic() - t0
    if check == "inversion":
        figures: dict[str, Any] = {
            view: {"auc_all": r.details["proxies"][view]["cells"].get("all", {}).get("auc"),
                   "accuracy_held_out": r.details["proxies"][view]["accuracy_held_out"],
                   "rero": r.details["proxies"][view]["rero"]}
            for view in ("protected", "clean")
        }
    else:
        figures = {k: r.details["metrics"].get("all", {}).get(k) for k in ("tpr_1pct", "auc")}
    return {"check": check, "seconds": round(seconds, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "status": r.status, "examined": r.examined, "figures": figures, "device": device}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--fa-patients", type=int, default=300)
    ap.add_argument("--fa-size", type=int, default=32)
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=20260101)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-false-alarms", action="store_true")
    ap.add_argument("--skip-time", action="store_true")
    ap.add_argument("--only", choices=("membership", "inversion"), help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.only:
        print(json.dumps(run_one(args.out / "timing", args.only, size=args.size, device=args.device)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    if not args.skip_false_alarms:
        results["false_alarms"] = false_alarms(args.out, seeds=args.seeds, first_seed=args.first_seed,
                                               patients=args.fa_patients, size=args.fa_size, device=args.device)
    if not args.skip_time:
        timing = args.out / "timing"
        if not (timing / "cohort.parquet").is_file():
            t0 = time.monotonic()
            prepare(timing, patients=args.patients, size=args.size, seed=args.seed)
            logger.info("corpus written in %.1fs", time.monotonic() - t0)
        rows = []
        for check in ("membership", "inversion"):
            proc = subprocess.run(
                [sys.executable, __file__, "--out", str(args.out), "--size", str(args.size), "--device", args.device,
                 "--only", check],
                check=True, capture_output=True, text=True,
            )
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            logger.info("time: %s", json.dumps(row))
        results["time"] = rows
    (args.out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
