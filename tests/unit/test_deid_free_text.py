"""Issue 16, SR free text: TextValue in ContentSequence (and every kept text) is scrubbed with the whole patient
vocabulary (guards.deid.vocabulary, guards.deid.actions.patient_vocabulary): identifiers from anywhere in the
dataset (OtherPatientIDsSequence, SR observers and person names), decoded with the file's own Specific Character
Set, native-script names of any length, and every date of the patient in every written form. Clean Structured
Content (PS3.15 E.3.3) keeps the SR structure and cleans its values; without it the content goes.

Carriers are real third-party files read from disk (guards.testdata): pydicom's test-SR.dcm (OFFIS DCMTK
Comprehensive SR, verified by "Riesmeier^Jörg") and pydicom's character-set files chrH31.dcm (ISO 2022 IR 87),
chrX1.dcm (ISO_IR 192), chrX2.dcm (GB18030), chrRuss.dcm (ISO_IR 144), each with its own native-script
PatientName; the PHI a report would carry is planted into their text as a reader can see below."""

from __future__ import annotations

import shutil
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from guards.checks import phi
from guards.deid import deidentify_dataset
from guards.deid.actions import SCRUB, SCRUB_FALLBACK
from guards.deid.vocabulary import native_parts
from guards.deid.writer import encode_part10
from guards.keys import PseudonymKey
from guards.policy import DeidSection, ReleasePolicy
from guards.testdata import pydicom_test_dir

SR = pydicom_test_dir() / "test-SR.dcm"
CHARSETS = pydicom_test_dir().parent / "charset_files"
E33_OFF = ReleasePolicy(deid=DeidSection(clean_pixel_data=False))
E33_ON = ReleasePolicy(deid=DeidSection(clean_pixel_data=False, clean_structured_content=True))


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "99_OFFIS_DCMTK", meaning
    return item


def _text_item(text: str) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.ConceptNameCodeSequence = Sequence([_code("1234", "Text Code")])
    item.TextValue = text
    return item


def _plant(ds: Dataset, *texts: str) -> None:
    """Append TEXT content items (TextValue) to the report's root ContentSequence."""
    if "ContentSequence" not in ds:
        ds.ContentSequence = Sequence()
    for text in texts:
        ds.ContentSequence.append(_text_item(text))


def _reread(ds: Dataset) -> Dataset:
    """Write and read back, as a file arrives (raw, undecoded elements)."""
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return dcmread(BytesIO(buf.getvalue()))


def _deid(ds: Dataset, key: PseudonymKey, policy: ReleasePolicy = E33_ON) -> Dataset:
    out = deidentify_dataset(_reread(ds), policy=policy, key=key)
    return dcmread(BytesIO(encode_part10(out)))


def _texts(ds: Dataset) -> list[str]:
    """Every TextValue of the content tree, decoded with the file's character sets."""
    out: list[str] = []
    for item in ds.get("ContentSequence", []):
        if "TextValue" in item:
            out.append(str(item.TextValue))
        out.extend(_texts(item))
    return out


def test_an_observer_named_only_in_the_sr_is_scrubbed_from_its_text(key: PseudonymKey) -> None:
    """test-SR.dcm is verified by "Riesmeier^Jörg" (VerifyingObserverSequence > VerifyingObserverName); a PNAME
    content item names the reporting radiologist (ContentSequence > PersonName). Neither is a top-level
    attribute; the report text naming them keeps neither name."""
    ds = dcmread(SR)
    assert str(ds.VerifyingObserverSequence[0].VerifyingObserverName) == "Riesmeier^Jörg"
    pname = Dataset()
    pname.RelationshipType, pname.ValueType = "HAS OBS CONTEXT", "PNAME"
    pname.ConceptNameCodeSequence = Sequence([_code("121008", "Person Observer Name")])
    pname.PersonName = "Kowalczyk^Agnieszka"
    ds.ContentSequence.append(pname)
    _plant(ds, "Verified by Jörg Riesmeier.", "Discussed with Dr. KOWALCZYK (Agnieszka) by phone.")
    texts = _texts(_deid(ds, key))
    joined = "\n".join(texts).casefold()
    for name in ("riesmeier", "jörg", "kowalczyk", "agnieszka"):
        assert name not in joined
    assert "Verified by *** ***." in texts and "Discussed with Dr. *** (***) by phone." in texts


