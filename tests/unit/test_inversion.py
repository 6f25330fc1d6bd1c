"""guards.checks.inversion (issue 18): a label carried by one patient is flagged naming the cell; balanced cells of
30+ patients are not; cells with too few patients are inconclusive with what would make them testable; the
statistics (SSIM, AUC, permutation p-value) on known inputs; both proxies' figures are findings (gate.json)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pydicom
import pytest
import torch
from test_images import corpus_module

from guards.checks import inversion, registry
from guards.checks.base import CheckResult, Finding
from guards.gate import decide
from guards.policy import GateSection, ReleasePolicy, policy_from_dict
from guards.report import render_html

SIZE = 16


def _policy(**inv: object) -> ReleasePolicy:
    return policy_from_dict({"inversion": {"image_size": SIZE, "epochs": 8, "steps": 100, **inv},
                             "cohort": {"subgroups": ["sex", "ethnic_group"]}, "release": {"seed": 20260101}})


def _f(result: CheckResult, metric: str, subgroup: str):  # type: ignore[no-untyped-def]
    return next(f for f in result.findings if f.metric == metric and f.subgroup == subgroup)


# --- statistics on known inputs ---------------------------------------------------------------------------------

def test_ssim_of_an_image_to_itself_is_one_and_to_noise_is_low() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, SIZE, SIZE, generator=gen)
    s = inversion.ssim_to(images, images)
    assert s.shape == (3, 3)
    assert np.allclose(np.diag(s), 1.0, atol=1e-5)
    assert (s[~np.eye(3, dtype=bool)] < 0.3).all()  # independent noise images are not similar


def test_leakage_auc_and_permutation_p() -> None:
    rng = np.random.default_rng(0)
    separated = inversion.leakage(np.arange(20, 40, dtype=float), np.arange(0, 20, dtype=float), rng=rng,
                                  permutations=999)
    assert separated.auc == 1.0 and separated.p == pytest.approx(1 / 1000)
    same = inversion.leakage(rng.normal(size=30), rng.normal(size=30), rng=rng, permutations=999)
    assert 0.3 < same.auc < 0.7 and same.p > 0.05
    assert (same.train, same.held_out) == (30, 30)
    a = inversion.leakage(np.ones(5), np.zeros(5), rng=np.random.default_rng(3), permutations=200)
    b = inversion.leakage(np.ones(5), np.zeros(5), rng=np.random.default_rng(3), permutations=200)
    assert a == b  # seeded


@pytest.mark.parametrize(
    ("train_shift", "expected"),
    [
        (1.0, "fail"),  # AUC 0.80, p 0.0005, lower bound 0.69 at the Bonferroni level: shown above auc_max
        (0.5, "pass"),  # AUC 0.67, p 0.001: significant, but its lower bound (0.54) is not above auc_max
        (0.0, "pass"),  # no separation
    ],
)
def test_cell_status_needs_significance_and_an_auc_shown_above_the_threshold(train_shift: float,
                                                                              expected: str) -> None:
    rng = np.random.default_rng(1)
    held = rng.normal(size=60)
    train = rng.normal(size=60) + train_shift
    alpha_cell = 0.05 / 17
    stat = inversion.leakage(train, held, rng=np.random.default_rng(2), permutations=2000)
    assert inversion.cell_status(stat, alpha_cell=alpha_cell, auc_max=0.65) == expected
    if train_shift == 0.5:  # the weak memorisation every fitted proxy shows: significant, not flagged
        assert stat.p <= alpha_cell and stat.auc > 0.65 and stat.lower(alpha_cell) < 0.65
    se = inversion.delong_se(np.arange(10.0), np.arange(10.0) + 0.5)
    assert 0.05 < se < 0.2  # DeLong's standard error of an AUC near 0.5 with 10 + 10 scores


def test_reconstruction_is_seeded_and_in_range() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIZE * SIZE, 2))
    a = inversion.reconstruct(model, n_classes=2, restarts=3, steps=5, step_size=0.05, tv_weight=0.5, size=SIZE,
                              seed=7)
    b = inversion.reconstruct(model, n_classes=2, restarts=3, steps=5, step_size=0.05, tv_weight=0.5, size=SIZE,
                              seed=7)
    assert a.shape == (2, 3, 1, SIZE, SIZE) and torch.equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert all(p.requires_grad for p in model.parameters())  # the model is left as it was


def test_registered_and_advisory_by_default() -> None:
    check = registry.get("inversion")
    assert check.needs == frozenset({"gpu", "images"})
    assert "inversion" in ReleasePolicy().gate.advisory
    failing = CheckResult("inversion", (Finding("patients_carrying_label", 1, 2, "fail", subgroup="label=2"),),
                          {"patients": 3})
    d = decide([failing], policy=ReleasePolicy(gate=GateSection(blocking=(), advisory=("inversion",))))
    assert d.passed and any("'inversion'" in a and "label=2" in a for a in d.advisories)


# --- the check end to end ---------------------------------------------------------------------------------------

def _with_rare_label(root: Path, *, patients: int, copies: int):  # type: ignore[no-untyped-def]
    """A corpus with labels 0/1, plus one patient carrying label 2 alone, their one image duplicated ``copies``
    times."""
    mod = corpus_module()
    c = mod.make_corpus(root, patients=patients, size=SIZE, seed=1, images_per_study=1, minority_share=0.5)
    rng = np.random.default_rng(5)
    img = 0.35 + 0.5 * mod._texture(rng, SIZE, scale=2)
    img[0, 0], img[-1, -1] = 0.0, 1.0
    study, series = mod._uid("rare", "study"), mod._uid("rare", "series")
    for k in range(copies):
        mod.write_instance(root / "RARE" / f"{k:02d}.dcm", img, patient="RARE", study=study,
                           sop=mod._uid("rare", "sop", k), series=series)
    rows = c.cohort.to_pylist()
    rows.append({**rows[0], "StudyInstanceUID": study, "PatientID": "RARE", "label": 2, "sex": "M",
                 "ethnic_group": "minority", "n_instances": copies})
    return pa.Table.from_pylist(rows)


def test_a_label_carried_by_one_duplicated_patient_is_flagged_naming_the_cell(tmp_path: Path) -> None:
    cohort = _with_rare_label(tmp_path / "rare", patients=60, copies=20)
    r = inversion.run(tmp_path / "rare", source_dir=tmp_path / "rare", cohort=cohort, policy=_policy())
    assert r.status == "fail"
    f = _f(r, "patients_carrying_label", "label=2")
    assert f.status == "fail" and f.value == 1
    assert "single patient (20 images" in f.evidence and "label=2, sex=M, ethnic_group=minority" in f.evidence
    assert [x.subgroup for x in r.findings if x.status == "fail"] == ["label=2"]  # nothing else is flagged
    assert "label=2" in r.summary and r.advice
    assert r.details["single_patient_labels"] == [2]
    # every cell of that label is covered by the rule, none is judged on a comparison that cannot be made
    assert not [x for x in r.findings if x.subgroup.startswith("label=2") and x.metric.startswith("reconstruction")]
    assert r.examined["images"] == 80 and r.examined["patients"] == 61
    assert r.examined["cells_single_patient_label"] == 3  # label=2, label=2 + sex=M, label=2 + ethnic_group=minority
    json.dumps(r.to_dict())


@pytest.fixture(scope="module")
def balanced(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """130 patients, one image each, half in the minority: every label x sex / ethnic group cell has 30+ patients;
    the release carries class-wise noise (so two proxies are trained)."""
    root = tmp_path_factory.mktemp("inv")
    mod = corpus_module()
    src = mod.make_corpus(root / "src", patients=130, size=SIZE, seed=2, images_per_study=1, minority_share=0.5)
    mod.protect_release(src, root / "rel", epsilon=8 / 255, mode="classwise", seed=2)
    return root, src


def test_balanced_cells_of_30_patients_are_not_flagged(balanced) -> None:  # type: ignore[no-untyped-def]
    root, src = balanced
    r = inversion.run(root / "rel", source_dir=root / "src", cohort=src.cohort, policy=_policy())
    assert [f for f in r.findings if f.status == "fail"] == []
    assert r.status == "pass"
    # all + 2 labels x (label, sex=F/M, ethnic_group=majority/minority): every cell has 30+ patients, all tested
    assert r.examined["cells"] == r.examined["cells_tested"] == 11
    assert r.examined["cells_too_few_patients"] == 0 and r.examined["proxies"] == 2
    assert r.examined["patients"] == 130 and r.examined["images"] == 130
    assert r.examined["training_patients"] + r.examined["held_out_patients"] == 130
    smallest = min(c["training"] + c["held_out"] for c in r.details["proxies"]["protected"]["cells"].values())
    assert smallest >= 30
    # both proxies' figures are findings (they reach gate.json) and details, with ReRo at each stated bound
    for metric in ("reconstruction_auc", "reconstruction_auc_clean"):
        assert len([f for f in r.findings if f.metric == metric]) == 11
    for suffix in ("", "_clean"):
        for b in ReleasePolicy().inversion.ssim_bounds:
            assert 0.0 <= float(_f(r, f"rero_at_ssim_{b:g}{suffix}", "all").value) <= 1.0
        assert float(_f(r, f"proxy_balanced_accuracy{suffix}", "all").value) > 0.7  # the proxies learned
    assert set(r.details["proxies"]) == {"protected", "clean"}
    assert r.details["bonferroni"]["threshold"] == pytest.approx(0.05 / 11)
    assert r.details["permutations"] >= 2 / r.details["bonferroni"]["threshold"]
    assert len(r.details["distributions"]) == 4 and len(r.details["curves"]) == 2
    decision = decide([r], policy=ReleasePolicy())
    checks = [c for c in decision.to_json()["checks"] if c["id"] == "inversion"]
    assert {c["metric"] for c in checks} >= {"reconstruction_auc", "reconstruction_auc_clean"}
    # the report: per label, the reconstructions closest to a training image beside that image as released
    thumbs = r.details["thumbnails"]
    assert set(thumbs) == {"label=0", "label=1"}
    for grid in thumbs.values():
        assert len(grid["reconstructions"]) == len(grid["nearest released training images"]) == 4
        assert len(grid["reconstructions"][0]) == SIZE and len(grid["reconstructions"][0][0]) == SIZE
        assert grid["ssim"] == sorted(grid["ssim"], reverse=True)
    page = render_html(decision, [r], policy=ReleasePolicy(), context={})
    assert "inversion: reconstructions and the nearest released training image" in page
    assert page.count('width="3" height="3"') == 2 * 2 * 4 * SIZE * SIZE  # 2 labels x 2 rows x 4 thumbnails
    assert "distribution of best SSIM, protected proxy, training images" in page
    assert '"reconstructions"' not in page  # drawn, not dumped into the details JSON


def test_too_few_patients_is_inconclusive_with_what_would_make_it_testable(tmp_path: Path) -> None:
    mod = corpus_module()
    c = mod.make_corpus(tmp_path / "s", patients=8, size=SIZE, seed=4, images_per_study=1, minority_share=0.5)
    r = inversion.run(c.root, source_dir=c.root, cohort=c.cohort, policy=_policy())
    assert r.status == "inconclusive"
    f = _f(r, "reconstruction_auc", "label=0")  # 4 patients: 2 training, 2 held-out
    assert f.status == "inconclusive" and f.value is None and "too few" in f.evidence
    # min_patients_per_cell 10, at least 5 a side: 6 more patients (3 more a side)
    m = re.search(r"about (\d+) more patients in cell label=0 \(now 4\)", f.needs)
    assert m and int(m.group(1)) == 6, f.needs
    assert _f(r, "reconstruction_auc", "all").status == "inconclusive"  # 8 patients: nothing is testable
    assert r.examined["cells_tested"] == 0 and r.examined["cells_too_few_patients"] == r.examined["cells"]
    assert r.examined["patients"] == 8
    assert any("label=0" in n for n in r.conclusive_when)


def test_a_patient_with_studies_of_two_labels_counts_once_overall(tmp_path: Path) -> None:
    """Each label cell holds the patients with that label; the 'all' cell compares patients, each once."""
    mod = corpus_module()
    c = mod.make_corpus(tmp_path / "s", patients=40, size=SIZE, seed=6, images_per_study=1, minority_share=0.5)
    rows = c.cohort.to_pylist()
    rng = np.random.default_rng(6)
    for row in rows[:10]:  # 10 patients get a second study with the other label
        study = mod._uid("second", row["PatientID"])
        img = mod._image(rng, SIZE, 1 - row["label"], atypical=False, signal=0.15)
        mod.write_instance(c.root / row["PatientID"] / "second.dcm", img, patient=row["PatientID"], study=study,
                           sop=mod._uid("second-sop", row["PatientID"]), series=mod._uid("second-series", study))
        rows.append({**row, "StudyInstanceUID": study, "label": 1 - row["label"]})
    r = inversion.run(c.root, source_dir=c.root, cohort=pa.Table.from_pylist(rows), policy=_policy())
    cells = r.details["proxies"]["protected"]["cells"]
    assert r.examined["patients"] == 40 and r.examined["images"] == 50
    assert cells["all"]["training"] + cells["all"]["held_out"] == 40
    assert sum(cells[f"label={v}"]["training"] + cells[f"label={v}"]["held_out"] for v in (0, 1)) == 50
    assert cells["all"]["training"] == r.examined["training_patients"]


def test_a_proxy_that_does_not_fit_the_release_is_inconclusive(tmp_path: Path) -> None:
    """Every image the same: no proxy can fit the labels, so its reconstructions cannot show the release safe."""
    mod = corpus_module()
    c = mod.make_corpus(tmp_path / "s", patients=40, size=SIZE, seed=4, images_per_study=1, minority_share=0.5)
    flat = np.full((SIZE, SIZE), 0.5)
    flat[0, 0], flat[-1, -1] = 0.0, 1.0
    for path in c.files:
        ds = pydicom.dcmread(path)
        mod.write_instance(path, flat, patient=str(ds.PatientID), study=str(ds.StudyInstanceUID),
                           sop=str(ds.SOPInstanceUID), series=str(ds.SeriesInstanceUID))
    r = inversion.run(c.root, source_dir=c.root, cohort=c.cohort, policy=_policy())
    f = _f(r, "proxy_fit", "all")
    assert f.status == "inconclusive" and float(f.value) < 0.6 and "inversion.epochs" in f.needs
    assert r.status == "inconclusive"


def test_a_single_class_cannot_be_measured(tmp_path: Path) -> None:
    c = corpus_module().make_corpus(tmp_path / "s", patients=6, size=SIZE, seed=4, images_per_study=1)
    rows = [{**row, "label": 0} for row in c.cohort.to_pylist()]
    r = inversion.run(c.root, source_dir=c.root, cohort=pa.Table.from_pylist(rows), policy=_policy())
    assert r.status == "inconclusive"
    assert "1 label classes" in _f(r, "labelled_data", "all").evidence
