"""guards.checks.unlearnability: a release whose noise was left out fails; shortcut noise that defeats the
victim passes where the whole interval is within the band and is inconclusive where it straddles it; a clean
victim that never learns, or too few patients, is inconclusive (fail closed); the split is patient-level and
seeded."""

from __future__ import annotations

import json
import re
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
            # The non-adaptive victim alone: these tests are about the verdict rules; the attackers are below.
            "unlearnability": {"image_size": 32, "epochs": EPOCHS, "victims": ["plain"]},
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
    assert protected.status == "pass"  # the whole 95% interval is within chance + margin ...
    assert abs(float(protected.value) - 0.5) <= 0.1
    assert "95% CI" in protected.evidence and protected.needs == ""
    assert _finding(protected_result, "balanced_accuracy_clean").status == "pass"  # ... and the clean victim learns
    # no subgroup with enough held-out images fails
    assert not [f for f in protected_result.findings if f.status == "fail"]
    assert "warn" not in {f.status for f in protected_result.findings}


def test_interval_straddling_the_band_is_inconclusive_with_a_count(protected_result: CheckResult) -> None:
    # sex=F: protected victim 0.54 with a 95% CI reaching above 0.60 on 30 held-out images (measured)
    f = _finding(protected_result, "balanced_accuracy_protected", "sex=F")
    assert f.status == "inconclusive"
    assert float(f.value) <= 0.6  # the estimate is within the band, the interval is not
    assert re.search(r"about \d+ more patients in subgroup sex=F \(now \d+", f.needs), f.needs
    assert protected_result.status == "inconclusive"  # not pass, not warn
    assert any("sex=F" in line for line in protected_result.conclusive_when)
    assert "inconclusive" in protected_result.summary and "needs" in protected_result.advice


@pytest.fixture(scope="module")
def unlearnable_task(policy: ReleasePolicy, tmp_path_factory: pytest.TempPathFactory) -> CheckResult:
    """Images that carry no label signal (signal 0): even the clean victim stays at chance. 2 minority patients."""
    src = corpus_module().make_corpus(tmp_path_factory.mktemp("unl0") / "src", patients=40, size=16, seed=2,
                                      signal=0.0, minority_share=0.05)
    small = policy_from_dict({"unlearnability": {"image_size": 16, "epochs": 2, "victims": ["plain"]},
                              "release": {"seed": 7}})
    return unlearnability.run(src.root, source_dir=src.root, cohort=src.cohort, policy=small)


def test_clean_victim_that_never_learns_is_inconclusive(unlearnable_task: CheckResult) -> None:
    r = unlearnable_task
    clean = _finding(r, "balanced_accuracy_clean")
    assert clean.status == "inconclusive" and "clean victim that learns" in clean.needs
    protected = _finding(r, "balanced_accuracy_protected")
    assert protected.status == "inconclusive"  # not pass: a victim that learns nothing shows no protection
    assert "clean victim that learns" in protected.needs
    assert r.status == "inconclusive"
    assert not [f for f in r.findings if f.status in {"pass", "warn"} and f.metric == "balanced_accuracy_protected"]


def test_too_few_patients_in_a_subgroup_is_inconclusive_with_a_count(unlearnable_task: CheckResult) -> None:
    f = _finding(unlearnable_task, "balanced_accuracy_protected", "ethnic_group=minority")
    assert f.status == "inconclusive" and f.value is None and "too few to measure" in f.evidence
    m = re.search(r"at least (\d+) more patients in subgroup ethnic_group=minority \(now 2\)", f.needs)
    assert m and int(m.group(1)) > 0, f.needs


def test_needs_round_trip_through_the_check_json(unlearnable_task: CheckResult, tmp_path: Path) -> None:
    unlearnable_task.write(tmp_path / "unlearnability.json")
    back = CheckResult.read(tmp_path / "unlearnability.json")
    assert back.findings == unlearnable_task.findings and back.status == "inconclusive"
    assert json.loads((tmp_path / "unlearnability.json").read_text())["findings"][1]["needs"]


def test_per_subgroup_findings_and_curves(protected_result: CheckResult) -> None:
    subgroups = {f.subgroup for f in protected_result.findings if f.metric == "balanced_accuracy_protected"}
    assert {"all", "sex=F", "sex=M", "ethnic_group=majority", "ethnic_group=minority"} <= subgroups
    curves = protected_result.details["curves"]
    assert set(curves) == {"protected_plain", "clean", "random_noise"}
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


