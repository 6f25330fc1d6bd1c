"""Where the public third-party DICOM test files lie on disk (never downloaded at run time).

- pydicom's own test files (``pydicom/data/test_files``), shipped inside the pydicom wheel;
- the ``pydicom-data`` package (module ``data_store``), read from disk: pydicom's ``get_testdata_file`` would
  try to download files it lacks and retry for minutes, so it is never called;
- the ``deid-data`` package (module ``deid_data``): ultrasounds with burned-in PHI.

Used by tests and benchmarks; a user's pipeline never reads these.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def pydicom_test_dir() -> Path:
    """pydicom's bundled test files folder."""
    root = _package_dir("pydicom")
    if root is None:
        raise FileNotFoundError("pydicom is not installed")
    return root / "data" / "test_files"


def pydicom_data_dir() -> Path | None:
    """The pydicom-data package's data folder, or None when the package is not installed."""
    root = _package_dir("data_store")
    return None if root is None else root / "data"


def deid_data_dir() -> Path | None:
    """The deid-data package's data folder, or None when the package is not installed."""
    root = _package_dir("deid_data")
    return None if root is None else root / "data"


def files_under(root: Path) -> list[Path]:
    """Every regular file under ``root`` except Python sources and caches, sorted."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix not in {".py", ".pyc"} and "__pycache__" not in p.parts
    )


def pydicom_test_files() -> list[Path]:
    """Every file among pydicom's test files (DICOM or not: ingest must account for all of them)."""
    return files_under(pydicom_test_dir())


def pydicom_data_files() -> list[Path]:
    """Every file in pydicom-data; empty when the package is absent."""
    d = pydicom_data_dir()
    return [] if d is None else files_under(d)
