"""De-identify one dataset: PS3.15 Annex E Basic Application Level Confidentiality Profile and its options.

One pass over the dataset (and every sequence item, at any depth) with one dict lookup per element
(:mod:`guards.deid.profile`). Elements that are kept are never decoded, so Pixel Data and other kept bulk data
stay byte-exact. Actions (PS3.15 E.1.1):

- X remove; Z zero length (a sequence becomes empty); K keep (sequences are still cleaned inside);
- D a dummy consistent with the VR (a sequence keeps its items, cleaned by the same rules);
- U a keyed UID (:func:`pseudonyms.pseudo_uid`), the same in every file and run for one key;
- C clean: dates are shifted by the patient's offset (Modified Dates, E.3.6), times kept; text has the
  instance's identifiers (names, IDs, addresses, ...) replaced by ``***``; sequences are cleaned inside.

After the pass, PatientIdentityRemoved, DeidentificationMethod, DeidentificationMethodCodeSequence (CID 7050)
and LongitudinalTemporalInformationModified are set (PS3.15 E.1.1 and PS3.3 C.7.1.1), and the file meta's
MediaStorageSOPInstanceUID follows the new SOPInstanceUID.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary

from guards.deid.dates import shift_da, shift_dt
from guards.deid.private import is_safe_private
from guards.deid.profile import DICT_VR, PATIENT_ID, PATIENT_NAME, SQ_TAGS, TEXT_VRS, CompiledProfile, compile_profile
from guards.deid.pseudonyms import date_offset_days, pseudo_patient_id, pseudo_patient_name, pseudo_uid
from guards.errors import GuardError
from guards.keys import PseudonymKey
from guards.policy import ReleasePolicy

log = logging.getLogger(__name__)

SCRUB = "***"
SCRUB_CS = "XXX"  # CS allows only upper case letters, digits, space and underscore (PS3.5 6.2)
DUMMIES: dict[str, object] = {
    "AE": "ANONYMOUS",
    "AS": "000D",
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "PN": "ANONYMOUS",
    "SH": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "TM": "000000",
    "UC": "ANONYMIZED",
    "UT": "ANONYMIZED",
    "UR": "http://anonymized.invalid",
    "FL": 0.0,
    "FD": 0.0,
    "SL": 0,
    "SS": 0,
    "UL": 0,
    "US": 0,
    "SV": 0,
    "UV": 0,
    "AT": 0,
}
BINARY_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})
# CID 7050 De-identification Method codes (PS3.16), by policy option.
CID_7050: dict[str, str] = {
    "113100": "Basic Application Confidentiality Profile",
    "113101": "Clean Pixel Data Option",
    "113102": "Clean Recognizable Visual Features Option",
    "113103": "Clean Graphics Option",
    "113104": "Clean Structured Content Option",
    "113105": "Clean Descriptors Option",
    "113106": "Retain Longitudinal Temporal Information Full Dates Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113108": "Retain Patient Characteristics Option",
    "113109": "Retain Device Identity Option",
    "113110": "Retain UIDs Option",
    "113111": "Retain Safe Private Option",
    "113112": "Retain Institution Identity Option",
}
# Top-level attributes whose values are identifiers to scrub from free text that is kept or cleaned.
IDENTIFIER_TAGS: tuple[int, ...] = (
    0x00100010,  # PatientName
    0x00100020,  # PatientID
    0x00101000,  # OtherPatientIDs
    0x00101001,  # OtherPatientNames
    0x00101005,  # PatientBirthName
    0x00101060,  # PatientMotherBirthName
    0x00101040,  # PatientAddress
    0x00102154,  # PatientTelephoneNumbers
    0x00100030,  # PatientBirthDate
    0x00080050,  # AccessionNumber
    0x00200010,  # StudyID
    0x00080080,  # InstitutionName
    0x00080081,  # InstitutionAddress
    0x00081040,  # InstitutionalDepartmentName
    0x00080090,  # ReferringPhysicianName
    0x00081050,  # PerformingPhysicianName
    0x00081060,  # NameOfPhysiciansReadingStudy
    0x00081070,  # OperatorsName
    0x00321032,  # RequestingPhysician
    0x00081048,  # PhysiciansOfRecord
    0x00081010,  # StationName
    0x00181000,  # DeviceSerialNumber
)
_TOKEN_SPLIT = re.compile(r"[\^=\s,]+")
MIN_TOKEN = 3


class InstanceQuarantined(GuardError):
    """Raised by :func:`deidentify_dataset` when an instance must not be published (e.g. pixel cleaning said so).

    ``reason`` says why; :func:`guards.deid.deidentify_tree` records it in the manifest and quarantines the file.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Context:
    """Per-instance state of one pass: the key, the patient's date offset, the identifiers to scrub."""

    key: PseudonymKey
    profile: CompiledProfile
    uid_root: str
    offset_days: int
    tokens: list[str]
    crosswalk: dict[tuple[str, str], str] | None
    _scrubber: re.Pattern[str] | None = field(default=None, init=False)
    _scrubber_built: bool = field(default=False, init=False)

    def uid(self, value: str) -> str:
        original = value.strip(" \x00")
        if not original:
            return ""
        new = pseudo_uid(self.key, original, root=self.uid_root)
        if self.crosswalk is not None:
            self.crosswalk[("uid", original)] = new
        return new

    def scrub(self, text: str, *, replacement: str = SCRUB) -> str:
        if not self._scrubber_built:
            self._scrubber_built = True
            if self.tokens:
                alternatives = "|".join(re.escape(t) for t in sorted(set(self.tokens), key=len, reverse=True))
                self._scrubber = re.compile(alternatives, re.IGNORECASE)
        return text if self._scrubber is None else self._scrubber.sub(replacement, text)


