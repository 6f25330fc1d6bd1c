"""Sources: where studies come from, resolved once per run into a local :class:`Snapshot`.

Ingest resolves any source (a local folder, an fsspec URL, a PACS over DICOMweb) into one snapshot under the run's
``ingest/`` folder: a local root that holds (or is) the DICOM files, the index (one row per source file, the
manifest schema), and local copies of the labels and demographics tables. No later step looks at the original
source again: they all read ``Run.snapshot``.

A new kind of source is one module with ``snapshot(source, *, out_dir, policy) -> Snapshot`` and one line in
:data:`SOURCE_KINDS`, keyed by URL scheme. ``dicomweb+http(s)://HOST:PORT/PATH`` is a PACS (guards.sources.dicomweb):
its studies are fetched into ``ingest/pacs/`` and indexed like a folder; a ledger on the private side of OUT
(guards.sources.ledger) lets the next run fetch only new or changed studies. ``dimse://CALLED_AET@HOST:PORT`` is
a PACS over DIMSE (guards.sources.dimse: C-FIND, then C-GET or C-MOVE); both share guards.sources.pacs.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from guards.errors import InputError

if TYPE_CHECKING:
    from guards.policy import ReleasePolicy

SIDECARS = "sidecars"


@dataclass(frozen=True)
class Snapshot:
    """A source resolved once: what every later step reads instead of the source itself."""

    kind: str  # the SOURCE_KINDS entry that made it
    root: Path  # local root of the indexed DICOM files (the folder itself, or the fetched copy of a remote one)
    index: Path  # ingest/index.parquet
    labels: Path | None  # local copy of the labels table (StudyInstanceUID,label), None when the source has none
    demographics: Path | None  # local copy of the private demographics table, when the policy names one
    counts: dict[str, int]  # seen, indexed, quarantined, excluded
    fingerprint: str  # sha256 over the index rows (paths, statuses, file hashes) and the two tables' bytes

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "root": str(self.root), "index": str(self.index),
                "labels": str(self.labels) if self.labels else None,
                "demographics": str(self.demographics) if self.demographics else None,
                "counts": dict(self.counts), "fingerprint": self.fingerprint}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Snapshot:
        return cls(kind=data["kind"], root=Path(data["root"]), index=Path(data["index"]),
                   labels=Path(data["labels"]) if data.get("labels") else None,
                   demographics=Path(data["demographics"]) if data.get("demographics") else None,
                   counts={k: int(v) for k, v in data["counts"].items()}, fingerprint=data["fingerprint"])


class SourceKind(Protocol):
    def __call__(self, source: str, *, out_dir: Path, policy: ReleasePolicy) -> Snapshot: ...


# URL scheme -> "module:function". "" is a plain local path; any other scheme fsspec knows is a tree as well.
SOURCE_KINDS: dict[str, str] = {
    "": "guards.sources.tree:snapshot",
    "file": "guards.sources.tree:snapshot",
    "dicomweb+http": "guards.sources.dicomweb:snapshot",  # a PACS over DICOMweb (QIDO-RS + WADO-RS)
    "dicomweb+https": "guards.sources.dicomweb:snapshot",
    "dimse": "guards.sources.dimse:snapshot",  # a PACS over DIMSE (C-FIND + C-GET, or C-MOVE)
}
FALLBACK = "guards.sources.tree:snapshot"  # any other fsspec protocol (memory://, s3://, ...)


def scheme(source: str) -> str:
    head, sep, _ = source.partition("://")
    return head.lower() if sep else ""


def resolve(source: str | Path, *, out_dir: Path, policy: ReleasePolicy) -> Snapshot:
    """The snapshot of ``source`` under ``out_dir`` (the run's ingest folder)."""
    text = str(source).strip()
    if not text:
        raise InputError("no source given: name a DICOM folder or URL (the form's 'Source', or guard run SRC)")
    module, _, function = SOURCE_KINDS.get(scheme(text), FALLBACK).partition(":")
    kind: SourceKind = getattr(importlib.import_module(module), function)
    return kind(text, out_dir=Path(out_dir), policy=policy)


def fingerprint(rows: list[dict[str, Any]], tables: list[Path | None]) -> str:
    """sha256 over what identifies a snapshot's content: each row's path, status and file hash, and the tables."""
    h = hashlib.sha256()
    for r in rows:
        h.update(f"{r['path']}\0{r['status']}\0{r.get('sha256') or ''}\0{r.get('reason') or ''}\n".encode())
    for table in tables:
        h.update(table.read_bytes() if table is not None else b"-")
    return h.hexdigest()
