"""De-identify a source tree: ingest, then every indexed instance through :func:`deidentify_dataset`.

:func:`deidentify_tree` writes two folders, which must not overlap (docs/CONTRACTS.md, docs/ARCHITECTURE.md).

``dst``, the de-identified tree, holds de-identified values only, so that it can be shared as it is:

- ``<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` with the pseudonymous UIDs as names: no
  original file name or folder (which can carry PHI) survives into the tree;
- ``manifest.parquet`` (MANIFEST_SCHEMA), one row per input file: ``published`` rows as written (``source_path``
  null); ``quarantined`` / ``excluded`` rows with only ``status``, the cause of ``reason`` (:func:`cause`) and a
  stand-in ``path`` (``<status>/<keyed hash of the source path>``), every other column null.

``private`` (default ``<dst>.private`` beside ``dst``; 0700, files holding original values 0600) holds everything
that carries original values:

- ``ingest/``: the ingest index (``index.parquet``, original header values) and ``ingest/quarantine/``, raw
  copies of the files ingest could not use;
- ``quarantine/``: instances that must not be published (e.g. pixel cleaning could not clean them), written
  de-identified in their headers for a steward to review (their pixels may still show text);
- ``manifest.parquet``: the full manifest, every row with its values, ``source_path`` and reason (paths of
  ``quarantine/`` rows are relative to ``private``);
- the private crosswalk (CROSSWALK_SCHEMA) is written only to ``crosswalk`` when given, which must lie outside
  ``dst``.

:func:`deidentify_index` (the pipeline's shards, into a private run folder) writes ``quarantine/`` and the full
manifest where it is told, by default under its ``dst``.

Every file is written to a temporary name and renamed; pixel data is copied byte for byte, in its transfer
syntax, unless pixel cleaning changed it (then a compressed input is written again losslessly, ``pixels.encode``,
:mod:`guards.codec`); the manifest's ``TransferSyntaxUID`` is the syntax as written.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from guards.atomic import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, private_folder, save_dataset
from guards.deid.engine import InstanceQuarantined, _deidentify
from guards.deid.ocr_cache import OcrCache
from guards.deid.writer import encode_part10
from guards.errors import GuardError, InputError
from guards.keys import PseudonymKey
from guards.manifest import (
    CROSSWALK_SCHEMA,
    HEADER_KEYWORDS,
    MANIFEST_SCHEMA,
    STATUSES,
    cause,
    to_table,
    write_table,
)
from guards.policy import ReleasePolicy
from guards.progress import progress

log = logging.getLogger(__name__)

QUARANTINE = "quarantine"
INGEST_DIR = "ingest"  # under the private folder
PRIVATE_SUFFIX = ".private"  # the default private folder: <dst>.private beside dst
_OLD_LAYOUT = (".ingest", QUARANTINE)  # what earlier versions wrote inside dst, with original values
# Errors pydicom raises on a file it cannot decode or encode: the file is quarantined with the message.
_FILE_ERRORS = (InvalidDicomError, ValueError, TypeError, KeyError, AttributeError, NotImplementedError,
                struct.error, OverflowError, EOFError)


@dataclass(frozen=True)
class DeidResult:
    """What :func:`deidentify_tree` / :func:`deidentify_index` wrote: the tree, its manifest, and rows per status.

    ``table`` is the full manifest (original values, ``source_path``): private, never to be written into a tree
    that is shared. From :func:`deidentify_tree`, ``manifest_path`` is the tree's de-identified manifest and
    ``private_manifest_path`` the full one under ``private_root``; from :func:`deidentify_index`,
    ``manifest_path`` is the full manifest and the private fields are None.
    """

    root: Path
    manifest_path: Path
    counts: dict[str, int]  # seen, published, quarantined, excluded
    table: pa.Table = field(repr=False)
    crosswalk_path: Path | None = None
    private_root: Path | None = None
    private_manifest_path: Path | None = None


_HEADER_TAGS: tuple[tuple[str, int], ...] = tuple((k, int(tag_for_keyword(k) or 0)) for k in HEADER_KEYWORDS)
_INT_TAGS = {"Rows": 0x00280010, "Columns": 0x00280011, "NumberOfFrames": 0x00280008, "BitsAllocated": 0x00280100,
             "SamplesPerPixel": 0x00280002}
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


def _text(ds: Dataset, tag: int) -> str | None:
    """An element's value as text for the manifest; plain ASCII raw values are read without decoding."""
    if tag not in ds:
        return None
    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes) and elem.value.isascii():
        return elem.value.decode("ascii").strip(" \x00")
    value = ds[tag].value
    if value is None:
        return ""
    if isinstance(value, list | tuple | MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def _int(ds: Dataset, tag: int) -> int | None:
    if tag not in ds:
        return None
    value = ds[tag].value
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _row(path: str, source_path: str, ds: Dataset, data: bytes, status: str, reason: str) -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in MANIFEST_SCHEMA.names}
    meta = getattr(ds, "file_meta", None)
    row.update(
        path=path,
        source_path=source_path,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        status=status,
        reason=reason,
        TransferSyntaxUID=str(meta[0x00020010].value) if meta is not None and 0x00020010 in meta else None,
        has_pixels=any(t in ds for t in _PIXEL_TAGS),
        is_dicomdir=False,
    )
    for keyword, tag in _INT_TAGS.items():
        row[keyword] = _int(ds, tag)
    for keyword, tag in _HEADER_TAGS:
        row[keyword] = _text(ds, tag)
    return row