def _text(value: object) -> str:
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value)


def _identifier_tokens(ds: Dataset) -> list[str]:
    tokens: list[str] = []
    for tag in IDENTIFIER_TAGS:
        if tag not in ds:
            continue
        value = _text(ds[tag].value).strip(" \x00")
        if len(value) >= MIN_TOKEN:
            tokens.append(value)
            tokens.extend(t for t in _TOKEN_SPLIT.split(value) if len(t) >= MIN_TOKEN)
        if tag == 0x00100030 and len(value) == 8 and value.isdigit():  # birth date written other ways
            tokens.extend((f"{value[:4]}-{value[4:6]}-{value[6:]}", f"{value[6:]}.{value[4:6]}.{value[:4]}"))
    return tokens


def _patient_key(ds: Dataset) -> str:
    """What identifies the patient for the date offset: PatientID, else PatientName, else StudyInstanceUID."""
    for tag in (PATIENT_ID, PATIENT_NAME, 0x0020000D):
        if tag in ds:
            value = _text(ds[tag].value).strip(" \x00")
            if value:
                return value
    return ""


def _vr(elem: DataElement) -> str:
    return str(elem.VR)


def _zero(elem: DataElement) -> None:
    vr = _vr(elem)
    if vr == "SQ":
        elem.value = Sequence()
    elif vr in BINARY_VRS:
        elem.value = b""
    elif vr in TEXT_VRS or vr in ("PN", "DA", "DT", "TM", "CS", "AE", "AS", "UI", "UR", "DS", "IS"):
        elem.value = ""
    else:
        elem.value = None


def _uids(elem: DataElement, ctx: _Context, *, keep_registered: bool) -> None:
    value = elem.value
    values = list(value) if isinstance(value, MultiValue | list) else [value]
    out = []
    for v in values:
        s = "" if v is None else str(v).strip(" \x00")
        out.append(s if keep_registered and s in UID_dictionary else ctx.uid(s))
    elem.value = out if len(out) > 1 else out[0]


def _dummy(elem: DataElement, ctx: _Context) -> None:
    vr = _vr(elem)
    if vr == "UI":
        _uids(elem, ctx, keep_registered=False)
    elif vr in BINARY_VRS:
        elem.value = b"\x00\x00"
    elif vr in DUMMIES:
        elem.value = DUMMIES[vr]
    else:
        _zero(elem)


def _clean_value(elem: DataElement, ctx: _Context) -> None:
    """C (clean, PS3.15 E.1.1): keep the value's meaning without what identifies."""
    vr = _vr(elem)
    if vr == "DA":
        if ctx.profile.shift_dates:
            elem.value = shift_da(_text(elem.value), ctx.offset_days)
    elif vr == "DT":
        if ctx.profile.shift_dates:
            elem.value = shift_dt(_text(elem.value), ctx.offset_days)
    elif vr in TEXT_VRS or vr in ("PN", "AE", "CS"):
        _scrub(elem, ctx)
    elif vr == "UI":
        if not ctx.profile.retain_uids:
            _uids(elem, ctx, keep_registered=True)
    # TM, numbers and binary values carry no identifiers of their own: kept.


