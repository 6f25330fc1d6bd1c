"""Clean Pixel Data Option (PS3.15 E.3.1): find burned-in text with OCR and hide it, or quarantine the instance.

Called by the de-identification engine per instance, before header de-identification, so that OCR text can be
matched against the instance's own PHI header values (:mod:`guards.deid.pixel_phi`).

Decision per instance:

1. Risk (``PixelOutcome.risk``): Modality in ``policy.risky_modalities``, a SOP Class that is typically
   annotated (Secondary Capture, Ultrasound, Video, ...), or Burned In Annotation ``YES`` (PS3.3 C.7.6.1.1.7).
   With ``ocr_all = false`` an instance that is not risky is not read at all.
2. OCR (:mod:`guards.deid.ocr`): every frame at native resolution, displayed as in
   :mod:`guards.deid.pixel_display`.
3. Words to hide: in any instance, anywhere in the frame, every word that matches a PHI header value or looks
   like a date or an identifier (6+ digits), whatever its confidence; in a risky instance also every word
   tesseract reads with ``min_confidence`` or more (at least two letters or digits, no taller than an eighth of
   the frame) outside the image area. The image area (:mod:`guards.deid.pixel_regions`) of an ultrasound is
   given by its Sequence of Ultrasound Regions (PS3.3 C.8.5.5), or a documented centre area when it has none;
   other instances have none (the whole frame is annotation). Clean Pixel Data (PS3.15 E.3.1) hides text,
   not the image: Doppler speckle that tesseract reads as words stays.
4. Mode ``clean`` (default): the words' boxes, grown by ``padding``, are filled with the frame's darkest stored
   value; every other pixel keeps its stored bytes. The cleaned frames are read again (``verify_passes``) and
   any word still to hide is filled too. Burned In Annotation becomes ``NO`` and ``method_code`` is ``113101``
   (CID 7050 Clean Pixel Data Option) for the engine's De-identification Method Code Sequence. Mode
   ``quarantine``: an instance with words to hide is quarantined. Mode ``keep``: nothing is changed, a warning is
   logged for every instance with words left in place.
5. An instance that says ``YES`` but where OCR finds nothing to hide, that cannot be decoded, whose OCR fails, or
   whose pixels cannot be rewritten is quarantined with the reason: it is never published uncleaned.

An instance that is not cleaned keeps its Pixel Data bytes and transfer syntax (it is only read). Compressed
Pixel Data of a cleaned instance is decoded (YCbCr as RGB, the SOP Instance UID kept) and written again
losslessly by :func:`guards.codec.store_pixels`: ``policy.encode`` (JPEG-LS Lossless by default; JPEG 2000
Lossless, RLE Lossless or native by policy), falling back to the next lossless option when an encoder cannot
take the data; re-encoding lossy JPEG lossily would lose quality a second time. Lossy Image Compression stays
``01`` for a lossy input, with its method (PS3.3 C.7.6.1.1.5). Native input stays in its own syntax.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from guards.codec import decompress, source_of, store_pixels
from guards.deid.ocr import OcrError, OcrWord, ocr_words
from guards.deid.pixel_display import display_frames
from guards.deid.pixel_phi import header_tokens, looks_like_phi, matches_header, normalize
from guards.deid.pixel_regions import ImageRegions, image_regions
from guards.policy import PixelsSection

if TYPE_CHECKING:
    from guards.deid.ocr_cache import OcrCache

log = logging.getLogger(__name__)

PixelAction = Literal["unchanged", "cleaned", "quarantine"]
Box = tuple[int, int, int, int, int]  # (frame, x0, y0, x1, y1), x1 and y1 exclusive

#: CID 7050 code of the Clean Pixel Data Option (PS3.16), returned in ``PixelOutcome.method_code`` when cleaned.
CLEAN_PIXEL_DATA_CODE = "113101"

#: SOP Class UID prefixes of objects that usually carry burned-in annotations (PS3.4 Annex B).
_RISKY_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture (and its multi-frame variants)
    "1.2.840.10008.5.1.4.1.1.6.",  # Ultrasound Image Storage
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
    "1.2.840.10008.5.1.4.1.1.77.1.",  # Visible Light (endoscopy, microscopy, photography, video)
    "1.2.840.10008.5.1.4.1.1.104.",  # Encapsulated documents
)
_DTYPES = {8: "u1", 16: "u2", 32: "u4"}


@dataclass(frozen=True)
class PixelOutcome:
    """What :func:`clean_pixel_data` did to one instance, and the evidence (counts of what it examined)."""

    action: PixelAction
    reason: str
    boxes: list[Box] = field(default_factory=list)
    ocr_words_examined: int = 0
    frames_examined: int = 0
    risk: str = ""
    words_matching_header: int = 0
    method_code: str | None = None  # "113101" when cleaned, for DeidentificationMethodCodeSequence
    cached: bool = False  # the decision was replayed from an earlier run's OCR (guards.deid.ocr_cache)


def instance_risk(ds: Dataset, *, policy: PixelsSection) -> str:
    """Why ``ds`` is considered at risk of burned-in PHI; empty when it is not."""
    reasons: list[str] = []
    modality = str(ds.get("Modality", "")).strip().upper()
    if modality and modality in {m.upper() for m in policy.risky_modalities}:
        reasons.append(f"Modality {modality} is in pixels.risky_modalities")
    sop = str(ds.get("SOPClassUID", "")).strip()
    if any(sop.startswith(p) for p in _RISKY_SOP_PREFIXES):
        reasons.append(f"SOP Class {sop} usually carries annotations")
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        reasons.append("BurnedInAnnotation is YES")
    return "; ".join(reasons)


def _to_hide(
    word: OcrWord, *, risky: bool, tokens: set[str], policy: PixelsSection, rows: int, in_image: bool = False
) -> tuple[bool, bool]:
    """(hide the word, it matches a header PHI value).

    A word that matches the vocabulary or looks like a date or an ID is hidden anywhere, inside the image area
    too; any other word of a risky instance only outside the image area (:mod:`guards.deid.pixel_regions`).
    """
    if matches_header(word.text, tokens):
        return True, True
    if looks_like_phi(word.text):  # dates and long digit runs are hidden whatever tesseract's confidence
        return True, False
    if in_image or word.confidence < policy.min_confidence:
        return False, False
    tall = (word.y1 - word.y0) > max(rows // 8, 16)
    return risky and len(normalize(word.text)) >= 2 and not tall, False


def _next_to(word: OcrWord, hidden: list[OcrWord]) -> bool:
    """True when ``word`` sits beside a hidden word of its line: rows overlapping, a gap of at most twice the
    hidden word's height (a name split in two by tesseract), not a speckle word far along the same line."""
    for h in hidden:
        if h.line != word.line or min(h.y1, word.y1) <= max(h.y0, word.y0):
            continue
        gap = max(h.x0 - word.x1, word.x0 - h.x1, 0)
        if gap <= 2 * (h.y1 - h.y0):
            return True
    return False


