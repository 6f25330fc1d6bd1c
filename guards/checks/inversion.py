"""Model inversion (reconstruction) per label and subgroup cell, advisory by default (issue 18).

Wu, Nguyen et al. (arXiv 2011.00177) show that model inversion reconstructs medical images from a model trained on
them; Ziller et al. (Nature Machine Intelligence 2024) measure reconstruction success as ReRo, the share of
training images whose nearest reconstruction lies within a distance bound. This check asks whether a model fitted
to the release reconstructs the patients it was trained on better than patients it never saw, per cell.

The attacker's view. The patients with a known label are split at random into a training half and a held-out
half, stratified by label (a label carried by one patient puts that patient in the training half). Two proxies,
the membership check's small CNN trained as an attacker fitting the release would (``guards.checks.models.train``,
same seed, same batch order):

- ``protected``: trained on the training half's **released** images (what the release exposes);
- ``clean``: trained on the same patients' clean de-identified images (what the noise changes). When the release
  is the clean tree (protection off), one proxy stands for both and the details say so.

Reconstruction (MIFace-style, Fredrikson et al. 2015): for each label, ``inversion.restarts`` images, each from
its own seeded smooth random start, are optimised by gradient ascent on the proxy's confidence in the label
(Adam on the pixels, clamped to [0, 1]) with a total-variation prior (``inversion.tv_weight``). The proxy knows
labels, not subgroups, so the reconstructions are per label and every cell of that label is compared with them.

Scores. Each image gets its best SSIM (Gaussian window, data range 1) to any reconstruction of its label,
measured against the patient's clean image (what a reconstruction reveals of the patient, whichever proxy made
it); each patient of a label gets the best over their images.

Cells: ``all``, ``label=L`` and ``label=L, column=value`` for each subgroup column. Per cell, leakage is the
separation of the training patients' best SSIM from the held-out patients': AUC (Mann-Whitney, ties half) and a
one-sided permutation test over patients (the train / held-out assignment shuffled within the cell). Bonferroni
over the tested cells: a cell fails when its p-value is at or below ``alpha / cells`` and the one-sided
``1 - alpha / cells`` lower bound of its AUC (normal, DeLong standard error) is above ``inversion.auc_max``: a
separation shown beyond chance and shown larger than the threshold. Otherwise it passes. (Every proxy that fits
its training images separates them a little: over 20 balanced synthetic releases the largest cell AUC was 0.55 to
0.78, p-values down to 0.001, so significance alone flagged 2 of 20; this rule flagged none. benchmarks/inversion.)
The permutation count is raised so that ``1 / (permutations + 1)`` is below the Bonferroni threshold. Only the
protected proxy's figures are judged; the clean proxy's are reported (``..._clean`` metrics, no threshold) so that
the report shows what the noise changes. ReRo at each of ``inversion.ssim_bounds``: the share of training images
whose best SSIM exceeds the bound (held-out images beside it, as the chance level).

Rule-based findings (nothing is silently passed; a proxy within ``FIT_MARGIN`` of chance on its own training
images is ``inconclusive``, ``proxy_fit``: it reconstructs nothing either way):

- a label carried by a single patient fails, naming the label and the patient's cells: a model trained on the
  release learns that class from this one patient, so its class representative is a picture of them, and no
  held-out patient exists to compare with;
- a cell with fewer than ``inversion.min_patients_per_cell`` patients, or fewer than half that on either side of
  the split, is ``inconclusive`` and its ``needs`` says how many more patients would make it testable.

For the report (``details``): per proxy and cell the AUC, p-value, DeLong standard error and lower bound; ReRo;
the SSIM distributions of training and held-out images (``distributions``) and the proxies' learning curves
(``curves``), drawn by guards.report; per label the reconstructions closest to a training image beside that image
as released (``thumbnails``, 16 x 16; released, de-identified and noised images only).

Label smoothing (Struppek et al., arXiv 2310.06549: positive smoothing increases inversion leakage): neither the
policy nor the release's metadata states a recommended training recipe, so there is nothing to check; the details
say so (``label_smoothing``). DP-SGD audit proxies (the issue's optional part) are not implemented.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from guards.checks.base import CheckResult, Finding, Status
from guards.policy import ReleasePolicy

if TYPE_CHECKING:
    import pyarrow as pa
    import torch
    from torch import nn

    from guards.images import LabelledImages
    from guards.run import Run

logger = logging.getLogger(__name__)

CHECK_ID = "inversion"
VIEWS = ("protected", "clean")
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2  # Wang et al. 2004, data range 1
HISTOGRAM_BINS = 10
# A proxy trains to fit its images, not for a fixed number of epochs (unlearnability.VICTIM_MIN_STEPS): on the demo's
# 150 studies 15 epochs of 4 batches left both proxies at chance on their own training images.
PROXY_MIN_STEPS = 400
FIT_MARGIN = 0.10  # a proxy within this of chance on its own training images did not fit them
THUMBNAIL_SIZE = 16  # the report's thumbnails (pixels a side)
THUMBNAILS_PER_LABEL = 4
LABEL_SMOOTHING_NOTE = ("not checked: neither the policy nor the release's metadata states a recommended training"
                        " recipe (no label-smoothing field exists to read)")


# --- reconstruction and similarity -------------------------------------------------------------------------------

def _window(size: int) -> torch.Tensor:
    """A normalised 2-D Gaussian window, 7 pixels (sigma 1.5) or the largest odd size that fits."""
    import torch

    k = min(7, size if size % 2 else size - 1)
    sigma = 1.5 * k / 7
    ax = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_to(images: torch.Tensor, recons: torch.Tensor, *, chunk: int = 1024) -> np.ndarray:
    """SSIM (Gaussian window, data range 1, valid region) of every image (N x 1 x H x W) to every reconstruction
    (R x 1 x H x W): an N x R array."""
    import torch
    import torch.nn.functional as F

    w = _window(int(images.shape[-1]))
    out = np.zeros((len(images), len(recons)), dtype=np.float64)
    with torch.no_grad():
        for start in range(0, len(images), chunk):
            x = images[start : start + chunk].float()
            mu_x = F.conv2d(x, w)
            var_x = F.conv2d(x * x, w) - mu_x**2
            for r in range(len(recons)):
                y = recons[r : r + 1].float()
                mu_y = F.conv2d(y, w)
                var_y = F.conv2d(y * y, w) - mu_y**2
                cov = F.conv2d(x * y, w) - mu_x * mu_y
                s = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / (
                    (mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2))
                out[start : start + len(x), r] = s.mean(dim=(1, 2, 3)).double().numpy()
    return out


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per image: mean absolute difference of vertical and horizontal neighbours."""
    dv = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    dh = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(1, 2, 3))
    return dv + dh


