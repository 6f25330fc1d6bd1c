"""Unlearnable noise restricted to local masks (SALM): error-minimizing, or class-targeted adversarial (default).

The default (``objective = "adversarial"``, step 8) pushes each image towards the next class against surrogates
trained on clean, blurred and JPEG-75 images, through the attacker's view (``eot.py``), on the whole foreground
(rho 1), within 8/255 and a PSNR of 38 dB. The min-min rounds below remain selectable.

Implements the min-min optimisation of Huang et al., "Unlearnable Examples: Making Personal Data
Unexploitable" (ICLR 2021, arXiv 2101.04898, eq. 2 and Algorithm 1, sample-wise variant), with the
sparsity-aware local masking of Sun et al., "Medical Unlearnable Examples" (arXiv 2403.10573): the noise of
each image may only touch the top ``rho`` fraction of its foreground pixels by saliency (``mask.py``).

Algorithm (all randomness from one seed; ``images`` in [0, 1], ``N x C x H x W``):

1. Warm-up: the surrogate (``surrogate.py``, a batch-norm CNN) trains ``warmup_epochs`` (at least
   ``warmup_min_steps`` batches of ``train_batch``) on the clean images.
2. Mask (``mask.py``): exactly round(rho * foreground) pixels per image, the top ones by a saliency score.
   ``saliency="gradient"`` (default): 3x3-smoothed |d loss / d x| of the warmed-up surrogate plus 0.1 x local
   contrast; ``"flat"``: the smoothest foreground (lowest 3x3-mean local contrast, ``mask.flatness``).
   Dense noise is ``rho=None``.
3. Rounds (Algorithm 1): train the surrogate ``train_steps`` batches on the noised images, then for every
   batch take ``steps`` signed-gradient *descent* steps of size ``step_size`` on the cross-entropy,
   ``delta <- clip_eps(delta - step * sign(grad)) * mask`` and keep ``x + delta`` in [0, 1]; stop when the
   surrogate's accuracy on the noised images reaches ``stop_accuracy`` (after ``min_rounds``).
4. Victim-aware training: the surrogate's training steps and the noise steps both see the augmentation a
   victim is likely to train with (random horizontal flip, random shift of up to 2 pixels with reflection;
   differentiable, so the noise is optimised through it, an expectation over transformations).
5. Start ("init"): ``uniform`` in [-eps, eps] (Huang et al.); ``class_texture``: each class's random 4 x 4
   sign tile repeated; ``class_frequency`` (default): each class a square wave at its own high spatial
   frequency (checkerboard, stripes, diagonals), where area-downsampled MRI has the least power, so the same
   budget gives the largest signal-to-content ratio. The min-min rounds then refine each image's noise.
6. Budget placement ("saturate"): at the end every masked pixel gets the full budget,
   ``delta = eps * sign(delta)``, so the shortcut has the largest margin the L-infinity ball allows inside the
   sparse mask.
7. Robust options (issue 15). ``min_psnr_db``: besides the L-infinity box, each image's noise is scaled down
   until its PSNR (data range 1, the display window) is at least this, an L2 ball (:func:`project`); the free
   parameters then live in a box of 2 eps and the projection, applied in the forward pass, makes the budget
   exact. ``eot``: the noise steps see :func:`guards.protect.eot.attacker_view` (a differentiable JPEG at quality
   50-95, Gaussian blur, intensity/gamma jitter, flips and shifts), the expectation over transformations of REM
   (Fu et al., ICLR 2022). ``classwise``: the noise of an image is a part shared by its class plus its own part
   (class-wise noise, Huang et al. section 4.1, plus sample-wise), both optimised by the same min-min steps; the
   class part's step is ``class_step_scale`` of ``step_size`` because its gradient sums a whole batch. With
   either option both parts start uniform in +-eps/10 (``init`` is not used), so the first rounds' gradients,
   not a fixed texture, decide where the budget goes.
8. ``objective = "adversarial"``: instead of the min-min rounds, class-targeted adversarial noise (Fowl et al.,
   "Adversarial examples make strong poisons", NeurIPS 2021). The surrogate is trained once on the clean images
   (one-cycle schedule, weight decay 5e-4, flip + shift), then each image gets ``steps`` signed-gradient steps
   towards the next class, ``(y + 1) mod classes``, through the attacker's view (``eot``) and inside the
   projection (``min_psnr_db``, ``epsilon``, the mask). A victim trained on the release learns the next class's
   features under this class's label, and on clean images those features point it the wrong way.

Measurements behind the defaults (``benchmarks/unlearnable``: 1,200 Colin27 patches of 32 x 32, 4 classes,
chance 0.25; ``ablation.py``: small-CNN victim, 8 epochs, peak balanced test accuracy; the victims are the
check's attackers: plain, JPEG-75 and blur-sigma-1 training images, standard augmentations, an MLP. Clean: 0.87,
0.86, 0.69, 0.84, 0.51. Raw figures in ``benchmarks/unlearnable/ablation_issue15_*.jsonl``, table in RESULTS.md.)

- The min-min noise this module shipped before (rho 0.1, saturated, 40.2 dB): 0.68, 0.81, 0.68, 0.75, 0.51.
  Min-min over the whole foreground at 38.5 dB with EOT and a class part: 0.72, 0.82, 0.70, 0.60, 0.51. A
  surrogate trained on the anatomy makes min-min noise that amplifies the anatomy, so JPEG keeps what the
  victim needs either way.
- Class-targeted adversarial noise at 38.5 dB with EOT (step 8), one surrogate: 0.56, 0.63, 0.68, 0.49, 0.50,
  in 58 s. Without EOT: 0.48, 0.66, 0.69, 0.41, 0.50 (EOT trades 7 points of the plain victim for 3 of the JPEG
  one; the check's figure is the worst case, so EOT stays). A class part added nothing (0.56, 0.64, 0.71, 0.50,
  0.49) at 3x the time; half the foreground (rho 0.5) was worse except under blur (0.59, 0.68, 0.64, 0.58,
  0.51). The blurred- and JPEG-trained surrogates of ``defences`` are the default; their figures are the
  benchmark's (RESULTS.md). No configuration tried meets the benchmark's targets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from guards.errors import GuardError
from guards.progress import Steps, duration
from guards.protect.eot import attacker_view, flip_shift, gaussian_blur, jpeg
from guards.protect.mask import batch_masks, flatness, local_contrast, smooth
from guards.protect.surrogate import build_surrogate
from guards.threads import available_cores, cpu_threads

logger = logging.getLogger(__name__)


INITS: tuple[str, ...] = ("uniform", "class_texture", "class_frequency")
SALIENCIES: tuple[str, ...] = ("flat", "gradient")
OBJECTIVES: tuple[str, ...] = ("min-min", "adversarial")
# What an attacker may do to the training images once, before training (guards.checks.victims' jpeg75 and blur
# victims): each names a surrogate of the adversarial ensemble trained on clean images so defended (step 8).
DEFENCES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "blur": lambda v: gaussian_blur(v, 1.0),
    "jpeg75": lambda v: jpeg(v, 75),
}
# (cycles per pixel down, across): high spatial frequencies, where area-downsampled MRI has the least power,
# and distinguishable from each other under flips and 1-pixel shifts (orientation / period differ).
FREQUENCIES: tuple[tuple[float, float], ...] = (
    (0.5, 0.5), (0.0, 0.5), (0.5, 0.0), (0.25, 0.25), (0.25, -0.25), (0.0, 0.25), (0.25, 0.0), (0.5, 0.25),
)


@dataclass(frozen=True)
class NoiseConfig:
    """Options of :func:`error_minimizing_noise` (budget in [0, 1] image units)."""

    epsilon: float = 8 / 255
    step_size: float = 0.8 / 255
    steps: int = 10  # noise steps per batch per round
    rho: float | None = 0.1  # None: dense noise (Huang et al.), else the SALM mask sparsity
    stop_accuracy: float = 0.99
    max_rounds: int = 20
    min_rounds: int = 1
    train_steps: int = 40  # surrogate batches per round (Huang et al. use 10)
    warmup_epochs: int = 8
    warmup_min_steps: int = 150  # at least this many surrogate batches of warm-up, however few the images
    batch_size: int = 128  # noise-step batch (memory); the surrogate trains on batches of ``train_batch``
    train_batch: int = 64
    surrogate: str = "cnn"
    width: int = 32
    lr: float = 2e-3  # Adam
    augment: bool = True
    saturate: bool = True
    init: str = "uniform"  # "uniform" (Huang et al.), "class_texture" or "class_frequency" (module docstring)
    saliency: str = "gradient"  # "gradient" (surrogate input gradient) or "flat" (low local contrast), mask.py
    tile: int = 4  # side of the class texture tile
    min_psnr_db: float | None = None  # None: L-infinity only; else also each image's PSNR >= this (an L2 ball)
    eot: bool = False  # noise steps through eot.attacker_view (JPEG, blur, jitter), not only flip + shift
    classwise: bool = False  # one part per class plus one per image (module docstring, step 7)
    class_step_scale: float = 0.25  # the class part's step, relative to step_size (it sums many images' gradients)
    objective: str = "min-min"  # "min-min" (error-minimizing, Huang et al.) or "adversarial" (step 8)
    defences: tuple[str, ...] = ()  # adversarial: extra surrogates trained on defended images (DEFENCES)

    def __post_init__(self) -> None:
        if not 0.0 < self.epsilon <= 1.0:
            raise GuardError(f"protect.epsilon {self.epsilon!r} must be in (0, 1]")
        if self.rho is not None and not 0.0 < self.rho <= 1.0:
            raise GuardError(f"protect.rho {self.rho!r} must be in (0, 1]")
        if self.init not in INITS:
            raise GuardError(f"protect.init {self.init!r} is unknown; use one of {list(INITS)}")
        if self.objective not in OBJECTIVES:
            raise GuardError(f"protect.objective {self.objective!r} is unknown; use one of {list(OBJECTIVES)}")
        unknown = [d for d in self.defences if d not in DEFENCES]
        if unknown:
            raise GuardError(f"protect.defences {unknown} unknown; use any of {sorted(DEFENCES)}")
        if self.defences and self.objective != "adversarial":
            raise GuardError("protect.defences needs protect.objective = \"adversarial\" (the min-min rounds train one"
                             " surrogate)")
        if self.saliency not in SALIENCIES:
            raise GuardError(f"protect.saliency {self.saliency!r} is unknown; use one of {list(SALIENCIES)}")
        if self.batch_size <= 0:
            raise GuardError(f"batch size {self.batch_size!r} must be positive")
        if self.min_psnr_db is not None and self.min_psnr_db <= 0:
            raise GuardError(f"protect.min_psnr_db {self.min_psnr_db!r} must be above 0 dB (e.g. 38)")


@dataclass(frozen=True)
class NoiseResult:
    """``delta`` (same shape as the images, |delta| <= epsilon, zero outside ``mask``) and what it took."""

    delta: torch.Tensor
    mask: torch.Tensor  # bool, N x 1 x H x W
    saliency: torch.Tensor  # N x 1 x H x W, used to build the native-resolution masks
    rounds: int
    surrogate_accuracy: float
    seconds: float
    examined: int  # images optimised


def _noise_view(inp: torch.Tensor, config: NoiseConfig, gen: torch.Generator) -> torch.Tensor:
    """What the noise steps optimise through: the attacker's view (``eot``), else flip + shift (``augment``)."""
    if config.eot:
        return attacker_view(inp, gen)
    return flip_shift(inp, gen) if config.augment else inp


