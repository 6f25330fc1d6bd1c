"""guards.codec: compressed data in and out (issue 17).

Unchanged pixels keep their Pixel Data bytes and transfer syntax; changed pixels of compressed input are written
losslessly (JPEG-LS by default, JPEG 2000 Lossless, RLE or native by ``pixels.encode``) and decode to exactly
the array meant to be written; Lossy Image Compression stays truthful (PS3.3 C.7.6.1.1.5); the manifest records
each output's syntax; a protected release holds no lossy syntax. Inputs: JPEG-LS (lossless and near-lossless),
JPEG 2000 (lossless and lossy), JPEG baseline, RLE and deflated, from pydicom's test files and from generated
burned-in samples compressed here (never a download).
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import compress, pixel_array
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from guards import codec
from guards.atomic import part10_bytes
from guards.codec import ENCODINGS, chain, is_lossless_syntax, mark_lossy, source_of, store_pixels
from guards.deid import deidentify_tree
from guards.deid.pixel_synth import burned_in_sample
from guards.deid.pixels import clean_pixel_data
from guards.deid.writer import encode_part10
from guards.keys import PseudonymKey
from guards.manifest import empty_row, to_table, write_table
from guards.policy import PixelEncoding, PixelsSection, ReleasePolicy, policy_from_dict
from guards.protect import protect_tree
from guards.testdata import pydicom_data_dir, pydicom_test_dir

T = pydicom_test_dir()


def _read(path: Path | bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(path) if isinstance(path, bytes) else path)


def _raw(ds: Dataset) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(pixel_array(ds, raw=True))


def _syntax(ds: Dataset) -> UID:
    return UID(str(ds.file_meta.TransferSyntaxUID))


# --- reading the input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "lossy", "method"), [
    ("MR_small_jpeg_ls_lossless.dcm", False, None),  # JPEG-LS Lossless
    ("JPEGLSNearLossless_08.dcm", True, "ISO_14495_1"),  # JPEG-LS NEAR > 0 in the scan header, no LIC in the file
    ("MR_small_jp2klossless.dcm", False, None),  # JPEG 2000 Lossless
    ("JPEG2000.dcm", True, "ISO_15444_1"),  # JPEG 2000 with the irreversible 9-7 wavelet
    ("693_J2KI.dcm", True, None),  # JPEG 2000, reversible wavelet, LIC 01 by the source: lossy, method unproven
    ("SC_rgb_jpeg_dcmtk.dcm", True, "ISO_10918_1"),  # JPEG baseline: lossy by definition
    ("MR_small_RLE.dcm", False, None),
    ("image_dfl.dcm", False, None),  # Deflated Explicit VR Little Endian
    ("CT_small.dcm", False, None),
])
def test_source_says_whether_the_input_was_lossy(name: str, lossy: bool, method: str | None) -> None:
    source = source_of(_read(T / name))
    assert (source.lossy, source.method) == (lossy, method)
    assert (source.ratio is not None) == (method is not None)


@pytest.mark.parametrize(("lossless", "lossy", "options", "method"), [
    (JPEG2000Lossless, JPEG2000, {"j2k_cr": [20]}, "ISO_15444_1"),  # COD wavelet (ISO 15444-1 A.6.1)
    (JPEGLSLossless, JPEGLSNearLossless, {"jls_error": 3}, "ISO_14495_1"),  # SOS NEAR (ISO 14495-1 C.2.3)
])
def test_the_codestream_decides_for_syntaxes_that_may_be_either(
    lossless: UID, lossy: UID, options: dict[str, object], method: str
) -> None:
    """'JPEG 2000' and 'JPEG-LS Near-Lossless' hold lossless or lossy codestreams; without LIC, the stream says."""
    ds = _read(T / "MR_small.dcm")
    compress(ds, lossless, generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = lossy  # the same lossless codestream, labelled 'may be lossy'
    assert not source_of(ds).lossy
    near = _read(T / "MR_small.dcm")
    compress(near, lossy, generate_instance_uid=False, **options)  # type: ignore[arg-type]
    assert source_of(near).lossy and source_of(near).method == method


def test_mark_lossy_adds_method_and_ratio_only_when_the_source_did_not() -> None:
    ds = Dataset()
    mark_lossy(ds, codec.Source(JPEGBaseline8Bit, lossy=True, method="ISO_10918_1", ratio=12.345))
    assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "ISO_10918_1"
    assert ds.LossyImageCompressionRatio == "12.35"
    mark_lossy(ds, codec.Source(JPEGBaseline8Bit, lossy=True, method="ISO_10918_1", ratio=3.0))
    assert ds.LossyImageCompressionMethod == "ISO_10918_1" and ds.LossyImageCompressionRatio == "12.35"
    mark_lossy(ds, codec.Source(JPEG2000, lossy=True, method="ISO_15444_1", ratio=20.0))  # a second lossy step
    assert list(ds.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_15444_1"]
    assert [str(v) for v in ds.LossyImageCompressionRatio] == ["12.35", "20"]
    clean = Dataset()
    clean.LossyImageCompression = "00"
    mark_lossy(clean, codec.Source(JPEGLSLossless, lossy=False))
    assert clean.LossyImageCompression == "00" and "LossyImageCompressionMethod" not in clean


def test_chain_tries_the_chosen_encoding_then_the_other_lossless_ones_then_native() -> None:
    assert chain("jpeg-ls") == ("jpeg-ls", "jpeg2000", "rle", "native")
    assert chain("jpeg2000") == ("jpeg2000", "jpeg-ls", "rle", "native")
    assert chain("rle") == ("rle", "jpeg-ls", "jpeg2000", "native")
    assert chain("native") == ("native",)
    assert all(is_lossless_syntax(uid) for uid in ENCODINGS.values())
    assert not any(is_lossless_syntax(uid) for uid in (JPEGBaseline8Bit, JPEG2000, JPEGLSNearLossless))


# --- untouched pixels -------------------------------------------------------------------------------------------

COMPRESSED = ("MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm", "MR_small_jp2klossless.dcm",
              "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "examples_ybr_color.dcm", "MR_small_RLE.dcm", "image_dfl.dcm")


@pytest.mark.parametrize("name", COMPRESSED)
@pytest.mark.parametrize("writer", [encode_part10, part10_bytes], ids=["deid-writer", "pydicom"])
def test_header_only_edit_keeps_the_encapsulated_fragments(name: str, writer) -> None:  # type: ignore[no-untyped-def]
    """What remediation and the deid writer do to a file whose pixels are not changed."""
    before = _read(T / name)
    ds = _read(T / name)
    ds.PatientName = "Anonymous"
    after = _read(writer(ds))
    assert _syntax(after) == _syntax(before)
    assert after.PixelData == before.PixelData


def _unique_sources(tmp: Path, names: tuple[str, ...]) -> Path:
    """``names`` copied into one source folder, each with its own study and instance UIDs."""
    src = tmp / "src"
    src.mkdir()
    for n, name in enumerate(names):
        ds = _read(T / name)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.3.17.{n + 1}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = f"1.2.3.17.{n + 1}.1", f"1.2.3.17.{n + 1}.2"
        ds.save_as(src / name, enforce_file_format=True)
    (src / "labels.csv").write_text("StudyInstanceUID,label\n")
    return src


def test_deid_tree_keeps_unchanged_pixel_data_bytes_and_syntax(tmp_path: Path, key: PseudonymKey) -> None:
    """Pixel cleaning on (OCR reads every frame) finds nothing to hide: bytes and syntax as they came."""
    names = ("MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm", "MR_small_jp2klossless.dcm",
             "JPEG2000.dcm", "CT_small.dcm", "MR_small_RLE.dcm", "image_dfl.dcm")
    src = _unique_sources(tmp_path, names)
    result = deidentify_tree(src, tmp_path / "deid", policy=ReleasePolicy(), key=key)
    rows = [r for r in pq.read_table(result.private_manifest_path).to_pylist() if r["status"] == "published"]
    assert sorted(r["source_path"] for r in rows) == sorted(names)
    for row in rows:
        before, after = _read(src / row["source_path"]), _read(tmp_path / "deid" / row["path"])
        assert after.get("BurnedInAnnotation") is None  # not cleaned
        assert _syntax(after) == _syntax(before) == row["TransferSyntaxUID"]
        assert after.PixelData == before.PixelData  # the element's bytes, fragments and offset table
        assert after.get("LossyImageCompression") == before.get("LossyImageCompression")


# --- changed pixels: unit level ---------------------------------------------------------------------------------

def _changed(name: str) -> tuple[Dataset, codec.Source, np.ndarray]:
    """``name`` decoded as a cleaning step would, with a box filled: the dataset, its source, the array meant."""
    ds = _read(T / name if (T / name).exists() else (pydicom_data_dir() or T) / name)
    source = source_of(ds)
    if _syntax(ds).is_compressed:
        codec.decompress(ds)
    arr = _raw(ds).copy()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    box = (slice(None), slice(2, 9), slice(3, 11)) if frames > 1 else (slice(2, 9), slice(3, 11))
    arr[box] = arr.min()
    ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    return ds, source, arr


@pytest.mark.parametrize("encoding", ["jpeg-ls", "jpeg2000", "rle", "native"])
@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm",
                                  "SC_rgb_jpeg_dcmtk.dcm", "MR_small_RLE.dcm", "SC_rgb_jls_lossy_line.dcm",
                                  "SC_rgb_rle_16bit.dcm"])
def test_changed_pixels_are_written_losslessly_and_decode_exactly(name: str, encoding: PixelEncoding) -> None:
    ds, source, intended = _changed(name)
    uid = ds.SOPInstanceUID
    stored = store_pixels(ds, source, encoding=encoding)
    assert stored.transfer_syntax == ENCODINGS[encoding] and stored.fallbacks == ()
    back = _read(part10_bytes(ds))
    assert _syntax(back) == ENCODINGS[encoding]
    got = _raw(back)
    assert got.dtype == intended.dtype and np.array_equal(got, intended)
    assert back.SOPInstanceUID == uid
    if source.lossy:
        assert back.LossyImageCompression == "01" and back.LossyImageCompressionMethod == source.method
    else:
        assert back.get("LossyImageCompression") in (None, "00")


def test_ybr_jpeg_input_is_written_as_rgb() -> None:
    """YBR_FULL_422 JPEG baseline (US, 30 frames) decoded to RGB is written as RGB, marked lossy with method."""
    ds, source, intended = _changed("examples_ybr_color.dcm")
    assert ds.PhotometricInterpretation == "RGB" and intended.shape == (30, 240, 320, 3)
    store_pixels(ds, source, encoding="jpeg-ls")
    back = _read(part10_bytes(ds))
    assert _syntax(back) == JPEGLSLossless and back.PhotometricInterpretation == "RGB"
    assert back.PlanarConfiguration == 0 and np.array_equal(_raw(back), intended)
    assert back.LossyImageCompression == "01" and back.LossyImageCompressionMethod == "ISO_10918_1"


def test_32_bit_data_is_left_uncompressed_with_the_reason_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="guards.codec")
    ds, source, intended = _changed("rtdose_rle_1frame.dcm")  # RLE, 32 bits allocated
    stored = store_pixels(ds, source, encoding="jpeg-ls", what="rtdose")
    assert stored.transfer_syntax == ExplicitVRLittleEndian and len(stored.fallbacks) == 3
    assert all("BitsAllocated 32" in f for f in stored.fallbacks)
    assert "rtdose not written as JPEG-LS Lossless" in caplog.text and "BitsAllocated 32" in caplog.text
    assert np.array_equal(_raw(_read(part10_bytes(ds))), intended)


def test_what_an_encoder_cannot_take_falls_back_to_the_next_lossless_option(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="guards.codec")
    # 1 bit stored in 8: JPEG-LS takes 2 to 16 bits (PS3.5 Table 8.2.3-1): JPEG 2000 Lossless instead.
    ds = _read(T / "MR_small.dcm")
    arr = (_raw(ds) > 800).astype(np.uint8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 1, 0, 0
    ds.PixelData = arr.tobytes()
    compress(ds, RLELossless, generate_instance_uid=False)
    source = source_of(ds)
    codec.decompress(ds)
    stored = store_pixels(ds, source, encoding="jpeg-ls")
    assert stored.transfer_syntax == JPEG2000Lossless and "JPEG-LS" in stored.fallbacks[0]
    assert np.array_equal(_raw(_read(part10_bytes(ds))), arr)
    # A 45 x 10 frame: openjpeg refuses it, so JPEG 2000 falls back to JPEG-LS.
    ds, source, intended = _changed("JPEGLSNearLossless_08.dcm")
    stored = store_pixels(ds, source, encoding="jpeg2000")
    assert stored.transfer_syntax == JPEGLSLossless and "JPEG 2000" in stored.fallbacks[0]
    assert np.array_equal(_raw(_read(part10_bytes(ds))), intended)
    assert "not written as JPEG 2000 Image Compression (Lossless Only)" in caplog.text


def test_an_encoding_that_does_not_round_trip_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    real = codec.compress

    def corrupting(ds: Dataset, uid: str, **kw: object) -> Dataset:
        arr = _raw(ds).copy()
        if uid == JPEGLSLossless:
            arr.flat[0] ^= 1  # an encoder that is off by one bit
        return real(ds, uid, arr=arr, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(codec, "compress", corrupting)
    ds, source, intended = _changed("MR_small_RLE.dcm")
    stored = store_pixels(ds, source, encoding="jpeg-ls")
    assert stored.transfer_syntax == JPEG2000Lossless
    assert "did not decode to the same array" in stored.fallbacks[0]
    assert np.array_equal(_raw(_read(part10_bytes(ds))), intended)


def test_native_input_stays_native() -> None:
    ds, source, intended = _changed("CT_small.dcm")
    assert store_pixels(ds, source, encoding="jpeg-ls").transfer_syntax == ExplicitVRLittleEndian
    assert ds.PixelData == intended.tobytes()


# --- changed pixels: through guards.deid.tree (burned-in text cleaned) -----------------------------------------

def _jpeg_baseline(ds: Dataset) -> None:
    """Encode ``ds``'s 8-bit pixels as JPEG baseline with Pillow (RGB as YCbCr 4:2:2), no LIC: a PACS's JPEG."""
    arr = _raw(ds)
    frames = arr if int(ds.get("NumberOfFrames", 1)) > 1 else arr[None]
    encoded = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, "JPEG", quality=90, subsampling=1)
        encoded.append(buffer.getvalue())
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    if ds.SamplesPerPixel == 3:
        ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit


INPUTS: dict[str, tuple[str, UID]] = {
    "jpeg-ls.dcm": ("mono2_8", JPEGLSLossless),
    "jpeg-ls-near.dcm": ("mono2_8", JPEGLSNearLossless),
    "j2k-lossless.dcm": ("signed_16", JPEG2000Lossless),
    "j2k-lossy.dcm": ("mono2_8", JPEG2000),
    "jpeg-baseline.dcm": ("mono2_8", JPEGBaseline8Bit),
    "jpeg-baseline-rgb.dcm": ("rgb", JPEGBaseline8Bit),
    "rle.dcm": ("mono1_16", RLELossless),
    "deflated.dcm": ("mono2_8", DeflatedExplicitVRLittleEndian),
}


def _compressed_sample(variant: str, syntax: UID, seed: int) -> Dataset:
    ds = burned_in_sample(np.random.default_rng(seed), variant=variant).dataset
    if syntax == JPEGBaseline8Bit:
        _jpeg_baseline(ds)
    elif syntax == DeflatedExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
    else:
        options = {"jls_error": 2} if syntax == JPEGLSNearLossless else {"j2k_cr": [15]} if syntax == JPEG2000 else {}
        compress(ds, syntax, generate_instance_uid=False, **options)  # type: ignore[arg-type]
    return _read(part10_bytes(ds))


@pytest.fixture(scope="module")
def burned_in(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("burned-in")
    for seed, (name, (variant, syntax)) in enumerate(INPUTS.items()):
        _compressed_sample(variant, syntax, seed + 300).save_as(src / name, enforce_file_format=True)
    (src / "labels.csv").write_text("StudyInstanceUID,label\n")
    return src


@pytest.fixture(scope="module")
def cleaned_tree(burned_in: Path, tmp_path_factory: pytest.TempPathFactory,
                 key: PseudonymKey) -> Iterator[tuple[Path, list[dict[str, object]]]]:
    dst = tmp_path_factory.mktemp("cleaned") / "deid"
    result = deidentify_tree(burned_in, dst, policy=ReleasePolicy(), key=key)
    yield dst, pq.read_table(result.private_manifest_path).to_pylist()


def test_deid_tree_writes_cleaned_compressed_input_losslessly(
    burned_in: Path, cleaned_tree: tuple[Path, list[dict[str, object]]]
) -> None:
    """Cleaned through guards.deid.tree: JPEG-LS Lossless out (deflated input stays deflated), exactly the array
    that cleaning with ``encode = "native"`` leaves, lossy inputs still marked lossy, the syntax in the manifest."""
    dst, rows = cleaned_tree
    published = {str(r["source_path"]): r for r in rows if r["status"] == "published"}
    assert set(published) == set(INPUTS)
    for name, (_variant, syntax) in INPUTS.items():
        row = published[name]
        out = _read(dst / str(row["path"]))
        assert out.BurnedInAnnotation == "NO", name  # cleaned
        expected = DeflatedExplicitVRLittleEndian if syntax == DeflatedExplicitVRLittleEndian else JPEGLSLossless
        assert _syntax(out) == expected == row["TransferSyntaxUID"], name
        meant = _read(burned_in / name)
        outcome = clean_pixel_data(meant, policy=PixelsSection(encode="native"))
        assert outcome.action == "cleaned"
        assert np.array_equal(_raw(out), _raw(meant)), name  # bit for bit what cleaning meant to write
        lossy = syntax in (JPEGLSNearLossless, JPEG2000, JPEGBaseline8Bit)
        assert (out.get("LossyImageCompression") == "01") == lossy, name
        if lossy:
            assert out.LossyImageCompressionMethod == {JPEGLSNearLossless: "ISO_14495_1", JPEG2000: "ISO_15444_1",
                                                       JPEGBaseline8Bit: "ISO_10918_1"}[syntax]
            assert float(out.LossyImageCompressionRatio) > 1
        if name == "jpeg-baseline-rgb.dcm":
            assert out.PhotometricInterpretation == "RGB"


def test_cleaned_compressed_input_keeps_its_pseudonymous_instance_uid(
    burned_in: Path, cleaned_tree: tuple[Path, list[dict[str, object]]], key: PseudonymKey
) -> None:
    """pydicom's decompress makes a new random SOP Instance UID by default; cleaning must not (the pseudonym of
    the original UID is what labels, references and the next night's run expect)."""
    from guards.deid.pseudonyms import pseudo_uid

    dst, rows = cleaned_tree
    for row in rows:
        if row["status"] == "published":
            original = _read(burned_in / str(row["source_path"])).SOPInstanceUID
            assert _read(dst / str(row["path"])).SOPInstanceUID == pseudo_uid(key, original)


