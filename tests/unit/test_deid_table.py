"""The pinned Table E.1-1 (guards/deid/data/ps3_15_table_e1_1.json) keeps every row and action of its source."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from guards.deid.table import ACTIONS, COMBINED, OPTION_COLUMNS, enabled_columns, load_table, profile_rows
from guards.policy import DeidSection

SHARED = Path("/work/shared/data/ps3.15-table-e1-1.json")
# sha256 of json.dumps(rows, sort_keys=True) of the pinned rows: any edit of a row or action changes it.
ROWS_SHA256 = "34235997011854aaa2fe215c9245a88bbb5658346cebd073993ee020aa44572d"


def _rows_digest(rows: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode("utf-8")).hexdigest()


def test_pinned_table_has_621_rows_with_valid_actions() -> None:
    data = load_table()
    rows = data["rows"]
    assert len(rows) == 621 == data["row_count"]
    assert "2024e" in data["edition"] and "innolitics" in data["source"]
    assert len({r["tag"] for r in rows}) == 621
    for r in rows:
        assert r["basicProfile"] in ACTIONS | COMBINED, r
        for column in OPTION_COLUMNS:
            if column in r:
                assert r[column] in ACTIONS, (r["tag"], column)
    assert len(profile_rows()) == 621


def test_pinned_rows_digest_and_action_counts() -> None:
    rows = load_table()["rows"]
    assert _rows_digest(rows) == ROWS_SHA256
    basic = Counter(r["basicProfile"] for r in rows)
    assert basic == {"X": 384, "D": 92, "U": 54, "Z": 42, "X/D": 22, "X/Z": 11, "X/Z/D": 8, "Z/D": 6, "X/Z/U*": 2}
    options = Counter(c for r in rows for c in OPTION_COLUMNS if c in r)
    assert options["rtnLongFullDatesOpt"] == options["rtnLongModifDatesOpt"] == 165
    assert options["cleanDescOpt"] == 125 and options["rtnUIDsOpt"] == 59 and options["rtnSafePrivOpt"] == 1


@pytest.mark.skipif(not SHARED.is_file(), reason="the shared source table is not on this machine")
def test_conversion_kept_every_row_of_the_source() -> None:
    raw = SHARED.read_bytes()
    source = json.loads(raw)
    data = load_table()
    assert data["source_sha256"] == hashlib.sha256(raw).hexdigest()
    assert data["rows"] == source  # every row, every field, in order


def test_enabled_columns_follow_the_policy() -> None:
    assert enabled_columns(DeidSection(retain_longitudinal="off")) == ()
    assert enabled_columns(DeidSection()) == ("rtnLongModifDatesOpt",)
    everything = DeidSection(
        retain_safe_private=True, retain_uids=True, retain_device_identity=True, retain_institution_identity=True,
        retain_patient_characteristics=True, retain_longitudinal="full", clean_descriptors=True,
        clean_structured_content=True, clean_graphics=True,
    )
    assert set(enabled_columns(everything)) == set(OPTION_COLUMNS) - {"rtnLongModifDatesOpt"}