def _out_name(ds: Dataset, source_path: str, key: PseudonymKey) -> str:
    parts = []
    for keyword, tag in (("StudyInstanceUID", 0x0020000D), ("SeriesInstanceUID", 0x0020000E),
                         ("SOPInstanceUID", 0x00080018)):
        value = _text(ds, tag) or ""
        if not value:
            value = "x" + key.hmac(f"{keyword}:{source_path}", purpose="path").hex()[:24]
        parts.append(value)
    return f"{parts[0]}/{parts[1]}/{parts[2]}.dcm"


def _index(src: str | Path, private: Path, policy: ReleasePolicy) -> tuple[Path, list[dict[str, Any]]]:
    """The ingest index of ``src`` (guards.ingest), as rows; its files (original values, raw copies of quarantined
    files) go under ``private/ingest``, never into the de-identified tree."""
    from guards.ingest import ingest

    out_dir = private_folder(private / INGEST_DIR)
    result = ingest(src, out_dir=out_dir, policy=policy.ingest)
    _owner_only(out_dir)
    return Path(result.root), result.table.to_pylist()


def default_private(dst: Path) -> Path:
    """The private folder used when none is given: ``<dst>.private`` beside ``dst``."""
    dst = Path(dst).resolve()
    return dst.parent / f"{dst.name}{PRIVATE_SUFFIX}"


def _owner_only(folder: Path) -> None:
    """Folders 0700 and files 0600 under ``folder`` (written by this module or ingest, whatever the umask)."""
    if not folder.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(folder):
        os.chmod(dirpath, PRIVATE_DIR_MODE)
        for name in filenames:
            p = Path(dirpath, name)
            if not p.is_symlink():
                p.chmod(PRIVATE_FILE_MODE)
        dirnames[:] = [d for d in dirnames if not Path(dirpath, d).is_symlink()]


def _public_row(row: dict[str, Any], key: PseudonymKey) -> dict[str, Any]:
    """A full manifest row as the de-identified tree's manifest keeps it: de-identified values only.

    Published rows keep their (de-identified) values, without ``source_path``. Quarantined and excluded rows
    keep their status and the cause of their reason (the detail can quote paths or values); ``path`` is a
    stand-in keyed by the pseudonym key (an unkeyed hash of a guessable source path would confirm the guess), and
    every other column is null: header values, sizes and the sha256 of files that are not in the tree (a hash
    of an original file lets whoever holds the file confirm it was an input).
    """
    if row["status"] == "published":
        return {**row, "source_path": None}
    source = str(row.get("source_path") or row["path"])
    public: dict[str, Any] = {name: None for name in MANIFEST_SCHEMA.names}
    public.update(path=f"{row['status']}/{key.hmac(source, purpose='manifest-path').hex()[:16]}",
                  status=row["status"], reason=cause(row.get("reason")))
    return public


