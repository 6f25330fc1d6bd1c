"""Transfer syntaxes of the pixel data Release Guard writes (PS3.5 Annex A, PS3.5 8.2; PS3.3 C.7.6.1.1.5).

Two rules, for every step that writes a DICOM file (de-identification, protection, remediation):

- Pixels that are not changed are not re-encoded. A header-only edit through pydicom keeps the encapsulated
  Pixel Data (PS3.5 A.4: the Basic Offset Table and fragments) byte for byte, and the Transfer Syntax UID with
  it; the callers never decode such a file into what they write.
- Pixels that are changed (burned-in text filled by :mod:`guards.deid.pixels`, noise added by
  :mod:`guards.protect`) of an instance that arrived *compressed* are written with a lossless encapsulated
  transfer syntax (:func:`store_pixels`): JPEG-LS Lossless (1.2.840.10008.1.2.4.80, pyjpegls) by default,
  JPEG 2000 Lossless (1.2.840.10008.1.2.4.90, pylibjpeg-openjpeg) or RLE Lossless (1.2.840.10008.1.2.5,
  pylibjpeg-rle or pydicom's own encoder) by ``pixels.encode``, or natively (Explicit VR Little Endian,
  1.2.840.10008.1.2.1) with ``encode = "native"``. What an encoder cannot take (32-bit and float data always,
  JPEG-LS below 2 bits stored, JPEG 2000 frames too small for openjpeg, ...) falls back to the next lossless
  option and finally to native, with the reason logged. Each encoding is decoded again and compared with the
  array it was meant to hold; one that does not round-trip bit for bit is not used. An instance that arrived
  uncompressed (native) stays native. No encoding offered here is lossy, so a noise-protected release never
  gets a lossy syntax from this module.

Lossy Image Compression (0028,2110) and its Method (0028,2114) and Ratio (0028,2112), PS3.3 C.7.6.1.1.5: an
instance whose input was lossy stays marked ``01`` after a lossless re-encoding (the loss happened before),
with the method of its input syntax (C.7.6.1.1.5.1 defined terms, e.g. ``ISO_10918_1``) added when the source
did not record it, and the input's approximate ratio (uncompressed size / compressed size) beside it. Whether
an input was lossy: the source's ``01``; a syntax that is always lossy (JPEG baseline and extended, video); for
the syntaxes that may be either, the codestream: JPEG-LS NEAR > 0 in the first scan (ISO 14495-1 C.2.3),
JPEG 2000 / HTJ2K with the irreversible 9-7 wavelet in the COD segment (ISO 15444-1 A.6.1). A codestream that
cannot be read is taken as lossy.

YCbCr input (YBR_FULL, YBR_FULL_422, YBR_ICT, YBR_RCT) is decoded to RGB by pydicom and written as RGB, with
Photometric Interpretation and Planar Configuration updated; the SOP Instance UID is kept (pydicom's
``decompress`` / ``compress`` with ``generate_instance_uid=False``: the de-identified UIDs are pseudonyms that
labels, references and the caches are keyed by).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.multival import MultiValue
from pydicom.pixels.utils import compress, pixel_array
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from guards.policy import PixelEncoding

log = logging.getLogger(__name__)

#: The lossless encodings ``pixels.encode`` may name, and the transfer syntax each writes (PS3.5 Annex A).
ENCODINGS: dict[PixelEncoding, UID] = {
    "jpeg-ls": JPEGLSLossless,  # 1.2.840.10008.1.2.4.80, PS3.5 A.4.3
    "jpeg2000": JPEG2000Lossless,  # 1.2.840.10008.1.2.4.90, PS3.5 A.4.4
    "rle": RLELossless,  # 1.2.840.10008.1.2.5, PS3.5 A.4.2 and Annex G
    "native": ExplicitVRLittleEndian,  # 1.2.840.10008.1.2.1, PS3.5 A.2
}
_ORDER: tuple[PixelEncoding, ...] = ("jpeg-ls", "jpeg2000", "rle", "native")

#: Syntaxes whose pixel data is lossless by definition (native ones, and the lossless encapsulated ones).
LOSSLESS_SYNTAXES: frozenset[str] = frozenset({
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 SV1)
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Image Compression (Lossless Only)
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 Multi-component (Lossless Only)
    "1.2.840.10008.1.2.4.201",  # High-Throughput JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.202",  # High-Throughput JPEG 2000 with RPCL Options (Lossless Only)
    "1.2.840.10008.1.2.5",  # RLE Lossless
})

#: Lossy Image Compression Method (0028,2114) defined terms (PS3.3 C.7.6.1.1.5.1) of the syntaxes that are
#: lossy by definition.
_ALWAYS_LOSSY: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG Extended (Process 2 and 4)
    "1.2.840.10008.1.2.4.100": "ISO_13818_2",  # MPEG2 Main Profile / Main Level
    "1.2.840.10008.1.2.4.100.1": "ISO_13818_2",
    "1.2.840.10008.1.2.4.101": "ISO_13818_2",  # MPEG2 Main Profile / High Level
    "1.2.840.10008.1.2.4.101.1": "ISO_13818_2",
    **{f"1.2.840.10008.1.2.4.{n}{f}": "ISO_14496_10" for n in range(102, 107) for f in ("", ".1")},  # H.264
    "1.2.840.10008.1.2.4.107": "ISO_23008_2",  # HEVC/H.265 Main Profile
    "1.2.840.10008.1.2.4.108": "ISO_23008_2",  # HEVC/H.265 Main 10 Profile
}
#: Syntaxes that may hold lossy or lossless codestreams, and the method when the codestream is lossy.
_EITHER: dict[str, str] = {
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",  # JPEG-LS Lossy (Near-Lossless)
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",  # JPEG 2000 Image Compression
    "1.2.840.10008.1.2.4.93": "ISO_15444_1",  # JPEG 2000 Part 2 Multi-component
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",  # High-Throughput JPEG 2000
}
_JPEG_LS = "1.2.840.10008.1.2.4.81"
_EOT_TAGS = (0x7FE00001, 0x7FE00002)  # Extended Offset Table (Lengths): only for encapsulated Pixel Data


@dataclass(frozen=True)
class Source:
    """How an instance's Pixel Data arrived, read before it is decoded (:func:`source_of`).

    ``lossy``: the input had been lossy compressed (PS3.3 C.7.6.1.1.5); ``method``: the Lossy Image Compression
    Method of its own syntax when that step was lossy (None otherwise); ``ratio``: that step's approximate
    compression ratio (uncompressed / compressed bytes), when it could be computed.
    """

    transfer_syntax: UID
    lossy: bool
    method: str | None = None
    ratio: float | None = None

    @property
    def compressed(self) -> bool:
        """Encapsulated Pixel Data (PS3.5 A.4), as opposed to native."""
        return bool(self.transfer_syntax.is_compressed)


@dataclass(frozen=True)
class Stored:
    """What :func:`store_pixels` wrote: the transfer syntax, and why each better option was not used."""

    transfer_syntax: UID
    fallbacks: tuple[str, ...] = ()


def syntax_of(ds: Dataset) -> UID:
    """The dataset's Transfer Syntax UID (0002,0010); Explicit VR Little Endian when it has none."""
    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(value)) if value else ExplicitVRLittleEndian


