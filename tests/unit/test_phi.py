"""guards.checks.phi: source PHI tokens found with their element path, raw bytes, OCR; clean release passes.

All data here is made up (no real patient): a source file and a de-identified copy built with pydicom.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from guards.checks import phi
from guards.errors import InputError
from guards.gate import decide
from guards.policy import GateSection, PixelsSection, ReleasePolicy

SRC_UIDS = ("1.2.826.0.1.3680043.8.498.111", "1.2.826.0.1.3680043.8.498.112", "1.2.826.0.1.3680043.8.498.113")
OUT_UIDS = ("2.25.9001", "2.25.9002", "2.25.9003")
ACCESSION = "ACC7731902"


def _dataset(*, name: str, pid: str, birth: str, study: str, accession: str, nested_accession: str,
             uids: tuple[str, str, str], institution: str, pixels: np.ndarray | None = None) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(uids[2])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = uids
    ds.PatientName = name
    ds.PatientID = pid
    ds.PatientBirthDate = birth
    ds.StudyDate = study
    ds.AccessionNumber = accession
    ds.InstitutionName = institution
    ds.Modality = "OT"
    ds.BodyPartExamined = "CHEST"
    item = Dataset()
    item.AccessionNumber = nested_accession
    item.RequestedProcedureID = "RP"
    ds.RequestAttributesSequence = Sequence([item])
    block = ds.private_block(0x0009, "MADEUP TEST", create=True)
    block.add_new(0x10, "LO", "site note")
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = pixels.astype(np.uint8).tobytes()
    return ds


def _source(root: Path) -> Path:
    src = root / "src" / "p1"
    src.mkdir(parents=True)
    ds = _dataset(name="Quorrington^Hildegard", pid="PID-448120", birth="19610317", study="20240105",
                  accession=ACCESSION, nested_accession=ACCESSION, uids=SRC_UIDS,
                  institution="Quarry Bay Infirmary")
    ds.save_as(src / "a.dcm", enforce_file_format=True)
    return root / "src"


def _release(root: Path, *, nested: str, pixels: np.ndarray | None = None, study: str = "20230911") -> Path:
    out = root / "release"
    out.mkdir()
    ds = _dataset(name="8F3A2C", pid="8F3A2C19", birth="", study=study, accession="", nested_accession=nested,
                  uids=OUT_UIDS, institution="", pixels=pixels)
    ds.save_as(out / "img.dcm", enforce_file_format=True)
    return out


POLICY = ReleasePolicy()


def test_leaked_accession_in_nested_sequence_is_found_with_its_path(tmp_path: Path) -> None:
    src = _source(tmp_path)
    rel = _release(tmp_path, nested=ACCESSION)
    result = phi.run(rel, source_dir=src, policy=POLICY, ocr=False)
    assert result.status == "fail"
    paths = [f.evidence for f in result.findings if f.metric.startswith("phi_token")]
    assert any("img.dcm: RequestAttributesSequence[0] > AccessionNumber" in e for e in paths), paths
    assert result.findings[0].value == 1  # found once by the parser; the raw-byte scan does not double-count
    assert ACCESSION not in str(result.to_dict())  # the report names the element, never the PHI value
    assert result.examined["files"] == 1 and result.examined["elements"] > 10 and result.examined["tokens"] > 5
    decision = decide([result], policy=ReleasePolicy(gate=GateSection(blocking=("phi",), advisory=())))
    assert not decision.passed
    assert any("RequestAttributesSequence[0] > AccessionNumber" in r for r in decision.reasons)


def test_clean_release_passes_with_nonzero_counts(tmp_path: Path) -> None:
    src = _source(tmp_path)
    rel = _release(tmp_path, nested="9X0001")
    result = phi.run(rel, source_dir=src, policy=POLICY, ocr=False)
    assert result.status == "pass", [f.evidence for f in result.findings]
    ex = result.examined
    assert ex["files"] == 1 and ex["dicom_files"] == 1 and ex["elements"] > 10 and ex["bytes"] > 100
    assert ex["tokens"] >= 10 and ex["source_files"] == 1
    cats = result.details["tokens_by_category"]
    assert {"name", "identifier", "date", "uid", "institution"} <= set(cats)
    assert result.details["skipped"]  # "RP" (too short) and "CHEST"-like words are listed as skipped


@pytest.mark.parametrize(
    "text",
    [
        "17/03/1961",  # DD/MM/YYYY birth date
        "03/17/1961",  # MM/DD/YYYY
        "1961-03-17",  # ISO
        "17.03.1961",  # DD.MM.YYYY
        "seen by hildegard",  # a name part in free text, other case
        "quarry bay infirmary",  # institution name
        SRC_UIDS[0],  # a source UID
        "PID-448120",  # patient id with its separator
    ],
)
def test_tokens_in_every_form_are_found_in_free_text(tmp_path: Path, text: str) -> None:
    src = _source(tmp_path)
    rel = _release(tmp_path, nested="9X0001")
    from pydicom import dcmread

    ds = dcmread(rel / "img.dcm")
    ds.ImageComments = f"note: {text}"
    ds.save_as(rel / "img.dcm")
    result = phi.run(rel, source_dir=src, policy=POLICY, ocr=False)
    assert result.status == "fail"
    assert any("ImageComments" in f.evidence for f in result.findings)


def test_private_element_and_raw_bytes_of_non_dicom_files(tmp_path: Path) -> None:
    src = _source(tmp_path)
    rel = _release(tmp_path, nested="9X0001")
    from pydicom import dcmread

    ds = dcmread(rel / "img.dcm")
    ds.private_block(0x0009, "MADEUP TEST").add_new(0x11, "LO", "Quorrington")
    ds.save_as(rel / "img.dcm")
    (rel / "notes.csv").write_text("study,who\n1,HILDEGARD QUORRINGTON\n", encoding="utf-8")
    result = phi.run(rel, source_dir=src, policy=POLICY, ocr=False)
    ev = [f.evidence for f in result.findings]
    assert any("img.dcm: (0009,1011) [MADEUP TEST]" in e for e in ev), ev
    assert any(e.startswith("notes.csv: raw bytes") for e in ev), ev


def test_shifted_dates_of_another_patient_are_not_hits_when_the_manifest_maps_files(tmp_path: Path) -> None:
    src = _source(tmp_path)
    other = _dataset(name="Zellweger^Ottoline", pid="PID-992211", birth="19700101", study="20230911",
                     accession="ACC000999", nested_accession="", uids=("1.2.3.91", "1.2.3.92", "1.2.3.93"),
                     institution="Quarry Bay Infirmary")
    (src / "p2").mkdir()
    other.save_as(src / "p2" / "b.dcm", enforce_file_format=True)
    rel = _release(tmp_path, nested="9X0001", study="20230911")  # p1's shifted date == p2's true date
    unscoped = phi.run(rel, source_dir=src, policy=POLICY, ocr=False)
    assert unscoped.status == "fail" and unscoped.details["dates_scoped_to_patient_files"] == 0
    pq.write_table(pa.table({"path": ["img.dcm"], "source_path": ["p1/a.dcm"]}), rel / "manifest.parquet")
    scoped = phi.run(rel, source_dir=src, policy=POLICY, ocr=False)
    assert scoped.status == "pass", [f.evidence for f in scoped.findings]
    assert scoped.details["dates_scoped_to_patient_files"] == 1


def test_quarantine_folder_is_not_scanned_and_empty_source_is_an_error(tmp_path: Path) -> None:
    src = _source(tmp_path)
    rel = _release(tmp_path, nested="9X0001")
    (rel / "quarantine").mkdir()
    (rel / "quarantine" / "orig.dcm").write_bytes((src / "p1" / "a.dcm").read_bytes())
    assert phi.run(rel, source_dir=src, policy=POLICY, ocr=False).status == "pass"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no readable DICOM"):
        phi.run(rel, source_dir=empty, policy=POLICY, ocr=False)


def test_burned_in_name_is_read_by_ocr(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("L", (360, 80), 0)
    ImageDraw.Draw(img).text((10, 20), "QUORRINGTON", fill=255, font=ImageFont.load_default(size=36))
    src = _source(tmp_path)
    rel = _release(tmp_path, nested="9X0001", pixels=np.asarray(img))
    policy = ReleasePolicy(pixels=PixelsSection(ocr_all=True))
    result = phi.run(rel, source_dir=src, policy=policy, ocr=True)
    assert result.examined["ocr_frames"] == 1 and result.examined["ocr_words"] >= 1
    assert any("PixelData frame 0 (OCR text)" in f.evidence for f in result.findings), result.findings


def test_source_uid_in_file_meta_is_found(tmp_path: Path) -> None:
    src = _source(tmp_path)
    rel = _release(tmp_path, nested="9X0001")
    from pydicom import dcmread

    ds = dcmread(rel / "img.dcm")
    ds.file_meta.MediaStorageSOPInstanceUID = UID(SRC_UIDS[2])
    ds.save_as(rel / "img.dcm")
    result = phi.run(rel, source_dir=src, policy=POLICY, ocr=False)
    ev = [f.evidence for f in result.findings]
    assert any("FileMetaInformation > MediaStorageSOPInstanceUID holds a uid token" in e for e in ev), ev


def test_gate_report_names_the_leaked_element(tmp_path: Path) -> None:
    from guards.report import write_report

    src = _source(tmp_path)
    rel = _release(tmp_path, nested=ACCESSION)
    result = phi.run(rel, source_dir=src, policy=POLICY, ocr=False)
    policy = ReleasePolicy(gate=GateSection(blocking=("phi",), advisory=()))
    index = write_report(decide([result], policy=policy), [result], tmp_path / "report", policy=policy, context={})
    html = index.read_text(encoding="utf-8")
    assert "FAILED" in html and "RequestAttributesSequence[0] &gt; AccessionNumber" in html
    assert ACCESSION not in html and ACCESSION not in (tmp_path / "report" / "gate.json").read_text(encoding="utf-8")


def test_ocr_mosaic_assigns_words_to_the_right_file(tmp_path: Path) -> None:
    """Three frames go into one tesseract call; only the file whose pixels hold the name is reported."""
    from PIL import Image, ImageDraw, ImageFont

    src = _source(tmp_path)
    rel = tmp_path / "release"
    rel.mkdir()
    font = ImageFont.load_default(size=36)
    for i, text in enumerate(["", "QUORRINGTON", "LATERAL"]):
        img = Image.new("L", (360, 80), 0)
        if text:
            ImageDraw.Draw(img).text((10, 20), text, fill=255, font=font)
        uids = (f"2.25.80{i}1", f"2.25.80{i}2", f"2.25.80{i}3")
        ds = _dataset(name="8F3A2C", pid="8F3A2C19", birth="", study="", accession="", nested_accession="",
                      uids=uids, institution="", pixels=np.asarray(img))
        ds.save_as(rel / f"f{i}.dcm", enforce_file_format=True)
    result = phi.run(rel, source_dir=src, policy=ReleasePolicy(pixels=PixelsSection(ocr_all=True)), ocr=True)
    assert result.examined["ocr_frames"] == 3 and result.examined["ocr_calls"] == 1
    ocr_hits = [f.evidence for f in result.findings if "(OCR text)" in f.evidence]
    assert ocr_hits == ["f1.dcm: PixelData frame 0 (OCR text) holds a name token from the source's PatientName "
                        "(11 characters)"]


def test_generic_tokens_are_skipped_and_listed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    ds = _dataset(name="Chest^Al", pid="1234", birth="", study="", accession="", nested_accession="",
                  uids=SRC_UIDS, institution="General Hospital")
    ds.save_as(src / "a.dcm", enforce_file_format=True)
    rel = _release(tmp_path, nested="", study="")  # holds BodyPartExamined CHEST, as any chest study may
    result = phi.run(rel, source_dir=src, policy=POLICY, ocr=False)
    assert result.status == "pass", [f.evidence for f in result.findings]
    assert result.details["skipped"] == {
        "name: common word": 1,  # CHEST
        "name: shorter than 3 characters": 1,  # AL
        "identifier: numeric, shorter than 5 digits": 1,  # PatientID 1234
        "identifier: shorter than 3 characters": 1,  # RequestedProcedureID RP in the nested item
        "institution: common word": 1,  # GENERAL HOSPITAL
    }


def test_every_generated_file_with_phi_is_flagged_when_nothing_was_removed(sample_corpus) -> None:  # type: ignore[no-untyped-def]
    """The generated corpus scanned against itself: each file guards.samples put PHI into has hits."""
    result = phi.run(sample_corpus.root, source_dir=sample_corpus.root, policy=POLICY, ocr=False)
    with_phi = {rel for rel, tokens in sample_corpus.phi_tokens.items() if tokens}
    assert with_phi
    assert with_phi <= set(result.details["hits_per_file"])
    assert result.status == "fail"


@pytest.mark.slow(reason="tesseract OCR of every generated image")
def test_deidentified_samples_pass_with_ocr(sample_corpus, key, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """guards.deid on the generated samples leaves no source PHI that phi can find (headers, bytes, OCR)."""
    from guards.deid import deidentify_tree

    deidentify_tree(sample_corpus.root, tmp_path / "deid", policy=POLICY, key=key)
    result = phi.run(tmp_path / "deid", source_dir=sample_corpus.root, policy=POLICY, ocr=True)
    assert result.status == "pass", [f.evidence for f in result.findings[:10]]
    assert result.examined["files"] > 0 and result.examined["ocr_frames"] > 0
    # The tree's manifest carries no source paths (issue 16: they stay in deid.private/), so every file is
    # searched for every source date: stricter than per-patient scoping, and it still passes.
    assert result.details["dates_scoped_to_patient_files"] == 0 < result.examined["dicom_files"]


# --- issue 14: the audit is never weaker than the cleaner (one vocabulary, guards.deid.vocabulary) -----------

BIRTH_WRITTEN = ("17-MAR-1961", "17 Mar 1961", "March 17, 1961", "DOB 17MAR1961")  # source PatientBirthDate 19610317
ID_PIECES = ("448120", "MRN448120")  # the digits of the source PatientID PID-448120, alone or in another word


def _plant(rel: Path, location: str, text: str) -> str:
    """Put ``text`` into the released file at ``location``; returns the element path the check must report."""
    from pydicom import dcmread

    ds = dcmread(rel / "img.dcm")
    if location == "free text":
        ds.StudyDescription = f"CHEST PA {text}"
        where = "StudyDescription"
    elif location == "private":
        ds.private_block(0x0009, "MADEUP TEST").add_new(0x11, "LO", f"note {text}")
        where = "(0009,1011) [MADEUP TEST]"
    else:  # a sequence item inside a sequence item
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "X1", "99LOCAL", f"protocol {text}"
        ds.RequestAttributesSequence[0].ScheduledProtocolCodeSequence = Sequence([code])
        where = "RequestAttributesSequence[0] > ScheduledProtocolCodeSequence[0] > CodeMeaning"
    ds.save_as(rel / "img.dcm")
    return where


@pytest.mark.parametrize("location", ["free text", "private", "nested sequence"])
@pytest.mark.parametrize(("text", "category"), [*((t, "date") for t in BIRTH_WRITTEN),
                                                *((t, "identifier") for t in ID_PIECES)])
def test_birth_date_and_id_digits_are_found_in_every_location(tmp_path: Path, text: str, category: str,
                                                              location: str) -> None:
    src = _source(tmp_path)
    rel = _release(tmp_path, nested="9X0001")
    where = _plant(rel, location, text)
    result = phi.run(rel, source_dir=src, policy=POLICY, ocr=False)
    assert result.status == "fail"
    ev = [f.evidence for f in result.findings if f.metric.startswith("phi_token")]
    assert any(e.startswith(f"img.dcm: {where} holds a {category} token") for e in ev), ev
    assert result.findings[0].value == 1  # one planted piece, one hit (not again as a piece of itself)
    assert text not in str(result.to_dict())
    assert result.examined["elements"] > 10 and result.examined["files"] == 1


def test_every_token_of_the_cleaners_is_found_by_the_audit(tmp_path: Path) -> None:
    """The audit is never weaker than the cleaners: each token guards.deid.actions would scrub from free text and
    each token guards.deid.pixel_phi would match in burned-in text, planted alone into a released free-text
    element, fails the check."""
    from pydicom import dcmread

    from guards.deid.actions import identifier_tokens
    from guards.deid.pixel_phi import header_tokens

    src = _source(tmp_path)
    source = dcmread(src / "p1" / "a.dcm")
    tokens = {t.decode("latin-1") for t in identifier_tokens(source)} | header_tokens(source)
    assert {"17-MAR-1961", "17MAR1961", "448120", "PID448120"} <= tokens
    rel = _release(tmp_path, nested="9X0001")
    missed = []
    for token in sorted(tokens):
        ds = dcmread(rel / "img.dcm")
        ds.ImageComments = f"see {token} here"
        ds.save_as(rel / "img.dcm")
        result = phi.run(rel, source_dir=src, policy=POLICY, ocr=False)
        if not any("ImageComments" in f.evidence for f in result.findings):
            missed.append(token)
    assert not missed, f"{len(missed)} of {len(tokens)} cleaner tokens pass the audit"


def test_deidentified_samples_pass_without_ocr_and_report_what_was_examined(sample_corpus, key,  # type: ignore[no-untyped-def]
                                                                             tmp_path: Path) -> None:
    """No false positive from the wider vocabulary on a de-identified generated corpus (headers and bytes)."""
    from guards.deid import deidentify_tree

    deidentify_tree(sample_corpus.root, tmp_path / "deid", policy=POLICY, key=key)
    result = phi.run(tmp_path / "deid", source_dir=sample_corpus.root, policy=POLICY, ocr=False)
    assert result.status == "pass", [f.evidence for f in result.findings[:10]]
    ex = result.examined
    assert ex["files"] > 0 and ex["dicom_files"] > 0 and ex["elements"] > 10 * ex["dicom_files"]
    assert ex["bytes"] > 0 and ex["tokens"] > 0 and ex["source_files"] > 0
    assert result.details["tokens_by_category"]["date"] > 0 and result.details["tokens_by_category"]["identifier"]
