"""Membership inference per subgroup: LiRA offline (arXiv 2112.03570) or RMIA (arXiv 2312.03262).

The attacker's view of a release: a proxy model is trained on the released images of a random half of the
patients (the members; the other half are non-members), as an attacker fitting the release would (no
augmentation, no early stopping). ``policy.membership.reference_models`` reference models are trained on other
random halves of the population. Each image is queried twice, as released and as clean (``source_dir``), and
each patient gets the score of their most exposed image (patient-level, as in Knolle et al., "Disparate privacy
risks from medical AI", Nature 2026, where averages look like chance while the most exposed patients
concentrate in minority and rare-finding groups).

Scores:
- ``lira``: offline LiRA with a fixed (global) variance: ``(phi_target - mean(phi_out)) / sigma`` where ``phi`` is
  the logit-scaled confidence of the true label and ``phi_out`` comes from the reference models that did not see
  the patient (arXiv 2112.03570, sec. VI-C "offline" and "fixed variance").
- ``rmia``: ``Pr(x|theta) / Pr(x)`` against population samples ``z`` (the non-members' images),
  ``score(x) = P_z[LR(x, z) > gamma]`` with offline ``Pr(x) = ((1 + a) Pr_out(x) + (1 - a)) / 2``
  (arXiv 2312.03262, eq. 4 and appendix B.2.2).

Per subgroup ("column=value") the subgroup's members are scored against the whole non-member population: the
attacker sets one threshold for everyone. Reported: TPR at 1 % and 0.1 % FPR and AUC with 95 % intervals
(exact binomial for TPR, a seeded bootstrap of patients for AUC), and whether a subgroup is over-represented
among the most vulnerable members (chi-squared, or Fisher's exact test when expected counts are under 5,
Bonferroni-corrected).

Fail closed (the check must show the release safe, not merely fail to show it unsafe). For TPR at 1 % FPR and
AUC, overall and per subgroup:

- ``pass``: the upper end of the 95 % interval is at or below the policy threshold;
- ``fail``: the lower end is above it (the whole interval is unsafe);
- ``inconclusive``: the interval straddles the threshold, or the figure could not be measured: fewer than
  ``MIN_SUBGROUP_MEMBERS`` member patients in the subgroup, no interval (``membership.bootstrap = 0``), too few
  labelled patients overall, or images that no reference model left out (their OUT distribution is unknown, so
  their scores fall back to all references and understate the risk).

``needs`` (what would make an inconclusive figure conclusive): for TPR, the smallest member count whose exact
(Clopper-Pearson) upper bound at the observed TPR is at or below the threshold, converted to patients of the
subgroup (members are a random half); for AUC, or a TPR whose estimate is above the threshold,
:func:`guards.checks.base.scaled_count`: the subgroup's patient count times ``(half-width / distance to the
threshold)^2`` (interval widths shrink as ``1 / sqrt(n)``). Images without an OUT reference: each reference model
leaves a patient out with probability 1/2, so about ``P * 2^-R`` of ``P`` patients have none after ``R`` models;
fewer than one half expected needs ``R >= log2(2 P)``.
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
from scipy import stats
from torch import nn

from guards.checks.base import CheckResult, Finding, Status, interval_verdict, more_patients_needs
from guards.checks.models import SmallCNN, balanced_accuracy, logits, train, true_label_margin, true_label_prob
from guards.images import load_labelled_pair
from guards.policy import ReleasePolicy

logger = logging.getLogger(__name__)

CHECK_ID = "membership"
RMIA_A = 0.3  # offline RMIA's linear approximation of Pr_in from Pr_out (arXiv 2312.03262, app. B.2.2)
RMIA_GAMMA = 1.0
MIN_SUBGROUP_MEMBERS = 5
ROC_POINTS = 200


@dataclass(frozen=True)
class AttackMetrics:
    """TPR at 1 % and 0.1 % FPR and AUC of patient-level scores, each with a bootstrap 95 % interval."""

    tpr_1pct: float
    tpr_01pct: float
    auc: float
    ci: dict[str, tuple[float, float]]
    members: int
    non_members: int


def tpr_at_fpr(member: np.ndarray, non_member: np.ndarray, fpr: float) -> float:
    """Share of members scored strictly above the threshold that lets at most ``fpr`` of non-members through."""
    if len(member) == 0 or len(non_member) == 0:
        return float("nan")
    allowed = int(math.floor(fpr * len(non_member)))
    threshold = np.sort(non_member)[::-1][min(allowed, len(non_member) - 1)]
    return float(np.mean(member > threshold))


def auc(member: np.ndarray, non_member: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties count half)."""
    if len(member) == 0 or len(non_member) == 0:
        return float("nan")
    ranks = stats.rankdata(np.concatenate([member, non_member]))
    u = ranks[: len(member)].sum() - len(member) * (len(member) + 1) / 2
    return float(u / (len(member) * len(non_member)))


