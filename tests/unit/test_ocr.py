"""guards.deid.ocr (tesseract TSV words) and guards.deid.pixel_phi (header PHI tokens and matching)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset

from guards.deid import ocr
from guards.deid.ocr import BORDER, OcrError, ocr_words, parse_tsv
from guards.deid.pixel_phi import date_tokens, header_tokens, looks_like_phi, matches_header, normalize
from guards.deid.pixel_synth import _font

_TSV = (
    "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n"
    "1\t1\t0\t0\t0\t0\t0\t0\t200\t100\t-1\t\n"
    "4\t1\t1\t1\t1\t0\t20\t20\t80\t12\t-1\t\n"
    "5\t1\t1\t1\t1\t1\t20\t20\t40\t12\t91.5\tDOE,\n"
    "5\t1\t1\t1\t1\t2\t66\t20\t34\t12\t12.0\tJANE\n"
    "5\t1\t1\t1\t1\t3\t70\t20\t4\t12\t95.0\t \n"
)


def test_parse_tsv_keeps_word_rows_with_text_and_shifts_boxes() -> None:
    words = parse_tsv(_TSV, shift=16)
    assert [(w.text, w.confidence) for w in words] == [("DOE,", 91.5), ("JANE", 12.0)]
    assert (words[0].x0, words[0].y0, words[0].x1, words[0].y1) == (4, 4, 44, 16)
    assert words[0].line == words[1].line == (1, 1, 1)


def test_parse_tsv_scale_divides_boxes() -> None:
    words = parse_tsv(_TSV, scale=2.0)
    assert (words[1].x0, words[1].y0, words[1].x1, words[1].y1) == (33, 10, 50, 16)


def _drawn(text: str, *, at: tuple[int, int], size: int = 18) -> np.ndarray:
    canvas = Image.new("L", (320, 120), 0)
    ImageDraw.Draw(canvas).text(at, text, fill=255, font=_font(size))
    return np.asarray(canvas, dtype=np.uint8)


def test_ocr_words_reads_drawn_text_with_boxes_where_it_was_drawn() -> None:
    image = _drawn("ZEBRA 4471902", at=(30, 50))
    words = ocr_words(image)
    texts = [normalize(w.text) for w in words]
    assert "ZEBRA" in texts and "4471902" in texts
    zebra = words[texts.index("ZEBRA")]
    assert 24 <= zebra.x0 <= 36 and 48 <= zebra.y0 <= 62 and zebra.x1 <= 320 and zebra.y1 <= 120


def test_ocr_words_reads_text_touching_the_top_edge() -> None:
    """The BORDER added before OCR lets tesseract read a line drawn in the first rows (as on ALOKA overlays)."""
    assert BORDER > 0
    words = ocr_words(_drawn("WESTWAY 24-MAY-02", at=(4, -2), size=14))
    assert any(normalize(w.text) == "WESTWAY" for w in words)
    assert all(w.y0 >= 0 for w in words)


def test_ocr_words_upscaled_maps_boxes_back_to_the_frame() -> None:
    image = _drawn("ZEBRA 4471902", at=(30, 50))
    words = ocr_words(image, scale=2)
    zebra = [w for w in words if normalize(w.text) == "ZEBRA"]
    assert zebra and 24 <= zebra[0].x0 <= 36 and 48 <= zebra[0].y0 <= 62 and zebra[0].x1 <= 320
    with pytest.raises(OcrError, match="scale must be 1 or more"):
        ocr_words(image, scale=0)


def test_ocr_words_on_a_blank_frame_finds_nothing() -> None:
    assert ocr_words(np.zeros((64, 96), dtype=np.uint8)) == []


def test_ocr_words_rejects_a_non_uint8_image() -> None:
    with pytest.raises(OcrError, match="2-D uint8"):
        ocr_words(np.zeros((8, 8), dtype=np.uint16))  # type: ignore[arg-type]


def test_missing_tesseract_is_an_ocr_error_saying_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ocr.shutil, "which", lambda _name: None)
    with pytest.raises(OcrError, match="apt-get install tesseract-ocr"):
        ocr_words(np.zeros((8, 8), dtype=np.uint8))


@pytest.mark.parametrize(
    ("printed", "expected"),
    [
        ("03/02/2017", True),  # US month/day/year
        ("2017-03-02", True),  # ISO
        ("02.03.2017", True),  # European day.month.year
        ("3/2/2017", True),  # no zero padding
        ("02-MAR-17", True),  # day-month name-2-digit year
        ("04/02/2017", False),  # another date
    ],
)
def test_date_tokens_cover_printed_formats(printed: str, expected: bool) -> None:
    assert (normalize(printed) in date_tokens("20170302")) is expected


def test_date_tokens_of_an_invalid_value_are_empty() -> None:
    assert date_tokens("2017") == set() and date_tokens("20171340") == set()


def _header() -> Dataset:
    ds = Dataset()
    ds.PatientName = "ZZZDOWNTIME^MARY^^"
    ds.PatientID = "40404040404"
    ds.OtherPatientIDs = ["A-7781", "B99"]
    ds.AccessionNumber = "120907058"
    ds.StudyDate = "20020524"
    ds.InstitutionName = "WESTWAY MEDICAL"
    return ds


def test_header_tokens_hold_name_parts_ids_dates_and_institution() -> None:
    tokens = header_tokens(_header())
    assert {"ZZZDOWNTIME", "MARY", "40404040404", "A7781", "7781", "120907058", "WESTWAY", "MEDICAL"} <= tokens
    assert "24MAY02" in tokens and "05242002" in tokens
    assert "B99" in tokens and all(len(t) >= 3 for t in tokens)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("ZZZDOWNTIME,MARY", True),  # name parts joined by OCR
        ("MARY", True),  # a name part alone
        ("WESTWA", True),  # truncated by the overlay ("WESTWA...")
        ("24-MAY—O2", True),  # letter O read for the digit 0
        ("120907058", True),  # accession number
        ("0907058", True),  # a piece of it, as when OCR splits "ACC 120907058" oddly
        ("MR", False),  # too short to mean anything
        ("ULTRASOUND", False),  # not a header value
    ],
)
def test_matches_header(word: str, expected: bool) -> None:
    assert matches_header(word, header_tokens(_header())) is expected


@pytest.mark.parametrize(
    ("word", "expected"),
    [("12/31/1999", True), ("31-DEC-99", True), ("00079241539", True), ("20Hz", False), ("R15", False)],
)
def test_looks_like_phi(word: str, expected: bool) -> None:
    assert looks_like_phi(word) is expected
