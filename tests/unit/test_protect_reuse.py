"""Incremental protection (guards.protect.reuse): images protected by an earlier run are carried, not noised
again, only when the de-identified bytes, the settings and the cached file are all unchanged."""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from guards.manifest import empty_row, read_table, to_table, write_table
from guards.policy import ReleasePolicy, policy_from_dict
from guards.protect import protect_tree
from guards.protect.codec import decode
from guards.protect.reuse import fingerprint
from guards.testdata import pydicom_test_dir

FIRST = {"a/mr.dcm": "MR_small.dcm", "a/ct.dcm": "CT_small.dcm"}
SECOND = {**FIRST, "b/rgb2.dcm": "SC_rgb_rle_2frame.dcm"}  # a new study arrives


def _policy(**protect: object) -> ReleasePolicy:
    section = {"image_size": 16, "max_rounds": 1, "steps": 2, "train_steps": 2, "warmup_epochs": 1,
               "warmup_min_steps": 0, "batch_size": 8, "surrogate_width": 8, "rho": 0.1, **protect}
    return policy_from_dict({"release": {"seed": 123}, "protect": section})


def _tree(root: Path, files: dict[str, str]) -> Path:
    """A de-identified tree as `guard deid` leaves it: the files and a manifest with their sha256."""
    rows = []
    for rel, name in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pydicom_test_dir() / name, root / rel)
        row = empty_row(rel)
        data = (root / rel).read_bytes()
        row.update(status="published", reason="", size=len(data), sha256=hashlib.sha256(data).hexdigest())
        rows.append(row)
    write_table(to_table(rows), root / "manifest.parquet")
    return root


def _run(src: Path, dst: Path, cache: Path, policy: ReleasePolicy | None = None):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return protect_tree(src, dst, policy=policy or _policy(), labels=None, reuse=cache)


@pytest.fixture()
def first(tmp_path: Path):  # type: ignore[no-untyped-def]
    cache = tmp_path / "cache"
    src = _tree(tmp_path / "deid1", FIRST)
    result = _run(src, tmp_path / "out1", cache)
    return tmp_path, cache, result


def test_first_run_protects_everything_and_fills_the_cache(first) -> None:  # type: ignore[no-untyped-def]
    tmp_path, cache, result = first
    assert result.counts["protected"] == 2 and result.counts["reused"] == 0
    [folder] = list(cache.iterdir())
    assert folder.name == fingerprint(_policy().protect, 123)
    index = {r["path"]: r for r in read_table(folder / "index.parquet").to_pylist()}
    assert set(index) == set(FIRST)
    for rel in FIRST:
        cached = (folder / "files" / rel).read_bytes()
        assert cached == (tmp_path / "out1" / rel).read_bytes()
        assert index[rel]["sha256"] == hashlib.sha256(cached).hexdigest()
        assert index[rel]["parent_sha256"] == hashlib.sha256((tmp_path / "deid1" / rel).read_bytes()).hexdigest()


def test_a_new_study_gets_noise_and_the_earlier_ones_are_carried_byte_for_byte(first) -> None:  # type: ignore[no-untyped-def]
    tmp_path, cache, _ = first
    src = _tree(tmp_path / "deid2", SECOND)
    result = _run(src, tmp_path / "out2", cache)
    assert result.counts["reused"] == 2 and result.counts["protected"] == 3 and result.counts["images"] == 4
    assert result.rounds >= 1  # noise was optimised, for the new study's 2 frames only
    for rel in FIRST:
        assert (tmp_path / "out2" / rel).read_bytes() == (tmp_path / "out1" / rel).read_bytes()
    before, after = decode(pydicom.dcmread(src / "b/rgb2.dcm")), decode(pydicom.dcmread(tmp_path / "out2/b/rgb2.dcm"))
    diff = np.abs(after.stored.astype(np.int64) - before.stored.astype(np.int64))
    assert 1 <= diff.max() <= before.budget(_policy().protect.epsilon)
    rows = {r["path"]: r for r in read_table(tmp_path / "out2" / "manifest.parquet").to_pylist()}
    assert all(rows[rel]["status"] == "published" for rel in SECOND)
    assert rows["a/mr.dcm"]["sha256"] == hashlib.sha256((tmp_path / "out1/a/mr.dcm").read_bytes()).hexdigest()
    first_rows = {r["path"]: r for r in read_table(tmp_path / "out1" / "manifest.parquet").to_pylist()}
    for rel in FIRST:  # the carried rows describe the carried files
        for column in ("TransferSyntaxUID", "PhotometricInterpretation", "size"):
            assert rows[rel][column] == first_rows[rel][column]


