"""The pinned PS3.15 Annex E Table E.1-1 and the mapping from policy options to its columns.

The table is DICOM PS3.15 Annex E, Table E.1-1 "Application Level Confidentiality Profile Attributes", about
edition 2024e, as parsed by the MIT-licensed innolitics/dicom-standard project
(``standard/confidentiality_profile_attributes.json``). It was converted once into
``guards/deid/data/ps3_15_table_e1_1.json`` (every row and column kept, plus the source's SHA-256); the code reads
only that pinned file.

Action codes (PS3.15 E.1.1): D dummy, Z zero length, X remove, K keep, C clean, U UID; combined codes
(X/Z, X/D, Z/D, X/Z/D, X/Z/U*) are resolved per IOD by :mod:`guards.deid.iod`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from guards.errors import GuardError
from guards.policy import DeidSection

TABLE_RESOURCE = "ps3_15_table_e1_1.json"
EXPECTED_ROWS = 621
ACTIONS = frozenset({"D", "Z", "X", "K", "C", "U"})
COMBINED = frozenset({"X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"})
OPTION_COLUMNS: tuple[str, ...] = (
    "rtnSafePrivOpt",
    "rtnUIDsOpt",
    "rtnDevIdOpt",
    "rtnInstIdOpt",
    "rtnPatCharsOpt",
    "rtnLongFullDatesOpt",
    "rtnLongModifDatesOpt",
    "cleanDescOpt",
    "cleanStructContOpt",
    "cleanGraphOpt",
)
PRIVATE_ROW_ID = "ggggeeee-where-gggg-is-odd"
# Repeating-group rows: (group mask, element or None for every element) by the row id of the table.
REPEATING_ROWS: dict[str, tuple[int, int | None]] = {
    "50xxxxxx": (0x5000, None),  # Curve Data (retired curves, PS3.3 2004 C.10.2)
    "60xx4000": (0x6000, 0x4000),  # Overlay Comments
    "60xx3000": (0x6000, 0x3000),  # Overlay Data
}


@dataclass(frozen=True)
class ProfileRow:
    """One row of Table E.1-1: the tag, its name, the Basic Profile action and the option columns it has."""

    tag: str
    name: str
    row_id: str
    basic: str
    options: tuple[tuple[str, str], ...]  # (column, action) for the option columns present in this row
    in_standard_iod: bool

    @property
    def tag_int(self) -> int | None:
        """The tag as an int, or None for repeating groups and the private-attributes row."""
        try:
            return int(self.row_id, 16)
        except ValueError:
            return None


def _validate_code(code: str, where: str) -> str:
    if code not in ACTIONS and code not in COMBINED:
        raise GuardError(f"{where}: unknown action code {code!r}; Table E.1-1 uses {sorted(ACTIONS | COMBINED)}")
    return code


@lru_cache(maxsize=1)
def load_table() -> dict[str, Any]:
    """The pinned table file as parsed JSON (metadata and the ``rows`` list)."""
    text = resources.files("guards.deid").joinpath("data", TABLE_RESOURCE).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    if len(data["rows"]) != EXPECTED_ROWS or data["row_count"] != EXPECTED_ROWS:
        raise GuardError(f"pinned Table E.1-1 has {len(data['rows'])} rows; expected {EXPECTED_ROWS}: reinstall")
    return data


@lru_cache(maxsize=1)
def profile_rows() -> tuple[ProfileRow, ...]:
    """Every row of the pinned table, validated."""
    rows = []
    for raw in load_table()["rows"]:
        where = f"Table E.1-1 row {raw['tag']}"
        options = tuple((c, _validate_code(raw[c], where)) for c in OPTION_COLUMNS if c in raw)
        rows.append(
            ProfileRow(
                tag=raw["tag"],
                name=raw["name"],
                row_id=raw["id"],
                basic=_validate_code(raw["basicProfile"], where),
                options=options,
                in_standard_iod=raw["stdCompIOD"] == "Y",
            )
        )
    return tuple(rows)


# DeidSection switch -> its option column of Table E.1-1 (PS3.15 E.3); retain_longitudinal is handled apart.
_OPTION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("retain_safe_private", "rtnSafePrivOpt"),
    ("retain_uids", "rtnUIDsOpt"),
    ("retain_device_identity", "rtnDevIdOpt"),
    ("retain_institution_identity", "rtnInstIdOpt"),
    ("retain_patient_characteristics", "rtnPatCharsOpt"),
    ("clean_descriptors", "cleanDescOpt"),
    ("clean_structured_content", "cleanStructContOpt"),
    ("clean_graphics", "cleanGraphOpt"),
)
_LONGITUDINAL_COLUMNS = {"full": "rtnLongFullDatesOpt", "modified": "rtnLongModifDatesOpt"}


def enabled_columns(deid: DeidSection) -> tuple[str, ...]:
    """The option columns of Table E.1-1 that ``deid`` switches on (PS3.15 E.3), in the table's column order."""
    columns = [column for switch, column in _OPTION_COLUMNS[:5] if getattr(deid, switch)]
    if deid.retain_longitudinal in _LONGITUDINAL_COLUMNS:
        columns.append(_LONGITUDINAL_COLUMNS[deid.retain_longitudinal])
    columns += [column for switch, column in _OPTION_COLUMNS[5:] if getattr(deid, switch)]
    return tuple(columns)


def row_action(row: ProfileRow, columns: tuple[str, ...]) -> str:
    """The action code of ``row`` with the option ``columns`` enabled.

    The Basic Profile action applies unless an enabled option's column gives another. When two enabled options
    give different actions for one row (a retain option says K, a clean option says C), C wins: cleaning keeps
    the value's meaning while removing what identifies, which satisfies both options.
    """
    chosen = [action for column, action in row.options if column in columns]
    if not chosen:
        return row.basic
    return "C" if "C" in chosen else chosen[0]