def is_lossless_syntax(uid: str) -> bool:
    """True for a syntax whose pixel data is lossless by definition (native, or a lossless-only encoding)."""
    return str(uid) in LOSSLESS_SYNTAXES


def _first_frame(ds: Dataset) -> bytes | None:
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        return next(generate_frames(ds.PixelData, number_of_frames=frames))
    except (StopIteration, ValueError, TypeError, KeyError, AttributeError):
        return None


def _jpeg_ls_near(stream: bytes) -> int | None:
    """NEAR of the first scan (SOS marker segment, ISO 14495-1 C.2.3); None when not found."""
    i = 2 if stream[:2] == b"\xff\xd8" else -1
    while 0 <= i < len(stream) - 4:
        if stream[i] != 0xFF:
            return None
        marker = stream[i + 1]
        length = int.from_bytes(stream[i + 2:i + 4], "big")
        if marker == 0xDA:  # SOS: Ls, Ns, Ns x (Ci, Tmi), NEAR, ILV, Al/Ah
            ns = stream[i + 4] if i + 4 < len(stream) else 0
            at = i + 5 + 2 * ns
            return stream[at] if at < len(stream) else None
        i += 2 + length
    return None


def _j2k_irreversible(stream: bytes) -> bool | None:
    """True when the COD segment names the irreversible 9-7 wavelet (ISO 15444-1 A.6.1), False for the
    reversible 5-3 one; None when no COD segment is found (a JP2 file box is skipped to its codestream)."""
    at = stream.find(b"\xff\x4f\xff\x51")  # SOC then SIZ
    if at < 0:
        return None
    cod = stream.find(b"\xff\x52", at)
    # COD: marker(2) Lcod(2) Scod(1) SGcod(4: progression, layers(2), MCT) SPcod: levels, cbw, cbh, style, wavelet
    index = cod + 2 + 2 + 1 + 4 + 4
    if cod < 0 or index >= len(stream):
        return None
    return stream[index] == 0


