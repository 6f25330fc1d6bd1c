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
from guards.deid.vocabulary import ID_KEYWORDS, MIN_TOKEN, TEXT_SCRUB_KEYWORDS, date_forms, id_pieces, name_parts
from guards.keys import PseudonymKey

SCRUB = "***"
SCRUB_CS = "XXX"  # CS allows only upper case letters, digits, space and underscore (PS3.5 6.2)
SCRUB_FALLBACK = "ANONYMIZED"  # when an identifier was found in the bytes but not in the decoded text
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


@dataclass
class Context:
    """Per-instance state of one pass: the key, the compiled profile, the patient's date offset, identifiers."""

    key: PseudonymKey
    profile: CompiledProfile
    uid_root: str
    offset_days: int
    tokens: list[bytes]
    crosswalk: dict[tuple[str, str], str] | None
    raw_implicit: bool | None = None  # the dataset's encoding when read little endian: new values written raw
    changes: int = field(default=0, init=False)  # elements removed or replaced so far in this pass
    _lowered: tuple[bytes, ...] | None = field(default=None, init=False)
    _texts: tuple[str, ...] | None = field(default=None, init=False)

    def uid(self, value: str) -> str:
        original = value.strip(" \x00")
        if not original:
            return ""
        new = pseudo_uid(self.key, original, root=self.uid_root)
        if self.crosswalk is not None:
            self.crosswalk[("uid", original)] = new
        return new

    def hit(self, data: bytes) -> bool:
        """Whether any identifier is in ``data`` (ASCII case-insensitive). Plain substring tests: compiling a
        regular expression per instance cost more than the whole rest of de-identification (each instance of a
        new patient has new identifiers, so a cache of compiled patterns rarely hits)."""
        if self._lowered is None:
            self._lowered = tuple(sorted({t.lower() for t in self.tokens}, key=len, reverse=True))
        if not self._lowered:
            return False
        low = data.lower()
        return any(t in low for t in self._lowered)

    def scrub(self, text: str, *, replacement: str) -> str:
        """``text`` with every identifier replaced, case-insensitively, longest first. Only the identifiers that
        occur in the text get a (small, cached) pattern compiled."""
        if self._texts is None:
            variants = {t.decode("utf-8", "ignore") for t in self.tokens} | {t.decode("latin-1") for t in self.tokens}
            self._texts = tuple(sorted((t for t in variants if len(t) >= MIN_TOKEN), key=len, reverse=True))
        folded = text.casefold()
        for token in self._texts:
            if token.casefold() in folded:
                text = _token_pattern(token).sub(replacement, text)
                folded = text.casefold()
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


def identifier_tokens(ds: Dataset) -> list[bytes]:
    """The instance's identifiers (names, IDs, addresses ...) as byte tokens, read before anything changes: each
    value, its name parts, an identifier's pieces and the birth date in every written form
    (:mod:`guards.deid.vocabulary`). Tokens keep the value's own bytes (split and rejoined as Latin-1, which
    maps every byte to one character, so multi-byte text is never altered)."""
    tokens: list[bytes] = []
    for tag in IDENTIFIER_TAGS:
        if tag not in ds:
            continue
        elem = ds.get_item(tag)
        raw = _raw_bytes(elem)
        value = raw if raw is not None else text_of(elem.value).encode("utf-8", "ignore")
        value = value.strip(b" \x00")
        if len(value) < MIN_TOKEN:
            continue
        tokens.append(value)
        text = value.decode("latin-1")
        pieces = name_parts(text)
        if tag in _ID_TAGS:
            pieces.extend(id_pieces(text))
        elif tag == _BIRTH_DATE:
            pieces.extend(date_forms(text))
        tokens.extend(p.encode("latin-1") for p in pieces if len(p) >= MIN_TOKEN)
    return tokens


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
    original = ds.get_item(tag)
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
    raw = _raw_bytes(elem)
    if raw is not None and not ctx.hit(raw):
        return  # none of the instance's identifiers is in the bytes: kept undecoded
    decoded = ds[tag]  # decodes a raw element: an identifier is in there, or it was decoded already
    value = decoded.value
    if value is None or isinstance(value, bytes):
        return
    replacement = SCRUB_CS if vr == "CS" else SCRUB
    values = [str(v) for v in value] if isinstance(value, MultiValue | list) else [str(value)]
    new = [ctx.scrub(v, replacement=replacement) for v in values]
    if raw is not None and new == values:  # found in the bytes, not in the text (another character set)
        new = ["XXX" if vr == "CS" else SCRUB_FALLBACK for _ in values]
    if new != values:
        decoded.value = _multi(new)
        ctx.changes += 1


def _act_z(ds: Dataset, tag: int, elem: DataElement | RawDataElement, ctx: Context) -> None:
    _zero(ds, tag, _vr(ds, tag, elem), ctx)


def _act_d(ds: Dataset, tag: int, elem: DataElement | RawDataElement, ctx: Context) -> None:
    vr = _vr(ds, tag, elem)
    if vr == "SQ":
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
