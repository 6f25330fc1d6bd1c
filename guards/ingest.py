"""Ingest: walk a source, read every file's header without its pixel data, and account for every file.

Each file of the source ends as exactly one row of the index (guards.manifest.MANIFEST_SCHEMA):

- ``indexed``: a usable DICOM instance (a file without the 128-byte preamble and ``DICM`` prefix is indexed when
  it parses, with the reason "no preamble" recorded, as PS3.10 7.1 readers commonly tolerate);
- ``quarantined``, with a specific reason, the file copied byte for byte under ``out_dir/quarantine/``: zero
  bytes, not DICOM, truncated (the file ends inside an element or an element's header, or an image's header
  ends before its Pixel Data), bad VR or unparseable header, unreadable
  pixel data (native Pixel Data length other than Rows x Columns x SamplesPerPixel x BitsAllocated/8 x
  NumberOfFrames, checked from the element header without decoding), unsupported transfer syntax (no installed decoder),
  no SOPInstanceUID, larger than the policy allows;
- ``excluded``, with a reason: DICOMDIR media directories (PS3.10 8.6, rebuilt by readers, not published),
  expected sidecar tables (``policy.sidecars``, e.g. labels.csv), symbolic links when not followed, broken
  links and links to folders. Hidden files are indexed like any other; file extensions are ignored.

Invalid values that still parse (e.g. a value longer than its VR allows, PS3.5 6.2) do not stop a file: it
is indexed and its reason counts pydicom's warnings and quotes the first. An unknown VR, or a value the
header cannot be read past, quarantines it.

One bad file never stops the ingest (issue 16): any error while a file is read quarantines that file with the
error (a corrupt deflate stream, sequences nested too deep for pydicom's recursive reader, ...). A file name that
is not valid UTF-8 is quarantined under its ``\\xNN``-escaped name (``guards.manifest.path_text``). A folder that
cannot be listed is one quarantined row (``<folder>/``), since its files cannot be seen. One file per
SOPInstanceUID is indexed (PS3.3 C.12.1.1.1); later copies, in any study, are excluded as duplicates.

Invariant, checked before the index is written: files seen = indexed + quarantined + excluded.
Sources are local paths or fsspec URLs (``file://``, ``memory://``, or any protocol whose fsspec
implementation is installed); remote files are read through fsspec and quarantine copies are local.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
import shutil
import stat
import struct
import sys
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import fsspec
import pyarrow as pa
from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from guards.atomic import replacing
from guards.errors import InputError
from guards.manifest import HEADER_KEYWORDS, empty_row, path_text, to_table, write_table
from guards.policy import IngestSection
from guards.progress import progress

logger = logging.getLogger(__name__)

QUARANTINE = "quarantine"
FETCHED = "fetched"
INDEX = "index.parquet"
DEFLATED = "1.2.840.10008.1.2.1.99"
PIXEL_DATA_TAG = 0x7FE00010
_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, PIXEL_DATA_TAG)  # Float / Double Float / Pixel Data
DEFER_BYTES = 1 << 20  # values larger than this stay on disk while the header is checked
_NATIVE_TS = {
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
}
_PARSE_ERRORS = (InvalidDicomError, ValueError, TypeError, KeyError, AttributeError, NotImplementedError,
                 struct.error, OverflowError, EOFError, IndexError, UnicodeDecodeError, zlib.error)


@dataclass(frozen=True)
class IngestResult:
    """The index of a source: one row per file, the counts by status, and the source root."""

    table: pa.Table = field(repr=False)
    counts: dict[str, int]
    root: Path
    index_path: Path


def _open_source(source: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    text = str(source)
    fs, _, paths = fsspec.get_fs_token_paths(text)
    root = paths[0].rstrip("/") if paths else text
    if not fs.exists(root) or not fs.isdir(root):
        raise InputError(f"source {text!r} is not an existing folder; pass the root of a DICOM tree")
    return fs, root


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _walk(fs: fsspec.AbstractFileSystem, root: str) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, str]]]:
    """Every entry under root (files and symlinks), relative POSIX path and fsspec info, sorted; and the folders
    that could not be listed, relative path and error (their files cannot be seen, so each is accounted as a row).

    Not ``fs.walk``: it drops a folder it cannot list without a word (its ``on_error`` reaches only the root).
    Links are entries, never descended into (ingest decides what a link is, ``_link_reason``).
    """
    entries: list[tuple[str, dict[str, Any]]] = []
    unreadable: list[tuple[str, str]] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            listing = fs.ls(folder, detail=True)
        except OSError as e:  # PermissionError, or a folder removed while the source is walked
            error = f"{type(e).__name__}: {e.strerror or e}"
            if folder == root:
                raise InputError(f"source {root!r} cannot be listed: {error}") from e
            unreadable.append((posixpath.relpath(folder, root), error))
            continue
        for info in listing:
            name = str(info["name"]).rstrip("/")
            if name == folder.rstrip("/"):
                continue
            if info.get("type") == "directory" and not info.get("islink"):
                pending.append(name)
            else:
                entries.append((posixpath.relpath(name, root), info))
    return sorted(entries, key=lambda e: e[0]), sorted(unreadable)


def _unreadable_row(rel: str, error: str) -> dict[str, Any]:
    """The row of a folder that cannot be listed: its files are unseen, so the folder itself is accounted."""
    row = empty_row(path_text(rel.rstrip("/") + "/"))
    row.update(status="quarantined", reason=f"folder cannot be read ({error}): the files under it are not "
               "ingested nor counted; make it readable by the user running the guard"[:500])
    return row


def _expected_pixel_bytes(ds: Dataset) -> int | str:
    """Bytes of native Pixel Data (PS3.5 8.1.1), or which attribute is missing or invalid.

    YBR_FULL_422 stores 2 values per pixel (PS3.3 C.7.6.3.1.2); BitsAllocated 1 packs 8 pixels a byte.
    """
    values: dict[str, int] = {}
    for keyword, default in (("Rows", None), ("Columns", None), ("BitsAllocated", None),
                             ("SamplesPerPixel", 1), ("NumberOfFrames", 1)):
        raw = ds.get(keyword)
        if raw in (None, "") and default is not None:
            values[keyword] = default
            continue
        try:
            values[keyword] = int(raw)
        except (TypeError, ValueError):
            return f"{keyword} {'missing' if raw is None else f'invalid ({raw!r})'}"
    rows, cols, bits = values["Rows"], values["Columns"], values["BitsAllocated"]
    spp, frames = values["SamplesPerPixel"], values["NumberOfFrames"]
    if bits == 1:
        return (rows * cols * spp * frames + 7) // 8
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        spp = 2
    return rows * cols * spp * frames * (bits // 8)


def _pixel_element_header(fp: BinaryIO, ds: Dataset) -> tuple[int, int] | None:
    """Tag and value length of the element where ``stop_before_pixels`` stopped (PS3.5 7.1.2/7.1.3), or None at EOF.

    Only the element header is read: the value (the pixels) is neither read nor decoded.
    """
    start = fp.tell()
    head = fp.read(12)
    fp.seek(start)
    if len(head) < 8:
        return None
    little = getattr(ds, "original_encoding", (None, True))[1] is not False
    implicit = getattr(ds, "original_encoding", (False, None))[0] is True
    order = "<" if little else ">"
    group, elem = struct.unpack(order + "HH", head[:4])
    if implicit:
        (length,) = struct.unpack(order + "L", head[4:8])
    elif head[4:6] in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR"):
        if len(head) < 12:
            return None
        (length,) = struct.unpack(order + "L", head[8:12])
    else:
        (length,) = struct.unpack(order + "H", head[6:8])
    return (group << 16) | elem, length


def _pixel_problem(fp: BinaryIO, ds: Dataset, size: int) -> str | None:
    """A reason the pixel data cannot be used, checked without decoding it; None when it looks usable."""
    ts = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    if ts == DEFLATED:
        # The whole data set is deflated (PS3.5 A.5): sizes on disk say nothing, so read it all.
        try:
            fp.seek(0)
            full = dcmread(fp)
            full.PixelData  # noqa: B018 - reading it is the check
        except _PARSE_ERRORS as e:
            return f"unreadable pixel data in deflated data set: {type(e).__name__}: {e}"[:500]
        return None
    if ts and ts not in _NATIVE_TS:
        try:
            available = get_decoder(ts).is_available
        except (NotImplementedError, ValueError):
            available = False
        if not available:
            return f"unsupported transfer syntax {ts}: no installed decoder for its pixel data"
        return None
    expected = _expected_pixel_bytes(ds)
    if isinstance(expected, str):
        return f"unreadable pixel data: its size cannot be known, {expected}"
    header_end = fp.tell()
    remaining = size - header_end
    element = _pixel_element_header(fp, ds)
    if element is not None and element[0] == PIXEL_DATA_TAG:
        length = element[1]
        if length == 0xFFFFFFFF:
            return f"unreadable pixel data: undefined-length (encapsulated) Pixel Data under native syntax {ts}"
        # Values have even length (PS3.5 7.1.1); trailing padding after the pixels is read as pydicom reads
        # it (the excess is ignored, see _padding_note); fewer bytes than the pixels need cannot be used.
        if length < expected:
            return (f"unreadable pixel data: Pixel Data value length {length} does not match Rows x Columns x "
                    f"SamplesPerPixel x BitsAllocated/8 x NumberOfFrames = {expected} (too short)")
    # The bytes after the header must hold the value (a file that ends inside Pixel Data is truncated).
    if remaining < expected:
        return f"unreadable pixel data: {remaining} bytes left for Pixel Data, {expected} expected (truncated)"
    return None


def _elements_after_pixels_problem(fp: BinaryIO, ds: Dataset, size: int) -> str | None:
    """Where the file ends inside Pixel Data or an element after it (e.g. Data Set Trailing Padding, FFFC,FFFC).

    Only element headers are read (PS3.5 7.1.2/7.1.3), from where ``stop_before_pixels`` stopped; None when every
    element ends within the file, or when one has undefined length (encapsulated: its items are not walked).
    """
    start = fp.tell()
    little = getattr(ds, "original_encoding", (None, True))[1] is not False
    implicit = getattr(ds, "original_encoding", (False, None))[0] is True
    order = "<" if little else ">"
    pos = start
    try:
        while pos < size:
            fp.seek(pos)
            head = fp.read(12)
            if len(head) < 8:
                return f"file ends inside the header of an element at {pos} (after Pixel Data starts)"
            group, elem = struct.unpack(order + "HH", head[:4])
            if implicit:
                (length,), header = struct.unpack(order + "L", head[4:8]), 8
            elif head[4:6] in _LONG_VRS:
                if len(head) < 12:
                    return f"file ends inside the header of an element at {pos} (after Pixel Data starts)"
                (length,), header = struct.unpack(order + "L", head[8:12]), 12
            else:
                (length,), header = struct.unpack(order + "H", head[6:8]), 8
            if length == 0xFFFFFFFF:
                return None
            end = pos + header + length
            if end > size:
                return (f"file ends inside element ({group:04X},{elem:04X}) at {pos}: {length} bytes declared, "
                        f"{size - pos - header} present")
            pos = end
    finally:
        fp.seek(start)
    return None


_LONG_VRS = (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR")


def _padding_note(fp: BinaryIO, ds: Dataset) -> str | None:
    """A note when native Pixel Data holds bytes after its pixels (trailing padding), else None.

    pydicom decodes such data and ignores the excess (with a warning); the file is usable and indexed.
    """
    if _is_deflated(ds) or str(ds.file_meta.get("TransferSyntaxUID", "")) not in _NATIVE_TS:
        return None
    expected, element = _expected_pixel_bytes(ds), _pixel_element_header(fp, ds)
    if isinstance(expected, str) or element is None or element[0] != PIXEL_DATA_TAG:
        return None
    excess = element[1] - expected - (expected % 2)
    return f"Pixel Data has {excess} bytes of trailing padding after its pixels (ignored)" if excess > 0 else None


class _TruncatedError(Exception):
    """The file ends inside an element (its value is shorter than its length field)."""


def _convert_all(ds: Dataset, size: int) -> None:
    """Convert every raw element, recursing into sequences, leaving deferred (huge) values unread on disk.

    pydicom reads a value cut short by the end of the file without complaint: a value shorter than its
    length field (PS3.5 7.1) is reported here as truncation.
    """
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement) and raw.length != 0xFFFFFFFF:
            if raw.value is None and raw.length > DEFER_BYTES:
                # A huge value (e.g. a large private element): deferred, its bytes are not loaded.
                if raw.value_tell + raw.length > size:
                    raise _TruncatedError(f"file ends inside element {raw.tag} ({raw.length} bytes declared)")
                continue
            if raw.value is not None and len(raw.value) < raw.length:
                raise _TruncatedError(f"file ends inside element {raw.tag} ({raw.length} bytes declared, "
                                      f"{len(raw.value)} present)")
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value:
                _convert_all(item, size)


def _meta_truncated(ds: Dataset, size: int) -> bool:
    """True when File Meta Information Group Length (PS3.10 7.1) reaches past the end of the file."""
    meta = getattr(ds, "file_meta", None)
    length = meta.get("FileMetaInformationGroupLength") if meta is not None else None
    return isinstance(length, int) and 132 + 12 + length > size


def _is_deflated(ds: Dataset) -> bool:
    """Deflated Explicit VR Little Endian (PS3.5 A.5): positions in the inflated stream are not file positions."""
    meta = getattr(ds, "file_meta", None)
    return meta is not None and str(meta.get("TransferSyntaxUID", "")) == DEFLATED


def _ends_inside_element_header(fp: BinaryIO, ds: Dataset) -> str | None:
    """Where the file ends inside an element's header, or None.

    pydicom stops without a word when fewer bytes are left than an element header holds (PS3.5 7.1.2: 8 bytes,
    12 for explicit VR OB, OW, SQ, UN ...): the data set read is then a prefix of the instance. Those bytes were
    read past the end of the last whole element; ``stop_before_pixels`` leaves ``fp`` at the end of that element.
    Judged from the top-level element that starts last: unknown (None) when it has undefined length or was
    already decoded while reading (e.g. Specific Character Set: its length is not kept).
    """
    last: DataElement | RawDataElement | None = None
    for tag in ds.keys():
        elem = ds.get_item(tag, keep_deferred=True)
        if last is None or _value_tell(elem) > _value_tell(last):
            last = elem
    if not isinstance(last, RawDataElement) or last.length == 0xFFFFFFFF:
        return None
    end = last.value_tell + last.length
    left = fp.tell() - end
    return f"file ends inside the header of the element after {last.tag} ({left} bytes at {end})" if left > 0 else None


def _value_tell(elem: DataElement | RawDataElement) -> int:
    """Where the element's value starts in the file (-1 when unknown)."""
    tell = elem.value_tell if isinstance(elem, RawDataElement) else elem.file_tell
    return -1 if tell is None else int(tell)