def _scrub(elem: DataElement, ctx: _Context) -> None:
    value = elem.value
    if value is None:
        return
    replacement = SCRUB_CS if _vr(elem) == "CS" else SCRUB
    if isinstance(value, MultiValue | list):
        elem.value = [ctx.scrub(str(v), replacement=replacement) for v in value]
    elif isinstance(value, str):
        new = ctx.scrub(value, replacement=replacement)
        if new != value:
            elem.value = new
    else:
        text = str(value)
        new = ctx.scrub(text, replacement=replacement)
        if new != text:
            elem.value = new


def _pseudonymise_patient(elem: DataElement, ctx: _Context) -> None:
    original = _text(elem.value).strip(" \x00")
    if elem.tag == PATIENT_ID:
        new = pseudo_patient_id(ctx.key, original) if original else ""
        kind = "PatientID"
    else:
        new = pseudo_patient_name(ctx.key, original) if original else ""
        kind = "PatientName"
    if ctx.crosswalk is not None and original:
        ctx.crosswalk[(kind, original)] = new
    elem.value = new


def _clean_items(elem: DataElement, ctx: _Context) -> None:
    for item in elem.value or ():
        _clean_dataset(item, ctx)


def _private(ds: Dataset, ctx: _Context, tags: list[int]) -> None:
    """Private elements (odd groups): removed, unless Retain Safe Private keeps a safe-listed one (E.3.10)."""
    if ctx.profile.private != "C":
        for tag in tags:
            del ds[tag]
        return
    keep_creators: set[int] = set()
    for tag in tags:
        group, element = tag >> 16, tag & 0xFFFF
        if element < 0x1000:
            continue  # creators and group lengths are decided below
        creator_tag = (group << 16) | (element >> 8)
        creator = _text(ds[creator_tag].value) if creator_tag in ds else ""
        if creator and is_safe_private(creator, group, element):
            keep_creators.add(creator_tag)
        else:
            del ds[tag]
    for tag in tags:
        if (tag & 0xFFFF) < 0x1000 and tag not in keep_creators:
            del ds[tag]


def _repeating(tag: int, profile: CompiledProfile) -> str:
    group = tag >> 16
    element = tag & 0xFFFF
    if 0x5000 <= group <= 0x501E:
        return profile.curves
    if 0x6000 <= group <= 0x601E:
        if element == 0x3000:
            return profile.overlay_data
        if element == 0x4000:
            return profile.overlay_comments
        # The other Overlay Plane attributes describe the data: without it the plane is invalid, so they go too.
        return "X" if profile.overlay_data == "X" else "K"
    return "X"  # a public tag unknown to the data dictionary: its meaning cannot be judged


def _clean_dataset(ds: Dataset, ctx: _Context) -> None:
    actions = ctx.profile.actions
    private: list[int] = []
    for tag in list(ds.keys()):
        if tag >> 16 & 1:
            private.append(tag)
            continue
        if not tag & 0xFFFF:
            del ds[tag]  # group length (retired): wrong once the group changes
            continue
        action = actions.get(tag)
        if action is None:
            action = _repeating(tag, ctx.profile)
        if action == "K":
            if tag in SQ_TAGS:
                _clean_items(ds[tag], ctx)
            continue
        if action == "X":
            del ds[tag]
            continue
        _ACTIONS[action](ds[tag], ctx)
    if private:
        _private(ds, ctx, private)


def _act_z(elem: DataElement, ctx: _Context) -> None:
    _zero(elem)


def _act_d(elem: DataElement, ctx: _Context) -> None:
    if _vr(elem) == "SQ":
        _clean_items(elem, ctx)
    else:
        _dummy(elem, ctx)


def _act_u(elem: DataElement, ctx: _Context) -> None:
    if _vr(elem) == "SQ":
        _clean_items(elem, ctx)
    else:
        _uids(elem, ctx, keep_registered=False)


def _act_c(elem: DataElement, ctx: _Context) -> None:
    if _vr(elem) == "SQ":
        _clean_items(elem, ctx)
    else:
        _clean_value(elem, ctx)


def _act_t(elem: DataElement, ctx: _Context) -> None:
    vr = _vr(elem)
    if vr == "SQ":
        _clean_items(elem, ctx)
    elif vr in TEXT_VRS or vr == "PN":
        _scrub(elem, ctx)


def _act_v(elem: DataElement, ctx: _Context) -> None:
    if _vr(elem) == "UI":
        _uids(elem, ctx, keep_registered=True)


_ACTIONS: dict[str, Callable[[DataElement, _Context], None]] = {
    "Z": _act_z,
    "D": _act_d,
    "U": _act_u,
    "C": _act_c,
    "P": _pseudonymise_patient,
    "T": _act_t,
    "V": _act_v,
}


