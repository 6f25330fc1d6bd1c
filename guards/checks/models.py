"""Small victim / proxy models and the one training loop the model-based checks share.

The victim (unlearnability) and the attacker's proxy and reference models (membership inference, LiRA
arXiv 2112.03570, RMIA arXiv 2312.03262) are the same small CNN, trained without augmentation or early
stopping, as an attacker fitting the release would. Everything is seeded: weight initialisation and batch
order come from a ``torch.Generator`` built from the seed argument, never from the global generator.
CPU by default; ``device`` may be ``"cuda"``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from guards.errors import InputError
from guards.progress import Steps
from guards.threads import CPU_THREADS, cpu_threads

logger = logging.getLogger(__name__)


class SmallCNN(nn.Module):
    """Three conv blocks (8-16-32 channels, batch norm) and a linear head: about 12k weights, fast on 2 CPUs."""

    def __init__(self, *, n_classes: int, width: int = 8) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Linear(4 * w * 16, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))  # type: ignore[no-any-return]


def _init(model: nn.Module, generator: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu", generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_model(*, n_classes: int, seed: int, width: int = 8) -> SmallCNN:
    """A :class:`SmallCNN` with weights drawn from ``seed`` (same seed, same weights)."""
    if n_classes < 2:
        raise InputError(f"a classifier needs at least 2 classes, got {n_classes}; check the cohort's labels")
    model = SmallCNN(n_classes=n_classes, width=width)
    _init(model, torch.Generator().manual_seed(seed))
    return model


@dataclass
class Trained:
    """A trained model and, when an evaluation callback was given, its value after each epoch."""

    model: nn.Module  # a SmallCNN unless train() was given another ``build``
    curve: list[float] = field(default_factory=list)


def train(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_classes: int,
    epochs: int,
    seed: int,
    device: str = "cpu",
    batch_size: int = 32,
    lr: float = 2e-3,
    weight_decay: float = 0.0,
    evaluate: Callable[[Any], float] | None = None,
    min_steps: int = 0,
    what: str = "train",
    build: Callable[[int, int], nn.Module] | None = None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> Trained:
    """Train a fresh :class:`SmallCNN` on ``x`` (N x 1 x H x W in [0, 1]) and labels ``y`` with Adam.

    ``evaluate`` (if given) is called after every epoch with the model in eval mode; its values form the
    learning curve of the report. Progress is logged as ``what`` (e.g. "membership: reference model 3/8").
    ``build(n_classes, seed)`` makes another architecture than the :class:`SmallCNN` (a victim family of
    :mod:`guards.checks.victims`); ``augment(batch, generator)`` transforms every training batch (an attacker's
    augmentations), seeded by the training generator.
    The returned model is on ``device`` and in eval mode. On the CPU, training
    runs on ``CPU_THREADS`` thread(s): for a model this small a second thread costs more in synchronisation than
    it gives, and several times more on a shared, busy machine (see benchmarks/checks_suite/RESULTS.md).
    """
    if len(x) != len(y):
        raise InputError(f"train: {len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise InputError("train: no training images; the split left this model without data")
    if epochs < 1:
        raise InputError(f"train: epochs must be at least 1, got {epochs}")
    # ``min_steps``: a victim trains to convergence, not for a fixed number of epochs, so small releases get
    # more epochs (a 143-image release with 15 epochs of batch 32 gave 75 steps and a constant classifier).
    batches = -(-len(x) // batch_size)
    epochs = max(epochs, -(-min_steps // batches))
    with cpu_threads(CPU_THREADS if device == "cpu" else None):
        return _train(x, y, n_classes=n_classes, epochs=epochs, seed=seed, device=device, batch_size=batch_size,
                      lr=lr, weight_decay=weight_decay, evaluate=evaluate,
                      steps=Steps(epochs, what=what, unit="epochs", logger=logger), build=build, augment=augment)


def _train(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_classes: int,
    epochs: int,
    seed: int,
    device: str,
    batch_size: int,
    lr: float,
    weight_decay: float,
    evaluate: Callable[[Any], float] | None,
    steps: Steps,
    build: Callable[[int, int], nn.Module] | None = None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> Trained:
    gen = torch.Generator().manual_seed(seed)
    model = (build(n_classes, seed) if build is not None else build_model(n_classes=n_classes, seed=seed)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    xd, yd = x.to(device), y.to(device)
    curve: list[float] = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(xd), generator=gen).to(device)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            batch = xd[idx] if augment is None else augment(xd[idx], gen)
            loss = loss_fn(model(batch), yd[idx])
            loss.backward()
            opt.step()
        model.eval()
        if evaluate is not None:
            curve.append(float(evaluate(model)))
        steps.advance()
    steps.done()
    return Trained(model=model, curve=curve)


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, *, device: str = "cpu", batch_size: int = 512) -> torch.Tensor:
    """Model outputs for ``x`` (on the CPU), computed in eval mode in batches."""
    model.eval()
    with cpu_threads(CPU_THREADS if device == "cpu" else None):
        outs = [model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def true_label_margin(out: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Logit-scaled confidence of the true label, ``log p_y - log(1 - p_y)`` (LiRA, arXiv 2112.03570 sec. IV-B).

    Computed stably from logits as ``z_y - logsumexp(z_{-y})``.
    """
    z = out.double()
    zy = z.gather(1, y.view(-1, 1)).squeeze(1)
    others = z.scatter(1, y.view(-1, 1), float("-inf"))
    return (zy - torch.logsumexp(others, dim=1)).numpy()


def true_label_prob(out: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Softmax probability of the true label (RMIA, arXiv 2312.03262 eq. 3 uses Pr(x | theta) = p_y)."""
    p = torch.softmax(out.double(), dim=1)
    return p.gather(1, y.view(-1, 1)).squeeze(1).numpy()


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (chance is 1 / number of classes)."""
    classes = np.unique(y_true)
    if len(classes) == 0:
        return float("nan")
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))