@pytest.mark.parametrize("encoding", ["jpeg2000", "rle"])
def test_cleaning_by_policy_encoding(burned_in: Path, encoding: PixelEncoding) -> None:
    ds = _read(burned_in / "jpeg-baseline.dcm")
    meant = _read(burned_in / "jpeg-baseline.dcm")
    clean_pixel_data(meant, policy=PixelsSection(encode="native"))
    assert clean_pixel_data(ds, policy=PixelsSection(encode=encoding)).action == "cleaned"
    back = _read(part10_bytes(ds))
    assert _syntax(back) == ENCODINGS[encoding] and np.array_equal(_raw(back), _raw(meant))


# --- changed pixels: through the protect step ------------------------------------------------------------------

PROTECT_INPUTS = {
    "a/jpeg-ls.dcm": "MR_small_jpeg_ls_lossless.dcm",
    "a/j2k-lossless.dcm": "MR_small_jp2klossless.dcm",
    "a/j2k-lossy.dcm": "JPEG2000.dcm",
    "b/jpeg-baseline.dcm": "SC_rgb_jpeg_dcmtk.dcm",
    "b/jpeg-ybr-422.dcm": "examples_ybr_color.dcm",
    "c/rle.dcm": "MR_small_RLE.dcm",
    "c/deflated.dcm": "image_dfl.dcm",
    "c/native.dcm": "CT_small.dcm",
}
LOSSY_INPUTS = {"a/j2k-lossy.dcm", "b/jpeg-baseline.dcm", "b/jpeg-ybr-422.dcm"}


