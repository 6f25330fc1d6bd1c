"""Images for the model-based checks: a DICOM tree to one float32 tensor, and images joined to the cohort.

Every image is seen through the one display transform that protect made its noise in
(``guards.protect.codec.decode`` then ``to_unit``), so a check measures the change a viewer or a victim's
model sees: the Modality LUT (rescale) and the first VOI window (PS3.3 C.11.1, C.11.2) map the stored values
to [0, 1], values outside the window clipped; without a window the instance's own minimum and maximum
(over all its frames) are the range; ``MONOCHROME1`` (and a negative Rescale Slope) are inverted so that bright
means dense everywhere; an RGB or YBR image is the mean of its RGB channels. The first frame of a multi-frame
instance is used, resized (area averaging) to ``size x size``. An instance the codec cannot display
(PALETTE COLOR, ``BitsAllocated`` other than 8 or 16, an undecodable transfer syntax) is skipped with its
reason logged and counted in ``examined["skipped"]``; there is no fallback transform. Rows are sorted by
``SOPInstanceUID`` so that the same tree always gives the same tensor.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import torch
import torch.nn.functional as F
from pydicom.errors import InvalidDicomError

from guards.errors import InputError
from guards.progress import progress
from guards.protect.codec import UnsupportedPixelsError, decode, to_unit

logger = logging.getLogger(__name__)

USABLE_STATUSES: tuple[str, ...] = ("published", "indexed")


@dataclass(frozen=True)
class ImageSet:
    """Images of one tree: ``pixels`` is N x 1 x size x size float32 in [0, 1], one row per instance."""

    pixels: torch.Tensor
    sop_uids: tuple[str, ...]
    study_uids: tuple[str, ...]
    paths: tuple[str, ...]  # relative to the tree's root, POSIX separators
    examined: dict[str, int] = field(default_factory=dict)  # files, loaded, skipped

    def __post_init__(self) -> None:
        n = int(self.pixels.shape[0])
        if not (len(self.sop_uids) == len(self.study_uids) == len(self.paths) == n):
            raise ValueError(f"ImageSet: {n} images but {len(self.sop_uids)} SOP UIDs / {len(self.paths)} paths")

    def __len__(self) -> int:
        return len(self.sop_uids)

    def subset(self, rows: Sequence[int] | np.ndarray) -> ImageSet:
        """The images at ``rows`` (in that order)."""
        idx = [int(i) for i in rows]
        return ImageSet(
            pixels=self.pixels[idx],
            sop_uids=tuple(self.sop_uids[i] for i in idx),
            study_uids=tuple(self.study_uids[i] for i in idx),
            paths=tuple(self.paths[i] for i in idx),
            examined=dict(self.examined),
        )


@dataclass(frozen=True)
class LabelledImages:
    """Images joined to the cohort: per image its patient, label and subgroup values (``column=value``)."""

    images: ImageSet
    patient_ids: tuple[str, ...]
    labels: np.ndarray  # int64, -1 when unknown
    subgroups: dict[str, tuple[str, ...]]  # column -> value per image
    examined: dict[str, int]


def _to_unit(ds: pydicom.Dataset) -> np.ndarray:
    """The first frame as displayed, a 2-D float32 array in [0, 1]: ``guards.protect.codec``'s transform.

    ``decode`` decompresses ``ds`` in place and takes the window from the whole instance; only the first frame
    is mapped. Raises ``UnsupportedPixelsError`` for pixels the codec cannot display.
    """
    block = decode(ds)
    first = dataclasses.replace(block, stored=block.stored[:1])
    unit: np.ndarray = to_unit(first)[0]
    return unit


def _resize(unit: np.ndarray, size: int) -> torch.Tensor:
    t = torch.from_numpy(unit.astype(np.float32))[None, None]
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="area" if min(t.shape[-2:]) >= size else "bilinear")
    return t[0].clamp_(0.0, 1.0)


def _manifest_paths(tree: Path, manifest: pa.Table | None) -> list[str] | None:
    if manifest is None:
        path = tree / "manifest.parquet"
        if not path.is_file():
            return None
        manifest = pq.read_table(path)
    if "path" not in manifest.column_names:
        raise InputError(f"manifest of {tree} has no 'path' column; pass a manifest with the guards schema")
    rows = manifest.to_pylist()
    out = []
    for row in rows:
        if row.get("status", "published") not in USABLE_STATUSES:
            continue
        if row.get("has_pixels") is False:
            continue
        out.append(str(row["path"]))
    return out


def load_images(tree: Path, *, size: int, manifest: pa.Table | None = None) -> ImageSet:
    """Every usable image of ``tree`` as an :class:`ImageSet` at ``size x size``.

    Files come from ``manifest`` (rows with status published/indexed and pixels), else from
    ``tree/manifest.parquet``, else from every file under ``tree`` outside hidden and ``quarantine`` folders.
    Files without pixel data, that cannot be decoded, or whose pixels the protect codec cannot display (PALETTE
    COLOR, 1- or 32-bit) are skipped and counted in ``examined["skipped"]``.
    Raises :class:`InputError` when the tree does not exist or holds no usable image.
    """
    tree = Path(tree)
    if size < 4:
        raise InputError(f"load_images: size {size} is too small; use at least 4 (e.g. 64)")
    if not tree.is_dir():
        raise InputError(f"image tree {str(tree)!r} does not exist; pass the release or source folder")
    rel_paths = _manifest_paths(tree, manifest)
    if rel_paths is None:
        rel_paths = sorted(
            p.relative_to(tree).as_posix()
            for p in tree.rglob("*")
            if p.is_file()
            and p.suffix.lower() not in {".parquet", ".csv", ".json", ".txt", ".html", ".tmp"}
            and not any(part.startswith(".") or part == "quarantine" for part in p.relative_to(tree).parts[:-1])
        )
    records: list[tuple[str, str, str, torch.Tensor]] = []
    skipped = 0
    for rel in progress(rel_paths, total=len(rel_paths), what=f"load images from {tree.name}", logger=logger):
        try:
            ds = pydicom.dcmread(tree / rel)
            if "PixelData" not in ds:
                skipped += 1
                continue
            img = _resize(_to_unit(ds), size)
            records.append((str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), rel, img))
        except UnsupportedPixelsError as e:  # the one display transform cannot show it: no other is tried
            logger.warning("load_images: skipped %s (%s)", rel, e)
            skipped += 1
        except (InvalidDicomError, OSError, ValueError, AttributeError, NotImplementedError, RuntimeError) as e:
            logger.warning("load_images: skipped %s (%s)", rel, type(e).__name__)
            skipped += 1
    if not records:
        raise InputError(
            f"no usable image in {str(tree)!r} ({len(rel_paths)} files examined, {skipped} skipped);"
            " check that the tree holds DICOM files with pixel data"
        )
    records.sort(key=lambda r: r[0])
    return ImageSet(
        pixels=torch.stack([r[3] for r in records]),
        sop_uids=tuple(r[0] for r in records),
        study_uids=tuple(r[1] for r in records),
        paths=tuple(r[2] for r in records),
        examined={"files": len(rel_paths), "loaded": len(records), "skipped": skipped},
    )


def align(release: ImageSet, source: ImageSet) -> tuple[ImageSet, ImageSet]:
    """The images present in both trees, in the same row order (joined on ``SOPInstanceUID``)."""
    src_row = {uid: i for i, uid in enumerate(source.sop_uids)}
    rel_rows = [i for i, uid in enumerate(release.sop_uids) if uid in src_row]
    if not rel_rows:
        raise InputError(
            "release and source share no SOPInstanceUID; pass as source_dir the de-identified tree the release"
            " was protected from"
        )
    return release.subset(rel_rows), source.subset([src_row[release.sop_uids[i]] for i in rel_rows])


def label_images(images: ImageSet, cohort: pa.Table, *, subgroups: Sequence[str]) -> LabelledImages:
    """Join images to the cohort on ``StudyInstanceUID``; images of studies missing or not included are dropped.

    Subgroup columns missing from the cohort are skipped with a warning (cohort contract: docs/CONTRACTS.md).
    """
    needed = {"StudyInstanceUID", "PatientID", "label"}
    missing = needed - set(cohort.column_names)
    if missing:
        raise InputError(f"cohort lacks column(s) {sorted(missing)}; build it with guards.cohort.build_cohort")
    cols = [c for c in subgroups if c in cohort.column_names]
    for c in subgroups:
        if c not in cols:
            logger.warning("cohort has no subgroup column %r; it is not reported", c)
    rows = cohort.to_pylist()
    by_study = {
        str(r["StudyInstanceUID"]): r for r in rows if r.get("included", True) is not False
    }
    keep = [i for i, s in enumerate(images.study_uids) if s in by_study]
    kept = images.subset(keep)
    recs = [by_study[s] for s in kept.study_uids]
    labels = np.array([int(r["label"]) if r["label"] is not None else -1 for r in recs], dtype=np.int64)
    return LabelledImages(
        images=kept,
        patient_ids=tuple(str(r["PatientID"]) for r in recs),
        labels=labels,
        subgroups={c: tuple("unknown" if r[c] is None else str(r[c]) for r in recs) for c in cols},
        examined={"images": len(kept), "images_without_study": len(images) - len(kept), "studies": len(by_study)},
    )


def load_labelled_pair(
    release_dir: Path, source_dir: Path, *, size: int, cohort: pa.Table, subgroups: Sequence[str]
) -> tuple[LabelledImages, LabelledImages]:
    """The release's images and the clean source's images of the same instances, in the same row order, each
    joined to the cohort (labels, patients, subgroups): what the membership and unlearnability checks compare."""
    release, source = align(load_images(Path(release_dir), size=size), load_images(Path(source_dir), size=size))
    return (label_images(release, cohort, subgroups=subgroups), label_images(source, cohort, subgroups=subgroups))