# Image Pixel Module attributes (PS3.3 C.7.6.3) that say Pixel Data follows.
_IMAGE_PIXEL_KEYWORDS = ("Rows", "Columns", "BitsAllocated")


def _announced_pixels(ds: Dataset) -> str | None:
    """What in the header announces Pixel Data, or None: Image Pixel Module attributes, or an image SOP Class.

    Pixel Data (7FE0,0010) is Type 1 in the Image Pixel Module (PS3.3 C.7.6.3), which every image IOD includes
    (PS3.3 Annex A; PS3.6 Annex A names their SOP Classes "... Image Storage"): such an instance without it is
    incomplete, and one cut short by the end of the file looks exactly so.
    """
    present = [k for k in _IMAGE_PIXEL_KEYWORDS if k in ds]
    if present:
        return ", ".join(present)
    sop_class = UID(str(ds.get("SOPClassUID", "")).strip(" \x00"))
    if sop_class.type == "SOP Class" and "Image Storage" in sop_class.name:
        return f"SOP Class {sop_class.name}"
    return None


def _header(ds: Dataset) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for keyword in HEADER_KEYWORDS:
        try:
            value = ds.get(keyword)
        except _PARSE_ERRORS:
            value = None
        row[keyword] = None if value is None or value == "" else str(value)
    for keyword, column in (("Rows", "Rows"), ("Columns", "Columns"), ("NumberOfFrames", "NumberOfFrames"),
                            ("BitsAllocated", "BitsAllocated"), ("SamplesPerPixel", "SamplesPerPixel")):
        try:
            value = ds.get(keyword)
            row[column] = int(value) if value not in (None, "") else None
        except _PARSE_ERRORS:
            row[column] = None
    row["TransferSyntaxUID"] = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else None
    return row


