"""The PHI vocabulary shared by the cleaner, the pixel cleaner and the residual-PHI audit.

One definition of what counts as a header value that identifies the patient, and of the forms it may be
written in elsewhere, so that the audit (:mod:`guards.checks.phi`) is never weaker than the de-identification it
audits (:mod:`guards.deid.actions` for free text, :mod:`guards.deid.pixel_phi` for burned-in text):

- keywords of the identifying attributes, by category (PS3.15 Table E.1-1 rows: names, identifiers, addresses,
  telephone numbers, institution, device, dates, free text about the patient);
- the written forms of a DA value (PS3.5 6.2, ``YYYYMMDD``) as people, overlays and reports write dates:
  numeric in the orders Y-M-D, D-M-Y, M-D-Y, with and without zero padding, 4- and 2-digit years, and with
  month names (``17-MAR-1961``, ``17 Mar 1961``, ``March 17, 1961``, ``1961 MAR 17``), each with the
  separators ``""``, ``-``, ``/``, ``.`` and a space (:func:`date_parts`, :func:`date_forms`);
- the pieces of an identifier that identify on their own: its alphanumeric pieces holding a digit or at least
  :data:`MIN_ID_LETTERS` letters, its runs of :data:`MIN_ID_DIGITS` or more digits (``448120`` of
  ``PID-448120``, ``1234567`` of ``MRN1234567``) and its letters and digits run together (:func:`id_pieces`);
- the pieces of a name written in an ideographic or syllabic script (Han, kana, Hangul: one character is a
  syllable or a word, so a family name can be one character, ``王`` of ``王^小東``) of any length
  (:func:`native_parts`); pieces in alphabetic scripts (Latin, Cyrillic, Greek) need :data:`MIN_TOKEN`;
- the written forms of any date found in free text (:data:`DATE_CANDIDATE`: the shapes of :func:`date_forms`),
  compared with the patient's dates by :func:`date_forms` membership;
- the normalisations: :func:`words` (upper case, every character outside ``A-Z 0-9 .`` a word break, dots at the
  ends of words dropped; the audit matches whole words) and :func:`compact` (upper-case letters and digits
  only; the pixel cleaner compares OCR words so).

Everything here is plain data and pure functions on text; nothing reads or writes DICOM.
"""

from __future__ import annotations

import re
from functools import lru_cache

#: Person-name attributes of an instance whose parts are searched for (all PN, PS3.15 Table E.1-1).
NAME_KEYWORDS: tuple[str, ...] = (
    "PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "ReferringPhysicianName",
    "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "OperatorsName", "RequestingPhysician",
    "PhysiciansOfRecord",
)
#: Identifier attributes (PS3.15 Table E.1-1): their values, and their pieces (:func:`id_pieces`).
ID_KEYWORDS: tuple[str, ...] = (
    "PatientID", "OtherPatientIDs", "IssuerOfPatientID", "AccessionNumber", "StudyID", "AdmissionID",
    "MedicalRecordLocator", "RequestedProcedureID", "ScheduledProcedureStepID", "PerformedProcedureStepID",
    "PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberImagingServiceRequestRetired", "FillerOrderNumberImagingServiceRequestRetired",
    "ServiceEpisodeID", "MilitaryRank", "BranchOfService",
)
ADDRESS_KEYWORDS: tuple[str, ...] = ("PatientAddress", "InstitutionAddress", "ReferringPhysicianAddress",
                                     "PersonAddress", "RegionOfResidence")
PHONE_KEYWORDS: tuple[str, ...] = ("PatientTelephoneNumbers", "ReferringPhysicianTelephoneNumbers",
                                   "PersonTelephoneNumbers", "PatientTelecomInformation")
INSTITUTION_KEYWORDS: tuple[str, ...] = ("InstitutionName", "InstitutionalDepartmentName")
DEVICE_KEYWORDS: tuple[str, ...] = ("StationName", "DeviceSerialNumber")
FREE_TEXT_KEYWORDS: tuple[str, ...] = ("PatientComments", "AdditionalPatientHistory", "Occupation")
#: Dates of the instance an overlay or a report typically prints (the audit takes every DA and DT element).
DATE_KEYWORDS: tuple[str, ...] = ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate",
                                  "ContentDate", "InstanceCreationDate")
#: The instance's own attributes whose values the cleaner scrubs from the free text it keeps or cleans
#: (PS3.15 E.1.1 action C): names, identifiers, addresses, telephone numbers, institution, device, birth date.
TEXT_SCRUB_KEYWORDS: tuple[str, ...] = (
    NAME_KEYWORDS + ID_KEYWORDS + ADDRESS_KEYWORDS + PHONE_KEYWORDS + INSTITUTION_KEYWORDS + DEVICE_KEYWORDS
    + ("PatientBirthDate",)
)
#: Keyword -> category of the non-name, non-date identifying attributes (the audit's report categories).
CATEGORY: dict[str, str] = {
    **{k: "identifier" for k in ID_KEYWORDS},
    **{k: "address" for k in ADDRESS_KEYWORDS},
    **{k: "phone" for k in PHONE_KEYWORDS},
    **{k: "institution" for k in INSTITUTION_KEYWORDS},
    **{k: "device" for k in DEVICE_KEYWORDS},
    **{k: "free text" for k in FREE_TEXT_KEYWORDS},
}