def reconstruct(model: nn.Module, *, n_classes: int, restarts: int, steps: int, step_size: float, tv_weight: float,
                size: int, seed: int, device: str = "cpu") -> torch.Tensor:
    """Class representatives by gradient ascent on ``model`` (MIFace with a TV prior): C x R x 1 x size x size.

    Each of the ``restarts`` starts per class is a smooth random image (a coarse uniform grid, upsampled) from a
    ``torch.Generator`` seeded with ``seed``; the loss per image is the cross-entropy of its class plus
    ``tv_weight`` times its total variation, minimised with Adam on the pixels, clamped to [0, 1] after each step.
    """
    import torch
    import torch.nn.functional as F

    from guards.threads import CPU_THREADS, cpu_threads

    gen = torch.Generator().manual_seed(seed)
    coarse = max(size // 8, 2)
    start = torch.rand(n_classes * restarts, 1, coarse, coarse, generator=gen)
    x0 = 0.25 + 0.5 * F.interpolate(start, size=(size, size), mode="bilinear", align_corners=False)
    x = x0.to(device).requires_grad_(True)
    target = torch.arange(n_classes).repeat_interleave(restarts).to(device)
    model.eval()
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with cpu_threads(CPU_THREADS if device == "cpu" else None), torch.enable_grad():
            opt = torch.optim.Adam([x], lr=step_size)
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x), target, reduction="none") + tv_weight * total_variation(x)
                loss.sum().backward()  # type: ignore[no-untyped-call]
                opt.step()
                with torch.no_grad():
                    x.clamp_(0.0, 1.0)
    finally:
        for p, g in zip(model.parameters(), frozen, strict=True):
            p.requires_grad_(g)
    return x.detach().cpu().reshape(n_classes, restarts, 1, size, size)


