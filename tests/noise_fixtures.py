"""The small noise-optimiser setting shared by the CPU and CUDA tests of guards.protect.salm."""

from __future__ import annotations

import torch

from guards.protect.salm import NoiseConfig

EPS = 8 / 255
CFG = NoiseConfig(epsilon=EPS, step_size=2 / 255, steps=3, rho=0.1, max_rounds=2, train_steps=2, warmup_epochs=1,
                  warmup_min_steps=0, batch_size=16, width=8)


def two_class_images() -> tuple[torch.Tensor, torch.Tensor]:
    """24 images of 16 x 16 in [0, 1], two classes told apart by a brighter centre square."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(24, 1, 16, 16, generator=g) * 0.5 + 0.2
    y = torch.arange(24) % 2
    x[y == 1, :, 4:12, 4:12] += 0.2  # a learnable difference between the classes
    return x.clamp(0, 1), y
