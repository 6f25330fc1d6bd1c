"""`guard deid SRC DST`: DST holds de-identified values only (issue 16); everything holding original values (the
ingest index, raw copies of quarantined files, quarantined instances, the full manifest) goes under the private
folder, owner-only, and DST's manifest still accounts for every input file."""

from __future__ import annotations

import logging
import stat
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from phi_scan import found  # tests/phi_scan.py
from pydicom import dcmread

from guards.cli import main
from guards.keys import PseudonymKey
from guards.manifest import MANIFEST_SCHEMA, cause

BURNED_REASON = "burned-in text not removable"


@dataclass
class _Outcome:
    action: str
    reason: str
    boxes: list[tuple[int, int, int, int]]
    ocr_words_examined: int


def _fake_pixels(monkeypatch: pytest.MonkeyPatch, burned: set[str]) -> None:
    """Clean Pixel Data stand-in: instances with burned-in text (by original SOPInstanceUID) are quarantined, with
    the text read quoted in the reason (as an OCR reason may); the others are unchanged."""

    def clean_pixel_data(ds: object, *, policy: object, cache: object = None) -> _Outcome:
        if str(getattr(ds, "SOPInstanceUID", "")) in burned:
            return _Outcome("quarantine", f"{BURNED_REASON}: {getattr(ds, 'PatientID', '')}", [], 3)
        return _Outcome("unchanged", "", [], 0)

    fake = types.ModuleType("guards.deid.pixels")
    fake.clean_pixel_data = clean_pixel_data  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "guards.deid.pixels", fake)


@dataclass
class _Source:
    root: Path
    inputs: list[str]  # every input file, relative POSIX paths
    needles: list[str]  # PHI tokens, source paths, file names: none may appear in DST
    burned: list[str]  # corpus files with burned-in text (quarantined at deid)
    bad: list[str]  # files ingest quarantines


def _source(tmp_path: Path) -> _Source:
    from guards.samples import generate_corpus

    src = tmp_path / "src"
    corpus = generate_corpus(src, studies=4, seed=3, image_size=64)
    assert corpus.burned_in, "the seeded corpus has an instance with burned-in text"
    first = sorted(corpus.phi_tokens)[0]
    patient = corpus.demographics[0]
    family = str(patient["PatientName"]).split("^")[0]
    (src / f"{patient['PatientID']}_empty.dcm").write_bytes(b"")  # zero bytes
    (src / f"{family}_notes.txt").write_text(f"Patient {patient['PatientName']}, MRN {patient['PatientID']}\n")
    data = (src / first).read_bytes()
    (src / Path(first).parent / "IMG0001_copy.dcm").write_bytes(data[: len(data) // 2])  # truncated copy
    inputs = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    tokens = {t for ts in corpus.phi_tokens.values() for t in ts}
    tokens |= {str(v) for d in corpus.demographics for k, v in d.items() if k in ("PatientID", "PatientName")}
    tokens |= {t for ts in corpus.burned_in.values() for t in ts}
    needles = sorted(tokens | set(inputs) | {Path(i).name for i in inputs if Path(i).name != "labels.csv"}
                     | {str(src), str(src.resolve())})
    bad = sorted(set(inputs) - set(corpus.phi_tokens) - {"labels.csv"})
    assert len(bad) == 3
    return _Source(root=src, inputs=inputs, needles=needles, burned=sorted(corpus.burned_in), bad=bad)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _run_deid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key_hex: str, *extra: str) -> tuple[_Source, Path]:
    source = _source(tmp_path)
    burned_uids = {str(dcmread(source.root / rel).SOPInstanceUID) for rel in source.burned}
    _fake_pixels(monkeypatch, burned_uids)
    monkeypatch.setenv("GUARD_KEY", key_hex)
    dst = tmp_path / "deid"
    assert main(["deid", str(source.root), str(dst), *extra]) == 0
    return source, dst


def test_dst_holds_no_original_value_and_accounts_for_every_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key_hex: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    source, dst = _run_deid(tmp_path, monkeypatch, key_hex)
    private = tmp_path / "deid.private"  # the default: beside DST

    # Nothing under DST holds a PHI token or a source path: names, bytes, Parquet cells.
    assert found(dst, source.needles)[0] == []
    assert not (dst / ".ingest").exists() and not (dst / "quarantine").exists()

    # DST's manifest: one row per input file, de-identified values only.
    table = pq.read_table(dst / "manifest.parquet")
    assert table.schema.equals(MANIFEST_SCHEMA)
    rows = table.to_pylist()
    assert len(rows) == len(source.inputs)
    assert len({r["path"] for r in rows}) == len(rows)
    assert all(r["source_path"] is None for r in rows)
    published = [r for r in rows if r["status"] == "published"]
    others = [r for r in rows if r["status"] != "published"]
    assert {r["status"] for r in others} <= {"quarantined", "excluded"}
    assert len(published) == 4 - len(source.burned)
    assert len(others) == len(source.bad) + len(source.burned) + 1  # + labels.csv, excluded as a sidecar
    for r in others:
        assert r["path"].startswith(f"{r['status']}/") and not (dst / r["path"]).exists()
        assert r["reason"] and ": " not in r["reason"]
        assert all(v is None for k, v in r.items() if k not in ("path", "status", "reason")), r
    files = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file())
    assert files == sorted(["manifest.parquet", *(r["path"] for r in published)])
    for r in published:
        assert dcmread(dst / r["path"]).SOPInstanceUID == r["SOPInstanceUID"]

    # The private folder: the index, raw copies, the quarantined instance and the full manifest, owner only.
    assert _mode(private) == 0o700
    index = private / "ingest" / "index.parquet"
    full_path = private / "manifest.parquet"
    for p in (index, full_path):
        assert p.is_file() and _mode(p) == 0o600
    assert pq.read_table(index).num_rows == len(source.inputs)
    full = {r["source_path"]: r for r in pq.read_table(full_path).to_pylist()}
    assert sorted(full) == source.inputs
    assert sorted(cause(r["reason"]) for r in full.values() if r["status"] != "published") == sorted(
        r["reason"] for r in others)
    for rel in source.bad:
        assert full[rel]["status"] == "quarantined"
        copy = private / "ingest" / "quarantine" / rel
        assert copy.read_bytes() == (source.root / rel).read_bytes() and _mode(copy) == 0o600
    for rel in source.burned:
        row = full[rel]
        assert row["status"] == "quarantined" and row["reason"].startswith(f"pixel data: {BURNED_REASON}")
        assert row["path"].startswith("quarantine/2.25.")
        assert (private / row["path"]).is_file() and _mode(private / row["path"]) == 0o600
    for p in private.rglob("*"):
        assert _mode(p) == (0o700 if p.is_dir() else 0o600), p
    # The scan finds what is there: the private side does hold the originals.
    assert {n for _, n in found(private, source.needles)[0]} & set(source.inputs)

    assert str(private) in caplog.text


