"""Residual-PHI check: tokens of the source PHI, or source UIDs, anywhere in the released files.

What de-identification under PS3.15 Annex E (Basic Application Level Confidentiality Profile, Table E.1-1)
must remove is gathered from the *source* headers (``source_dir``, the private original tree), then every
released file is searched for it, MIDI-B style:

- every data element at any sequence depth, private elements and the File Meta Information (PS3.10 7.1),
  each hit with its element path, e.g. ``RequestAttributesSequence[0] > AccessionNumber``;
- the raw bytes of every released file (anything the parser skips: undefined lengths, odd encodings,
  non-DICOM files such as sidecar tables), as ASCII words with their byte offset;
- the text tesseract reads in the pixels (PS3.15 E.3.1 Clean Pixel Data Option), on the files the pixel
  policy marks risky (``pixels.risky_modalities`` or BurnedInAnnotation YES) or on all when ``pixels.ocr_all``;
  up to 8 frames per instance, evenly spaced; frames of one shape are OCR'd 16 to a tesseract call (a mosaic
  with blank gaps, words mapped back by their box), because starting tesseract dominates on small frames.

Token rules (what counts as source PHI, and what is skipped as too generic). The vocabulary (which attributes,
which date forms, which pieces of an identifier, the normalisation) is :mod:`guards.deid.vocabulary`, the one the
cleaner (:mod:`guards.deid.actions`) and the pixel cleaner (:mod:`guards.deid.pixel_phi`) use, so that every token
either of them would scrub or hide is a token here too:

- person names (every PN element): each component and word of at least 3 characters;
- identifiers (PatientID, OtherPatientIDs, AccessionNumber, StudyID, order/procedure ids, ...), addresses,
  phone numbers (also as digits only), institution and department names (skipped when the policy retains
  institution identity), station names and serial numbers (skipped when the policy retains device identity):
  each value, each of its parts (:func:`~guards.deid.vocabulary.name_parts`), and for identifiers its pieces
  (:func:`~guards.deid.vocabulary.id_pieces`: ``448120`` and ``PID448120`` of ``PID-448120``);
- dates of every DA element and the date part of every DT element in every form of
  :func:`~guards.deid.vocabulary.date_parts` (``19610317``, ``1961-03-17``, ``17/03/1961``, ``03/17/1961``,
  ``17.03.1961``, ``17/3/61``, ``17-MAR-1961``, ``17 Mar 1961``, ``March 17, 1961``, ``17MAR1961``, ...; skipped
  when ``deid.retain_longitudinal = "full"`` keeps them). De-identification shifts dates per patient, so exact
  tokens are right; but one patient's shifted date may equal another patient's true date, so when the release
  folder has a ``manifest.parquet`` mapping each file to its ``source_path``, a file is searched for the dates of
  its own source patient only (otherwise for all source dates, and details say so);
- UIDs of every UI element except class, transfer-syntax, coding-scheme and implementation UIDs and the
  standard's own ``1.2.840.10008.`` UIDs, which identify software and standards rather than a patient
  (skipped when ``deid.retain_uids``);
- names and identifier values written outside ASCII (decoded with the source's Specific Character Set): each
  piece of :func:`~guards.deid.vocabulary.native_parts` (``山田``, ``太郎``, ``王``, ``Люкceмбypг``), matched as a
  substring of the released text (CJK has no word breaks) and of the raw bytes as UTF-8, as the cleaner scrubs
  them;
- skipped: tokens shorter than 3 characters, purely numeric tokens shorter than 5 digits (they match counts,
  sizes and code values), and common words (:data:`COMMON_WORDS`: body parts, modalities, titles, address
  words). What was skipped is listed in details (categories and counts, never the values; pieces of a value are
  not counted again).

Matching is on normalised text (:func:`~guards.deid.vocabulary.words`): upper case, every character outside
``A-Z 0-9 .`` a word break, dots at the ends of words dropped; a token matches where its words appear as
consecutive whole words, and a one-word token also where it equals a run of 6 or more digits inside a longer word
(``MRN448120``). A match inside a longer match is counted once. The report names the category, the source element
and the token's length, never the token itself: the report is published.
"""

