"""De-identify one dataset: PS3.15 Annex E Basic Application Level Confidentiality Profile and its options.

One pass over the dataset (and every sequence item, at any depth) with one dict lookup per element
(:mod:`guards.deid.profile`). Elements that are kept are never decoded, so Pixel Data and other kept bulk data
stay byte-exact. Actions (PS3.15 E.1.1):

- X remove; Z zero length (a sequence becomes empty); K keep (sequences are still cleaned inside);
- D a dummy consistent with the VR (a sequence keeps its items, cleaned by the same rules);
- U a keyed UID (:func:`pseudonyms.pseudo_uid`), the same in every file and run for one key;
- C clean: dates are shifted by the patient's offset (Modified Dates, E.3.6), times kept; text has the
  patient's whole vocabulary (every name, ID, address, ... anywhere in the dataset, decoded with its character
  sets, and every date of the patient in every written form; :func:`actions.patient_vocabulary`) replaced by
  ``***``; sequences are cleaned inside. Content Sequence keeps its values only under Clean Structured Content.

After the pass, PatientIdentityRemoved, DeidentificationMethod, DeidentificationMethodCodeSequence (CID 7050)
and LongitudinalTemporalInformationModified are set (PS3.15 E.1.1 and PS3.3 C.7.1.1), the file meta's
MediaStorageSOPInstanceUID follows the new SOPInstanceUID and the File Preamble becomes 128 zero bytes (PS3.10 7.1).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import TYPE_CHECKING

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from guards.deid.actions import Context, clean_dataset, patient_vocabulary, value_text
from guards.deid.profile import PATIENT_ID, PATIENT_NAME, compile_profile
from guards.deid.pseudonyms import date_offset_days
from guards.errors import GuardError
from guards.keys import PseudonymKey
from guards.policy import ReleasePolicy

if TYPE_CHECKING:
    from guards.deid.ocr_cache import OcrCache

log = logging.getLogger(__name__)

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
class InstanceQuarantined(GuardError):
    """Raised by :func:`deidentify_dataset` when an instance must not be published (e.g. pixel cleaning said so).

    ``reason`` says why; :func:`guards.deid.deidentify_tree` records it in the manifest and quarantines the file.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _patient_key(ds: Dataset) -> str:
    """What identifies the patient for the date offset: PatientID, else PatientName, else StudyInstanceUID."""
    for tag in (PATIENT_ID, PATIENT_NAME, 0x0020000D):
        if tag in ds:
            value = value_text(ds, tag)
            if value:
                return value
    return ""


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


@lru_cache(maxsize=32)
def _method_values(policy: ReleasePolicy) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    codes = tuple(method_codes(policy))
    method = ("Release Guard PS3.15 E.1-1 2024e", *(CID_7050[c][:64] for c in codes[1:]))
    modified = {"modified": "MODIFIED", "full": "UNMODIFIED", "off": "REMOVED"}[policy.deid.retain_longitudinal]
    return codes, method, modified


@lru_cache(maxsize=32)
def _method_raw(policy: ReleasePolicy, implicit: bool) -> tuple[RawDataElement, ...]:
    """The four method attributes encoded once per policy and encoding, as raw elements (immutable, shared)."""
    scratch = Dataset()
    _record_method(scratch, policy, None)
    out = []
    for tag in sorted(scratch.keys()):
        elem = scratch[tag]
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = implicit, True
        write_data_element(fp, elem)
        data = fp.getvalue()
        header = 8 if implicit or elem.VR not in ("SQ",) else 12
        out.append(RawDataElement(BaseTag(tag), elem.VR, len(data) - header, data[header:], 0, implicit, True))
    return tuple(out)


def _record_method(ds: Dataset, policy: ReleasePolicy, raw_implicit: bool | None) -> None:
    if raw_implicit is not None:
        for raw in _method_raw(policy, raw_implicit):
            ds[raw.tag] = raw
        return
    codes, method, modified = _method_values(policy)
    items = []
    for code in codes:
        item = Dataset()
        item[0x00080100] = DataElement(0x00080100, "SH", code)  # CodeValue
        item[0x00080102] = DataElement(0x00080102, "SH", "DCM")  # CodingSchemeDesignator
        item[0x00080104] = DataElement(0x00080104, "LO", CID_7050[code])  # CodeMeaning
        items.append(item)
    ds[0x00120062] = DataElement(0x00120062, "CS", "YES")  # PatientIdentityRemoved
    ds[0x00120063] = DataElement(0x00120063, "LO", list(method))  # DeidentificationMethod
    ds[0x00120064] = DataElement(0x00120064, "SQ", Sequence(items))  # DeidentificationMethodCodeSequence
    ds[0x00280303] = DataElement(0x00280303, "CS", modified)  # LongitudinalTemporalInformationModified