def roc_curve(member: np.ndarray, non_member: np.ndarray, *, points: int = ROC_POINTS) -> dict[str, list[float]]:
    """ROC points (fpr, tpr), thinned to at most ``points``, for the report's log-axis plots."""
    thresholds = np.unique(np.concatenate([member, non_member]))[::-1]
    if len(thresholds) > points:
        thresholds = thresholds[np.linspace(0, len(thresholds) - 1, points).astype(int)]
    fpr = [0.0] + [float(np.mean(non_member >= t)) for t in thresholds] + [1.0]
    tpr = [0.0] + [float(np.mean(member >= t)) for t in thresholds] + [1.0]
    return {"fpr": [round(v, 5) for v in fpr], "tpr": [round(v, 5) for v in tpr]}


def attack_metrics(member: np.ndarray, non_member: np.ndarray, *, rng: np.random.Generator,
                   bootstrap: int) -> AttackMetrics:
    """Point estimates with 95 % intervals.

    TPR at a fixed FPR: exact (Clopper-Pearson) binomial interval over the members at the threshold the
    non-members set; a bootstrap would resample the few extreme non-member scores that fix the threshold and
    bias the interval. AUC: percentile bootstrap, members and non-members resampled separately.
    """
    tpr1, tpr01 = tpr_at_fpr(member, non_member, 0.01), tpr_at_fpr(member, non_member, 0.001)
    point_auc = auc(member, non_member)
    ci: dict[str, tuple[float, float]] = {}
    for name, tpr in (("tpr_1pct", tpr1), ("tpr_01pct", tpr01)):
        hits = int(round(tpr * len(member)))
        interval = stats.binomtest(hits, len(member)).proportion_ci(confidence_level=0.95, method="exact")
        ci[name] = (round(float(interval.low), 4), round(float(interval.high), 4))
    if bootstrap:
        samples = [auc(rng.choice(member, len(member)), rng.choice(non_member, len(non_member)))
                   for _ in range(bootstrap)]
        ci["auc"] = (round(float(np.nanpercentile(samples, 2.5)), 4), round(float(np.nanpercentile(samples, 97.5)), 4))
    else:
        ci["auc"] = (float("nan"), float("nan"))
    return AttackMetrics(tpr1, tpr01, point_auc, ci, len(member), len(non_member))


def _status(ci_low: float, ci_high: float, threshold: float) -> Status:
    """pass when the whole 95 % interval is at or below the threshold, fail when the whole interval is above it,
    inconclusive when it straddles the threshold or is not finite (see the module docstring)."""
    return interval_verdict(ci_low, ci_high, threshold)


def members_for_tpr(tpr: float, threshold: float, *, limit: int = 100_000) -> int | None:
    """The smallest number of member patients for which the exact 95 % (Clopper-Pearson) upper bound of a TPR
    of ``tpr`` (``round(tpr * n)`` hits of ``n``) is at or below ``threshold``; None when the TPR is not below
    the threshold or ``limit`` members would not do."""
    if not (0.0 <= tpr < threshold):
        return None
    n = np.arange(1, limit + 1)
    hits = np.round(tpr * n)
    upper = np.where(hits >= n, 1.0, stats.beta.ppf(0.975, hits + 1, np.maximum(n - hits, 1)))
    ok = np.flatnonzero(upper <= threshold)
    return int(n[ok[0]]) if len(ok) else None