@dataclass
class _Scan:
    words: int = 0
    matching: int = 0
    hidden: list[tuple[int, OcrWord]] = field(default_factory=list)


def _scan(
    images: list[npt.NDArray[np.uint8]],
    frames: list[int],
    *,
    risky: bool,
    tokens: set[str],
    policy: PixelsSection,
    regions: ImageRegions | None = None,
) -> _Scan:
    """OCR ``frames``; a word is hidden by :func:`_to_hide`, or when it shares a text line with a hidden word.

    Tesseract's word confidence is unreliable on overlays (``MEDICAL`` next to ``WESTWAY`` in
    gdcm-US-ALOKA-16.dcm reads with confidence 0), so a line with one word to hide is hidden whole outside the
    image area; inside it (``regions``) only the words right beside a hidden word are, since tesseract strings
    Doppler speckle into long lines.
    """
    scan = _Scan()
    area = regions.mask() if regions is not None and regions.rects else None
    for index in frames:
        image = images[index]
        words = ocr_words(image, language=policy.language)
        scan.words += len(words)
        inside = {w: area is not None and regions is not None and regions.holds(w.x0, w.y0, w.x1, w.y1, mask=area)
                  for w in words}
        hidden: list[OcrWord] = []
        for word in words:
            hide, match = _to_hide(word, risky=risky, tokens=tokens, policy=policy, rows=image.shape[0],
                                   in_image=inside[word])
            scan.matching += int(match)
            if hide:
                hidden.append(word)
        lines = {w.line for w in hidden}
        tall = max(image.shape[0] // 8, 16)
        for word in words:
            if word not in hidden and word.line in lines and len(normalize(word.text)) >= 2:
                if word.y1 - word.y0 <= tall and (not inside[word] or _next_to(word, hidden)):
                    hidden.append(word)
        scan.hidden.extend((index, w) for w in hidden)
    return scan


def _padded(index: int, word: OcrWord, *, pad: int, rows: int, cols: int) -> Box:
    return (index, max(0, word.x0 - pad), max(0, word.y0 - pad), min(cols, word.x1 + pad), min(rows, word.y1 + pad))


class _Unwritable(Exception):
    """Pixel Data whose stored layout this module does not rewrite (reason in the message)."""


def _raw_view(ds: Dataset) -> tuple[bytearray, npt.NDArray[np.generic]]:
    """Native Pixel Data as a writeable (frames, rows, columns, samples) view over a copy of its bytes."""
    bits = int(ds.BitsAllocated)
    if bits not in _DTYPES:
        raise _Unwritable(f"BitsAllocated {bits} is not rewritten (8, 16 or 32 only)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    rows, cols, spp = int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1))
    endian = "<" if ds.file_meta.TransferSyntaxUID != "1.2.840.10008.1.2.2" else ">"
    buf = bytearray(ds.PixelData)
    count = frames * rows * cols * spp
    if len(buf) * 8 < count * bits:
        raise _Unwritable(f"Pixel Data has {len(buf)} bytes, fewer than {frames} frames of {rows}x{cols}x{spp}")
    flat = np.frombuffer(buf, dtype=np.dtype(endian + _DTYPES[bits]), count=count)
    if spp > 1 and int(ds.get("PlanarConfiguration", 0)) == 1:
        return buf, flat.reshape(frames, spp, rows, cols).transpose(0, 2, 3, 1)
    return buf, flat.reshape(frames, rows, cols, spp)


def _fill(ds: Dataset, boxes: list[Box], images: list[npt.NDArray[np.uint8]]) -> None:
    """Fill ``boxes`` with each frame's darkest displayed stored value; every other byte is kept."""
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        decompress(ds)  # the SOP Instance UID kept: pydicom's default would make a new random one
    buf, raw = _raw_view(ds)
    for index, x0, y0, x1, y1 in boxes:
        r, c = np.unravel_index(int(np.argmin(images[index])), images[index].shape)
        raw[index, y0:y1, x0:x1, :] = raw[index, r, c, :]
    ds.PixelData = bytes(buf)


def _replay(ds: Dataset, record: dict[str, Any], images: list[npt.NDArray[np.uint8]], *, risk: str) -> PixelOutcome:
    """A recorded decision applied again: the same fills, pass by pass, so the same bytes, without OCR."""
    passes = [[(int(b[0]), int(b[1]), int(b[2]), int(b[3]), int(b[4])) for b in p] for p in record["passes"]]
    action: PixelAction = record["action"]
    if action == "cleaned":
        try:
            _fill(ds, passes[0], images)
            for extra in passes[1:]:
                _fill(ds, extra, display_frames(ds, _decode(ds)))
        except _Unwritable as e:
            return PixelOutcome(action="quarantine", reason=f"cannot clean: {e}", risk=risk)
        ds.BurnedInAnnotation = "NO"
    elif str(record["reason"]).startswith("mode keep"):
        log.warning("pixels.mode is keep: %s (recorded by an earlier run)", record["reason"])
    return PixelOutcome(
        action=action,
        reason=str(record["reason"]),
        boxes=[b for p in passes for b in p],
        ocr_words_examined=int(record["words"]),
        frames_examined=len(images),
        risk=risk,
        words_matching_header=int(record["matching"]),
        method_code=record["method_code"],
        cached=True,
    )


def _decode(ds: Dataset) -> npt.NDArray[np.generic]:
    try:
        return np.asarray(ds.pixel_array)
    except (NotImplementedError, RuntimeError, ValueError, AttributeError, TypeError, KeyError) as e:
        raise _Unwritable(
            f"Pixel Data with transfer syntax {ds.file_meta.get('TransferSyntaxUID', '?')} cannot be decoded "
            f"({type(e).__name__}: {e}); install the decoder (pylibjpeg, gdcm) to clean it"
        ) from e


FLOAT_PIXEL_DATA = {0x7FE00008: "Float Pixel Data (7FE0,0008)", 0x7FE00009: "Double Float Pixel Data (7FE0,0009)"}


def float_pixel_data(ds: Dataset) -> str | None:
    """The float pixel element ``ds`` holds (PS3.3 C.7.6.24 / C.7.6.25: Float / Double Float Pixel Data), or None."""
    return next((name for tag, name in FLOAT_PIXEL_DATA.items() if tag in ds), None)


def float_reason(name: str) -> str:
    """Why an instance with float pixels is quarantined (fail closed).

    OCR display (VOI LUT, PS3.3 C.11.2), box filling and the protect step's noise all work on integer stored
    values (Pixel Data, 7FE0,0010); float pixels would be published unread and unprotected while the header
    claims Clean Pixel Data. Float images (parametric maps) are rare, so a steward reviews them instead.
    """
    return (f"{name}: Clean Pixel Data and the protect noise handle integer Pixel Data only, so float pixels"
            " are not published (a steward can review the quarantined copy)")


def clean_pixel_data(ds: Dataset, *, policy: PixelsSection, cache: OcrCache | None = None) -> PixelOutcome:
    """Apply the Clean Pixel Data Option (PS3.15 E.3.1) to ``ds`` in place; see the module docstring.

    With ``cache``, a decision recorded for the same displayed frames, header tokens and settings is replayed
    without OCR (:mod:`guards.deid.ocr_cache`), and a new completed decision is recorded. A cleaned instance that
    arrived compressed is encoded again losslessly (``policy.encode``, :mod:`guards.codec`).
    """
    if (floating := float_pixel_data(ds)) is not None:
        return PixelOutcome(action="quarantine", reason=float_reason(floating), risk=instance_risk(ds, policy=policy))
    if "PixelData" not in ds:
        return PixelOutcome(action="unchanged", reason="no Pixel Data")
    source = source_of(ds)  # before any decoding: the input's syntax and whether it was lossy
    outcome = _clean(ds, policy=policy, cache=cache)
    if outcome.action == "cleaned":
        store_pixels(ds, source, encoding=policy.encode, what=f"a cleaned {ds.get('Modality', '')} instance")
    return outcome


def _clean(ds: Dataset, *, policy: PixelsSection, cache: OcrCache | None) -> PixelOutcome:
    risk = instance_risk(ds, policy=policy)
    if not risk and not policy.ocr_all:
        return PixelOutcome(action="unchanged", reason="not at risk and pixels.ocr_all is false: not read")
    try:
        images = display_frames(ds, _decode(ds))
    except _Unwritable as e:
        return PixelOutcome(action="quarantine", reason=str(e), risk=risk)
    except (ValueError, KeyError, AttributeError, IndexError, TypeError) as e:
        reason = f"Pixel Data cannot be displayed for OCR ({type(e).__name__}: {e}); check the LUT and pixel attributes"
        return PixelOutcome(action="quarantine", reason=reason, risk=risk)
    tokens = header_tokens(ds)
    burned_in = str(ds.get("BurnedInAnnotation", "")).strip().upper()
    regions = image_regions(ds, *images[0].shape) if images else None
    where = regions.describe() if regions is not None else ""
    key = None
    if cache is not None:
        key = cache.key(images, tokens=tokens, risk=risk, burned_in=burned_in, policy=policy, regions=where)
    if cache is not None and key is not None and (record := cache.get(key)) is not None:
        return _replay(ds, record, images, risk=risk)
    everything = list(range(len(images)))
    try:
        scan = _scan(images, everything, risky=bool(risk), tokens=tokens, policy=policy, regions=regions)
    except OcrError as e:
        return PixelOutcome(action="quarantine", reason=f"OCR failed: {e}", risk=risk, frames_examined=len(images))
    rows, cols = images[0].shape
    boxes = [_padded(i, w, pad=policy.padding, rows=rows, cols=cols) for i, w in scan.hidden]
    examined = scan.words
    passes: list[list[Box]] = [boxes]  # the boxes to fill, pass by pass (verify passes add theirs)

    def outcome(action: PixelAction, reason: str, *, code: str | None = None, record: bool = True) -> PixelOutcome:
        if cache is not None and key is not None and record:
            cache.put(key, {"action": action, "reason": reason, "passes": passes, "words": examined,
                            "matching": scan.matching, "method_code": code})
        return PixelOutcome(
            action=action,
            reason=reason,
            boxes=[b for p in passes for b in p],
            ocr_words_examined=examined,
            frames_examined=len(images),
            risk=risk,
            words_matching_header=scan.matching,
            method_code=code,
        )

    says_yes = burned_in == "YES"
    if not boxes:
        if says_yes and policy.mode != "keep":
            read = f" ({examined} word(s) read, none PHI-shaped or outside the image area)" if examined else ""
            return outcome("quarantine", f"BurnedInAnnotation is YES but OCR found no text to hide{read}; "
                                         "review it by eye")
        return outcome("unchanged", f"no text to hide in {len(images)} frame(s)")
    found = f"{len(boxes)} word(s) to hide ({scan.matching} matching header PHI) in {len(images)} frame(s)"
    if policy.mode == "keep":
        log.warning("pixels.mode is keep: %s left in place (%s)", found, risk or "not at risk")
        return outcome("unchanged", f"mode keep: {found} left in place")
    if policy.mode == "quarantine":
        return outcome("quarantine", f"mode quarantine: {found}")
    try:
        _fill(ds, boxes, images)
        for _ in range(policy.verify_passes):
            again = display_frames(ds, _decode(ds))
            more = _scan(again, sorted({b[0] for b in boxes}), risky=bool(risk), tokens=tokens, policy=policy,
                         regions=regions)
            examined += more.words
            extra = [_padded(i, w, pad=policy.padding, rows=rows, cols=cols) for i, w in more.hidden]
            if not extra:
                break
            _fill(ds, extra, again)
            passes.append(extra)
    except (_Unwritable, OcrError) as e:
        return outcome("quarantine", f"cannot clean: {e}", record=False)
    ds.BurnedInAnnotation = "NO"
    return outcome("cleaned", f"cleaned: {found}", code=CLEAN_PIXEL_DATA_CODE)
