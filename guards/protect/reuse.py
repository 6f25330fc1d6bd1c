"""Noise kept across runs, so that a nightly run protects only the images it has not protected before.

A nightly run de-identifies the whole source again (fast, and deterministic under one key: the same source file
gives the same de-identified bytes), but generating noise is the slow step. After each run, the protected
files are kept under a private cache folder (the pipeline's ``OUT/private/protect-cache/``, outside every
release), one sub-folder per protection fingerprint, with an index of
``path``, ``parent_sha256`` (the de-identified file it was protected from) and ``sha256`` (the protected file).

A de-identified file is carried from the cache only when all of these hold, otherwise it is protected afresh:

- the protection settings and seed are the same (the fingerprint);
- the de-identified file is byte-identical to the one protected before (``parent_sha256``);
- the cached file is intact (its ``sha256``);
- its pixels decode to the same shape as the de-identified ones and differ from them by at most the budget.

Carried images still train the surrogate, as they appear in the release, while only the new images get noise
(``salm.error_minimizing_noise(frozen=...)``). The cache holds de-identified, protected files only, like a
release, and is pruned to the current run's files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from guards.atomic import copy_file
from guards.manifest import read_table, write_table
from guards.policy import ProtectSection

logger = logging.getLogger(__name__)

NOISE_VERSION = 2  # bump when the noise algorithm changes: earlier caches are then not reused
INDEX_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("parent_sha256", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
    ]
)
_NOT_OUTPUT = ("device", "batch_size", "reuse", "enabled")  # settings that do not change what is written


def fingerprint(section: ProtectSection, seed: int, *, encoding: str = "jpeg-ls") -> str:
    """A short hash of everything that decides the files written (settings, seed, algorithm version, and the
    ``pixels.encode`` syntax of compressed input, guards.codec; the default leaves earlier fingerprints as they
    were)."""
    settings = {k: v for k, v in dataclasses.asdict(section).items() if k not in _NOT_OUTPUT}
    decided: dict[str, object] = {"settings": settings, "seed": seed, "version": NOISE_VERSION}
    if encoding != "jpeg-ls":
        decided["encoding"] = encoding
    text = json.dumps(decided, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class CachedFile:
    """A cached protected file as read for one lookup (``data`` is not kept beyond it)."""

    path: Path
    data: bytes
    sha256: str


class NoiseCache:
    """The protected files of earlier runs under one fingerprint (``root/<fingerprint>/``)."""

    def __init__(self, root: Path, key: str) -> None:
        self.root = Path(root)
        self.folder = self.root / key
        index = self.folder / "index.parquet"
        rows = read_table(index).to_pylist() if index.is_file() else []
        self._entries: dict[str, dict[str, Any]] = {r["path"]: r for r in rows}
        self._kept: dict[str, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, rel: str, parent_sha256: str | None) -> CachedFile | None:
        """The cached protected file of ``rel``, read and verified, when it was made from these exact
        de-identified bytes."""
        entry = self._entries.get(rel)
        if entry is None or not parent_sha256 or entry["parent_sha256"] != parent_sha256:
            return None
        path = self.folder / "files" / rel
        data = path.read_bytes() if path.is_file() else b""
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            logger.warning("protect cache: %s is missing or altered; it is protected afresh", rel)
            return None
        return CachedFile(path=path, data=data, sha256=entry["sha256"])

    def keep(self, rel: str, *, parent_sha256: str, protected: Path, sha256: str, copy: bool) -> None:
        """Record ``protected`` (the file written for this run) for the next run; ``copy`` it into the cache."""
        if copy:
            copy_file(protected, self.folder / "files" / rel)
        self._kept[rel] = {"path": rel, "parent_sha256": parent_sha256, "sha256": sha256}

    def commit(self) -> dict[str, int]:
        """Write the index of this run's files, remove cached files this run did not keep, and remove the
        caches of other fingerprints (other settings or seeds). Returns what was kept and removed."""
        rows = sorted(self._kept.values(), key=lambda r: r["path"])
        write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), self.folder / "index.parquet")
        removed = 0
        files = self.folder / "files"
        if files.is_dir():
            for path in sorted(files.rglob("*")):
                if path.is_file() and path.relative_to(files).as_posix() not in self._kept:
                    path.unlink()
                    removed += 1
        for other in self.root.iterdir():
            if other.is_dir() and other != self.folder:
                shutil.rmtree(other)
        return {"kept": len(rows), "removed": removed}