def test_private_folder_can_be_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key_hex: str) -> None:
    private = tmp_path / "elsewhere" / "phi"
    source, dst = _run_deid(tmp_path, monkeypatch, key_hex, "--private", str(private),
                            "--crosswalk", str(tmp_path / "cw" / "crosswalk.parquet"))
    assert found(dst, source.needles)[0] == []
    assert (private / "ingest" / "index.parquet").is_file() and (private / "manifest.parquet").is_file()
    assert not (tmp_path / "deid.private").exists()
    assert (tmp_path / "cw" / "crosswalk.parquet").is_file()
    assert pq.read_table(dst / "manifest.parquet").num_rows == len(source.inputs)


@pytest.mark.parametrize("where", ["inside", "same", "around"])
def test_private_folder_overlapping_dst_is_refused(where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   key_hex: str) -> None:
    monkeypatch.setenv("GUARD_KEY", key_hex)
    src = tmp_path / "src"
    src.mkdir()
    dst = tmp_path / "out" / "deid"
    private = {"inside": dst / "private", "same": dst, "around": tmp_path / "out"}[where]
    assert main(["deid", str(src), str(dst), "--private", str(private)]) == 2
    assert not (dst / "manifest.parquet").exists()


def test_deidentify_index_defaults_are_unchanged(tmp_path: Path, key: PseudonymKey,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline's use (a private run folder as dst): quarantine and the full manifest under dst, as before."""
    from guards.deid.tree import deidentify_index
    from guards.ingest import ingest
    from guards.policy import ReleasePolicy

    source = _source(tmp_path)
    _fake_pixels(monkeypatch, {str(dcmread(source.root / rel).SOPInstanceUID) for rel in source.burned})
    policy = ReleasePolicy()
    snapshot = ingest(source.root, out_dir=tmp_path / "ingest", policy=policy.ingest)
    dst = tmp_path / "run" / "deid"
    result = deidentify_index(snapshot.root, snapshot.table.to_pylist(), dst, policy=policy, key=key)
    assert result.manifest_path == dst / "manifest.parquet"
    rows = {r["source_path"]: r for r in pq.read_table(result.manifest_path).to_pylist()}
    assert sorted(rows) == source.inputs  # the full manifest, source paths kept for lineage
    for rel in source.burned:
        assert (dst / rows[rel]["path"]).is_file() and rows[rel]["path"].startswith("quarantine/")
