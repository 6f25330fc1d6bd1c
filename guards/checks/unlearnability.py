"""Unlearnability: a victim trained on the protected release must stay near chance on clean held-out data.

The test of unlearnable examples (Huang et al., arXiv 2101.04898; SALM, arXiv 2403.10573): patients are split
into train and held-out sets (patient level, seeded); a victim is trained on the train patients' RELEASED
images and evaluated on the held-out patients' CLEAN images (``source_dir``). Two references are trained on
the same split: the same victim on clean images (shows the task is learnable, so a near-chance protected
victim means the noise works) and on clean images plus random sign noise of the same L-infinity size
(``policy.protect.epsilon``; shows that the effect is not mere noise). A finding passes when the protected
victim's balanced accuracy is at most ``policy.unlearnability.margin`` above chance (below chance is not a usable
model), overall and per subgroup; it fails when the whole 95 % bootstrap interval (patients resampled) lies above
chance + margin, and warns when only the point estimate does (small held-out sets and subgroups are noisy).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from guards.checks.base import CheckResult, Finding, Status
from guards.checks.models import SmallCNN, balanced_accuracy, logits, train
from guards.images import LabelledImages, load_labelled_pair
from guards.policy import ReleasePolicy

logger = logging.getLogger(__name__)
# An unauthorised trainer trains to convergence: every victim gets at least this many optimiser steps, however
# small the release (measured: 75 steps on a 143-image sample release left the clean victim at chance).
VICTIM_MIN_STEPS = 400

CHECK_ID = "unlearnability"
HELD_OUT_FRACTION = 0.3
MIN_SUBGROUP_IMAGES = 10  # fewer held-out images than this: the subgroup is reported as too small to measure


def split_patients(patient_ids: tuple[str, ...], *, seed: int, held_out: float) -> np.ndarray:
    """A boolean mask over images: True for images of held-out patients (patient-level split, seeded)."""
    patients = np.array(sorted(set(patient_ids)))
    rng = np.random.default_rng([seed, 0x0B1E])
    rng.shuffle(patients)
    n_out = min(max(int(round(len(patients) * held_out)), 1), len(patients) - 1)
    out = set(patients[:n_out].tolist())
    return np.array([p in out for p in patient_ids], dtype=bool)


def bootstrap_interval(
    y_true: np.ndarray, y_pred: np.ndarray, patients: np.ndarray, *, rng: np.random.Generator, reps: int = 200
) -> tuple[float, float]:
    """Percentile 95 % interval of balanced accuracy, resampling patients (all their images) with replacement."""
    ids = np.unique(patients)
    rows = [np.flatnonzero(patients == p) for p in ids]
    values = []
    for _ in range(reps):
        pick = np.concatenate([rows[i] for i in rng.integers(0, len(ids), len(ids))])
        values.append(balanced_accuracy(y_true[pick], y_pred[pick]))
    return float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))


def _verdict(value: float, ci_low: float, chance: float, margin: float) -> Status:
    """pass within the band; fail when the whole 95 % interval is above it; warn when only the point estimate is
    (small held-out sets and subgroups give noisy balanced accuracies)."""
    if _within(value, chance, margin):
        return "pass"
    return "fail" if ci_low > chance + margin else "warn"


def _within(value: float, chance: float, margin: float) -> bool:
    """Not above chance + margin. A victim below chance is no use to whoever trains on the release (they would
    need labelled clean data to notice the flip), so only learning counts against the release."""
    return value <= chance + margin


def run(
    release_dir: Path,
    *,
    source_dir: Path,
    cohort: pa.Table,
    policy: ReleasePolicy,
    device: str = "cpu",
) -> CheckResult:
    """Train victims on the release, on clean data and on randomly noised data; compare on clean held-out data."""
    t0 = time.monotonic()
    sec = policy.unlearnability
    seed = policy.release.seed
    rel, src = load_labelled_pair(
        release_dir, source_dir, size=sec.image_size, cohort=cohort, subgroups=policy.cohort.subgroups
    )
    known = rel.labels >= 0
    rel_k, src_k = _keep(rel, known), _keep(src, known)
    classes = np.unique(rel_k.labels)
    examined = {
        "images": len(rel.images),
        "labelled_images": len(rel_k.images),
        "patients": len(set(rel_k.patient_ids)),
        "classes": len(classes),
    }
    if len(classes) < 2 or examined["patients"] < 4:
        msg = f"{len(classes)} label classes over {examined['patients']} patients with known labels"
        return CheckResult(
            id=CHECK_ID,
            findings=(Finding("labelled_data", examined["labelled_images"], ">= 2 classes, >= 4 patients", "fail",
                              evidence=msg),),
            examined=examined,
            summary=f"Unlearnability could not be measured: {msg}.",
            advice="Provide labels (labels.csv) for at least two classes so that a victim model can be trained.",
        )
    # Labels as 0..K-1 indices.
    index = {int(c): i for i, c in enumerate(classes)}
    y_all = torch.tensor([index[int(v)] for v in rel_k.labels], dtype=torch.long)
    n_classes = len(classes)
    chance = 1.0 / n_classes
    held = split_patients(rel_k.patient_ids, seed=seed, held_out=HELD_OUT_FRACTION)
    tr, te = np.flatnonzero(~held), np.flatnonzero(held)
    x_eval, y_eval = src_k.images.pixels[te], y_all[te].numpy()
    examined.update({"train_images": len(tr), "held_out_images": len(te)})

    def predictions(model: SmallCNN) -> np.ndarray:
        return logits(model, x_eval, device=device).argmax(1).numpy()

    def evaluate(model: SmallCNN) -> float:
        return balanced_accuracy(y_eval, predictions(model))

    gen = torch.Generator().manual_seed(seed + 7)
    eps = float(policy.protect.epsilon)
    noise = (torch.randint(0, 2, src_k.images.pixels[tr].shape, generator=gen).float() * 2 - 1) * eps
    train_sets = {
        "protected": rel_k.images.pixels[tr],
        "clean": src_k.images.pixels[tr],
        "random_noise": (src_k.images.pixels[tr] + noise).clamp(0.0, 1.0),
    }
    curves: dict[str, list[float]] = {}
    preds: dict[str, np.ndarray] = {}
    for name, x_train in train_sets.items():
        trained = train(
            x_train, y_all[tr], n_classes=n_classes, epochs=sec.epochs, seed=seed + 11, device=device,
            evaluate=evaluate, min_steps=VICTIM_MIN_STEPS,
        )
        curves[name] = trained.curve
        preds[name] = predictions(trained.model)
        logger.info("unlearnability: %s victim balanced accuracy %.3f", name, curves[name][-1])

    findings: list[Finding] = []
    bacc = {name: balanced_accuracy(y_eval, p) for name, p in preds.items()}
    held_pids = np.array([rel_k.patient_ids[i] for i in te])
    boot_rng = np.random.default_rng([seed, 0xB007])
    low, high = bootstrap_interval(y_eval, preds["protected"], held_pids, rng=boot_rng)
    findings.append(Finding(
        "balanced_accuracy_protected", round(bacc["protected"], 4), round(chance + sec.margin, 4),
        _verdict(bacc["protected"], low, chance, sec.margin),
        evidence=(f"victim trained on {len(tr)} released images, evaluated on {len(te)} clean held-out images: "
                  f"balanced accuracy {bacc['protected']:.3f} (95% CI {low:.2f}-{high:.2f}, patients resampled)"
                  f" vs chance {chance:.2f} + {sec.margin:.2f}; same victim on clean data {bacc['clean']:.3f}"),
    ))
    learnable = bacc["clean"] > chance + sec.margin
    findings.append(Finding(
        "balanced_accuracy_clean", round(bacc["clean"], 4), round(chance + sec.margin, 4),
        "pass" if learnable else "warn",
        evidence=("the task is learnable from clean data, so a near-chance protected victim shows the noise works"
                  if learnable else "the victim does not learn even from clean data: this check cannot show"
                  " protection on this cohort (too few images or labels the images do not explain)"),
    ))
    findings.append(Finding(
        "balanced_accuracy_random_noise", round(bacc["random_noise"], 4), None, "pass",
        evidence=f"control: clean data plus random sign noise of the same size (epsilon {eps:.4f})",
    ))
    per_subgroup: dict[str, dict[str, float | int | list[float]]] = {
        "all": {"images": len(te), **{k: round(v, 4) for k, v in bacc.items()},
                "protected_ci": [round(low, 4), round(high, 4)]}
    }
    for column, values in src_k.subgroups.items():
        vals = np.array(values)[te]
        for value in sorted(set(vals.tolist())):
            mask = vals == value
            name = f"{column}={value}"
            n = int(mask.sum())
            if n < MIN_SUBGROUP_IMAGES:
                findings.append(Finding(
                    "balanced_accuracy_protected", None, round(chance + sec.margin, 4), "warn", subgroup=name,
                    evidence=f"only {n} held-out images (< {MIN_SUBGROUP_IMAGES}): too few to measure",
                ))
                continue
            b = {k: balanced_accuracy(y_eval[mask], p[mask]) for k, p in preds.items()}
            low, high = bootstrap_interval(y_eval[mask], preds["protected"][mask], held_pids[mask], rng=boot_rng)
            per_subgroup[name] = {"images": n, **{k: round(v, 4) for k, v in b.items()},
                                  "protected_ci": [round(low, 4), round(high, 4)]}
            findings.append(Finding(
                "balanced_accuracy_protected", round(b["protected"], 4), round(chance + sec.margin, 4),
                _verdict(b["protected"], low, chance, sec.margin), subgroup=name,
                evidence=(f"{n} held-out images: protected victim {b['protected']:.3f} (95% CI {low:.2f}-{high:.2f},"
                          f" patients resampled), clean victim {b['clean']:.3f}, random-noise control "
                          f"{b['random_noise']:.3f}"),
            ))
    failed = [f.subgroup for f in findings if f.status == "fail"]
    summary = (
        f"A model trained on the release reaches balanced accuracy {bacc['protected']:.2f} on clean held-out data "
        f"(chance {chance:.2f}, clean-trained {bacc['clean']:.2f}, random-noise control {bacc['random_noise']:.2f})"
        + (f"; not unlearnable for: {', '.join(failed)}." if failed else "; the release is unlearnable.")
    )
    return CheckResult(
        id=CHECK_ID,
        findings=tuple(findings),
        examined=examined,
        summary=summary,
        advice=("Enable protection (protect.enabled), raise protect.epsilon or protect.rho, or add protect.steps; "
                "a release whose noise was left out always fails here.") if failed else "",
        details={
            "curves": curves,
            "chance": chance,
            "balanced_accuracy": per_subgroup,
            "seed": seed,
            "seconds": round(time.monotonic() - t0, 2),
        },
    )


def _keep(data: LabelledImages, mask: np.ndarray) -> LabelledImages:
    rows = np.flatnonzero(mask)
    return LabelledImages(
        images=data.images.subset(rows),
        patient_ids=tuple(data.patient_ids[i] for i in rows),
        labels=data.labels[rows],
        subgroups={c: tuple(v[i] for i in rows) for c, v in data.subgroups.items()},
        examined=dict(data.examined),
    )