def _tpr_needs(tpr: float, low: float, high: float, threshold: float, *, members: int, patients: int,
               where: str) -> str:
    """What would make an inconclusive TPR conclusive (module docstring, ``needs``)."""
    need = members_for_tpr(tpr, threshold)
    if need is None:
        return more_patients_needs(patients=patients, value=tpr, low=low, high=high, threshold=threshold,
                                   where=where)
    total = max(patients + 1, math.ceil(need * patients / max(members, 1)))
    return (f"about {total - patients} more patients {where} (now {patients}, {members} of them members): at a"
            f" TPR of {tpr:.3g}, {need} member patients give an exact 95% upper bound at or below {threshold:.4g}")


def _auc_needs(am: AttackMetrics, threshold: float, *, patients: int, where: str) -> str:
    low, high = am.ci["auc"]
    if not (math.isfinite(low) and math.isfinite(high)):
        return "membership.bootstrap > 0: the AUC needs a bootstrap interval to be shown below the threshold"
    return more_patients_needs(patients=patients, value=am.auc, low=low, high=high, threshold=threshold,
                               where=where)


def reference_models_for(patients: int) -> int:
    """Reference models for fewer than one half patient expected without an OUT reference: ``P * 2^-R < 1/2``."""
    return max(2, math.ceil(math.log2(2 * max(patients, 1)) + 1e-9))