from __future__ import annotations

import importlib
import logging
import math
import re
import shutil
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from guards.checks.base import CheckResult, Finding
from guards.deid.vocabulary import (
    CATEGORY,
    MIN_ID_DIGITS,
    date_parts,
    digit_runs,
    id_pieces,
    name_parts,
    native_parts,
    words,
)
from guards.errors import GuardError, InputError
from guards.policy import ReleasePolicy
from guards.progress import progress

log = logging.getLogger(__name__)

CHECK_ID = "phi"
MIN_LEN = 3  # = guards.deid.vocabulary.MIN_TOKEN
MIN_NUMERIC_LEN = 5
MAX_OCR_FRAMES = 8  # frames of a multi-frame image read by OCR (evenly spaced)
MOSAIC_MAX_TILES = 16  # frames OCR'd in one tesseract call (see _OcrBatcher)
MOSAIC_PIXELS = 4_000_000
MOSAIC_GAP = 24  # blank pixels between tiles, so that tesseract never joins words of two frames
MAX_LISTED_HITS = 200  # findings listed one by one; the count finding covers all

#: Words too generic to be evidence of PHI on their own (upper case).
COMMON_WORDS: frozenset[str] = frozenset(
    """
    THE AND FOR WITH FROM NOT NONE NULL UNKNOWN ANONYMOUS ANON ANONYMIZED REMOVED PATIENT PATIENTS TEST DEMO
    MALE FEMALE OTHER MRS MISS PROF DOCTOR PHYSICIAN NURSE TECH JUNIOR SENIOR
    CHEST HEAD NECK BRAIN ABDOMEN PELVIS SPINE KNEE HAND FOOT ARM LEG HIP SHOULDER BREAST HEART LUNG LIVER
    KIDNEY WRIST ANKLE ELBOW SKULL THORAX CSPINE LSPINE TSPINE WHOLEBODY EXTREMITY LEFT RIGHT BILATERAL
    PORTABLE ERECT SUPINE PRONE LATERAL FRONTAL AXIAL CORONAL SAGITTAL CONTRAST
    CT MR MRI PET SPECT XRAY CR DX US RF NM MG OT SC XA ES PT SEG RTSTRUCT
    HOSPITAL HOSPITALS MEDICAL CENTER CENTRE CLINIC CLINICS HEALTH CARE INSTITUTE UNIVERSITY GENERAL SAINT
    COUNTY CITY STATE REGIONAL NATIONAL CHILDREN CHILDRENS MEMORIAL COMMUNITY DEPARTMENT DEPT RADIOLOGY IMAGING
    STREET ROAD AVENUE LANE DRIVE COURT PLACE SQUARE BOULEVARD SUITE FLOOR BUILDING NORTH SOUTH EAST WEST
    USA GERMANY FRANCE SPAIN ITALY CANADA NETHERLANDS
    SIEMENS PHILIPS TOSHIBA CANON AGFA FUJI HOLOGIC KODAK CARESTREAM
    STATION ROOM SCANNER CONSOLE WORKSTATION
    """.split()
)

_SKIP_UID_KEYWORDS = ("TransferSyntaxUID", "ImplementationClassUID", "CodingSchemeUID", "PrivateInformationCreatorUID")
_ASCII_RUN = re.compile(rb"[\x20-\x7e]{3,}")
#: The audit's normalisation (:func:`guards.deid.vocabulary.words`), under its old name.
normalize = words


@lru_cache(maxsize=65536)
def _date_words(value: str) -> tuple[tuple[str, ...], ...]:
    """Every form of a DA value (the date part of a DT) as normalised words: each form of
    :func:`guards.deid.vocabulary.date_parts` as separate words (``17-MAR-1961``, ``March 17, 1961``) and run
    together as one word (``17MAR1961``)."""
    out: set[tuple[str, ...]] = set()
    for parts in date_parts(value):
        out.add(parts)
        out.add(("".join(parts),))
        out.add((".".join(parts),))  # dots do not break words: "17.03.1961" is one
    return tuple(sorted(out))


@dataclass(frozen=True)
class Token:
    """A source PHI string, normalised to words, with where it came from (never printed as a value)."""

    words: tuple[str, ...]
    category: str
    source_element: str


