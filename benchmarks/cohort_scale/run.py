"""Benchmark: a synthetic 100,000-study cohort validated (GX representation suite), risk-scored (reid) and
remediated; wall time per stage, peak RSS (resource.getrusage) and peak traced heap (tracemalloc).

    .venv/bin/python benchmarks/cohort_scale/run.py --rows 100000 --seed 5

The cohort is synthetic (no patient data): a seeded numpy Generator draws sexes, ages, ethnic groups with two
small minorities, sizes, weights, study years, devices, sites and body parts, and excludes ~3% of studies
(more of one minority, so that the exclusion-disparity expectation has something to find).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from guards.cohort import COHORT_SCHEMA, age_band  # noqa: E402
from guards.policy import ReleasePolicy  # noqa: E402

logger = logging.getLogger("cohort_scale")


def synthetic_cohort(rows: int, *, rng: np.random.Generator) -> pa.Table:
    """A cohort table (COHORT_SCHEMA) of ``rows`` studies of about rows/1.5 patients."""
    patients = max(1, int(rows / 1.5))
    pid = rng.integers(0, patients, size=rows)
    sex = np.where(rng.random(patients) < 0.5, "F", "M")[pid]
    age = np.clip(rng.normal(55, 18, size=patients), 0, 100).astype(int)[pid]
    ethnic = rng.choice(["A", "B", "C", "D"], p=[0.80, 0.16, 0.03, 0.01], size=patients)[pid]
    weight = np.round(rng.normal(75, 14, size=patients), 1)[pid]
    height = np.round(rng.normal(1.70, 0.1, size=patients), 2)[pid]
    year = rng.integers(2015, 2026, size=rows)
    maker = rng.choice(["ACME", "Brightfield", "Corona"], p=[0.6, 0.3, 0.1], size=rows)
    model = np.char.add(maker, np.char.add(" M", rng.integers(1, 4, size=rows).astype(str)))
    site = rng.choice([f"Site {i}" for i in range(6)], size=rows)
    body = rng.choice(["CHEST", "ABDOMEN", "HEAD", "KNEE"], p=[0.5, 0.2, 0.2, 0.1], size=rows)
    label = (rng.random(rows) < 0.3).astype(int)
    excluded = rng.random(rows) < np.where(ethnic == "D", 0.15, 0.03)
    bands = ReleasePolicy().cohort.age_bands
    band_of = {a: age_band(int(a), bands) for a in range(0, 101)}
    cols: dict[str, Any] = {
        "StudyInstanceUID": [f"2.25.{i}" for i in range(rows)],
        "PatientID": [f"RG{p:010d}" for p in pid],
        "label": label, "sex": sex, "age_band": [band_of[a] for a in age], "ethnic_group": ethnic,
        "modality": np.full(rows, "CR"), "manufacturer": maker, "model": model, "body_part": body, "site": site,
        "study_year": year.astype(str), "n_instances": rng.integers(1, 5, size=rows), "included": ~excluded,
        "exclusion_reason": np.where(excluded, "burned-in text", ""),
        "PatientSex": sex, "PatientAge": [f"{a:03d}Y" for a in age], "EthnicGroup": ethnic,
        "PatientSize": height.astype(str), "PatientWeight": weight.astype(str), "StudyYear": year.astype(str),
        "Manufacturer": maker, "ManufacturerModelName": model, "InstitutionName": site, "BodyPartExamined": body,
    }
    arrays = {k: pa.array(v if isinstance(v, list) else np.asarray(v).tolist(), type=COHORT_SCHEMA.field(k).type)
              for k, v in cols.items()}
    return pa.table(arrays, schema=COHORT_SCHEMA)


def measure(name: str, fn: Callable[[], Any], *, traced: bool) -> tuple[Any, dict[str, Any]]:
    if traced:
        tracemalloc.start()
    start = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - start
    figures: dict[str, Any] = {"stage": name, "wall_s": round(wall, 2)}
    if traced:
        figures["traced_peak_mib"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        tracemalloc.stop()
    figures["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    logger.info("%s", figures)
    return out, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--tracemalloc", action="store_true", help="also trace heap peaks (slower; separate run)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)

    from guards.checks import reid, representation
    from guards.remediate import remediate

    policy = ReleasePolicy().with_overrides({"representation.required": ["ethnic_group=D"]})
    rng = np.random.default_rng(args.seed)
    rows: list[dict[str, Any]] = []
    cohort, f = measure("build synthetic cohort", lambda: synthetic_cohort(args.rows, rng=rng), traced=args.tracemalloc)
    rows.append(f)
    with tempfile.TemporaryDirectory() as tmp:
        rep, f = measure("representation (GX suite + Data Docs)", lambda: representation.run(
            cohort, source_index=None, policy=policy, report_dir=Path(tmp)), traced=args.tracemalloc)
        rows.append({**f, "status": rep.status, "expectations": rep.examined["expectations"],
                     "failing": [f"{x.subgroup} {x.metric}={x.value} (limit {x.threshold})"
                                 for x in rep.findings if x.status == "fail"]})
    risk, f = measure("reid risk", lambda: reid.run(cohort, policy=policy), traced=args.tracemalloc)
    rows.append({**f, "status": risk.status, "records": risk.examined["records"],
                 "k": risk.details["overall"]["k"], "max_risk": risk.details["overall"]["prosecutor_max"],
                 "records_above": risk.details["overall"]["records_above"]})
    fixed, f = measure("remediation", lambda: remediate(cohort, policy=policy), traced=args.tracemalloc)
    rows.append({**f, "passed": fixed.passed, "steps": list(fixed.steps),
                 "suppressed": fixed.losses["suppressed_records"], "paid_most": fixed.paid_most(),
                 "highest_suppressed_shares": sorted(fixed.subgroup_losses, key=lambda s: -s["suppressed_share"])[:4],
                 "distinct_values": {c: f"{v['distinct_before']} -> {v['distinct_after']}"
                                     for c, v in fixed.losses["columns"].items()}})
    after, f = measure("reid on remediated cohort", lambda: reid.run(fixed.table, policy=policy),
                       traced=args.tracemalloc)
    rows.append({**f, "status": after.status})
    json.dump({"rows": args.rows, "seed": args.seed, "stages": rows}, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
