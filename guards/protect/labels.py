"""Pseudo-labels for images without a label: k-means on surrogate features.

When a release has no labels table (or some studies are missing from it), error-minimizing noise still needs a
class per image. Following the unsupervised variant of unlearnable examples (Huang et al., arXiv 2101.04898,
section 4.4, which uses cluster assignments as labels), images are embedded with a seeded, randomly
initialised surrogate (``SmallCNN.features``; random convolutional features keep coarse intensity and texture
structure) and clustered with k-means++ (Arthur and Vassilvitskii 2007) into ``k`` groups, all randomness from
one ``torch.Generator``. The labels are then the cluster ids.
"""

from __future__ import annotations

import torch

from guards.errors import GuardError
from guards.protect.surrogate import SmallCNN


@torch.no_grad()
def embed(images: torch.Tensor, *, seed: int, batch_size: int = 256) -> torch.Tensor:
    """``N x D`` features of a seeded random ``SmallCNN`` (group norm), standardised per dimension."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(in_channels=images.shape[1], num_classes=2, width=16, norm="group")
    model.eval()
    feats = torch.cat([model.features(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)])
    mean, std = feats.mean(0), feats.std(0, unbiased=False).clamp_min(1e-6)
    return (feats - mean) / std


def kmeans(x: torch.Tensor, *, k: int, generator: torch.Generator, iterations: int = 50) -> torch.Tensor:
    """Cluster ids (``N``, int64) of ``x`` (``N x D``) by k-means with k-means++ seeding."""
    n = x.shape[0]
    if n == 0:
        raise GuardError("k-means: no images to cluster")
    k = max(1, min(k, n))
    centres = [x[int(torch.randint(n, (1,), generator=generator))]]
    for _ in range(1, k):
        d2 = torch.cdist(x, torch.stack(centres)).amin(1) ** 2
        total = float(d2.sum())
        if total <= 0:
            centres.append(x[int(torch.randint(n, (1,), generator=generator))])
            continue
        centres.append(x[int(torch.multinomial(d2 / total, 1, generator=generator))])
    c = torch.stack(centres)
    assign = torch.cdist(x, c).argmin(1)
    for _ in range(iterations):
        for j in range(k):
            members = x[assign == j]
            if members.shape[0]:
                c[j] = members.mean(0)
        new = torch.cdist(x, c).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
    return assign


def pseudo_labels(images: torch.Tensor, *, k: int, seed: int) -> torch.Tensor:
    """Cluster ids in ``0..k-1`` for ``images`` (``N x C x H x W`` in [0, 1])."""
    return kmeans(embed(images, seed=seed), k=k, generator=torch.Generator().manual_seed(seed))
