"""Atomic file writes: a file appears under its final name complete or not at all.

Every writer of a DICOM file in a run (samples, de-identification, protection, remediation) goes through here,
so that a crash or a killed worker never leaves a partial file where a release or a later step would read it.
The temporary name is hidden (``.<name>.tmp``) in the same folder, so the rename is atomic on POSIX.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name, then rename; the temporary file is removed on error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary name, then rename."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(dst)
    try:
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def part10_bytes(ds: Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file by pydicom (preamble, File Meta Information, the dataset)."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def save_dataset(ds: Dataset, path: Path, *, encode: Callable[[Dataset], bytes] = part10_bytes) -> bytes:
    """Encode ``ds`` (pydicom's writer unless ``encode`` is given) and write it atomically; returns the bytes."""
    data = encode(ds)
    write_bytes(path, data)
    return data
