"""guards.manifest: rows to a typed table, atomic Parquet round trip, counts per status."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from guards.manifest import (
    CROSSWALK_SCHEMA,
    HEADER_KEYWORDS,
    MANIFEST_SCHEMA,
    STATUSES,
    empty_row,
    read_table,
    status_counts,
    to_table,
    write_table,
)


def _rows() -> list[dict[str, object]]:
    a = empty_row("study/a.dcm")
    a.update(status="indexed", size=10, Rows=4, Columns=4, has_pixels=True, is_dicomdir=False, Modality="CR")
    b = empty_row("junk.bin")
    b.update(status="quarantined", reason="not DICOM")
    c = empty_row("labels.csv")
    c.update(status="excluded", reason="sidecar")
    return [a, b, c]


def test_empty_row_has_every_column_and_the_path_twice() -> None:
    row = empty_row("x/y.dcm")
    assert list(row) == MANIFEST_SCHEMA.names
    assert (row["path"], row["source_path"]) == ("x/y.dcm", "x/y.dcm")
    assert all(row[k] is None for k in MANIFEST_SCHEMA.names if k not in {"path", "source_path"})
    assert set(HEADER_KEYWORDS) <= set(MANIFEST_SCHEMA.names)  # one column per indexed header keyword


def test_to_table_types_values_and_fills_missing_with_null() -> None:
    table = to_table(_rows())
    assert table.schema.equals(MANIFEST_SCHEMA)
    assert table.num_rows == 3
    assert table.column("Rows").type == pa.int32()
    assert table.column("Rows").to_pylist() == [4, None, None]
    assert table.column("Modality").to_pylist() == ["CR", None, None]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"status": "lost"}, "has status 'lost'"),  # only the four statuses exist
        ({"status": None}, "has status None"),  # every row needs a status
        ({"PatientName": "X"}, "not in the schema"),  # an unknown column is an error, not silently dropped
    ],
)
def test_to_table_refuses_bad_rows(change: dict[str, object], message: str) -> None:
    rows = _rows()
    rows[0] = {**rows[0], **change}
    with pytest.raises(ValueError, match=message):
        to_table(rows)


def test_parquet_round_trip_keeps_schema_and_values(tmp_path: Path) -> None:
    table = to_table(_rows())
    path = tmp_path / "deep" / "index.parquet"
    write_table(table, path)
    back = read_table(path)
    assert back.schema.equals(MANIFEST_SCHEMA)
    assert back.equals(table)
    assert [p.name for p in path.parent.iterdir()] == ["index.parquet"]  # the temporary file was renamed


def test_write_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "index.parquet"
    write_table(to_table(_rows()), path)
    write_table(to_table(_rows()[:1]), path)
    assert read_table(path).num_rows == 1


def test_status_counts_has_every_status() -> None:
    counts = status_counts(to_table(_rows()))
    assert counts == {"indexed": 1, "published": 0, "quarantined": 1, "excluded": 1}
    assert tuple(counts) == STATUSES
    assert sum(counts.values()) == 3


def test_crosswalk_schema_round_trip(tmp_path: Path) -> None:
    rows = [{"kind": "PatientID", "original": "MRN1", "pseudonym": "P1"}]
    table = to_table(rows, schema=CROSSWALK_SCHEMA)
    write_table(table, tmp_path / "crosswalk.parquet")
    assert read_table(tmp_path / "crosswalk.parquet").to_pylist() == rows
