"""Synthetic DICOM corpora for the model-based checks' tests and benchmark (no real patient data).

Each patient has one study of ``images_per_study`` Secondary Capture instances (MONOCHROME2, 12 bits).
The label is visible as a faint disc on a textured background, so a small CNN can learn it from clean data.
Scenarios:

- ``minority_duplicated``: the minority ethnic group's images are atypical (their own texture, labels that
  the disc does not explain) and every study is duplicated ``duplicate`` times, so a model trained on them
  memorises those patients: inflated membership risk concentrated in one subgroup (Knolle et al., 2026).
- ``protect_release(...)``: writes a release tree from a source tree with class-wise additive noise of
  L-infinity size ``epsilon`` (the shortcut noise of unlearnable examples, Huang et al. 2021, arXiv
  2101.04898), or unchanged (a release whose noise was left out), or random sign noise (control).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_ROOT_UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

MAX_VALUE = 4095


@dataclass(frozen=True)
class Corpus:
    root: Path
    cohort: pa.Table
    labels: dict[str, int]  # StudyInstanceUID -> label
    files: list[Path]


def _uid(*parts: object) -> str:
    return str(generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=[str(p) for p in parts]))  # deterministic


def _texture(rng: np.random.Generator, size: int, *, scale: int) -> np.ndarray:
    """Smooth random texture in [0, 1] (white noise upsampled from a coarse grid)."""
    coarse = rng.random((size // scale + 2, size // scale + 2))
    fine = np.kron(coarse, np.ones((scale, scale)))[:size, :size]
    return fine


def _image(rng: np.random.Generator, size: int, label: int, *, atypical: bool, signal: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    if atypical:
        img = 0.35 + 0.5 * _texture(rng, size, scale=2)  # a distinct, high-frequency look
        shown = int(rng.integers(0, 2))  # the disc does not follow the label: only memorising fits these
    else:
        img = 0.3 + 0.3 * _texture(rng, size, scale=max(size // 8, 1))
        shown = label
    if shown:
        cy, cx = 0.5 + rng.uniform(-0.15, 0.15, size=2)
        img = img + signal * (((yy - cy) ** 2 + (xx - cx) ** 2) < 0.04)
    img = img + rng.normal(0.0, 0.03, size=img.shape)
    img = np.clip(img, 0.0, 1.0)
    img[0, 0], img[-1, -1] = 0.0, 1.0  # fixed range, so per-image scaling keeps absolute intensities
    return img


def write_instance(path: Path, unit: np.ndarray, *, patient: str, study: str, sop: str, series: str) -> None:
    """One Secondary Capture instance with ``unit`` (values in [0, 1]) as 12-bit MONOCHROME2 pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientID = patient
    ds.Modality = "OT"
    ds.Rows, ds.Columns = unit.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.round(np.clip(unit, 0, 1) * MAX_VALUE).astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def make_corpus(
    root: Path,
    *,
    patients: int,
    size: int,
    seed: int,
    images_per_study: int = 2,
    minority_share: float = 0.1,
    minority_duplicated: bool = False,
    duplicate: int = 4,
    signal: float = 0.15,
) -> Corpus:
    """Write a synthetic source tree under ``root`` and return it with its cohort table."""
    rng = np.random.default_rng(seed)
    rows = []
    files: list[Path] = []
    labels: dict[str, int] = {}
    n_minority = max(int(round(patients * minority_share)), 2)
    for p in range(patients):
        minority = p < n_minority
        pid = f"PAT{p:05d}"
        study = _uid(seed, "study", p)
        series = _uid(seed, "series", p)
        label = p % 2
        labels[study] = label
        atypical = minority and minority_duplicated
        copies = duplicate if atypical else 1
        n = 0
        for i in range(images_per_study):
            img = _image(rng, size, label, atypical=atypical, signal=signal)
            for c in range(copies):
                sop = _uid(seed, "sop", p, i, c)
                path = root / pid / f"{i:02d}_{c:02d}.dcm"
                write_instance(path, img, patient=pid, study=study, sop=sop, series=series)
                files.append(path)
                n += 1
        rows.append(
            {
                "StudyInstanceUID": study,
                "PatientID": pid,
                "label": label,
                "sex": "F" if (p // 2) % 2 == 0 else "M",  # balanced against the label: independent of pixels
                "age_band": ["18-39", "40-64", "65-89"][int(rng.integers(0, 3))],
                "ethnic_group": "minority" if minority else "majority",
                "n_instances": n,
                "included": True,
                "exclusion_reason": "",
            }
        )
    return Corpus(root=root, cohort=pa.Table.from_pylist(rows), labels=labels, files=files)


def protect_release(
    source: Corpus, dst: Path, *, epsilon: float, mode: str = "classwise", seed: int = 0
) -> Path:
    """A release tree from ``source``: ``classwise`` shortcut noise (smooth blocks), ``classwise_fine`` (a
    class-phased per-pixel checkerboard), ``random`` sign noise, or ``none``."""
    if mode == "none":
        shutil.copytree(source.root, dst)
        return dst
    rng = np.random.default_rng(seed)
    patterns: dict[int, np.ndarray] = {}
    for path in source.files:
        ds = pydicom.dcmread(path)
        unit = ds.pixel_array.astype(np.float64) / MAX_VALUE
        if mode == "classwise":
            label = source.labels[str(ds.StudyInstanceUID)]
            if label not in patterns:
                block = max(unit.shape[0] // 8, 1)  # smooth blocks: a shortcut that survives pooling
                coarse = rng.choice([-1.0, 1.0], size=(unit.shape[0] // block + 1, unit.shape[1] // block + 1))
                patterns[label] = np.kron(coarse, np.ones((block, block)))[: unit.shape[0], : unit.shape[1]]
            noise = epsilon * patterns[label]
        elif mode == "classwise_fine":
            # A per-pixel checkerboard whose phase is the class: a shortcut made of the highest spatial frequency
            # only, which JPEG's quantisation and a blur remove (image shortcut squeezing, Liu et al. 2023).
            label = source.labels[str(ds.StudyInstanceUID)]
            yy, xx = np.indices(unit.shape)
            noise = epsilon * np.where((yy + xx) % 2 == label % 2, 1.0, -1.0)
        elif mode == "random":
            noise = epsilon * rng.choice([-1.0, 1.0], size=unit.shape)
        else:
            raise ValueError(f"mode {mode!r}: use classwise, classwise_fine, random or none")
        out = np.clip(unit + noise, 0.0, 1.0)
        out[0, 0], out[-1, -1] = 0.0, 1.0
        rel = path.relative_to(source.root)
        write_instance(
            dst / rel, out, patient=str(ds.PatientID), study=str(ds.StudyInstanceUID),
            sop=str(ds.SOPInstanceUID), series=str(ds.SeriesInstanceUID),
        )
    return dst
