"""guards.images: DICOM trees to tensors, manifests honoured, images joined to the cohort."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa
import pydicom
import pytest

from guards.errors import InputError
from guards.images import align, label_images, load_images
from guards.manifest import empty_row, to_table, write_table
from guards.protect.codec import decode, to_unit


def corpus_module() -> ModuleType:
    """The synthetic corpus writer shared with benchmarks/checks_suite (no real patient data)."""
    name = "checks_suite_corpus"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[2] / "benchmarks" / "checks_suite" / "corpus.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return corpus_module().make_corpus(tmp_path_factory.mktemp("img") / "src", patients=6, size=24, seed=3)


def test_load_images_shapes_range_order(corpus) -> None:  # type: ignore[no-untyped-def]
    images = load_images(corpus.root, size=16)
    assert images.pixels.shape == (12, 1, 16, 16)
    assert images.pixels.dtype.is_floating_point
    assert float(images.pixels.min()) >= 0.0 and float(images.pixels.max()) <= 1.0
    assert list(images.sop_uids) == sorted(images.sop_uids)
    assert images.examined == {"files": 12, "loaded": 12, "skipped": 0}
    ds = pydicom.dcmread(corpus.root / images.paths[0])
    assert str(ds.SOPInstanceUID) == images.sop_uids[0]
    assert str(ds.StudyInstanceUID) == images.study_uids[0]


def test_load_images_same_tree_same_tensor(corpus) -> None:  # type: ignore[no-untyped-def]
    a, b = load_images(corpus.root, size=16), load_images(corpus.root, size=16)
    assert a.pixels.numpy().tobytes() == b.pixels.numpy().tobytes()


def test_non_dicom_file_is_skipped_and_counted(tmp_path: Path, corpus) -> None:  # type: ignore[no-untyped-def]
    mod = corpus_module()
    one = mod.make_corpus(tmp_path / "t", patients=2, size=8, seed=1, images_per_study=1)
    (one.root / "notes.bin").write_bytes(b"not a dicom file")
    images = load_images(one.root, size=8)
    assert len(images) == 2
    assert images.examined == {"files": 3, "loaded": 2, "skipped": 1}


def test_manifest_rows_decide_which_files(tmp_path: Path) -> None:
    mod = corpus_module()
    c = mod.make_corpus(tmp_path / "t", patients=3, size=8, seed=2, images_per_study=1)
    rels = sorted(p.relative_to(c.root).as_posix() for p in c.files)
    rows = []
    for i, rel in enumerate(rels):
        row = empty_row(rel)
        row["status"] = "quarantined" if i == 0 else "published"
        row["reason"] = "burned-in text" if i == 0 else ""
        rows.append(row)
    write_table(to_table(rows), c.root / "manifest.parquet")
    images = load_images(c.root, size=8)
    assert sorted(images.paths) == rels[1:]
    assert images.examined["files"] == 2


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    mod = corpus_module()
    ramp = np.tile(np.linspace(0, 1, 8), (8, 1))
    for name, photometric in (("m2.dcm", "MONOCHROME2"), ("m1.dcm", "MONOCHROME1")):
        sop = f"1.2.3.{photometric[-1]}"
        mod.write_instance(tmp_path / name, ramp, patient="P", study="1.2.3", sop=sop, series="1.2.3.9")
        ds = pydicom.dcmread(tmp_path / name)
        ds.PhotometricInterpretation = photometric
        ds.save_as(tmp_path / name)
    images = load_images(tmp_path, size=8)
    by_path = {p: images.pixels[i, 0] for i, p in enumerate(images.paths)}
    assert float(by_path["m2.dcm"][0, -1]) == pytest.approx(1.0, abs=1e-3)
    assert float(by_path["m1.dcm"][0, -1]) == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p / "missing", "does not exist"),  # no such folder
        (lambda p: p, "no usable image"),  # an empty folder
    ],
)
def test_unusable_trees_raise(tmp_path: Path, make, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=match):
        load_images(make(tmp_path), size=8)


def test_label_images_joins_cohort_and_counts_dropped(corpus) -> None:  # type: ignore[no-untyped-def]
    images = load_images(corpus.root, size=8)
    rows = corpus.cohort.to_pylist()
    dropped = rows[0]["StudyInstanceUID"]
    rows[1]["included"] = False
    cohort = pa.Table.from_pylist(rows[2:] + [rows[1]])
    data = label_images(images, cohort, subgroups=("sex", "ethnic_group", "not_a_column"))
    assert len(data.images) == 8 and data.examined["images_without_study"] == 4
    assert dropped not in data.images.study_uids
    assert set(data.subgroups) == {"sex", "ethnic_group"}
    truth = {r["StudyInstanceUID"]: r for r in rows}
    for i, study in enumerate(data.images.study_uids):
        assert data.labels[i] == truth[study]["label"]
        assert data.patient_ids[i] == truth[study]["PatientID"]
        assert data.subgroups["sex"][i] == truth[study]["sex"]


def test_label_images_needs_cohort_columns(corpus) -> None:  # type: ignore[no-untyped-def]
    images = load_images(corpus.root, size=8)
    with pytest.raises(InputError, match="label"):
        label_images(images, corpus.cohort.drop_columns(["label"]), subgroups=())


def test_align_joins_on_sop_uid(corpus) -> None:  # type: ignore[no-untyped-def]
    full = load_images(corpus.root, size=8)
    part = full.subset([5, 1, 3])
    a, b = align(part, full)
    assert a.sop_uids == b.sop_uids == part.sop_uids
    with pytest.raises(InputError, match="share no SOPInstanceUID"):
        align(full.subset([0]), full.subset([1]))


def test_walk_skips_quarantine_and_hidden_folders(tmp_path: Path) -> None:
    mod = corpus_module()
    c = mod.make_corpus(tmp_path / "t", patients=2, size=8, seed=5, images_per_study=1)
    ramp = np.tile(np.linspace(0, 1, 8), (8, 1))
    mod.write_instance(c.root / "quarantine" / "q.dcm", ramp, patient="Q", study="1.9", sop="1.9.1", series="1.9.2")
    mod.write_instance(c.root / ".ingest" / "h.dcm", ramp, patient="H", study="1.8", sop="1.8.1", series="1.8.2")
    images = load_images(c.root, size=8)
    assert len(images) == 2 and not any(p.startswith(("quarantine/", ".ingest/")) for p in images.paths)


def _windowed_ct(path: Path, *, sop: str) -> None:
    """A CT-like instance (HU = stored - 1024, window C40 W400) whose air and bone lie outside the window."""
    mod = corpus_module()
    mod.write_instance(path, np.zeros((16, 16)), patient="P", study="1.2.3", sop=sop, series="1.2.3.9")
    ds = pydicom.dcmread(path)
    stored = np.random.default_rng(4).integers(0, 2525, size=(16, 16)).astype(np.uint16)
    stored[0, :4] = (0, 200, 2400, 2524)  # air and bone
    stored[1, :3] = (864, 1064, 1264)  # the window's bottom, centre and top
    ds.PixelData = stored.tobytes()
    ds.Modality = "CT"
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.save_as(path)


def test_images_are_seen_through_the_protect_display_transform(tmp_path: Path) -> None:
    # The checks must see what protect saw (guards.protect.codec): the VOI window, not per-image min-max, so the
    # noise is judged at its displayed strength.
    _windowed_ct(tmp_path / "ct.dcm", sop="1.2.3.1")
    images = load_images(tmp_path, size=16)  # native size: no resampling
    shown = images.pixels[0, 0].numpy()
    expected = to_unit(decode(pydicom.dcmread(tmp_path / "ct.dcm")))[0]
    assert np.array_equal(shown, expected)
    assert shown[0, :4].tolist() == [0.0, 0.0, 1.0, 1.0]  # clipped below and above the window
    np.testing.assert_allclose(shown[1, :3], [0.0, 0.5, 1.0], atol=1e-6)
    stored = pydicom.dcmread(tmp_path / "ct.dcm").pixel_array.astype(np.float64)
    min_max = (stored - stored.min()) / (stored.max() - stored.min())
    assert np.abs(shown - min_max).max() > 0.3  # not the old per-image scaling


def test_multi_frame_uses_the_first_frame_in_the_instance_window(tmp_path: Path) -> None:
    mod = corpus_module()
    mod.write_instance(tmp_path / "mf.dcm", np.zeros((8, 8)), patient="P", study="1.2.3", sop="1.2.3.4",
                       series="1.2.3.9")
    ds = pydicom.dcmread(tmp_path / "mf.dcm")
    frames = np.stack([np.full((8, 8), 100), np.full((8, 8), 300)]).astype(np.uint16)
    frames[0, 0, 0] = 200
    ds.NumberOfFrames = 2
    ds.PixelData = frames.tobytes()
    ds.save_as(tmp_path / "mf.dcm")
    shown = load_images(tmp_path, size=8).pixels[0, 0].numpy()
    # No window: the instance's own range (100..300, over both frames), as protect decodes it.
    assert shown[0, 0] == pytest.approx(0.5) and shown[0, 1] == pytest.approx(0.0)


def test_pixels_the_codec_cannot_display_are_skipped_and_counted(tmp_path: Path) -> None:
    _windowed_ct(tmp_path / "ct.dcm", sop="1.2.3.1")
    _windowed_ct(tmp_path / "pal.dcm", sop="1.2.3.2")
    ds = pydicom.dcmread(tmp_path / "pal.dcm")
    ds.PhotometricInterpretation = "PALETTE COLOR"  # indices into a colour table: no grey value to show
    ds.save_as(tmp_path / "pal.dcm")
    images = load_images(tmp_path, size=8)
    assert images.paths == ("ct.dcm",)
    assert images.examined == {"files": 2, "loaded": 1, "skipped": 1}
