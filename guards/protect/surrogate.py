"""Surrogate models for error-minimizing noise, device selection and batch sizing.

The surrogate is the model the noise is optimised against (Huang et al., "Unlearnable Examples", ICLR 2021,
arXiv 2101.04898, section 3: the min-min problem is solved against a surrogate trained on the noised data).

Choices and why (figures in ``benchmarks/unlearnable/RESULTS.md``):

- ``cnn`` (default): three 3x3 conv blocks (32-64-128 channels, batch norm, ReLU, max pool) and a linear head,
  the same network as the benchmark's small-CNN victim. The cheapest surrogate on 2 CPU cores (about 1 ms per
  image forward + backward at 32 x 32, against 2.0 ms for a width-16 ResNet-18). It trains on batches of 64
  for at least ``protect.warmup_min_steps`` (150) steps before the noise rounds.
  Measured on the benchmark (1,200 Colin27 patches, ``class_frequency`` start, 3 rounds, victim small CNN,
  peak balanced accuracy, clean 0.87, one seed each): this surrogate gives a victim of 0.67 (gradient mask) to
  0.69 (flat mask); the group-norm
  variant ``cnn_gn`` with the earlier short warm-up (3 epochs at batch 128, 30 steps) gives 0.86, worse than
  no optimisation at all (0.78): an under-trained surrogate's gradients point at anatomy, and the noise steps
  then scramble the class texture of the start. The earlier reason for group norm (a batch-norm surrogate in
  eval mode at chance after about 30 steps, running statistics far from batch statistics) goes away with the
  150-step warm-up.
- ``cnn_gn``: the same network with group norm (no train / eval gap; kept for comparison).
- ``resnet18``: a CIFAR-style ResNet-18 (3x3 stem, no max pool) with a configurable base width; the victim
  family used in the benchmark. Slower as a surrogate.

Every model takes ``N x C x H x W`` float tensors in [0, 1].
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import nn

from guards.errors import GuardError

logger = logging.getLogger(__name__)

SurrogateName = Literal["cnn", "cnn_gn", "resnet18"]


class SmallCNN(nn.Module):
    """Three conv blocks and a linear head; ``features`` returns the pooled 128-d embedding."""

    def __init__(self, *, in_channels: int = 1, num_classes: int = 2, width: int = 32, norm: str = "batch") -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout) if norm == "batch" else nn.GroupNorm(8, cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.body = nn.Sequential(block(in_channels, w), block(w, 2 * w), block(2 * w, 4 * w))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * w, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.body(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.short(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 (He et al. 2016): 3x3 stem, four stages of two basic blocks, base ``width``."""

    def __init__(self, *, in_channels: int = 1, num_classes: int = 2, width: int = 64) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        layers: list[nn.Module] = []
        cin = w
        for i, cout in enumerate((w, 2 * w, 4 * w, 8 * w)):
            stride = 1 if i == 0 else 2
            layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.layers(self.stem(x))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


def build_surrogate(name: str, *, in_channels: int, num_classes: int, width: int = 32) -> SmallCNN | ResNet18:
    """The surrogate named ``name`` ("cnn", "cnn_gn" or "resnet18") with ``num_classes`` outputs."""
    if name == "cnn":
        return SmallCNN(in_channels=in_channels, num_classes=num_classes, width=width, norm="batch")
    if name == "cnn_gn":
        return SmallCNN(in_channels=in_channels, num_classes=num_classes, width=width, norm="group")
    if name == "resnet18":
        return ResNet18(in_channels=in_channels, num_classes=num_classes, width=width)
    raise GuardError(f"protect.surrogate {name!r} is unknown; use 'cnn', 'cnn_gn' or 'resnet18'")


def select_device(requested: str, *, cuda_available: bool | None = None) -> torch.device:
    """The torch device for ``requested`` ("cpu", "cuda" or "cuda:N").

    CUDA is used only when asked for; asking for it on a machine without a usable GPU is an error (a silent
    fall-back to CPU would hide a misconfigured GPU worker). ``cuda_available`` overrides the probe (tests).
    """
    req = requested.strip().lower()
    if req == "cpu":
        return torch.device("cpu")
    if req == "cuda" or req.startswith("cuda:"):
        available = torch.cuda.is_available() if cuda_available is None else cuda_available
        if not available:
            raise GuardError(
                f"device {requested!r} was asked for but CUDA is not available on this machine; "
                "run with --device cpu or on a GPU worker"
            )
        if req.startswith("cuda:"):
            index = req.split(":", 1)[1]
            if not index.isdigit():
                raise GuardError(f"device {requested!r}: expected 'cuda:<index>', e.g. 'cuda:0'")
            count = torch.cuda.device_count() if cuda_available is None else int(index) + 1
            if int(index) >= count:
                raise GuardError(f"device {requested!r}: only {count} CUDA device(s) present")
        return torch.device(req)
    raise GuardError(f"device {requested!r} is not supported; use 'cpu' or 'cuda'")


def auto_batch_size(
    device: torch.device,
    *,
    image_size: int,
    channels: int,
    requested: int = 0,
    free_bytes: int | None = None,
    bytes_per_pixel: int = 4096,
) -> int:
    """Batch size: ``requested`` when > 0, else chosen from free memory.

    ``bytes_per_pixel`` is a measured upper bound of activation + gradient memory per input pixel for the
    ``cnn`` surrogate (forward and backward, float32), with a margin. A quarter of the free memory (GPU memory
    on CUDA, available RAM on CPU) is used, and the result is clamped to 8..512 and rounded to a power of two.
    """
    if requested > 0:
        return requested
    if free_bytes is None:
        if device.type == "cuda":
            free_bytes, _ = torch.cuda.mem_get_info(device)
        else:
            free_bytes = _available_ram()
    per_image = max(1, image_size * image_size * channels * bytes_per_pixel)
    n = max(8, min(512, (free_bytes // 4) // per_image))
    return 1 << (int(n).bit_length() - 1)


def _available_ram() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError as e:
        logger.debug("cannot read /proc/meminfo (%s); assuming 2 GiB free", e)
    return 2 << 30