def project(
    delta: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, *, epsilon: float, min_psnr_db: float | None
) -> torch.Tensor:
    """``delta`` restricted to ``mask``, scaled down per image until its PSNR (data range 1) is at least
    ``min_psnr_db``, clipped to +-``epsilon`` and so that ``x + delta`` stays in [0, 1]."""
    d = delta * mask
    if min_psnr_db is not None:
        target = 10.0 ** (-min_psnr_db / 10.0)
        mse = d.pow(2).flatten(1).mean(1).clamp_min(1e-20)
        d = d * torch.sqrt(target / mse).clamp(max=1.0).view(-1, *([1] * (d.ndim - 1)))
    d = d.clamp(-epsilon, epsilon)
    return (x + d).clamp(0, 1) - x


def _batched(
    combined: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
    rows: torch.Tensor, delta: torch.Tensor, per_class: torch.Tensor | None, batch_size: int,
) -> torch.Tensor:
    """The projected noise of ``rows`` (sample part + class part), computed ``batch_size`` rows at a time."""
    return torch.cat([combined(rows[i : i + batch_size], delta[rows[i : i + batch_size]], per_class)
                      for i in range(0, len(rows), batch_size)])


def _class_texture(
    y: torch.Tensor, shape: torch.Size, *, classes: int, tile: int, gen: torch.Generator
) -> torch.Tensor:
    """+-1 per pixel: each class's own random ``tile x tile`` sign pattern repeated over the image."""
    tiles = torch.randint(0, 2, (classes, tile, tile), generator=gen).float() * 2 - 1
    h, w = shape[-2:]
    reps = (-(-h // tile), -(-w // tile))
    full = tiles.repeat(1, *reps)[:, :h, :w]
    return full[y][:, None].expand(shape).contiguous()


def _class_frequency(y: torch.Tensor, shape: torch.Size, *, classes: int, gen: torch.Generator) -> torch.Tensor:
    """+-1 per pixel: each class gets a square wave at its own high spatial frequency (seeded assignment)."""
    if classes > len(FREQUENCIES):
        return _class_texture(y, shape, classes=classes, tile=4, gen=gen)
    order = torch.randperm(len(FREQUENCIES), generator=gen)[:classes]
    h, w = shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    waves = torch.stack(
        [torch.cos(2 * torch.pi * (FREQUENCIES[int(j)][0] * yy + FREQUENCIES[int(j)][1] * xx) + torch.pi / 4)
         for j in order]
    )
    full = torch.where(waves >= 0, 1.0, -1.0).float()
    return full[y][:, None].expand(shape).contiguous()


def _train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batches: int,
    batch_size: int,
    gen: torch.Generator,
    augment: bool,
    steps: Steps | None = None,
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> None:
    model.train()
    n = x.shape[0]
    order = torch.randperm(n, generator=gen)
    pos = 0
    for _ in range(batches):
        if pos >= n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        xb = x[idx.to(x.device)]
        if augment:
            xb = flip_shift(xb, gen)
        loss = F.cross_entropy(model(xb), y[idx.to(y.device)])
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        if schedule is not None:
            schedule.step()
        if steps is not None:
            steps.advance()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``x``."""
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / max(1, x.shape[0])


def _saliency(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, mode: str) -> torch.Tensor:
    if mode == "flat":
        return flatness(x.mean(1, keepdim=True))
    model.eval()
    out = torch.empty(x.shape[0], 1, *x.shape[2:], device=x.device)
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size].clone().requires_grad_(True)
        loss = F.cross_entropy(model(xb), y[i : i + batch_size], reduction="sum")
        (g,) = torch.autograd.grad(loss, xb)
        grad = smooth(g.abs().sum(1, keepdim=True))
        contrast = local_contrast(x[i : i + batch_size].mean(1, keepdim=True))
        gmax = grad.flatten(1).amax(1).clamp_min(1e-12)[:, None, None, None]
        cmax = contrast.flatten(1).amax(1).clamp_min(1e-12)[:, None, None, None]
        out[i : i + batch_size] = grad / gmax + 0.1 * contrast / cmax
    return out


def _signed_step(
    d: torch.Tensor, cls: torch.Tensor | None, grads: tuple[torch.Tensor, ...], mask: torch.Tensor, *,
    config: NoiseConfig, bound: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One signed-gradient descent step of the image part ``d`` (kept inside ``mask``) and of the class part
    ``cls`` (a step of ``class_step_scale``), each clipped to +-``bound``."""
    with torch.no_grad():
        d = (d - config.step_size * grads[0].sign()).clamp(-bound, bound) * mask
        if cls is not None:
            cls = (cls - config.step_size * config.class_step_scale * grads[1].sign()).clamp(-bound, bound)
    return d, cls


def _targeted_poison(
    ensemble: list[tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor] | None]],
    x: torch.Tensor,
    y: torch.Tensor,
    m: torch.Tensor,
    active: torch.Tensor,
    *,
    classes: int,
    config: NoiseConfig,
    gen: torch.Generator,
) -> tuple[torch.Tensor, float]:
    """Step 8: class-targeted adversarial noise against the trained surrogate, each image pushed towards the next
    class, ``(y + 1) mod classes`` (Fowl et al. 2021). ``steps`` signed-gradient steps of ``step_size`` on the
    cross-entropy to the target through the attacker's view, inside the projection; returns the projected
    noise and the surrogate's accuracy (true labels) on the noised images."""
    eps, bs = config.epsilon, config.batch_size
    target = (y + 1) % classes
    delta = torch.zeros_like(x)
    per_class = torch.zeros((classes, *x.shape[1:]), device=x.device) if config.classwise else None
    model = ensemble[0][0]
    for member, _ in ensemble:
        member.eval()
        for p in member.parameters():
            p.requires_grad_(False)
    progress = Steps(-(-len(active) // bs) * config.steps, what="protect: adversarial noise", unit="steps",
                     logger=logger)
    try:
        for i in range(0, len(active), bs):
            rows = active[i : i + bs]
            xb, tb, mb = x[rows], target[rows], m[rows]
            d = torch.zeros_like(xb)
            cls = per_class
            for _ in range(config.steps):
                d.requires_grad_(True)
                if cls is not None:
                    cls = cls.detach().requires_grad_(True)
                raw = d if cls is None else d + cls[y[rows]]
                inp = xb + project(raw, xb, mb, epsilon=eps, min_psnr_db=config.min_psnr_db)
                loss = torch.zeros((), device=x.device)
                for member, defend in ensemble:
                    if defend is not None:  # a defended-image surrogate sees the poison as that attacker would
                        view = defend(flip_shift(inp, gen))
                    else:
                        view = _noise_view(inp, config, gen)
                    loss = loss + F.cross_entropy(member(view), tb)
                grads = torch.autograd.grad(loss, [d] if cls is None else [d, cls])
                d, cls = _signed_step(d, cls, grads, mb, config=config, bound=2 * eps)
                progress.advance()
            delta[rows] = d.detach()
            per_class = None if cls is None else cls.detach()
    finally:
        for member, _ in ensemble:
            for p in member.parameters():
                p.requires_grad_(True)
    progress.done()
    with torch.no_grad():
        raw = delta if per_class is None else delta + per_class[y]
        delta = project(raw, x, m, epsilon=eps, min_psnr_db=config.min_psnr_db)
        acc = accuracy(model, x + delta, y, batch_size=bs)
    return delta, acc


def error_minimizing_noise(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    config: NoiseConfig,
    seed: int,
    device: torch.device | None = None,
    num_classes: int | None = None,
    frozen: torch.Tensor | None = None,
) -> NoiseResult:
    """Sample-wise error-minimizing noise for ``images`` (``N x C x H x W`` in [0, 1]) and integer ``labels``.

    ``frozen`` (bool, N): images that already carry their noise, as released before (an incremental run). The
    surrogate trains on them as they are, but they get no new noise (their delta and mask are zero) and the
    noise steps skip them, so the cost of the rounds follows the new images only.
    Same ``seed``, inputs and device give the same noise. The result lives on the CPU.
    """
    dev = device or torch.device("cpu")
    with cpu_threads(available_cores() if dev.type == "cpu" else None):
        return _error_minimizing_noise(images, labels, config=config, seed=seed, dev=dev, num_classes=num_classes,
                                       frozen=frozen)


def _error_minimizing_noise(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    config: NoiseConfig,
    seed: int,
    dev: torch.device,
    num_classes: int | None,
    frozen: torch.Tensor | None,
) -> NoiseResult:
    if images.ndim != 4:
        raise GuardError(f"images must be N x C x H x W, got shape {tuple(images.shape)}")
    if labels.shape[0] != images.shape[0]:
        raise GuardError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if images.shape[0] == 0:
        raise GuardError("no images to protect")
    if frozen is not None and frozen.shape != (images.shape[0],):
        raise GuardError(f"frozen must be one flag per image ({images.shape[0]}), got shape {tuple(frozen.shape)}")
    start = time.monotonic()
    gen = torch.Generator().manual_seed(seed)
    x = images.to(dev, torch.float32)
    y = labels.to(dev, torch.long)
    classes = num_classes or int(labels.max()) + 1
    adversarial = config.objective == "adversarial"
    if adversarial and classes < 2:  # one class: a second output to push towards, else every gradient is zero
        logger.info("protect: all images are one class; the adversarial noise pushes them towards a second one")
        classes = 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_surrogate(config.surrogate, in_channels=x.shape[1], num_classes=classes, width=config.width)
    model = model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=5e-4 if adversarial else 0.0)
    bs = config.batch_size
    n = x.shape[0]
    tb = min(config.train_batch, bs)
    warmup = max(config.warmup_epochs * max(1, -(-n // tb)), config.warmup_min_steps)
    # The adversarial objective needs a surrogate that has learnt the task well (step 8): a one-cycle schedule.
    schedule = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=warmup)
                if adversarial and warmup > 0 else None)
    steps = Steps(warmup, what="protect: surrogate warm-up", unit="batches", logger=logger)
    _train(model, opt, x, y, batches=warmup, batch_size=tb, gen=gen, augment=config.augment, steps=steps,
           schedule=schedule)
    steps.done()

    saliency = _saliency(model, x, y, batch_size=bs, mode=config.saliency)
    gray = x.mean(1, keepdim=True)
    if config.rho is None:
        mask = torch.ones_like(gray, dtype=torch.bool)
    else:
        mask = batch_masks(saliency.cpu(), gray.cpu(), rho=config.rho).to(dev)
    active = torch.arange(x.shape[0], device=dev)
    if frozen is not None:
        mask[frozen.to(dev)] = False
        active = active[~frozen.to(dev)]
    m = mask.to(x.dtype)
    eps = config.epsilon
    if adversarial:
        ensemble: list[tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor] | None]] = [(model, None)]
        for k, name in enumerate(config.defences):
            defend = DEFENCES[name]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 1 + k)
                extra = build_surrogate(config.surrogate, in_channels=x.shape[1], num_classes=classes,
                                        width=config.width).to(dev)
            extra_opt = torch.optim.Adam(extra.parameters(), lr=config.lr, weight_decay=5e-4)
            extra_schedule = (torch.optim.lr_scheduler.OneCycleLR(extra_opt, max_lr=config.lr, total_steps=warmup)
                              if warmup > 0 else None)
            defended = torch.cat([defend(x[i : i + bs]) for i in range(0, n, bs)]).detach()
            steps = Steps(warmup, what=f"protect: surrogate on {name} images", unit="batches", logger=logger)
            _train(extra, extra_opt, defended, y, batches=warmup, batch_size=tb, gen=gen, augment=config.augment,
                   steps=steps, schedule=extra_schedule)
            steps.done()
            ensemble.append((extra, defend))
        delta, acc = _targeted_poison(ensemble, x, y, m, active, classes=classes, config=config, gen=gen)
        return NoiseResult(delta=delta.cpu(), mask=mask.cpu(), saliency=saliency.cpu(), rounds=1,
                           surrogate_accuracy=acc, seconds=time.monotonic() - start, examined=len(active))
    robust = config.classwise or config.min_psnr_db is not None
    if robust:  # small start, so the first rounds' gradients decide where the budget goes (step 7)
        delta = (torch.rand(x.shape, generator=gen) * 2 - 1).to(dev) * (eps / 10) * m
    elif config.init == "class_frequency":
        delta = _class_frequency(y.cpu(), x.shape, classes=classes, gen=gen).to(dev) * eps * m
    elif config.init == "class_texture":
        delta = _class_texture(y.cpu(), x.shape, classes=classes, tile=config.tile, gen=gen).to(dev) * eps * m
    else:
        delta = (torch.rand(x.shape, generator=gen) * 2 - 1).to(dev) * eps * m
    if not robust:
        delta = (x + delta).clamp(0, 1) - x
    per_class = None
    if config.classwise:
        per_class = (torch.rand((classes, *x.shape[1:]), generator=gen) * 2 - 1).to(dev) * (eps / 10)
    bound = 2 * eps if robust else eps  # the free parameters' box; the projection makes the budget exact

    def combined(rows: torch.Tensor, sample: torch.Tensor, cls: torch.Tensor | None) -> torch.Tensor:
        d = sample if cls is None else sample + cls[y[rows]]
        return project(d, x[rows], m[rows], epsilon=eps, min_psnr_db=config.min_psnr_db)

    everyone = torch.arange(n, device=dev)
    acc = 0.0
    rounds = 0
    noise_batches = -(-len(active) // bs)
    for rounds in range(1, config.max_rounds + 1):
        steps = Steps(config.train_steps + noise_batches * config.steps, unit="steps", logger=logger,
                      what=f"protect: noise round {rounds} (at most {config.max_rounds})")
        with torch.no_grad():
            xn = x + _batched(combined, everyone, delta, per_class, bs)
        _train(model, opt, xn, y, batches=config.train_steps, batch_size=tb, gen=gen, augment=config.augment,
               steps=steps)
        model.eval()
        for i in range(0, len(active), bs):
            rows = active[i : i + bs]
            xb, yb, mb = x[rows], y[rows], m[rows]
            d = delta[rows].clone()
            cls = per_class
            for _ in range(config.steps):
                d.requires_grad_(True)
                if cls is not None:
                    cls = cls.detach().requires_grad_(True)
                inp = _noise_view(xb + combined(rows, d, cls), config, gen)
                loss = F.cross_entropy(model(inp), yb)
                grads = torch.autograd.grad(loss, [d] if cls is None else [d, cls])
                d, cls = _signed_step(d, cls, grads, mb, config=config, bound=bound)
                if not robust:  # the original min-min keeps x + delta in [0, 1] after every step
                    d = (xb + d).clamp(0, 1) - xb
                steps.advance()
            delta[rows] = d.detach()
            per_class = None if cls is None else cls.detach()
        with torch.no_grad():
            acc = accuracy(model, x + _batched(combined, everyone, delta, per_class, bs), y, batch_size=bs)
        took = steps.done()
        logger.info(
            "protect: noise round %d, surrogate accuracy on noised data %.3f (stops at %.2f after %d rounds); "
            "%s elapsed, at most %d more rounds of about %s",
            rounds, acc, config.stop_accuracy, config.min_rounds, duration(time.monotonic() - start),
            config.max_rounds - rounds, duration(took),
        )
        if acc >= config.stop_accuracy and rounds >= config.min_rounds:
            break
    with torch.no_grad():
        delta = _batched(combined, everyone, delta, per_class, bs)
        if config.saturate:
            delta = project(eps * torch.sign(delta), x, m, epsilon=eps, min_psnr_db=config.min_psnr_db)
    seconds = time.monotonic() - start
    return NoiseResult(
        delta=delta.cpu(),
        mask=mask.cpu(),
        saliency=saliency.cpu(),
        rounds=rounds,
        surrogate_accuracy=acc,
        seconds=seconds,
        examined=len(active),
    )
