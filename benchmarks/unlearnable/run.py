"""Unlearnability benchmark on real MRI: Colin27 T1 patches labelled by AAL region groups.

Data (Debian ``mricron-data``, read from disk, nothing downloaded): ``ch2.nii.gz`` (Colin27 T1, 1 mm,
181 x 217 x 181) and ``aal.nii.gz`` on the same grid. Axial 64 x 64 mm patches (stride 6), area-downsampled
to 32 x 32 (2 mm pixels), whose central 8 x 8 voxels are mostly (>= 60 %) one AAL group:
0 frontal (AAL 1-28), 1 parietal + occipital (43-70), 2 temporal + limbic
(29-42, 79-90), 3 deep grey + cerebellum (71-78, 91-116). Train patches come from slices z % 4 in {0, 1},
test patches from z % 4 == 3 (different slices, a one-slice gap), class-balanced by subsampling.

Noises (same epsilon): SALM (guards.protect.salm, rho from the policy), dense error-minimizing noise
(Huang et al. 2021, rho = 1), random +-eps noise (dense, a control). Victims trained from scratch
(flip + shift augmentation, Adam, one-cycle schedule): a small CNN, a narrow ResNet-18 (base width 8 instead
of 64, for 2 shared CPU cores) and a small ViT (patch 4, dim 64, depth 4). Peak balanced test accuracy over epochs.
Robustness of SALM: JPEG quality 75, Gaussian blur sigma 1, only 50 % of the training set protected.

    .venv/bin/python benchmarks/unlearnable/run.py [--quick] [--out benchmarks/unlearnable/results.json]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import logging
import math
import struct
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter
from torch import nn

from guards.checks.victims import PixelMLP, same_sparsity_noise
from guards.checks.victims import augment as standard_augment
from guards.policy import ProtectSection
from guards.protect.salm import error_minimizing_noise
from guards.protect.surrogate import ResNet18, SmallCNN
from guards.protect.tree import noise_config

logger = logging.getLogger("benchmarks.unlearnable")
TEMPLATES = Path("/usr/share/mricron/templates")
GROUPS: dict[int, tuple[range, ...]] = {
    0: (range(1, 29),),
    1: (range(43, 71),),
    2: (range(29, 43), range(79, 91)),
    3: (range(71, 79), range(91, 117)),
}
NUM_CLASSES = len(GROUPS)
PATCH = 32
DEFAULTS = ProtectSection()


def read_nifti(path: Path) -> np.ndarray:
    """A NIfTI-1 volume (uint8/int16/float32) as an array indexed [x, y, z] (gzip + numpy reader)."""
    raw = gzip.open(path).read()
    dims = struct.unpack("<8h", raw[40:56])
    datatype = struct.unpack("<h", raw[70:72])[0]
    offset = int(struct.unpack("<f", raw[108:112])[0])
    dtype = {2: np.uint8, 4: np.int16, 16: np.float32, 512: np.uint16}[datatype]
    shape = dims[1 : 1 + dims[0]]
    return np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape)), offset=offset).reshape(shape, order="F")


def build_dataset(*, per_class_train: int, per_class_test: int, seed: int) -> tuple[torch.Tensor, ...]:
    t1 = read_nifti(TEMPLATES / "ch2.nii.gz").astype(np.float32)
    aal = read_nifti(TEMPLATES / "aal.nii.gz").astype(np.int64)
    t1 = t1 / np.percentile(t1[t1 > 0], 99.5)
    t1 = np.clip(t1, 0, 1)
    lut = np.full(256, -1, dtype=np.int64)
    for g, ranges in GROUPS.items():
        for r in ranges:
            lut[list(r)] = g
    grp = lut[aal]
    size, stride = 2 * PATCH, 6  # 64 mm of context, area-downsampled to 32 x 32
    pools: dict[str, dict[int, list[np.ndarray]]] = {"train": {g: [] for g in GROUPS}, "test": {g: [] for g in GROUPS}}
    for z in range(t1.shape[2]):
        split = "train" if z % 4 in (0, 1) else "test" if z % 4 == 3 else None
        if split is None:
            continue
        sl, gl = t1[:, :, z], grp[:, :, z]
        for x0 in range(0, sl.shape[0] - size, stride):
            for y0 in range(0, sl.shape[1] - size, stride):
                centre = gl[x0 + 28 : x0 + 36, y0 + 28 : y0 + 36]
                counts = np.bincount(centre[centre >= 0].ravel(), minlength=NUM_CLASSES)
                g = int(counts.argmax())
                if counts[g] < 0.6 * centre.size:
                    continue
                patch = sl[x0 : x0 + size, y0 : y0 + size].T
                pools[split][g].append(patch.reshape(PATCH, 2, PATCH, 2).mean((1, 3)))
    rng = np.random.default_rng(seed)
    out: list[torch.Tensor] = []
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        xs, ys = [], []
        for g in GROUPS:
            pool = pools[split][g]
            pick = rng.choice(len(pool), size=min(per_class, len(pool)), replace=False)
            xs += [pool[i] for i in pick]
            ys += [g] * len(pick)
        out += [torch.from_numpy(np.stack(xs))[:, None].float(), torch.tensor(ys)]
    return tuple(out)


class ViT(nn.Module):
    """A small Vision Transformer (Dosovitskiy et al. 2021): 4x4 patches, dim 64, depth 4, 4 heads."""

    def __init__(self, *, num_classes: int, size: int = 32, patch: int = 4, dim: int = 64, depth: int = 4) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, dim, patch, stride=patch)
        n = (size // patch) ** 2
        self.pos = nn.Parameter(torch.zeros(1, n + 1, dim))
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        layer = nn.TransformerEncoderLayer(dim, 4, dim * 2, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        return self.head(self.norm(self.encoder(t)[:, 0]))


RESNET_WIDTH = 8  # base width of the victim ResNet-18 (64 in the original; narrow for 2 shared CPU cores)


def make_victim(name: str) -> nn.Module:
    if name == "mlp":
        return PixelMLP(n_classes=NUM_CLASSES, pixels=PATCH * PATCH)
    if name == "cnn":
        return SmallCNN(in_channels=1, num_classes=NUM_CLASSES, width=32)
    if name == "resnet18":
        return ResNet18(in_channels=1, num_classes=NUM_CLASSES, width=RESNET_WIDTH)
    if name == "vit":
        return ViT(num_classes=NUM_CLASSES)
    raise ValueError(name)


def balanced_accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    recalls = [float((pred[y == c] == c).float().mean()) for c in range(NUM_CLASSES) if bool((y == c).any())]
    return float(np.mean(recalls))


def train_victim(
    name: str, xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor, *, epochs: int, seed: int,
    standard: bool = False,
) -> dict[str, object]:
    """Peak and final balanced test accuracy of victim ``name`` trained on ``xtr``: flip + 2-pixel shift on every
    batch, or with ``standard`` the standard augmentations of ``guards.checks.victims.augment`` (flips, shifts,
    contrast / brightness / gamma jitter)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = make_victim(name)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * math.ceil(len(xtr) / 64))
    curve = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), 64):
            idx = order[i : i + 64]
            xb = xtr[idx]
            if standard:
                xb = standard_augment(xb, gen)
            else:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
                dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
                xb = F.pad(xb, (2, 2, 2, 2), mode="reflect")[..., 2 + dy : 34 + dy, 2 + dx : 34 + dx]
            loss = F.cross_entropy(model(xb), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(xte[i : i + 256]).argmax(1) for i in range(0, len(xte), 256)])
        curve.append(round(balanced_accuracy(pred, yte), 4))
    return {"peak": max(curve), "final": curve[-1], "curve": curve}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return float((10 * torch.log10(1.0 / mse)).mean())


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM (Wang et al. 2004), 11x11 Gaussian window sigma 1.5, data range 1."""
    g = torch.exp(-((torch.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = (g[:, None] * g[None, :]) / g.sum() ** 2
    w = w[None, None]
    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = F.conv2d(a, w), F.conv2d(b, w)
    saa = F.conv2d(a * a, w) - mu_a**2
    sbb = F.conv2d(b * b, w) - mu_b**2
    sab = F.conv2d(a * b, w) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return float(s.mean())


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    out = []
    for img in x[:, 0].numpy():
        buf = io.BytesIO()
        Image.fromarray(np.round(img * 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255)
    return torch.from_numpy(np.stack(out))[:, None]


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.from_numpy(gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="reflect"))


ATTACKS: tuple[str, ...] = ("none", "jpeg75", "blur1", "augment", "jpeg10")


def attacked(data: torch.Tensor, attack: str) -> torch.Tensor:
    """The training images as an attacker preprocesses them: JPEG at quality 75 or 10 (8-bit greyscale; the
    images are single-channel, so ISS's greyscale step is the identity and its JPEG step is ``jpeg10``), Gaussian
    blur of sigma 1, or nothing (``none``, ``augment``: the augmentation is applied per batch in training)."""
    if attack in ("none", "augment"):
        return data
    if attack.startswith("jpeg"):
        return jpeg(data, int(attack.removeprefix("jpeg")))
    if attack == "blur1":
        return blur(data, 1.0)
    raise ValueError(f"unknown attack {attack!r}; use one of {ATTACKS}")


def to_markdown(results: dict[str, object]) -> str:
    """Tables of ``results`` (as written to the JSON file) for RESULTS.md: the noises, then peak (final) balanced
    accuracy per training set and attack (rows) and victim family (columns)."""
    noise = results["noise"]
    victims = results["victims"]
    assert isinstance(noise, dict) and isinstance(victims, dict)
    lines = ["| noise | PSNR dB (min) | SSIM | max abs delta | seconds | images/s | rounds | surrogate acc | touched |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k, v in noise.items():
        lines.append(
            f"| {k} | {v.get('psnr_db', '')} ({v.get('psnr_db_min', '')}) | {v.get('ssim', '')} | "
            f"{v.get('max_abs_delta', '')} | {v.get('seconds', '-')} | {v.get('images_per_second', '-')} | "
            f"{v.get('rounds', '-')} | {v.get('surrogate_accuracy', '-')} | {v.get('touched_fraction', '-')} |"
        )
    names = [n for n in ("cnn", "resnet18", "vit", "mlp") if any(n in row for row in victims.values())]
    lines += ["", "| training set / attack | " + " | ".join(f"{n} peak (final)" for n in names) + " |",
              "|---|" + "---|" * len(names)]
    for cond, row in victims.items():
        cells = [f"{row[n]['peak']:.3f} ({row[n]['final']:.3f})" if n in row else "-" for n in names]
        lines.append(f"| {cond} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _psnr_min(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return float((10 * torch.log10(1.0 / mse)).min())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: few images, 2 epochs")
    ap.add_argument("--seed", type=int, default=20260101)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--per-class-train", type=int, default=300)
    ap.add_argument("--per-class-test", type=int, default=150)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a NoiseConfig option of the shipped defaults, e.g. --set rho=0.1 (repeatable)")
    ap.add_argument("--victims", default="cnn,resnet18,vit,mlp")
    ap.add_argument("--attacks", default=",".join(ATTACKS), help=f"of {ATTACKS}, applied to clean and protected")
    ap.add_argument("--skip-dense", action="store_true", help="no dense error-minimizing noise (the time reference)")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(2)
    sizes = (60, 40, 2) if args.quick else (args.per_class_train, args.per_class_test, args.epochs)
    per_train, per_test, epochs = sizes
    xtr, ytr, xte, yte = build_dataset(per_class_train=per_train, per_class_test=per_test, seed=args.seed)
    logger.info("train %s test %s", tuple(xtr.shape), tuple(xte.shape))
    overrides = {k: override(k, v) for k, v in (o.split("=", 1) for o in args.set)}
    base = replace(noise_config(DEFAULTS, batch_size=128), **overrides)  # the shipped policy's [protect] options
    if args.quick:
        base = replace(base, max_rounds=2)
    results: dict[str, object] = {"args": {k: str(v) for k, v in vars(args).items()}, "config": asdict(base)}
    results.update(train=len(xtr), test=len(xte))
    noises: dict[str, torch.Tensor] = {}
    gen_info: dict[str, dict[str, float]] = {}
    # Dense error-minimizing noise (Huang et al. 2021, sample-wise, uniform start) with the same optimiser
    # settings (steps, rounds, surrogate, stop rule) and none of the additions: the time reference.
    dense = replace(base, objective="min-min", defences=(), rho=None, classwise=False, eot=False, min_psnr_db=None,
                    saturate=False, init="uniform")
    todo = [("salm", base), ("dense_em", dense)]
    for label, cfg in todo[:1] if args.skip_dense else todo:
        r = error_minimizing_noise(xtr, ytr, config=cfg, seed=args.seed)
        noises[label] = r.delta
        gen_info[label] = {
            "seconds": round(r.seconds, 1),
            "images_per_second": round(len(xtr) / r.seconds, 1),
            "rounds": r.rounds,
            "surrogate_accuracy": round(r.surrogate_accuracy, 4),
            "touched_fraction": round(float((r.delta != 0).float().mean()), 4),
        }
        logger.info("%s: %s", label, gen_info[label])
    # The random control: each image's own changes at random positions with random signs (same PSNR, L-inf and
    # number of changed pixels as the release's noise, no pattern), guards.checks.victims.same_sparsity_noise.
    noises["random"] = same_sparsity_noise(noises["salm"], torch.Generator().manual_seed(args.seed + 1))
    sets: dict[str, torch.Tensor] = {"clean": xtr}
    for k, d in noises.items():
        sets[k] = (xtr + d).clamp(0, 1)
        gen_info.setdefault(k, {})
        gen_info[k]["psnr_db"] = round(psnr(sets[k], xtr), 2)
        gen_info[k]["psnr_db_min"] = round(_psnr_min(sets[k], xtr), 2)
        gen_info[k]["ssim"] = round(ssim(sets[k], xtr), 4)
        gen_info[k]["max_abs_delta"] = round(float((sets[k] - xtr).abs().max()), 5)
    results["noise"] = gen_info
    victims = args.victims.split(",")
    runs = [(f"{name} / {attack}", name, attack) for name in ("clean", "salm") for attack in args.attacks.split(",")]
    runs += [(f"{name} / none", name, "none") for name in ("random", "dense_em") if name in sets]
    table: dict[str, dict[str, object]] = {}
    for cond, name, attack in runs:
        table[cond] = {}
        data = attacked(sets[name], attack)
        for v in victims:
            t0 = time.monotonic()
            table[cond][v] = train_victim(v, data, ytr, xte, yte, epochs=epochs, seed=args.seed,
                                          standard=attack == "augment")
            logger.info("%s / %s: %s (%.0fs)", cond, v, table[cond][v]["peak"], time.monotonic() - t0)
            args.out.with_suffix(".partial.json").write_text(json.dumps({**results, "victims": table}, indent=1))
    results["victims"] = table
    results["chance"] = 1 / NUM_CLASSES
    args.out.write_text(json.dumps(results, indent=1))
    args.out.with_suffix(".md").write_text(to_markdown(results))
    logger.info("wrote %s", args.out)
    return 0


def override(key: str, text: str) -> object:
    """A NoiseConfig option from the command line: ``defences`` is ``none`` or names joined by ``+``."""
    if key == "defences":
        return () if text.lower() in ("none", "") else tuple(text.split("+"))
    return _value(text)


def _value(text: str) -> object:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


if __name__ == "__main__":
    raise SystemExit(main())