def test_nothing_new_means_no_noise_run_at_all(first) -> None:  # type: ignore[no-untyped-def]
    tmp_path, cache, _ = first
    result = _run(tmp_path / "deid1", tmp_path / "again", cache)
    assert result.counts["reused"] == 2 and result.rounds == 0
    assert result.max_abs_delta.keys() == set(FIRST) and all(v >= 1 for v in result.max_abs_delta.values())


def test_changed_source_pixels_are_protected_afresh(first) -> None:  # type: ignore[no-untyped-def]
    tmp_path, cache, _ = first
    src = _tree(tmp_path / "deid3", FIRST)
    ds = pydicom.dcmread(src / "a/ct.dcm")
    pixels = ds.pixel_array.copy()
    pixels[:8, :8] += 100  # the same instance, re-sent with other pixels
    ds.PixelData = pixels.tobytes()
    ds.save_as(src / "a/ct.dcm", enforce_file_format=True)
    _tree_manifest_refresh(src)
    result = _run(src, tmp_path / "out3", cache)
    assert result.counts["reused"] == 1 and result.counts["protected"] == 2
    assert (tmp_path / "out3/a/mr.dcm").read_bytes() == (tmp_path / "out1/a/mr.dcm").read_bytes()
    assert (tmp_path / "out3/a/ct.dcm").read_bytes() != (tmp_path / "out1/a/ct.dcm").read_bytes()


def test_a_changed_header_with_the_same_pixels_is_protected_afresh(first) -> None:  # type: ignore[no-untyped-def]
    tmp_path, cache, _ = first
    src = _tree(tmp_path / "deid7", FIRST)
    ds = pydicom.dcmread(src / "a/mr.dcm")
    ds.StudyDescription = "corrected"  # the cached file would carry the old header
    ds.save_as(src / "a/mr.dcm", enforce_file_format=True)
    _tree_manifest_refresh(src)
    result = _run(src, tmp_path / "out7", cache)
    assert result.counts["reused"] == 1
    assert pydicom.dcmread(tmp_path / "out7/a/mr.dcm").StudyDescription == "corrected"


def test_an_altered_cache_file_is_not_trusted(first) -> None:  # type: ignore[no-untyped-def]
    tmp_path, cache, _ = first
    [folder] = list(cache.iterdir())
    cached = folder / "files" / "a/mr.dcm"
    data = cached.read_bytes()
    cached.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # one pixel byte altered
    result = _run(tmp_path / "deid1", tmp_path / "out4", cache)
    assert result.counts["reused"] == 1 and result.counts["protected"] == 2
    assert (folder / "files" / "a/mr.dcm").read_bytes() == (tmp_path / "out4/a/mr.dcm").read_bytes()


def test_other_settings_protect_afresh_and_replace_the_cache(first) -> None:  # type: ignore[no-untyped-def]
    tmp_path, cache, _ = first
    policy = _policy(epsilon=4 / 255)
    result = _run(tmp_path / "deid1", tmp_path / "out5", cache, policy)
    assert result.counts["reused"] == 0 and result.counts["protected"] == 2
    assert [p.name for p in cache.iterdir()] == [fingerprint(policy.protect, 123)]
    assert fingerprint(policy.protect, 123) != fingerprint(_policy().protect, 123)
    assert fingerprint(_policy(batch_size=64).protect, 123) == fingerprint(_policy().protect, 123)
    assert fingerprint(_policy().protect, 124) != fingerprint(_policy().protect, 123)
    # pixels.encode decides the syntax a compressed input is written in (guards.codec): another cache folder
    assert fingerprint(_policy().protect, 123, encoding="rle") != fingerprint(_policy().protect, 123)


def test_files_that_left_the_source_leave_the_cache(first) -> None:  # type: ignore[no-untyped-def]
    tmp_path, cache, _ = first
    src = _tree(tmp_path / "deid6", {"a/mr.dcm": "MR_small.dcm"})
    _run(src, tmp_path / "out6", cache)
    [folder] = list(cache.iterdir())
    assert sorted(p.relative_to(folder / "files").as_posix() for p in (folder / "files").rglob("*.dcm")) == ["a/mr.dcm"]
    assert [r["path"] for r in read_table(folder / "index.parquet").to_pylist()] == ["a/mr.dcm"]


def _tree_manifest_refresh(root: Path) -> None:
    rows = read_table(root / "manifest.parquet").to_pylist()
    for row in rows:
        data = (root / row["path"]).read_bytes()
        row.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    write_table(to_table(rows), root / "manifest.parquet")