# --- statistics ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Leakage:
    """Separation of training from held-out scores: AUC, a one-sided permutation p-value, and the DeLong standard
    error of the AUC."""

    auc: float
    p: float
    train: int
    held_out: int
    se: float = float("nan")

    def lower(self, alpha: float) -> float:
        """One-sided ``1 - alpha`` lower bound of the AUC (normal, DeLong standard error)."""
        from scipy import stats

        if not (math.isfinite(self.auc) and math.isfinite(self.se)):
            return float("nan")
        return float(self.auc - stats.norm.ppf(1 - alpha) * self.se)


def delong_se(train: np.ndarray, held_out: np.ndarray) -> float:
    """DeLong et al. (1988) standard error of the AUC from the placement values (ties count half)."""
    n1, n0 = len(train), len(held_out)
    if n1 < 2 or n0 < 2:
        return float("nan")
    diff = train[:, None] - held_out[None, :]
    psi = (diff > 0) + 0.5 * (diff == 0)
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return float(math.sqrt(v10.var(ddof=1) / n1 + v01.var(ddof=1) / n0))


def leakage(train: np.ndarray, held_out: np.ndarray, *, rng: np.random.Generator, permutations: int,
            chunk: int = 500) -> Leakage:
    """AUC of ``train`` over ``held_out`` (Mann-Whitney; ties count half), the permutation p-value of
    ``AUC >= observed`` with the group labels shuffled, ``(1 + hits) / (1 + permutations)``, and the AUC's
    DeLong standard error."""
    from scipy import stats

    n1, n0 = len(train), len(held_out)
    if n1 == 0 or n0 == 0:
        return Leakage(float("nan"), float("nan"), n1, n0)
    ranks = stats.rankdata(np.concatenate([train, held_out]))
    observed = float(ranks[:n1].sum())
    hits = 0
    done = 0
    while done < permutations:
        k = min(chunk, permutations - done)
        pick = np.argsort(rng.random((k, n1 + n0)), axis=1)[:, :n1]
        hits += int((ranks[pick].sum(axis=1) >= observed - 1e-9).sum())
        done += k
    auc = (observed - n1 * (n1 + 1) / 2) / (n1 * n0)
    return Leakage(float(auc), (1 + hits) / (1 + permutations), n1, n0, delong_se(train, held_out))


def cell_status(stat: Leakage, *, alpha_cell: float, auc_max: float) -> Status:
    """``fail`` when the permutation p-value is at or below ``alpha_cell`` (Bonferroni) and the AUC's one-sided
    ``1 - alpha_cell`` lower bound is above ``auc_max``; ``pass`` otherwise (module docstring)."""
    lower = stat.lower(alpha_cell)
    return "fail" if stat.p <= alpha_cell and math.isfinite(lower) and lower > auc_max else "pass"


def _thumbnail(image: torch.Tensor) -> list[list[float]]:
    """A 1 x H x W image as ``THUMBNAIL_SIZE`` rows of values in [0, 1] (area-averaged), for the report."""
    import torch.nn.functional as F

    small = image[None].float()
    if small.shape[-1] > THUMBNAIL_SIZE:
        small = F.interpolate(small, size=(THUMBNAIL_SIZE, THUMBNAIL_SIZE), mode="area")
    return [[round(float(v), 2) for v in row] for row in small[0, 0].tolist()]


def _thumbnails(recons: torch.Tensor, sims: np.ndarray, released: torch.Tensor) -> dict[str, list[Any]]:
    """The reconstructions of one label closest to a training image, each beside that image as released
    (``sims``: training images x reconstructions; ``released``: those training images, noised as published)."""
    best = sims.max(axis=0)
    order = np.argsort(-best, kind="stable")[:THUMBNAILS_PER_LABEL]
    return {
        "reconstructions": [_thumbnail(recons[int(r)]) for r in order],
        "nearest released training images": [_thumbnail(released[int(np.argmax(sims[:, r]))]) for r in order],
        "ssim": [round(float(best[r]), 4) for r in order],
    }


def _histogram(values: np.ndarray) -> dict[str, float]:
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    counts, _ = np.histogram(np.clip(values, 0.0, 1.0), bins=edges)
    total = max(int(counts.sum()), 1)
    return {f"{edges[i]:.1f}-{edges[i + 1]:.1f}": round(int(c) / total, 4) for i, c in enumerate(counts)}


