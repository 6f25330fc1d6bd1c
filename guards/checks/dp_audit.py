"""What a DP-SGD training budget would change: the membership attack on audit proxies trained with DP-SGD.

Optional (``[dp_audit] enabled``, off by default; advisory when on). The members, the attack and the scores
are the membership check's (:mod:`guards.checks.membership`: the same seeded half of the patients, LiRA or
RMIA with ``membership.reference_models`` reference models, images queried as released and as clean, a
patient's score is their most exposed image). The proxy and its reference models are trained once without DP
(the baseline, as the membership check trains them) and once per ``dp_audit.epsilons`` with DP-SGD (Abadi et
al., "Deep learning with differential privacy", CCS 2016) through Opacus's ``PrivacyEngine.
make_private_with_epsilon`` (Poisson sampling, per-sample clipping at ``max_grad_norm``, RDP accountant;
Yousefpour et al., arXiv 2109.12298). The attacker trains the reference models with the target's recipe,
so at each epsilon they are DP-trained too. Batch norm is replaced by group norm (Opacus's ``ModuleValidator.
fix``) in the DP proxies, since batch statistics mix records.

Reported per epsilon and subgroup: TPR at 1 % FPR (exact 95 % interval) and AUC; the utility, balanced accuracy
on the held-out (non-member) patients' released images, and its loss against the non-DP proxy; the epsilon
the accountant reports as spent. The most exposed subgroup is the one with the highest non-DP TPR at 1 % FPR
among those with at least ``membership.MIN_SUBGROUP_MEMBERS`` member patients.

The accounting is record-level: one record is one image (instance). A patient with k images in the training
set is protected only at about k times epsilon (group privacy, Dwork & Roth 2014, Theorem 2.2), which the
result states, with the largest k in this release. The inversion figures are not recomputed on the DP proxies.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from guards.checks.base import CheckResult, Finding, interval_verdict
from guards.checks.membership import (
    MIN_SUBGROUP_MEMBERS,
    Fit,
    Labelled,
    _halves,
    attack_metrics,
    load_labelled,
    score_patients,
)
from guards.checks.models import balanced_accuracy, build_model, logits, train
from guards.errors import InputError
from guards.policy import DpAuditSection, ReleasePolicy
from guards.threads import CPU_THREADS, cpu_threads

logger = logging.getLogger(__name__)

CHECK_ID = "dp_audit"
RECORD_LEVEL = ("The privacy accounting is record-level: one record is one image (instance), not one patient;"
                " a patient with k images is protected only at about k x epsilon (group privacy).")


@dataclass
class DpTrained:
    """A DP-SGD-trained model and what the accountant says it spent."""

    model: nn.Module
    epsilon_spent: float
    noise_multiplier: float


def train_dp(x: torch.Tensor, y: torch.Tensor, *, n_classes: int, sec: DpAuditSection, epsilon: float, seed: int,
             device: str = "cpu", what: str = "dp proxy") -> DpTrained:
    """Train a fresh (group-norm) :class:`~guards.checks.models.SmallCNN` with DP-SGD at ``(epsilon, delta)``.

    Weights, Poisson batches and noise come from generators seeded by ``seed``. Opacus's ``secure_mode`` is
    off (its cryptographic noise cannot be seeded): this is an audit proxy, not a model to release."""
    from opacus import PrivacyEngine
    from opacus.validators import ModuleValidator

    if len(x) == 0:
        raise InputError(f"dp_audit: {what} has no training images")
    if sec.delta >= 1 / len(x):
        raise InputError(f"dp_audit.delta = {sec.delta:g} is not below 1 / {len(x)} training images; a delta that"
                         " large allows releasing a record outright: lower dp_audit.delta")
    model = ModuleValidator.fix(build_model(n_classes=n_classes, seed=seed)).to(device)
    data = torch.utils.data.TensorDataset(x.to(device), y.to(device))
    loader = torch.utils.data.DataLoader(data, batch_size=min(sec.batch_size, len(x)),
                                         generator=torch.Generator().manual_seed(seed + 1))
    opt = torch.optim.Adam(model.parameters(), lr=sec.lr)
    loss_fn = nn.CrossEntropyLoss()
    with warnings.catch_warnings(), cpu_threads(CPU_THREADS if device == "cpu" else None):
        # Opacus warns that secure_mode is off (on purpose, see above) and about its own hooks.
        warnings.filterwarnings("ignore", module=r"opacus\..*")
        warnings.filterwarnings("ignore", message=r"Full backward hook")
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        private, opt, loader = engine.make_private_with_epsilon(
            module=model, optimizer=opt, data_loader=loader, target_epsilon=epsilon, target_delta=sec.delta,
            epochs=sec.epochs, max_grad_norm=sec.max_grad_norm,
            noise_generator=torch.Generator(device=device).manual_seed(seed + 2))
        for _ in range(sec.epochs):
            private.train()
            for xb, yb in loader:
                if len(xb) == 0:  # Poisson sampling can draw an empty batch
                    continue
                opt.zero_grad(set_to_none=True)
                loss_fn(private(xb), yb).backward()
                opt.step()
        spent = float(engine.get_epsilon(sec.delta))
    trained: nn.Module = private._module
    trained.eval()
    logger.info("dp_audit: %s trained at epsilon %.3g (spent %.3g, noise multiplier %.3g)", what, epsilon, spent,
                opt.noise_multiplier)
    return DpTrained(trained, spent, float(opt.noise_multiplier))


def _utility(model: nn.Module, data: Labelled, mask: np.ndarray, device: str) -> float:
    pred = logits(model, data.x_rel[mask], device=device).argmax(1).numpy()
    return balanced_accuracy(data.y.numpy()[mask], pred)


def _figures(data: Labelled, members: set[str], target: nn.Module, fit: Fit, *,
             policy: ReleasePolicy, rng: np.random.Generator, device: str) -> dict[str, dict[str, object]]:
    """Per subgroup (and "all"): TPR at 1 % FPR with its exact interval, AUC and the member count."""
    mem = policy.membership
    scored = score_patients(data, members, target, fit=fit, attack=mem.attack,
                            reference_models=mem.reference_models, seed=policy.release.seed, rng=rng,
                            device=device)
    non = scored.patient_score[~scored.patient_member]
    out: dict[str, dict[str, object]] = {}
    for name, in_group in {"all": np.ones(len(data.patients), dtype=bool), **data.groups}.items():
        m = scored.patient_score[scored.patient_member & in_group]
        if len(m) < MIN_SUBGROUP_MEMBERS:
            out[name] = {"members": len(m), "tpr_1pct": None, "ci": None, "auc": None}
            continue
        am = attack_metrics(m, non, rng=rng, bootstrap=0)
        out[name] = {"members": am.members, "non_members": am.non_members, "tpr_1pct": round(am.tpr_1pct, 4),
                     "ci": list(am.ci["tpr_1pct"]), "auc": round(am.auc, 4)}
    return out


def run(
    release_dir: Path,
    *,
    source_dir: Path,
    cohort: pa.Table,
    policy: ReleasePolicy,
    device: str = "cpu",
) -> CheckResult:
    """The membership attack on a non-DP proxy and on DP-SGD proxies at each ``dp_audit.epsilons``."""
    t0 = time.monotonic()
    sec, mem, seed = policy.dp_audit, policy.membership, policy.release.seed
    data = load_labelled(release_dir, source_dir, cohort=cohort, policy=policy, image_size=mem.image_size,
                         check_id=CHECK_ID)
    if isinstance(data, CheckResult):
        return data
    examined = {**data.examined, "reference_models": mem.reference_models, "epsilons": len(sec.epsilons)}
    rng = np.random.default_rng([seed, 0x3E3B])  # the membership check's generator: the same members
    members = _halves(data.patients, rng)
    is_member_img = np.array([p in members for p in data.pids])
    x, y, n_classes = data.x_rel, data.y, data.n_classes
    images_per_patient = max(int((data.pids == p).sum()) for p in data.patients)

    def fit_plain(in_img: np.ndarray, model_seed: int, what: str) -> nn.Module:
        return train(x[in_img], y[in_img], n_classes=n_classes, epochs=sec.epochs, seed=model_seed,
                     device=device, what=f"dp_audit: no DP {what}").model

    proxy = fit_plain(is_member_img, seed + 101, "proxy")
    runs: dict[str, dict[str, object]] = {}
    base_utility = _utility(proxy, data, ~is_member_img, device)
    runs["none"] = {"epsilon": None, "utility": round(base_utility, 4),
                    "subgroups": _figures(data, members, proxy, fit_plain, policy=policy,
                                          rng=np.random.default_rng([seed, 0xD9]), device=device)}
    # Every run draws the same reference halves (one seed): the runs differ only in how the models are trained.
    for eps in sec.epsilons:
        spent: list[float] = []

        def fit_dp(in_img: np.ndarray, model_seed: int, what: str, eps: float = eps,
                   spent: list[float] = spent) -> nn.Module:
            t = train_dp(x[in_img], y[in_img], n_classes=n_classes, sec=sec, epsilon=eps, seed=model_seed,
                         device=device, what=f"{what} at epsilon {eps:g}")
            spent.append(t.epsilon_spent)
            return t.model

        target = train_dp(x[is_member_img], y[is_member_img], n_classes=n_classes, sec=sec, epsilon=eps,
                          seed=seed + 101, device=device, what=f"proxy at epsilon {eps:g}")
        utility = _utility(target.model, data, ~is_member_img, device)
        runs[f"{eps:g}"] = {
            "epsilon": eps, "epsilon_spent": round(target.epsilon_spent, 4),
            "noise_multiplier": round(target.noise_multiplier, 4), "utility": round(utility, 4),
            "utility_loss": round(base_utility - utility, 4),
            "subgroups": _figures(data, members, target.model, fit_dp, policy=policy,
                                  rng=np.random.default_rng([seed, 0xD9]), device=device),
        }

    base = runs["none"]["subgroups"]
    assert isinstance(base, dict)
    measured = {g: v for g, v in base.items() if g != "all" and v["tpr_1pct"] is not None}
    exposed = max(measured, key=lambda g: (measured[g]["tpr_1pct"], g)) if measured else "all"
    findings: list[Finding] = []
    tpr_max = mem.tpr_at_1pct_fpr_max
    budgets: list[str] = []
    for key, r in runs.items():
        groups = r["subgroups"]
        assert isinstance(groups, dict)
        label = "no DP" if key == "none" else f"epsilon={key}"
        for name, fig in groups.items():
            if fig["tpr_1pct"] is None:
                findings.append(Finding(
                    "tpr_at_1pct_fpr", None, tpr_max, "inconclusive", subgroup=f"{name} ({label})",
                    evidence=f"only {fig['members']} member patients (< {MIN_SUBGROUP_MEMBERS})",
                    needs=f"at least {MIN_SUBGROUP_MEMBERS} member patients in {name}"))
                continue
            low, high = fig["ci"]
            status = interval_verdict(low, high, tpr_max)
            trained = "without DP" if key == "none" else f"with DP-SGD at {label}"
            findings.append(Finding(
                "tpr_at_1pct_fpr", fig["tpr_1pct"], tpr_max, status, subgroup=f"{name} ({label})",
                evidence=f"{mem.attack} on a proxy trained {trained}"
                         f"; {fig['members']} member vs {fig.get('non_members')} non-member patients; exact 95% CI"
                         f" {tuple(fig['ci'])}; AUC {fig['auc']}; utility (balanced accuracy on held-out patients)"
                         f" {r['utility']}",
                needs=f"more patients in {name}" if status == "inconclusive" else ""))
        if key != "none":
            fig = groups[exposed]
            if fig["tpr_1pct"] is not None and fig["ci"][1] <= tpr_max:
                budgets.append(key)
    drop = {k: (None if base[exposed]["tpr_1pct"] is None or r["subgroups"][exposed]["tpr_1pct"] is None  # type: ignore[index]
                else round(float(base[exposed]["tpr_1pct"]) - float(r["subgroups"][exposed]["tpr_1pct"]), 4))  # type: ignore[index]
            for k, r in runs.items() if k != "none"}
    parts = [f"epsilon {k}: TPR {runs[k]['subgroups'][exposed]['tpr_1pct']}, utility loss"  # type: ignore[index]
             f" {runs[k]['utility_loss']}" for k in drop]
    summary = (
        f"DP-SGD audit of the most exposed subgroup {exposed}: TPR at 1% FPR {base[exposed]['tpr_1pct']} without DP"
        f" (utility {base_utility:.3f}); " + "; ".join(parts) + ". "
        + (f"Budgets whose whole 95% interval is at or below {tpr_max:g}: epsilon {', '.join(budgets)}. "
           if budgets else f"No budget shows that subgroup's TPR below {tpr_max:g} (whole 95% interval). ")
        + RECORD_LEVEL + f" Up to {images_per_patient} images per patient in this release."
    )
    examined["images_per_patient_max"] = images_per_patient
    return CheckResult(
        id=CHECK_ID, findings=tuple(findings), examined=examined, summary=summary,
        advice=("Tell recipients which DP budget made the attack fail on this data (figures per epsilon);"
                " the epsilon is per image: divide by the images per patient for a patient-level reading."),
        details={"runs": runs, "most_exposed": exposed, "tpr_drop": drop, "accounting": "record-level",
                 "images_per_patient_max": images_per_patient, "delta": sec.delta,
                 "max_grad_norm": sec.max_grad_norm, "attack": mem.attack, "seed": seed,
                 "seconds": round(time.monotonic() - t0, 2)},
    )


if TYPE_CHECKING:
    from guards.run import Run


def check(current: Run) -> CheckResult:
    """The registry's entry (guards.checks.registry)."""
    return run(current.release_tree, source_dir=current.paths.deid, cohort=current.cohort(), policy=current.policy,
               device=current.device)
