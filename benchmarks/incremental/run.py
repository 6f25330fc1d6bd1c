"""Incremental nightly runs: de-identification and protection of a second night over a grown source, with and
without reuse of the first night's OCR decisions and noise.

    .venv/bin/python benchmarks/incremental/run.py [--studies 150] [--arrivals 10] [--out FILE]

Night 1 de-identifies and protects ``--studies`` generated studies (the demo's corpus, seed 7) under the shipped
``ReleasePolicy()``. Then ``--arrivals`` new studies (seed 8) arrive with their labels. Night 2 runs the same two
steps twice into separate output folders: once with the defaults (``pixels.reuse`` and ``protect.reuse``: OCR
decisions replayed and protected files carried from ``OUT/private/``), and once with both off, reading and
protecting everything afresh. Reported: wall-clock seconds of each step, files carried, and how many of the
carried files are byte-identical to night 1.
The key is random per run and never printed.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import platform
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from guards import pipeline
from guards.keys import PseudonymKey
from guards.policy import ReleasePolicy
from guards.samples import generate_corpus


def _night(source: Path, out: Path, run_id: str, key: PseudonymKey, policy: ReleasePolicy) -> dict[str, Any]:
    t0 = time.monotonic()
    run = pipeline.begin(source, out, run_id, policy=policy, key=key)
    paths = run.paths
    pipeline.step_deid(run, key=key)
    t1 = time.monotonic()
    protect = pipeline.step_protect(run, key=key)
    t2 = time.monotonic()
    return {"deid_s": round(t1 - t0, 1), "protect_s": round(t2 - t1, 1), "counts": protect["counts"],
            "protect_dir": str(paths.protect)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=150)
    parser.add_argument("--arrivals", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/incremental/results.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(os.cpu_count() or 1)
    key = PseudonymKey(secrets.token_bytes(32))
    policy = ReleasePolicy()
    off = dataclasses.replace(policy, protect=dataclasses.replace(policy.protect, reuse=False),
                              pixels=dataclasses.replace(policy.pixels, reuse=False))
    work = Path(tempfile.mkdtemp(prefix="guard-incremental-"))
    try:
        source = generate_corpus(work / "source", studies=args.studies, seed=7).root
        first = _night(source, work / "out", "night-1", key, policy)
        arrivals = generate_corpus(work / "arrivals", studies=args.arrivals, seed=8)
        for path in arrivals.files:
            target = source / "arrived" / path.relative_to(arrivals.root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        with (source / "labels.csv").open("a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(arrivals.labels.items())
        reused = _night(source, work / "out", "night-2", key, policy)
        afresh = _night(source, work / "out-afresh", "night-2", key, off)
        old = Path(first.pop("protect_dir"))
        new = Path(reused.pop("protect_dir"))
        afresh.pop("protect_dir")
        same = sum(1 for p in old.rglob("*.dcm") if (new / p.relative_to(old)).is_file()
                   and (new / p.relative_to(old)).read_bytes() == p.read_bytes())
        result = {
            "command": f"benchmarks/incremental/run.py --studies {args.studies} --arrivals {args.arrivals}",
            "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                        "load_average_at_start": os.getloadavg()},
            "night_1": first,
            "night_2_reuse": {**reused, "carried_byte_identical": same},
            "night_2_afresh": afresh,
            "deid_speedup": round(afresh["deid_s"] / max(reused["deid_s"], 1e-9), 2),
            "protect_speedup": round(afresh["protect_s"] / max(reused["protect_s"], 1e-9), 2),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
