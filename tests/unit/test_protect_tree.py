"""guards.protect.protect_tree on a small de-identified tree built from pydicom's test files."""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from guards.errors import InputError
from guards.manifest import empty_row, read_table, to_table, write_table
from guards.policy import ReleasePolicy, policy_from_dict
from guards.protect import protect_tree
from guards.protect.codec import decode, to_unit
from guards.protect.mask import foreground, mask_size
from guards.testdata import pydicom_test_dir

FILES = {
    "a/mr.dcm": "MR_small.dcm",  # MONOCHROME2, 16-bit signed
    "a/ct.dcm": "CT_small.dcm",  # MONOCHROME2 with rescale
    "b/rgb2.dcm": "SC_rgb_rle_2frame.dcm",  # RGB, RLE compressed, 2 frames
    "b/palette.dcm": "examples_palette.dcm",  # PALETTE COLOR: cannot be protected -> quarantined
}


def _policy_protect() -> dict[str, object]:
    return {"image_size": 16, "max_rounds": 1, "steps": 2, "train_steps": 2, "warmup_epochs": 1,
            "warmup_min_steps": 0, "batch_size": 8, "surrogate_width": 8, "rho": 0.1}


def _policy() -> ReleasePolicy:
    return policy_from_dict({"release": {"seed": 123}, "protect": _policy_protect()})


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deid")
    rows = []
    for rel, name in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pydicom_test_dir() / name, root / rel)
        row = empty_row(rel)
        row.update(status="published", reason="", size=(root / rel).stat().st_size)
        rows.append(row)
    # An instance without pixel data (a header-only copy) and a row that was excluded upstream.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(root / "a/mr.dcm")
    del ds.PixelData
    ds.save_as(root / "a/nopix.dcm", enforce_file_format=True)
    row = empty_row("a/nopix.dcm")
    row.update(status="published", reason="")
    rows.append(row)
    excluded = empty_row("README.txt")
    excluded.update(status="excluded", reason="sidecar")
    rows.append(excluded)
    write_table(to_table(rows), root / "manifest.parquet")
    return root


