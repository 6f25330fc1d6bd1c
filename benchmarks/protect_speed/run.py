"""Speed of the error-minimizing noise (``guards.protect.salm``) on the CPU, by torch thread count.

The images are what protect feeds the optimiser: ``N x 1 x S x S`` in [0, 1] at the policy's model resolution
(``[protect] image_size``, 64 by default), here smooth random anatomy-like blobs with a class-dependent bright
square so that the surrogate has something to learn. The optimiser runs with the default policy's options except
``max_rounds`` (``--rounds``, with ``stop_accuracy`` above 1 so that every run does the same work), once per
thread count in ``--threads``, in the same process, one after another. Reported: seconds for the warm-up and per
noise round, and the ratio to the first thread count.

Usage: ``.venv/bin/python benchmarks/protect_speed/run.py --images 200 --rounds 2 --threads 1 2``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import guards.protect.salm as salm
from guards.policy import ReleasePolicy
from guards.protect.surrogate import auto_batch_size
from guards.protect.tree import noise_config

log = logging.getLogger("protect_speed")


def images(n: int, size: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` smooth random images in [0, 1] and 4 balanced labels, the class visible as a brighter square."""
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.rand(n, 1, size + 8, size + 8, generator=g), 9, stride=1)
    y = torch.arange(n) % 4
    q = size // 4
    for k in range(4):
        r, c = divmod(k, 2)
        x[y == k, :, r * 2 * q + q // 2 : r * 2 * q + q // 2 + q, c * 2 * q + q // 2 : c * 2 * q + q // 2 + q] += 0.3
    return x.clamp(0, 1), y


def measure(x: torch.Tensor, y: torch.Tensor, *, threads: int, rounds: int) -> dict[str, float]:
    section = ReleasePolicy().protect
    bs = auto_batch_size(torch.device("cpu"), image_size=x.shape[-1], channels=1, requested=section.batch_size)
    cfg = dataclasses.replace(noise_config(section, batch_size=bs), max_rounds=rounds, min_rounds=rounds,
                              stop_accuracy=1.01)
    marks: list[float] = []
    real_train = salm._train

    def timed_train(*args, **kwargs):  # type: ignore[no-untyped-def]
        marks.append(time.monotonic())  # the warm-up, then each round, starts with a surrogate training
        return real_train(*args, **kwargs)

    salm._train = timed_train  # type: ignore[assignment]
    cores = salm.available_cores
    salm.available_cores = lambda: threads  # type: ignore[assignment]
    try:
        start = time.monotonic()
        result = salm.error_minimizing_noise(x, y, config=cfg, seed=0)
        total = time.monotonic() - start
    finally:
        salm._train = real_train  # type: ignore[assignment]
        salm.available_cores = cores  # type: ignore[assignment]
    warmup = marks[1] - marks[0]
    return {"threads": threads, "batch_size": bs, "seconds_total": round(total, 1),
            "seconds_warmup": round(warmup, 1), "seconds_per_round": round((total - warmup) / result.rounds, 1),
            "rounds": result.rounds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", type=int, default=ReleasePolicy().protect.image_size)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    x, y = images(args.images, args.size, seed=0)
    rows = []
    for t in args.threads:
        row = measure(x, y, threads=t, rounds=args.rounds)
        rows.append(row)
        log.info("%s", row)
    base = rows[0]["seconds_total"]
    print(f"\n{args.images} images at {args.size}x{args.size}, {args.rounds} noise rounds, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print("| threads | batch | warm-up s | s per round | total s | vs first |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['threads']} | {r['batch_size']} | {r['seconds_warmup']} | {r['seconds_per_round']} "
              f"| {r['seconds_total']} | {r['seconds_total'] / base:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                                         "torch": torch.__version__, "images": args.images, "size": args.size,
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
