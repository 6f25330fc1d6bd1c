"""Attribute inference (advisory by default): can a withheld attribute be predicted from the release?

For each target in ``policy.attribute.targets`` (cohort columns such as ``ethnic_group`` and ``sex``) an
attacker's classifier (L2-regularised logistic regression) is fitted on what the release shows: the released
images, downsampled to ``policy.attribute.image_size``, and the released header metadata of the release's
``manifest.parquet`` (modality, manufacturer, model, body part, age, size, weight, institution), one-hot
encoded. Out-of-fold probabilities from a patient-level cross-validation are averaged per patient and scored
one value against the rest by AUC (baseline 0.5). A target fails when some value's AUC exceeds
``0.5 + policy.attribute.auc_margin`` and its 95 % bootstrap interval lies above 0.5 (warns when only the point
estimate exceeds it: small cohorts give chance correlations); it also fails outright when the release's own
headers carry the attribute (``PatientSex``, ``EthnicGroup``: PS3.15 Table E.1-1 removes them unless the
Retain Patient Characteristics Option is chosen). Whether a failure blocks the release is the gate's decision
(``gate.advisory``).

This is the attribute-inference view of Knolle et al., "Disparate privacy risks from medical AI" (Nature 2026):
images can reveal demographic attributes that the headers no longer state.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from guards.checks.base import CheckResult, Finding, Status
from guards.images import label_images, load_images
from guards.policy import ReleasePolicy
from guards.threads import cpu_threads

if TYPE_CHECKING:
    from guards.run import Run

logger = logging.getLogger(__name__)

CHECK_ID = "attribute"
METADATA_COLUMNS: tuple[str, ...] = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "BodyPartExamined",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "InstitutionName",
)
HEADER_OF_TARGET: dict[str, str] = {"sex": "PatientSex", "ethnic_group": "EthnicGroup", "age_band": "PatientAge"}
MIN_PATIENTS_PER_SIDE = 5
UNKNOWN = {"unknown", "", "None"}


def patient_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """AUC of ``scores`` for ``positive`` (Mann-Whitney; ties count half)."""
    from scipy import stats

    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_interval(
    scores: np.ndarray, positive: np.ndarray, *, rng: np.random.Generator, reps: int = 200
) -> tuple[float, float]:
    """Percentile 95 % bootstrap interval of the AUC (patients resampled with replacement)."""
    values = []
    for _ in range(reps):
        pick = rng.integers(0, len(scores), len(scores))
        values.append(patient_auc(scores[pick], positive[pick]))
    return float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))


def _status(value: float, ci_low: float, threshold: float) -> Status:
    """fail above the threshold when the AUC is also significantly above the 0.5 baseline; warn when it is not."""
    if value <= threshold:
        return "pass"
    return "fail" if ci_low > 0.5 else "warn"


def fit_predict(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, *, n_classes: int, seed: int,
    steps: int = 200, weight_decay: float = 1e-3,
) -> torch.Tensor:
    """Multinomial logistic regression (full-batch Adam, standardised features): class probabilities of x_test."""
    mu, sd = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(a.shape[1], n_classes, generator=gen) * 0.01).requires_grad_()
    bias = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.Adam([w, bias], lr=0.05, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(a @ w + bias, y_train).backward()  # type: ignore[no-untyped-call]
        opt.step()
    with torch.no_grad():
        return torch.softmax(b @ w + bias, dim=1)


def _metadata(
    release_dir: Path, sops: tuple[str, ...], exclude: set[str]
) -> tuple[np.ndarray, list[str], dict[str, int]]:
    """One-hot released header values per image (rows aligned to ``sops``) and which attributes were used."""
    path = release_dir / "manifest.parquet"
    if not path.is_file():
        return np.zeros((len(sops), 0), dtype=np.float32), [], {}
    table = pq.read_table(path)
    if "SOPInstanceUID" not in table.column_names:
        return np.zeros((len(sops), 0), dtype=np.float32), [], {}
    by_sop = {str(r["SOPInstanceUID"]): r for r in table.to_pylist()}
    columns: list[np.ndarray] = []
    names: list[str] = []
    present: dict[str, int] = {}
    for col in (*METADATA_COLUMNS, *HEADER_OF_TARGET.values()):
        if col in exclude or col not in table.column_names or col in names:
            continue
        values = [str(by_sop.get(s, {}).get(col) or "") for s in sops]
        present[col] = sum(v not in UNKNOWN for v in values)
        levels = sorted(set(values) - {""})
        if len(levels) < 2:
            continue
        for level in levels[:50]:
            columns.append(np.array([v == level for v in values], dtype=np.float32))
            names.append(f"{col}={level}")
    feats = np.stack(columns, axis=1) if columns else np.zeros((len(sops), 0), dtype=np.float32)
    return feats, names, present


def run(release_dir: Path, *, cohort: pa.Table, policy: ReleasePolicy) -> CheckResult:
    """Predict each withheld target attribute from the release; findings per target and per target value."""
    t0 = time.monotonic()
    sec = policy.attribute
    seed = policy.release.seed
    release_dir = Path(release_dir)
    images = load_images(release_dir, size=sec.image_size)
    targets = [t for t in sec.targets if t in cohort.column_names]
    data = label_images(images, cohort, subgroups=targets)
    n = len(data.images)
    pixels = data.images.pixels.reshape(n, -1).numpy()
    findings: list[Finding] = []
    details: dict[str, dict[str, float | int | list[float]]] = {}
    examined = {"images": n, "patients": len(set(data.patient_ids)), "targets": len(targets)}
    for missing in sorted(set(sec.targets) - set(targets)):
        findings.append(Finding("auc", None, 0.5 + sec.auc_margin, "warn", subgroup=f"{missing}=*",
                                evidence=f"the cohort has no column {missing!r}; nothing to test"))
    header_present: dict[str, int] = {}
    for target in targets:
        header = HEADER_OF_TARGET.get(target, "")
        meta, meta_names, present = _metadata(release_dir, data.images.sop_uids, {header} if header else set())
        header_present.update(present)
        _, _, target_present = _metadata(release_dir, data.images.sop_uids, set())
        if header and target_present.get(header, 0) > 0:
            findings.append(Finding(
                "header_disclosure", target_present[header], 0, "fail", subgroup=f"{target}=*",
                evidence=f"{target_present[header]} released instances state {header}: the attribute is not withheld",
            ))
        values = np.array(data.subgroups[target])
        pids = np.array(data.patient_ids)
        patients = np.array(sorted(set(pids.tolist())))
        first = {p: i for i, p in reversed(list(enumerate(pids.tolist())))}
        p_value = np.array([values[first[p]] for p in patients])
        known = np.array([v not in UNKNOWN for v in p_value])
        n_known = int(known.sum())
        levels = [v for v in sorted(set(p_value[known].tolist()))
                  if MIN_PATIENTS_PER_SIDE <= int((p_value[known] == v).sum()) <= n_known - MIN_PATIENTS_PER_SIDE]
        if len(levels) == 0:
            findings.append(Finding("auc", None, 0.5 + sec.auc_margin, "warn", subgroup=f"{target}=*",
                                    evidence=f"fewer than {MIN_PATIENTS_PER_SIDE} patients with and without each"
                                             f" known value of {target}: cannot be measured"))
            continue
        all_levels = sorted(set(p_value[known].tolist()))
        level_index = {v: i for i, v in enumerate(all_levels)}
        x = torch.from_numpy(np.concatenate([pixels, meta], axis=1).astype(np.float32))
        img_known = np.array([v not in UNKNOWN for v in values])
        y = torch.tensor([level_index.get(v, -1) for v in values], dtype=torch.long)
        # Patient-level folds.
        rng = np.random.default_rng([seed, 0xA771, len(target)])
        known_patients = patients[known]
        fold_of = dict(zip(rng.permutation(known_patients).tolist(),
                           np.arange(len(known_patients)) % sec.folds, strict=True))
        img_fold = np.array([fold_of.get(p, -1) for p in pids.tolist()])
        probs = np.zeros((n, len(all_levels)))
        for fold in range(sec.folds):
            te = img_known & (img_fold == fold)
            tr = img_known & (img_fold != fold)
            if not te.any() or not tr.any():
                continue
            with cpu_threads(1):  # tiny full-batch problems: a second thread only adds synchronisation
                probs[te] = fit_predict(x[tr], y[tr], x[te], n_classes=len(all_levels), seed=seed + fold).numpy()
        order = {p: i for i, p in enumerate(known_patients)}
        sums = np.zeros((len(known_patients), len(all_levels)))
        counts = np.zeros(len(known_patients))
        for i in np.flatnonzero(img_known):
            sums[order[pids[i]]] += probs[i]
            counts[order[pids[i]]] += 1
        patient_prob = sums / np.maximum(counts, 1)[:, None]
        truth = p_value[known]
        aucs = {v: patient_auc(patient_prob[:, level_index[v]], truth == v) for v in levels}
        boot = np.random.default_rng([seed, 0xB007, len(target)])
        cis = {v: auc_interval(patient_prob[:, level_index[v]], truth == v, rng=boot) for v in levels}
        worst = max(aucs, key=lambda v: aucs[v])
        threshold = round(0.5 + sec.auc_margin, 4)
        findings.append(Finding(
            "auc", round(aucs[worst], 4), threshold, _status(aucs[worst], cis[worst][0], threshold),
            subgroup=f"{target}=*",
            evidence=(f"{target} predicted from {pixels.shape[1]} pixel features and {meta.shape[1]} header features"
                      f" over {len(known_patients)} patients ({sec.folds}-fold patient-level cross-validation);"
                      f" highest one-vs-rest AUC {aucs[worst]:.3f} (95% CI {cis[worst][0]:.2f}-{cis[worst][1]:.2f})"
                      f" for {target}={worst}; baseline 0.5"),
        ))
        for v, a in aucs.items():
            findings.append(Finding(
                "auc", round(a, 4), threshold, _status(a, cis[v][0], threshold), subgroup=f"{target}={v}",
                evidence=(f"{int((truth == v).sum())} of {len(truth)} patients; one-vs-rest AUC, 95% CI"
                          f" {cis[v][0]:.2f}-{cis[v][1]:.2f}, baseline 0.5"),
            ))
            details[f"{target}={v}"] = {"auc": round(a, 4), "ci": [round(cis[v][0], 4), round(cis[v][1], 4)],
                                        "patients": int((truth == v).sum())}
        logger.info("attribute: %s highest AUC %.3f (%s)", target, aucs[worst], worst)
        examined[f"patients_{target}"] = len(known_patients)
        examined["header_features"] = max(examined.get("header_features", 0), int(meta.shape[1]))
    failed = sorted({f.subgroup for f in findings if f.status == "fail"})
    return CheckResult(
        id=CHECK_ID,
        findings=tuple(findings),
        examined=examined,
        summary=(f"Withheld attributes predictable from the release above baseline: {', '.join(failed)}."
                 if failed else "No withheld attribute is predictable from the release above its baseline."),
        advice=("Remove the header elements that state or proxy the attribute (deid options), or accept the risk"
                " with a waiver if the images themselves reveal it.") if failed else "",
        details={"auc": details, "header_values_present": header_present, "seed": seed,
                 "seconds": round(time.monotonic() - t0, 2)},
    )


def check(current: Run) -> CheckResult:
    """The registry's entry (guards.checks.registry): attribute inference on the run's release tree."""
    return run(current.release_tree, cohort=current.cohort(), policy=current.policy)
