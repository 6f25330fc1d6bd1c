"""Benchmark: the three model-based checks (membership, unlearnability, attribute) on a synthetic corpus.

Writes a source tree of ``--patients`` x ``--images-per-study`` images at ``--size`` (default 1,000 x 2 = 2,000
images at 64x64; 10 % of patients a minority), a release tree with class-wise noise of ``protect.epsilon``
(8/255), then runs each check in its own child process (so that each peak RSS is that check's own) with the
default policy at ``image_size = --size``. Prints and writes a JSON line per check: seconds, peak RSS (MiB),
status, key figures.

    .venv/bin/python benchmarks/checks_suite/run.py --out /tmp/checks_suite [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

logger = logging.getLogger("checks_suite")
CHECKS = ("membership", "unlearnability", "attribute")


def _policy(size: int):  # type: ignore[no-untyped-def]
    from guards.policy import policy_from_dict

    return policy_from_dict({
        "membership": {"image_size": size},
        "unlearnability": {"image_size": size},
    })


def prepare(out: Path, *, patients: int, images_per_study: int, size: int, seed: int) -> None:
    from corpus import make_corpus, protect_release

    from guards.policy import ReleasePolicy

    t0 = time.monotonic()
    src = make_corpus(out / "source", patients=patients, size=size, seed=seed, images_per_study=images_per_study,
                      signal=0.09)
    protect_release(src, out / "release", epsilon=ReleasePolicy().protect.epsilon, mode="classwise", seed=seed)
    pq.write_table(src.cohort, out / "cohort.parquet")
    logger.info("corpus: %d images x2 trees written in %.1fs", len(src.files), time.monotonic() - t0)


def run_one(out: Path, check: str, *, size: int, device: str) -> dict[str, object]:
    from guards.checks import attribute, membership, unlearnability

    cohort = pq.read_table(out / "cohort.parquet")
    policy = _policy(size)
    t0 = time.monotonic()
    if check == "membership":
        r = membership.run(out / "release", source_dir=out / "source", cohort=cohort, policy=policy, device=device)
        figures = {k: r.details["metrics"].get("all", {}).get(k) for k in ("tpr_1pct", "auc")}
    elif check == "unlearnability":
        r = unlearnability.run(out / "release", source_dir=out / "source", cohort=cohort, policy=policy,
                               device=device)
        figures = dict(r.details["balanced_accuracy"]["all"])
    else:
        r = attribute.run(out / "release", cohort=cohort, policy=policy)
        figures = {f.subgroup: f.value for f in r.findings if f.subgroup.endswith("=*")}
    seconds = time.monotonic() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"check": check, "seconds": round(seconds, 1), "peak_rss_mib": round(peak_mib, 1), "status": r.status,
            "examined": r.examined, "figures": figures, "device": device}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--images-per-study", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=20260101)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", choices=CHECKS, help=argparse.SUPPRESS)  # child mode: one check
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.only:
        print(json.dumps(run_one(args.out, args.only, size=args.size, device=args.device)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.out / "cohort.parquet").is_file():
        prepare(args.out, patients=args.patients, images_per_study=args.images_per_study, size=args.size,
                seed=args.seed)
    rows = []
    t0 = time.monotonic()
    for check in CHECKS:
        proc = subprocess.run(
            [sys.executable, __file__, "--out", str(args.out), "--size", str(args.size), "--device", args.device,
             "--only", check],
            check=True, capture_output=True, text=True,
        )
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        logger.info("%s", json.dumps(row))
    total = round(time.monotonic() - t0, 1)
    summary = {"total_seconds": total, "checks": rows}
    (args.out / "results.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    logger.info("total %.1fs", total)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