# File meta attributes that can name a sending or receiving system, or carry private information (PS3.10 7.1).
_META_REMOVE = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)


def _clean_file_meta(ds: Dataset, ctx: Context) -> None:
    # The File Preamble (PS3.10 7.1) is free for the application to fill (a TIFF header, or any text that can
    # identify the patient): 128 zero bytes, as PS3.10 7.1 asks of a file that does not use it.
    if getattr(ds, "preamble", None) is not None:
        ds.preamble = b"\x00" * 128
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return
    for tag in _META_REMOVE:
        if tag in meta:
            del meta[tag]
    if 0x00020003 in meta:
        if 0x00080018 in ds:
            meta[0x00020003] = DataElement(0x00020003, "UI", value_text(ds, 0x00080018))
        elif not ctx.profile.retain_uids:
            meta[0x00020003] = DataElement(0x00020003, "UI", ctx.uid(value_text(meta, 0x00020003)))


def _pixel_step(ds: Dataset, policy: ReleasePolicy, ocr_cache: OcrCache | None = None) -> str | None:
    """Clean Pixel Data Option (PS3.15 E.3.1), by guards.deid.pixels; the reason when it says "quarantine"."""
    try:
        from guards.deid.pixels import clean_pixel_data
    except ImportError as e:
        raise GuardError(
            "deid.clean_pixel_data is on but guards.deid.pixels is not available; install it or set "
            "deid.clean_pixel_data = false (and quarantine risky modalities another way)"
        ) from e
    outcome = clean_pixel_data(ds, policy=policy.pixels, cache=ocr_cache)
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
    ds: Dataset,
    *,
    policy: ReleasePolicy,
    key: PseudonymKey,
    crosswalk: dict[tuple[str, str], str] | None,
    ocr_cache: OcrCache | None = None,
) -> Dataset:
    deid = policy.deid
    floating = 0x7FE00008 in ds or 0x7FE00009 in ds  # Float / Double Float Pixel Data: quarantined (pixels.py)
    has_pixels = "PixelData" in ds or floating
    quarantine = _pixel_step(ds, policy, ocr_cache) if deid.clean_pixel_data and has_pixels else None
    if quarantine is None and floating and policy.protect.enabled:  # protect adds noise to integer pixels only
        from guards.deid.pixels import float_pixel_data, float_reason

        quarantine = f"pixel data: {float_reason(float_pixel_data(ds) or 'Float Pixel Data')}"
    sop_class = value_text(ds, 0x00080016) if 0x00080016 in ds else ""
    profile = compile_profile(deid, sop_class)
    patient = _patient_key(ds)
    low, high = deid.date_shift_days
    offset = date_offset_days(key, patient, low=low, high=high) if deid.retain_longitudinal == "modified" else 0
    if crosswalk is not None and patient and deid.retain_longitudinal == "modified":
        crosswalk[("date_offset_days", patient)] = str(offset)
    implicit, little = ds.original_encoding
    raw_implicit = implicit if little is True and implicit is not None else None
    vocabulary = patient_vocabulary(ds)
    ctx = Context(
        key=key, profile=profile, uid_root=deid.uid_root, offset_days=offset, tokens=vocabulary.tokens,
        crosswalk=crosswalk, raw_implicit=raw_implicit, dates=vocabulary.dates,
        raw_sequences=vocabulary.raw_sequences,
    )
    clean_dataset(ds, ctx)
    _clean_file_meta(ds, ctx)
    _record_method(ds, policy, raw_implicit)
    if quarantine is not None:
        raise InstanceQuarantined(quarantine)
    return ds


__all__ = ["InstanceQuarantined", "deidentify_dataset", "method_codes"]
