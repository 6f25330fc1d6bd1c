"""Tests generated from Table E.1-1: every row gets the action the standard gives it (PS3.15 E.1.1, E.3).

Each case puts one attribute, with a value of its VR, into a small CT instance, de-identifies it under the Basic
Profile or under one option, and checks what became of the attribute. The expected action is read from the
pinned table row by this test itself (not by the engine's compiled profile): the option column where present,
else the Basic Profile code; combined codes are resolved with the CT Types written out below.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from guards.deid import deidentify_dataset
from guards.deid.dates import shift_da, shift_dt
from guards.deid.pseudonyms import date_offset_days, pseudo_patient_id, pseudo_patient_name, pseudo_uid
from guards.deid.table import load_table
from guards.keys import PseudonymKey
from guards.policy import DeidSection, ReleasePolicy

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
PATIENT_ID = "MRN-778899"
# Attributes with a combined code that are Type 2 in the CT Image IOD (PS3.3: Content Date/Time 2C in General
# Image, Contrast/Bolus Agent 2 in Contrast/Bolus); every other combined-code attribute is Type 3 or absent in CT.
CT_TYPE_2 = {0x00080023, 0x00080033, 0x00180010}
# Option column -> the DeidSection switches that turn it on (everything else at the Basic Profile).
OPTION_POLICY: dict[str, dict[str, Any]] = {
    "rtnSafePrivOpt": {"retain_safe_private": True},
    "rtnUIDsOpt": {"retain_uids": True},
    "rtnDevIdOpt": {"retain_device_identity": True},
    "rtnInstIdOpt": {"retain_institution_identity": True},
    "rtnPatCharsOpt": {"retain_patient_characteristics": True},
    "rtnLongFullDatesOpt": {"retain_longitudinal": "full"},
    "rtnLongModifDatesOpt": {"retain_longitudinal": "modified"},
    "cleanDescOpt": {"clean_descriptors": True},
    "cleanStructContOpt": {"clean_structured_content": True},
    "cleanGraphOpt": {"clean_graphics": True},
}
TEXT = "Doe clinic note"  # "Doe" is the patient's family name: cleaning must take it out
VALUES: dict[str, Any] = {
    "PN": "Doe^Jane",
    "DA": "20200315",
    "DT": "20200315101010.25+0100",
    "TM": "101010",
    "UI": "1.2.3.4.5.6.7",
    "AS": "045Y",
    "CS": "DOE",
    "DS": "1.5",
    "IS": "3",
    "AE": "DOE_AE1",
    "UR": "http://example.org/doe",
    "US": 7,
    "OB": b"\x01\x02",
    "UN": b"\x01\x02",
}


def _rows() -> list[dict[str, Any]]:
    return [r for r in load_table()["rows"] if len(r["id"]) == 8 and "x" not in r["id"]]


def _cases() -> list[Any]:
    cases = []
    for row in _rows():
        cases.append(pytest.param(row, None, id=f"{row['id']}-basic"))
        for column in OPTION_POLICY:
            if column in row:
                cases.append(pytest.param(row, column, id=f"{row['id']}-{column}"))
    return cases


def _expected(row: dict[str, Any], column: str | None) -> str:
    code: str = row[column] if column else row["basicProfile"]
    if "/" not in code:
        return code
    choices = code.split("/")
    tag = int(row["id"], 16)
    if tag in CT_TYPE_2 and "Z" in choices:
        return "Z"
    return "X" if "X" in choices else "Z"  # Type 3 / not in the CT IOD: remove when allowed


def _base() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.999.1"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = "1.2.3.999.1"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = PATIENT_ID
    return ds


def _value(vr: str) -> Any:
    if vr == "SQ":
        item = Dataset()
        item.CodeValue = "T-1"
        return Sequence([item])
    return VALUES.get(vr, TEXT)


def _policy(column: str | None) -> ReleasePolicy:
    options: dict[str, Any] = {"retain_longitudinal": "off", "clean_pixel_data": False}
    if column:
        options.update(OPTION_POLICY[column])
    return ReleasePolicy(deid=DeidSection(**options))


@pytest.mark.parametrize(("row", "column"), _cases())
def test_row_gets_the_standard_action(row: dict[str, Any], column: str | None, key: PseudonymKey) -> None:
    tag = int(row["id"], 16)
    vr = dictionary_VR(tag).split(" ")[0]
    ds = _base()
    original = _value(vr)
    target = ds.file_meta if tag >> 16 == 0x0002 else ds
    target.add_new(tag, vr, original)
    policy = _policy(column)
    expected = _expected(row, column)
    out = deidentify_dataset(ds, policy=policy, key=key)
    target = out.file_meta if tag >> 16 == 0x0002 else out

    if tag in (0x00100010, 0x00100020):  # PatientName Z, PatientID Z/D: keyed pseudonyms (a dummy value)
        want = pseudo_patient_name(key, original) if tag == 0x00100010 else pseudo_patient_id(key, original)
        assert target[tag].value == want
        return
    if tag == 0x00080018 or tag == 0x00020003:  # SOP Instance UID, and its file meta copy follows it
        sop = original if tag == 0x00080018 else "1.2.3.999.1"
        want = sop if expected == "K" else pseudo_uid(key, sop)
        assert out.SOPInstanceUID == out.file_meta.MediaStorageSOPInstanceUID == want
        return
    if expected == "X":
        assert tag not in target, f"{row['name']} should be removed"
        return
    assert tag in target, f"{row['name']} should be present ({expected})"
    value = target[tag].value
    if expected == "Z":
        assert value in ("", None, b"") or (vr == "SQ" and len(value) == 0)
    elif expected == "K":
        assert value == original if vr != "SQ" else len(value) == 1
    elif expected == "U":
        assert value == pseudo_uid(key, original)
    elif expected == "D":
        if vr == "SQ":
            assert len(value) == 1  # a dummy sequence: items kept, cleaned by the same rules
        elif vr == "UI":
            assert value == pseudo_uid(key, original)
        else:
            assert value not in ("", None, b"") and value != original
    elif expected == "C":
        _assert_cleaned(vr, original, value, policy, key)
    else:
        pytest.fail(f"unexpected action {expected!r}")


def _assert_cleaned(vr: str, original: Any, value: Any, policy: ReleasePolicy, key: PseudonymKey) -> None:
    if vr in ("DA", "DT") and policy.deid.retain_longitudinal == "modified":
        low, high = policy.deid.date_shift_days
        days = date_offset_days(key, PATIENT_ID, low=low, high=high)
        assert value == (shift_da(original, days) if vr == "DA" else shift_dt(original, days))
        assert value != original
    elif vr == "SQ":
        assert len(value) == 1
    elif vr in ("PN", "LO", "SH", "ST", "LT", "UT", "UC", "AE", "CS", "UR"):
        assert "doe" not in str(value).lower() and ("***" in str(value) or (vr == "CS" and value == "XXX"))
    else:
        assert value == original


@pytest.mark.parametrize(
    ("code", "attribute_type", "expected"),
    [
        ("X/Z", 1, "Z"),  # no D offered: Z is the closest valid choice
        ("X/Z", 2, "Z"),
        ("X/Z", 3, "X"),
        ("X/D", 1, "D"),
        ("X/D", 2, "D"),  # Type 2 needs the attribute: D is the only choice that keeps it
        ("X/D", None, "X"),
        ("Z/D", 1, "D"),
        ("Z/D", 3, "Z"),  # X not offered: Z is the most protective
        ("X/Z/D", 1, "D"),
        ("X/Z/D", 2, "Z"),
        ("X/Z/D", 3, "X"),
        ("X/Z/U*", 1, "K"),  # keep the sequence; the UIDs inside get U from their own rows
        ("X/Z/U*", 2, "Z"),
        ("X/Z/U*", None, "X"),
        ("D", 3, "D"),  # single codes are not resolved
    ],
)
def test_combined_codes_resolve_by_type(code: str, attribute_type: int | None, expected: str) -> None:
    from guards.deid.iod import resolve_combined

    assert resolve_combined(code, attribute_type) == expected


def test_type_1_in_enhanced_mr_keeps_acquisition_datetime(key: PseudonymKey) -> None:
    """Acquisition DateTime (X/Z/D) is Type 1 in the Enhanced MR Image IOD: a dummy, not removal."""
    ds = _base()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    ds.AcquisitionDateTime = "20200315101010"
    out = deidentify_dataset(ds, policy=_policy(None), key=key)
    assert out.AcquisitionDateTime == "19000101000000"
    ds = _base()
    ds.AcquisitionDateTime = "20200315101010"
    assert "AcquisitionDateTime" not in deidentify_dataset(ds, policy=_policy(None), key=key)  # Type 3 in CT


def test_case_count_covers_every_row() -> None:
    cases = _cases()
    assert len({c.values[0]["id"] for c in cases}) == 621 - 4  # all but the private and 3 repeating-group rows
    assert len(cases) > 1200