def _stream_lossy(ds: Dataset, uid: UID) -> bool:
    """Whether the codestream of a syntax that may be lossy or lossless is lossy (unreadable: lossy)."""
    stream = _first_frame(ds)
    if stream is None:
        return True
    if uid == _JPEG_LS:
        near = _jpeg_ls_near(stream)
        return near is None or near > 0
    irreversible = _j2k_irreversible(stream)
    return irreversible is None or irreversible


def _ratio(ds: Dataset) -> float | None:
    """Uncompressed size (Rows x Columns x Samples x Frames x Bits Allocated / 8) over the encapsulated bytes."""
    try:
        size = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
                * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.BitsAllocated) / 8)
        stored = len(ds.PixelData)
    except (AttributeError, TypeError, ValueError, KeyError):
        return None
    return size / stored if stored and size else None


def _values(ds: Dataset, keyword: str) -> list[str]:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def source_of(ds: Dataset) -> Source:
    """Read how ``ds``'s Pixel Data arrived; call it before the pixels are decoded (PS3.3 C.7.6.1.1.5)."""
    uid = syntax_of(ds)
    marked = str(ds.get("LossyImageCompression", "")).strip() == "01"
    method: str | None = None
    if str(uid) in _ALWAYS_LOSSY:
        method = _ALWAYS_LOSSY[str(uid)]
    elif str(uid) in _EITHER and "PixelData" in ds and _stream_lossy(ds, uid):
        method = _EITHER[str(uid)]
    ratio = _ratio(ds) if method is not None else None
    return Source(transfer_syntax=uid, lossy=marked or method is not None, method=method, ratio=ratio)


def mark_lossy(ds: Dataset, source: Source) -> None:
    """Record a lossy input in ``ds`` (PS3.3 C.7.6.1.1.5): Lossy Image Compression ``01``, and the input's own
    lossy step in Method and Ratio when the source did not record it. Nothing changes for a lossless input."""
    if not source.lossy:
        return
    ds.LossyImageCompression = "01"
    if source.method is None:
        return
    methods, ratios = _values(ds, "LossyImageCompressionMethod"), _values(ds, "LossyImageCompressionRatio")
    if methods and methods[-1] == source.method:
        return  # the source recorded this step
    aligned = len(ratios) == len(methods)
    methods.append(source.method)
    ds.LossyImageCompressionMethod = methods if len(methods) > 1 else methods[0]
    if aligned and source.ratio is not None:
        ratios.append(f"{source.ratio:.4g}")
        ds.LossyImageCompressionRatio = ratios if len(ratios) > 1 else ratios[0]


def chain(preferred: PixelEncoding) -> tuple[PixelEncoding, ...]:
    """The encodings tried, in order: ``preferred``, then the other lossless ones, then native."""
    return (preferred, *(e for e in _ORDER if e != preferred)) if preferred != "native" else ("native",)


def precheck(ds: Dataset, encoding: PixelEncoding) -> str | None:
    """Why ``encoding`` is not tried for ``ds`` before encoding at all; None when it may be."""
    if encoding == "native":
        return None
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return "float pixel data is stored uncompressed"
    if bits > 16:
        return f"BitsAllocated {bits}: 32-bit pixel data is stored uncompressed"
    return None


