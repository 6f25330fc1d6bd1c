"""The attackers of the unlearnability check: how someone who trains on the release without authorisation trains.

A protection that only a naive trainer cannot see through protects nothing. Published unlearnable examples are
undone by what any practitioner does anyway: standard augmentations (Fu et al., "Robust unlearnable examples",
ICLR 2022), lossy re-encoding and blurring of the training images (Liu et al., "Image shortcut squeezing",
ICML 2023: JPEG compression removes high-frequency shortcuts, JPEG quality 10 breaks every published poison), or
an architecture other than the surrogate the noise was optimised on. Each :class:`Recipe` is one such trainer:

- ``plain``: the small CNN of :mod:`guards.checks.models`, no augmentation (the non-adaptive victim);
- ``augmented``: the same CNN with random horizontal flips, shifts of up to 1/16 of the side (reflected edges)
  and intensity jitter (contrast and brightness +-10 %, gamma 0.8-1.25) on every batch;
- ``jpeg75`` / ``jpeg10``: the CNN on training images re-encoded as 8-bit JPEG at quality 75 / 10 (Pillow);
- ``blur``: the CNN on training images blurred by a Gaussian of sigma 1 pixel;
- ``mlp``: a two-hidden-layer MLP on the pixels, a family other than the convolutional surrogate.

A defence (JPEG, blur) is applied once to the training images, as the attacker would preprocess their data;
every victim is evaluated on clean held-out images. :func:`defended` applies the same defence to clean training
images for the check's controls, so that what a defence costs the task itself is not counted as protection.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional

from guards.checks.models import build_model
from guards.errors import InputError
from guards.protect.eot import gaussian_blur

#: Gaussian blur of the ``blur`` recipe, in pixels (the issue's and ISS's sigma 1).
BLUR_SIGMA = 1.0


@dataclass(frozen=True)
class Recipe:
    """One way of training a victim: the model family, a defence applied to the training images, augmentation."""

    name: str
    what: str  # for the report
    family: str = "cnn"  # "cnn" (guards.checks.models.SmallCNN) or "mlp" (:class:`PixelMLP`)
    defence: str = ""  # "", "jpeg75", "jpeg10" or "blur"
    augmented: bool = False


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("plain", "small CNN, no augmentation"),
    Recipe("augmented", "small CNN with flips, shifts and intensity/gamma jitter", augmented=True),
    Recipe("jpeg75", "small CNN on JPEG quality 75 re-encoded images (image shortcut squeezing)", defence="jpeg75"),
    Recipe("jpeg10", "small CNN on JPEG quality 10 re-encoded images (image shortcut squeezing)", defence="jpeg10"),
    Recipe("blur", f"small CNN on Gaussian-blurred images (sigma {BLUR_SIGMA:g} pixel)", defence="blur"),
    Recipe("mlp", "MLP on pixels (not the convolutional family of the surrogate)", family="mlp"),
)}


class PixelMLP(nn.Module):
    """Flattened pixels -> 256 -> 128 -> classes with ReLU: a victim that sees pixels, not local patterns."""

    def __init__(self, *, n_classes: int, pixels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(pixels, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                                 nn.Linear(128, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def builder(recipe: Recipe, *, image_shape: tuple[int, ...]) -> Callable[[int, int], nn.Module]:
    """``build(n_classes, seed)`` for :func:`guards.checks.models.train`: seeded weights of the recipe's family."""
    if recipe.family == "cnn":
        return lambda n_classes, seed: build_model(n_classes=n_classes, seed=seed)
    if recipe.family == "mlp":
        pixels = int(np.prod(image_shape))

        def build(n_classes: int, seed: int) -> nn.Module:
            model = PixelMLP(n_classes=n_classes, pixels=pixels)
            gen = torch.Generator().manual_seed(seed)
            for m in model.modules():
                if isinstance(m, nn.Linear):
                    nn.init.kaiming_uniform_(m.weight, nonlinearity="relu", generator=gen)
                    nn.init.zeros_(m.bias)
            return model

        return build
    raise InputError(f"victim family {recipe.family!r}: use 'cnn' or 'mlp'")


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Each image of ``x`` (N x 1 x H x W in [0, 1]) re-encoded as an 8-bit greyscale JPEG at ``quality``."""
    out = torch.empty_like(x)
    for i, image in enumerate(x):
        unit = (image[0].clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()
        buffer = io.BytesIO()
        Image.fromarray(unit, mode="L").save(buffer, format="JPEG", quality=quality)
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"), dtype=np.float32) / 255.0
        out[i, 0] = torch.from_numpy(decoded)
    return out


def blur(x: torch.Tensor, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """``x`` convolved with a separable Gaussian of ``sigma`` pixels (radius 3 sigma, reflected edges): the blur
    the noise optimiser defends against (:func:`guards.protect.eot.gaussian_blur`)."""
    return gaussian_blur(x, sigma)


def defended(x: torch.Tensor, defence: str) -> torch.Tensor:
    """The training images as the attacker preprocesses them (``""``: unchanged)."""
    if defence == "":
        return x
    if defence.startswith("jpeg"):
        return jpeg(x, int(defence.removeprefix("jpeg")))
    if defence == "blur":
        return blur(x)
    raise InputError(f"victim defence {defence!r}: use '', 'jpeg75', 'jpeg10' or 'blur'")


def augment(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Standard augmentations of one batch, drawn from ``gen``: flips, small shifts, intensity and gamma jitter."""
    n, _, h, w = batch.shape
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.where(flip.view(-1, 1, 1, 1).to(batch.device), batch.flip(-1), batch)
    shift = max(min(h, w) // 16, 1)
    padded = functional.pad(out, (shift, shift, shift, shift), mode="reflect")
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen).tolist()
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    contrast = (1 + (torch.rand(n, generator=gen) * 0.2 - 0.1)).view(-1, 1, 1, 1).to(batch.device)
    brightness = (torch.rand(n, generator=gen) * 0.1 - 0.05).view(-1, 1, 1, 1).to(batch.device)
    gamma = torch.exp(torch.rand(n, generator=gen) * (math.log(1.25) - math.log(0.8)) + math.log(0.8))
    out = (out * contrast + brightness).clamp(0.0, 1.0)
    return out.pow(gamma.view(-1, 1, 1, 1).to(batch.device))


def same_sparsity_noise(delta: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random control for the release's noise ``delta`` (release - clean, per image): each image's own changes,
    moved to random positions with random signs, so the control has the release's sparsity and amplitudes (its
    L-infinity, its number of changed pixels, its energy) and carries no class-wise or image-specific pattern."""
    flat = delta.reshape(len(delta), -1)
    out = torch.empty_like(flat)
    for i in range(len(flat)):
        order = torch.randperm(flat.shape[1], generator=gen)
        signs = torch.randint(0, 2, (flat.shape[1],), generator=gen).to(flat.dtype) * 2 - 1
        out[i] = flat[i, order].abs() * signs
    return out.reshape(delta.shape)