def _classify(data_head: bytes, fp: BinaryIO, size: int, rel: str, policy: IngestSection) -> dict[str, Any]:
    """One index row for one file (status and reason decided here)."""
    row = empty_row(rel)
    row["size"] = size
    if size == 0:
        row.update(status="quarantined", reason="zero bytes")
        return row
    if size > policy.max_file_bytes:
        row.update(status="quarantined", reason=f"file of {size} bytes exceeds ingest.max_file_bytes")
        return row
    has_prefix = len(data_head) >= 132 and data_head[128:132] == b"DICM"
    notes: list[str] = []
    try:
        fp.seek(0)
        ds = dcmread(fp, stop_before_pixels=True, force=not has_prefix, defer_size=DEFER_BYTES)
        if not has_prefix:
            # force=True parses almost anything: demand the attributes of a composite instance.
            if "SOPClassUID" not in ds and "DirectoryRecordSequence" not in ds:
                raise InvalidDicomError("no DICM prefix and no SOPClassUID")
            notes.append("no preamble: read without the 128-byte preamble and DICM prefix")
        if has_prefix and _meta_truncated(ds, size):
            raise _TruncatedError("file ends inside the File Meta Information")
        ends_early = None if _is_deflated(ds) else _ends_inside_element_header(fp, ds)
        if ends_early:
            raise _TruncatedError(ends_early)
        _convert_all(ds, size)  # convert every element (nested too) now, so a bad VR or value shows here
    except _TruncatedError as e:
        row.update(status="quarantined", reason=f"truncated: {e}"[:500])
        return row
    except RecursionError:
        # pydicom reads nested sequences recursively (PS3.5 7.5): a few hundred levels exhaust Python's stack.
        row.update(status="quarantined", reason="sequences nested too deep to read: RecursionError in the "
                   f"sequence reader (Python recursion limit {sys.getrecursionlimit()})")
        return row
    except zlib.error as e:
        row.update(status="quarantined", reason=f"corrupt deflated data set (PS3.5 A.5): zlib: {e}"[:500])
        return row
    except _PARSE_ERRORS as e:
        if has_prefix or "Value Representation" in str(e):
            detail = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            row.update(status="quarantined", reason=f"truncated or corrupt DICOM header: {detail}"[:500])
        else:
            row.update(status="quarantined", reason="not DICOM: no DICM prefix and does not parse as DICOM")
        return row
    if "DirectoryRecordSequence" in ds:
        row.update(status="excluded", reason="DICOMDIR media directory (PS3.10 8.6): not an instance",
                   is_dicomdir=True)
        return row
    try:
        row.update(_header(ds))
    except _PARSE_ERRORS as e:
        row.update(status="quarantined", reason=f"invalid header values: {type(e).__name__}: {e}"[:500])
        return row
    row["is_dicomdir"] = False
    if not row.get("SOPInstanceUID"):
        row.update(status="quarantined", reason="no SOPInstanceUID: not a composite instance")
        return row
    if row["TransferSyntaxUID"] == DEFLATED:  # positions in the inflated stream are not file positions
        has_pixels = "Rows" in ds and "BitsAllocated" in ds
    else:
        element = _pixel_element_header(fp, ds)
        has_pixels = element is not None and element[0] in _PIXEL_TAGS
    row["has_pixels"] = has_pixels
    if has_pixels:
        problem = _pixel_problem(fp, ds, size)
        if problem:
            row.update(status="quarantined", reason=problem)
            return row
        if row["TransferSyntaxUID"] != DEFLATED:
            cut = _elements_after_pixels_problem(fp, ds, size)
            if cut:
                row.update(status="quarantined", reason=f"truncated: {cut}"[:500])
                return row
        padding = _padding_note(fp, ds)
        if padding:
            notes.append(padding)
    elif row["TransferSyntaxUID"] != DEFLATED:  # a deflated file's pixels are checked with its Rows above
        announced = _announced_pixels(ds)
        if announced:
            # A prefix of an image cut at an element boundary parses cleanly: never indexed (it would be
            # published a second time, its SOPInstanceUID that of the whole file).
            row.update(status="quarantined", reason=f"truncated or incomplete: the header announces an image "
                       f"({announced}) but the file ends before Pixel Data (7FE0,0010), Type 1 in the Image "
                       f"Pixel Module (PS3.3 C.7.6.3)"[:500])
            return row
    row.update(status="indexed", reason="; ".join(notes))
    return row