@dataclass
class TokenIndex:
    """Tokens by their word tuple, plus the word-counts to try (n-grams), and what was skipped."""

    tokens: dict[tuple[str, ...], Token] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _dates: set[str] = field(default_factory=set)
    native: dict[str, Token] = field(default_factory=dict)  # non-ASCII pieces, matched as substrings

    def add_native(self, value: str, *, category: str, source_element: str) -> None:
        """Each :func:`~guards.deid.vocabulary.native_parts` piece of ``value`` as a substring token."""
        for piece in native_parts(value):
            if piece not in self.native:
                self.native[piece] = Token(words=(piece,), category=category, source_element=source_element)

    def add(self, raw: str, *, category: str, source_element: str, quiet: bool = False) -> None:
        """Add ``raw`` as a token (normalised), unless too short, short and numeric, or common words: then it is
        counted in ``skipped`` (not when ``quiet``: pieces of a value already counted)."""
        self.add_words(words(raw), category=category, source_element=source_element, quiet=quiet)

    def add_words(self, ws: tuple[str, ...], *, category: str, source_element: str, quiet: bool = False) -> None:
        """:meth:`add` of a token already normalised to words."""
        if not ws or ws in self.tokens:
            return
        text = "".join(ws)
        skip = None
        if len(text) < MIN_LEN:
            skip = f"{category}: shorter than {MIN_LEN} characters"
        elif text.replace(".", "").isdigit() and len(text) < MIN_NUMERIC_LEN:
            skip = f"{category}: numeric, shorter than {MIN_NUMERIC_LEN} digits"
        elif all(w in COMMON_WORDS or len(w) < MIN_LEN for w in ws):
            skip = f"{category}: common word"
        if skip is not None:
            if not quiet:
                self.skipped[skip] += 1
            return
        self.tokens[ws] = Token(words=ws, category=category, source_element=source_element)
        self._lengths = None

    def add_date(self, value: str, *, source_element: str) -> None:
        """Every written form of a DA value (the date part of a DT) as a date token; a value seen before adds
        nothing new, so it is not expanded again. The forms are already filtered by the vocabulary (at least
        :data:`~guards.deid.vocabulary.MIN_DATE_CHARS` letters and digits), so the word rules of :meth:`add`
        (which would drop ``17/03/61`` as three short words) do not apply."""
        if value in self._dates:
            return
        self._dates.add(value)
        for ws in _date_words(value):
            if ws not in self.tokens:
                self.tokens[ws] = Token(words=ws, category="date", source_element=source_element)
                self._lengths = None

    _lengths: tuple[int, ...] | None = None

    @property
    def lengths(self) -> tuple[int, ...]:
        """Word counts of the tokens (the n-grams to try), computed once after the last add."""
        if self._lengths is None:
            self._lengths = tuple(sorted({len(k) for k in self.tokens}))
        return self._lengths


def _element_strings(elem: DataElement) -> list[str]:
    value = elem.value
    if value is None or elem.VR in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return []
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    out: list[str] = []
    for v in values:
        if isinstance(v, PersonName):
            out.append(str(v))
        elif isinstance(v, bytes):
            out.append(v.decode("latin-1"))
        elif isinstance(v, str):
            out.append(v)
    return out


def _walk(ds: Dataset, prefix: str = "") -> Iterator[tuple[str, DataElement]]:
    """Every element of ``ds`` at any depth, with its path (``Seq[0] > Keyword``); private ones by tag."""
    for elem in ds:
        creator = getattr(elem, "private_creator", None) if elem.tag.is_private else None
        name = elem.keyword or (f"{elem.tag} [{creator}]" if creator else str(elem.tag))
        path = f"{prefix}{name}"
        yield path, elem
        if elem.VR == "SQ" and elem.value is not None:
            for i, item in enumerate(elem.value):
                yield from _walk(item, f"{path}[{i}] > ")


def _datasets(ds: FileDataset) -> Iterator[tuple[str, Dataset]]:
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        yield "FileMetaInformation > ", meta
    yield "", ds


