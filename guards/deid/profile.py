"""Compile Table E.1-1 and the policy options into one tag -> action dict per IOD (PS3.15 E.1.1, E.3).

The engine does a single dict lookup per element. The dict holds, for every tag of pydicom's data dictionary,
the action to take:

- rows of Table E.1-1: the Basic Profile action changed by the enabled options (:func:`table.row_action`), with
  combined codes resolved by the attribute's Type in the IOD (:func:`iod.resolve_combined`);
- attributes the table does not list (PS3.15 E.1.1 lets the implementation decide; our choice): person names
  (VR PN) are removed; dates (DA, DT) follow the longitudinal option like the listed dates (shifted, kept or
  removed); UIDs (UI) that are not DICOM-registered UIDs get a keyed pseudonym unless Retain UIDs is on; free
  text (LO, SH, ST, LT, UT, UC) is kept with the instance's own identifiers scrubbed out; everything else is
  kept. Public tags unknown to the dictionary and group lengths are removed.

Internal action codes beyond the table's D Z X K C U: ``P`` (keyed PatientID / PatientName pseudonym),
``T`` (scrub text of the instance's identifiers), ``V`` (pseudonymise a UID unless it is a registered one).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from pydicom.datadict import DicomDictionary  # type: ignore[attr-defined]

from guards.deid.iod import resolve_combined, types_for
from guards.deid.table import PRIVATE_ROW_ID, REPEATING_ROWS, enabled_columns, profile_rows, row_action
from guards.policy import DeidSection

PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010
TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC"})
SQ_TAGS: frozenset[int] = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")
DICT_VR: dict[int, str] = {tag: entry[0] for tag, entry in DicomDictionary.items()}


@dataclass(frozen=True)
class CompiledProfile:
    """The actions for one IOD under one policy: a tag -> action dict and the rules for the non-listed tags."""

    actions: dict[int, str]
    private: str  # "X" remove every private element, "C" keep the safe list (Retain Safe Private)
    curves: str  # (50xx,xxxx): "X" or "C"
    overlay_data: str  # (60xx,3000)
    overlay_comments: str  # (60xx,4000)
    shift_dates: bool  # Retain Longitudinal Temporal Information with Modified Dates
    retain_uids: bool


def _unlisted_action(vr: str, deid: DeidSection) -> str:
    if vr == "PN":
        return "X"
    if vr in ("DA", "DT"):
        return {"modified": "C", "full": "K", "off": "X"}[deid.retain_longitudinal]
    if vr == "UI":
        return "K" if deid.retain_uids else "V"
    if vr in TEXT_VRS:
        return "T"
    return "K"


@lru_cache(maxsize=16)
def _unlisted_actions(deid: DeidSection) -> dict[int, str]:
    return {tag: _unlisted_action(vr, deid) for tag, vr in DICT_VR.items()}


@lru_cache(maxsize=128)
def compile_profile(deid: DeidSection, sop_class_uid: str) -> CompiledProfile:
    """The compiled actions for instances of ``sop_class_uid`` under ``deid`` (cached per pair)."""
    columns = enabled_columns(deid)
    types = types_for(sop_class_uid)
    actions: dict[int, str] = dict(_unlisted_actions(deid))
    private = curves = overlay_data = overlay_comments = "X"
    for row in profile_rows():
        code = row_action(row, columns)
        tag = row.tag_int
        if row.row_id == PRIVATE_ROW_ID:
            private = code
            continue
        if row.row_id in REPEATING_ROWS:
            single = resolve_combined(code, None)
            if row.row_id == "50xxxxxx":
                curves = single
            elif row.row_id == "60xx3000":
                overlay_data = single
            else:
                overlay_comments = single
            continue
        if tag is None:
            raise ValueError(f"Table E.1-1 row {row.tag} has no tag")
        actions[tag] = resolve_combined(code, types.get(tag))
    # PatientID (Z/D) and PatientName (Z) get keyed pseudonyms: a non-zero-length dummy is allowed by both
    # codes (PS3.15 E.1.1), and a keyed one keeps a patient's instances linked without revealing who it is.
    actions[PATIENT_ID] = "P"
    actions[PATIENT_NAME] = "P"
    return CompiledProfile(
        actions=actions,
        private=private,
        curves=curves,
        overlay_data=overlay_data,
        overlay_comments=overlay_comments,
        shift_dates=deid.retain_longitudinal == "modified",
        retain_uids=deid.retain_uids,
    )
