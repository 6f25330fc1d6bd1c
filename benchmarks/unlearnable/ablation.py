"""Ablations behind the SALM defaults: where the mask goes, how much of the image it covers, which surrogate.

Same data and small-CNN victim as ``run.py`` (1,200 Colin27 training patches, 600 test patches from other
slices, 4 classes, flip + shift augmentation, peak balanced test accuracy over the epochs). Conditions:

- ``clean``: no noise;
- ``fixed:<rule>:<rho>``: the ``class_frequency`` start of ``guards.protect.salm`` saturated to +-epsilon with
  no optimisation, on a mask of exactly rho of the foreground chosen by ``<rule>``: ``flat`` (lowest local
  contrast, ``mask.flatness``), ``flat_spread`` (the same, cell by cell over 8 x 8 cells, ``mask.spread``),
  ``flat7`` (contrast averaged over 7 x 7), ``edges`` (highest local contrast), ``random``, or ``dense``;
- ``salm:<key>=<value>:...``: ``error_minimizing_noise`` with the shipped defaults (``ProtectSection()``)
  and the given overrides, e.g. ``salm:surrogate=cnn_gn:warmup_epochs=3:train_batch=128:max_rounds=3``.

    .venv/bin/python benchmarks/unlearnable/ablation.py [--conditions clean,fixed:flat:0.1,...] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from run import DEFAULTS, attacked, build_dataset, override, psnr, train_victim  # noqa: E402

from guards.protect import salm  # noqa: E402
from guards.protect.mask import batch_masks, flatness, local_contrast, spread  # noqa: E402
from guards.protect.tree import noise_config  # noqa: E402

CONDITIONS = (
    "clean,fixed:flat:0.1,fixed:edges:0.1,fixed:random:0.1,fixed:flat_spread:0.1,fixed:flat:0.3,fixed:flat:0.5,"
    "fixed:dense:1,salm,salm:saliency=flat,salm:surrogate=cnn_gn:warmup_epochs=3:warmup_min_steps=0:train_batch=128,"
    "salm:rho=0.3:saturate=false,salm:rho=0.5:saturate=false,salm:rho=1.0:saturate=false"
)


def fixed_noise(x: torch.Tensor, y: torch.Tensor, *, rule: str, rho: float, eps: float, seed: int) -> torch.Tensor:
    """The class-frequency start at +-eps on a mask of exactly rho of each image's foreground."""
    sign = salm._class_frequency(y, x.shape, classes=int(y.max()) + 1, gen=torch.Generator().manual_seed(seed))
    if rule == "dense":
        return ((x + sign * eps).clamp(0, 1) - x)
    scores = {
        "flat": lambda: flatness(x),
        "flat_spread": lambda: spread(flatness(x)),
        "flat7": lambda: -F.avg_pool2d(local_contrast(x), 7, stride=1, padding=3, count_include_pad=False),
        "edges": lambda: local_contrast(x),
        "random": lambda: torch.rand(x.shape, generator=torch.Generator().manual_seed(seed + 1)),
    }[rule]()
    mask = batch_masks(scores, x, rho=rho).float()
    return (x + sign * eps * mask).clamp(0, 1) - x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conditions", default=CONDITIONS)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=20260101)
    ap.add_argument("--victims", default="cnn:none",
                    help="family:attack,... (families cnn, resnet18, vit, mlp; attacks none, jpeg75, jpeg10, blur1,"
                         " augment); the first is the condition's victim_peak")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("ablation.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    xtr, ytr, xte, yte = build_dataset(per_class_train=300, per_class_test=150, seed=args.seed)
    eps = DEFAULTS.epsilon
    known = {f.name for f in fields(salm.NoiseConfig)}
    rows = []
    for cond in args.conditions.split(","):
        parts = cond.split(":")
        info: dict[str, object] = {"condition": cond}
        if parts[0] == "clean":
            delta = torch.zeros_like(xtr)
        elif parts[0] == "fixed":
            delta = fixed_noise(xtr, ytr, rule=parts[1], rho=float(parts[2]), eps=eps, seed=args.seed)
        elif parts[0] == "salm":
            overrides = {k: override(k, v) for k, v in (p.split("=", 1) for p in parts[1:])}
            unknown = set(overrides) - known
            if unknown:
                raise SystemExit(f"{cond}: unknown NoiseConfig options {sorted(unknown)}")
            cfg = replace(noise_config(DEFAULTS, batch_size=128), **overrides)  # type: ignore[arg-type]
            r = salm.error_minimizing_noise(xtr, ytr, config=cfg, seed=args.seed)
            delta = r.delta
            info.update(seconds=round(r.seconds, 1), rounds=r.rounds, surrogate_accuracy=round(r.surrogate_accuracy, 3))
        else:
            raise SystemExit(f"unknown condition {cond!r}")
        info["touched"] = round(float((delta != 0).float().mean()), 4)
        info["psnr_db"] = round(psnr((xtr + delta).clamp(0, 1), xtr), 2) if bool(delta.any()) else None
        t0 = time.monotonic()
        released = (xtr + delta).clamp(0, 1)
        peaks: dict[str, float] = {}
        for spec in args.victims.split(","):
            family, attack = spec.split(":")
            victim = train_victim(family, attacked(released, attack), ytr, xte, yte, epochs=args.epochs,
                                  seed=args.seed, standard=attack == "augment")
            peaks[spec] = float(victim["peak"])  # type: ignore[arg-type]
            if len(peaks) == 1:
                info.update(victim_peak=victim["peak"], curve=victim["curve"])
        info.update(victims=peaks, victim_seconds=round(time.monotonic() - t0, 1))
        print(json.dumps(info), flush=True)
        rows.append(info)
    args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
