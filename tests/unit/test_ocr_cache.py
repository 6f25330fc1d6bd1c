"""guards.deid.ocr_cache: a Clean Pixel Data decision recorded once is replayed, without OCR, to the same bytes;
anything that could change the decision changes the key; failures are never recorded."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

import guards.deid.pixels as pixels
from guards.deid.ocr import OcrError
from guards.deid.ocr_cache import OcrCache
from guards.deid.pixel_synth import burned_in_sample
from guards.deid.pixels import clean_pixel_data
from guards.policy import PixelsSection

POLICY = PixelsSection()


@pytest.fixture(scope="module")
def sample() -> Dataset:
    return burned_in_sample(np.random.default_rng(7), variant="multiframe").dataset


def _no_ocr(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("OCR ran although the decision was recorded")

    monkeypatch.setattr(pixels, "ocr_words", fail)


def _records(root: Path) -> list[Path]:
    return sorted(root.rglob("*.json"))


def test_recorded_decision_is_replayed_without_ocr_to_the_same_bytes(
    sample: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = OcrCache(tmp_path)
    first = copy.deepcopy(sample)
    read = clean_pixel_data(first, policy=POLICY, cache=cache)
    assert read.action == "cleaned" and not read.cached and read.boxes
    assert len(_records(tmp_path)) == 1 and cache.misses == 1
    record = json.loads(_records(tmp_path)[0].read_text(encoding="utf-8"))
    assert set(record) == {"action", "reason", "passes", "words", "matching", "method_code"}  # no text kept

    _no_ocr(monkeypatch)
    second = copy.deepcopy(sample)
    replayed = clean_pixel_data(second, policy=POLICY, cache=cache)
    assert replayed.cached and cache.hits == 1
    assert (replayed.action, replayed.reason, replayed.method_code) == (read.action, read.reason, read.method_code)
    assert replayed.boxes == read.boxes and replayed.ocr_words_examined == read.ocr_words_examined
    assert second.PixelData == first.PixelData and second.BurnedInAnnotation == "NO"
    assert second.PixelData != sample.PixelData


def test_other_header_tokens_or_settings_are_read_again(sample: Dataset, tmp_path: Path) -> None:
    cache = OcrCache(tmp_path)
    clean_pixel_data(copy.deepcopy(sample), policy=POLICY, cache=cache)
    renamed = copy.deepcopy(sample)
    renamed.PatientName = "OTHER^PATIENT"  # another patient's tokens decide other words
    assert not clean_pixel_data(renamed, policy=POLICY, cache=cache).cached
    wider = dataclasses.replace(POLICY, padding=POLICY.padding + 2)
    assert not clean_pixel_data(copy.deepcopy(sample), policy=wider, cache=cache).cached
    assert len(_records(tmp_path)) == 3 and cache.hits == 0


def test_other_pixels_are_read_again(sample: Dataset, tmp_path: Path) -> None:
    cache = OcrCache(tmp_path)
    clean_pixel_data(copy.deepcopy(sample), policy=POLICY, cache=cache)
    changed = copy.deepcopy(sample)
    data = bytearray(changed.PixelData)
    data[len(data) // 2] ^= 0xFF
    changed.PixelData = bytes(data)
    assert not clean_pixel_data(changed, policy=POLICY, cache=cache).cached


def test_an_ocr_failure_is_not_recorded(sample: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OcrError("tesseract is missing")

    monkeypatch.setattr(pixels, "ocr_words", broken)
    outcome = clean_pixel_data(copy.deepcopy(sample), policy=POLICY, cache=OcrCache(tmp_path))
    assert outcome.action == "quarantine" and "OCR failed" in outcome.reason
    assert _records(tmp_path) == []


def test_an_unreadable_record_is_decided_afresh_and_replaced(sample: Dataset, tmp_path: Path) -> None:
    cache = OcrCache(tmp_path)
    clean_pixel_data(copy.deepcopy(sample), policy=POLICY, cache=cache)
    [record] = _records(tmp_path)
    record.write_text("{not json", encoding="utf-8")
    outcome = clean_pixel_data(copy.deepcopy(sample), policy=POLICY, cache=cache)
    assert not outcome.cached and outcome.action == "cleaned"
    assert json.loads(record.read_text(encoding="utf-8"))["action"] == "cleaned"