def ingest(source: str | Path, *, out_dir: Path, policy: IngestSection) -> IngestResult:
    """Index every file under ``source`` into ``out_dir/index.parquet``; copy unusable files to quarantine."""
    fs, root = _open_source(source)
    out_dir = Path(out_dir)
    quarantine = out_dir / QUARANTINE
    # A remote source is fetched once into out_dir/fetched/ so that later steps read local files.
    local_root = Path(root) if _is_local(fs) else out_dir / FETCHED
    for stale in (quarantine, out_dir / FETCHED):
        if stale.exists():
            shutil.rmtree(stale)  # re-running the step replaces its outputs
    entries, unreadable = _walk(fs, root)
    # pydicom logs each warning as well, quoting values that may be PHI: silenced for the scan, the
    # warnings themselves are counted in the rows' reasons (values masked).
    pydicom_logger = logging.getLogger("pydicom")
    saved_level = pydicom_logger.level
    pydicom_logger.setLevel(logging.ERROR)
    try:
        rows = _scan(fs, root, entries, policy, quarantine, local_root)
    finally:
        pydicom_logger.setLevel(saved_level)
    if [r["path"] for r in rows] != [path_text(rel) for rel, _ in entries]:
        raise InputError("ingest lost track of files: rows do not match the files seen one to one; "
                         "please report this as a bug")
    _exclude_duplicate_instances(rows)
    rows.extend(_unreadable_row(rel, error) for rel, error in unreadable)
    if unreadable:
        logger.warning("ingest: %d folder(s) cannot be read; each is a quarantined row", len(unreadable))
    table = to_table(rows)
    counts = {"seen": len(entries) + len(unreadable), "indexed": 0, "quarantined": 0, "excluded": 0}
    for status in table.column("status").to_pylist():
        counts[status] += 1
    if counts["seen"] != counts["indexed"] + counts["quarantined"] + counts["excluded"]:
        raise InputError(f"ingest lost track of files: {counts}; please report this as a bug")
    index_path = out_dir / INDEX
    write_table(table, index_path)
    logger.info("ingest: %s", counts)
    return IngestResult(table=table, counts=counts, root=local_root, index_path=index_path)


