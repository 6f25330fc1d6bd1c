"""Keyed pseudonyms: the only functions that map original identifiers to pseudonyms.

Every pseudonym is derived from HMAC-SHA256 under the release's secret key (:meth:`PseudonymKey.hmac`), with a
``purpose`` string separating the domains (UIDs, patient IDs, names, date offsets). The same original under the
same key gives the same pseudonym in every file and every nightly run, so references between instances stay
consistent; without the key a pseudonym cannot be linked back to the original.

UIDs follow PS3.5 section 9.1 (at most 64 characters, no leading zero in a component) and, for the default root
``2.25``, PS3.5 Annex B.2 (a UID made of an unsigned 128-bit integer under the root 2.25).
"""

from __future__ import annotations

from guards.errors import GuardError
from guards.keys import PseudonymKey

MAX_UID_LENGTH = 64

__all__ = ["date_offset_days", "pseudo_patient_id", "pseudo_patient_name", "pseudo_text", "pseudo_uid"]


def _clean(value: str) -> str:
    """DICOM values may carry trailing padding (space for text, NUL for UIDs); it is not part of the value."""
    return value.strip(" \x00")


def pseudo_uid(key: PseudonymKey, uid: str, *, root: str = "2.25") -> str:
    """The pseudonymous UID of ``uid``: ``root`` + "." + the first 128 bits of HMAC-SHA256(uid) as an integer.

    With ``root="2.25"`` this is a UUID-derived UID as in PS3.5 Annex B.2. Another root (an organisation's own)
    keeps as many decimal digits as fit in 64 characters (PS3.5 section 9.1).
    """
    root = root.rstrip(".")
    if not root or any(not part.isdigit() or (len(part) > 1 and part[0] == "0") for part in root.split(".")):
        raise GuardError(f"deid.uid_root {root!r} is not a valid UID root; use digits and dots, e.g. '2.25'")
    room = MAX_UID_LENGTH - len(root) - 1
    if room < 10:
        raise GuardError(f"deid.uid_root {root!r} is too long to leave room for a pseudonym; use at most 53 characters")
    number = int.from_bytes(key.hmac(_clean(uid), purpose="uid")[:16], "big")
    digits = str(number)
    if len(digits) > room:
        digits = str(number % 10**room) or "0"
    return f"{root}.{digits}"


def pseudo_patient_id(key: PseudonymKey, patient_id: str) -> str:
    """The pseudonymous PatientID (LO): "RG" + 20 upper-case hex digits of HMAC-SHA256(patient_id)."""
    return "RG" + key.hmac(_clean(patient_id), purpose="PatientID").hex()[:20].upper()


def pseudo_patient_name(key: PseudonymKey, patient_name: str) -> str:
    """The pseudonymous PatientName (PN): family name "ANON", given name 12 hex digits of HMAC-SHA256(name)."""
    return "ANON^" + key.hmac(_clean(patient_name), purpose="PatientName").hex()[:12].upper()


def pseudo_text(key: PseudonymKey, value: str, *, purpose: str, length: int = 16) -> str:
    """A keyed pseudonym for other identifiers (e.g. AccessionNumber): ``length`` upper-case hex digits."""
    if not 4 <= length <= 64:
        raise GuardError(f"pseudonym length {length} is out of range; use 4 to 64")
    return key.hmac(_clean(value), purpose=purpose).hex()[:length].upper()


def date_offset_days(key: PseudonymKey, patient_id: str, *, low: int, high: int) -> int:
    """One date offset in days per patient, uniform in ``[low, high]`` (inclusive), derived from the key.

    Used by the Retain Longitudinal Temporal Information with Modified Dates Option (PS3.15 E.3.6): every date
    of a patient moves by the same offset, so intervals within the patient are kept.
    """
    if low > high:
        raise GuardError(f"deid.date_shift_days [{low}, {high}] must be [low, high] with low <= high")
    span = high - low + 1
    number = int.from_bytes(key.hmac(_clean(patient_id), purpose="date")[:8], "big")
    return low + number % span