def test_an_mrn_from_other_patient_ids_sequence_is_scrubbed_from_the_text(key: PseudonymKey) -> None:
    """The patient's MRN at another hospital sits only in OtherPatientIDsSequence > PatientID."""
    ds = dcmread(SR)
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID = "MRN-7730418", "Hospital B"
    ds.OtherPatientIDsSequence = Sequence([other])
    _plant(ds, "Compared with prior at Hospital B (MRN-7730418); see also 7730418.")
    texts = _texts(_deid(ds, key))
    assert not any("7730418" in t for t in texts)
    assert "Compared with prior at *** (***); see also ***." in texts


def test_every_date_of_the_patient_in_every_written_form_is_scrubbed(key: PseudonymKey) -> None:
    """Birth date 19610317 written 03/17/1961 (US) and 1961-03-17 (ISO); the report's ContentDate 20010213
    and the content item's Date 20001206 written as a clinician would. Other dates (a reference range's year,
    a guideline's date) are not the patient's and stay."""
    ds = dcmread(SR)
    ds.PatientBirthDate = "19610317"
    _plant(
        ds,
        "DOB 03/17/1961 (1961-03-17), born March 17, 1961.",
        "Report dictated 02/13/2001, reviewed 2001-02-13; prior 6 Dec 2000 and 12/06/2000.",
        "Per the 12/31/1999 guideline.",
    )
    texts = _texts(_deid(ds, key))
    assert f"DOB {SCRUB} ({SCRUB}), born {SCRUB}." in texts
    assert f"Report dictated {SCRUB}, reviewed {SCRUB}; prior {SCRUB} and {SCRUB}." in texts
    assert "Per the 12/31/1999 guideline." in texts


# The carrier, a sentence of ordinary text in its script that must survive, and where the native name goes.
NATIVE = [
    ("chrH31.dcm", "ISO 2022 IR 87", "所見なし"),
    ("chrX1.dcm", "ISO_IR 192", "肺结节"),
    ("chrX2.dcm", "GB18030", "肺结节"),
    ("chrRuss.dcm", "ISO_IR 144", "без патологии"),
]


@pytest.mark.parametrize(("carrier", "charset", "ordinary"), NATIVE, ids=[n[0] for n in NATIVE])
def test_native_script_patient_names_are_scrubbed_from_sr_text(
    key: PseudonymKey, carrier: str, charset: str, ordinary: str
) -> None:
    """The carrier's own PatientName (chrH31: Yamada^Tarou=山田^太郎=やまだ^たろう; chrX1/chrX2: Wang^XiaoDong=
    王^小東 / 王^小东, a one-character family name; chrRuss: Люкceмбypг), each native group written into an SR
    TextValue in the file's own Specific Character Set, run together as people write them. Every native piece
    goes, of any length (王); the ordinary words around it stay."""
    ds = dcmread(CHARSETS / carrier)
    assert charset in (ds.SpecificCharacterSet if isinstance(ds.SpecificCharacterSet, str)
                       else list(ds.SpecificCharacterSet))
    name = str(ds.PatientName)
    groups = [g.replace("^", "") for g in name.split("=") if not g.isascii()]
    assert groups, f"{carrier} has a native-script name"
    _plant(ds, *(f"{g}: {ordinary}" for g in groups))
    texts = _texts(_deid(ds, key))
    pieces = native_parts(name)
    assert min(len(p) for p in pieces) <= 2 or carrier == "chrRuss.dcm"  # short CJK names are in the vocabulary
    for text in texts:
        assert not any(p in text for p in pieces), text
    assert texts == [f"{SCRUB}: {ordinary}"] * len(groups)