def _exclude_duplicate_instances(rows: list[dict[str, Any]]) -> None:
    """One indexed file per SOPInstanceUID (PS3.3 C.12.1.1.1: it identifies the instance), across the whole source.

    Later files (in path order) with the UID of an indexed file are excluded, also when they name another study:
    deid checks this within a shard, and shards group patients, so two such files would both be published.
    """
    first: dict[str, dict[str, Any]] = {}
    for row in rows:
        uid = row.get("SOPInstanceUID")
        if row["status"] != "indexed" or not uid:
            continue
        kept = first.setdefault(uid, row)
        if kept is row:
            continue
        other = " in another study" if kept.get("StudyInstanceUID") != row.get("StudyInstanceUID") else ""
        row.update(status="excluded", reason=f"duplicate SOPInstanceUID: the same instance UID as {kept['path']!r}"
                   f"{other}, which is indexed (PS3.3 C.12.1.1.1: one instance, one UID)"[:500])


def _special_file(info: dict[str, Any]) -> str | None:
    """What a walked entry is when it is not a regular file or a link (fsspec's type "other"), else None."""
    if info.get("type") in ("file", "directory") or info.get("islink"):
        return None
    mode = info.get("mode")
    if isinstance(mode, int):
        for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                           (stat.S_ISBLK, "block device")):
            if test(mode):
                return name
    return None if info.get("type") is None else f"type {info.get('type')!r}"


