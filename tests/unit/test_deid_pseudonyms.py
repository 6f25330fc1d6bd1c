"""Keyed pseudonyms (guards.deid.pseudonyms): deterministic under a key, different under another, valid UIDs."""

from __future__ import annotations

import re

import pytest

from guards.deid.pseudonyms import date_offset_days, pseudo_patient_id, pseudo_patient_name, pseudo_uid
from guards.errors import GuardError
from guards.keys import PseudonymKey

UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def test_pseudo_uid_is_a_deterministic_2_25_uid(key: PseudonymKey) -> None:
    a = pseudo_uid(key, "1.2.840.10008.999.1")
    assert a == pseudo_uid(key, "1.2.840.10008.999.1\x00")  # padding is not part of the value
    assert a.startswith("2.25.") and len(a) <= 64 and UID_RE.match(a)
    assert int(a.split(".")[-1]) < 2**128
    assert a != pseudo_uid(key, "1.2.840.10008.999.2")
    assert a != pseudo_uid(PseudonymKey(b"another-test-key-0123456789"), "1.2.840.10008.999.1")


def test_pseudo_uid_other_root_fits_64_chars(key: PseudonymKey) -> None:
    root = "1.2.826.0.1.3680043.10.12345.999.888"
    uid = pseudo_uid(key, "1.2.3", root=root)
    assert uid.startswith(root + ".") and len(uid) <= 64 and UID_RE.match(uid)
    with pytest.raises(GuardError, match="not a valid UID root"):
        pseudo_uid(key, "1.2.3", root="1.02.x")


def test_patient_pseudonyms(key: PseudonymKey) -> None:
    pid = pseudo_patient_id(key, "MRN-0042 ")
    assert pid == pseudo_patient_id(key, "MRN-0042") and pid.startswith("RG") and len(pid) == 22
    assert "0042" not in pid[:2]
    name = pseudo_patient_name(key, "Doe^Jane")
    assert name.startswith("ANON^") and "Doe" not in name


def test_date_offsets_within_range_and_spread(key: PseudonymKey) -> None:
    offsets = [date_offset_days(key, f"P{i}", low=-730, high=-1) for i in range(200)]
    assert all(-730 <= o <= -1 for o in offsets)
    assert len(set(offsets)) > 150  # spread over the range, not a constant
    assert offsets[0] == date_offset_days(key, "P0", low=-730, high=-1)
    with pytest.raises(GuardError, match="low <= high"):
        date_offset_days(key, "P0", low=5, high=1)
