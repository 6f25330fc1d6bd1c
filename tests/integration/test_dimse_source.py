"""A PACS source over DIMSE (guards.sources.dimse) against a real Orthanc (orthanc.py here), through pynetdicom.

Every test starts its own Orthanc (AE title GUARDTEST; the one modality it knows is GUARDIAN at 127.0.0.1 on a free
port, which may C-FIND, C-GET and C-MOVE), uploads generated studies and compressed third-party files through its
REST API, then resolves ``dimse://GUARDTEST@127.0.0.1:PORT`` into a snapshot, or runs ``guard run`` on it.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import cutting_proxy  # tests/integration/cutting_proxy.py (pytest puts this folder on sys.path)
import orthanc  # tests/integration/orthanc.py
import pyarrow.parquet as pq
import pytest
from pydicom import dcmread
from test_pacs_source import (
    LIGHT,
    _compressed,
    _header,
    _rows,
    _upload,
    assert_no_phi_from_the_pacs,
    assert_quarantined_study,
    pacs_and_folder_releases,
)

from guards import pipeline
from guards.errors import InputError
from guards.keys import PseudonymKey
from guards.policy import ReleasePolicy
from guards.samples import SampleCorpus, generate_corpus
from guards.sources import dimse, resolve

pytestmark = pytest.mark.timeout(600)

PADDING = (0xFFFC, 0xFFFC)  # Data Set Trailing Padding: a file's, never sent over the network (PS3.10 7.2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> SampleCorpus:
    return generate_corpus(tmp_path_factory.mktemp("dimse-src"), studies=6, seed=5, image_size=64)


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[orthanc.Orthanc]:
    with orthanc.start(tmp_path / "orthanc") as server:
        yield server


@pytest.fixture
def proxy(pacs: orthanc.Orthanc) -> Iterator[cutting_proxy.CuttingProxy]:
    """A TCP proxy in front of Orthanc's DIMSE port that can cut a study's C-GET off mid-stream."""
    with cutting_proxy.start(pacs.dicom_port) as p:
        yield p


def _data_set(data: bytes) -> bytes:
    """The encoded data set after the File Meta group, as a conformant sender puts it on the network: without
    Data Set Trailing Padding, and encapsulated Pixel Data with VR OB (PS3.5 A.4; pydicom's JPEG-LS test file says
    OW, which Orthanc's DCMTK corrects when it sends the file; the fragments are untouched)."""
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00"  # (0002,0000) group length first
    body = data[144 + int.from_bytes(data[140:144], "little"):]
    ds = dcmread(io.BytesIO(data), stop_before_pixels=False)
    syntax = ds.file_meta.TransferSyntaxUID
    if PADDING in ds:
        body = body[:-((8 if syntax.is_implicit_VR else 12) + len(ds[PADDING].value))]
    if syntax.is_encapsulated and not syntax.is_implicit_VR:
        ow, ob = (b"\xe0\x7f\x10\x00" + vr + b"\x00\x00\xff\xff\xff\xff" for vr in (b"OW", b"OB"))
        body = body.replace(ow, ob)
    return body


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every study retrieve (C-GET or C-MOVE; the real one runs)."""
    calls: list[str] = []
    real = dimse._fetch_study

    def spy(options: dimse.Options, listed: dimse.Listed, scp: object = None) -> Iterator[bytes]:
        calls.append(listed.study.uid)
        yield from real(options, listed, scp)  # type: ignore[arg-type]

    monkeypatch.setattr(dimse, "_fetch_study", spy)
    return calls


@pytest.mark.parametrize("mode", ["get", "move"])
def test_every_instance_arrives_as_stored_in_its_transfer_syntax(
    pacs: orthanc.Orthanc, corpus: SampleCorpus, tmp_path: Path, mode: str
) -> None:
    sent = _upload(pacs, [*corpus.files, *_compressed()])
    syntaxes = {_header(d)[2] for d in sent.values()}
    assert {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5"} <= syntaxes  # JPEG-LS and RLE among them

    snap = resolve(pacs.dimse_source(f"workers=3&mode={mode}"), out_dir=tmp_path / "ingest", policy=ReleasePolicy())

    assert snap.kind == "dimse"
    rows = _rows(snap)
    indexed = {r["SOPInstanceUID"]: r for r in rows if r["status"] == "indexed"}
    assert set(indexed) == set(sent) and len(rows) == len(sent)
    assert snap.counts == {"seen": len(sent), "indexed": len(sent), "quarantined": 0, "excluded": 0}
    normalized = 0
    for sop, data in sent.items():
        row = indexed[sop]
        local = (snap.root / str(row["path"])).read_bytes()
        assert row["TransferSyntaxUID"] == _header(data)[2]  # the stored syntax: no transcoding
        assert _data_set(local) == _data_set(data)  # the data set as stored, byte for byte: not re-encoded
        assert _data_set(local) == local[144 + int.from_bytes(local[140:144], "little"):]  # written as sent
        normalized += _data_set(data) != data[144 + int.from_bytes(data[140:144], "little"):]
        assert dcmread(io.BytesIO(local)).PixelData == dcmread(io.BytesIO(data)).PixelData
        assert row["sha256"] == hashlib.sha256(local).hexdigest()
        assert row["path"] == f"{row['StudyInstanceUID']}/{sop}.dcm"
    assert normalized == 1  # only pydicom's JPEG-LS file (OW, padding); every other data set arrives whole
    assert snap.root == tmp_path / "ingest" / "pacs"
    assert not list(snap.root.glob(".*"))  # no partial folders left to be indexed


def test_an_unknown_calling_ae_title_is_refused_and_the_url_is_checked(
    pacs: orthanc.Orthanc, corpus: SampleCorpus, tmp_path: Path
) -> None:
    _upload(pacs, corpus.files[:2])
    source = pacs.dimse_source().replace("calling_aet=GUARDIAN", "calling_aet=STRANGER")
    with pytest.raises(InputError, match="C-FIND|rejected") as refused:
        resolve(source, out_dir=tmp_path / "ingest", policy=ReleasePolicy())
    assert "STRANGER" in str(refused.value)
    o = dimse.parse("dimse://PACS@pacs.example:11112?calling_aet=ME&workers=4&retries=0&since=20260101")
    assert (o.called_aet, o.host, o.port, o.calling_aet, o.mode) == ("PACS", "pacs.example", 11112, "ME", "get")
    assert (o.common.workers, o.common.retries, str(o.common.since)) == (4, 0, "2026-01-01")
    assert o.display == "dimse://PACS@pacs.example:11112" and dimse.parse("dimse://A@h:1").calling_aet == "GUARDIAN"
    for bad, message in (("dimse://h:104", "called AE title"), ("dimse://A@h", "host and the port"),
                         ("dimse://A@h:1?mode=move", "move_port"), ("dimse://A@h:1?mode=push", "get or move"),
                         ("dimse://A@h:1?foo=1", "unknown parameter"), ("dimse://A:pw@h:1", "no password"),
                         ("dimse://A@h:1?calling_aet=" + "X" * 17, "AE title")):
        with pytest.raises(InputError, match=message):
            dimse.parse(bad)
    # Under the 128-context limit whatever the study holds; one syntax per context, uncompressed first.
    many = dimse.storage_contexts([])
    assert len(many) == dimse.STORAGE_BUDGET == 127 and all(len(cx.transfer_syntax) == 1 for cx in many)
    one = dimse.storage_contexts(["1.2.840.10008.5.1.4.1.1.2"])
    assert [cx.transfer_syntax[0] for cx in one] == list(dimse.TRANSFER_SYNTAXES)


def test_guard_run_on_the_pacs_over_dimse_publishes_the_release_of_the_same_folder(
    pacs: orthanc.Orthanc, corpus: SampleCorpus, tmp_path: Path, key_hex: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 17: ``guard run dimse://GUARDTEST@127.0.0.1:PORT OUT --labels labels.csv`` gives the folder's release."""
    sent = _upload(pacs, corpus.files)
    from_pacs, from_folder, pacs_log = pacs_and_folder_releases(pacs.dimse_source(), corpus, tmp_path, key_hex,
                                                                monkeypatch, caplog)
    assert len(from_pacs) == len(sent) and set(from_pacs) == set(from_folder)  # same pseudonymous UIDs
    assert not set(from_pacs) & set(sent)
    # Byte for byte the same data sets; the File Meta groups differ only where DIMSE must: the file meta is not
    # sent over the network, so the received files name pynetdicom as the implementation that wrote them (and the
    # release keeps its input's Implementation Class UID / Version Name).
    for uid in from_pacs:
        assert _data_set(from_pacs[uid]) == _data_set(from_folder[uid])
        metas = [dcmread(io.BytesIO(from_pacs[uid]), stop_before_pixels=True).file_meta,
                 dcmread(io.BytesIO(from_folder[uid]), stop_before_pixels=True).file_meta]
        assert metas[0].ImplementationVersionName == "PYNETDICOM_304" != metas[1].ImplementationVersionName
        for meta in metas:
            for keyword in ("FileMetaInformationGroupLength", "ImplementationClassUID", "ImplementationVersionName"):
                del meta[keyword]
        assert metas[0] == metas[1]
    run = json.loads((tmp_path / "pacs" / "runs" / "night" / "run.json").read_text(encoding="utf-8"))
    assert run["snapshot"]["kind"] == "dimse" and run["source"] == pacs.dimse_source()
    # No PHI the PACS sent (C-FIND answers, files) in the release or in any log line, pynetdicom's DEBUG included.
    assert sum(name.startswith("pynetdicom") for name, _ in pacs_log) > 50  # its DEBUG lines were captured
    assert_no_phi_from_the_pacs(corpus, tmp_path / "pacs", pacs_log)


def test_the_next_night_retrieves_only_new_studies_and_the_one_that_failed(
    pacs: orthanc.Orthanc, proxy: cutting_proxy.CuttingProxy, tmp_path: Path, key: PseudonymKey,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17: night 1 holds six studies; one of them loses a file on the PACS (Orthanc fails its C-GET on every
    attempt) and another one's C-GET is cut off mid-study (a proxy in front of Orthanc's DIMSE port closes the
    connection within its second instance, every attempt): both are retried, then accounted for with the reason.
    Night 2 adds five studies and the PACS is whole again: only those five and the two that failed are retrieved
    (C-GETs counted), and every instance is in the snapshot."""
    corpus = generate_corpus(tmp_path / "src", studies=11, seed=5, image_size=64)  # three studies of 4
    by_study: dict[str, list[Path]] = {}
    for p in corpus.files:
        by_study.setdefault(_header(p.read_bytes())[1], []).append(p)
    studies = sorted(by_study)
    multi = [s for s in studies if len(by_study[s]) >= 2]
    assert len(multi) >= 2
    lossy, cut = multi[:2]  # two studies of several instances each in night 1
    first = [lossy, cut, *[s for s in studies if s not in (lossy, cut)][:4]]
    later = [s for s in studies if s not in first]
    assert len(later) == 5
    sent = _upload(pacs, [p for s in first for p in by_study[s]])
    lost_sop = _header(by_study[lossy][0].read_bytes())[0]
    stored = pacs.lose_file(lost_sop, tmp_path / "lost.dcm")
    out = tmp_path / "out"
    calls = _spy(monkeypatch)
    source = pacs.dimse_source("workers=2&retries=1").replace(f":{pacs.dicom_port}?", f":{proxy.port}?")
    proxy.pattern, proxy.cut = cutting_proxy.UIDS, cut  # the C-GET identifier names the study
    proxy.keep = min(p.stat().st_size for p in by_study[cut]) + 1500

    night1 = pipeline.begin(source, out, "night1", policy=LIGHT, key=key).require_snapshot()

    assert proxy.cuts == 2 and calls.count(lossy) == calls.count(cut) == 2  # 1 + retries=1
    assert sorted(set(calls)) == sorted(first) and len(calls) == len(first) + 2
    rows = _rows(night1)
    lossy_rows = [r for r in rows if r["StudyInstanceUID"] == lossy]
    n = len(by_study[lossy])
    assert len(lossy_rows) == n
    assert_quarantined_study(lossy_rows, out / "private" / "runs" / "night1" / "ingest")
    assert any(r["path"] == f"{lossy}/{dimse.NOT_RECEIVED}" and "1 instance(s) of the study never arrived"
               in str(r["reason"]) for r in lossy_rows), [r["reason"] for r in lossy_rows]
    assert all("after 2 attempt(s)" in str(r["reason"]) for r in lossy_rows)
    # Orthanc 1.10 answers a C-GET whose stored file is gone with 0xC000 once the other instances are sent.
    assert all("retrieve failed (C-GET status 0xC000 (Failure))" in str(r["reason"]) and "3 instance(s) received"
               in str(r["reason"]) for r in lossy_rows), [r["reason"] for r in lossy_rows]
    cut_rows = [r for r in rows if r["StudyInstanceUID"] == cut]
    assert_quarantined_study(cut_rows, out / "private" / "runs" / "night1" / "ingest")
    assert all("retrieve failed (no final C-GET response" in str(r["reason"]) and
               "after 2 attempt(s), 1 instance(s) received" in str(r["reason"]) for r in cut_rows), [r["reason"]
                                                                                                     for r in cut_rows]
    good = [r for r in rows if r["StudyInstanceUID"] not in (lossy, cut)]
    assert {r["SOPInstanceUID"] for r in good} == {sop for sop, d in sent.items() if _header(d)[1] not in (lossy, cut)}
    assert all(r["status"] == "indexed" for r in good)

    # Night 2: five new studies, the lost file is back, the association holds.
    shutil.move(tmp_path / "lost.dcm", stored)
    sent.update(_upload(pacs, [p for s in later for p in by_study[s]]))
    calls.clear()
    proxy.cut = ""
    night2 = pipeline.begin(source, out, "night2", policy=LIGHT, key=key).require_snapshot()
    assert proxy.cuts == 2
    assert sorted(calls) == sorted([*later, lossy, cut])  # the five new studies and the two that failed, once each
    rows = _rows(night2)
    assert {r["SOPInstanceUID"] for r in rows if r["status"] == "indexed"} == set(sent)
    assert night2.counts == {"seen": len(sent), "indexed": len(sent), "quarantined": 0, "excluded": 0}
    [ledger_path] = list((out / "private" / "pacs").glob("*/ledger.parquet"))
    ledger = {r["StudyInstanceUID"]: r for r in pq.read_table(ledger_path).to_pylist()}
    assert set(ledger) == set(studies) and all(r["status"] == "complete" for r in ledger.values())
    assert {s: r["run"] for s, r in ledger.items()} == {s: "night1" if s in first[2:] else "night2" for s in studies}
