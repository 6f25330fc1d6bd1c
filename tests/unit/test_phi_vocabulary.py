"""guards.deid.vocabulary: the one PHI vocabulary of the cleaner, the pixel cleaner and the residual-PHI audit.

All values are made up (no real patient).
"""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from guards.deid import vocabulary as v
from guards.deid.actions import identifier_tokens
from guards.deid.pixel_phi import date_tokens, header_tokens, looks_like_phi

DA = "19610317"
WRITTEN = (
    "19610317",  # DICOM DA
    "1961-03-17",  # ISO 8601
    "1961/03/17",
    "1961.03.17",
    "17/03/1961",  # day first
    "03/17/1961",  # month first
    "17.03.1961",
    "17-03-1961",
    "03-17-1961",
    "17031961",
    "03171961",
    "17/3/1961",  # not zero-padded
    "3/17/1961",
    "17/03/61",  # 2-digit year
    "03/17/61",
    "17-MAR-1961",  # month names
    "17 Mar 1961",
    "17-Mar-61",
    "17MAR1961",
    "March 17, 1961",
    "Mar 17 1961",
    "17 March 1961",
    "1961-MAR-17",
)


@pytest.mark.parametrize("written", WRITTEN)
def test_each_date_form_is_generated_from_the_da_value_and_found_in_text(written: str) -> None:
    text = f"Patient born {written}, seen today"
    forms = v.date_forms(DA)
    assert written.upper() in forms  # the cleaner's literal (case-insensitive) substring test
    assert any(f in text.upper() for f in forms)
    ws = v.words(text)  # the audit's whole-word test: some form's parts, consecutive, or run together
    grams = {ws[i:i + n] for n in (1, 3) for i in range(len(ws) - n + 1)}
    as_words = set(v.date_parts(DA)) | {("".join(p),) for p in v.date_parts(DA)} | {(".".join(p),)
                                                                                   for p in v.date_parts(DA)}
    assert grams & as_words
    assert v.compact(written) in date_tokens(DA)  # the pixel cleaner's compact tokens


def test_date_forms_of_other_dates_and_of_non_dates() -> None:
    assert "18-MAR-1961" not in v.date_forms(DA) and "1961-03-18" not in v.date_forms(DA)
    assert v.date_parts("2017") == frozenset() and v.date_parts("20171340") == frozenset()
    assert v.date_parts("ABCDEFGH") == frozenset() and v.date_forms("") == frozenset()
    assert v.date_parts("20170302101500.000") == v.date_parts("20170302")  # the date part of a DT
    assert all(len("".join(p)) >= v.MIN_DATE_CHARS for p in v.date_parts("20010102"))  # no "1/2/01"
    assert "MAY 2, 2001" in v.date_forms("20010502") and "2 MAY 01" in v.date_forms("20010502")


def test_id_pieces_are_digit_runs_alphanumeric_pieces_and_the_value_run_together() -> None:
    assert v.id_pieces("PID-448120") == {"PID448120", "448120"}  # "PID" alone is a label
    assert v.id_pieces("MRN1234567") == {"1234567"}
    assert v.id_pieces("A-7781\\B99") == {"A7781", "7781", "B99"}
    assert v.id_pieces("HOSP/AB-12") == {"HOSPAB12", "HOSP"}  # 4+ letters, or a digit, and 3+ characters
    assert v.id_pieces("12") == set()
    assert v.digit_runs("x12345y448120z12345678") == ["448120", "12345678"]  # runs of 6 digits or more


def test_normalisations() -> None:
    assert v.words("Dr. J. Doe-Smith, 17.03.1961") == ("DR", "J", "DOE", "SMITH", "17.03.1961")
    assert v.compact("17-Mar-1961 / PID-448120") == "17MAR1961PID448120"
    assert v.name_parts("Doe^Jane^^Dr=\\Müller, Hans") == ["Doe", "Jane", "Dr", "Müller", "Hans"]
    # ASCII separators only: the bytes of UTF-8 text (read as Latin-1) are never split
    utf8 = "Ærøskøbing".encode().decode("latin-1")
    assert v.name_parts(utf8) == [utf8]
    assert v.is_date_shaped("12/31/1999") and v.is_date_shaped("31-DEC-99") and not v.is_date_shaped("R15")


def test_keywords_and_categories() -> None:
    assert {"PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID", "IssuerOfPatientID"} <= set(v.ID_KEYWORDS)
    assert {"PatientName", "ReferringPhysicianName", "OperatorsName"} <= set(v.NAME_KEYWORDS)
    assert "PatientBirthDate" in v.TEXT_SCRUB_KEYWORDS and "PatientBirthDate" in v.DATE_KEYWORDS
    assert v.CATEGORY["AccessionNumber"] == "identifier" and v.CATEGORY["InstitutionName"] == "institution"
    assert not set(v.CATEGORY) & set(v.NAME_KEYWORDS)  # names are every PN element, by VR


def _header() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Quorrington^Hildegard"
    ds.PatientID = "PID-448120"
    ds.PatientBirthDate = DA
    ds.StudyDate = "20240105"
    ds.AccessionNumber = "ACC7731902"
    ds.InstitutionName = "Quarry Bay Infirmary"
    return ds


def test_the_cleaners_take_their_tokens_from_the_vocabulary() -> None:
    ds = _header()
    scrub = {t.decode() for t in identifier_tokens(ds)}
    assert {"PID-448120", "448120", "PID448120", "7731902", "Quorrington", "Hildegard", "Quarry"} <= scrub
    assert {f for f in v.date_forms(DA)} <= scrub  # the birth date in every form
    assert "PID" not in scrub  # a label, not an identifier
    pixel = header_tokens(ds)
    assert {"448120", "PID448120", "7731902", "QUORRINGTON", "17MAR1961", "050124"} <= pixel
    assert date_tokens(DA) <= pixel and looks_like_phi("MRN448120") and looks_like_phi("17-MAR-1961")
