"""Encode a de-identified dataset as a DICOM Part 10 file (PS3.10 7.1), copying untouched elements as bytes.

After the de-identification pass most elements (Pixel Data above all) are still pydicom raw elements holding
their encoded value bytes. pydicom's writer handles each through a generic per-element path; here a raw element
whose encoding (implicit / explicit VR, little endian) is the one being written gets its header packed with
``struct`` and its value bytes copied as they are, which is what pydicom's writer produces for it, only
faster. Every other element (the ones the pass replaced, sequences) goes through pydicom's own
``write_data_element``. The file meta information is written by pydicom (``write_file_meta_info`` with the
standard enforced, as ``save_as(enforce_file_format=True)`` does).

Anything the fast path does not cover (big endian, deflated, a change of character set or encoding, deferred
values) falls back to ``Dataset.save_as(enforce_file_format=True)``. A test compares both writers byte for byte.
"""

from __future__ import annotations

import struct
from io import BytesIO

from pydicom import __version_info__
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_dataset, write_file_meta_info
from pydicom.tag import tag_in_exception
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from guards.deid.actions import value_text

_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_ITEM = b"\xfe\xff\x00\xe0"
_ITEM_DELIMITER = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_UNDEFINED = 0xFFFFFFFF
_IMPLICIT = struct.Struct("<HHL")
_META_TEXT = {"UI": b"\x00", "SH": b" ", "AE": b" "}  # padding byte per VR (PS3.5 6.2)
_META_REQUIRED = (0x00020002, 0x00020003, 0x00020010)
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_EXPLICIT_LONG = struct.Struct("<HH2s2xL")
ZERO_PREAMBLE = b"\x00" * 128  # the File Preamble of every file written (PS3.10 7.1)


def encode_part10(ds: Dataset) -> bytes:
    """The Part 10 bytes of ``ds`` (preamble, DICM, file meta, data set), in its file meta's transfer syntax."""
    _zero_preamble(ds)
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if meta is None or ts is None or not _fast_ok(ds, ts):
        return _slow(ds)
    implicit = ts == ImplicitVRLittleEndian
    for meta_tag, tag in ((0x00020002, 0x00080016), (0x00020003, 0x00080018)):  # Media Storage SOP Class / Instance
        if tag in ds:
            value = value_text(ds, tag)
            if meta_tag not in meta or value_text(meta, meta_tag) != value:
                meta[meta_tag] = DataElement(meta_tag, "UI", UID(value))
    pixel = ds.get_item(0x7FE00010) if 0x7FE00010 in ds else None
    if pixel is not None and not isinstance(pixel, RawDataElement):
        ds[0x7FE00010].is_undefined_length = ts.is_compressed  # as pydicom's dcmwrite does
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, True
    fp.write(ZERO_PREAMBLE)  # never the source's preamble (see _zero_preamble)
    fp.write(b"DICM")
    fast_meta = _encode_file_meta(meta)
    if fast_meta is None:
        write_file_meta_info(fp, meta, enforce_standard=True)
    else:
        fp.write(fast_meta)
    _write_dataset(fp, ds, implicit)
    return fp.getvalue()


def _zero_preamble(ds: Dataset) -> None:
    """Set the File Preamble to 128 zero bytes (PS3.10 7.1), for both writers.

    PS3.10 7.1 leaves the preamble's content to the application (a TIFF header of a dual-personality file, or any
    text): what a source put there can identify the patient, and no de-identification rule (PS3.15 Annex E) reads
    it. PS3.10 7.1: "If the File Preamble is not used by an Application Profile or a specific implementation, all
    128 bytes shall be set to 00H"; a de-identified file uses none.
    """
    if getattr(ds, "preamble", None) is not None:
        ds.preamble = ZERO_PREAMBLE


def _encode_file_meta(meta: FileMetaDataset) -> bytes | None:
    """The File Meta Information group as ``write_file_meta_info(enforce_standard=True)`` writes it (PS3.10 7.1),
    packed directly; None for anything but single-valued UI / SH / AE / OB / UL elements (pydicom writes those).
    """
    if any(tag >> 16 != 2 for tag in meta.keys()):
        return None  # pydicom raises its own error for this
    if _is_empty(meta, 0x00020001):
        meta.FileMetaInformationVersion = b"\x00\x01"
    if _is_empty(meta, 0x00020012):
        meta.ImplementationClassUID = UID(PYDICOM_IMPLEMENTATION_UID)
    if 0x00020013 not in meta:
        meta.ImplementationVersionName = f"PYDICOM {'.'.join(__version_info__)}"
    parts: list[bytes] = []
    for tag in sorted(meta.keys()):
        if tag == 0x00020000:
            continue
        raw = meta.get_item(tag)
        if isinstance(raw, RawDataElement):
            header = _raw_header(raw, False)
            if header is not None and raw.length != _UNDEFINED:
                parts.append(header + raw.value)  # as read: pydicom's writer copies these bytes too
                continue
        elem = meta[tag]
        value = elem.value
        vr = elem.VR
        if vr == "OB" and isinstance(value, bytes):
            data = value + b"\x00" * (len(value) % 2)
            parts.append(_EXPLICIT_LONG.pack(2, tag & 0xFFFF, b"OB", len(data)) + data)
            continue
        if vr not in _META_TEXT or not isinstance(value, str) or "\\" in value or not value.isascii():
            return None
        if not value and tag in _META_REQUIRED:
            return None  # pydicom names the missing element in its error
        data = value.encode("ascii")
        data += _META_TEXT[vr] * (len(data) % 2)
        if len(data) > 0xFFFF:
            return None
        parts.append(_EXPLICIT_SHORT.pack(2, tag & 0xFFFF, vr.encode("ascii"), len(data)) + data)
    for required in _META_REQUIRED:
        if required not in meta:
            return None
    body = b"".join(parts)
    meta.FileMetaInformationGroupLength = len(body)
    return _EXPLICIT_SHORT.pack(2, 0, b"UL", 4) + struct.pack("<L", len(body)) + body


