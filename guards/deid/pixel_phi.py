"""The instance's own PHI header values as OCR match tokens, and the match of OCR words against them.

PS3.15 E.3.1 (Clean Pixel Data Option) asks that identifying information burned into the pixels be removed;
the strongest evidence that a burned-in word identifies the patient is that it equals a value of the
instance's own identifying attributes (PS3.15 Table E.1-1): name parts, Patient ID, Other Patient IDs,
Accession Number, institution, referring physician, and dates, which overlays print in many formats
(``03/02/2017``, ``24-MAY-02``, ``2017-03-02``, ...). Tokens and words are compared as upper-case letters and
digits only, so separators and OCR's punctuation do not matter. Which attributes, which date forms, which pieces of
an identifier, and the normalisation come from :mod:`guards.deid.vocabulary`, shared with the header cleaner and
the residual-PHI audit.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from guards.deid.vocabulary import (
    ADDRESS_KEYWORDS,
    DATE_KEYWORDS,
    DEVICE_KEYWORDS,
    ID_KEYWORDS,
    INSTITUTION_KEYWORDS,
    MIN_TOKEN,
    NAME_KEYWORDS,
    PHONE_KEYWORDS,
    compact,
    date_parts,
    digit_runs,
    id_pieces,
    is_date_shaped,
    name_parts,
)

#: The pixel cleaner's normalisation (:func:`guards.deid.vocabulary.compact`), under its old name.
normalize = compact

_TEXT_KEYWORDS = NAME_KEYWORDS + INSTITUTION_KEYWORDS + ADDRESS_KEYWORDS + PHONE_KEYWORDS + DEVICE_KEYWORDS
_WORDS_TO_IGNORE = frozenset({"NO", "INFO", "THE", "OF", "AND", "UNKNOWN", "ANONYMOUS", "NONE"})


def _values(ds: Dataset, keyword: str) -> list[str]:
    if keyword not in ds:
        return []
    value = ds.data_element(keyword)
    if value is None or value.value is None or value.VR == "SQ":
        return []
    raw = value.value
    items = list(raw) if isinstance(raw, MultiValue | list | tuple) else [raw]
    return [str(v) for v in items if str(v).strip()]


def date_tokens(value: str) -> set[str]:
    """Normalized renderings of a DA value (YYYYMMDD) as overlays print it (every form of
    :func:`guards.deid.vocabulary.date_parts`, letters and digits only)."""
    return {"".join(parts) for parts in date_parts(value)}


def header_tokens(ds: Dataset) -> set[str]:
    """Normalized PHI tokens from ``ds``'s own identifying attributes (read before header de-identification):
    name and text parts, identifiers and their pieces (:func:`guards.deid.vocabulary.id_pieces`), dates."""
    tokens: set[str] = set()
    for keyword in _TEXT_KEYWORDS:
        for value in _values(ds, keyword):
            tokens.update(compact(part) for part in name_parts(value))
    ids = [v for keyword in ID_KEYWORDS for v in _values(ds, keyword)]
    if "OtherPatientIDsSequence" in ds:
        ids.extend(str(item.get("PatientID", "")) for item in ds.OtherPatientIDsSequence)
    for value in ids:
        tokens.add(compact(value))
        tokens.update(compact(piece) for piece in id_pieces(value))
    for keyword in DATE_KEYWORDS:
        for value in _values(ds, keyword):
            tokens.update(date_tokens(value.strip()))
    return {t for t in tokens if len(t) >= MIN_TOKEN and t not in _WORDS_TO_IGNORE}


_OCR_FOLD = str.maketrans("OQDILZSB", "00011258")


def matches_header(word: str, tokens: set[str]) -> bool:
    """True when the OCR ``word`` equals or contains a header token, or is a piece (4+ characters) of one.

    Pieces cover overlays that truncate (``PATIENTFI...``) and OCR that splits a value (``MRN`` ``1628790``).

    Both sides are also compared with the letters OCR confuses with digits folded (O/Q/D to 0, I/L to 1, Z to
    2, S to 5, B to 8), so that ``24-MAY-O2`` matches ``24MAY02``.
    """
    w = normalize(word)
    if len(w) < MIN_TOKEN or w in _WORDS_TO_IGNORE:
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
    return is_date_shaped(word) or bool(digit_runs(word))
