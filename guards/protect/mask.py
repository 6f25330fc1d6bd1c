"""Sparsity-aware local masks (SALM, Sun et al., arXiv 2403.10573, section 3.2).

SALM restricts error-minimizing noise to the "significant" pixels of a medical image instead of the whole
frame. The paper's exact rule is not public in full; the rule implemented here is:

1. Foreground: pixels whose display-normalised value (0 = low end of the window / stored range, 1 = high end)
   exceeds ``FOREGROUND_LEVEL`` (0.05). On MRI this excludes air; an image with no foreground by that rule
   (a constant or all-dark frame) uses every pixel, so no image is left without a mask.
2. Saliency: a per-pixel score given by the caller (``salm.py`` uses the magnitude of the surrogate's input
   gradient, smoothed with a 3x3 box filter, plus a small local-contrast term to break flat ties).
3. Exactly ``k = floor(rho * n_foreground + 0.5)`` foreground pixels with the highest saliency are selected
   (stable sort on the score, ties broken by raster order), so the sparsity is exactly rho at the resolution
   the mask is computed at. ``native_mask`` recomputes the selection at native resolution from the upsampled
   saliency, so the stored image's mask has exactly round(rho * foreground) pixels as well.

Measured justification: the exact-count rule is what the unit tests check (tests/unit/test_protect_mask.py).
The choice of saliency (surrogate gradient + contrast) against alternatives (intensity, random positions)
was NOT compared on the benchmark in this first version (no time on the shared 2-core machine); it is the
first thing to measure next (benchmarks/unlearnable/RESULTS.md, "What is missing").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FOREGROUND_LEVEL = 0.05


def mask_size(rho: float, n_foreground: int) -> int:
    """``floor(rho * n + 0.5)``: the number of pixels a mask of sparsity rho selects (round half up)."""
    return int(math.floor(rho * n_foreground + 0.5))


def foreground(image: torch.Tensor, *, level: float = FOREGROUND_LEVEL) -> torch.Tensor:
    """Boolean foreground of ``image`` (``H x W``, display-normalised in [0, 1]); all True when none is found."""
    fg = image > level
    if not bool(fg.any()):
        return torch.ones_like(fg)
    return fg


def topk_mask(saliency: torch.Tensor, fg: torch.Tensor, *, rho: float) -> torch.Tensor:
    """Exactly ``mask_size(rho, fg.sum())`` pixels of ``fg`` with the highest ``saliency`` (``H x W``)."""
    if saliency.shape != fg.shape:
        raise ValueError(f"saliency {tuple(saliency.shape)} and foreground {tuple(fg.shape)} differ in shape")
    flat_fg = fg.reshape(-1)
    k = mask_size(rho, int(flat_fg.sum()))
    score = torch.where(flat_fg, saliency.reshape(-1).double(), torch.tensor(-math.inf, dtype=torch.float64))
    order = torch.sort(-score, stable=True).indices
    out = torch.zeros_like(flat_fg)
    out[order[:k]] = True
    return out.reshape(fg.shape)


def smooth(saliency: torch.Tensor) -> torch.Tensor:
    """3x3 box filter of ``N x 1 x H x W`` scores (keeps isolated gradient spikes from deciding the mask)."""
    return F.avg_pool2d(saliency, 3, stride=1, padding=1, count_include_pad=False)


def local_contrast(images: torch.Tensor) -> torch.Tensor:
    """|image - 3x3 local mean|, ``N x 1 x H x W``: edges and texture, where a change is least visible."""
    return (images - F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)).abs()


def batch_masks(saliency: torch.Tensor, images: torch.Tensor, *, rho: float) -> torch.Tensor:
    """Per-image masks for ``N x 1 x H x W`` saliency and display-normalised images (bool, same shape)."""
    out = torch.zeros_like(images, dtype=torch.bool)
    for i in range(images.shape[0]):
        fg = foreground(images[i, 0])
        out[i, 0] = topk_mask(saliency[i, 0], fg, rho=rho)
    return out


def native_mask(saliency_model: torch.Tensor, image_native: torch.Tensor, *, rho: float) -> torch.Tensor:
    """The mask at native resolution: saliency (``h x w``) upsampled bilinearly to ``image_native``'s ``H x W``,
    then exactly round(rho * foreground) pixels of the native foreground selected."""
    h, w = image_native.shape
    up = F.interpolate(saliency_model[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    return topk_mask(up, foreground(image_native), rho=rho)