def _read(path: Path, *, pixels: bool) -> FileDataset | None:
    try:
        return dcmread(path, stop_before_pixels=not pixels)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        log.debug("phi: %s is not readable as DICOM (%s); raw bytes only", path.name, type(e).__name__)
        return None


def _files_under(root: Path) -> list[Path]:
    """Regular files under ``root``, skipping hidden folders and ``quarantine/`` (not part of a release)."""
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if any(part.startswith(".") for part in rel) or (rel and rel[0] == "quarantine"):
            continue
        if p.is_file():
            out.append(p)
    return out


@dataclass
class SourcePhi:
    """Non-date tokens of the whole source, date tokens per source patient, and source file -> patient."""

    common: TokenIndex
    dates: dict[str, TokenIndex]
    patient_of: dict[str, str]
    files: int
    all_dates: TokenIndex


def gather_source_tokens(source_dir: Path, *, policy: ReleasePolicy) -> SourcePhi:
    """Read every source header once (no pixels) and collect its PHI tokens (module docstring rules)."""
    common = TokenIndex()
    dates: dict[str, TokenIndex] = defaultdict(TokenIndex)
    all_dates = TokenIndex()
    patient_of: dict[str, str] = {}
    files = 0
    keep_dates = policy.deid.retain_longitudinal == "full"
    paths = _files_under(source_dir)
    for path in progress(paths, total=len(paths), what="phi: source headers", logger=log):
        ds = _read(path, pixels=False)
        if ds is None:
            continue
        files += 1
        patient = str(ds.get("PatientID", "")) or path.parent.as_posix()
        patient_of[path.relative_to(source_dir).as_posix()] = patient
        for _, sub in _datasets(ds):
            for _, elem in _walk(sub):
                _collect(elem, common=common, dates=dates[patient], all_dates=all_dates, policy=policy,
                         keep_dates=keep_dates)
    return SourcePhi(common=common, dates=dict(dates), patient_of=patient_of, files=files, all_dates=all_dates)


def _collect(elem: DataElement, *, common: TokenIndex, dates: TokenIndex, all_dates: TokenIndex,
             policy: ReleasePolicy, keep_dates: bool) -> None:
    kw = elem.keyword
    where = kw or str(elem.tag)
    if elem.VR == "PN":
        for name in _element_strings(elem):
            for part in name_parts(name):
                common.add(part, category="name", source_element=where)
            if not name.isascii():
                common.add_native(name, category="name", source_element=where)
        return
    if elem.VR in ("DA", "DT"):
        if keep_dates:
            return
        for value in _element_strings(elem):
            dates.add_date(value, source_element=where)
            all_dates.add_date(value, source_element=where)
        return
    if elem.VR == "UI":
        if policy.deid.retain_uids or kw.endswith("ClassUID") or kw in _SKIP_UID_KEYWORDS:
            return
        for uid in _element_strings(elem):
            uid = uid.strip("\x00 ")
            if uid and not uid.startswith("1.2.840.10008."):
                common.add(uid, category="uid", source_element=where)
        return
    category = CATEGORY.get(kw)
    if category is None:
        return
    if category == "institution" and policy.deid.retain_institution_identity:
        return
    if category == "device" and policy.deid.retain_device_identity:
        return
    for value in _element_strings(elem):
        common.add(value, category=category, source_element=kw)
        if category in ("address", "free text"):
            for part in re.split(r"[\^,;\r\n]+", value):
                common.add(part, category=category, source_element=kw)
        if category == "phone":
            digits = re.sub(r"\D", "", value)
            common.add(digits, category=category, source_element=kw)
        if category == "identifier":
            for piece in id_pieces(value):
                common.add(piece, category=category, source_element=kw, quiet=True)
        # the cleaner scrubs each part of these values from free text (guards.deid.actions.identifier_tokens)
        for part in name_parts(value):
            common.add(part, category=category, source_element=kw, quiet=True)
        if not value.isascii():
            common.add_native(value, category=category, source_element=kw)


@dataclass(frozen=True)
class Hit:
    """A source token found in a released file: where, and which kind of token (never its value)."""

    file: str
    where: str
    token: Token


