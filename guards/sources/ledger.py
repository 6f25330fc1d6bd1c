"""The PACS ledger: what the nightly runs have fetched from one PACS, so that the next run fetches only what changed.

A ledger belongs to one PACS (its URL without credentials or query) and lives on the private side of OUT::

    OUT/private/pacs/<source id>/ledger.parquet   one row per study (LEDGER_SCHEMA), file mode 0600
    OUT/private/pacs/<source id>/store/<study>/   the study's files as last received complete (read-only, 0400)

``<source id>`` is the first 16 hex digits of the sha256 of that URL. A run's snapshot links (or, across file
systems, copies) the stored files of each unchanged study into its own ``ingest/pacs/`` folder and fetches the
others; after a run, every study received complete replaces its stored copy. A study is unchanged when its
ledger row is ``complete`` and the PACS reports the same instance count and the same study record (the sha256
of its QIDO-RS attributes, the Retrieve URL aside: a changed series count, modality or description is a change).
Only complete studies are ever carried: an incomplete or failed one is fetched again the next night.

The ledger holds original identifiers (StudyInstanceUID, AccessionNumber, StudyDate): it is private, like the
ingest index, and never copied into a run's report or a release.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa

from guards.atomic import PRIVATE_FILE_MODE, exclusive, private_folder
from guards.manifest import read_table, write_table

LEDGER = "ledger.parquet"
STORE = "store"
STORED_FILE_MODE = 0o400  # stored files are linked into runs: no step may change them in place

Status = Literal["complete", "incomplete", "failed", "gone"]

LEDGER_SCHEMA = pa.schema([
    pa.field("StudyInstanceUID", pa.string(), nullable=False),
    pa.field("folder", pa.string(), nullable=False),  # the study's folder name under store/ and ingest/pacs/
    pa.field("AccessionNumber", pa.string()),
    pa.field("StudyDate", pa.string()),
    pa.field("expected", pa.int64()),  # NumberOfStudyRelatedInstances from QIDO-RS (null: the PACS did not say)
    pa.field("received", pa.int64()),  # instances received in the last retrieve
    pa.field("qido_sha256", pa.string()),  # sha256 of the study's QIDO-RS record (Retrieve URL left out)
    pa.field("files_sha256", pa.string()),  # sha256 over the received files' names and sha256s, sorted
    pa.field("status", pa.string(), nullable=False),  # complete | incomplete | failed | gone
    pa.field("reason", pa.string()),  # why not complete
    pa.field("run", pa.string()),  # the run folder that last fetched it (or saw it gone)
    pa.field("updated_at", pa.string()),
])


@dataclass(frozen=True)
class Entry:
    """One study of the ledger (a LEDGER_SCHEMA row)."""

    StudyInstanceUID: str
    folder: str
    AccessionNumber: str | None
    StudyDate: str | None
    expected: int | None
    received: int
    qido_sha256: str
    files_sha256: str | None
    status: Status
    reason: str
    run: str
    updated_at: str


def files_digest(files: list[tuple[str, str]]) -> str:
    """sha256 over ``(name, file sha256)`` pairs, sorted: what a study's received files were."""
    h = hashlib.sha256()
    for name, digest in sorted(files):
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()


def source_id(base_url: str) -> str:
    """The ledger folder name of a PACS: 16 hex digits of the sha256 of its URL (no credentials, no query)."""
    return hashlib.sha256(base_url.encode("utf-8")).hexdigest()[:16]


class Ledger:
    """The ledger of one PACS in ``folder`` (``OUT/private/pacs/<source id>/``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LEDGER
        self.store = self.folder / STORE

    @contextmanager
    def locked(self) -> Iterator[Ledger]:
        """Hold the ledger for a snapshot: two runs on one PACS ledger would overwrite each other's store."""
        private_folder(self.folder.parent)
        private_folder(self.folder)
        with exclusive(self.folder, what="a PACS snapshot"):
            yield self

    def load(self) -> dict[str, Entry]:
        if not self.path.is_file():
            return {}
        entries: dict[str, Entry] = {}
        for row in read_table(self.path).to_pylist():
            entries[row["StudyInstanceUID"]] = Entry(**row)
        return entries

    def save(self, entries: dict[str, Entry]) -> None:
        rows = [asdict(e) for _, e in sorted(entries.items())]
        write_table(pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA), self.path, mode=PRIVATE_FILE_MODE)

    def stored_files(self, folder: str) -> list[Path]:
        d = self.store / folder
        return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []

    def carry(self, entry: Entry, into: Path) -> bool:
        """Link the stored files of ``entry`` into ``into/<folder>/``; False when the store lacks some of them."""
        files = self.stored_files(entry.folder)
        if entry.status != "complete" or len(files) != entry.received:
            return False
        target = into / entry.folder
        target.mkdir(parents=True, exist_ok=True)
        for f in files:
            _link_or_copy(f, target / f.name)
        return True

    def keep(self, folder: str, received: Path) -> None:
        """Make the files of ``received`` (a study folder of a run) the stored copy of study ``folder``."""
        private_folder(self.store)
        tmp = self.store / f".{folder}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for f in sorted(received.iterdir()):
            if f.is_file():
                _link_or_copy(f, tmp / f.name)
                os.chmod(tmp / f.name, STORED_FILE_MODE)
        self.forget(folder)
        tmp.rename(self.store / folder)

    def forget(self, folder: str) -> None:
        """Remove the stored copy of study ``folder`` (a run that linked it keeps its own link)."""
        d = self.store / folder
        if d.exists():
            shutil.rmtree(d)


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (same file system: no second copy of the pixels), else a copy."""
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
