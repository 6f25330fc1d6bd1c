"""What every PACS source shares: the study listing, retries, the ledger and the accounting of what never arrived.

A PACS source (guards.sources.dicomweb, guards.sources.dimse) is a :class:`Pacs`: it lists the studies
(``list_studies() -> list[Study]``, with the count the PACS reports for each) and retrieves one study as the bytes
of its Part 10 files, as stored (``fetch(study) -> Iterator[bytes]``). :func:`snapshot` does the rest, the same
for every protocol:

1. the studies that the ledger (guards.sources.ledger) holds unchanged are linked from its store into
   ``ingest/pacs/``; the others are retrieved, ``workers`` at a time, each into ``ingest/pacs/.<study>.partial/``
   renamed to ``ingest/pacs/<StudyInstanceUID>/`` when done, every instance as ``<SOPInstanceUID>.dcm``;
2. a study whose received count differs from the listed one, or whose retrieve fails, is retried ``retries``
   times (0.5 s, 1 s, 2 s ... apart); if it still differs, its received files are ``quarantined`` with the reason
   (held in ``ingest/quarantine/``) and an excluded row ``<study>/.not-received`` stands for what never arrived (the
   study is fetched again the next night);
3. :func:`guards.ingest.ingest` indexes ``ingest/pacs/`` like any local tree; labels and demographics are local
   tables copied into ``ingest/sidecars/`` (label rows keyed by AccessionNumber resolved through the listing).

Nothing from the listing (UIDs, accession numbers, dates) goes into a log line or an error: only counts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydicom import dcmread

from guards.atomic import replacing
from guards.errors import InputError
from guards.ingest import QUARANTINE, ingest
from guards.manifest import empty_row, to_table, write_table
from guards.progress import Steps
from guards.sources import SIDECARS, Snapshot, fingerprint
from guards.sources.ledger import Entry, Ledger, files_digest, source_id

if TYPE_CHECKING:
    from guards.policy import ReleasePolicy

logger = logging.getLogger(__name__)

RECEIVED = "pacs"  # ingest/pacs/: the local copy of the PACS studies (ingest.ingest clears ingest/fetched/ itself)
NOT_RECEIVED = ".not-received"
UID = re.compile(r"^[0-9][0-9.]{0,63}$")
COMMON_PARAMS = frozenset({"since", "lookback_days", "workers", "retries", "timeout", "labels", "ledger"})


@dataclass(frozen=True)
class Study:
    """One study as the PACS listed it."""

    uid: str
    folder: str
    expected: int | None  # NumberOfStudyRelatedInstances (None: the PACS did not say)
    accession: str | None
    study_date: str | None
    record_sha256: str  # sha256 of the listed record (the ledger's qido_sha256): a changed record is a change


@dataclass(frozen=True)
class Common:
    """The query parameters every PACS source takes."""

    since: date | None = None
    workers: int = 3
    retries: int = 2
    timeout: float = 60.0
    labels: str = ""
    ledger: bool = True


def int_param(params: dict[str, list[str]], name: str, default: int, lo: int, hi: int, *, what: str) -> int:
    if name not in params:
        return default
    raw = params[name][-1]
    try:
        value = int(raw)
    except ValueError:
        raise InputError(f"{what} source: {name}={raw!r} is not an integer ({lo}-{hi})") from None
    if not lo <= value <= hi:
        raise InputError(f"{what} source: {name}={value} is out of range ({lo}-{hi})")
    return value


def common(params: dict[str, list[str]], *, what: str, known: frozenset[str] = COMMON_PARAMS,
           today: date | None = None) -> Common:
    """The common parameters of a parsed query string; unknown names (not in ``known``) are refused."""
    unknown = sorted(set(params) - known)
    if unknown:
        raise InputError(f"{what} source: unknown parameter(s) {unknown}; known: {sorted(known)}")
    today = today or datetime.now(UTC).date()
    bounds: list[date] = []
    if "since" in params:
        raw = params["since"][-1]
        try:
            bounds.append(datetime.strptime(raw, "%Y%m%d").date())
        except ValueError:
            raise InputError(f"{what} source: since={raw!r} is not a date YYYYMMDD") from None
    if "lookback_days" in params:
        bounds.append(today - timedelta(days=int_param(params, "lookback_days", 0, 0, 365_000, what=what)))
    labels = params.get("labels", [""])[-1]
    if labels and not Path(labels).is_absolute():
        raise InputError(f"{what} source: labels={labels!r} must be an absolute local path")
    ledger = params.get("ledger", ["on"])[-1].lower()
    if ledger not in ("on", "off"):
        raise InputError(f"{what} source: ledger={ledger!r}; use on or off")
    return Common(since=max(bounds) if bounds else None,
                  workers=int_param(params, "workers", 3, 1, 16, what=what),
                  retries=int_param(params, "retries", 2, 0, 10, what=what),
                  timeout=float(int_param(params, "timeout", 60, 1, 3600, what=what)), labels=labels,
                  ledger=ledger == "on")


class Pacs(Protocol):
    """One PACS, as a source kind sees it."""

    @property
    def kind(self) -> str: ...  # the Snapshot's kind and the log lines' prefix: "dicomweb", "dimse"

    @property
    def display(self) -> str: ...  # the source as recorded: no credentials, no query

    @property
    def ledger_key(self) -> str: ...  # names the PACS's ledger (guards.sources.ledger.source_id)

    @property
    def common(self) -> Common: ...

    @property
    def count_origin(self) -> str: ...  # where the expected count came from, for the reasons

    @property
    def errors(self) -> tuple[type[Exception], ...]: ...  # what a failed retrieve raises (retried, then a reason)

    def list_studies(self) -> list[Study]: ...  # raises InputError when the query fails (fail closed)

    def fetch(self, study: Study) -> Iterator[bytes]: ...  # the study's Part 10 files as stored; thread-safe

    def reason(self, error: Exception) -> str: ...  # a failed retrieve in words, without secrets or PHI


def study_folder(uid: str) -> str:
    return uid if UID.match(uid) else "study-" + hashlib.sha256(uid.encode()).hexdigest()[:24]


def instance_name(data: bytes, n: int) -> str:
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPInstanceUID"], force=True)
        uid = str(ds.get("SOPInstanceUID", "")).strip(" \x00")
    except Exception:  # a part that is not DICOM keeps a neutral name; ingest quarantines it
        uid = ""
    return f"{uid}.dcm" if UID.match(uid) else f"part-{n:05d}.dcm"


@dataclass
class Fetched:
    """What one study's retrieve gave, after its attempts."""

    study: Study
    received: int = 0
    attempts: int = 0
    files: list[tuple[str, str]] = field(default_factory=list)  # (name, sha256)
    problem: str = ""  # why incomplete; empty when complete

    @property
    def complete(self) -> bool:
        return not self.problem