def _halves(patients: np.ndarray, rng: np.random.Generator) -> set[str]:
    chosen = rng.permutation(len(patients))[: len(patients) // 2]
    return set(patients[chosen].tolist())


def _out_or_all(out_mask: np.ndarray) -> np.ndarray:
    """Per image, the reference models that left it out; all of them where none did."""
    any_out = np.asarray(out_mask.any(axis=0), dtype=bool)
    return np.asarray(np.where(any_out[None, :], out_mask, True), dtype=bool)


def _lira(target: np.ndarray, refs: np.ndarray, out_mask: np.ndarray) -> np.ndarray:
    """Offline LiRA, fixed variance: standardised distance of the target's phi above the OUT references' mean."""
    use = _out_or_all(out_mask)  # no OUT reference: fall back to all (an inconclusive finding)
    mu = (refs * use).sum(axis=0) / use.sum(axis=0)
    resid = (refs - mu[None, :])[use]
    sigma = float(np.std(resid)) if resid.size > 1 else 1.0
    return np.asarray((target - mu) / max(sigma, 1e-6), dtype=np.float64)


def _rmia(target: np.ndarray, refs: np.ndarray, out_mask: np.ndarray, population: np.ndarray) -> np.ndarray:
    """Offline RMIA: share of population samples z with LR(x, z) > gamma (arXiv 2312.03262, eq. 4)."""
    use = _out_or_all(out_mask)
    pr_out = (refs * use).sum(axis=0) / use.sum(axis=0)
    pr_x = 0.5 * ((1 + RMIA_A) * pr_out + (1 - RMIA_A))
    ratio = target / np.maximum(pr_x, 1e-12)
    z = np.sort(ratio[population])
    return np.asarray(np.searchsorted(z, ratio / RMIA_GAMMA, side="left") / max(len(z), 1), dtype=np.float64)


def over_representation(
    scores: np.ndarray, groups: dict[str, np.ndarray], *, k: int, alpha: float
) -> list[dict[str, float | int | str]]:
    """For each subgroup: is it over-represented among the top-``k`` scored members? (Bonferroni over subgroups)."""
    top = np.zeros(len(scores), dtype=bool)
    top[np.argsort(-scores, kind="stable")[:k]] = True
    tests = len(groups)
    rows: list[dict[str, float | int | str]] = []
    for name, in_group in groups.items():
        a = int((top & in_group).sum())
        b = int((top & ~in_group).sum())
        c = int((~top & in_group).sum())
        d = int((~top & ~in_group).sum())
        expected = k * in_group.mean()
        table = np.array([[a, b], [c, d]])
        row_sums, col_sums = table.sum(axis=1), table.sum(axis=0)
        exp_cells = np.outer(row_sums, col_sums) / max(table.sum(), 1)
        if (exp_cells >= 5).all():
            chi2, p_two, _, _ = stats.chi2_contingency(table, correction=False)
            p = float(p_two / 2) if a > expected else 1.0
            test = f"chi-squared {chi2:.2f}"
        else:
            p = float(stats.fisher_exact(table, alternative="greater")[1])
            test = "Fisher's exact (expected counts < 5)"
        rows.append({"subgroup": name, "observed": a, "expected": round(float(expected), 2), "p": p,
                     "threshold": alpha / max(tests, 1), "test": test})
    return rows


@dataclass(frozen=True)
class Labelled:
    """The labelled images of a release (and their clean twins) as the model-based attacks use them."""

    x_rel: torch.Tensor
    x_src: torch.Tensor
    y: torch.Tensor
    pids: np.ndarray  # patient id per image
    patients: np.ndarray  # sorted unique patient ids
    n_classes: int
    groups: dict[str, np.ndarray]  # "column=value" -> mask over ``patients``
    examined: dict[str, int]


def load_labelled(release_dir: Path, source_dir: Path, *, cohort: pa.Table, policy: ReleasePolicy,
                  image_size: int, check_id: str = CHECK_ID) -> Labelled | CheckResult:
    """The release's labelled images, or an inconclusive result when a proxy cannot be trained on them."""
    rel, src = load_labelled_pair(
        release_dir, source_dir, size=image_size, cohort=cohort, subgroups=policy.cohort.subgroups
    )
    keep = np.flatnonzero(rel.labels >= 0)
    classes = np.unique(rel.labels[keep])
    pids = np.array(rel.patient_ids)[keep]
    patients = np.array(sorted(set(pids.tolist())))
    examined = {"images": len(rel.images), "labelled_images": len(keep), "patients": len(patients)}
    if len(classes) < 2 or len(patients) < 8:
        msg = f"{len(classes)} label classes over {len(patients)} patients with known labels"
        return CheckResult(
            id=check_id,
            findings=(Finding("labelled_data", len(keep), ">= 2 classes, >= 8 patients", "inconclusive",
                              evidence=msg,
                              needs=f"labels for at least 2 classes and at least 8 patients (now {len(classes)}"
                                    f" classes, {len(patients)} patients) so that a proxy can be trained"),),
            examined=examined, summary=f"Membership risk could not be measured: {msg}.",
            advice="Provide labels for at least two classes and eight patients so that an attacker's proxy can"
                   " be trained.",
        )
    index = {int(c): i for i, c in enumerate(classes)}
    y = torch.tensor([index[int(v)] for v in rel.labels[keep]], dtype=torch.long)
    groups: dict[str, np.ndarray] = {}
    first_row = {p: i for i, p in reversed(list(enumerate(pids)))}
    for column, values in rel.subgroups.items():
        vals = np.array(values)[keep]
        per_patient = np.array([vals[first_row[p]] for p in patients])
        for value in sorted(set(per_patient.tolist())):
            groups[f"{column}={value}"] = per_patient == value
    return Labelled(rel.images.pixels[keep], src.images.pixels[keep], y, pids, patients, len(classes), groups,
                    examined)


@dataclass(frozen=True)
class Scores:
    """Patient-level membership scores: each patient's most exposed image, released or clean."""

    patient_score: np.ndarray  # over ``Labelled.patients``
    patient_member: np.ndarray  # bool over ``Labelled.patients``
    out_mask: np.ndarray  # reference models x images: True where the model left the image out


Fit = Callable[[np.ndarray, int, str], nn.Module]  # (images to train on, seed, what) -> trained model


def score_patients(data: Labelled, members: set[str], target: nn.Module, *, fit: Fit, attack: str,
                   reference_models: int, seed: int, rng: np.random.Generator, device: str) -> Scores:
    """Score every patient against the ``target`` model with ``reference_models`` references from ``fit``.

    Each reference model is trained by ``fit`` on the images of another random half of the patients (drawn
    from ``rng``); images are queried as released and as clean, and a patient's score is their highest.
    """
    y, pids, patients = data.y, data.pids, data.patients
    is_member_img = np.array([p in members for p in pids])
    score_fn = true_label_prob if attack == "rmia" else true_label_margin
    views = {"release": data.x_rel, "source": data.x_src}
    target_scores = {v: score_fn(logits(target, x, device=device), y) for v, x in views.items()}
    refs = {v: np.zeros((reference_models, len(y))) for v in views}
    out_mask = np.zeros((reference_models, len(y)), dtype=bool)
    for r in range(reference_models):
        ref_in = _halves(patients, rng)
        in_img = np.array([p in ref_in for p in pids])
        out_mask[r] = ~in_img
        model = fit(in_img, seed + 1000 + r, f"reference model {r + 1}/{reference_models}")
        for v, x in views.items():
            refs[v][r] = score_fn(logits(model, x, device=device), y)
        logger.info("membership: reference model %d/%d trained", r + 1, reference_models)
    image_scores = np.full(len(y), -np.inf)
    for v in views:
        if attack == "rmia":
            s = _rmia(target_scores[v], refs[v], out_mask, population=~is_member_img)
        else:
            s = _lira(target_scores[v], refs[v], out_mask)
        image_scores = np.maximum(image_scores, s)
    # Patient level: the worst (highest-scored) image of each patient.
    order = {p: i for i, p in enumerate(patients)}
    patient_score = np.full(len(patients), -np.inf)
    np.maximum.at(patient_score, np.array([order[p] for p in pids]), image_scores)
    patient_member = np.array([p in members for p in patients])
    return Scores(patient_score, patient_member, out_mask)


def run(
    release_dir: Path,
    *,
    source_dir: Path,
    cohort: pa.Table,
    policy: ReleasePolicy,
    device: str = "cpu",
) -> CheckResult:
    """Train the attacker's proxy and reference models on the release and measure membership risk per subgroup."""
    t0 = time.monotonic()
    sec = policy.membership
    seed = policy.release.seed
    rng = np.random.default_rng([seed, 0x3E3B])
    data = load_labelled(release_dir, source_dir, cohort=cohort, policy=policy, image_size=sec.image_size)
    if isinstance(data, CheckResult):
        data.examined["reference_models"] = sec.reference_models
        return data
    examined = {**data.examined, "reference_models": sec.reference_models}
    x_rel, y, pids, patients, n_classes = data.x_rel, data.y, data.pids, data.patients, data.n_classes

    members = _halves(patients, rng)
    is_member_img = np.array([p in members for p in pids])

    def evaluate_on(mask: np.ndarray) -> Callable[[SmallCNN], float]:
        def evaluate(model: SmallCNN) -> float:
            pred = logits(model, x_rel[mask], device=device).argmax(1).numpy()
            return balanced_accuracy(y.numpy()[mask], pred)
        return evaluate

    eval_members, eval_non = evaluate_on(is_member_img), evaluate_on(~is_member_img)
    curve_non: list[float] = []

    def evaluate_both(model: SmallCNN) -> float:
        curve_non.append(eval_non(model))
        return eval_members(model)

    proxy = train(x_rel[is_member_img], y[is_member_img], n_classes=n_classes, epochs=sec.epochs,
                  seed=seed + 101, device=device, evaluate=evaluate_both, what="membership: proxy")
    logger.info("membership: proxy trained on %d member images, balanced accuracy members %.3f non-members %.3f",
                int(is_member_img.sum()), proxy.curve[-1], curve_non[-1])

    def fit(in_img: np.ndarray, model_seed: int, what: str) -> nn.Module:
        return train(x_rel[in_img], y[in_img], n_classes=n_classes, epochs=sec.epochs, seed=model_seed,
                     device=device, what=f"membership: {what}").model

    scored = score_patients(data, members, proxy.model, fit=fit, attack=sec.attack,
                            reference_models=sec.reference_models, seed=seed, rng=rng, device=device)
    out_mask, patient_score, patient_member = scored.out_mask, scored.patient_score, scored.patient_member
    no_out = int((~out_mask.any(axis=0)).sum())
    patient_groups = data.groups

    findings: list[Finding] = []
    roc: dict[str, dict[str, list[float]]] = {}
    metrics: dict[str, dict[str, object]] = {}
    non_scores = patient_score[~patient_member]
    groups = {"all": np.ones(len(patients), dtype=bool), **patient_groups}
    tpr_max, auc_max = sec.tpr_at_1pct_fpr_max, sec.auc_max
    for name, in_group in groups.items():
        m_scores = patient_score[patient_member & in_group]
        group_patients = int(in_group.sum())
        where = "overall" if name == "all" else f"in subgroup {name}"
        if len(m_scores) < MIN_SUBGROUP_MEMBERS:
            need = members_for_tpr(0.0, tpr_max) or MIN_SUBGROUP_MEMBERS
            more = max(1, 2 * need - group_patients)
            findings.append(Finding(
                "tpr_at_1pct_fpr", None, tpr_max, "inconclusive", subgroup=name,
                evidence=f"only {len(m_scores)} member patients (< {MIN_SUBGROUP_MEMBERS}): too few to measure",
                needs=(f"at least {more} more patients {where} (now {group_patients}): even with no member"
                       f" detected, {need} member patients (about half of the patients) are needed for an exact"
                       f" 95% upper bound at or below {tpr_max:.4g}"),
            ))
            continue
        am = attack_metrics(m_scores, non_scores, rng=rng, bootstrap=sec.bootstrap)
        roc[name] = roc_curve(m_scores, non_scores)
        metrics[name] = {"tpr_1pct": am.tpr_1pct, "tpr_01pct": am.tpr_01pct, "auc": am.auc, "ci": am.ci,
                         "members": am.members, "non_members": am.non_members}
        base = f"{am.members} member vs {am.non_members} non-member patients"
        tpr_low, tpr_high = am.ci["tpr_1pct"]
        tpr_status = _status(tpr_low, tpr_high, tpr_max)
        findings.append(Finding(
            "tpr_at_1pct_fpr", round(am.tpr_1pct, 4), tpr_max, tpr_status,
            subgroup=name,
            evidence=f"{base}; 95% CI {am.ci['tpr_1pct']}; {sec.attack} with {sec.reference_models} reference models"
                     + (f" (1% FPR over {am.non_members} non-members allows {int(0.01 * am.non_members)} false"
                        " positives)" if am.non_members < 100 else ""),
            needs=_tpr_needs(am.tpr_1pct, tpr_low, tpr_high, tpr_max, members=am.members,
                             patients=group_patients, where=where) if tpr_status == "inconclusive" else "",
        ))
        findings.append(Finding(
            "tpr_at_0.1pct_fpr", round(am.tpr_01pct, 4), None, "pass", subgroup=name,
            evidence=f"{base}; 95% CI {am.ci['tpr_01pct']} (reported, no threshold)",
        ))
        auc_status = _status(am.ci["auc"][0], am.ci["auc"][1], auc_max)
        findings.append(Finding(
            "auc", round(am.auc, 4), auc_max, auc_status,
            subgroup=name,
            evidence=f"{base}; 95% CI {am.ci['auc']}",
            needs=_auc_needs(am, auc_max, patients=group_patients, where=where) if auc_status == "inconclusive"
            else "",
        ))

    member_scores = patient_score[patient_member]
    n_members = len(member_scores)
    k_one_pct = math.ceil(0.01 * n_members)
    k = max(k_one_pct, min(sec.min_top_k, n_members))
    member_groups = {g: mask[patient_member] for g, mask in patient_groups.items()}
    tests = over_representation(member_scores, member_groups, k=k, alpha=sec.bonferroni_alpha)
    note = (f"top {k} members (1% of {n_members} members is {k_one_pct}; the minimum top-k {sec.min_top_k} is"
            " used for a small cohort)") if k > k_one_pct else f"top 1% = {k} of {n_members} members"
    for t in tests:
        over = float(t["p"]) < float(t["threshold"])
        findings.append(Finding(
            "top_vulnerable_over_representation", round(float(t["p"]), 6), round(float(t["threshold"]), 6),
            "fail" if over else "pass", subgroup=str(t["subgroup"]),
            evidence=f"{t['observed']} of the {note} are in this subgroup, expected {t['expected']};"
                     f" {t['test']}, Bonferroni over {len(tests)} subgroups",
        ))
    if no_out:
        in_all = np.ones(len(patients), dtype=bool)
        for p_i, p in enumerate(patients):
            in_all[p_i] = not out_mask[:, pids == p].any()
        wanted = reference_models_for(len(patients))
        findings.append(Finding(
            "images_without_out_reference", no_out, 0, "inconclusive",
            evidence=(f"{no_out} images of {int(in_all.sum())} patients had no reference model that left them"
                      " out: their scores fall back to all reference models, which understates their risk"),
            needs=(f"membership.reference_models of at least {wanted} (now {sec.reference_models}): each model"
                   f" leaves a patient out with probability 1/2, so about {len(patients)} x 2^-R patients have no"
                   " OUT reference after R models"),
        ))
    failed = sorted({f.subgroup for f in findings if f.status == "fail"})
    unsure = sorted({f.subgroup for f in findings if f.status == "inconclusive"} - set(failed))
    overall = metrics.get("all", {})
    summary = (
        f"An attacker's {sec.attack.upper()} attack on a model trained on the release reaches TPR "
        f"{overall.get('tpr_1pct', float('nan')):.2f} at 1% FPR and AUC {overall.get('auc', float('nan')):.2f}"
        f" over {len(patients)} patients"
        + (f"; elevated risk for: {', '.join(failed)}" if failed else "")
        + (f"; not shown below the thresholds (inconclusive) for: {', '.join(unsure)}" if unsure else "")
        + ("." if failed or unsure else "; every figure's 95% interval is below its threshold.")
    )
    examined.update({"member_patients": n_members, "non_member_patients": int((~patient_member).sum()),
                     "subgroups": len(patient_groups), "top_k": k})
    return CheckResult(
        id=CHECK_ID,
        findings=tuple(findings),
        examined=examined,
        summary=summary,
        advice=("Remove duplicated or near-duplicate studies, check that the flagged subgroup's images carry the"
                " protective noise (protect.epsilon, protect.rho), or release fewer images of those patients."
                ) if failed else (
                "Not enough data to show the risk below the thresholds: see each inconclusive finding's needs"
                " (more patients, more reference models), or have a steward waive the check with a written"
                " reason.") if unsure else "",
        details={
            "roc": roc,
            "curves": {"proxy_members": proxy.curve, "proxy_non_members": curve_non},
            "metrics": metrics,
            "over_representation": tests,
            "attack": sec.attack,
            "seed": seed,
            "seconds": round(time.monotonic() - t0, 2),
        },
    )


if TYPE_CHECKING:
    from guards.run import Run


def check(current: Run) -> CheckResult:
    """The registry's entry (guards.checks.registry): the release against its de-identified clean reference."""
    return run(current.release_tree, source_dir=current.paths.deid, cohort=current.cohort(), policy=current.policy,
               device=current.device)