def deidentify_tree(
    src: str | Path,
    dst: Path,
    *,
    policy: ReleasePolicy,
    key: PseudonymKey,
    crosswalk: Path | None = None,
    private: Path | None = None,
) -> DeidResult:
    """Ingest ``src`` and write every indexed instance de-identified under ``dst`` (PS3.15 Annex E).

    Everything holding original values goes under ``private`` (default :func:`default_private`), which must not
    overlap ``dst`` (module docstring). Returns a :class:`DeidResult`; ``dst/manifest.parquet`` and
    ``private/manifest.parquet`` have one row per input file.
    """
    dst = Path(dst).resolve()
    private = Path(private).resolve() if private is not None else default_private(dst)
    if private == dst or dst in private.parents:
        raise InputError(
            f"private folder {str(private)!r} lies inside the de-identified tree {str(dst)!r}; it holds original "
            f"values: put it outside (e.g. {str(default_private(dst))!r}, the default)"
        )
    if private in dst.parents:
        raise InputError(
            f"the de-identified tree {str(dst)!r} lies inside the private folder {str(private)!r}; "
            "use two separate folders (the tree is shared, the private folder never is)"
        )
    if crosswalk is not None:
        crosswalk = Path(crosswalk).resolve()
        if crosswalk == dst or dst in crosswalk.parents:
            raise InputError(
                f"crosswalk {str(crosswalk)!r} lies inside the de-identified tree {str(dst)!r}; "
                "write it outside (e.g. OUT/private/crosswalk.parquet)"
            )
    dst.mkdir(parents=True, exist_ok=True)
    private_folder(private)
    remove_partial(dst)
    quarantine = private_folder(private / QUARANTINE)
    remove_partial(quarantine)
    for name in _OLD_LAYOUT:
        if (dst / name).exists():
            log.warning("deid: %s was written by an earlier version and holds original values; delete it before "
                        "sharing %s (they now go under %s)", dst / name, dst, private)
    root, index_rows = _index(src, private, policy)
    result = deidentify_index(root, index_rows, dst, policy=policy, key=key, crosswalk=crosswalk,
                              manifest_path=private / "manifest.parquet", quarantine=quarantine,
                              manifest_mode=PRIVATE_FILE_MODE)
    _owner_only(quarantine)
    public = to_table(_public_row(r, key) for r in result.table.to_pylist())
    manifest_path = dst / "manifest.parquet"
    write_table(public, manifest_path)
    log.info("deid: de-identified tree %s; original values (private, never to be shared) under %s", dst, private)
    return replace(result, manifest_path=manifest_path, private_root=private,
                   private_manifest_path=result.manifest_path)


def deidentify_index(
    root: Path,
    index_rows: list[dict[str, Any]],
    dst: Path,
    *,
    policy: ReleasePolicy,
    key: PseudonymKey,
    crosswalk: Path | None = None,
    manifest_path: Path | None = None,
    ocr_cache: Path | None = None,
    quarantine: Path | None = None,
    manifest_mode: int | None = None,
) -> DeidResult:
    """De-identify the files of ingest index rows (read under ``root``) into ``dst``.

    ``ocr_cache``: a private folder of earlier runs' Clean Pixel Data decisions (``guards.deid.ocr_cache``);
    frames read before are not read again. ``quarantine``: the folder for instances that must not be published
    (default ``dst/quarantine``); their rows' ``path`` is ``quarantine/<name>``, relative to its parent.
    ``manifest_path`` (default ``dst/manifest.parquet``) gets the full manifest, file mode ``manifest_mode``.

    Rows already quarantined or excluded by ingest are carried over with their reason. Used whole by
    :func:`deidentify_tree`, and one shard (a group of patients) at a time by the pipeline, where several
    shards write into the same ``dst`` in parallel, each with its own ``manifest_path`` and crosswalk.
    """
    dst = Path(dst).resolve()
    pairs: dict[tuple[str, str], str] | None = {} if crosswalk is not None else None
    rows: list[dict[str, Any]] = []
    written: dict[str, str] = {}
    indexed = [r for r in index_rows if r["status"] == "indexed"]
    for r in index_rows:
        if r["status"] != "indexed":  # already quarantined / excluded by ingest: carried over with its reason
            rows.append({**r, "path": r.get("source_path") or r["path"]})
    cache = OcrCache(ocr_cache) if ocr_cache is not None else None
    quarantine = Path(quarantine) if quarantine is not None else dst / QUARANTINE
    for r in progress(indexed, total=len(indexed), what="deid", logger=log):
        source_path = r.get("source_path") or r["path"]
        try:
            row = _one(root / r["path"], source_path, dst, policy=policy, key=key, pairs=pairs, written=written,
                       ocr_cache=cache, quarantine=quarantine, sha256=r.get("sha256"))
        except GuardError:
            raise  # the run's own errors (policy, key, a missing engine) are not one file's
        except Exception as e:  # noqa: BLE001 - one bad file never stops the run (RecursionError, a decoder's ...)
            log.warning("deid: a file could not be de-identified (%s); quarantined", type(e).__name__)  # no path: PHI
            first = str(e).splitlines()[0] if str(e) else ""
            row = {name: None for name in MANIFEST_SCHEMA.names}
            row.update(path=source_path, source_path=source_path, status="quarantined",
                       reason=f"cannot be de-identified: {type(e).__name__}: {first}"[:500])
        rows.append(row)
    if cache is not None:
        log.info("deid: OCR decisions replayed from earlier runs: %d; read now: %d", cache.hits, cache.misses)
    table = to_table(rows)
    manifest_path = manifest_path or dst / "manifest.parquet"
    write_table(table, manifest_path, mode=manifest_mode)
    if crosswalk is not None and pairs is not None:
        cw = to_table(
            [{"kind": k, "original": o, "pseudonym": p} for (k, o), p in sorted(pairs.items())], CROSSWALK_SCHEMA
        )
        write_table(cw, crosswalk, mode=PRIVATE_FILE_MODE)  # original -> pseudonym: owner only
    counts = {s: 0 for s in STATUSES if s != "indexed"}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    counts["seen"] = len(rows)
    log.info("deid: %s", counts)
    return DeidResult(root=dst, manifest_path=manifest_path, counts=counts, table=table, crosswalk_path=crosswalk)


