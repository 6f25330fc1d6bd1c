"""Parquet schemas (pyarrow) of the instance manifest and the private crosswalk.

Every input file gets exactly one manifest row, whatever becomes of it: ``status`` is one of
``indexed`` (ingest read it), ``published`` (it is in the release), ``quarantined`` (unusable or risky, with a
``reason``; the file is copied under ``quarantine/``) or ``excluded`` (deliberately left out: a sidecar table,
a DICOMDIR, a dropped study, with a ``reason``). Counts in reports are computed from these rows, so
``files seen = indexed + quarantined + excluded`` can always be checked.

The ``protect_*`` columns record what ``guards.protect`` wrote into a file, in that file's display window
(``guards.protect.codec``): its PSNR in dB (``inf`` when no pixel changed), the largest change and the budget
``floor(epsilon * range)`` in stored units. They are null in every row protect did not write or carry, and in
every tree before protect.

The crosswalk (original value -> pseudonym) is private: it is written outside every release folder.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from guards.atomic import replacing

Status = Literal["indexed", "published", "quarantined", "excluded"]
STATUSES: tuple[str, ...] = ("indexed", "published", "quarantined", "excluded")

# Header attributes indexed per instance, by DICOM keyword (the column name is the keyword).
HEADER_KEYWORDS: tuple[str, ...] = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "Modality",
    "PatientSex",
    "PatientAge",
    "PatientBirthDate",
    "EthnicGroup",
    "PatientSize",
    "PatientWeight",
    "StudyDate",
    "Manufacturer",
    "ManufacturerModelName",
    "InstitutionName",
    "BodyPartExamined",
    "StationName",
    "DeviceSerialNumber",
    "BurnedInAnnotation",
    "PhotometricInterpretation",
)

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),  # relative to the tree's root, POSIX separators
        pa.field("source_path", pa.string()),  # relative path in the source (ingest's path), for lineage
        pa.field("size", pa.int64()),
        pa.field("sha256", pa.string()),  # of the file as written in this tree
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),  # why quarantined/excluded; empty otherwise
        pa.field("TransferSyntaxUID", pa.string()),  # of the file as written in this tree (guards.codec)
        pa.field("Rows", pa.int32()),
        pa.field("Columns", pa.int32()),
        pa.field("NumberOfFrames", pa.int32()),
        pa.field("BitsAllocated", pa.int32()),
        pa.field("SamplesPerPixel", pa.int32()),
        pa.field("has_pixels", pa.bool_()),
        pa.field("is_dicomdir", pa.bool_()),
        pa.field("protect_psnr_db", pa.float64()),  # PSNR of the protected file in its display window (dB)
        pa.field("protect_max_abs_delta", pa.int32()),  # the largest change protect wrote, stored units
        pa.field("protect_budget", pa.int32()),  # floor(epsilon * range), stored units
        *[pa.field(k, pa.string()) for k in HEADER_KEYWORDS],
    ]
)

CROSSWALK_SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),  # "uid", "PatientID", "PatientName", "AccessionNumber", ...
        pa.field("original", pa.string(), nullable=False),
        pa.field("pseudonym", pa.string(), nullable=False),
    ]
)


def path_text(path: str) -> str:
    """``path`` as text that UTF-8 (and so Parquet) can hold.

    A file name that is not valid UTF-8 reaches Python with its undecodable bytes as lone surrogates (PEP 383,
    ``os.fsdecode``); they cannot be written to Parquet. Such bytes are written ``\\xNN`` (``backslashreplace``),
    so the row names the file readably; a valid name is returned unchanged.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return path


def empty_row(path: str) -> dict[str, Any]:
    """A manifest row with every column present and ``None`` values (status to be set by the caller)."""
    row: dict[str, Any] = {name: None for name in MANIFEST_SCHEMA.names}
    row["path"] = path
    row["source_path"] = path
    return row


def to_table(rows: Iterable[Mapping[str, Any]], schema: pa.Schema = MANIFEST_SCHEMA) -> pa.Table:
    """Rows (dicts) to a table of ``schema``; unknown keys are an error, missing keys are null."""
    rows = list(rows)
    names = set(schema.names)
    for row in rows:
        extra = set(row) - names
        if extra:
            raise ValueError(f"manifest row has columns not in the schema: {sorted(extra)}")
        for name in ("path", "source_path"):
            value = row.get(name)
            if isinstance(value, str) and path_text(value) != value:
                raise ValueError(f"manifest row {path_text(value)!r}: {name} is not valid UTF-8 (pass it through "
                                 "guards.manifest.path_text)")
        status = row.get("status")
        if schema is MANIFEST_SCHEMA and status not in STATUSES:
            raise ValueError(f"manifest row {row.get('path')!r} has status {status!r}; allowed: {STATUSES}")
    return pa.Table.from_pylist([{n: row.get(n) for n in schema.names} for row in rows], schema=schema)


def write_table(table: pa.Table, path: Path, *, mode: int | None = None) -> None:
    """Write Parquet atomically (temporary name, then rename); ``mode`` e.g. 0600 for the private crosswalk."""
    with replacing(path, mode=mode) as tmp:
        pq.write_table(table, tmp)


def read_table(path: Path) -> pa.Table:
    return pq.read_table(path)


def status_counts(table: pa.Table) -> dict[str, int]:
    """Rows per status, every status present (zeros included)."""
    counts = {s: 0 for s in STATUSES}
    for s in table.column("status").to_pylist():
        counts[s] += 1
    return counts


def cause(reason: str | None) -> str:
    """The cause a reason names, without its per-file detail: the text before the first ': '.

    ``"truncated or corrupt DICOM header: ..."`` -> ``"truncated or corrupt DICOM header"``;
    ``"re-identification risk: suppressed by remediation"`` -> ``"re-identification risk"``.
    """
    text = (reason or "").strip()
    return text.split(": ", 1)[0].strip() or "no reason recorded"


def cause_counts(table: pa.Table) -> list[tuple[str, str, int]]:
    """``(status, cause, files)`` for every quarantined or excluded cause, most files first."""
    counts: dict[tuple[str, str], int] = {}
    for status, reason in zip(table.column("status").to_pylist(), table.column("reason").to_pylist(), strict=True):
        if status in ("quarantined", "excluded"):
            key = (status, cause(reason))
            counts[key] = counts.get(key, 0) + 1
    return [(s, c, n) for (s, c), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