#: Characters from CJK Radicals (U+2E80) up: Han, kana, Hangul, ... where one character is a syllable or word.
IDEOGRAPHIC_FROM = 0x2E80
MIN_TOKEN = 3  # shorter values or pieces ("P", "MR") are too common to mean anything
MIN_DATE_CHARS = 6  # a date form with fewer letters and digits ("3/2/17") is too ambiguous
MIN_ID_DIGITS = 6  # a run of this many digits inside an identifier identifies on its own
MIN_ID_LETTERS = 4  # letter-only identifier pieces shorter than this are prefixes ("MRN", "PID", "ACC")
MONTHS: tuple[str, ...] = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
MONTH_NAMES: tuple[str, ...] = ("JANUARY", "FEBRUARY", "MARCH", "APRIL", "MAY", "JUNE", "JULY", "AUGUST",
                                "SEPTEMBER", "OCTOBER", "NOVEMBER", "DECEMBER")
DATE_SEPARATORS: tuple[str, ...] = ("", "-", "/", ".", " ")

_WORD = re.compile(r"[A-Z0-9.]+")
_NOT_ALNUM = re.compile(r"[^0-9A-Z]")
_PIECE_SPLIT = re.compile(r"[^0-9A-Za-z]+")
_NAME_SPLIT = re.compile(r"[\^=\s,\\]+", re.ASCII)
_DIGIT_RUN = re.compile(rf"\d{{{MIN_ID_DIGITS},}}", re.ASCII)
_DATE_SHAPED = re.compile(
    r"^\d{1,4}[/.\-]\d{1,2}[/.\-]\d{2,4}$|^\d{1,2}[\-/ ]?(" + "|".join(MONTHS) + r")[A-Z]*[\-/ ]?\d{2,4}$"
)


_MON = "|".join(MONTHS)
#: A bytes/str pattern source of every shape :func:`date_forms` writes (numeric with one separator used
#: twice, month-name forms, ``MARCH 17, 1961``); digits are not taken from inside a longer digit run.
_DATE_SOURCE = (
    rf"(?<![0-9])[0-9]{{1,2}}([-/. ]?)(?:{_MON})[A-Z]*\1[0-9]{{2,4}}(?![0-9])"
    rf"|(?<![A-Z])(?:{_MON})[A-Z]*(?:([-/. ]?)[0-9]{{1,2}}\2|[ ][0-9]{{1,2}},[ ])[0-9]{{2,4}}(?![0-9])"
    rf"|(?<![0-9])[0-9]{{4}}([-/. ]?)(?:{_MON})[A-Z]*\3[0-9]{{1,2}}(?![0-9])"
    r"|(?<![0-9])[0-9]{1,4}([-/. ]?)[0-9]{1,2}\4[0-9]{2,4}(?![0-9])"
)
#: Candidates for a written date in text (then compared with :func:`date_forms` of the patient's dates).
DATE_CANDIDATE = re.compile(_DATE_SOURCE, re.IGNORECASE)
#: The same on raw bytes (every DICOM character set keeps ASCII digits and letters as ASCII bytes).
DATE_CANDIDATE_BYTES = re.compile(_DATE_SOURCE.encode("ascii"), re.IGNORECASE)


def is_ideographic(text: str) -> bool:
    """True when every character of ``text`` is from an ideographic or syllabic script (U+2E80 and up)."""
    return bool(text) and all(ord(c) >= IDEOGRAPHIC_FROM for c in text)


def native_parts(value: str) -> list[str]:
    """The pieces of a (decoded) name or identifier value written outside ASCII, as they are written: each piece
    of :func:`name_parts` holding a non-ASCII character, of :data:`MIN_TOKEN` or more characters, or of any length
    when it is all ideographic (``山田``, ``太郎``, ``王``, ``小東`` of ``Wang^XiaoDong=王^小東``); and, for a PN
    value, each component group's pieces run together (``山田太郎``). Matched as whole substrings, never as
    words: CJK text has no spaces."""
    out: list[str] = []
    for group in value.split("="):
        parts = [p for p in name_parts(group) if not p.isascii()]
        out.extend(p for p in parts if len(p) >= MIN_TOKEN or is_ideographic(p))
        if len(parts) > 1:
            out.append("".join(parts))
    return list(dict.fromkeys(out))


def date_in_text(found: str, forms: frozenset[str]) -> bool:
    """Whether a :data:`DATE_CANDIDATE` match is one of ``forms`` (upper case, :func:`date_forms`)."""
    return found.upper() in forms