def _one(
    path: Path,
    source_path: str,
    dst: Path,
    *,
    policy: ReleasePolicy,
    key: PseudonymKey,
    pairs: dict[tuple[str, str], str] | None,
    written: dict[str, str],
    ocr_cache: OcrCache | None = None,
    quarantine: Path | None = None,
    sha256: str | None = None,
) -> dict[str, Any]:
    """De-identify and write one instance; a manifest row whatever happens to it.

    ``written``: (pseudonymous) SOPInstanceUID -> source path of the instances published so far.
    ``quarantine``: where an instance that must not be published is written (default ``dst/quarantine``).
    ``sha256``: the file's hash as ingest recorded it. The file is read once, hashed and parsed from those bytes:
    a file that changed since ingest (swapped, rewritten) is quarantined, since the index, the cohort and the
    representation check describe what ingest read. No recorded hash quarantines too (fail closed).
    """
    quarantine = quarantine if quarantine is not None else dst / QUARANTINE
    def failed(reason: str) -> dict[str, Any]:
        row: dict[str, Any] = {name: None for name in MANIFEST_SCHEMA.names}
        first_line = reason.strip().splitlines()[0] if reason.strip() else "unknown error"
        row.update(path=source_path, source_path=source_path, status="quarantined", reason=first_line[:500])
        return row

    try:
        raw = path.read_bytes()
    except OSError as e:
        return failed(f"unreadable at deid: {type(e).__name__}: {e}")
    if not sha256:
        return failed("no SHA-256 recorded at ingest: cannot verify the file is the one ingest indexed")
    if hashlib.sha256(raw).hexdigest() != sha256:
        return failed("changed since ingest: its SHA-256 differs from the one ingest recorded (a swapped or"
                      " rewritten source file); run again to index the new file")
    try:
        ds = dcmread(io.BytesIO(raw), force=True)  # ingest indexed it: files without the preamble are accepted too
    except _FILE_ERRORS as e:
        return failed(f"unreadable at deid: {type(e).__name__}: {e}")
    try:
        _deidentify(ds, policy=policy, key=key, crosswalk=pairs, ocr_cache=ocr_cache)
    except InstanceQuarantined as e:
        name = _out_name(ds, source_path, key)
        rel = f"{quarantine.name}/{name}"
        try:
            data = save_dataset(ds, quarantine / name, encode=encode_part10)
        except _FILE_ERRORS as we:
            return failed(f"{e.reason}; and not writable: {type(we).__name__}: {we}")
        return _row(rel, source_path, ds, data, "quarantined", e.reason)
    except _FILE_ERRORS as e:
        return failed(f"cannot be de-identified: {type(e).__name__}: {e}")
    rel = _out_name(ds, source_path, key)
    # One published file per SOPInstanceUID (PS3.3 C.12.1.1.1: it identifies the instance), whatever the study
    # and series UIDs say: a copy that lost them (cut short) would otherwise get another path.
    instance = _text(ds, 0x00080018) or rel
    if instance in written:
        row = failed(f"duplicate SOPInstanceUID: the same instance as {written[instance]!r}, which is published")
        row["status"] = "excluded"
        return row
    try:
        data = save_dataset(ds, dst / rel, encode=encode_part10)
    except _FILE_ERRORS as e:
        return failed(f"cannot be written as DICOM Part 10: {type(e).__name__}: {e}")
    written[instance] = source_path
    return _row(rel, source_path, ds, data, "published", "")


def remove_partial(dst: Path) -> None:
    """Remove temporary files a crashed run left behind (they never carry a final name)."""
    for p in dst.rglob(".*.tmp"):
        os.unlink(p)


__all__ = ["DeidResult", "default_private", "deidentify_index", "deidentify_tree", "remove_partial"]
