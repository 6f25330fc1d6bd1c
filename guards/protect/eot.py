"""Expectation over transformations (EOT) for the noise optimiser: what an attacker does to the training images.

Unlearnable noise that only a naive trainer cannot see through protects nothing: JPEG re-encoding, blurring and
standard augmentations remove a shortcut optimised without them (Liu et al., "Image shortcut squeezing", ICML
2023; Fu et al., "Robust unlearnable examples", ICLR 2022). REM (Fu et al.) averages the noise gradient over random
transformations inside the min-min loop; :func:`attacker_view` is that transformation, drawn per batch, and every
part of it is differentiable so the noise is optimised through it (Athalye et al., "Synthesizing robust
adversarial examples", ICML 2018):

- always: a random horizontal flip and a shift of up to 2 pixels with reflected edges (:func:`flip_shift`, the
  augmentation the surrogates train with and a victim is likely to use);
- then one of, with probabilities ``JPEG_SHARE`` / ``BLUR_SHARE`` / ``JITTER_SHARE`` (the rest: nothing more):
  - a differentiable JPEG (:func:`jpeg`) at a random quality in [50, 95];
  - a Gaussian blur of random sigma in [0.5, 1.5] pixels;
  - intensity jitter (contrast and brightness +-10 %, gamma 0.8-1.25), as :func:`guards.checks.victims.augment`.

:func:`jpeg` follows baseline JPEG (ITU-T T.81, Annex K.1 luminance table, the IJG quality scaling): 8-bit
rounding, level shift, the 8 x 8 type-II DCT, quantisation and back. Rounding uses the straight-through estimator
(forward: the rounded value, backward: the identity), as in Shin and Song, "JPEG-resistant adversarial images"
(NIPS 2017 workshop). Images whose sides are not multiples of 8 are padded by reflection and cropped back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

JPEG_SHARE = 0.5
BLUR_SHARE = 0.2
JITTER_SHARE = 0.15
QUALITIES = (50, 95)
BLUR_SIGMAS = (0.5, 1.5)

# ITU-T T.81 Annex K, Table K.1: luminance quantisation table (quality 50).
LUMINANCE = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99],
], dtype=torch.float32)


def dct_matrix(n: int = 8) -> torch.Tensor:
    """The orthonormal type-II DCT matrix ``C`` (``C @ block @ C.T`` transforms an ``n x n`` block)."""
    k = torch.arange(n, dtype=torch.float64)
    m = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m.float()


_DCT = dct_matrix()


def quantisation_table(quality: int) -> torch.Tensor:
    """The IJG-scaled luminance table for ``quality`` in [1, 100] (steps of at least 1)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality {quality} must be in [1, 100]")
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return torch.clamp(torch.floor((LUMINANCE * scale + 50) / 100), min=1)


def _round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Differentiable greyscale JPEG of ``x`` (``N x C x H x W`` in [0, 1], each channel coded as luminance)."""
    n, c, h, w = x.shape
    ph, pw = -h % 8, -w % 8
    p = F.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x
    hh, ww = p.shape[-2:]
    levels = _round(p.clamp(0.0, 1.0) * 255.0) - 128.0
    blocks = levels.reshape(n, c, hh // 8, 8, ww // 8, 8).permute(0, 1, 2, 4, 3, 5)
    dct = _DCT.to(x.device)
    table = quantisation_table(quality).to(x.device)
    coef = _round((dct @ blocks @ dct.T) / table) * table
    back = (dct.T @ coef @ dct).permute(0, 1, 2, 4, 3, 5).reshape(n, c, hh, ww)
    out = (_round(back + 128.0).clamp(0.0, 255.0)) / 255.0
    return out[..., :h, :w]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x`` convolved with a separable Gaussian of ``sigma`` pixels (radius 3 sigma, reflected edges)."""
    radius = max(1, min(int(math.ceil(3 * sigma)), x.shape[-1] - 1, x.shape[-2] - 1))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    p = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    p = F.conv2d(p, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(p, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def flip_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random horizontal flip and a random shift of up to 2 pixels (reflection), one draw per batch."""
    if bool(torch.rand((), generator=gen) < 0.5):
        x = torch.flip(x, dims=(3,))
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    if dy or dx:
        h, w = x.shape[-2:]
        p = F.pad(x, (2, 2, 2, 2), mode="reflect")
        x = p[..., 2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w]
    return x


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def attacker_view(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random attacker transformation of the batch ``x`` (module docstring), differentiable in ``x``."""
    x = flip_shift(x, gen)
    r = float(torch.rand((), generator=gen))
    if r < JPEG_SHARE:
        return jpeg(x, int(torch.randint(QUALITIES[0], QUALITIES[1] + 1, (), generator=gen)))
    if r < JPEG_SHARE + BLUR_SHARE:
        return gaussian_blur(x, _uniform(gen, *BLUR_SIGMAS))
    if r < JPEG_SHARE + BLUR_SHARE + JITTER_SHARE:
        contrast, brightness = _uniform(gen, 0.9, 1.1), _uniform(gen, -0.05, 0.05)
        gamma = math.exp(_uniform(gen, math.log(0.8), math.log(1.25)))
        return (x * contrast + brightness).clamp(1e-4, 1.0).pow(gamma)
    return x
