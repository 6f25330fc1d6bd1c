"""Scans a folder for PHI the way a recipient would find it: in file names, raw bytes and Parquet cells.

Shared by the tests that promise "no original value outside the private side" (``guard deid``'s DST, a PACS run's
OUT outside ``OUT/private/``). Parquet pages are compressed, so their cells are decoded and searched as text too.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def strings(table: pa.Table) -> list[str]:
    """Every string cell of ``table`` (and of nested values), nulls left out."""
    out: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)

    for column in table.columns:
        for value in column.to_pylist():
            walk(value)
    return out


def found(folder: Path, needles: list[str], *, skip: tuple[str, ...] = ()) -> tuple[list[tuple[str, str]], int]:
    """(file, needle) for every needle found, case-insensitively, in a file's name, raw bytes or (Parquet) cells
    under ``folder``, leaving out the top-level folders named in ``skip``; and the number of files scanned."""
    lowered = [(n, n.lower(), n.lower().encode()) for n in needles]
    hits: list[tuple[str, str]] = []
    scanned = 0
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if rel.split("/", 1)[0] in skip:
            continue
        texts = [rel.lower()]
        data = b""
        if p.is_file():
            scanned += 1
            data = p.read_bytes().lower()
            if p.suffix == ".parquet":
                texts += [s.lower() for s in strings(pq.read_table(p))]
        for needle, low, raw in lowered:
            if raw in data or any(low in t for t in texts):
                hits.append((rel, needle))
    return hits, scanned