def _find(ws: tuple[str, ...], indexes: Iterable[TokenIndex]) -> list[Token]:
    """The tokens found in the words ``ws``: each token whose words occur consecutively, and each single-word
    token equal to a run of :data:`~guards.deid.vocabulary.MIN_ID_DIGITS` or more digits inside a longer word
    (``448120`` in ``MRN448120``, as the pixel cleaner matches identifier pieces). A match inside a longer one
    (``PID 448120`` holds ``448120``) is not counted again."""
    found: list[tuple[int, int, Token]] = []
    for index in indexes:
        if not index.tokens:
            continue
        get = index.tokens.get
        for n in index.lengths:
            for i in range(len(ws) - n + 1):
                tok = get(ws[i:i + n])
                if tok is not None:
                    found.append((i, n, tok))
    out: list[Token] = []
    covered: set[int] = set()
    if found:
        if len(found) > 1:
            found.sort(key=lambda f: -f[1])
        spans: list[tuple[int, int]] = []
        for i, n, tok in found:
            if any(a <= i and i + n <= b for a, b in spans):
                continue
            spans.append((i, i + n))
            covered.update(range(i, i + n))
            out.append(tok)
    for i, w in enumerate(ws):
        if len(w) <= MIN_ID_DIGITS or i in covered or w.isdigit():
            continue
        for run in digit_runs(w):
            for index in indexes:
                tok = index.tokens.get((run,))
                if tok is not None:
                    out.append(tok)
                    break
    return out


@dataclass
class _Counts:
    files: int = 0
    dicom_files: int = 0
    elements: int = 0
    bytes: int = 0
    ocr_files: int = 0
    ocr_frames: int = 0
    ocr_words: int = 0
    ocr_errors: int = 0
    ocr_calls: int = 0


def _find_native(text: str, indexes: Iterable[TokenIndex]) -> list[Token]:
    """The native-script tokens (:meth:`TokenIndex.add_native`) that occur in ``text`` as substrings."""
    return [tok for index in indexes for piece, tok in index.native.items() if piece in text]


def _scan_elements(ds: FileDataset, rel: str, indexes: list[TokenIndex], counts: _Counts) -> list[Hit]:
    hits = []
    for prefix, sub in _datasets(ds):
        for path, elem in _walk(sub, prefix):
            counts.elements += 1
            for text in _element_strings(elem):
                for tok in _find(words(text), indexes):
                    hits.append(Hit(file=rel, where=path, token=tok))
                if not text.isascii():
                    hits.extend(Hit(file=rel, where=path, token=tok) for tok in _find_native(text, indexes))
    return hits


def _scan_bytes(data: bytes, rel: str, indexes: list[TokenIndex], seen: set[Token]) -> list[Hit]:
    hits = []
    for m in _ASCII_RUN.finditer(data):
        for tok in _find(words(m.group().decode("ascii")), indexes):
            if tok not in seen:
                seen.add(tok)
                hits.append(Hit(file=rel, where=f"raw bytes near offset {m.start()}", token=tok))
    if not data.isascii():  # native-script tokens as UTF-8 (sidecar tables, UTF-8 DICOM text)
        for index in indexes:
            for piece, tok in index.native.items():
                at = data.find(piece.encode("utf-8"))
                if at >= 0 and tok not in seen:
                    seen.add(tok)
                    hits.append(Hit(file=rel, where=f"raw bytes near offset {at}", token=tok))
    return hits


def _needs_ocr(ds: FileDataset, policy: ReleasePolicy) -> bool:
    if "PixelData" not in ds:
        return False
    if policy.pixels.ocr_all:
        return True
    return str(ds.get("Modality", "")) in policy.pixels.risky_modalities or \
        str(ds.get("BurnedInAnnotation", "")).upper() == "YES"


def _display_frames(ds: FileDataset) -> list[npt.NDArray[np.uint8]]:
    """Up to MAX_OCR_FRAMES frames as 8-bit grey (min-max window; MONOCHROME1 inverted; colour averaged)."""
    arr = np.asarray(ds.pixel_array)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames == 1:
        arr = arr[np.newaxis]
    if spp > 1:
        arr = arr.mean(axis=-1)
    picks = np.unique(np.linspace(0, arr.shape[0] - 1, num=min(MAX_OCR_FRAMES, arr.shape[0])).astype(int))
    out = []
    for i in picks:
        f = arr[i].astype(np.float64)
        lo, hi = float(f.min()), float(f.max())
        g = np.zeros(f.shape, dtype=np.uint8) if hi <= lo else ((f - lo) * (255.0 / (hi - lo))).astype(np.uint8)
        if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            g = 255 - g
        out.append(g)
    return out


