"""Benchmark: the DP-SGD audit (issue 18) on generated sample studies: how far DP-SGD at epsilon 1, 10 and 100
lowers the membership TPR at 1 % FPR of the most exposed subgroup, and what it costs in utility.

``guards.samples.generate_corpus`` (``--studies`` studies, ``--seed``; no real patient data) goes through the
pipeline in-process as ``guard run`` would (ingest, deid, protect, cohort; a pseudonym key fixed by the seed), then
``guards.checks.dp_audit`` runs on the run with the default policy except ``[dp_audit] enabled = true``,
``epsilons = --epsilons`` and the image size, epochs and reference models given here (``--size``, ``--epochs``,
``--references``); ``--no-protect`` audits the de-identified images without the noise. The accounting is
record-level (one record is one image).

    .venv/bin/python benchmarks/dp_audit/run.py --out benchmarks/dp_audit/results.json

Writes ``--out`` (JSON: settings, per run the most exposed subgroup's TPR, the drop, the utility and its loss,
the epsilon spent, every subgroup's figures) and prints the summary line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from guards import pipeline  # noqa: E402
from guards.checks import dp_audit  # noqa: E402
from guards.keys import PseudonymKey  # noqa: E402
from guards.policy import ReleasePolicy  # noqa: E402
from guards.samples import generate_corpus  # noqa: E402


def _checks_corpus() -> Any:
    """benchmarks/checks_suite/corpus.py, the synthetic corpora of the model-based checks' tests."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("checks_suite_corpus", HERE.parent / "checks_suite" / "corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--studies", type=int, default=150)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--references", type=int, default=4)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    parser.add_argument("--no-protect", action="store_true",
                        help="protect.enabled = false: audit the de-identified images without the noise")
    parser.add_argument("--memorising", type=int, default=0, metavar="PATIENTS",
                        help="instead of the pipeline's samples: the checks' synthetic corpus of PATIENTS patients "
                             "whose minority (25 %%) has atypical images, each study duplicated 4 times "
                             "(benchmarks/checks_suite/corpus.py), audited as released: a release a non-DP model "
                             "memorises, the case DP-SGD is for")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # A fixed key for generated data (no real patient is behind it): the same pseudonyms, so the same members.
    key = PseudonymKey(hashlib.sha256(f"dp-audit-benchmark-{args.seed}".encode()).digest())
    policy = ReleasePolicy().with_overrides({
        "dp_audit.enabled": True, "dp_audit.epsilons": args.epsilons, "dp_audit.epochs": args.epochs,
        "membership.image_size": args.size, "membership.reference_models": args.references,
        "protect.enabled": not args.no_protect, "dp_audit.delta": args.delta,
    })
    work = Path(tempfile.mkdtemp(prefix="guard-dp-audit-"))
    try:
        t0 = time.monotonic()
        if args.memorising:
            corpus = _checks_corpus().make_corpus(work / "dup", patients=args.memorising, size=args.size,
                                                  seed=args.seed, signal=0.09, minority_share=0.25,
                                                  minority_duplicated=True)
            t1 = time.monotonic()
            result = dp_audit.run(corpus.root, source_dir=corpus.root, cohort=corpus.cohort, policy=policy)
        else:
            source = generate_corpus(work / "source", studies=args.studies, seed=args.seed).root
            run = pipeline.begin(source, work / "out", "dp-audit", policy=policy, key=key)
            pipeline.step_deid(run, key=key)
            pipeline.step_protect(run, key=key)
            pipeline.step_cohort(run, key=key)
            t1 = time.monotonic()
            result = dp_audit.check(run)
        t2 = time.monotonic()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    d = result.details
    exposed = d["most_exposed"]
    per_run: dict[str, Any] = {}
    for name, r in d["runs"].items():
        fig = r["subgroups"][exposed]
        per_run[name] = {"epsilon": r["epsilon"], "epsilon_spent": r.get("epsilon_spent"),
                         "noise_multiplier": r.get("noise_multiplier"),
                         "most_exposed_tpr_1pct": fig["tpr_1pct"], "most_exposed_ci": fig["ci"],
                         "most_exposed_auc": fig["auc"], "overall_tpr_1pct": r["subgroups"]["all"]["tpr_1pct"],
                         "tpr_drop": d["tpr_drop"].get(name), "utility": r["utility"],
                         "utility_loss": r.get("utility_loss", 0.0)}
    out = {
        "settings": {"corpus": f"memorising, {args.memorising} patients" if args.memorising else "samples",
                     "studies": args.studies, "seed": args.seed, "image_size": args.size, "epochs": args.epochs,
                     "reference_models": args.references, "epsilons": args.epsilons,
                     "protect": not args.no_protect, "delta": d["delta"],
                     "max_grad_norm": d["max_grad_norm"], "attack": d["attack"], "accounting": d["accounting"]},
        "examined": result.examined,
        "most_exposed": exposed,
        "runs": per_run,
        "subgroups": {name: r["subgroups"] for name, r in d["runs"].items()},
        "summary": result.summary,
        "seconds": {"pipeline": round(t1 - t0, 1), "dp_audit": round(t2 - t1, 1)},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    print(json.dumps({"most_exposed": exposed, "runs": per_run, "seconds": out["seconds"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