def _protect_policy(encoding: PixelEncoding, epsilon: float = 8 / 255) -> ReleasePolicy:
    return policy_from_dict({
        "release": {"seed": 17},
        "pixels": {"encode": encoding},
        "protect": {"image_size": 16, "max_rounds": 1, "steps": 2, "train_steps": 2, "warmup_epochs": 1,
                    "warmup_min_steps": 0, "batch_size": 8, "surrogate_width": 8, "rho": 0.1, "epsilon": epsilon,
                    "reuse": False},
    })


@pytest.fixture(scope="module")
def deid_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deid-tree")
    rows = []
    for n, (rel, name) in enumerate(PROTECT_INPUTS.items()):
        ds = _read(T / name)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"2.25.1717{n}"
        ds.StudyInstanceUID = f"2.25.1718{n}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(root / rel, enforce_file_format=True)
        row = empty_row(rel)
        row.update(status="published", reason="", size=(root / rel).stat().st_size,
                   TransferSyntaxUID=str(ds.file_meta.TransferSyntaxUID))
        rows.append(row)
    write_table(to_table(rows), root / "manifest.parquet")
    return root


@pytest.fixture(scope="module")
def protected(deid_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same tree protected with each encoding (same seed, so the same noise)."""
    out = {}
    for encoding in ("native", "jpeg-ls", "jpeg2000", "rle"):
        dst = tmp_path_factory.mktemp(f"protect-{encoding}")
        protect_tree(deid_tree, dst, policy=_protect_policy(encoding), labels=None)  # type: ignore[arg-type]
        out[encoding] = dst
    return out


@pytest.mark.parametrize("encoding", ["jpeg-ls", "jpeg2000", "rle"])
def test_protected_pixels_are_lossless_and_decode_to_the_noised_array(
    deid_tree: Path, protected: dict[str, Path], encoding: PixelEncoding
) -> None:
    """Each compressed input, noised, is written with ``encoding`` and decodes to exactly what the native run
    wrote; native and deflated input is written natively; no lossy syntax anywhere; the manifest says each."""
    dst, native = protected[encoding], protected["native"]
    rows = {r["path"]: r for r in pq.read_table(dst / "manifest.parquet").to_pylist()}
    assert {r["status"] for r in rows.values()} == {"published"}
    for rel, name in PROTECT_INPUTS.items():
        out, meant, before = _read(dst / rel), _read(native / rel), _read(deid_tree / rel)
        compressed = _syntax(before).is_compressed
        assert _syntax(out) == (ENCODINGS[encoding] if compressed else ExplicitVRLittleEndian), rel
        assert _syntax(meant) == ExplicitVRLittleEndian, rel
        assert rows[rel]["TransferSyntaxUID"] == _syntax(out), rel
        assert is_lossless_syntax(_syntax(out)), rel  # no lossy syntax in a protected release
        assert np.array_equal(_raw(out), _raw(meant)), f"{rel} ({name})"
        assert out.SOPInstanceUID == before.SOPInstanceUID
        assert (out.get("LossyImageCompression") == "01") == (rel in LOSSY_INPUTS), rel
        if rel == "b/jpeg-ybr-422.dcm":
            assert before.PhotometricInterpretation == "YBR_FULL_422" and out.PhotometricInterpretation == "RGB"


def test_protect_keeps_pixel_data_the_noise_left_unchanged(deid_tree: Path, tmp_path: Path) -> None:
    """A budget below one stored unit changes no pixel: lossless inputs keep their Pixel Data bytes and syntax;
    lossy ones are still written losslessly (no lossy syntax in a protected release), decoding to the input."""
    protect_tree(deid_tree, tmp_path, policy=_protect_policy("jpeg-ls", epsilon=1e-7), labels=None)
    rows = {r["path"]: r for r in pq.read_table(tmp_path / "manifest.parquet").to_pylist()}
    for rel in PROTECT_INPUTS:
        before, out = _read(deid_tree / rel), _read(tmp_path / rel)
        assert rows[rel]["TransferSyntaxUID"] == _syntax(out)
        assert "SALM" in str(out.DeidentificationMethod)  # the header still records the protection step
        if rel in LOSSY_INPUTS:
            assert _syntax(out) == JPEGLSLossless and out.LossyImageCompression == "01"
            codec.decompress(before)
            assert np.array_equal(_raw(out), _raw(before)), rel
        else:
            assert _syntax(out) == _syntax(before) and out.PixelData == before.PixelData, rel


def test_pydicom_data_multiframe_inputs_round_trip() -> None:
    """Multi-frame JPEG-LS and JPEG 2000 lossless MR (pydicom-data), re-encoded after a change."""
    data = pydicom_data_dir()
    if data is None:
        pytest.skip("pydicom-data is not installed")
    for name in ("emri_small_jpeg_ls_lossless.dcm", "emri_small_jpeg_2k_lossless.dcm"):
        ds, source, intended = _changed(name)
        assert intended.shape[0] == 10
        assert store_pixels(ds, source, encoding="jpeg-ls").transfer_syntax == JPEGLSLossless
        assert np.array_equal(_raw(_read(part10_bytes(ds))), intended)


def test_the_release_manifest_keeps_each_output_syntax(protected: dict[str, Path], tmp_path: Path) -> None:
    """publish's release manifest (published rows, source_path dropped) still says each file's syntax."""
    from guards.publish import release_manifest

    release_manifest(protected["jpeg-ls"] / "manifest.parquet", tmp_path / "manifest.parquet")
    rows = pq.read_table(tmp_path / "manifest.parquet").to_pylist()
    assert {r["path"] for r in rows} == set(PROTECT_INPUTS)
    for row in rows:
        syntax = _syntax(_read(protected["jpeg-ls"] / row["path"]))
        assert row["TransferSyntaxUID"] == syntax and is_lossless_syntax(syntax)
    assert {r["TransferSyntaxUID"] for r in rows} == {JPEGLSLossless, ExplicitVRLittleEndian}
