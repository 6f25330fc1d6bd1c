"""A DICOM tree: a local folder or any fsspec URL (``file://``, ``memory://``, ``s3://`` ...).

Walking, reading headers and quarantining is :func:`guards.ingest.ingest` (a remote tree's indexed files are
fetched under ``ingest/fetched/`` as they are read). This module adds the rest of the snapshot: local copies of
the labels and demographics tables under ``ingest/sidecars/``, and the fingerprint.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import fsspec

from guards.atomic import replacing
from guards.errors import InputError
from guards.sources import SIDECARS, Snapshot, fingerprint

if TYPE_CHECKING:
    from guards.policy import ReleasePolicy


def _copy_table(fs: fsspec.AbstractFileSystem, root: str, rel: str, out_dir: Path) -> Path | None:
    """A local copy of the table ``rel`` (relative to the source root), or None when the source has none.

    An absolute ``rel`` is a local file named outside the source (``guard run --labels FILE``): it must exist."""
    if not rel:
        return None
    if Path(rel).is_absolute():
        if not Path(rel).is_file():
            raise InputError(f"table {rel!r} does not exist")
        target = out_dir / SIDECARS / Path(rel).name
        target.parent.mkdir(parents=True, exist_ok=True)
        with replacing(target) as tmp:
            shutil.copyfile(rel, tmp)
        return target
    if ".." in Path(rel).parts:
        raise InputError(f"table {rel!r} must be a path inside the source (relative, no '..') or an absolute local "
                         "path")
    remote = f"{root.rstrip('/')}/{rel}"
    if not fs.isfile(remote):
        return None
    target = out_dir / SIDECARS / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    with fs.open(remote, "rb") as f, replacing(target) as tmp, tmp.open("wb") as g:
        shutil.copyfileobj(f, g)
    return target


def snapshot(source: str, *, out_dir: Path, policy: ReleasePolicy) -> Snapshot:
    from guards.ingest import ingest

    result = ingest(source, out_dir=out_dir, policy=policy.ingest)
    fs, _, paths = fsspec.get_fs_token_paths(source)
    root = paths[0].rstrip("/") if paths else source
    if (out_dir / SIDECARS).exists():
        shutil.rmtree(out_dir / SIDECARS)
    labels = _copy_table(fs, root, policy.ingest.labels, out_dir)
    demographics = _copy_table(fs, root, policy.cohort.demographics, out_dir)
    if policy.cohort.demographics and demographics is None:
        raise InputError(f"cohort.demographics names {policy.cohort.demographics!r}, which the source does not "
                         "have; add the table to the source or leave the key empty")
    kind = "folder" if str(result.root) == root else "fsspec"
    return Snapshot(kind=kind, root=result.root, index=result.index_path, labels=labels, demographics=demographics,
                    counts=dict(result.counts), fingerprint=fingerprint(result.table.to_pylist(),
                                                                        [labels, demographics]))