@pytest.fixture(scope="module")
def protected(src: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    dst = tmp_path_factory.mktemp("protect")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mr_study = str(pydicom.dcmread(src / "a/mr.dcm", stop_before_pixels=True).StudyInstanceUID)
    # One study labelled, the others fall back to pseudo-labels.
    return dst, protect_tree(src, dst, policy=_policy(), labels={mr_study: 1}, device="cpu")


def test_every_row_is_accounted_for(src: Path, protected) -> None:  # type: ignore[no-untyped-def]
    dst, result = protected
    table = read_table(dst / "manifest.parquet").to_pylist()
    by_path = {r["path"]: r for r in table}
    assert set(by_path) == {*FILES, "a/nopix.dcm", "README.txt"}
    assert by_path["README.txt"]["status"] == "excluded" and by_path["README.txt"]["reason"] == "sidecar"
    assert by_path["b/palette.dcm"]["status"] == "quarantined"
    assert "PALETTE COLOR" in by_path["b/palette.dcm"]["reason"]
    assert (dst / "quarantine" / "b/palette.dcm").is_file() and not (dst / "b/palette.dcm").exists()
    assert result.counts == {"published_in": 5, "protected": 3, "not_applicable": 1, "quarantined": 1,
                             "carried": 1, "images": 4, "reused": 0}
    assert "a/nopix.dcm" in result.not_applicable
    for rel in ("a/mr.dcm", "a/ct.dcm", "b/rgb2.dcm", "a/nopix.dcm"):
        data = (dst / rel).read_bytes()
        assert by_path[rel]["sha256"] == hashlib.sha256(data).hexdigest() and by_path[rel]["size"] == len(data)
    assert result.seed == 123 and result.manifest_path == dst / "manifest.parquet"


def test_pixels_within_budget_sparse_and_header_records_it(src: Path, protected) -> None:  # type: ignore[no-untyped-def]
    dst, result = protected
    for rel in ("a/mr.dcm", "a/ct.dcm", "b/rgb2.dcm"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            before_ds = pydicom.dcmread(src / rel)
        before = decode(before_ds)
        after_ds = pydicom.dcmread(dst / rel)
        after = decode(after_ds)
        diff = np.abs(after.stored.astype(np.int64) - before.stored.astype(np.int64))
        assert diff.max() <= before.budget(_policy().protect.epsilon)
        assert diff.max() == result.max_abs_delta[rel] and result.max_abs_delta[rel] >= 1
        unit = to_unit(before)
        for f in range(before.frames):
            changed = int((diff[f].max(-1) > 0).sum())
            assert changed <= mask_size(0.1, int(foreground(torch.from_numpy(unit[f])).sum()))
        # RLE input is written again losslessly as JPEG-LS (pixels.encode, guards.codec); native input natively
        expected = pydicom.uid.JPEGLSLossless if rel == "b/rgb2.dcm" else pydicom.uid.ExplicitVRLittleEndian
        assert pydicom.dcmread(dst / rel, stop_before_pixels=True).file_meta.TransferSyntaxUID == expected
        item = after_ds.ContributingEquipmentSequence[-1]
        assert item.Manufacturer == "Release Guard" and "rho=0.1" in item.ContributionDescription
        assert "SALM" in str(after_ds.DeidentificationMethod)
        assert after_ds.SOPInstanceUID == before_ds.SOPInstanceUID


def test_same_seed_same_bytes(src: Path, protected, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dst, _ = protected
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mr_study = str(pydicom.dcmread(src / "a/mr.dcm", stop_before_pixels=True).StudyInstanceUID)
    protect_tree(src, tmp_path / "again", policy=_policy(), labels={mr_study: 1})
    for rel in ("a/mr.dcm", "a/ct.dcm", "b/rgb2.dcm"):
        assert (tmp_path / "again" / rel).read_bytes() == (dst / rel).read_bytes()


def test_missing_manifest_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="manifest.parquet"):
        protect_tree(tmp_path, tmp_path / "out", policy=_policy(), labels=None)


PROTECTED = ("a/mr.dcm", "a/ct.dcm", "b/rgb2.dcm")


def _displayed(src: Path, dst: Path, rel: str) -> tuple[np.ndarray, np.ndarray, float]:
    """The de-identified and the protected file's images as displayed (to_unit of each decoded file), and
    the de-identified file's display range in stored units."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = decode(pydicom.dcmread(src / rel))
        after = decode(pydicom.dcmread(dst / rel))
    assert (after.lo, after.range) == (before.lo, before.range)  # the protected file is shown the same way
    return to_unit(before).astype(np.float64), to_unit(after).astype(np.float64), before.range


def test_manifest_records_psnr_change_and_budget_per_file(src: Path, protected) -> None:  # type: ignore[no-untyped-def]
    dst, result = protected
    floor = _policy().protect.min_psnr_db
    by_path = {r["path"]: r for r in read_table(dst / "manifest.parquet").to_pylist()}
    for rel in PROTECTED:
        row = by_path[rel]
        before, after, _ = _displayed(src, dst, rel)
        mse = float(np.mean((after - before) ** 2))  # all frames, data range 1
        recomputed = 10 * np.log10(1 / mse) if mse else float("inf")
        assert row["protect_psnr_db"] >= floor
        assert row["protect_psnr_db"] == pytest.approx(recomputed, abs=1e-6) == result.psnr[rel]
        assert row["protect_max_abs_delta"] == result.max_abs_delta[rel] >= 1
        assert row["protect_budget"] == result.budget[rel]
    for rel in ("a/nopix.dcm", "b/palette.dcm", "README.txt"):  # not protected: nothing recorded
        row = by_path[rel]
        assert row["protect_psnr_db"] is None and row["protect_max_abs_delta"] is None
        assert row["protect_budget"] is None


def test_changes_are_written_only_where_the_display_shows_them(src: Path, protected) -> None:  # type: ignore[no-untyped-def]
    # MR_small's window (C600 W1600) clips 5 % of its pixels at the top: none of them may carry a change, and
    # every change written is displayed whole (|shown change| = |stored change| / range).
    dst, result = protected
    for rel in PROTECTED:
        before, after, rng = _displayed(src, dst, rel)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = decode(pydicom.dcmread(src / rel)).stored.astype(np.int64)
        diff = np.abs(decode(pydicom.dcmread(dst / rel)).stored.astype(np.int64) - raw).max(-1)
        changed = diff > 0
        assert changed.any()
        assert ((before[changed] > 0) & (before[changed] < 1) & (after[changed] > 0) & (after[changed] < 1)).all()
        np.testing.assert_allclose(np.abs(after - before)[changed], diff[changed] / rng, atol=1e-6)
    assert result.clipped["a/mr.dcm"] >= 1  # MR pixels above the window top lost their change


def test_a_higher_psnr_floor_writes_a_smaller_change(src: Path, protected, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dst, base = protected
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mr_study = str(pydicom.dcmread(src / "a/mr.dcm", stop_before_pixels=True).StudyInstanceUID)
    assert _policy().protect.min_psnr_db == 38.0
    floor = round(max(base.psnr[rel] for rel in PROTECTED) + 5.0, 1)  # above every file's PSNR at 38 dB
    strict_policy = policy_from_dict({"release": {"seed": 123},
                                      "protect": {**_policy_protect(), "min_psnr_db": floor}})
    strict = protect_tree(src, tmp_path / "strict", policy=strict_policy, labels={mr_study: 1})
    for rel in PROTECTED:
        assert strict.psnr[rel] >= floor > base.psnr[rel]
        b0, a0, _ = _displayed(src, dst, rel)
        b1, a1, _ = _displayed(src, tmp_path / "strict", rel)
        assert np.abs(a1 - b1).sum() < np.abs(a0 - b0).sum()
    by_path = {r["path"]: r for r in read_table(tmp_path / "strict" / "manifest.parquet").to_pylist()}
    assert all(by_path[rel]["protect_psnr_db"] >= floor for rel in PROTECTED)


def test_files_carried_from_the_cache_keep_their_record(src: Path, tmp_path: Path) -> None:
    # The cache keys files by the de-identified bytes (manifest sha256, as `guard deid` writes it).
    src = Path(shutil.copytree(src, tmp_path / "deid"))
    rows = read_table(src / "manifest.parquet").to_pylist()
    for row in rows:
        if (src / row["path"]).is_file():
            row["sha256"] = hashlib.sha256((src / row["path"]).read_bytes()).hexdigest()
    write_table(to_table(rows), src / "manifest.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mr_study = str(pydicom.dcmread(src / "a/mr.dcm", stop_before_pixels=True).StudyInstanceUID)
    cache = tmp_path / "cache"
    first = protect_tree(src, tmp_path / "one", policy=_policy(), labels={mr_study: 1}, reuse=cache)
    second = protect_tree(src, tmp_path / "two", policy=_policy(), labels={mr_study: 1}, reuse=cache)
    assert second.counts["reused"] == len(PROTECTED)
    one = {r["path"]: r for r in read_table(tmp_path / "one" / "manifest.parquet").to_pylist()}
    two = {r["path"]: r for r in read_table(tmp_path / "two" / "manifest.parquet").to_pylist()}
    for rel in PROTECTED:
        for column in ("protect_psnr_db", "protect_max_abs_delta", "protect_budget"):
            assert two[rel][column] == pytest.approx(one[rel][column])
        assert second.psnr[rel] == pytest.approx(first.psnr[rel])
    assert two["a/nopix.dcm"]["protect_psnr_db"] is None
