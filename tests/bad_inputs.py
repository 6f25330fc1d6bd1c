"""A bad-input corpus (issue 16), written from real carriers into a source tree beside generated studies.

Each case is one file (or one folder) that a real archive can hold: truncations of real instances at many offsets,
a deflated data set with a corrupt stream (PS3.5 A.5), sequences nested hundreds deep (PS3.5 7.5), a file name that
is not UTF-8, big-endian input (PS3.5 A.3), trailing Pixel Data padding, 12-bit JPEG Extended (PS3.5 A.4.1, process
2 & 4), one SOPInstanceUID in two studies, pydicom's own broken test files, and an unreadable folder.
Carriers are pydicom's test files (guards.testdata) and guards.samples studies; nothing is fetched at run time.

``bad`` cases must never be published; the others are valid input that must be published or quarantined with a
reason. Every case names the file it wrote, relative to the source root (a non-UTF-8 name as ``\\xNN`` text, as
the index writes it).
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom import dcmread

from guards import testdata
from guards.manifest import path_text

BAD_DIR = "bad"  # every case lives under SOURCE/bad/
LOCKED = f"{BAD_DIR}/locked"  # the folder that cannot be listed (its one file is not seen)
# pydicom test files that are broken in themselves (never published)
PYDICOM_BROKEN = ("MR_truncated.dcm", "rtplan_truncated.dcm", "badVR.dcm", "meta_missing_tsyntax.dcm")
# pydicom test files that are valid input of the kinds the issue lists (published or quarantined with a reason)
PYDICOM_VALID = ("MR_small_bigendian.dcm", "ExplVR_BigEnd.dcm", "MR_small_padded.dcm", "JPGExtended.dcm",
                 "JPEG-lossy.dcm", "image_dfl.dcm", "no_meta.dcm")


@dataclass(frozen=True)
class Case:
    """One written case: its path in the source (as the index names it), its kind, and whether it is bad."""

    path: str
    kind: str
    bad: bool


def _deflate_start(data: bytes) -> int:
    """Where the deflated data set starts: after the File Meta Information (PS3.10 7.1, its group length)."""
    meta = dcmread(BytesIO(data), stop_before_pixels=True).file_meta
    return 132 + 12 + int(meta.FileMetaInformationGroupLength)


def _pixels_at(data: bytes) -> int:
    """The offset of the Pixel Data element (where ``stop_before_pixels`` stops)."""
    fp = BytesIO(data)
    dcmread(fp, stop_before_pixels=True)
    return fp.tell()


def deep_sequence(data: bytes, levels: int) -> bytes:
    """``data`` (explicit VR little endian) with ContentSequence items nested ``levels`` deep before Pixel Data."""
    at = _pixels_at(data)
    opening = (struct.pack("<HH", 0x0040, 0xA730) + b"SQ\0\0" + b"\xff" * 4
               + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)) * levels
    closing = (struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)) * levels
    return data[:at] + opening + closing + data[at:]


def _own_uid(data: bytes, n: int) -> bytes:
    """``data`` with its own SOPInstanceUID (same length, bytes replaced where it is written in the clear).

    pydicom's MR_small variants are one instance in several encodings: without this, ingest indexes one of them
    and excludes the others as duplicates (PS3.3 C.12.1.1.1), and the encodings would not reach deid and protect.
    """
    uid = str(dcmread(BytesIO(data), stop_before_pixels=True, force=True).get("SOPInstanceUID", "")).encode()
    if len(uid) < 4:
        return data
    return data.replace(uid, uid[:-2] + b"%02d" % (n + 10))


def _truncation_offsets(size: int, count: int) -> list[int]:
    """``count`` distinct cut points spread over the whole file (inside the preamble, meta, header and pixels)."""
    points = {int(x) for x in np.linspace(1, size - 2, count)}
    points.update({127, 131, 132, 200})
    return sorted(p for p in points if 0 < p < size)


def write_bad_inputs(root: Path, carriers: list[Path]) -> list[Case]:
    """Write every case under ``root/bad/`` from ``carriers`` (generated instances, explicit VR little endian).

    ``carriers[0]`` and ``carriers[1]`` are cut at many offsets; ``carriers[2]`` is the source of the duplicate-UID
    case. Returns the cases, one per file written (the unreadable folder's file is not a case: it is unseen).
    """
    bad = root / BAD_DIR
    bad.mkdir(parents=True)
    cases: list[Case] = []

    def write(rel: str, data: bytes, kind: str, is_bad: bool) -> None:
        target = bad / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        cases.append(Case(f"{BAD_DIR}/{rel}", kind, is_bad))

    pydicom_dir = testdata.pydicom_test_dir()
    for n, carrier in enumerate((carriers[0], carriers[1], pydicom_dir / "CT_small.dcm")):
        data = carrier.read_bytes()
        for cut in _truncation_offsets(len(data), 45):
            write(f"truncated/{n}_{cut:07d}.dcm", data[:cut], "truncated", True)
    deflated = (pydicom_dir / "image_dfl.dcm").read_bytes()
    start = _deflate_start(deflated)
    written = 0
    for offset in range(10, len(deflated) - start - 60, 37):
        corrupt, at = bytearray(deflated), start + offset
        corrupt[at : at + 60] = bytes(b ^ 0xFF for b in corrupt[at : at + 60])
        # Raw deflate has no checksum: a flip that still inflates is another valid data set, not a corrupt one.
        try:
            zlib.decompress(bytes(corrupt[start:]), -zlib.MAX_WBITS)
        except zlib.error:
            write(f"deflated/corrupt_{offset:05d}.dcm", bytes(corrupt), "deflated-corrupt", True)
            written += 1
        if written == 6:
            break
    assert written == 6, "fewer corrupt deflate streams than planned"
    write("deflated/cut.dcm", deflated[: start + 300], "deflated-cut", True)
    for levels in (300, 600):
        write(f"deep/nested_{levels}.dcm", deep_sequence(carriers[3].read_bytes(), levels), "deep-sequence", True)
    write("zero.dcm", b"", "zero-bytes", True)
    write("random.dcm", np.random.default_rng(16).bytes(5000), "random-bytes", True)
    for name in PYDICOM_BROKEN:
        write(f"pydicom/{name}", (pydicom_dir / name).read_bytes(), "pydicom-broken", True)
    for n, name in enumerate(PYDICOM_VALID):
        write(f"pydicom/{name}", _own_uid((pydicom_dir / name).read_bytes(), n), "pydicom-valid", False)
    # a valid instance under a name that is not UTF-8 (bytes 0xff 0xfe): quarantined, never published
    raw_name = os.path.join(os.fsencode(bad), b"name_\xff\xfe.dcm")
    shutil.copyfile(carriers[4], raw_name)
    cases.append(Case(path_text(f"{BAD_DIR}/{os.fsdecode(b'name_' + bytes([0xFF, 0xFE]) + b'.dcm')}"),
                      "non-utf8-name", True))
    # the same SOPInstanceUID in another study: one of the two is published, never both
    other = dcmread(carriers[2])
    other.StudyInstanceUID = other.StudyInstanceUID[:-1] + ("1" if other.StudyInstanceUID[-1] != "1" else "2")
    other.save_as(bad / "duplicate_uid.dcm")
    cases.append(Case(f"{BAD_DIR}/duplicate_uid.dcm", "duplicate-uid", False))
    # a folder nobody may list (chmod 0; tests running as root also patch the listing, see LOCKED)
    locked = root / LOCKED
    locked.mkdir()
    shutil.copyfile(carriers[5], locked / "hidden_from_ingest.dcm")
    return cases


__all__ = ["BAD_DIR", "LOCKED", "Case", "deep_sequence", "write_bad_inputs"]