def _ocr_boxes(image: npt.NDArray[np.uint8], *, language: str) -> list[tuple[str, int, int, int, int]]:
    """(text, x0, y0, x1, y1) of each word tesseract reads: guards.deid.ocr when present, else a TSV call here."""
    try:
        ocr = importlib.import_module("guards.deid.ocr")
    except ImportError:
        ocr = None
    if ocr is not None:
        return [(w.text, w.x0, w.y0, w.x1, w.y1) for w in ocr.ocr_words(image, language=language)]
    exe = shutil.which("tesseract")
    if exe is None:
        raise InputError("tesseract was not found on PATH; install tesseract-ocr or run the phi check with ocr=False")
    with tempfile.TemporaryDirectory(prefix="guard-phi-ocr-") as tmp:
        pgm = Path(tmp) / "frame.pgm"
        h, w = image.shape
        pgm.write_bytes(f"P5 {w} {h} 255\n".encode() + image.tobytes())
        done = subprocess.run([exe, str(pgm), "stdout", "--psm", "11", "-l", language, "tsv"], capture_output=True,
                              check=False, timeout=300, env={"OMP_THREAD_LIMIT": "1", "PATH": "/usr/bin:/bin"})
    if done.returncode != 0:
        raise InputError(f"tesseract exited with {done.returncode}; check tesseract --list-langs has {language!r}")
    out = []
    for line in done.stdout.decode("utf-8", "replace").splitlines()[1:]:
        r = line.split("\t")
        if len(r) >= 12 and r[0] == "5" and r[11].strip():
            x, y, w, h = (int(v) for v in r[6:10])
            out.append((r[11], x, y, x + w, y + h))
    return out


@dataclass
class _Tile:
    rel: str
    frame: int
    indexes: list[TokenIndex]
    image: npt.NDArray[np.uint8]


