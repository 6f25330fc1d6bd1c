"""Unlearnability: a victim trained on the protected release must stay near chance on clean held-out data.

The test of unlearnable examples (Huang et al., arXiv 2101.04898; SALM, arXiv 2403.10573): patients are split
into train and held-out sets (patient level, seeded); a victim is trained on the train patients' RELEASED
images and evaluated on the held-out patients' CLEAN images (``source_dir``). Two references are trained on
the same split: the same victim on clean images (shows the task is learnable, so a near-chance protected
victim means the noise works) and on clean images plus random sign noise of the same L-infinity size
(``policy.protect.epsilon``; shows that the effect is not mere noise).

Fail closed, with the band ``chance + policy.unlearnability.margin`` (below chance is not a usable model) and 95 %
bootstrap intervals (held-out patients resampled), overall and per subgroup:

- ``balanced_accuracy_clean``: ``pass`` when the whole interval of the clean victim is above the band (the task is
  shown learnable); otherwise ``inconclusive``: a victim that does not learn from clean data cannot show that
  the noise protects anything;
- ``balanced_accuracy_protected``: ``fail`` when the whole interval is above the band (the victim learned from
  the release); ``pass`` when the whole interval is within the band AND the clean victim is shown learnable;
  otherwise ``inconclusive`` (the interval straddles the band, the clean victim did not learn, or the subgroup
  has fewer than ``MIN_SUBGROUP_IMAGES`` held-out images); too few labelled patients overall is inconclusive too.

``needs``: for an interval that straddles the band, :func:`guards.checks.base.scaled_count`: the (sub)group's
labelled patients times ``(half-width / distance to the band)^2``, because interval widths shrink as
``1 / sqrt(n)``; for a subgroup too small to measure, the patients that would give ``MIN_SUBGROUP_IMAGES``
held-out images at the subgroup's images per patient and the held-out share ``HELD_OUT_FRACTION``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from guards.checks.base import (
    CheckResult,
    Finding,
    Status,
    interval_verdict,
    more_patients_needs,
    scaled_count,
)
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


def _verdict(low: float, high: float, chance: float, margin: float, *, learnable: bool = True) -> Status:
    """fail when the whole 95 % interval is above chance + margin; pass when the whole interval is within it and
    the clean victim is shown to learn (``learnable``); inconclusive otherwise (module docstring)."""
    verdict = interval_verdict(low, high, chance + margin)
    if verdict == "pass" and not learnable:
        return "inconclusive"
    return verdict


def _clean_victim_needs(value: float, low: float, band: float, *, patients: int, epochs: int) -> str:
    """What would show the clean victim above the band (learnable), so that protection can be shown."""
    head = "a clean victim that learns (balanced accuracy shown above chance + margin):"
    if value > band:
        total = scaled_count(patients, value - low, value - band)
        if total is not None:
            return (f"{head} about {total - patients} more labelled patients (now {patients}; 95% intervals narrow"
                    f" as 1/sqrt(n): n x (half-width / distance to {band:.4g})^2), or more epochs"
                    f" (unlearnability.epochs, now {epochs})")
    return (f"{head} it reached {value:.3f}, not above {band:.4g}; more labelled studies, more epochs"
            f" (unlearnability.epochs, now {epochs}), or labels the images explain")


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
            findings=(Finding("labelled_data", examined["labelled_images"], ">= 2 classes, >= 4 patients",
                              "inconclusive", evidence=msg,
                              needs=f"labels for at least 2 classes and at least 4 patients (now {len(classes)}"
                                    f" classes, {examined['patients']} patients) so that a victim can be trained"),),
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
            evaluate=evaluate, min_steps=VICTIM_MIN_STEPS, what=f"unlearnability: {name} victim",
        )
        curves[name] = trained.curve
        preds[name] = predictions(trained.model)
        logger.info("unlearnability: %s victim balanced accuracy %.3f", name, curves[name][-1])

    findings: list[Finding] = []
    bacc = {name: balanced_accuracy(y_eval, p) for name, p in preds.items()}
    held_pids = np.array([rel_k.patient_ids[i] for i in te])
    boot_rng = np.random.default_rng([seed, 0xB007])
    band = round(chance + sec.margin, 4)
    n_patients = examined["patients"]
    low, high = bootstrap_interval(y_eval, preds["protected"], held_pids, rng=boot_rng)
    clean_low, clean_high = bootstrap_interval(y_eval, preds["clean"], held_pids,
                                               rng=np.random.default_rng([seed, 0xC1EA]))
    learnable = clean_low > chance + sec.margin
    clean_needs = "" if learnable else _clean_victim_needs(bacc["clean"], clean_low, band, patients=n_patients,
                                                           epochs=sec.epochs)

    def protected_needs(status: Status, value: float, lo: float, hi: float, *, patients: int, where: str) -> str:
        if status != "inconclusive":
            return ""
        needs = []
        if hi > chance + sec.margin:
            needs.append(more_patients_needs(patients=patients, value=value, low=lo, high=hi, threshold=band,
                                             where=where))
        if not learnable:
            needs.append(clean_needs)
        return "; and ".join(needs)

    status = _verdict(low, high, chance, sec.margin, learnable=learnable)
    findings.append(Finding(
        "balanced_accuracy_protected", round(bacc["protected"], 4), band, status,
        evidence=(f"victim trained on {len(tr)} released images, evaluated on {len(te)} clean held-out images: "
                  f"balanced accuracy {bacc['protected']:.3f} (95% CI {low:.2f}-{high:.2f}, patients resampled)"
                  f" vs chance {chance:.2f} + {sec.margin:.2f}; same victim on clean data {bacc['clean']:.3f}"
                  + ("" if learnable or status == "fail" else
                     " (the clean victim did not learn, so protection cannot be shown)")),
        needs=protected_needs(status, bacc["protected"], low, high, patients=n_patients, where="overall"),
    ))
    findings.append(Finding(
        "balanced_accuracy_clean", round(bacc["clean"], 4), band,
        "pass" if learnable else "inconclusive",
        evidence=(f"clean victim {bacc['clean']:.3f} (95% CI {clean_low:.2f}-{clean_high:.2f}): "
                  + ("the task is learnable from clean data, so a near-chance protected victim shows the noise works"
                     if learnable else "the victim is not shown to learn even from clean data: this check cannot"
                     " show protection on this cohort (too few images or labels the images do not explain)")),
        needs=clean_needs,
    ))
    findings.append(Finding(
        "balanced_accuracy_random_noise", round(bacc["random_noise"], 4), None, "pass",
        evidence=f"control: clean data plus random sign noise of the same size (epsilon {eps:.4f})",
    ))
    per_subgroup: dict[str, dict[str, float | int | list[float]]] = {
        "all": {"images": len(te), **{k: round(v, 4) for k, v in bacc.items()},
                "protected_ci": [round(low, 4), round(high, 4)], "clean_ci": [round(clean_low, 4),
                                                                              round(clean_high, 4)]}
    }
    for column, values in src_k.subgroups.items():
        vals = np.array(values)[te]
        all_vals = np.array(values)
        for value in sorted(set(vals.tolist())):
            mask = vals == value
            name = f"{column}={value}"
            n = int(mask.sum())
            group_patients = len({rel_k.patient_ids[i] for i in np.flatnonzero(all_vals == value)})
            if n < MIN_SUBGROUP_IMAGES:
                held_patients = len(set(held_pids[mask].tolist()))
                per_patient = n / held_patients if held_patients else len(te) / max(len(set(held_pids.tolist())), 1)
                wanted = math.ceil(MIN_SUBGROUP_IMAGES / max(per_patient, 1e-9) / HELD_OUT_FRACTION)
                rule = (f"{MIN_SUBGROUP_IMAGES} held-out images at {per_patient:.1f} images per patient and a"
                        f" held-out share of {HELD_OUT_FRACTION:.0%} take about {wanted} patients")
                if wanted > group_patients:
                    needs = (f"at least {wanted - group_patients} more patients in subgroup {name} (now"
                             f" {group_patients}): {rule}")
                else:
                    needs = (f"a few more patients in subgroup {name} (now {group_patients}): {rule}, but this"
                             f" seeded split drew only {held_patients} of them into the held-out set")
                findings.append(Finding(
                    "balanced_accuracy_protected", None, band, "inconclusive", subgroup=name,
                    evidence=f"only {n} held-out images (< {MIN_SUBGROUP_IMAGES}): too few to measure",
                    needs=needs,
                ))
                continue
            b = {k: balanced_accuracy(y_eval[mask], p[mask]) for k, p in preds.items()}
            low, high = bootstrap_interval(y_eval[mask], preds["protected"][mask], held_pids[mask], rng=boot_rng)
            per_subgroup[name] = {"images": n, **{k: round(v, 4) for k, v in b.items()},
                                  "protected_ci": [round(low, 4), round(high, 4)]}
            status = _verdict(low, high, chance, sec.margin, learnable=learnable)
            findings.append(Finding(
                "balanced_accuracy_protected", round(b["protected"], 4), band, status, subgroup=name,
                evidence=(f"{n} held-out images: protected victim {b['protected']:.3f} (95% CI {low:.2f}-{high:.2f},"
                          f" patients resampled), clean victim {b['clean']:.3f}, random-noise control "
                          f"{b['random_noise']:.3f}"),
                needs=protected_needs(status, b["protected"], low, high, patients=group_patients,
                                      where=f"in subgroup {name}"),
            ))
    failed = [f.subgroup for f in findings if f.status == "fail"]
    unsure = sorted({f.subgroup for f in findings if f.status == "inconclusive"} - set(failed))
    summary = (
        f"A model trained on the release reaches balanced accuracy {bacc['protected']:.2f} on clean held-out data "
        f"(chance {chance:.2f}, clean-trained {bacc['clean']:.2f}, random-noise control {bacc['random_noise']:.2f})"
        + (f"; not unlearnable for: {', '.join(failed)}" if failed else "")
        + (f"; unlearnability not shown (inconclusive) for: {', '.join(unsure)}" if unsure else "")
        + ("." if failed or unsure else "; the release is shown unlearnable.")
    )
    return CheckResult(
        id=CHECK_ID,
        findings=tuple(findings),
        examined=examined,
        summary=summary,
        advice=("Enable protection (protect.enabled), raise protect.epsilon or protect.rho, or add protect.steps; "
                "a release whose noise was left out always fails here.") if failed else (
                "Not enough evidence to show the release unlearnable: see each inconclusive finding's needs (more"
                " patients, a clean victim that learns), or have a steward waive the check with a written reason."
                ) if unsure else "",
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


if TYPE_CHECKING:
    from guards.run import Run


def check(current: Run) -> CheckResult:
    """The registry's entry (guards.checks.registry): victims trained on the release, tested on clean data."""
    return run(current.release_tree, source_dir=current.paths.deid, cohort=current.cohort(), policy=current.policy,
               device=current.device)