class Retriever:
    """Retrieves studies of ``pacs`` into ``root``, each with its retries (called from a pool of threads)."""

    def __init__(self, pacs: Pacs, root: Path) -> None:
        self.pacs = pacs
        self.root = root

    def fetch(self, study: Study) -> Fetched:
        result = Fetched(study)
        retries = self.pacs.common.retries
        partial = self.root / f".{study.folder}.partial"
        errors: tuple[type[Exception], ...] = (ValueError, OSError, *self.pacs.errors)
        for attempt in range(1, retries + 2):
            result.attempts = attempt
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir(parents=True)
            files: list[tuple[str, str]] = []
            error = ""
            try:
                for n, data in enumerate(self.pacs.fetch(study)):
                    name = instance_name(data, n)
                    if (partial / name).exists():  # the same instance sent twice, or two parts without a UID
                        name = f"{name[:-4]}-{n:05d}.dcm"
                    with replacing(partial / name) as tmp:
                        tmp.write_bytes(data)
                    files.append((name, hashlib.sha256(data).hexdigest()))
            except errors as e:
                error = self.pacs.reason(e)
            result.received, result.files = len(files), files
            if error:
                result.problem = (f"retrieve failed ({error}) after {attempt} attempt(s), {len(files)} instance(s) "
                                  "received")
            elif study.expected is not None and len(files) != study.expected:
                result.problem = (f"{len(files)} of {study.expected} instances received ({self.pacs.count_origin}) "
                                  f"after {attempt} attempt(s)")
            else:
                result.problem = ""
                break
            if attempt <= retries:
                logger.warning("%s: attempt %d of %d: %s; retrying", self.pacs.kind, attempt, retries + 1,
                               result.problem)
                time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
        target = self.root / study.folder
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)
        return result


def local_table(named: str, what: str, out_dir: Path) -> Path | None:
    """A local copy under ingest/sidecars/ of the table at absolute path ``named`` (None when none is named)."""
    if not named:
        return None
    path = Path(named)
    if not path.is_absolute():
        raise InputError(f"{what} {named!r}: a PACS has no folder beside its studies; name the table by an absolute "
                         "local path")
    if not path.is_file():
        raise InputError(f"{what} {named!r} does not exist")
    target = out_dir / SIDECARS / path.name
    with replacing(target) as tmp:
        shutil.copyfile(path, tmp)
    return target