def method_codes(policy: ReleasePolicy) -> list[str]:
    """CID 7050 code values for the profile and the options ``policy`` applies (PS3.15 E.1.1, PS3.16 CID 7050)."""
    d = policy.deid
    codes = ["113100"]
    flags = [
        (d.clean_pixel_data, "113101"),
        (d.clean_graphics, "113103"),
        (d.clean_structured_content, "113104"),
        (d.clean_descriptors, "113105"),
        (d.retain_longitudinal == "full", "113106"),
        (d.retain_longitudinal == "modified", "113107"),
        (d.retain_patient_characteristics, "113108"),
        (d.retain_device_identity, "113109"),
        (d.retain_uids, "113110"),
        (d.retain_safe_private, "113111"),
        (d.retain_institution_identity, "113112"),
    ]
    codes.extend(code for on, code in flags if on)
    return codes


def _record_method(ds: Dataset, policy: ReleasePolicy) -> None:
    codes = method_codes(policy)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = ["Release Guard PS3.15 E.1-1 2024e"] + [CID_7050[c][:64] for c in codes[1:]]
    items = []
    for code in codes:
        item = Dataset()
        item.CodeValue = code
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = CID_7050[code]
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = {"modified": "MODIFIED", "full": "UNMODIFIED", "off": "REMOVED"}[
        policy.deid.retain_longitudinal
    ]


# File meta attributes that can name a sending or receiving system, or carry private information (PS3.10 7.1).
_META_REMOVE = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)


def _clean_file_meta(ds: Dataset, ctx: _Context) -> None:
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return
    for tag in _META_REMOVE:
        if tag in meta:
            del meta[tag]
    if "MediaStorageSOPInstanceUID" in meta:
        if "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        elif not ctx.profile.retain_uids:
            meta.MediaStorageSOPInstanceUID = ctx.uid(str(meta.MediaStorageSOPInstanceUID))


def _pixel_step(ds: Dataset, policy: ReleasePolicy) -> str | None:
    """Clean Pixel Data Option (PS3.15 E.3.1), by guards.deid.pixels; the reason when it says "quarantine"."""
    try:
        from guards.deid.pixels import clean_pixel_data
    except ImportError as e:
        raise GuardError(
            "deid.clean_pixel_data is on but guards.deid.pixels is not available; install it or set "
            "deid.clean_pixel_data = false (and quarantine risky modalities another way)"
        ) from e
    outcome = clean_pixel_data(ds, policy=policy.pixels)
    if outcome.action == "quarantine":
        return f"pixel data: {outcome.reason}"
    return None


def deidentify_dataset(ds: Dataset, *, policy: ReleasePolicy, key: PseudonymKey) -> Dataset:
    """De-identify ``ds`` in place under ``policy.deid`` and return it (PS3.15 Annex E, Table E.1-1).

    Raises :class:`InstanceQuarantined` when pixel cleaning says the instance must not be published; the
    headers of ``ds`` are de-identified all the same, so that the quarantined copy carries no header PHI.
    """
    return _deidentify(ds, policy=policy, key=key, crosswalk=None)


def _deidentify(
    ds: Dataset, *, policy: ReleasePolicy, key: PseudonymKey, crosswalk: dict[tuple[str, str], str] | None
) -> Dataset:
    deid = policy.deid
    quarantine = _pixel_step(ds, policy) if deid.clean_pixel_data and "PixelData" in ds else None
    sop_class = _text(ds["SOPClassUID"].value).strip(" \x00") if "SOPClassUID" in ds else ""
    profile = compile_profile(deid, sop_class)
    patient = _patient_key(ds)
    low, high = deid.date_shift_days
    offset = date_offset_days(key, patient, low=low, high=high) if deid.retain_longitudinal == "modified" else 0
    if crosswalk is not None and patient and deid.retain_longitudinal == "modified":
        crosswalk[("date_offset_days", patient)] = str(offset)
    ctx = _Context(
        key=key, profile=profile, uid_root=deid.uid_root, offset_days=offset, tokens=_identifier_tokens(ds),
        crosswalk=crosswalk,
    )
    _clean_dataset(ds, ctx)
    _clean_file_meta(ds, ctx)
    _record_method(ds, policy)
    if quarantine is not None:
        raise InstanceQuarantined(quarantine)
    return ds


__all__ = ["DICT_VR", "InstanceQuarantined", "deidentify_dataset", "method_codes"]
