"""Atomic, versioned publish of a release: write, audit, then publish.

A release is assembled in a staging folder inside the run folder, audited by the gate, and only then renamed
into ``releases/<name>/<version>/`` with one ``os.rename`` on the same file system. Readers therefore see either
no version or a complete one: never a partial file, never a release whose gate failed. Previous versions are
never touched. A crashed run leaves only its staging folder, which the next run of the same step replaces.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from guards.errors import PublishError
from guards.manifest import read_table, status_counts, write_table

logger = logging.getLogger(__name__)

_VERSION = re.compile(r"^v(\d{4})$")
REQUIRED = ("manifest.parquet", "datasheet.md", "gate.json", "labels.csv")
LABELS = "labels.csv"
# A release is for publication: folders 0755, files 0644, whatever the umask of the run (the private side,
# OUT/runs and OUT/private, is 0700; see guards.run).
RELEASE_DIR_MODE, RELEASE_FILE_MODE = 0o755, 0o644


@dataclass(frozen=True)
class StagedRelease:
    """What staging assembled: its folder and the counts shown in the datasheet."""

    path: Path
    counts: dict[str, int]


def release_manifest(protect_manifest: Path, out: Path) -> dict[str, int]:
    """Write the release's manifest: published rows only, with ``source_path`` dropped (paths can carry PHI)."""
    table = read_table(protect_manifest)
    counts = status_counts(table)
    published = table.filter(pc.equal(table.column("status"), "published"))
    idx = published.schema.get_field_index("source_path")
    published = published.set_column(idx, published.schema.field(idx), pa.nulls(published.num_rows, pa.string()))
    write_table(published, out)
    return counts


def stage_release(
    *,
    tree: Path,
    manifest: Path,
    report_dir: Path,
    staging: Path,
    datasheet: str,
    labels: dict[str, int],
) -> StagedRelease:
    """Copy the published files, the release manifest, the labels, the report and the datasheet into ``staging``.

    ``labels`` maps the pseudonymous StudyInstanceUID (as in the release) to its label (-1: unknown); the
    release's ``labels.csv`` has one row per released study, the label empty when unknown. ``staging`` is
    emptied first, so re-running this step gives the same result.
    """
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "data").mkdir(parents=True)
    counts = release_manifest(manifest, staging / "manifest.parquet")
    table = read_table(staging / "manifest.parquet")
    for rel in table.column("path").to_pylist():
        src = tree / rel
        if not src.is_file():
            raise PublishError(f"published file {rel!r} is listed in the manifest but missing from {tree}")
        dst = staging / "data" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    (staging / LABELS).write_text(labels_csv(table, labels), encoding="utf-8")
    shutil.copytree(report_dir, staging / "report")
    shutil.copy2(report_dir / "gate.json", staging / "gate.json")
    (staging / "datasheet.md").write_text(datasheet, encoding="utf-8")
    return StagedRelease(path=staging, counts=counts)


def labels_csv(manifest: pa.Table, labels: dict[str, int]) -> str:
    """``StudyInstanceUID,label``: one row per study of ``manifest``, sorted; a study with no label row at all
    is a broken cohort, not an unlabelled study, and stops the publish."""
    studies = sorted(set(manifest.column("StudyInstanceUID").to_pylist()))
    missing = [uid for uid in studies if uid not in labels]
    if missing:
        raise PublishError(f"{len(missing)} released studies are not in the cohort (e.g. {missing[0]}); "
                           "rebuild the cohort step")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["StudyInstanceUID", "label"])
    writer.writerows([uid, "" if labels[uid] < 0 else labels[uid]] for uid in studies)
    return out.getvalue()


def _readable(staging: Path) -> None:
    staging.chmod(RELEASE_DIR_MODE)
    for path in staging.rglob("*"):
        path.chmod(RELEASE_DIR_MODE if path.is_dir() else RELEASE_FILE_MODE)


def next_version(release_root: Path) -> str:
    """``v0001`` for a new release name, else one more than the highest existing version."""
    existing = [int(m.group(1)) for p in release_root.glob("v*") if (m := _VERSION.match(p.name))]
    return f"v{max(existing, default=0) + 1:04d}"


def publish(staging: Path, releases_root: Path, *, name: str, version: str | None = None) -> Path:
    """Rename ``staging`` into ``releases_root/name/version`` atomically, if and only if its gate passed.

    Raises :class:`PublishError` when staging is incomplete, its gate.json says the gate failed, or the version
    already exists. ``staging`` must be on the same file system as ``releases_root`` (both live under OUT).
    """
    for required in REQUIRED:
        if not (staging / required).is_file():
            raise PublishError(f"staging {staging} is incomplete: {required} is missing; re-run the stage step")
    gate: dict[str, Any] = json.loads((staging / "gate.json").read_text(encoding="utf-8"))
    if gate.get("passed") is not True:
        raise PublishError("the gate did not pass; nothing is published (see report/index.html for why)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise PublishError(f"release name {name!r} must be letters, digits, '.', '_' or '-' (at most 64)")
    root = releases_root / name
    root.mkdir(parents=True, exist_ok=True)
    for folder in (releases_root, root):
        folder.chmod(RELEASE_DIR_MODE)
    version = version or next_version(root)
    if not _VERSION.match(version):
        raise PublishError(f"release version {version!r} must look like v0001")
    target = root / version
    if target.exists():
        raise PublishError(f"release {name}/{version} already exists; releases are never overwritten")
    marker = staging / "PUBLISHED_AT"
    marker.write_text(datetime.now(UTC).isoformat(timespec="seconds") + "\n", encoding="utf-8")
    _readable(staging)
    os.rename(staging, target)  # atomic on one file system; fails rather than merging into an existing folder
    _fsync_dir(root)
    logger.info("published release %s/%s", name, version)
    return target


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
