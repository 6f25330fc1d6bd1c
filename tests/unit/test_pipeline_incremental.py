"""Nightly runs are incremental: the second run over a grown source de-identifies everything again (same
pseudonyms) but noises only the new images; the earlier images keep the noise they were released with."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pydicom
import pytest

from guards import pipeline
from guards.keys import PseudonymKey
from guards.manifest import read_table
from guards.policy import ReleasePolicy, policy_from_dict
from guards.samples import generate_corpus

PROTECT = {"image_size": 32, "max_rounds": 1, "steps": 2, "train_steps": 2, "warmup_epochs": 1,
           "warmup_min_steps": 0, "batch_size": 16, "surrogate_width": 8}


def _policy(reuse: bool = True) -> ReleasePolicy:
    return policy_from_dict({"release": {"seed": 5}, "protect": {**PROTECT, "reuse": reuse},
                             "deid": {"clean_pixel_data": False}})


def _nightly(source: Path, out: Path, run_id: str, key: PseudonymKey, policy: ReleasePolicy):  # type: ignore[no-untyped-def]
    run = pipeline.begin(source, out, run_id, policy=policy, key=key)
    pipeline.step_deid(run, key=key)
    return run.paths, pipeline.step_protect(run, key=key)


def _published(tree: Path) -> dict[str, str]:
    """path -> source_path of the published instances."""
    return {r["path"]: r["source_path"] for r in read_table(tree / "manifest.parquet").to_pylist()
            if r["status"] == "published"}


def _grow(source: Path, tmp_path: Path) -> int:
    """New studies arrive in the source (with their labels); returns how many files arrived."""
    extra = generate_corpus(tmp_path / "arrivals", studies=4, seed=99, image_size=64)
    for path in extra.files:
        target = source / "arrived" / path.relative_to(extra.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    with (source / "labels.csv").open("a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        for study, label in extra.labels.items():
            writer.writerow([study, label])
    return len(extra.files)


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    return generate_corpus(tmp_path / "source", studies=8, seed=3, image_size=64).root


def test_second_night_noises_only_the_new_studies(source: Path, tmp_path: Path, key: PseudonymKey) -> None:
    out = tmp_path / "out"
    paths1, first = _nightly(source, out, "night-1", key, _policy())
    assert first["counts"]["reused"] == 0 and first["counts"]["protected"] > 0
    arrived = _grow(source, tmp_path)
    paths2, second = _nightly(source, out, "night-2", key, _policy())
    assert second["counts"]["reused"] == first["counts"]["protected"]
    assert second["counts"]["protected"] == first["counts"]["protected"] + arrived
    old, new = _published(paths1.protect), _published(paths2.protect)
    assert set(old) < set(new)  # the same pseudonymous paths (same key), plus the arrivals
    assert {new[p] for p in set(new) - set(old)} == {s for s in new.values() if s.startswith("arrived/")}
    for rel in old:  # the earlier images keep the noise they were released with
        assert (paths2.protect / rel).read_bytes() == (paths1.protect / rel).read_bytes()
    for rel in set(new) - set(old):
        clean = pydicom.dcmread(paths2.deid / rel).PixelData
        assert pydicom.dcmread(paths2.protect / rel).PixelData != clean
    # the datasheet tells the steward what was noised in this run and what was carried
    paths2.report.mkdir(parents=True)
    (paths2.report / "gate.json").write_text(json.dumps({"passed": True, "waivers": []}), encoding="utf-8")
    night2 = pipeline.Run.load(paths2.out, paths2.run_id)
    pipeline.step_cohort(night2, key=key)  # the datasheet counts the released studies' labels
    sheet = pipeline.datasheet(night2, key=key)
    assert f"Noised in this run: {arrived} files" in sheet
    assert f"carried with the noise of an earlier run: {first['counts']['protected']}" in sheet


def test_reuse_off_protects_everything_again(source: Path, tmp_path: Path, key: PseudonymKey) -> None:
    out = tmp_path / "out"
    _nightly(source, out, "night-1", key, _policy(reuse=False))
    _, second = _nightly(source, out, "night-2", key, _policy(reuse=False))
    assert second["counts"]["reused"] == 0 and not (out / "private" / "protect-cache").exists()


def test_second_night_replays_ocr_decisions_to_the_same_bytes(
    tmp_path: Path, key: PseudonymKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    import guards.deid.pixels as pixels

    corpus = generate_corpus(tmp_path / "source", studies=6, seed=11)
    assert corpus.burned_in, "the corpus must have burned-in text for this test to mean anything"
    policy = policy_from_dict({"release": {"seed": 5}})  # Clean Pixel Data on, OCR of every instance
    out = tmp_path / "out"
    first = pipeline.begin(corpus.root, out, "night-1", policy=policy, key=key).paths
    pipeline.step_deid(pipeline.Run.load(out, "night-1"), key=key)
    records = sorted((out / "private" / "ocr-cache").rglob("*.json"))
    assert len(records) == len(corpus.files)  # one decision per instance read

    def no_ocr(*args: object, **kwargs: object) -> None:
        raise AssertionError("OCR ran on a frame read the night before")

    monkeypatch.setattr(pixels, "ocr_words", no_ocr)
    second = pipeline.begin(corpus.root, out, "night-2", policy=policy, key=key).paths
    pipeline.step_deid(pipeline.Run.load(out, "night-2"), key=key)
    rows1 = read_table(first.deid / "manifest.parquet").to_pylist()
    rows2 = read_table(second.deid / "manifest.parquet").to_pylist()
    def listing(rows: list[dict[str, object]]) -> list[tuple[object, ...]]:
        return [(r["path"], r["status"], r["sha256"]) for r in rows]

    assert listing(rows1) == listing(rows2)
    cleaned = [r for r in rows2 if r["source_path"] in corpus.burned_in]
    assert cleaned and all(r["status"] == "published" for r in cleaned)
