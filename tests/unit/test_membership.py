"""guards.checks.membership: metrics, the over-representation test, and detection of a minority subgroup whose
duplicated, atypical studies a proxy memorises (Knolle et al., Nature 2026), with LiRA and RMIA; fail closed:
only a whole 95% interval at or below the threshold passes, a straddling interval or too few patients or
references is inconclusive with what would make it conclusive."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pytest
from test_images import corpus_module

from guards.checks import membership
from guards.checks.base import CheckResult
from guards.policy import ReleasePolicy, policy_from_dict


def _policy(attack: str, **extra: object) -> ReleasePolicy:
    return policy_from_dict({"membership": {"image_size": 32, "attack": attack, "bootstrap": 100, **extra},
                             "release": {"seed": 20260101}})


@pytest.fixture(scope="module")
def duplicated(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """100 patients; 20 minority patients with atypical images, each study duplicated 4 times."""
    root = tmp_path_factory.mktemp("mem") / "dup"
    return corpus_module().make_corpus(root, patients=100, size=32, seed=1, signal=0.09, minority_share=0.2,
                                       minority_duplicated=True)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """200 patients with one typical image each: nothing to memorise beyond the task."""
    root = tmp_path_factory.mktemp("mem") / "clean"
    return corpus_module().make_corpus(root, patients=200, size=32, seed=1, signal=0.2, minority_share=0.2,
                                       images_per_study=1)


@pytest.fixture(scope="module")
def rmia_duplicated(duplicated) -> CheckResult:  # type: ignore[no-untyped-def]
    return membership.run(duplicated.root, source_dir=duplicated.root, cohort=duplicated.cohort,
                          policy=_policy("rmia"))


def _f(result: CheckResult, metric: str, subgroup: str):  # type: ignore[no-untyped-def]
    return next(f for f in result.findings if f.metric == metric and f.subgroup == subgroup)


# --- metrics on known scores ------------------------------------------------------------------------------------

def test_metrics_on_known_scores() -> None:
    members, non = np.arange(100, 200, dtype=float), np.arange(0, 100, dtype=float)
    assert membership.auc(members, non) == 1.0
    assert membership.tpr_at_fpr(members, non, 0.01) == 1.0
    same = np.zeros(50)
    assert membership.auc(same, same) == 0.5
    assert membership.tpr_at_fpr(same, same, 0.01) == 0.0
    # 1% of 200 non-members lets 2 through: the threshold is the third-highest non-member score
    non2 = np.arange(200, dtype=float)
    assert membership.tpr_at_fpr(np.array([196.5, 197.5, 198.5]), non2, 0.01) == pytest.approx(2 / 3)
    roc = membership.roc_curve(members, non)
    assert roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0 and len(roc["fpr"]) == len(roc["tpr"])


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(0)
    m, n = rng.normal(0.5, 1, 80), rng.normal(0, 1, 80)
    a = membership.attack_metrics(m, n, rng=np.random.default_rng(3), bootstrap=200)
    b = membership.attack_metrics(m, n, rng=np.random.default_rng(3), bootstrap=200)
    assert a == b
    assert a.ci["auc"][0] <= a.auc <= a.ci["auc"][1]


@pytest.mark.parametrize(
    "top_share, expect_flag",
    [
        (1.0, True),  # the whole top-k is from a 10% subgroup
        (0.1, False),  # the top-k mirrors the subgroup's share
    ],
)
def test_over_representation(top_share: float, expect_flag: bool) -> None:
    n, k = 200, 10
    group = np.zeros(n, dtype=bool)
    group[:20] = True
    scores = np.linspace(0, 1, n)[np.random.default_rng(1).permutation(n)]
    top_rows = np.argsort(-scores)[:k]
    in_top = int(round(top_share * k))
    group = np.zeros(n, dtype=bool)
    group[top_rows[:in_top]] = True
    rest = np.setdiff1d(np.arange(n), top_rows)
    group[rest[: 20 - in_top]] = True
    rows = membership.over_representation(scores, {"g=minority": group, "g=majority": ~group}, k=k, alpha=0.05)
    minority = next(r for r in rows if r["subgroup"] == "g=minority")
    assert minority["observed"] == in_top and minority["threshold"] == 0.025  # Bonferroni over 2 subgroups
    assert (float(minority["p"]) < float(minority["threshold"])) is expect_flag


# --- the check end to end ---------------------------------------------------------------------------------------

def test_rmia_flags_the_duplicated_minority(rmia_duplicated: CheckResult) -> None:
    r = rmia_duplicated
    assert r.status == "fail"
    tpr_minority = _f(r, "tpr_at_1pct_fpr", "ethnic_group=minority")
    tpr_majority = _f(r, "tpr_at_1pct_fpr", "ethnic_group=majority")
    assert tpr_minority.status == "fail" and float(tpr_minority.value) > 0.5
    assert float(tpr_minority.value) > 3 * float(tpr_majority.value)
    over = _f(r, "top_vulnerable_over_representation", "ethnic_group=minority")
    assert over.status == "fail" and "minimum top-k" in over.evidence
    assert "ethnic_group=minority" in r.summary


def test_result_shape_and_counts(rmia_duplicated: CheckResult) -> None:
    r = rmia_duplicated
    assert r.examined["patients"] == 100 and r.examined["images"] == 80 * 2 + 20 * 2 * 4
    assert r.examined["member_patients"] + r.examined["non_member_patients"] == 100
    assert {"all", "ethnic_group=minority", "sex=F"} <= set(r.details["roc"])
    roc = r.details["roc"]["ethnic_group=minority"]
    assert len(roc["fpr"]) == len(roc["tpr"]) and all(0 <= v <= 1 for v in roc["fpr"] + roc["tpr"])
    assert set(r.details["curves"]) == {"proxy_members", "proxy_non_members"}
    assert len(r.details["curves"]["proxy_members"]) == ReleasePolicy().membership.epochs
    lo, hi = r.details["metrics"]["all"]["ci"]["auc"]
    assert lo <= r.details["metrics"]["all"]["auc"] <= hi
    json.dumps(r.to_dict())


def test_lira_flags_the_duplicated_minority(duplicated) -> None:  # type: ignore[no-untyped-def]
    r = membership.run(duplicated.root, source_dir=duplicated.root, cohort=duplicated.cohort,
                       policy=_policy("lira"))
    assert r.details["attack"] == "lira"
    assert _f(r, "tpr_at_1pct_fpr", "ethnic_group=minority").status == "fail"
    assert _f(r, "top_vulnerable_over_representation", "ethnic_group=minority").status == "fail"


@pytest.fixture(scope="module")
def clean_result(clean) -> CheckResult:  # type: ignore[no-untyped-def]
    return membership.run(clean.root, source_dir=clean.root, cohort=clean.cohort, policy=_policy("rmia"))


def test_clean_corpus_has_no_failing_finding(clean_result: CheckResult) -> None:
    r = clean_result
    assert [f for f in r.findings if f.status == "fail"] == []
    assert float(_f(r, "auc", "all").value) <= 0.65
    assert r.examined["patients"] == 200 and r.examined["top_k"] == 10
    assert "warn" not in {f.status for f in r.findings}  # statistical findings pass, fail or are inconclusive


def test_whole_interval_below_the_threshold_passes(clean_result: CheckResult) -> None:
    # overall, 100 members: TPR 0.01 with exact 95% CI (0.0003, 0.0545), AUC CI (0.45, 0.62) (measured)
    for metric, threshold in (("tpr_at_1pct_fpr", 0.10), ("auc", 0.65)):
        f = _f(clean_result, metric, "all")
        assert f.status == "pass" and f.needs == ""
        ci = clean_result.details["metrics"]["all"]["ci"]["tpr_1pct" if metric.startswith("tpr") else "auc"]
        assert ci[1] <= threshold


def test_interval_straddling_the_threshold_is_inconclusive_with_a_count(clean_result: CheckResult) -> None:
    # ethnic_group=minority: 18 members, no member detected, but 0/18 has an exact upper bound of 0.185 > 0.10
    f = _f(clean_result, "tpr_at_1pct_fpr", "ethnic_group=minority")
    lo, hi = clean_result.details["metrics"]["ethnic_group=minority"]["ci"]["tpr_1pct"]
    assert f.status == "inconclusive" and lo <= 0.10 < hi
    m = re.search(r"about (\d+) more patients in subgroup ethnic_group=minority \(now 40", f.needs)
    assert m and int(m.group(1)) > 0, f.needs
    assert clean_result.status == "inconclusive"
    assert "ethnic_group=minority" in clean_result.summary and "inconclusive" in clean_result.summary


def test_images_without_an_out_reference_are_inconclusive(clean_result: CheckResult) -> None:
    # 4 reference models on random halves: about 200 / 2^4 = 12.5 patients are in every half (measured: 13)
    f = _f(clean_result, "images_without_out_reference", "all")
    assert f.status == "inconclusive" and int(f.value) > 0
    assert "membership.reference_models of at least 9 (now 4)" in f.needs


def test_members_for_tpr_is_the_exact_clopper_pearson_count() -> None:
    # 0 of n: the exact upper bound is 1 - 0.025^(1/n), at or below 0.10 from n = 36
    assert membership.members_for_tpr(0.0, 0.10) == 36
    assert membership.members_for_tpr(0.10, 0.10) is None  # an estimate on the threshold is never shown below it
    assert membership.reference_models_for(200) == 9 and membership.reference_models_for(100) == 8


def test_too_few_members_in_a_subgroup_is_inconclusive_with_a_count(tmp_path) -> None:  # type: ignore[no-untyped-def]
    small = corpus_module().make_corpus(tmp_path / "s", patients=24, size=16, seed=4, images_per_study=1)
    policy = policy_from_dict({"membership": {"image_size": 16, "epochs": 3, "reference_models": 2,
                                              "bootstrap": 20}})
    r = membership.run(small.root, source_dir=small.root, cohort=small.cohort, policy=policy)
    f = _f(r, "tpr_at_1pct_fpr", "ethnic_group=minority")  # 2 minority patients, at most 2 members
    assert f.status == "inconclusive" and f.value is None and "too few to measure" in f.evidence
    m = re.search(r"at least (\d+) more patients in subgroup ethnic_group=minority \(now 2\)", f.needs)
    assert m and int(m.group(1)) == 2 * 36 - 2, f.needs
    assert r.status in {"inconclusive", "fail"}


def test_same_seed_same_scores(tmp_path) -> None:  # type: ignore[no-untyped-def]
    small = corpus_module().make_corpus(tmp_path / "s", patients=24, size=16, seed=4, images_per_study=1)
    policy = policy_from_dict({"membership": {"image_size": 16, "epochs": 3, "reference_models": 2,
                                              "bootstrap": 20}})
    a = membership.run(small.root, source_dir=small.root, cohort=small.cohort, policy=policy)
    b = membership.run(small.root, source_dir=small.root, cohort=small.cohort, policy=policy)
    assert a.details["metrics"] == b.details["metrics"] and a.findings == b.findings


def test_too_few_labelled_patients_is_inconclusive(duplicated) -> None:  # type: ignore[no-untyped-def]
    rows = duplicated.cohort.to_pylist()
    for row in rows[4:]:
        row["label"] = -1
    r = membership.run(duplicated.root, source_dir=duplicated.root, cohort=pa.Table.from_pylist(rows),
                       policy=_policy("rmia"))
    assert r.status == "inconclusive" and r.findings[0].metric == "labelled_data"  # could not measure: not a pass
    assert "at least 8 patients (now 2 classes, 4 patients)" in r.findings[0].needs


@pytest.mark.parametrize(
    "ci_low, ci_high, expected",
    [
        (0.00, 0.05, "pass"),  # the whole interval at or below the threshold
        (0.00, 0.10, "pass"),  # upper end exactly at the threshold
        (0.00, 0.40, "inconclusive"),  # straddles the threshold (small cohort): not shown safe
        (0.30, 0.90, "fail"),  # the whole interval is above the threshold
        (float("nan"), float("nan"), "inconclusive"),  # no interval (bootstrap = 0)
    ],
)
def test_verdict_rule(ci_low: float, ci_high: float, expected: str) -> None:
    assert membership._status(ci_low, ci_high, 0.10) == expected