class _OcrBatcher:
    """OCR of many frames per tesseract call: frames of one shape are tiled into a mosaic with blank gaps.

    Starting tesseract costs far more than reading a small frame (measured: about 0.5 s a call for a 64x64
    frame on the shared machine), so up to :data:`MOSAIC_MAX_TILES` frames (at most :data:`MOSAIC_PIXELS`
    pixels) go into one image, :data:`MOSAIC_GAP` black pixels apart; each word goes back to the tile that holds
    the centre of its box, in tesseract's reading order.
    """

    def __init__(self, *, language: str, counts: _Counts) -> None:
        self.language = language
        self.counts = counts
        self.pending: dict[tuple[int, int], list[_Tile]] = defaultdict(list)

    def add(self, tile: _Tile) -> list[Hit]:
        shape = (int(tile.image.shape[0]), int(tile.image.shape[1]))
        self.pending[shape].append(tile)
        cap = max(1, min(MOSAIC_MAX_TILES, MOSAIC_PIXELS // max(shape[0] * shape[1], 1)))
        return self._flush(shape) if len(self.pending[shape]) >= cap else []

    def flush_all(self) -> list[Hit]:
        return [h for shape in list(self.pending) for h in self._flush(shape)]

    def _flush(self, shape: tuple[int, int]) -> list[Hit]:
        tiles = self.pending.pop(shape, [])
        if not tiles:
            return []
        h, w = shape
        cols = math.ceil(math.sqrt(len(tiles)))
        rows = math.ceil(len(tiles) / cols)
        mosaic = np.zeros((MOSAIC_GAP + rows * (h + MOSAIC_GAP), MOSAIC_GAP + cols * (w + MOSAIC_GAP)), np.uint8)
        for k, t in enumerate(tiles):
            y, x = MOSAIC_GAP + (k // cols) * (h + MOSAIC_GAP), MOSAIC_GAP + (k % cols) * (w + MOSAIC_GAP)
            mosaic[y:y + h, x:x + w] = t.image
        try:
            boxes = _ocr_boxes(mosaic, language=self.language)
        except GuardError as e:
            self.counts.ocr_errors += len(tiles)
            log.warning("phi: OCR failed on a mosaic of %d frames (%s)", len(tiles), e)
            return []
        self.counts.ocr_calls += 1
        found: list[list[str]] = [[] for _ in tiles]
        for text, x0, y0, x1, y1 in boxes:
            cx, cy = (x0 + x1) // 2 - MOSAIC_GAP, (y0 + y1) // 2 - MOSAIC_GAP
            c, r = cx // (w + MOSAIC_GAP), cy // (h + MOSAIC_GAP)
            k = r * cols + c
            if 0 <= c < cols and 0 <= k < len(tiles) and cx % (w + MOSAIC_GAP) < w and cy % (h + MOSAIC_GAP) < h:
                found[k].extend(words(text))
        hits = []
        for t, ws in zip(tiles, found, strict=True):
            self.counts.ocr_frames += 1
            self.counts.ocr_words += len(ws)
            for tok in _find(tuple(ws), t.indexes):
                hits.append(Hit(file=t.rel, where=f"PixelData frame {t.frame} (OCR text)", token=tok))
        return hits


def _queue_ocr(ds: FileDataset, rel: str, indexes: list[TokenIndex], batcher: _OcrBatcher) -> list[Hit]:
    try:
        frames = _display_frames(ds)
    except (ValueError, RuntimeError, AttributeError, TypeError, NotImplementedError) as e:
        batcher.counts.ocr_errors += 1
        log.warning("phi: pixels of %s could not be decoded for OCR (%s)", rel, type(e).__name__)
        return []
    batcher.counts.ocr_files += 1
    return [h for i, f in enumerate(frames) for h in batcher.add(_Tile(rel=rel, frame=i, indexes=indexes, image=f))]


def _source_paths(release_dir: Path) -> dict[str, str]:
    """release path -> source path from the release's manifest.parquet, when it has both columns."""
    manifest = release_dir / "manifest.parquet"
    if not manifest.is_file():
        return {}
    table = pq.read_table(manifest)
    if "source_path" not in table.column_names or "path" not in table.column_names:
        return {}
    return {p: s for p, s in zip(table.column("path").to_pylist(), table.column("source_path").to_pylist(),
                                 strict=True) if p and s}


def run(release_dir: Path, *, source_dir: Path, policy: ReleasePolicy, ocr: bool = True) -> CheckResult:
    """Search every released file for source PHI tokens and source UIDs (module docstring); one hit fails."""
    release_dir, source_dir = Path(release_dir), Path(source_dir)
    for name, d in (("release_dir", release_dir), ("source_dir", source_dir)):
        if not d.is_dir():
            raise InputError(f"phi: {name} {str(d)!r} is not a folder; pass the release tree and the source tree")
    source = gather_source_tokens(source_dir, policy=policy)
    if source.files == 0:
        raise InputError(f"phi: no readable DICOM file under source_dir {str(source_dir)!r}; without the source "
                         "headers there is nothing to search for: pass the original (private) tree")
    if ocr and shutil.which("tesseract") is None:
        raise InputError("phi: OCR is on but tesseract is not on PATH; install tesseract-ocr, or pass ocr=False "
                         "(then burned-in text is not searched)")
    mapping = _source_paths(release_dir)
    counts = _Counts()
    batcher = _OcrBatcher(language=policy.pixels.language, counts=counts)
    hits: list[Hit] = []
    scoped = 0
    files = [p for p in _files_under(release_dir) if p.relative_to(release_dir).as_posix() != "manifest.parquet"]
    for path in progress(files, total=len(files), what="phi: released files", logger=log):
        rel = path.relative_to(release_dir).as_posix()
        patient = source.patient_of.get(mapping.get(rel, ""))
        if patient is not None:
            scoped += 1
        date_index = source.dates.get(patient, TokenIndex()) if patient is not None else source.all_dates
        indexes = [source.common, date_index]
        data = path.read_bytes()
        counts.files += 1
        counts.bytes += len(data)
        file_hits: list[Hit] = []
        ds = _read(path, pixels=ocr)
        if ds is not None:
            counts.dicom_files += 1
            file_hits.extend(_scan_elements(ds, rel, indexes, counts))
            if ocr and _needs_ocr(ds, policy):
                hits.extend(_queue_ocr(ds, rel, indexes, batcher))
        file_hits.extend(_scan_bytes(data, rel, indexes, {h.token for h in file_hits}))
        hits.extend(file_hits)
    hits.extend(batcher.flush_all())
    return _result(hits, counts=counts, source=source, scoped=scoped, ocr=ocr)


def _result(hits: list[Hit], *, counts: _Counts, source: SourcePhi, scoped: int, ocr: bool) -> CheckResult:
    n_tokens = len(source.common.tokens) + len(source.all_dates.tokens)
    examined = {
        "files": counts.files, "dicom_files": counts.dicom_files, "elements": counts.elements, "bytes": counts.bytes,
        "tokens": n_tokens, "source_files": source.files, "ocr_files": counts.ocr_files,
        "ocr_frames": counts.ocr_frames, "ocr_words": counts.ocr_words, "ocr_calls": counts.ocr_calls,
    }
    by_category: dict[str, int] = defaultdict(int)
    per_file: dict[str, int] = defaultdict(int)
    for h in hits:
        by_category[h.token.category] += 1
        per_file[h.file] += 1
    findings = [Finding(
        metric="phi_hits", value=len(hits), threshold=0, status="fail" if hits else "pass",
        evidence=(f"{len(hits)} source PHI tokens in {len({h.file for h in hits})} released files "
                  f"({', '.join(f'{k}: {v}' for k, v in sorted(by_category.items()))})") if hits else
        (f"no source PHI token in {counts.files} files ({counts.elements} elements, {counts.bytes} bytes, "
         f"{counts.ocr_frames} OCR frames) searched for {n_tokens} tokens"),
    )]
    for h in hits[:MAX_LISTED_HITS]:
        findings.append(Finding(
            metric=f"phi_token:{h.token.category}", value=1, threshold=0, status="fail",
            evidence=(f"{h.file}: {h.where} holds a {h.token.category} token from the source's "
                      f"{h.token.source_element} ({len(''.join(h.token.words))} characters)"),
        ))
    if counts.ocr_errors:
        findings.append(Finding(metric="ocr_unreadable_files", value=counts.ocr_errors, threshold=0, status="warn",
                                evidence="pixel data that could not be decoded was not searched by OCR"))
    details: dict[str, Any] = {
        "hits_by_category": dict(by_category),
        "hits_per_file": dict(sorted(per_file.items())),  # release paths (pseudonymous) -> number of hits
        "skipped": dict(source.common.skipped) | dict(source.all_dates.skipped),
        "tokens_by_category": _count_categories(source),
        "dates_scoped_to_patient_files": scoped,
        "ocr": ocr,
        "rules": f"tokens >= {MIN_LEN} chars, numeric >= {MIN_NUMERIC_LEN} digits, {len(COMMON_WORDS)} common words "
                 "skipped; whole-word match on normalised text",
    }
    return CheckResult(
        id=CHECK_ID, findings=tuple(findings), examined=examined, details=details,
        summary=(f"{len(hits)} pieces of source PHI remain in the release." if hits else
                 f"No source PHI found in {counts.files} released files."),
        advice=("Look at each listed element path: add the element to the de-identification (deid options, e.g. "
                "switch off a retain_* option or clean_descriptors/clean_structured_content), or quarantine the "
                "files; burned-in text needs pixels.mode = 'clean' or 'quarantine'.") if hits else "",
    )


def _count_categories(source: SourcePhi) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for tok in list(source.common.tokens.values()) + list(source.all_dates.tokens.values()):
        out[tok.category] += 1
    return dict(out)


if TYPE_CHECKING:
    from guards.run import Run


def check(current: Run) -> CheckResult:
    """The registry's entry (guards.checks.registry): the release against the original source of the snapshot."""
    return run(current.release_tree, source_dir=current.require_snapshot().root, policy=current.policy)