def test_unknown_labels_are_inconclusive_with_reason(source, policy: ReleasePolicy) -> None:  # type: ignore[no-untyped-def]
    rows = source.cohort.to_pylist()
    for row in rows:
        row["label"] = -1
    r = unlearnability.run(source.root, source_dir=source.root, cohort=pa.Table.from_pylist(rows), policy=policy)
    assert r.status == "inconclusive"  # could not measure: never a pass, and the gate blocks it unless waived
    assert r.findings[0].metric == "labelled_data" and "0 label classes" in r.findings[0].evidence
    assert "at least 2 classes" in r.findings[0].needs


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


@pytest.mark.parametrize(
    "low, high, learnable, expected",
    [
        (0.40, 0.58, True, "pass"),  # the whole interval within chance + margin, the clean victim learns
        (0.40, 0.60, True, "pass"),  # upper end exactly at chance + margin
        (0.45, 0.70, True, "inconclusive"),  # straddles the band: not shown unlearnable
        (0.40, 0.58, False, "inconclusive"),  # within the band, but the clean victim never learned
        (0.65, 0.90, True, "fail"),  # the whole interval above the band: the victim learned from the release
        (0.65, 0.90, False, "fail"),  # learned from the release, whatever the clean victim did
        (float("nan"), float("nan"), True, "inconclusive"),
    ],
)
def test_verdict_rule(low: float, high: float, learnable: bool, expected: str) -> None:
    assert unlearnability._verdict(low, high, 0.5, 0.1, learnable=learnable) == expected


# Adaptive attackers (issue 15): the check's figure is the worst case over the attackers of the policy.
ADAPTIVE = policy_from_dict({"unlearnability": {"image_size": 32, "epochs": EPOCHS, "victims": ["plain", "jpeg75"]},
                             "release": {"seed": 7}})


def test_a_protection_that_jpeg_removes_fails_on_its_jpeg_attacker(source, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A class-phased per-pixel checkerboard of 4/255 lives in the highest spatial frequency only: the plain
    victim learns part of the shortcut (measured 0.76); JPEG quality 75 garbles it (test_victims), so the JPEG
    attacker learns the task as from clean data (measured 0.94 vs 0.95). The non-adaptive check would have
    reported the plain victim; the worst case is the JPEG attacker, and it fails."""
    release = corpus_module().protect_release(source, tmp_path / "r", epsilon=4 / 255, mode="classwise_fine")
    r = unlearnability.run(release, source_dir=source.root, cohort=source.cohort, policy=ADAPTIVE)
    worst = _finding(r, "balanced_accuracy_protected")
    jpeg = _finding(r, "balanced_accuracy_protected_jpeg75")
    plain = _finding(r, "balanced_accuracy_protected_plain")
    assert worst.status == jpeg.status == "fail" and worst.value == jpeg.value
    assert "worst case over 2 attacker(s), jpeg75" in worst.evidence
    clean_jpeg = _finding(r, "balanced_accuracy_clean_jpeg75")
    assert float(jpeg.value) >= float(clean_jpeg.value) - 0.05  # JPEG gave the attacker the clean task back
    assert float(jpeg.value) > float(plain.value)
    assert r.status == "fail" and "jpeg75" in r.summary
    assert set(r.details["attackers"]) == {"plain", "jpeg75"}
    assert all({"peak", "last", "epoch_of_peak"} <= set(v) for v in r.details["attackers"].values())


def test_a_protection_that_survives_jpeg_passes_against_it(source, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Class-wise smooth blocks (48/255) are low-frequency: JPEG quality 75 keeps them, and neither attacker
    learns the task (measured 0.51 and 0.49, chance 0.50) while JPEG on clean images keeps it learnable (0.95)."""
    release = corpus_module().protect_release(source, tmp_path / "r", epsilon=TEST_EPSILON, mode="classwise", seed=5)
    r = unlearnability.run(release, source_dir=source.root, cohort=source.cohort, policy=ADAPTIVE)
    for metric in ("balanced_accuracy_protected", "balanced_accuracy_protected_plain",
                   "balanced_accuracy_protected_jpeg75"):
        assert _finding(r, metric).status == "pass", _finding(r, metric)
    assert float(_finding(r, "balanced_accuracy_clean_jpeg75").value) > 0.8
    assert "the noise costs this attacker" in _finding(r, "balanced_accuracy_protected_jpeg75").evidence
    assert not [f for f in r.findings if f.status == "fail"]
