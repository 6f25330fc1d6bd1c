"""The labels table (``StudyInstanceUID,label``, private side) is read strictly (issue 16).

Each case is a table a steward could really hand in: a spreadsheet's UTF-8 export with a byte order mark, a
Latin-1 export, a row cut short, a study listed twice. Every refusal is an InputError naming the line(s), and
it reaches the gate report as the first reason (the cohort step reads the table).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from guards import pipeline
from guards.errors import InputError
from guards.keys import PseudonymKey
from guards.policy import ReleasePolicy
from guards.samples import generate_corpus

A = "1.2.826.0.1.3680043.8.498.1"
B = "1.2.826.0.1.3680043.8.498.2"


def _table(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "labels.csv"
    path.write_bytes(data)
    return path


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = _table(tmp_path, f"\ufeffStudyInstanceUID,label\r\n{A},1\r\n{B},0\r\n".encode())
    assert pipeline.read_labels(path) == {A: 1, B: 0}


def test_latin1_bytes_are_refused_with_their_line(tmp_path: Path) -> None:
    # A Latin-1 export: the comment column holds "Müller" as one byte 0xFC, which is not UTF-8.
    data = f"StudyInstanceUID,label,comment\n{A},1,ok\n{B},0,M".encode() + b"\xfcller\n"
    with pytest.raises(InputError, match=r"line 3: bytes that are not UTF-8 .*save the table as UTF-8"):
        pipeline.read_labels(_table(tmp_path, data))


def test_a_short_row_is_refused_with_its_line(tmp_path: Path) -> None:
    path = _table(tmp_path, f"StudyInstanceUID,label\n{A},1\n{B}\n".encode())
    with pytest.raises(InputError, match=r"line 3: 1 field\(s\), the header has 2"):
        pipeline.read_labels(path)


def test_a_long_row_is_refused_with_its_line(tmp_path: Path) -> None:
    path = _table(tmp_path, f"StudyInstanceUID,label\n{A},1,2\n".encode())
    with pytest.raises(InputError, match=r"line 2: 3 field\(s\)"):
        pipeline.read_labels(path)


def test_a_study_with_two_labels_names_both_lines(tmp_path: Path) -> None:
    path = _table(tmp_path, f"StudyInstanceUID,label\n{A},1\n{B},0\n{A},0\n".encode())
    with pytest.raises(InputError, match=r"lines 2 and 4: the same StudyInstanceUID with two labels \(1 and 0\)"):
        pipeline.read_labels(path)


def test_an_identical_duplicate_is_read_once(tmp_path: Path) -> None:
    path = _table(tmp_path, f"StudyInstanceUID,label\n{A},1\n{A}, 1\n\n{B},0\n".encode())
    assert pipeline.read_labels(path) == {A: 1, B: 0}


def test_a_negative_label_is_out_of_range(tmp_path: Path) -> None:
    # -1 is the cohort's "unknown": read as a label it would silently unlabel the study.
    path = _table(tmp_path, f"StudyInstanceUID,label\n{A},1\n{B},-1\n".encode())
    with pytest.raises(InputError, match=r"line 3: label -1 is out of range"):
        pipeline.read_labels(path)


def test_an_empty_study_uid_is_refused(tmp_path: Path) -> None:
    path = _table(tmp_path, b"StudyInstanceUID,label\n,1\n")
    with pytest.raises(InputError, match=r"line 2: empty StudyInstanceUID"):
        pipeline.read_labels(path)


LIGHT = ReleasePolicy().with_overrides({
    "pixels.ocr_all": False, "protect.enabled": False, "reid.remediate": False,
    "reid.k": 1, "reid.max_risk": 1.0,
    "gate.blocking": ["reid", "phi"], "gate.advisory": [],
    "gate.off": ["representation", "membership", "unlearnability", "attribute", "inversion"],
})


@pytest.mark.timeout(300)
def test_a_conflicting_duplicate_is_the_first_reason_of_the_report(tmp_path: Path, key: PseudonymKey) -> None:
    corpus = generate_corpus(tmp_path / "corpus", studies=4, seed=16, image_size=64)
    src = tmp_path / "src"
    shutil.copytree(corpus.root, src)
    lines = (src / "labels.csv").read_text(encoding="utf-8").splitlines()
    uid, label = lines[1].split(",")
    lines.append(f"{uid},{1 - int(label)}")  # the first study again, with the other label
    (src / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = pipeline.begin(src, tmp_path / "out", "dup-label", policy=LIGHT, key=key)
    pipeline.step_deid(run, key=key)
    with pytest.raises(InputError, match=f"lines 2 and {len(lines)}"):
        pipeline.step_cohort(run, key=key)
    gate = pipeline.step_gate(run)
    assert not gate["passed"]
    first = gate["reasons"][0]
    assert first.startswith("Step 'cohort' failed in this attempt (InputError: labels table"), first
    assert f"lines 2 and {len(lines)}: the same StudyInstanceUID with two labels" in first
    assert pipeline.step_publish(run, key=key)["published"] is False