def _scan(fs: fsspec.AbstractFileSystem, root: str, entries: list[tuple[str, dict[str, Any]]],
          policy: IngestSection, quarantine: Path, local_root: Path) -> list[dict[str, Any]]:
    """One row per entry; quarantine copies, and local copies of a remote source's indexed files.

    One bad file never stops the run: whatever fails while one file is read quarantines that file with the error.
    """
    rows: list[dict[str, Any]] = []
    for rel, info in progress(entries, total=len(entries), what="ingest", logger=logger):
        full = posixpath.join(root, rel)
        text = path_text(rel)
        try:
            row = _scan_one(fs, full, rel, info, policy, quarantine / text, local_root)
        except Exception as e:  # noqa: BLE001 - any error of one file is that file's reason
            logger.warning("ingest: a file could not be read (%s); quarantined", type(e).__name__)  # paths may be PHI
            row = empty_row(rel)
            row.update(status="quarantined", reason=f"cannot be read: {type(e).__name__}: {e}"[:500],
                       size=int(info.get("size") or 0))
        if text != rel:
            # A name that is not UTF-8 (PEP 383 surrogates) cannot be written to the index, nor found by later
            # steps under its escaped name: the file is quarantined (its copy under the escaped name).
            row["path"] = row["source_path"] = text
            if row["status"] in ("indexed", "quarantined"):
                what = "the instance reads" if row["status"] == "indexed" else row["reason"]
                if row["status"] == "indexed":
                    try:
                        with fs.open(full, "rb") as f:
                            _copy_atomic(f, quarantine / text)
                    except OSError as e:
                        what = f"{what}; not copied: {type(e).__name__}"
                row.update(status="quarantined", sha256=None,
                           reason=f"file name is not valid UTF-8 ({what}): rename it to include it"[:500])
        rows.append(row)
    return rows


