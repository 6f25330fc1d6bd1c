"""guards.checks.unlearnability: a release whose noise was left out fails; shortcut noise that defeats the
victim passes; the split is patient-level and seeded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_images import corpus_module

from guards.checks import unlearnability
from guards.checks.base import CheckResult
from guards.policy import ReleasePolicy, policy_from_dict

EPOCHS = 10
# Class-wise block noise of this L-infinity size defeats the small CNN on the synthetic corpus (measured: protected
# victim 0.50 vs clean victim 0.80); 8/255 does not on this easy task, which the check then reports as a fail.
TEST_EPSILON = 48 / 255


@pytest.fixture(scope="module")
def policy() -> ReleasePolicy:
    return policy_from_dict(
        {
            "unlearnability": {"image_size": 32, "epochs": EPOCHS},
            "protect": {"epsilon": TEST_EPSILON},
            "release": {"seed": 7},
        }
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("unl")
    return corpus_module().make_corpus(root / "src", patients=100, size=32, seed=1, signal=0.09, minority_share=0.2)


@pytest.fixture(scope="module")
def no_noise_result(source, policy: ReleasePolicy, tmp_path_factory: pytest.TempPathFactory) -> CheckResult:  # type: ignore[no-untyped-def]
    release = corpus_module().protect_release(source, tmp_path_factory.mktemp("rel") / "r", epsilon=0.0, mode="none")
    return unlearnability.run(release, source_dir=source.root, cohort=source.cohort, policy=policy)


@pytest.fixture(scope="module")
def protected_result(source, policy: ReleasePolicy, tmp_path_factory: pytest.TempPathFactory) -> CheckResult:  # type: ignore[no-untyped-def]
    release = corpus_module().protect_release(
        source, tmp_path_factory.mktemp("rel") / "r", epsilon=TEST_EPSILON, mode="classwise", seed=5
    )
    return unlearnability.run(release, source_dir=source.root, cohort=source.cohort, policy=policy)


def _finding(result: CheckResult, metric: str, subgroup: str = "all"):  # type: ignore[no-untyped-def]
    return next(f for f in result.findings if f.metric == metric and f.subgroup == subgroup)


def test_release_without_noise_fails(no_noise_result: CheckResult) -> None:
    r = no_noise_result
    assert r.status == "fail"
    protected = _finding(r, "balanced_accuracy_protected")
    clean = _finding(r, "balanced_accuracy_clean")
    assert protected.status == "fail" and protected.value == clean.value  # same data, same seed, same victim
    assert clean.status == "pass" and float(clean.value) > 0.6  # the task is learnable
    assert "protect" in r.advice
    assert r.examined["held_out_images"] > 0 and r.examined["train_images"] > r.examined["held_out_images"]


def test_effective_noise_passes_overall(protected_result: CheckResult, no_noise_result: CheckResult) -> None:
    protected = _finding(protected_result, "balanced_accuracy_protected")
    assert protected.status == "pass"
    assert abs(float(protected.value) - 0.5) <= 0.1
    assert _finding(protected_result, "balanced_accuracy_clean").status == "pass"
    # no subgroup with enough held-out images fails
    assert not [f for f in protected_result.findings if f.status == "fail"]
    assert protected_result.status in {"pass", "warn"}


def test_per_subgroup_findings_and_curves(protected_result: CheckResult) -> None:
    subgroups = {f.subgroup for f in protected_result.findings if f.metric == "balanced_accuracy_protected"}
    assert {"all", "sex=F", "sex=M", "ethnic_group=majority", "ethnic_group=minority"} <= subgroups
    curves = protected_result.details["curves"]
    assert set(curves) == {"protected", "clean", "random_noise"}
    # one value per epoch; small releases train for more than policy epochs (VICTIM_MIN_STEPS optimiser steps)
    lengths = {len(c) for c in curves.values()}
    assert len(lengths) == 1 and min(lengths) >= EPOCHS
    assert all(0.0 <= v <= 1.0 for c in curves.values() for v in c)
    json.dumps(protected_result.to_dict())  # JSON-able for checks/<id>.json


def test_split_is_patient_level_and_seeded() -> None:
    pids = tuple(f"P{i // 3}" for i in range(60))
    a = unlearnability.split_patients(pids, seed=1, held_out=0.3)
    assert np.array_equal(a, unlearnability.split_patients(pids, seed=1, held_out=0.3))
    assert not np.array_equal(a, unlearnability.split_patients(pids, seed=2, held_out=0.3))
    held = {p for p, h in zip(pids, a, strict=True) if h}
    train = {p for p, h in zip(pids, a, strict=True) if not h}
    assert held and train and not held & train
    assert len(held) == 6  # 30% of 20 patients


def test_unknown_labels_fail_with_reason(source, policy: ReleasePolicy) -> None:  # type: ignore[no-untyped-def]
    rows = source.cohort.to_pylist()
    for row in rows:
        row["label"] = -1
    r = unlearnability.run(source.root, source_dir=source.root, cohort=pa.Table.from_pylist(rows), policy=policy)
    assert r.status == "fail"
    assert r.findings[0].metric == "labelled_data" and "0 label classes" in r.findings[0].evidence


def test_missing_source_is_an_input_error(source, policy: ReleasePolicy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from guards.errors import InputError

    with pytest.raises(InputError, match="does not exist"):
        unlearnability.run(source.root, source_dir=tmp_path / "nope", cohort=source.cohort, policy=policy)


@pytest.mark.parametrize(
    "value, passes",
    [
        (0.55, True),  # near chance
        (0.60, True),  # exactly chance + margin
        (0.61, False),  # the victim learned from the release
        (0.10, True),  # below chance: not a model anyone training on the release can use
    ],
)
def test_pass_band(value: float, passes: bool) -> None:
    assert unlearnability._within(value, 0.5, 0.1) is passes
