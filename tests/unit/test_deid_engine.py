"""deidentify_dataset beyond single rows: private elements, repeating groups, sequences at any depth, attributes
the table does not list, the de-identification method attributes, dates per patient and pixel cleaning."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from guards.deid import InstanceQuarantined, deidentify_dataset
from guards.deid.pseudonyms import date_offset_days, pseudo_uid
from guards.errors import GuardError
from guards.keys import PseudonymKey
from guards.policy import DeidSection, ReleasePolicy

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def _policy(**options: object) -> ReleasePolicy:
    options.setdefault("clean_pixel_data", False)
    return ReleasePolicy(deid=DeidSection(**options))  # type: ignore[arg-type]


def _ds(patient_id: str = "MRN-1", name: str = "Smithson^Alice") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.100"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "HOSP_PACS"
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = "1.2.3.4.100"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.StudyDate = "20210610"
    ds.Modality = "CT"
    return ds


def _roundtrip(ds: Dataset) -> Dataset:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return dcmread(buf)


def test_private_elements_removed_by_default(key: PseudonymKey) -> None:
    ds = _ds()
    block = ds.private_block(0x0009, "ACME HOSPITAL", create=True)
    block.add_new(0x01, "LO", "Smithson Alice MRN-1")
    out = _roundtrip(deidentify_dataset(ds, policy=_policy(), key=key))
    assert not [e for e in out if e.tag.is_private]


def test_retain_safe_private_keeps_only_the_safe_list(key: PseudonymKey) -> None:
    ds = _ds()
    siemens = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    siemens.add_new(0x0C, "IS", "1000")  # B_value: on the safe list
    siemens.add_new(0x08, "CS", "SMITHSON")  # not on the list
    other = ds.private_block(0x0011, "ACME HOSPITAL", create=True)
    other.add_new(0x01, "LO", "Alice")
    out = _roundtrip(deidentify_dataset(ds, policy=_policy(retain_safe_private=True), key=key))
    private = {e.tag: e.value for e in out if e.tag.is_private}
    assert private == {0x00190010: "SIEMENS MR HEADER", 0x0019100C: "1000"}
    assert "113111" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]


def test_nested_phi_is_cleaned_at_any_depth(key: PseudonymKey) -> None:
    ds = _ds()
    inner = Dataset()
    inner.PatientName = "Smithson^Alice"  # PN inside a sequence: X at any depth
    inner.ReferencedSOPInstanceUID = "1.2.3.4.200"
    inner.private_block(0x0029, "ACME", create=True).add_new(0x01, "LO", "secret")
    middle = Dataset()
    middle.ReferencedImageSequence = Sequence([inner])  # X/Z/U* in CT: removed, wherever it is
    middle.SourceImageSequence = Sequence([inner])
    middle.ReferringPhysicianName = "House^Greg"
    middle.CodeMeaning = "scan of Smithson"  # unlisted text: the patient's name is scrubbed
    outer = Dataset()
    outer.ReferencedPatientSequence = Sequence([middle])  # X at the top level
    ds.RequestAttributesSequence = Sequence([middle])  # X
    ds.AnatomicRegionSequence = Sequence([middle])  # unlisted SQ: kept, cleaned inside
    ds.ReferencedStudySequence = Sequence([outer])  # X/Z, Type 3 in CT: removed
    out = deidentify_dataset(ds, policy=_policy(), key=key)
    for gone in ("RequestAttributesSequence", "ReferencedStudySequence"):
        assert gone not in out
    item = out.AnatomicRegionSequence[0]
    assert "ReferringPhysicianName" in item and item.ReferringPhysicianName == ""  # Z
    assert "ReferencedImageSequence" not in item
    assert item.CodeMeaning == "scan of ***"
    raw = _roundtrip(out)
    text = str(raw)
    assert "Smithson" not in text and "House" not in text and "secret" not in text


def test_uids_inside_kept_sequences_are_pseudonymised(key: PseudonymKey) -> None:
    ds = _ds()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR: nothing special, sequences recursed alike
    ref = Dataset()
    ref.ReferencedSOPClassUID = CT_IMAGE
    ref.ReferencedSOPInstanceUID = "1.2.3.4.300"
    frame = Dataset()
    frame.DerivationImageSequence = Sequence([Dataset()])
    frame.DerivationImageSequence[0].SourceImageSequence = Sequence([ref])
    ds.SharedFunctionalGroupsSequence = Sequence([frame])
    out = deidentify_dataset(ds, policy=_policy(), key=key)
    deep = out.SharedFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert "SourceImageSequence" not in deep  # X/Z/U*, not typed for this IOD: removed, at depth 3
    ds2 = _ds()
    item = Dataset()
    item.ReferencedSOPClassUID = CT_IMAGE
    item.ReferencedSOPInstanceUID = "1.2.3.4.300"
    ds2.ReferencedInstanceSequence = Sequence([item])  # unlisted SQ (kept): the UID inside gets U
    out2 = deidentify_dataset(ds2, policy=_policy(), key=key)
    assert out2.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == pseudo_uid(key, "1.2.3.4.300")
    assert out2.ReferencedInstanceSequence[0].ReferencedSOPClassUID == CT_IMAGE  # a class UID identifies no one


def test_unlisted_attributes_follow_the_documented_rule(key: PseudonymKey) -> None:
    ds = _ds()
    ds.add_new(0x00400006, "PN", "Nurse^Ratched")  # Scheduled Performing Physician's Name: listed (X)
    ds.add_new(0x0070031A, "UI", "1.2.3.4.5.999")  # Fiducial UID: unlisted UI, not registered -> pseudonym
    ds.add_new(0x00081150, "UI", CT_IMAGE)  # Referenced SOP Class UID: registered -> kept
    ds.add_new(0x00189004, "CS", "RESEARCH")  # Content Qualification: unlisted CS -> kept
    ds.add_new(0x00080070, "LO", "Smithson Medical Devices")  # Manufacturer: unlisted LO -> scrubbed
    ds.add_new(0x00080000, "UL", 100)  # group length: removed
    ds.add_new(0x00230010, "LO", "ACME")  # private creator without elements: removed
    ds.add_new(0x00211001, "LO", "x")  # private element without creator: removed
    out = deidentify_dataset(ds, policy=_policy(), key=key)
    assert 0x00400006 not in out
    assert out[0x0070031A].value == pseudo_uid(key, "1.2.3.4.5.999")
    assert out[0x00081150].value == CT_IMAGE
    assert out.ContentQualification == "RESEARCH"
    assert out.Manufacturer == "*** Medical Devices"
    assert 0x00080000 not in out and 0x00230010 not in out and 0x00211001 not in out


def test_unknown_public_tag_removed(key: PseudonymKey) -> None:
    ds = _ds()
    ds.add_new(0x00091234 - 0x00010000, "LO", "unknown even tag")  # (0008,1234): not in the dictionary
    out = deidentify_dataset(ds, policy=_policy(), key=key)
    assert 0x00081234 not in out


@pytest.mark.parametrize(
    ("clean_graphics", "kept"),
    [
        (False, False),  # Basic Profile: curves, overlay comments and overlay data removed (X)
        (True, True),  # Clean Graphics Option: C, kept (text cleaned)
    ],
)
def test_curves_and_overlays(clean_graphics: bool, kept: bool, key: PseudonymKey) -> None:
    ds = _ds()
    ds.add_new(0x60000010, "US", 2)  # Overlay Rows
    ds.add_new(0x60000011, "US", 8)  # Overlay Columns
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60003000, "OW", b"\x00\xff")
    ds.add_new(0x60024000, "LT", "drawn by Smithson")
    ds.add_new(0x50000022, "LO", "curve of Smithson")  # Curve Description
    ds.add_new(0x50003000, "OW", b"\x01\x00")  # Curve Data
    out = deidentify_dataset(ds, policy=_policy(clean_graphics=clean_graphics), key=key)
    groups = {t for t in out.keys() if (t >> 16) & 0xFF00 in (0x5000, 0x6000)}
    if not kept:
        assert groups == set()
    else:
        assert out[0x60003000].value == b"\x00\xff" and out[0x60000010].value == 2
        assert out[0x60024000].value == "drawn by ***"
        assert out[0x50000022].value == "curve of ***" and out[0x50003000].value == b"\x01\x00"
        assert "113103" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]


def test_method_attributes_and_file_meta(key: PseudonymKey) -> None:
    policy = _policy(retain_device_identity=True, clean_descriptors=True, retain_longitudinal="full")
    out = _roundtrip(deidentify_dataset(_ds(), policy=policy, key=key))
    assert out.PatientIdentityRemoved == "YES"
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113105", "113106", "113109"]
    assert all(i.CodingSchemeDesignator == "DCM" for i in out.DeidentificationMethodCodeSequence)
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert out.StudyDate == "20210610"  # full dates kept
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID == pseudo_uid(key, "1.2.3.4.100")
    assert "SourceApplicationEntityTitle" not in out.file_meta
    off = deidentify_dataset(_ds(), policy=_policy(retain_longitudinal="off"), key=key)
    assert off.LongitudinalTemporalInformationModified == "REMOVED" and off.StudyDate == ""


def test_date_shift_is_per_patient(key: PseudonymKey) -> None:
    """One offset per patient (E.3.6): intervals within a patient kept, offsets differ between patients."""
    policy = _policy()
    shifts = {}
    for pid in ("P-1", "P-2", "P-3", "P-4"):
        first = deidentify_dataset(_ds(pid), policy=policy, key=key)
        later = _ds(pid)
        later.StudyDate = "20220101"
        later.AcquisitionDateTime = "20220101083000.000000-0500"
        second = deidentify_dataset(later, policy=policy, key=key)
        import datetime as dt

        d1 = dt.datetime.strptime(first.StudyDate, "%Y%m%d").date()
        d2 = dt.datetime.strptime(second.StudyDate, "%Y%m%d").date()
        assert (d2 - d1).days == (dt.date(2022, 1, 1) - dt.date(2021, 6, 10)).days  # interval kept
        assert second.AcquisitionDateTime.endswith("083000.000000-0500")  # time and zone kept
        assert second.AcquisitionDateTime[:8] == second.StudyDate
        shifts[pid] = (d1 - dt.date(2021, 6, 10)).days
        assert shifts[pid] == date_offset_days(key, pid, low=-730, high=-1)
    assert len(set(shifts.values())) == 4  # different across patients
    assert all(-730 <= s <= -1 for s in shifts.values())


@dataclass
class _Outcome:
    action: str
    reason: str
    boxes: list[tuple[int, int, int, int]]
    ocr_words_examined: int


def test_pixel_cleaning_quarantine_is_raised(key: PseudonymKey, monkeypatch: pytest.MonkeyPatch) -> None:
    """clean_pixel_data plugs in guards.deid.pixels.clean_pixel_data; "quarantine" stops the instance."""
    fake = types.ModuleType("guards.deid.pixels")
    seen: list[object] = []

    def clean_pixel_data(ds: Dataset, *, policy: object, cache: object = None) -> _Outcome:
        seen.append(policy)
        return _Outcome("quarantine", "burned-in text could not be removed", [], 3)

    fake.clean_pixel_data = clean_pixel_data  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "guards.deid.pixels", fake)
    ds = _ds()
    ds.Rows = ds.Columns = 1
    ds.BitsAllocated = 8
    ds.PixelData = b"\x00\x00"
    policy = ReleasePolicy(deid=DeidSection(clean_pixel_data=True))
    with pytest.raises(InstanceQuarantined, match="burned-in text"):
        deidentify_dataset(ds, policy=policy, key=key)
    assert seen == [policy.pixels]
    assert ds.PatientName != "Smithson^Alice" and ds.PatientIdentityRemoved == "YES"  # headers cleaned anyway


def test_pixel_cleaning_missing_module_is_a_clear_error(key: PseudonymKey, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "guards.deid.pixels", None)
    ds = _ds()
    ds.PixelData = b"\x00\x00"
    with pytest.raises(GuardError, match="clean_pixel_data = false"):
        deidentify_dataset(ds, policy=ReleasePolicy(), key=key)


def test_identifiers_in_free_text_are_found_and_scrubbed_case_insensitively(key: PseudonymKey) -> None:
    """Context.hit / scrub (substring tests, per-token patterns): every occurrence of every identifier, in any
    case, longest first, in kept text; text without one is left as it was."""
    from guards.deid.actions import Context, identifier_tokens
    from guards.deid.profile import compile_profile

    ds = Dataset()
    ds.PatientName = "Smithers^Anna"
    ds.PatientID = "MRN-00417"
    ds.InstitutionName = "St. Mungo Hospital"
    tokens = identifier_tokens(ds)
    ctx = Context(key=key, profile=compile_profile(DeidSection(), ""), uid_root="2.25", offset_days=0,
                  tokens=tokens, crosswalk=None)
    assert ctx.hit(b"seen by SMITHERS at st. mungo hospital") and ctx.hit(b"mrn-00417")
    assert not ctx.hit(b"routine brain MRI, no findings")
    text = "anna SMITHERS (mrn-00417), St. Mungo Hospital; Smithers again"
    assert ctx.scrub(text, replacement="***") == "*** *** (***), ***; *** again"
    assert ctx.scrub("routine brain MRI", replacement="***") == "routine brain MRI"
    # nothing of the identifiers is left, in any case
    assert not ctx.hit(ctx.scrub(text, replacement="***").encode())
