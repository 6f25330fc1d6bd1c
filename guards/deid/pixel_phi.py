"""The instance's own PHI header values as OCR match tokens, and the match of OCR words against them.

PS3.15 E.3.1 (Clean Pixel Data Option) asks that identifying information burned into the pixels be removed;
the strongest evidence that a burned-in word identifies the patient is that it equals a value of the
instance's own identifying attributes (PS3.15 Table E.1-1): name parts, Patient ID, Other Patient IDs,
Accession Number, institution, referring physician, and dates, which overlays print in many formats
(``03/02/2017``, ``24-MAY-02``, ``2017-03-02``, ...). Tokens and words are compared as upper-case letters and
digits only, so separators and OCR's punctuation do not matter.
"""

from __future__ import annotations

import datetime as dt
import re

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

_NAME_KEYWORDS = ("PatientName", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName")
_ID_KEYWORDS = ("PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID", "IssuerOfPatientID")
_TEXT_KEYWORDS = ("InstitutionName", "InstitutionAddress", "StationName", "InstitutionalDepartmentName")
_DATE_KEYWORDS = (
    "PatientBirthDate",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "InstanceCreationDate",
)
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_MIN_TOKEN = 3  # shorter name parts or words ("P", "MR") are too common to mean anything
_WORDS_TO_IGNORE = frozenset({"NO", "INFO", "THE", "OF", "AND", "UNKNOWN", "ANONYMOUS", "NONE"})
#: Date-like words (d/m/y in any order, 2- or 4-digit years, month names) and long digit runs (IDs).
_DATE_LIKE = re.compile(
    r"^\d{1,4}[/.\-]\d{1,2}[/.\-]\d{2,4}$|^\d{1,2}[\-/ ]?(" + "|".join(_MONTHS) + r")[A-Z]*[\-/ ]?\d{2,4}$"
)
_LONG_DIGITS = re.compile(r"\d{6,}")


def normalize(text: str) -> str:
    """Upper-case letters and digits of ``text``, nothing else."""
    return re.sub(r"[^0-9A-Z]", "", text.upper())


def _values(ds: Dataset, keyword: str) -> list[str]:
    if keyword not in ds:
        return []
    value = ds.data_element(keyword)
    if value is None or value.value is None:
        return []
    raw = value.value
    items = list(raw) if isinstance(raw, MultiValue | list | tuple) else [raw]
    return [str(v) for v in items if str(v).strip()]


def date_tokens(value: str) -> set[str]:
    """Normalized renderings of a DA value (YYYYMMDD) as overlays print it."""
    try:
        d = dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except (ValueError, IndexError):
        return set()
    yyyy, yy, mon = f"{d.year:04d}", f"{d.year % 100:02d}", _MONTHS[d.month - 1]
    mm, dd, m, day = f"{d.month:02d}", f"{d.day:02d}", str(d.month), str(d.day)
    forms = {
        yyyy + mm + dd,
        mm + dd + yyyy,
        dd + mm + yyyy,
        m + day + yyyy,
        day + m + yyyy,
        mm + dd + yy,
        dd + mm + yy,
        dd + mon + yy,
        dd + mon + yyyy,
        day + mon + yyyy,
        day + mon + yy,
        mon + dd + yyyy,
        yyyy + mon + dd,
    }
    return {f for f in forms if len(f) >= 6}


def header_tokens(ds: Dataset) -> set[str]:
    """Normalized PHI tokens from ``ds``'s own identifying attributes (read before header de-identification)."""
    tokens: set[str] = set()
    for keyword in _NAME_KEYWORDS + _TEXT_KEYWORDS:
        for value in _values(ds, keyword):
            for part in re.split(r"[\^\s,=]+", value):
                tokens.add(normalize(part))
    for keyword in _ID_KEYWORDS:
        for value in _values(ds, keyword):
            tokens.add(normalize(value))
            tokens.update(normalize(part) for part in re.split(r"[\s\-/]+", value))
    if "OtherPatientIDsSequence" in ds:
        for item in ds.OtherPatientIDsSequence:
            tokens.add(normalize(str(item.get("PatientID", ""))))
    for keyword in _DATE_KEYWORDS:
        for value in _values(ds, keyword):
            tokens.update(date_tokens(value.strip()))
    return {t for t in tokens if len(t) >= _MIN_TOKEN and t not in _WORDS_TO_IGNORE}


_OCR_FOLD = str.maketrans("OQDILZSB", "00011258")


def matches_header(word: str, tokens: set[str]) -> bool:
    """True when the OCR ``word`` equals or contains a header token, or is a piece (4+ characters) of one.

    Pieces cover overlays that truncate (``PATIENTFI...``) and OCR that splits a value (``MRN`` ``1628790``).

    Both sides are also compared with the letters OCR confuses with digits folded (O/Q/D to 0, I/L to 1, Z to
    2, S to 5, B to 8), so that ``24-MAY-O2`` matches ``24MAY02``.
    """
    w = normalize(word)
    if len(w) < _MIN_TOKEN or w in _WORDS_TO_IGNORE:
        return False
    if _match(w, tokens):
        return True
    return _match(w.translate(_OCR_FOLD), {t.translate(_OCR_FOLD) for t in tokens})


def _match(w: str, tokens: set[str]) -> bool:
    for t in tokens:
        if w == t or (len(t) >= 4 and t in w) or (len(w) >= 4 and w in t):
            return True
    return False


def looks_like_phi(word: str) -> bool:
    """True for words shaped like dates or identifiers (6+ digits), whatever the header says."""
    text = word.upper().strip(".,;:()[]")
    return bool(_DATE_LIKE.match(text) or _LONG_DIGITS.search(text))