def _split(unit_patient: np.ndarray, unit_label: np.ndarray, rng: np.random.Generator) -> set[str]:
    """Training patients: a random half of each label's patients (by the patient's first label), rounded up."""
    first: dict[str, int] = {}
    for p, lab in zip(unit_patient.tolist(), unit_label.tolist(), strict=True):
        first.setdefault(p, int(lab))
    train: set[str] = set()
    for lab in sorted(set(first.values())):
        ps = np.array(sorted(p for p, v in first.items() if v == lab))
        ps = ps[rng.permutation(len(ps))]
        train.update(ps[: len(ps) - len(ps) // 2].tolist())
    return train


# --- the check -----------------------------------------------------------------------------------------------------

@dataclass
class _View:
    """One proxy's figures."""

    accuracy_held_out: float
    accuracy_train: float
    curve: list[float]
    image_best: np.ndarray  # per labelled image: best SSIM to a reconstruction of its label
    unit_best: np.ndarray  # per (patient, label) unit
    cells: dict[str, Leakage]


def _load(release_dir: Path, source_dir: Path, *, size: int, cohort: pa.Table,
          subgroups: tuple[str, ...]) -> tuple[LabelledImages, LabelledImages, bool]:
    from guards.images import label_images, load_images, load_labelled_pair

    same = Path(release_dir).resolve() == Path(source_dir).resolve()
    if same:
        one = label_images(load_images(Path(release_dir), size=size), cohort, subgroups=subgroups)
        return one, one, True
    rel, src = load_labelled_pair(release_dir, source_dir, size=size, cohort=cohort, subgroups=subgroups)
    return rel, src, False


def _inconclusive(examined: dict[str, int], message: str, needs: str) -> CheckResult:
    return CheckResult(
        id=CHECK_ID,
        findings=(Finding("labelled_data", examined.get("labelled_images", 0), ">= 2 classes, >= 4 patients",
                          "inconclusive", evidence=message, needs=needs),),
        examined=examined, summary=f"Reconstruction risk could not be measured: {message}.",
        advice="Provide labels for at least two classes and four patients so that an attacker's proxy can be"
               " trained.",
    )


def run(
    release_dir: Path,
    *,
    source_dir: Path,
    cohort: pa.Table,
    policy: ReleasePolicy,
    device: str = "cpu",
) -> CheckResult:
    """Train the attacker's proxies, reconstruct each label, and measure reconstruction leakage per cell."""
    import torch

    from guards.checks.models import balanced_accuracy, logits, train

    t0 = time.monotonic()
    sec = policy.inversion
    seed = policy.release.seed
    rng = np.random.default_rng([seed, 0x1A18])
    rel, src, same_tree = _load(release_dir, source_dir, size=sec.image_size, cohort=cohort,
                                subgroups=policy.cohort.subgroups)
    keep = np.flatnonzero(rel.labels >= 0)
    labels = rel.labels[keep]
    classes = np.unique(labels)
    pids = np.array(rel.patient_ids, dtype=object)[keep].astype(str)
    patients = sorted(set(pids.tolist()))
    examined = {"images": len(rel.images), "labelled_images": len(keep), "patients": len(patients)}
    if len(classes) < 2 or len(patients) < 4:
        msg = f"{len(classes)} label classes over {len(patients)} patients with known labels"
        return _inconclusive(examined, msg, f"labels for at least 2 classes and at least 4 patients (now"
                                            f" {len(classes)} classes, {len(patients)} patients)")
    index = {int(c): i for i, c in enumerate(classes)}
    y = torch.tensor([index[int(v)] for v in labels], dtype=torch.long)
    n_classes = len(classes)
    x_rel, x_src = rel.images.pixels[keep], src.images.pixels[keep]

    # units: one per (patient, label); subgroup values from the unit's first image
    unit_key = np.array([f"{p}\x00{int(v)}" for p, v in zip(pids.tolist(), labels.tolist(), strict=True)])
    units, unit_of_image = np.unique(unit_key, return_inverse=True)
    first_image = np.full(len(units), -1)
    for i in range(len(unit_of_image) - 1, -1, -1):
        first_image[unit_of_image[i]] = i
    unit_patient = pids[first_image]
    unit_label = labels[first_image]
    trainers = _split(unit_patient, unit_label, rng)
    unit_train = np.array([p in trainers for p in unit_patient.tolist()])
    image_train = unit_train[unit_of_image]
    subgroup_values = {col: np.array(vals, dtype=object)[keep].astype(str)[first_image]
                       for col, vals in rel.subgroups.items()}
    patients_of_label = {int(c): len(set(unit_patient[unit_label == c].tolist())) for c in classes}
    patient_row = {p: i for i, p in enumerate(patients)}
    unit_patient_row = np.array([patient_row[p] for p in unit_patient.tolist()])
    patient_train = np.array([p in trainers for p in patients])

    # cells, and which can be tested; "all" is compared per patient (a patient of two labels counts once)
    cells: dict[str, np.ndarray] = {"all": np.ones(len(units), dtype=bool)}

    def sides(name: str, unit_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The training and the held-out patients' scores of a cell."""
        if name == "all":
            per_patient = np.full(len(patients), -np.inf)
            np.maximum.at(per_patient, unit_patient_row, unit_scores)
            return per_patient[patient_train], per_patient[~patient_train]
        return unit_scores[cells[name] & unit_train], unit_scores[cells[name] & ~unit_train]

    for c in classes:
        in_label = unit_label == c
        cells[f"label={int(c)}"] = in_label
        for col, vals in subgroup_values.items():
            for v in sorted(set(vals[in_label].tolist())):
                cells[f"label={int(c)}, {col}={v}"] = in_label & (vals == v)
    min_cell, min_side = sec.min_patients_per_cell, max(1, sec.min_patients_per_cell // 2)
    single = sorted(int(c) for c, n in patients_of_label.items() if n == 1)
    tested: list[str] = []
    untested: dict[str, tuple[int, int]] = {}
    covered_by_rule: list[str] = []
    for name in cells:
        label_of_cell = int(name.split(",")[0].split("=")[1]) if name.startswith("label=") else None
        if label_of_cell in single:
            covered_by_rule.append(name)
            continue
        t, h = (len(side) for side in sides(name, np.zeros(len(units))))
        if t + h < min_cell or min(t, h) < min_side:
            untested[name] = (t, h)
        else:
            tested.append(name)
    alpha_cell = sec.alpha / max(len(tested), 1)
    permutations = max(sec.permutations, math.ceil(2 / alpha_cell))

    views: dict[str, _View] = {}
    thumbnails: dict[str, dict[str, list[Any]]] = {}
    held_img = ~image_train
    y_np = y.numpy()
    for v_i, view in enumerate(VIEWS):
        if view == "clean" and same_tree:
            views[view] = views["protected"]
            break
        x_train = (x_rel if view == "protected" else x_src)[image_train]
        curve: list[float] = []

        def evaluate(model: nn.Module) -> float:
            if not held_img.any():
                return float("nan")
            pred = logits(model, x_src[held_img], device=device).argmax(1).numpy()
            return balanced_accuracy(y_np[held_img], pred)

        proxy = train(x_train, y[image_train], n_classes=n_classes, epochs=sec.epochs, seed=seed + 1801,
                      device=device, evaluate=evaluate, min_steps=PROXY_MIN_STEPS, what=f"inversion: {view} proxy")
        curve = proxy.curve
        acc_train = balanced_accuracy(y_np[image_train],
                                      logits(proxy.model, x_train, device=device).argmax(1).numpy())
        recons = reconstruct(proxy.model, n_classes=n_classes, restarts=sec.restarts, steps=sec.steps,
                             step_size=sec.step_size, tv_weight=sec.tv_weight, size=sec.image_size,
                             seed=seed + 1802, device=device)
        image_best = np.zeros(len(keep))
        for c in range(n_classes):
            rows = np.flatnonzero(y_np == c)
            sims = ssim_to(x_src[rows], recons[c])
            image_best[rows] = sims.max(axis=1)
            trained = image_train[rows]
            if view == "protected" and trained.any():  # released images only, as the report shows them
                thumbnails[f"label={int(classes[c])}"] = _thumbnails(recons[c], sims[trained],
                                                                     x_rel[rows[trained]])
        unit_best = np.full(len(units), -np.inf)
        np.maximum.at(unit_best, unit_of_image, image_best)
        view_rng = np.random.default_rng([seed, 0x1A18, v_i])
        cell_stats = {name: leakage(*sides(name, unit_best), rng=view_rng, permutations=permutations)
                      for name in tested}
        views[view] = _View(curve[-1] if curve else float("nan"), acc_train, curve, image_best, unit_best,
                            cell_stats)
        logger.info("inversion: %s proxy, held-out balanced accuracy %.3f, %d cells tested", view,
                    views[view].accuracy_held_out, len(tested))

    findings: list[Finding] = []
    for c in single:
        name = f"label={c}"
        mask = unit_label == c
        n_img = int(np.isin(unit_of_image, np.flatnonzero(mask)).sum())
        where = ", ".join(f"{col}={vals[mask][0]}" for col, vals in subgroup_values.items())
        best = float(views["protected"].unit_best[mask].max())
        findings.append(Finding(
            "patients_carrying_label", 1, 2, "fail", subgroup=name,
            evidence=(f"label {c} is carried by a single patient ({n_img} images; cells "
                      f"{name}{', ' + where if where else ''}): a model trained on the release learns this class"
                      " from that patient alone, so its class representative is a picture of them; best SSIM of a"
                      f" reconstruction to their images {best:.3f} (protected proxy)"),
        ))
    for name, (t, h) in untested.items():
        n = t + h
        more = max(min_cell - n, 2 * (min_side - min(t, h)), 1)
        findings.append(Finding(
            "reconstruction_auc", None, sec.auc_max, "inconclusive", subgroup=name,
            evidence=f"{n} patients ({t} training, {h} held-out): too few to compare training with held-out patients",
            needs=(f"about {more} more patients in cell {name} (now {n}): inversion.min_patients_per_cell ="
                   f" {min_cell}, at least {min_side} on each side of the random half split"),
        ))
    prot = views["protected"]
    chance = 1 / n_classes
    if not prot.accuracy_train >= chance + FIT_MARGIN:
        findings.append(Finding(
            "proxy_fit", round(prot.accuracy_train, 4), round(chance + FIT_MARGIN, 4), "inconclusive",
            evidence=(f"the proxy trained on the released images reached a balanced accuracy of"
                      f" {prot.accuracy_train:.3f} on its own training images (chance {chance:.3f}): a model that did"
                      " not fit the release reconstructs nothing, so its cells cannot show the release safe"),
            needs=(f"a proxy that fits its training images: more epochs (inversion.epochs, now {sec.epochs}), a"
                   f" larger inversion.image_size (now {sec.image_size}), or more labelled patients"),
        ))
    for name in tested:
        s = prot.cells[name]
        clean = views["clean"].cells[name]
        lower = s.lower(alpha_cell)
        status = cell_status(s, alpha_cell=alpha_cell, auc_max=sec.auc_max)
        train_scores, held_scores = sides(name, prot.unit_best)
        med_t, med_h = float(np.median(train_scores)), float(np.median(held_scores))
        base = (f"{s.train} training vs {s.held_out} held-out patients; best SSIM to the label's {sec.restarts}"
                f" reconstructions, median {med_t:.3f} vs {med_h:.3f}; permutation p {s.p:.4g} ({permutations}"
                f" permutations), Bonferroni threshold {alpha_cell:.3g} over {len(tested)} cells; AUC lower bound"
                f" {lower:.3f} at the same level (DeLong)")
        findings.append(Finding("reconstruction_auc", round(s.auc, 4), sec.auc_max, status, subgroup=name,
                                evidence=f"{base}; proxy trained on the released images"))
        findings.append(Finding(
            "reconstruction_auc_clean", round(clean.auc, 4), None, "pass", subgroup=name,
            evidence=(f"{clean.train} training vs {clean.held_out} held-out patients; permutation p {clean.p:.4g};"
                      " proxy trained on the clean de-identified images (what the noise changes); reported, not"
                      " judged" + ("; the release is the clean tree, so the same proxy" if same_tree else "")),
        ))
    rero: dict[str, dict[str, dict[str, float]]] = {}
    for view in VIEWS:
        v = views[view]
        suffix = "" if view == "protected" else "_clean"
        rero[view] = {}
        for b in sec.ssim_bounds:
            share_t = float(np.mean(v.image_best[image_train] > b)) if image_train.any() else float("nan")
            share_h = float(np.mean(v.image_best[held_img] > b)) if held_img.any() else float("nan")
            rero[view][f"{b:g}"] = {"training": round(share_t, 4), "held_out": round(share_h, 4)}
            findings.append(Finding(
                f"rero_at_ssim_{b:g}{suffix}", round(share_t, 4), None, "pass",
                evidence=(f"{int((v.image_best[image_train] > b).sum())} of {int(image_train.sum())} training images"
                          f" have a reconstruction with SSIM above {b:g} ({view} proxy); held-out images:"
                          f" {share_h:.4f} (the chance level); reported, not judged"),
            ))
        findings.append(Finding(
            f"proxy_balanced_accuracy{suffix}", round(v.accuracy_held_out, 4), None, "pass",
            evidence=(f"{view} proxy: balanced accuracy {v.accuracy_held_out:.3f} on the held-out patients' clean"
                      f" images, {v.accuracy_train:.3f} on its training images (chance {1 / n_classes:.3f});"
                      " reported, not judged"),
        ))

    failed = sorted({f.subgroup for f in findings if f.status == "fail"})
    examined.update({
        "training_patients": len(trainers), "held_out_patients": len(patients) - len(trainers),
        "cells": len(cells), "cells_tested": len(tested), "cells_too_few_patients": len(untested),
        "cells_single_patient_label": len(covered_by_rule), "proxies": 1 if same_tree else 2,
        "reconstructions": n_classes * sec.restarts * (1 if same_tree else 2),
    })
    overall = prot.cells.get("all")
    summary = (
        f"Model inversion on a proxy trained on the release over {len(patients)} patients"
        + (f": training patients' best reconstruction SSIM vs held-out AUC {overall.auc:.2f} (p {overall.p:.3g})"
           if overall else "")
        + (f"; reconstruction risk for: {', '.join(failed)}." if failed else
           f"; no tested cell's separation of training from held-out patients is shown above AUC {sec.auc_max:g}"
           f" ({len(tested)} cells tested, {len(untested)} with too few patients).")
    )
    details: dict[str, Any] = {
        "proxies": {
            view: {
                "accuracy_held_out": round(views[view].accuracy_held_out, 4),
                "accuracy_train": round(views[view].accuracy_train, 4),
                "cells": {n: {"auc": round(s.auc, 4), "p": round(s.p, 6), "se": round(s.se, 4),
                              "lower": round(s.lower(alpha_cell), 4), "training": s.train,
                              "held_out": s.held_out} for n, s in views[view].cells.items()},
                "rero": rero[view],
            }
            for view in VIEWS
        },
        "curves": {f"{view} proxy (held-out balanced accuracy)": views[view].curve
                   for view in (VIEWS[:1] if same_tree else VIEWS)},
        "distributions": {
            f"best SSIM, {view} proxy, {side}": _histogram(views[view].image_best[mask])
            for view in (VIEWS[:1] if same_tree else VIEWS)
            for side, mask in (("training images", image_train), ("held-out images", held_img))
            if mask.any()
        },
        "thumbnails": thumbnails,
        "untested_cells": {n: {"training": t, "held_out": h} for n, (t, h) in untested.items()},
        "single_patient_labels": single,
        "bonferroni": {"alpha": sec.alpha, "cells": len(tested), "threshold": alpha_cell},
        "permutations": permutations,
        "same_tree": same_tree,
        "label_smoothing": LABEL_SMOOTHING_NOTE,
        "seed": seed,
        "seconds": round(time.monotonic() - t0, 2),
    }
    return CheckResult(
        id=CHECK_ID,
        findings=tuple(findings),
        examined=examined,
        summary=summary,
        advice=("A label carried by one patient: withhold it, merge it into another label, or release more"
                " patients with it. A cell whose training patients are reconstructed better than held-out ones:"
                " check that its images carry the protective noise (protect.epsilon, protect.rho) and remove"
                " duplicated studies.") if failed else (
                "Cells with too few patients could not be tested: see each inconclusive finding's needs."
                if untested else ""),
        details=details,
    )


def check(current: Run) -> CheckResult:
    """The registry's entry (guards.checks.registry): the release against its de-identified clean reference."""
    return run(current.release_tree, source_dir=current.paths.deid, cohort=current.cohort(), policy=current.policy,
               device=current.device)
