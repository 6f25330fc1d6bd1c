"""Atomic file writes: a file appears under its final name complete or not at all.

Every writer of a DICOM file in a run (samples, de-identification, protection, remediation), of a manifest and
of a check result goes through here,
so that a crash or a killed worker never leaves a partial file where a release or a later step would read it.
The temporary name is hidden (``.<name>.tmp``) in the same folder, so the rename is atomic on POSIX.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset

PRIVATE_DIR_MODE, PRIVATE_FILE_MODE = 0o700, 0o600


def private_folder(path: Path) -> Path:
    """A folder only its owner can enter (0700), created when missing: the run's PHI side (the ingest
    snapshot, the crosswalk, the caches) lives under such folders, whatever the umask."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(PRIVATE_DIR_MODE)
    return path


@contextmanager
def replacing(path: Path, *, mode: int | None = None) -> Iterator[Path]:
    """The temporary path to write ``path``'s new content to: renamed over ``path`` when the block ends, removed
    when it raises (the folder is created first). ``mode``: set on the file before it appears."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        if mode is not None:
            tmp.chmod(mode)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def copy_file(src: Path, dst: Path) -> None:
    with replacing(dst) as tmp:
        shutil.copyfile(src, tmp)


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


LOCK_NAME = ".guard.lock"


@contextmanager
def exclusive(folder: Path, *, what: str) -> Iterator[None]:
    """Hold the lock of ``folder`` (``folder/.guard.lock``, an advisory ``flock``) for the block, or refuse.

    Two ``guard run`` on one OUT would interleave steps of one run and publish from half-written trees: the second
    is refused at once, naming what holds the lock. The lock is released when the block ends or the process dies.
    """
    import fcntl
    import os

    from guards.errors import InputError

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise InputError(f"{folder} is in use by {holder}; wait for it to finish, or use another OUT") from None
        f.seek(0)
        f.truncate()
        f.write(f"{what} (pid {os.getpid()})\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
