"""Attribute Types (PS3.3) in the IODs Release Guard meets, to resolve combined action codes of Table E.1-1.

PS3.15 E.1.1: a combined code such as X/Z/D means "X unless Z is required to maintain IOD conformance (Type 2),
or D unless X or Z is required (Type 1)"; X/Z/U* means "X unless Z or a UID replacement inside the sequence is
required". Only attributes that carry a combined code need a Type here. Types are from PS3.3 (2024e) modules:
Patient (C.7.1.1), General Study (C.7.2.1), General Series (C.7.3.1), General Equipment (C.7.5.1), General
Acquisition (C.7.10.1), General Image (C.7.6.1), Contrast/Bolus (C.7.6.4), SOP Common (C.12.1), Acquisition
Context (C.7.6.14), and the Enhanced MR/CT Image modules (C.8.13.1, C.8.15.2) where Acquisition DateTime is Type 1.

An attribute missing from the table of an IOD is not part of it (or optional): it resolves as Type 3, the most
protective choice that keeps the instance valid (remove when X is allowed, else zero length, else a dummy).
"""

from __future__ import annotations

from functools import lru_cache

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
MR = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
US = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
SC = "1.2.840.10008.5.1.4.1.1.7"

# Types in the modules common to the composite image IODs above (only attributes with combined codes matter).
COMMON_TYPES: dict[int, int] = {
    0x00100020: 2,  # Patient ID (Patient Module)
    0x00102203: 3,  # Patient's Sex Neutered (2C, only for non-human patients: resolved as 3)
    0x00081110: 3,  # Referenced Study Sequence (General Study)
    0x00081111: 3,  # Referenced Performed Procedure Step Sequence (General Series)
    0x00081070: 3,  # Operators' Name (General Series)
    0x00081072: 3,  # Operator Identification Sequence (General Series)
    0x00181030: 3,  # Protocol Name (General Series)
    0x00080021: 3,  # Series Date
    0x00080031: 3,  # Series Time
    0x00081010: 3,  # Station Name (General Equipment)
    0x00080080: 3,  # Institution Name
    0x00080082: 3,  # Institution Code Sequence
    0x00181000: 3,  # Device Serial Number
    0x00080022: 3,  # Acquisition Date (General Acquisition)
    0x00080032: 3,  # Acquisition Time
    0x0008002A: 3,  # Acquisition DateTime
    0x00080023: 2,  # Content Date (General Image, 2C: temporally related images)
    0x00080033: 2,  # Content Time
    0x00081140: 3,  # Referenced Image Sequence
    0x00082112: 3,  # Source Image Sequence
    0x00080012: 3,  # Instance Creation Date (SOP Common)
    0x00080013: 3,  # Instance Creation Time
    0x00180010: 2,  # Contrast/Bolus Agent (Contrast/Bolus Module, when present)
}

# Per-IOD differences from COMMON_TYPES, by SOP Class UID.
IOD_TYPES: dict[str, dict[int, int]] = {
    CR: {},
    DX_PRESENTATION: {0x00400555: 2},  # Acquisition Context Sequence (Acquisition Context Module, M in DX)
    DX_PROCESSING: {0x00400555: 2},
    CT: {},
    ENHANCED_CT: {0x0008002A: 1, 0x00400555: 2},
    MR: {},
    ENHANCED_MR: {0x0008002A: 1, 0x00400555: 2},
    US: {},
    US_MULTIFRAME: {},
    SC: {},
}


@lru_cache(maxsize=64)
def types_for(sop_class_uid: str) -> dict[int, int]:
    """Tag -> Type (1, 2 or 3) for the IOD of ``sop_class_uid``; the common modules when the IOD is unknown."""
    return {**COMMON_TYPES, **IOD_TYPES.get(sop_class_uid, {})}


def resolve_combined(code: str, attribute_type: int | None) -> str:
    """The single action of a (possibly combined) ``code`` for an attribute of the given Type (PS3.15 E.1.1).

    Type 1 needs a value (D, or U inside the sequence for X/Z/U*), Type 2 needs the attribute (Z), Type 3 or
    not part of the IOD (None) may be removed (X). When the code lacks the needed choice, the next more
    protective one it has is taken.
    """
    choices = code.split("/")
    if len(choices) == 1:
        return code
    order: tuple[str, ...]
    if attribute_type == 1:
        order = ("D", "U*", "Z", "X")
    elif attribute_type == 2:
        order = ("Z", "D", "U*", "X")
    else:
        order = ("X", "Z", "D", "U*")
    for choice in order:
        if choice in choices:
            return "K" if choice == "U*" else choice  # U*: keep the sequence; the UIDs inside get U by their rows
    raise ValueError(f"cannot resolve action code {code!r}")
