"""Unlearnability: a victim trained on the protected release must stay near chance on clean held-out data.

The test of unlearnable examples (Huang et al., arXiv 2101.04898; SALM, arXiv 2403.10573), against adaptive
attackers: patients are split into train and held-out sets (patient level, seeded); each attacker of
``policy.unlearnability.victims`` (:mod:`guards.checks.victims`: the plain small CNN, one trained with standard
augmentations, one on JPEG re-encoded and one on blurred training images, an MLP) trains on the train patients'
RELEASED images and is evaluated on the held-out patients' CLEAN images (``source_dir``); the check's figure is the
worst case over them, the best an attacker gets. Controls trained on the same split: the plain victim on clean
images (shows the task is learnable, so a near-chance attacker means the noise works), on clean images through
each attacker's defence (what JPEG or blur cost the task itself is not counted as protection), and on clean images
plus random noise of the release's own sparsity and amplitudes (each image's changes moved to random positions
with random signs: the effect is not mere noise). Every victim's learning curve is kept; each is judged at its
last epoch, and an attacker whose best epoch is shown above the band fails too.

Fail closed, with the band ``chance + policy.unlearnability.margin`` (below chance is not a usable model) and 95 %
bootstrap intervals (held-out patients resampled), overall and per subgroup:

- ``balanced_accuracy_clean``: ``pass`` when the whole interval of the clean victim is above the band (the task is
  shown learnable); otherwise ``inconclusive``: a victim that does not learn from clean data cannot show that
  the noise protects anything;
- ``balanced_accuracy_protected`` (the worst attacker; one ``balanced_accuracy_protected_<attacker>`` each):
  ``fail`` when the whole interval is above the band (the attacker learned from the release); ``pass`` when the
  whole interval is within the band AND the clean victim is shown learnable; otherwise ``inconclusive`` (the
  interval straddles the band, the clean victim did not learn, or the subgroup has fewer than
  ``MIN_SUBGROUP_IMAGES`` held-out images); too few labelled patients overall is inconclusive too.

``needs``: for an interval that straddles the band, :func:`guards.checks.base.scaled_count`: the (sub)group's
labelled patients times ``(half-width / distance to the band)^2``, because interval widths shrink as
``1 / sqrt(n)``; for a subgroup too small to measure, the patients that would give ``MIN_SUBGROUP_IMAGES``
held-out images at the subgroup's images per patient and the held-out share ``HELD_OUT_FRACTION``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from guards.checks import victims
from guards.checks.base import (
    CheckResult,
    Finding,
    Status,
    interval_verdict,
    more_patients_needs,
    scaled_count,
)
from guards.checks.models import balanced_accuracy, logits, train
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

    def predictions(model: nn.Module) -> np.ndarray:
        return logits(model, x_eval, device=device).argmax(1).numpy()

    x_rel, x_src = rel_k.images.pixels[tr], src_k.images.pixels[tr]
    recipes = [victims.RECIPES[name] for name in sec.victims]
    gen = torch.Generator().manual_seed(seed + 7)
    # Every victim: (name, training images, recipe). Attackers train on the release as they would preprocess it;
    # the controls train on clean images: as given, through each attacker's defence, and with random noise of the
    # release's own sparsity and amplitudes (guards.checks.victims.same_sparsity_noise).
    plan: list[tuple[str, torch.Tensor, victims.Recipe]] = [
        (f"protected_{r.name}", victims.defended(x_rel, r.defence), r) for r in recipes]
    plain = victims.RECIPES["plain"]
    plan.append(("clean", x_src, plain))
    for defence in sorted({r.defence for r in recipes} - {""}):
        plan.append((f"clean_{defence}", victims.defended(x_src, defence), plain))
    plan.append(("random_noise", (x_src + victims.same_sparsity_noise(x_rel - x_src, gen)).clamp(0.0, 1.0), plain))
    curves: dict[str, list[float]] = {}
    peak_preds: dict[str, np.ndarray] = {}
    last_preds: dict[str, np.ndarray] = {}

    def tracking(peak: _Peak) -> Callable[[nn.Module], float]:
        def evaluate(model: nn.Module) -> float:
            pred = predictions(model)
            value = balanced_accuracy(y_eval, pred)
            if value > peak.value:
                peak.value, peak.preds = value, pred
            return value

        return evaluate

    for name, x_train, recipe in plan:
        peak = _Peak()
        trained = train(
            x_train, y_all[tr], n_classes=n_classes, epochs=sec.epochs, seed=seed + 11, device=device,
            evaluate=tracking(peak), min_steps=VICTIM_MIN_STEPS, what=f"unlearnability: {name} victim",
            build=victims.builder(recipe, image_shape=tuple(x_train.shape[1:])),
            augment=victims.augment if recipe.augmented else None,
        )
        curves[name] = trained.curve
        last_preds[name] = predictions(trained.model)
        peak_preds[name] = peak.preds if peak.preds is not None else last_preds[name]
        logger.info("unlearnability: %s victim balanced accuracy %.3f (peak %.3f)", name, curves[name][-1],
                    max(curves[name]))

    findings: list[Finding] = []
    # Every victim is judged at its last epoch (trained to convergence); an attacker whose best epoch is shown
    # above the band fails too (one with clean validation data stops there). The best epoch alone does not decide
    # a pass: picked on the held-out images themselves, it is biased upwards by their noise.
    attackers = [f"protected_{r.name}" for r in recipes]
    preds = last_preds
    bacc = {name: balanced_accuracy(y_eval, p) for name, p in preds.items()}
    last = {name: round(curve[-1], 4) for name, curve in curves.items()}
    held_pids = np.array([rel_k.patient_ids[i] for i in te])
    band = round(chance + sec.margin, 4)
    n_patients = examined["patients"]
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

    def judged(mask: np.ndarray | None, rng: np.random.Generator) -> dict[str, tuple[float, float, float, Status]]:
        """Per attacker: balanced accuracy at its last epoch, its 95 % interval and its verdict (a fail too when
        the interval at its best epoch is wholly above the band)."""
        rows = np.arange(len(y_eval)) if mask is None else np.flatnonzero(mask)
        out: dict[str, tuple[float, float, float, Status]] = {}
        for a in attackers:
            y, pid = y_eval[rows], held_pids[rows]
            lo, hi = bootstrap_interval(y, preds[a][rows], pid, rng=rng)
            status = _verdict(lo, hi, chance, sec.margin, learnable=learnable)
            peak_low, _ = bootstrap_interval(y, peak_preds[a][rows], pid, rng=rng)
            if peak_low > chance + sec.margin:
                status = "fail"
            out[a] = (balanced_accuracy(y, preds[a][rows]), lo, hi, status)
        return out

    def worst(per: dict[str, tuple[float, float, float, Status]]) -> str:
        """The attacker the release protects least against: a fail first, then an inconclusive, then the highest."""
        rank = {"fail": 2, "inconclusive": 1}
        return max(per, key=lambda a: (rank.get(per[a][3], 0), per[a][0]))

    def attacker_line(per: dict[str, tuple[float, float, float, Status]]) -> str:
        return ", ".join(f"{a.removeprefix('protected_')} {per[a][0]:.3f}" for a in attackers)

    overall = judged(None, np.random.default_rng([seed, 0xB007]))
    top = worst(overall)
    value, low, high, status = overall[top]
    findings.append(Finding(
        "balanced_accuracy_protected", round(value, 4), band, status,
        evidence=(f"worst case over {len(attackers)} attacker(s), {top.removeprefix('protected_')} "
                  f"({victims.RECIPES[top.removeprefix('protected_')].what}): trained on {len(tr)} released "
                  f"images, evaluated on {len(te)} clean held-out images, balanced accuracy {value:.3f} at its last"
                  f" epoch (95% CI {low:.2f}-{high:.2f}, patients resampled; best epoch {max(curves[top]):.3f}) vs "
                  f"chance {chance:.2f} + {sec.margin:.2f}; each attacker at its last epoch: {attacker_line(overall)}; "
                  f"same victim on clean data {bacc['clean']:.3f}"
                  + ("" if learnable or status == "fail" else
                     " (the clean victim did not learn, so protection cannot be shown)")),
        needs=protected_needs(status, value, low, high, patients=n_patients, where="overall"),
    ))
    for a in attackers:
        recipe = victims.RECIPES[a.removeprefix("protected_")]
        v, lo, hi, st = overall[a]
        control = ""
        if recipe.defence:
            c = bacc[f"clean_{recipe.defence}"]
            control = (f"; the same defence on clean images {c:.3f}"
                       + (" (the defence destroys the task itself: its near-chance figure is not protection by the"
                          " noise)" if c <= chance + sec.margin else
                          f", so the noise costs this attacker {c - v:+.3f}"))
        findings.append(Finding(
            f"balanced_accuracy_{a}", round(v, 4), band, st,
            evidence=(f"{recipe.what}: {v:.3f} at its last epoch (95% CI {lo:.2f}-{hi:.2f}), best epoch "
                      f"{max(curves[a]):.3f} (epoch {int(np.argmax(curves[a])) + 1})" + control),
            needs=protected_needs(st, v, lo, hi, patients=n_patients, where=f"against the {recipe.name} attacker"),
        ))
    findings.append(Finding(
        "balanced_accuracy_clean", round(bacc["clean"], 4), band,
        "pass" if learnable else "inconclusive",
        evidence=(f"clean victim {bacc['clean']:.3f} at its last epoch (95% CI {clean_low:.2f}-{clean_high:.2f}; "
                  f"best epoch {max(curves['clean']):.3f}): "
                  + ("the task is learnable from clean data, so a near-chance protected victim shows the noise works"
                     if learnable else "the victim is not shown to learn even from clean data: this check cannot"
                     " show protection on this cohort (too few images or labels the images do not explain)")),
        needs=clean_needs,
    ))
    moved = float((x_rel - x_src).abs().amax()) if len(x_rel) else 0.0
    findings.append(Finding(
        "balanced_accuracy_random_noise", round(bacc["random_noise"], 4), None, "pass",
        evidence=(f"control: clean data plus random noise of the release's own sparsity and amplitudes (each "
                  f"image's changes at random positions with random signs; L-infinity {moved:.4f}): "
                  f"{bacc['random_noise']:.3f} vs clean {bacc['clean']:.3f}"),
    ))
    for defence in sorted({r.defence for r in recipes} - {""}):
        c = bacc[f"clean_{defence}"]
        findings.append(Finding(
            f"balanced_accuracy_clean_{defence}", round(c, 4), None, "pass",
            evidence=(f"control: the {defence} defence applied to clean training images: {c:.3f} vs clean "
                      f"{bacc['clean']:.3f}; what the defence costs the task itself, not counted as protection"),
        ))
    per_subgroup: dict[str, dict[str, object]] = {
        "all": {"images": len(te), **{k: round(v, 4) for k, v in bacc.items()}, "worst": top,
                "protected_ci": [round(low, 4), round(high, 4)], "clean_ci": [round(clean_low, 4),
                                                                              round(clean_high, 4)]}
    }
    boot_rng = np.random.default_rng([seed, 0xB008])
    for column, values in src_k.subgroups.items():
        vals = np.array(values)[te]
        all_vals = np.array(values)
        for value_ in sorted(set(vals.tolist())):
            mask = vals == value_
            name = f"{column}={value_}"
            n = int(mask.sum())
            group_patients = len({rel_k.patient_ids[i] for i in np.flatnonzero(all_vals == value_)})
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
            per = judged(mask, boot_rng)
            sub_top = worst(per)
            v, lo, hi, st = per[sub_top]
            per_subgroup[name] = {"images": n, **{k: round(x, 4) for k, x in b.items()}, "worst": sub_top,
                                  "protected_ci": [round(lo, 4), round(hi, 4)]}
            findings.append(Finding(
                "balanced_accuracy_protected", round(v, 4), band, st, subgroup=name,
                evidence=(f"{n} held-out images: worst attacker {sub_top.removeprefix('protected_')} {v:.3f} "
                          f"(95% CI {lo:.2f}-{hi:.2f}, patients resampled; {attacker_line(per)}), clean victim "
                          f"{b['clean']:.3f}, random-noise control {b['random_noise']:.3f}"),
                needs=protected_needs(st, v, lo, hi, patients=group_patients, where=f"in subgroup {name}"),
            ))
    failed = [f.subgroup for f in findings if f.status == "fail"]
    unsure = sorted({f.subgroup for f in findings if f.status == "inconclusive"} - set(failed))
    summary = (
        f"The best of {len(attackers)} attacker(s) trained on the release ({top.removeprefix('protected_')}) reaches"
        f" balanced accuracy {value:.2f} on clean held-out data (chance {chance:.2f}, clean-trained "
        f"{bacc['clean']:.2f}, random-noise control {bacc['random_noise']:.2f})"
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
            "attackers": {a.removeprefix("protected_"): {"peak": round(max(curves[a]), 4), "last": last[a],
                                                          "epoch_of_peak": int(np.argmax(curves[a])) + 1}
                          for a in attackers},
            "chance": chance,
            "balanced_accuracy": per_subgroup,
            "seed": seed,
            "seconds": round(time.monotonic() - t0, 2),
        },
    )


@dataclass
class _Peak:
    """A victim's best epoch so far: its balanced accuracy on the clean held-out images and its predictions."""

    value: float = -1.0
    preds: np.ndarray | None = None


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