def _scan_one(fs: fsspec.AbstractFileSystem, full: str, rel: str, info: dict[str, Any], policy: IngestSection,
              quarantine_copy: Path, local_root: Path) -> dict[str, Any]:
    """The index row of one walked entry; its copy to ``quarantine_copy``, or a remote file's local copy."""
    if posixpath.basename(rel) in policy.sidecars:
        row = empty_row(rel)
        row.update(status="excluded", reason="sidecar table (ingest.sidecars), not an instance",
                   size=int(info.get("size") or 0))
        return row
    link_reason = _link_reason(fs, full, policy) if info.get("islink") else None
    if link_reason:
        row = empty_row(rel)
        row.update(status="excluded", reason=link_reason)
        return row
    special = _special_file(info)
    if special:
        row = empty_row(rel)
        row.update(status="excluded", reason=f"not a regular file ({special}): not read (a FIFO would block"
                   " the run, a device has no end)")
        return row
    size = int(info.get("size") or 0)
    try:
        with fs.open(full, "rb") as f, warnings.catch_warnings(record=True) as caught:
            # pydicom warns on odd values (PS3.5 6.2 VR rules): a usable file is indexed with a note
            # counting them in its reason instead of flooding the log.
            warnings.simplefilter("always")
            head = f.read(132)
            row = _classify(head, f, size, rel, policy)
            if row["status"] == "indexed" and caught:
                row["reason"] = _warning_note(row["reason"], [str(w.message) for w in caught])
            # One open per file: the copy (quarantine, or the local copy of a remote source) and the
            # checksum of indexed files are made from the same handle.
            if row["status"] == "quarantined" and size > policy.max_file_bytes:
                row["reason"] = f"{row['reason']} ({policy.max_file_bytes}): not copied into quarantine"
            elif row["status"] == "quarantined":
                f.seek(0)
                _copy_atomic(f, quarantine_copy)
            elif row["status"] == "indexed":
                f.seek(0)
                target = None if _is_local(fs) else local_root / rel
                row["sha256"] = _hash_and_copy(f, target)
    except OSError as e:
        row = empty_row(rel)
        row.update(status="quarantined", reason=f"cannot be read: {type(e).__name__}: {e}"[:500], size=size)
    return row


def _warning_note(reason: str | None, messages: list[str]) -> str:
    """The reason of an indexed file, with pydicom's warnings on its values counted and the first one quoted."""
    # Values quoted by pydicom may be PHI: they are masked, the reason keeps only what was wrong.
    first = re.sub(r"'[^']*'", "'...'", messages[0].split(" Please see")[0])
    note = f"indexed with {len(messages)} value warning(s) from pydicom, first: {first}"
    return (f"{reason}; {note}" if reason else note)[:500]


def _link_reason(fs: fsspec.AbstractFileSystem, path: str, policy: IngestSection) -> str | None:
    """Why a symbolic link is excluded, or None when it is followed as the file it points to."""
    if not policy.follow_symlinks:
        return "symbolic link (ingest.follow_symlinks = false)"
    if not fs.exists(path):
        return "broken symbolic link: its target does not exist"
    if fs.isdir(path):
        return "symbolic link to a folder: ingest does not descend into linked folders (no cycles, no duplicates)"
    return None


def _copy_atomic(f: BinaryIO, target: Path) -> None:
    """Copy ``f`` to ``target`` through a temporary name, then rename."""
    with replacing(target) as tmp, tmp.open("wb") as out:
        shutil.copyfileobj(f, out)


def _hash_and_copy(f: BinaryIO, target: Path | None) -> str:
    """SHA-256 of ``f`` read in 1 MiB chunks, copying it to ``target`` (temporary name, then rename) if given."""
    h = hashlib.sha256()
    out: BinaryIO | None = None
    tmp: Path | None = None
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        out = tmp.open("wb")
    try:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            if out is not None:
                out.write(chunk)
    finally:
        if out is not None:
            out.close()
    if tmp is not None and target is not None:
        tmp.replace(target)
    return h.hexdigest()