def resolve_accessions(labels: Path, studies: dict[str, str], *, kind: str) -> None:
    """Rows of the labels copy that name a study by AccessionNumber only get its StudyInstanceUID (the listing)."""
    with labels.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        names = list(reader.fieldnames or [])
        rows = list(reader)
    if "label" not in names or not ({"StudyInstanceUID", "AccessionNumber"} & set(names)):
        raise InputError(f"labels table {labels.name} needs the columns StudyInstanceUID (or AccessionNumber) and "
                         f"label; got {names}")
    if "AccessionNumber" not in names or all((r.get("StudyInstanceUID") or "").strip() for r in rows):
        return  # keyed by StudyInstanceUID: the copy stays byte for byte
    out: list[dict[str, str]] = []
    unresolved = 0
    for row in rows:
        uid = (row.get("StudyInstanceUID") or "").strip() or studies.get((row.get("AccessionNumber") or "").strip(), "")
        if uid:
            out.append({"StudyInstanceUID": uid, "AccessionNumber": row.get("AccessionNumber") or "",
                        "label": row["label"]})
        else:
            unresolved += 1
    if unresolved:
        logger.warning("%s: %d label row(s) name an AccessionNumber that the PACS did not list; they label "
                       "no study", kind, unresolved)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["StudyInstanceUID", "AccessionNumber", "label"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(out)
    with replacing(labels) as tmp:
        tmp.write_text(text.getvalue(), encoding="utf-8")


def _hold(src: Path, dst: Path) -> None:
    """``src`` at ``dst`` (a hard link on one file system, else a copy), as ingest's quarantine copies are."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        dst.hardlink_to(src)
    except OSError:
        shutil.copyfile(src, dst)


def ledger_folder(out_dir: Path, pacs: Pacs) -> Path | None:
    """``OUT/private/pacs/<source id>/`` when ``out_dir`` is a run's ingest folder (OUT/private/runs/<id>/ingest,
    :attr:`guards.run.RunPaths.ingest`)."""
    if not pacs.common.ledger:
        return None
    resolved = out_dir.resolve()
    private = resolved.parent.parent.parent
    if resolved.name != "ingest" or resolved.parent.parent.name != "runs" or private.name != "private":
        logger.info("%s: %s is not a run's ingest folder: no ledger, every study is fetched", pacs.kind, out_dir)
        return None
    return private / "pacs" / source_id(pacs.ledger_key)


def account(rows: list[dict[str, Any]], incomplete: dict[str, Fetched], *, root: Path,
            quarantine: Path) -> list[dict[str, Any]]:
    """Quarantine the received files of incomplete studies with the reason (each linked, or copied, from ``root``
    to ``quarantine/<path>`` as ingest quarantines a file); one excluded row for what never arrived."""
    for row in rows:
        fetched = incomplete.get(row["path"].split("/", 1)[0])
        if fetched is not None and row["status"] == "indexed":
            _hold(root / row["path"], quarantine / row["path"])
            row.update(status="quarantined", reason=f"incomplete study from the PACS: {fetched.problem}"[:500])
    for folder, fetched in incomplete.items():
        expected = fetched.study.expected
        missing = (expected - fetched.received) if expected is not None else None
        if missing is not None and missing <= 0 and fetched.received:
            continue  # more than expected (the study grew meanwhile): the received files carry the reason
        row = empty_row(f"{folder}/{NOT_RECEIVED}")
        what = f"{missing} instance(s)" if missing is not None else "instances"
        row.update(status="excluded", size=0, is_dicomdir=False, StudyInstanceUID=fetched.study.uid,
                   reason=f"not received from the PACS: {what} of the study never arrived: {fetched.problem}"[:500])
        rows.append(row)
    return sorted(rows, key=lambda r: r["path"])


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def snapshot(pacs: Pacs, *, out_dir: Path, policy: ReleasePolicy) -> Snapshot:
    """The snapshot of ``pacs`` under ``out_dir`` (the run's ingest folder), with its ledger when there is one."""
    out_dir = Path(out_dir)
    root = out_dir / RECEIVED
    if root.exists():
        shutil.rmtree(root)  # re-running ingest replaces its outputs
    root.mkdir(parents=True)
    if (out_dir / SIDECARS).exists():
        shutil.rmtree(out_dir / SIDECARS)
    folder = ledger_folder(out_dir, pacs)
    ledger = Ledger(folder) if folder is not None else None
    run_name = out_dir.resolve().parent.name
    since = pacs.common.since
    logger.info("%s: querying %s%s", pacs.kind, pacs.display, f" for studies since {since}" if since else "")
    if ledger is None:
        return _snapshot(pacs, root, out_dir, policy, None, run_name)
    with ledger.locked():
        return _snapshot(pacs, root, out_dir, policy, ledger, run_name)


def _snapshot(pacs: Pacs, root: Path, out_dir: Path, policy: ReleasePolicy, ledger: Ledger | None,
              run_name: str) -> Snapshot:
    kind, options = pacs.kind, pacs.common
    studies = pacs.list_studies()
    entries = ledger.load() if ledger is not None else {}
    listed = {s.uid for s in studies}
    to_fetch: list[Study] = []
    carried = 0
    for study in studies:
        old = entries.get(study.uid)
        unchanged = (old is not None and old.status == "complete" and old.expected == study.expected
                     and old.qido_sha256 == study.record_sha256)
        if unchanged and ledger is not None and old is not None and ledger.carry(old, root):
            carried += 1
        else:
            to_fetch.append(study)
    gone = 0
    window = f"{options.since:%Y%m%d}" if options.since else None
    for uid, old in sorted(entries.items()):
        if uid in listed or old.status == "gone":
            continue
        if window and (old.StudyDate is None or old.StudyDate < window):
            if ledger is not None and ledger.carry(old, root):  # outside tonight's window: carried unchecked
                carried += 1
            continue
        gone += 1
        entries[uid] = replace(old, status="gone", reason="no longer listed by the PACS", run=run_name,
                               updated_at=now())
        if ledger is not None:
            ledger.forget(old.folder)
    logger.info("%s: %d studies listed: %d to fetch, %d carried from the ledger, %d gone",
                kind, len(studies), len(to_fetch), carried, gone)

    retriever = Retriever(pacs, root)
    steps = Steps(len(to_fetch), what=f"{kind}: retrieve", logger=logger, unit="studies")
    incomplete: dict[str, Fetched] = {}
    with ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix=kind) as pool:
        for fetched in pool.map(retriever.fetch, to_fetch):
            steps.advance()
            study = fetched.study
            if not fetched.complete:
                incomplete[study.folder] = fetched
                logger.warning("%s: a study is incomplete and quarantined: %s", kind, fetched.problem)
            entries[study.uid] = Entry(
                StudyInstanceUID=study.uid, folder=study.folder, AccessionNumber=study.accession,
                StudyDate=study.study_date, expected=study.expected, received=fetched.received,
                qido_sha256=study.record_sha256, files_sha256=files_digest(fetched.files),
                status="complete" if fetched.complete else ("failed" if not fetched.received else "incomplete"),
                reason=fetched.problem, run=run_name, updated_at=now())
            if ledger is not None:
                if fetched.complete:
                    ledger.keep(study.folder, root / study.folder)
                else:
                    ledger.forget(study.folder)
    steps.done()

    result = ingest(root, out_dir=out_dir, policy=policy.ingest)
    rows = result.table.to_pylist()
    counts = dict(result.counts)
    if incomplete:
        rows = account(rows, incomplete, root=root, quarantine=out_dir / QUARANTINE)
        table = to_table(rows)
        write_table(table, result.index_path)
        counts = {"seen": len(rows), "indexed": 0, "quarantined": 0, "excluded": 0}
        for r in rows:
            counts[r["status"]] += 1
    if ledger is not None:
        ledger.save(entries)

    labels_named = options.labels or (policy.ingest.labels if Path(policy.ingest.labels).is_absolute() else "")
    if not labels_named and policy.ingest.labels:
        logger.info("%s: ingest.labels %r is relative: a PACS has no folder to find it in (give an absolute "
                    "path, or labels= in the source URL); no labels", kind, policy.ingest.labels)
    labels = local_table(labels_named, "labels table", out_dir)
    if labels is not None:
        by_accession = {s.accession: s.uid for s in studies if s.accession}
        by_accession.update({e.AccessionNumber: e.StudyInstanceUID for e in entries.values()
                             if e.AccessionNumber and e.AccessionNumber not in by_accession})
        resolve_accessions(labels, by_accession, kind=kind)
    demographics = local_table(policy.cohort.demographics, "cohort.demographics", out_dir)
    logger.info("%s: snapshot of %s: %s (%d fetched, %d carried, %d incomplete)", kind, pacs.display, counts,
                len(to_fetch), carried, len(incomplete))
    return Snapshot(kind=kind, root=result.root, index=result.index_path, labels=labels,
                    demographics=demographics, counts=counts, fingerprint=fingerprint(rows, [labels, demographics]))