def _intended(ds: Dataset) -> np.ndarray:
    return np.asarray(pixel_array(ds, raw=True))


def store_pixels(ds: Dataset, source: Source, *, encoding: PixelEncoding, what: str = "") -> Stored:
    """Write the changed native Pixel Data of ``ds`` with a lossless syntax (module docstring), in place.

    ``ds`` holds the pixels as they are to be released, natively (after ``decompress`` and the change);
    ``source`` is :func:`source_of` of the input. A native input is left native; a compressed one is encoded
    with the first of :func:`chain` that accepts it and decodes back to exactly the same array. ``what`` names
    the instance in log lines (a pseudonymous path; never an original UID).
    """
    mark_lossy(ds, source)
    for tag in _EOT_TAGS:  # decompress leaves a compressed input's offset tables behind
        if tag in ds:
            del ds[tag]
    current = syntax_of(ds)
    if current.is_compressed:
        raise ValueError(f"store_pixels needs native Pixel Data, the dataset is {current.name}")
    if not source.compressed:
        return Stored(transfer_syntax=current)
    fallbacks: list[str] = []
    order = chain(encoding)
    intended: np.ndarray | None = None
    for n, option in enumerate(order):
        uid = ENCODINGS[option]
        if option == "native":
            if current != ExplicitVRLittleEndian:
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # decompress writes EVRLE already
            break
        reason = precheck(ds, option)
        if reason is None:
            if intended is None:
                intended = _intended(ds)
            reason = _try(ds, uid, intended)
        if reason is None:
            break
        fallbacks.append(f"{uid.name}: {reason}")
        log.warning("codec: %s not written as %s (%s); trying %s", what or "an instance", uid.name, reason,
                    ENCODINGS[order[n + 1]].name)
    stored = syntax_of(ds)
    log.debug("codec: %s written as %s", what or "an instance", stored.name)
    return Stored(transfer_syntax=stored, fallbacks=tuple(fallbacks))


def _try(ds: Dataset, uid: UID, intended: np.ndarray) -> str | None:
    """Encode ``ds`` with ``uid`` in place; on failure or a round trip that differs, restore it and say why."""
    elem = ds["PixelData"]
    saved = _Saved(elem.value, elem.VR, elem.is_undefined_length, UID(str(ds.file_meta.TransferSyntaxUID)),
                   ds.get("PlanarConfiguration"), str(ds.PhotometricInterpretation))
    try:
        compress(ds, uid, generate_instance_uid=False)
        back = _intended(ds)
    except Exception as e:  # noqa: BLE001 - pydicom and its plugins raise many types; the reason is logged
        _restore(ds, saved)
        return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    if back.shape != intended.shape or back.dtype != intended.dtype or not np.array_equal(back, intended):
        _restore(ds, saved)
        return "the encoded pixels did not decode to the same array"
    return None


@dataclass(frozen=True)
class _Saved:
    """What :func:`_try` restores when an encoding is not used."""

    value: bytes
    vr: str
    undefined_length: bool
    syntax: UID
    planar: int | None
    photometric: str


def _restore(ds: Dataset, saved: _Saved) -> None:
    elem = ds["PixelData"]
    elem.value, elem.VR, elem.is_undefined_length = saved.value, saved.vr, saved.undefined_length
    ds.file_meta.TransferSyntaxUID = saved.syntax
    if saved.planar is not None:
        ds.PlanarConfiguration = saved.planar
    ds.PhotometricInterpretation = saved.photometric
    ds._pixel_array = None
    ds._pixel_id = {}


def decompress(ds: Dataset) -> None:
    """Decode compressed Pixel Data in place to native Explicit VR Little Endian, YCbCr as RGB (pydicom's
    ``Dataset.decompress``), keeping the SOP Instance UID and dropping the offset tables of the input."""
    ds.decompress(as_rgb=True, generate_instance_uid=False)
    for tag in _EOT_TAGS:
        if tag in ds:
            del ds[tag]


__all__ = [
    "ENCODINGS",
    "LOSSLESS_SYNTAXES",
    "Source",
    "Stored",
    "chain",
    "decompress",
    "is_lossless_syntax",
    "mark_lossy",
    "precheck",
    "source_of",
    "store_pixels",
    "syntax_of",
]