def _is_empty(meta: FileMetaDataset, tag: int) -> bool:
    """True when ``tag`` is absent or has no value; a raw element is judged by its length, without decoding."""
    if tag not in meta:
        return True
    elem = meta.get_item(tag)
    if isinstance(elem, RawDataElement):
        value = elem.value or b""
        return not (value if elem.VR == "OB" else value.strip(b" \x00"))
    return bool(elem.is_empty)


def _fast_ok(ds: Dataset, ts: object) -> bool:
    uid = ts
    if not getattr(uid, "is_transfer_syntax", False) or uid == DeflatedExplicitVRLittleEndian:
        return False
    if not getattr(uid, "is_little_endian", False):
        return False
    expected = (bool(getattr(uid, "is_implicit_VR", False)), True)
    if ds.original_encoding != expected:
        return False
    return bool(ds.original_character_set == ds._character_set)


def _slow(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _write_dataset(fp: DicomBytesIO, ds: Dataset, implicit: bool, parent_encoding: object = default_encoding) -> None:
    original = ds.original_encoding
    if None not in original and (original != (implicit, True) or ds.original_character_set != ds._character_set):
        # a change of character set or of encoding: pydicom decodes and re-encodes every element
        write_dataset(fp, ds, parent_encoding=parent_encoding)  # type: ignore[arg-type]
        return
    encoding = ds.get("SpecificCharacterSet", parent_encoding)
    write = fp.write
    for tag in sorted(ds.keys()):
        if not tag & 0xFFFF and tag >> 16 > 6:
            continue  # retired group lengths are not written (PS3.5 7.2)
        elem = ds.get_item(tag)
        if isinstance(elem, RawDataElement):
            header = _raw_header(elem, implicit)
            if header is not None:
                write(header)
                write(elem.value)
                if elem.length == _UNDEFINED:
                    write(_SEQUENCE_DELIMITER)
                continue
            if elem.is_implicit_VR != implicit:
                elem = ds[tag]  # encoded otherwise than the file says (a writer's mistake): decode, re-encode
        if isinstance(elem, DataElement) and elem.VR == "SQ" and not elem.is_buffered:
            _write_sequence(fp, elem, implicit, encoding)
            continue
        with tag_in_exception(tag):
            write_data_element(fp, elem, encoding)


def _write_sequence(fp: DicomBytesIO, elem: DataElement, implicit: bool, encoding: object) -> None:
    """A sequence as pydicom writes it (PS3.5 7.5): items of defined length unless read as undefined."""
    body = DicomBytesIO()
    body.is_implicit_VR, body.is_little_endian = implicit, True
    encodings = convert_encodings(encoding)  # type: ignore[arg-type]
    for item in elem.value or ():
        inner = DicomBytesIO()
        inner.is_implicit_VR, inner.is_little_endian = implicit, True
        _write_dataset(inner, item, implicit, encodings)
        data = inner.getvalue()
        if getattr(item, "is_undefined_length_sequence_item", False):
            body.write(_ITEM + b"\xff\xff\xff\xff")
            body.write(data)
            body.write(_ITEM_DELIMITER)
        else:
            body.write(_ITEM + struct.pack("<L", len(data)))
            body.write(data)
    value = body.getvalue()
    undefined = elem.is_undefined_length
    length = _UNDEFINED if undefined else len(value)
    group, element = elem.tag >> 16, elem.tag & 0xFFFF
    if implicit:
        fp.write(_IMPLICIT.pack(group, element, length))
    else:
        fp.write(_EXPLICIT_LONG.pack(group, element, b"SQ", length))
    fp.write(value)
    if undefined:
        fp.write(_SEQUENCE_DELIMITER)


def _raw_header(elem: RawDataElement, implicit: bool) -> bytes | None:
    """The element header for copying ``elem``'s value bytes as they are; None when that is not possible."""
    value = elem.value
    if not isinstance(value, bytes) or elem.is_implicit_VR != implicit or not elem.is_little_endian:
        return None
    undefined = elem.length == _UNDEFINED
    length = _UNDEFINED if undefined else len(value)
    group, element = elem.tag >> 16, elem.tag & 0xFFFF
    if implicit:
        return _IMPLICIT.pack(group, element, length)
    vr = elem.VR
    if not vr or len(vr) != 2:
        return None
    if vr in _LONG_VRS:
        return _EXPLICIT_LONG.pack(group, element, vr.encode("ascii"), length)
    if undefined or length > 0xFFFF:
        return None
    return _EXPLICIT_SHORT.pack(group, element, vr.encode("ascii"), length)