def words(text: str) -> tuple[str, ...]:
    """Upper-case words of ``text``: characters outside A-Z, 0-9 and '.' break words; dots at the ends go."""
    found = (w.strip(".") for w in _WORD.findall(text.upper()))
    return tuple(w for w in found if w)


def compact(text: str) -> str:
    """Upper-case letters and digits of ``text``, nothing else (``17-Mar-1961`` -> ``17MAR1961``)."""
    return _NOT_ALNUM.sub("", text.upper())


def name_parts(value: str) -> list[str]:
    """Pieces of a name or text value split at PN component and group separators (``^ =``), white space,
    commas and value separators (``\\``); ASCII separators only, so multi-byte text is never split inside."""
    return [p for p in _NAME_SPLIT.split(value) if p]


def digit_runs(text: str) -> list[str]:
    """Maximal runs of :data:`MIN_ID_DIGITS` or more digits in ``text`` (``MRN448120x`` -> ``["448120"]``)."""
    return _DIGIT_RUN.findall(text)


def id_pieces(value: str) -> set[str]:
    """Pieces of an identifier value (each of its ``\\``-separated values) that identify on their own.

    - its letters and digits run together (``PID-448120`` -> ``PID448120``);
    - its alphanumeric pieces (split at every other character) of :data:`MIN_TOKEN` or more characters that hold
      a digit (``B99``, ``448120``) or :data:`MIN_ID_LETTERS` or more letters; short letter-only prefixes
      (``PID``, ``MRN``) are left out: they are labels, not identifiers;
    - its runs of :data:`MIN_ID_DIGITS` or more digits (``MRN1234567`` -> ``1234567``).

    The value itself is not included (callers take it as written).
    """
    out: set[str] = set()
    for one in value.split("\\"):
        joined = compact(one)
        if len(joined) >= MIN_TOKEN:
            out.add(joined)
        for piece in _PIECE_SPLIT.split(one):
            if len(piece) >= MIN_TOKEN and (not piece.isalpha() or len(piece) >= MIN_ID_LETTERS):
                out.add(piece)
        out.update(digit_runs(one))
    out.discard(value)
    return out


@lru_cache(maxsize=65536)
def date_parts(value: str) -> frozenset[tuple[str, ...]]:
    """A DA value (``YYYYMMDD``; the date part of a DT) as the ordered parts of every form it may be written in.

    Numeric: Y-M-D, D-M-Y and M-D-Y, day and month zero-padded or not, 4-digit year (and 2-digit in D-M-Y and
    M-D-Y); with month names (``MAR`` and ``MARCH``): D-MON-Y (4- or 2-digit year), MON-D-Y and Y-MON-D. Parts
    are upper case; forms with fewer than :data:`MIN_DATE_CHARS` letters and digits are left out. Empty when
    ``value`` does not start with 8 digits holding a month 01-12 and a day 01-31.
    """
    digits = value.strip()[:8]
    if len(digits) != 8 or not digits.isdigit():
        return frozenset()
    yyyy, mm, dd = digits[:4], digits[4:6], digits[6:8]
    month, day = int(mm), int(dd)
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return frozenset()
    yy, m, d = yyyy[2:], str(month), str(day)
    forms: set[tuple[str, ...]] = {(yyyy, mm, dd), (yyyy, m, d)}
    for y in (yyyy, yy):
        for dx, mx in ((dd, mm), (d, m)):
            forms.add((dx, mx, y))
            forms.add((mx, dx, y))
    for mon in (MONTHS[month - 1], MONTH_NAMES[month - 1]):
        for dx in (dd, d):
            forms.update({(dx, mon, yyyy), (dx, mon, yy), (mon, dx, yyyy)})
        forms.add((yyyy, mon, dd))
    return frozenset(f for f in forms if len("".join(f)) >= MIN_DATE_CHARS)


@lru_cache(maxsize=65536)
def date_forms(value: str) -> frozenset[str]:
    """Every written form of a DA value: each of :func:`date_parts` joined by each of :data:`DATE_SEPARATORS`
    (``19610317``, ``1961-03-17``, ``17/03/1961``, ``03/17/1961``, ``17.03.1961``, ``17-MAR-1961``,
    ``17 MAR 1961``, ...) and month-first forms with a comma (``MARCH 17, 1961``). Upper case; compare
    case-insensitively."""
    out: set[str] = set()
    for parts in date_parts(value):
        out.update(sep.join(parts) for sep in DATE_SEPARATORS)
        if parts[0].isalpha():
            out.add(f"{parts[0]} {parts[1]}, {parts[2]}")
    return frozenset(out)


def is_date_shaped(word: str) -> bool:
    """True for a word written like a date, whatever date: d/m/y in any order with ``/ . -``, or a day, a month
    name and a year (``12/31/1999``, ``31-DEC-99``, ``2017.03.02``)."""
    return bool(_DATE_SHAPED.match(word.upper().strip(".,;:()[]")))
