"""The per-element actions of PS3.15 E.1.1 (D Z X K C U) and the one pass over a dataset that applies them.

Speed matters (nightly runs over whole archives), so the pass works on pydicom's raw elements where it can:
kept elements are never decoded; removed ones are deleted undecoded; UIDs and dates (ASCII VRs) are read from
the raw bytes; free text is first searched as bytes for the instance's identifiers and only decoded when one is
found. Replacements are new elements built from the tag and VR, without decoding the old value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID_dictionary  # type: ignore[attr-defined]

from guards.deid.dates import shift_da, shift_dt
from guards.deid.private import is_safe_private
from guards.deid.profile import DICT_VR, PATIENT_ID, SQ_TAGS, TEXT_VRS, CompiledProfile
from guards.deid.pseudonyms import pseudo_patient_id, pseudo_patient_name, pseudo_uid
from guards.deid.vocabulary import (
    DATE_CANDIDATE,
    DATE_CANDIDATE_BYTES,
    ID_KEYWORDS,
    MIN_TOKEN,
    TEXT_SCRUB_KEYWORDS,
    date_forms,
    id_pieces,
    name_parts,
    native_parts,
)
from guards.keys import PseudonymKey

SCRUB = "***"
SCRUB_CS = "XXX"  # CS allows only upper case letters, digits, space and underscore (PS3.5 6.2)
SCRUB_FALLBACK = "ANONYMIZED"  # when the bytes hold an identifier and could not be decoded cleanly
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
STRING_VRS = TEXT_VRS | {"PN", "DA", "DT", "TM", "CS", "AE", "AS", "UI", "UR", "DS", "IS"}

def _tags(keywords: tuple[str, ...]) -> tuple[int, ...]:
    """Tags of the keywords that hold values (sequences are cleaned item by item, not searched as tokens)."""
    tags = (tag_for_keyword(k) for k in keywords)
    return tuple(t for t in tags if t is not None and dictionary_VR(t) != "SQ")


#: Top-level attributes whose values are identifiers to scrub from free text that is kept or cleaned
#: (:data:`guards.deid.vocabulary.TEXT_SCRUB_KEYWORDS`: names, identifiers, addresses, phones, institution,
#: device, birth date).
IDENTIFIER_TAGS: tuple[int, ...] = _tags(TEXT_SCRUB_KEYWORDS)
_ID_TAGS: frozenset[int] = frozenset(_tags(ID_KEYWORDS))
_BIRTH_DATE = 0x00100030
CONTENT_SEQUENCE = 0x0040A730
#: Code Sequence Macro attributes (PS3.3 8.8): codes name concepts, not the patient; kept (and scrubbed)
#: when the content of a Content Sequence goes.
_CODE_TAGS: frozenset[int] = frozenset(
    t for t in (tag_for_keyword(k) for k in ("CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion",
                                             "CodeMeaning", "LongCodeValue", "URNCodeValue")) if t is not None
)


@dataclass
class Context:
    """Per-instance state of one pass: the key, the compiled profile, the patient's date offset, its vocabulary.

    ``tokens`` are the patient's identifiers as UTF-8 text (:func:`identifier_tokens`: decoded with the
    dataset's character sets); ``dates`` the written forms of every date of the patient (:func:`patient_dates`).
    """

    key: PseudonymKey
    profile: CompiledProfile
    uid_root: str
    offset_days: int
    tokens: list[bytes]
    crosswalk: dict[tuple[str, str], str] | None
    raw_implicit: bool | None = None  # the dataset's encoding when read little endian: new values written raw
    dates: frozenset[str] = frozenset()
    #: id of a sequence element the vocabulary decoded -> its raw original (put back when nothing in it changed)
    raw_sequences: dict[int, tuple[DataElement, RawDataElement]] = field(default_factory=dict)
    changes: int = field(default=0, init=False)  # elements removed or replaced so far in this pass
    dummy_text: int = field(default=0, init=False)  # > 0 inside a Content Sequence whose values go (E.3.3 off)
    _lowered: tuple[bytes, ...] | None = field(default=None, init=False)
    _native: bool = field(default=False, init=False)
    _texts: tuple[tuple[str, str], ...] | None = field(default=None, init=False)

    def uid(self, value: str) -> str:
        original = value.strip(" \x00")
        if not original:
            return ""
        new = pseudo_uid(self.key, original, root=self.uid_root)
        if self.crosswalk is not None:
            self.crosswalk[("uid", original)] = new
        return new

    def _prepare(self) -> None:
        texts = {t.decode("utf-8", "replace") for t in self.tokens}
        self._texts = tuple(sorted(((t, t.casefold()) for t in texts), key=lambda p: len(p[0]), reverse=True))
        self._lowered = tuple(sorted({t.lower() for t in self.tokens if t.isascii()}, key=len, reverse=True))
        self._native = any(not t.isascii() for t in self.tokens)

    def hit(self, data: bytes) -> bool:
        """Whether ``data`` (an element's raw bytes) may hold an identifier or a date of the patient: an ASCII
        identifier as bytes (ASCII case-insensitive; every DICOM character set writes ASCII as ASCII), a written
        date equal to one of the patient's, or any non-ASCII byte when the patient has a name or identifier
        outside ASCII (the text is then decoded with the dataset's character sets and searched as text).
        Plain substring tests: compiling a regular expression per instance cost more than the whole rest of
        de-identification (each instance of a new patient has new identifiers, so a cache rarely hits)."""
        if self._lowered is None:
            self._prepare()
        assert self._lowered is not None
        if self._native and (not data.isascii() or b"\x1b" in data):  # ISO 2022 (IR 87) is 7-bit
            return True
        if self._lowered:
            low = data.lower()
            if any(t in low for t in self._lowered):
                return True
        if self.dates:
            dates = self.dates
            return any(m.group().decode("ascii").upper() in dates for m in DATE_CANDIDATE_BYTES.finditer(data))
        return False

    def scrub(self, text: str, *, replacement: str) -> str:
        """``text`` with every identifier replaced (case-insensitively, longest first, native-script names as
        written) and every written form of a date of the patient. Only the identifiers that occur in the text
        get a (small, cached) pattern compiled."""
        if self._texts is None:
            self._prepare()
        assert self._texts is not None
        folded = text.casefold()
        for token, low in self._texts:
            if low in folded:
                text = _token_pattern(token).sub(replacement, text)
                folded = text.casefold()
        if self.dates:
            dates = self.dates
            text = DATE_CANDIDATE.sub(lambda m: replacement if m.group().upper() in dates else m.group(), text)
        return text


@lru_cache(maxsize=4096)
def _token_pattern(token: str) -> re.Pattern[str]:
    return re.compile(re.escape(token), re.IGNORECASE)


def text_of(value: object) -> str:
    """A value as text (multi-values joined with a backslash, None as "")."""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value)


def _raw_bytes(elem: DataElement | RawDataElement) -> bytes | None:
    if isinstance(elem, RawDataElement):
        return elem.value if isinstance(elem.value, bytes) else b""
    return None


def value_text(ds: Dataset, tag: int) -> str:
    """An element's value as text, stripped of padding; plain-ASCII raw bytes are read without decoding the
    element (the same text pydicom gives; multiple values, ISO 2022 escapes and other bytes go through pydicom)."""
    raw = _raw_bytes(ds.get_item(tag))
    if raw is not None and raw.isascii() and b"\x1b" not in raw and b"\\" not in raw:
        return raw.decode("ascii").strip(" \x00")
    return text_of(ds[tag].value).strip(" \x00")


def _kinds() -> dict[int, str]:
    """Data dictionary tag -> what its values give the vocabulary: ``id`` (identifier: value, pieces),
    ``name`` (every PN: value, parts), ``value`` (address, phone, institution, device: value, parts),
    ``date`` (DA, DT), ``sq`` (searched inside)."""
    out: dict[int, str] = {}
    for tag, vr in DICT_VR.items():
        if vr == "SQ":
            out[tag] = "sq"
        elif vr == "PN":
            out[tag] = "name"
        elif vr in ("DA", "DT"):
            out[tag] = "date"
    out.update({t: "value" for t in IDENTIFIER_TAGS if out.get(t) != "name"})
    out.update({t: "id" for t in _ID_TAGS})
    out[_BIRTH_DATE] = "date"
    return out


_KINDS: dict[int, str] = _kinds()
MAX_VOCABULARY_DEPTH = 64  # sequence nesting searched for identifiers (SR trees are rarely deeper than 10)


def _values_text(ds: Dataset, tag: int) -> str:
    """An element's value decoded with the dataset's character sets (pydicom's ``convert_encodings`` and
    ``decode_bytes``, ISO 2022 escapes included; a sequence item inherits its parent's character set), stripped;
    plain-ASCII raw bytes without escapes are read as they are (the same text, no decoding)."""
    raw = _raw_bytes(ds.get_item(tag))
    if raw is not None and raw.isascii() and b"\x1b" not in raw:
        return raw.decode("ascii").strip(" \x00")
    return text_of(ds[tag].value).strip(" \x00")


@dataclass
class Vocabulary:
    """The patient vocabulary of one dataset (:func:`patient_vocabulary`)."""

    tokens: list[bytes]  # identifiers, UTF-8
    dates: frozenset[str]  # written forms of the patient's dates, upper case
    raw_sequences: dict[int, tuple[DataElement, RawDataElement]]  # decoded to read: id -> (element, raw)


def _gather(ds: Dataset, tokens: dict[str, None], dates: set[str], depth: int,
            raws: dict[int, tuple[DataElement, RawDataElement]]) -> None:
    for tag in list(ds.keys()):
        number = int(tag)
        kind = _KINDS.get(number)
        if kind is None or number >> 16 & 1:
            continue
        if kind == "sq":
            if depth < MAX_VOCABULARY_DEPTH:
                original = ds.get_item(tag)
                elem = ds[tag]
                if isinstance(original, RawDataElement):
                    raws[id(elem)] = (elem, original)
                for item in elem.value or ():
                    _gather(item, tokens, dates, depth + 1, raws)
            continue
        text = _values_text(ds, number)
        if not text:
            continue
        if kind == "date":
            dates.update(v.strip()[:8] for v in text.split("\\"))
            continue
        if len(text) >= MIN_TOKEN:
            tokens[text] = None
        pieces = name_parts(text)
        if kind == "id":
            pieces.extend(id_pieces(text))
        for piece in pieces:
            if len(piece) >= MIN_TOKEN:
                tokens[piece] = None
        for piece in native_parts(text):
            tokens[piece] = None


def patient_vocabulary(ds: Dataset) -> Vocabulary:
    """The whole patient vocabulary of ``ds``, read before anything changes: identifiers as UTF-8 tokens and the
    written forms of the patient's dates (:mod:`guards.deid.vocabulary`).

    Identifiers come from anywhere in the dataset (every sequence item, to :data:`MAX_VOCABULARY_DEPTH`):
    every person name (PN: patient, physicians, SR PersonName and VerifyingObserverName), the identifier
    attributes (PatientID also inside OtherPatientIDsSequence, AccessionNumber, ...) with their pieces,
    addresses, phones, institution and device names; each value, its name parts of :data:`MIN_TOKEN` or more
    characters, and its native-script parts of any length when ideographic (:func:`native_parts`: ``王``).
    Values are decoded with the dataset's Specific Character Set. Dates: every DA value and the date part of
    every DT value, each in every form of :func:`date_forms` (``03/17/1961``, ``1961-03-17``, ``17-MAR-1961``).
    """
    tokens: dict[str, None] = {}
    values: set[str] = set()
    raws: dict[int, tuple[DataElement, RawDataElement]] = {}
    _gather(ds, tokens, values, 0, raws)
    forms: set[str] = set()
    for value in values:
        forms.update(date_forms(value))
    return Vocabulary([t.encode("utf-8") for t in tokens], frozenset(forms), raws)


def identifier_tokens(ds: Dataset) -> list[bytes]:
    """The instance's identifiers as UTF-8 tokens (:func:`patient_vocabulary`) and the birth date in every written
    form (the other dates are matched by shape, :func:`patient_dates`)."""
    tokens = patient_vocabulary(ds).tokens
    if _BIRTH_DATE in ds:
        birth = _values_text(ds, _BIRTH_DATE)
        tokens.extend(f.encode("ascii") for f in sorted(date_forms(birth)))
    return tokens


def patient_dates(ds: Dataset) -> frozenset[str]:
    """The written forms of every date in ``ds`` (:func:`patient_vocabulary`)."""
    return patient_vocabulary(ds).dates


def _vr(ds: Dataset, tag: int, elem: DataElement | RawDataElement) -> str:
    """The element's VR without decoding it where possible (explicit VR, or an unambiguous dictionary VR)."""
    vr = elem.VR
    if vr and vr != "UN":
        return str(vr)
    known = DICT_VR.get(int(tag))
    if known and " or " not in known:
        return known
    return str(ds[tag].VR)  # decodes: pydicom resolves ambiguous VRs from the dataset


def _ascii_values(elem: DataElement | RawDataElement) -> list[str]:
    raw = _raw_bytes(elem)
    text = raw.decode("ascii", "replace") if raw is not None else text_of(elem.value)
    return [v.strip(" \x00") for v in text.split("\\")]


def _set(ds: Dataset, tag: int, vr: str, value: object, ctx: Context) -> None:
    """Replace an element by a new one; the values set here are built to fit their VR, so not re-validated."""
    ds[tag] = DataElement(tag, vr, value, validation_mode=config.IGNORE)
    ctx.changes += 1


_SHORT_LIMIT = 0xFFFF
_LONG_TEXT_VRS = frozenset({"UC", "UR", "UT"})


def _set_text(ds: Dataset, tag: int, vr: str, text: str, ctx: Context) -> None:
    """Replace a string element; ASCII values go in as raw bytes in the dataset's own encoding (fast to write)."""
    implicit = ctx.raw_implicit
    if implicit is None or not text.isascii():
        _set(ds, tag, vr, text, ctx)
        return
    data = text.encode("ascii")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    if not implicit and len(data) > _SHORT_LIMIT and vr not in _LONG_TEXT_VRS:
        _set(ds, tag, vr, text, ctx)
        return
    ds[tag] = RawDataElement(BaseTag(tag), vr, len(data), data, 0, implicit, True)
    ctx.changes += 1


def _delete(ds: Dataset, tag: int, ctx: Context) -> None:
    del ds[tag]
    ctx.changes += 1


def _multi(values: list[str]) -> str | list[str]:
    return values if len(values) > 1 else values[0]


def _items(ds: Dataset, tag: int, ctx: Context) -> None:
    """Clean a sequence's items; if nothing in them changed, the undecoded original is put back (for speed)."""
    original: DataElement | RawDataElement = ds.get_item(tag)
    if not isinstance(original, RawDataElement):
        decoded_by = ctx.raw_sequences.get(id(original))
        if decoded_by is not None and decoded_by[0] is original:
            original = decoded_by[1]
    before = ctx.changes
    for item in ds[tag].value or ():
        clean_dataset(item, ctx)
    if ctx.changes == before and isinstance(original, RawDataElement):
        ds[tag] = original


def _zero(ds: Dataset, tag: int, vr: str, ctx: Context) -> None:
    if vr == "SQ":
        _set(ds, tag, vr, Sequence(), ctx)
    elif vr in BINARY_VRS:
        _set(ds, tag, vr, b"", ctx)
    elif vr in STRING_VRS:
        _set_text(ds, tag, vr, "", ctx)
    else:
        _set(ds, tag, vr, None, ctx)


def _uids(ds: Dataset, tag: int, elem: DataElement | RawDataElement, ctx: Context, *, keep_registered: bool) -> None:
    values = _ascii_values(elem)
    if keep_registered and all(v in UID_dictionary or not v for v in values):
        return
    out = [v if keep_registered and v in UID_dictionary else ctx.uid(v) for v in values]
    _set_text(ds, tag, "UI", "\\".join(out), ctx)


def _scrub(ds: Dataset, tag: int, elem: DataElement | RawDataElement, vr: str, ctx: Context) -> None:
    """Free text kept or cleaned (T, C): every entry of the patient vocabulary replaced (:meth:`Context.scrub`),
    searched in the text decoded with the dataset's character sets. Inside a Content Sequence whose content
    goes (Clean Structured Content off, PS3.15 E.3.3), the text is a dummy instead."""
    if ctx.dummy_text and vr in TEXT_VRS and tag not in _CODE_TAGS:
        _set_text(ds, tag, vr, str(DUMMIES[vr]), ctx)
        return
    raw = _raw_bytes(elem)
    if raw is not None and not ctx.hit(raw):
        return  # nothing of the patient's vocabulary can be in the bytes: kept undecoded
    decoded = ds[tag]  # decodes with the dataset's character sets
    value = decoded.value
    if value is None or isinstance(value, bytes):
        return
    replacement = SCRUB_CS if vr == "CS" else SCRUB
    values = [str(v) for v in value] if isinstance(value, MultiValue | list) else [str(value)]
    new = [ctx.scrub(v, replacement=replacement) for v in values]
    # Bytes the character sets could not decode may hide an identifier the text search cannot see.
    new = [(SCRUB_CS if vr == "CS" else SCRUB_FALLBACK) if "\ufffd" in v else v for v in new]
    if new != values:
        decoded.value = _multi(new)
        ctx.changes += 1


def _act_z(ds: Dataset, tag: int, elem: DataElement | RawDataElement, ctx: Context) -> None:
    _zero(ds, tag, _vr(ds, tag, elem), ctx)


def _act_d(ds: Dataset, tag: int, elem: DataElement | RawDataElement, ctx: Context) -> None:
    vr = _vr(ds, tag, elem)
    if vr == "SQ" and tag == CONTENT_SEQUENCE:
        # Content Sequence is D, C under Clean Structured Content (PS3.15 E.3.3): without the option the content
        # goes (every free-text value in the tree becomes a dummy; names are D, dates shifted, UIDs keyed) and
        # the document's structure (relationships, value types, codes) stays, so the SR remains valid.
        ctx.dummy_text += 1
        try:
            _items(ds, tag, ctx)
        finally:
            ctx.dummy_text -= 1
    elif vr == "SQ":
        _items(ds, tag, ctx)  # a dummy sequence: its items, cleaned by the same rules
    elif vr == "UI":
        _uids(ds, tag, elem, ctx, keep_registered=False)
    elif vr in BINARY_VRS:
        _set(ds, tag, vr, b"\x00\x00", ctx)
    elif vr in DUMMIES:
        dummy = DUMMIES[vr]
        if isinstance(dummy, str):
            _set_text(ds, tag, vr, dummy, ctx)
        else:
            _set(ds, tag, vr, dummy, ctx)
    else:
        _zero(ds, tag, vr, ctx)


def _act_u(ds: Dataset, tag: int, elem: DataElement | RawDataElement, ctx: Context) -> None:
    vr = _vr(ds, tag, elem)
    if vr == "SQ":
        _items(ds, tag, ctx)
    else:
        _uids(ds, tag, elem, ctx, keep_registered=False)


def _act_c(ds: Dataset, tag: int, elem: DataElement | RawDataElement, ctx: Context) -> None:
    """C (clean, PS3.15 E.1.1): keep the value's meaning without what identifies."""
    vr = _vr(ds, tag, elem)
    if vr == "SQ":
        _items(ds, tag, ctx)
    elif vr in ("DA", "DT"):
        if ctx.profile.shift_dates:
            text = "\\".join(_ascii_values(elem))
            shifted = shift_da(text, ctx.offset_days) if vr == "DA" else shift_dt(text, ctx.offset_days)
            _set_text(ds, tag, vr, shifted, ctx)
    elif vr in TEXT_VRS or vr in ("PN", "AE", "CS", "UR"):
        _scrub(ds, tag, elem, vr, ctx)
    elif vr == "UI" and not ctx.profile.retain_uids:
        _uids(ds, tag, elem, ctx, keep_registered=True)
    # TM, numbers and binary values carry no identifiers of their own: kept.


def _act_t(ds: Dataset, tag: int, elem: DataElement | RawDataElement, ctx: Context) -> None:
    vr = _vr(ds, tag, elem)
    if vr == "SQ":
        _items(ds, tag, ctx)
    elif vr in TEXT_VRS or vr == "PN":
        _scrub(ds, tag, elem, vr, ctx)


def _act_v(ds: Dataset, tag: int, elem: DataElement | RawDataElement, ctx: Context) -> None:
    if _vr(ds, tag, elem) == "UI":
        _uids(ds, tag, elem, ctx, keep_registered=True)


def _act_p(ds: Dataset, tag: int, elem: DataElement | RawDataElement, ctx: Context) -> None:
    """PatientID / PatientName: keyed pseudonyms (PS3.15 E.1.1 allows a dummy for Z and Z/D)."""
    original = value_text(ds, tag)
    if tag == PATIENT_ID:
        new, kind, vr = (pseudo_patient_id(ctx.key, original) if original else ""), "PatientID", "LO"
    else:
        new, kind, vr = (pseudo_patient_name(ctx.key, original) if original else ""), "PatientName", "PN"
    if ctx.crosswalk is not None and original:
        ctx.crosswalk[(kind, original)] = new
    _set_text(ds, tag, vr, new, ctx)


ACTIONS: dict[str, Callable[[Dataset, int, DataElement | RawDataElement, Context], None]] = {
    "Z": _act_z,
    "D": _act_d,
    "U": _act_u,
    "C": _act_c,
    "P": _act_p,
    "T": _act_t,
    "V": _act_v,
}


def _private(ds: Dataset, ctx: Context, tags: list[int]) -> None:
    """Private elements (odd groups): removed, unless Retain Safe Private keeps a safe-listed one (E.3.10)."""
    if ctx.profile.private != "C":
        for tag in tags:
            _delete(ds, tag, ctx)
        return
    keep_creators: set[int] = set()
    for tag in tags:
        group, element = tag >> 16, tag & 0xFFFF
        if element < 0x1000:
            continue  # creators and group lengths are decided below
        creator_tag = (group << 16) | (element >> 8)
        creator = text_of(ds[creator_tag].value) if creator_tag in ds else ""
        if creator and is_safe_private(creator, group, element):
            keep_creators.add(creator_tag)
        else:
            _delete(ds, tag, ctx)
    for tag in tags:
        if (tag & 0xFFFF) < 0x1000 and tag not in keep_creators:
            _delete(ds, tag, ctx)


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


def clean_dataset(ds: Dataset, ctx: Context) -> None:
    """Apply the compiled profile to every element of ``ds`` and, recursively, of its sequence items."""
    actions = ctx.profile.actions
    private: list[int] = []
    for tag in list(ds.keys()):
        number = int(tag)  # plain int keys: a BaseTag in a dict lookup costs a Python-level __eq__ call
        if number >> 16 & 1:
            private.append(tag)
            continue
        if not number & 0xFFFF:
            _delete(ds, tag, ctx)  # group length (retired): wrong once the group changes
            continue
        action = actions.get(number)
        if action is None:
            action = _repeating(number, ctx.profile)
        if action == "K":
            if number in SQ_TAGS:
                _items(ds, tag, ctx)
            continue
        if action == "X":
            _delete(ds, tag, ctx)
            continue
        ACTIONS[action](ds, tag, ds.get_item(tag), ctx)
    if private:
        _private(ds, ctx, private)