def test_without_clean_structured_content_the_sr_content_goes_and_with_it_values_are_cleaned(
    key: PseudonymKey,
) -> None:
    """PS3.15 E.3.3 on test-SR.dcm. Off (Basic Profile, ContentSequence D): every TextValue becomes a dummy; the
    tree (relationships, value types, codes) stays, so the document is still an SR. On (C): structure and
    ordinary text stay ("A mass of"), identifiers in it are scrubbed."""
    ds = dcmread(SR)
    _plant(ds, "Seen with Jörg Riesmeier.")

    def shape(d: Dataset) -> list[tuple[str, str, int]]:
        return [(str(i.get("RelationshipType", "")), str(i.get("ValueType", "")), len(shape(i)))
                for i in d.get("ContentSequence", [])]

    off = _deid(ds, key, E33_OFF)
    assert shape(off) == shape(ds)
    assert _texts(off) and set(_texts(off)) == {"ANONYMIZED"}
    assert off.ContentSequence[1].ContentSequence[0].ConceptNameCodeSequence[0].CodeMeaning == "Text Code"

    on = _deid(ds, key, E33_ON)
    assert shape(on) == shape(ds)
    assert "A mass of" in _texts(on) and "was detected." in _texts(on)
    assert _texts(on)[-1] == "Seen with *** ***."
    assert "1.2.3.4.5" not in {str(i.get("UID", "")) for i in on.ContentSequence}  # UIDREF keyed


def _source_and_release(tmp_path: Path, carrier: Path, key: PseudonymKey, text: str) -> tuple[Path, Path]:
    src, rel = tmp_path / "src", tmp_path / "rel"
    src.mkdir()
    rel.mkdir()
    shutil.copy(carrier, src / "a.dcm")
    out = _deid(dcmread(carrier), key)
    out.ImageComments = text  # what a cleaner weaker than the audit would have left
    out.save_as(rel / "a.dcm")
    return src, rel


@pytest.mark.parametrize("text", ["所見: 山田太郎", "患者 王 先生"], ids=["chrH31", "chrX1"])
def test_the_audit_finds_native_script_names_the_cleaner_scrubs(tmp_path: Path, key: PseudonymKey,
                                                                 text: str) -> None:
    """guards.checks.phi is never weaker than the cleaner: a native-script name piece (山田, 太郎, 王) left in a
    released text fails the residual-PHI check; the clean release passes."""
    carrier = CHARSETS / ("chrH31.dcm" if "山田" in text else "chrX1.dcm")
    src, rel = _source_and_release(tmp_path, carrier, key, text)
    result = phi.run(rel, source_dir=src, policy=E33_ON, ocr=False)
    assert any("ImageComments" in f.evidence for f in result.findings), result.summary
    ds = dcmread(rel / "a.dcm")
    ds.ImageComments = "所見なし"
    ds.save_as(rel / "a.dcm")
    clean = phi.run(rel, source_dir=src, policy=E33_ON, ocr=False)
    assert not any("ImageComments" in f.evidence for f in clean.findings), clean.summary


def test_the_audit_finds_an_sr_observer_the_cleaner_scrubs(tmp_path: Path, key: PseudonymKey) -> None:
    """An observer named only in the SR (VerifyingObserverName Riesmeier^Jörg), left in a released text."""
    src, rel = _source_and_release(tmp_path, SR, key, "verified by Riesmeier")
    result = phi.run(rel, source_dir=src, policy=E33_ON, ocr=False)
    assert any("ImageComments" in f.evidence and f.evidence for f in result.findings), result.summary


def test_text_with_bytes_its_character_set_cannot_decode_becomes_the_fallback(key: PseudonymKey) -> None:
    """chrX1.dcm (ISO_IR 192, UTF-8) names its patient Wang^XiaoDong=王^小東. A report text holds the name in UTF-8
    and two bytes that are not UTF-8 (an identifier written in another encoding would look so): the name alone
    scrubbed would leave the undecodable bytes, which no text search can read, so the whole value is replaced by
    the fallback even though something else in it changed."""
    ds = dcmread(CHARSETS / "chrX1.dcm")
    item = _text_item("placeholder")
    item["TextValue"].value = "所見: 王 ".encode() + b"\xb2\xe9" + b" 1234"
    _plant(ds)
    ds.ContentSequence.append(item)
    texts = _texts(_deid(ds, key))
    assert texts == [SCRUB_FALLBACK]
