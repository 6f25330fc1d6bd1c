"""A PACS over DICOMweb (PS3.18): ``dicomweb+http://HOST:PORT/PATH`` or ``dicomweb+https://...``.

``PATH`` is the DICOMweb root (Orthanc: ``/dicom-web``). The snapshot is made in four steps:

1. QIDO-RS: ``GET {root}/studies`` lists the studies with their NumberOfStudyRelatedInstances (all pages);
2. each study that the ledger (guards.sources.ledger) does not hold unchanged is retrieved with WADO-RS,
   ``GET {root}/studies/{uid}`` with ``Accept: multipart/related; type="application/dicom"; transfer-syntax=*``,
   so every instance arrives in its stored transfer syntax, byte for byte, and is written to
   ``ingest/pacs/<StudyInstanceUID>/<SOPInstanceUID>.dcm``; a pool of ``workers`` retrieves run at once;
3. the studies the ledger holds unchanged are linked from its store into ``ingest/pacs/``;
4. :func:`guards.ingest.ingest` indexes ``ingest/pacs/`` like any local tree (same quarantine and exclusion rules).

A study whose received instance count differs from the QIDO-RS count, or whose retrieve fails, is retried
``retries`` times (waiting 0.5 s, 1 s, 2 s ... between attempts). If it still differs, its received files are
``excluded`` in the index with the reason ("incomplete study from the PACS: 2 of 3 instances received ..."), and
a row ``<study>/.not-received`` (status ``excluded``, no file) stands for the instances that never arrived, so
the study is accounted for in the index and the cohort; it is fetched again the next night.

URL query parameters (all optional): ``since=YYYYMMDD`` and/or ``lookback_days=N`` restrict the QIDO-RS query to
StudyDate on or after that day (the later of the two; UTC); studies of the ledger dated before the window are
carried without being checked again. ``workers`` (1-16, default 3), ``retries`` (0-10, default 2), ``timeout``
(seconds per HTTP read, default 60), ``labels`` (an absolute local path of the labels table, instead of
``ingest.labels``), ``ledger=off`` (fetch everything, keep no ledger).

Credentials come from the environment: ``GUARD_DICOMWEB_TOKEN`` (sent as ``Authorization: Bearer``), or
``GUARD_DICOMWEB_USER`` and ``GUARD_DICOMWEB_PASSWORD`` (HTTP Basic); ``user:password@`` in the URL works too but
is discouraged (the URL is typed into forms). They never appear in a log line, an error message, run.json, the
snapshot, the index or the ledger: the URL is recorded as ``dicomweb+http://HOST:PORT/PATH``.

Labels (``StudyInstanceUID,label``; rows may name the study by ``AccessionNumber`` instead, resolved through the
QIDO-RS listing) and demographics are local tables named by absolute paths (``labels=`` / ``ingest.labels``,
``cohort.demographics``), copied into ``ingest/sidecars/``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.web import _Transaction
from pydicom import dcmread

from guards.atomic import replacing
from guards.errors import InputError
from guards.manifest import empty_row, to_table, write_table
from guards.progress import Steps
from guards.sources import SIDECARS, Snapshot, fingerprint
from guards.sources.ledger import Entry, Ledger, files_digest, source_id

if TYPE_CHECKING:
    from guards.policy import ReleasePolicy

logger = logging.getLogger(__name__)

RECEIVED = "pacs"  # ingest/pacs/: the local copy of the PACS studies (ingest.ingest clears ingest/fetched/ itself)
NOT_RECEIVED = ".not-received"
ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ENV_USER, ENV_PASSWORD, ENV_TOKEN = "GUARD_DICOMWEB_USER", "GUARD_DICOMWEB_PASSWORD", "GUARD_DICOMWEB_TOKEN"
QIDO_FIELDS = ("StudyInstanceUID", "StudyDate", "AccessionNumber", "PatientID", "NumberOfStudyRelatedInstances",
               "NumberOfStudyRelatedSeries", "ModalitiesInStudy")
RETRIEVE_URL_TAG = "00081190"  # Retrieve URL: names the server as reached, not the study's content
_UID = re.compile(r"^[0-9][0-9.]{0,63}$")
_PARAMS = {"since", "lookback_days", "workers", "retries", "timeout", "labels", "ledger"}


@dataclass(frozen=True)
class Options:
    """A DICOMweb source as parsed from its URL: where, how, and the credentials (never recorded)."""

    base_url: str  # http(s)://HOST:PORT/PATH, no credentials, no query
    since: date | None = None
    workers: int = 3
    retries: int = 2
    timeout: float = 60.0
    labels: str = ""
    ledger: bool = True
    user: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)

    @property
    def display(self) -> str:
        return f"dicomweb+{self.base_url}"

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.password, self.token) if s)


def _int_param(params: dict[str, list[str]], name: str, default: int, lo: int, hi: int) -> int:
    if name not in params:
        return default
    raw = params[name][-1]
    try:
        value = int(raw)
    except ValueError:
        raise InputError(f"DICOMweb source: {name}={raw!r} is not an integer ({lo}-{hi})") from None
    if not lo <= value <= hi:
        raise InputError(f"DICOMweb source: {name}={value} is out of range ({lo}-{hi})")
    return value


def parse(source: str, *, today: date | None = None) -> Options:
    """The options of ``dicomweb+http(s)://[user:password@]HOST:PORT/PATH[?...]``; credentials from the environment."""
    head, sep, rest = source.partition("://")
    if not sep or head.lower() not in ("dicomweb+http", "dicomweb+https"):
        raise InputError("a DICOMweb source is dicomweb+http://HOST:PORT/PATH or dicomweb+https://HOST:PORT/PATH")
    parts = urlsplit(f"{head.lower()[len('dicomweb+'):]}://{rest}")
    try:
        port = parts.port
    except ValueError:
        raise InputError("DICOMweb source: the port is not a number") from None
    host = parts.hostname or ""
    if not host:
        raise InputError("DICOMweb source: no host; write dicomweb+http://HOST:PORT/PATH")
    netloc = f"[{host}]" if ":" in host else host
    base_url = f"{parts.scheme}://{netloc}{f':{port}' if port else ''}{parts.path.rstrip('/')}"
    params = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(params) - _PARAMS)
    if unknown:
        raise InputError(f"DICOMweb source: unknown parameter(s) {unknown}; known: {sorted(_PARAMS)}")
    today = today or datetime.now(UTC).date()
    bounds: list[date] = []
    if "since" in params:
        raw = params["since"][-1]
        try:
            bounds.append(datetime.strptime(raw, "%Y%m%d").date())
        except ValueError:
            raise InputError(f"DICOMweb source: since={raw!r} is not a date YYYYMMDD") from None
    if "lookback_days" in params:
        bounds.append(today - timedelta(days=_int_param(params, "lookback_days", 0, 0, 365_000)))
    labels = params.get("labels", [""])[-1]
    if labels and not Path(labels).is_absolute():
        raise InputError(f"DICOMweb source: labels={labels!r} must be an absolute local path")
    ledger = params.get("ledger", ["on"])[-1].lower()
    if ledger not in ("on", "off"):
        raise InputError(f"DICOMweb source: ledger={ledger!r}; use on or off")
    user = os.environ.get(ENV_USER, "") or (parts.username or "")
    password = os.environ.get(ENV_PASSWORD, "") or (parts.password or "")
    return Options(base_url=base_url, since=max(bounds) if bounds else None,
                   workers=_int_param(params, "workers", 3, 1, 16), retries=_int_param(params, "retries", 2, 0, 10),
                   timeout=float(_int_param(params, "timeout", 60, 1, 3600)), labels=labels, ledger=ledger == "on",
                   user=user, password=password, token=os.environ.get(ENV_TOKEN, ""))


def _scrub(text: str, options: Options) -> str:
    for secret in options.secrets:
        text = text.replace(secret, "***")
    return text


def _client(options: Options) -> DICOMwebClient:
    session = requests.Session()
    if options.token:
        session.headers["Authorization"] = f"Bearer {options.token}"
    elif options.user or options.password:
        session.auth = (options.user, options.password)
    client = DICOMwebClient(options.base_url, session=session, timeout=options.timeout)
    client.set_http_retry_params(retry=False)  # retries are per study, below, with the count check
    return client


def _value(record: dict[str, Any], tag: str) -> Any:
    values = record.get(tag, {}).get("Value") or [None]
    return values[0]


@dataclass(frozen=True)
class Study:
    """One study as QIDO-RS listed it."""

    uid: str
    folder: str
    expected: int | None
    accession: str | None
    study_date: str | None
    qido_sha256: str


def _folder(uid: str) -> str:
    return uid if _UID.match(uid) else "study-" + hashlib.sha256(uid.encode()).hexdigest()[:24]


def _study(record: dict[str, Any]) -> Study | None:
    uid = str(_value(record, "0020000D") or "").strip()
    if not uid:
        return None
    count = _value(record, "00201208")
    try:
        expected = int(count) if count not in (None, "") else None
    except (TypeError, ValueError):
        expected = None
    stable = {k: v for k, v in record.items() if k.upper() != RETRIEVE_URL_TAG}
    digest = hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()
    accession = _value(record, "00080050")
    study_date = _value(record, "00080020")
    return Study(uid=uid, folder=_folder(uid), expected=expected, accession=str(accession) if accession else None,
                 study_date=str(study_date) if study_date else None, qido_sha256=digest)


def _http_reason(e: Exception, options: Options) -> str:
    if isinstance(e, requests.HTTPError) and e.response is not None:
        return f"HTTP {e.response.status_code} {e.response.reason or ''}".strip()
    return _scrub(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", options)[:300]


def list_studies(client: DICOMwebClient, options: Options) -> list[Study]:
    """QIDO-RS: every study (in the StudyDate window, when one is set), all pages."""
    filters = {"StudyDate": f"{options.since:%Y%m%d}-"} if options.since else None
    try:
        records = client.search_for_studies(fields=list(QIDO_FIELDS), search_filters=filters, get_remaining=True)
    except requests.HTTPError as e:
        code = e.response.status_code if e.response is not None else None
        if code in (401, 403):
            raise InputError(f"{options.display} refused the credentials (HTTP {code}): set {ENV_USER} and "
                             f"{ENV_PASSWORD}, or {ENV_TOKEN}") from None
        raise InputError(f"{options.display}: the QIDO-RS study query failed ({_http_reason(e, options)})") from None
    except (requests.RequestException, ValueError) as e:
        raise InputError(f"cannot query {options.display} ({_http_reason(e, options)}); is the PACS reachable "
                         "and its DICOMweb root right?") from None
    studies: dict[str, Study] = {}
    unnamed = 0
    for record in records:
        study = _study(record)
        if study is None:
            unnamed += 1
        else:
            studies.setdefault(study.uid, study)  # a page boundary may repeat a study
    if unnamed:
        logger.warning("dicomweb: %d QIDO-RS result(s) without a StudyInstanceUID cannot be retrieved", unnamed)
    return [studies[uid] for uid in sorted(studies)]


def _fetch_study(client: DICOMwebClient, uid: str) -> Iterator[bytes]:
    """WADO-RS: the instances of study ``uid`` as stored (``transfer-syntax=*``), one Part 10 file per part.

    Through dicomweb-client's own GET and multipart decoding: its public retrieve methods return parsed
    datasets, which would be written back re-encoded; these are the bytes the PACS sent."""
    url = client._get_studies_url(_Transaction.RETRIEVE, uid)
    response = client._http_get(url, headers={"Accept": ACCEPT}, stream=True)
    content_type = response.headers.get("Content-Type", "")
    if content_type.lower().startswith("application/dicom"):  # a single part sent bare (some servers do)
        yield response.content
        return
    yield from client._decode_multipart_message(response, stream=True)


def _instance_name(data: bytes, n: int) -> str:
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPInstanceUID"], force=True)
        uid = str(ds.get("SOPInstanceUID", "")).strip(" \x00")
    except Exception:  # a part that is not DICOM keeps a neutral name; ingest quarantines it
        uid = ""
    return f"{uid}.dcm" if _UID.match(uid) else f"part-{n:05d}.dcm"


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


class _Retriever:
    """Retrieves studies into ``root`` with a pool of threads, one HTTP session per thread."""

    def __init__(self, options: Options, root: Path) -> None:
        self.options = options
        self.root = root
        self.local = threading.local()

    def client(self) -> DICOMwebClient:
        client: DICOMwebClient | None = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = _client(self.options)
        return client

    def fetch(self, study: Study) -> Fetched:
        result = Fetched(study)
        partial = self.root / f".{study.folder}.partial"
        for attempt in range(1, self.options.retries + 2):
            result.attempts = attempt
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir(parents=True)
            files: list[tuple[str, str]] = []
            error = ""
            try:
                for n, data in enumerate(_fetch_study(self.client(), study.uid)):
                    name = _instance_name(data, n)
                    if (partial / name).exists():  # the same instance sent twice, or two parts without a UID
                        name = f"{name[:-4]}-{n:05d}.dcm"
                    with replacing(partial / name) as tmp:
                        tmp.write_bytes(data)
                    files.append((name, hashlib.sha256(data).hexdigest()))
            except (requests.RequestException, ValueError, OSError) as e:
                error = _http_reason(e, self.options)
            result.received, result.files = len(files), files
            if error:
                result.problem = (f"retrieve failed ({error}) after {attempt} attempt(s), {len(files)} instance(s) "
                                  "received")
            elif study.expected is not None and len(files) != study.expected:
                result.problem = (f"{len(files)} of {study.expected} instances received (QIDO-RS "
                                  f"NumberOfStudyRelatedInstances) after {attempt} attempt(s)")
            else:
                result.problem = ""
                break
            if attempt <= self.options.retries:
                logger.warning("dicomweb: attempt %d of %d: %s; retrying", attempt, self.options.retries + 1,
                               result.problem)
                time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
        target = self.root / study.folder
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)
        return result


def _local_table(named: str, what: str, out_dir: Path) -> Path | None:
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


def _resolve_accessions(labels: Path, studies: dict[str, str]) -> None:
    """Rows of the labels copy that name a study by AccessionNumber only get its StudyInstanceUID (QIDO-RS)."""
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
        logger.warning("dicomweb: %d label row(s) name an AccessionNumber that the PACS did not list; they label "
                       "no study", unresolved)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["StudyInstanceUID", "AccessionNumber", "label"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(out)
    with replacing(labels) as tmp:
        tmp.write_text(text.getvalue(), encoding="utf-8")


def _ledger_folder(out_dir: Path, options: Options) -> Path | None:
    """``OUT/private/pacs/<source id>/`` when ``out_dir`` is a run's ingest folder (OUT/runs/<id>/ingest)."""
    if not options.ledger:
        return None
    resolved = out_dir.resolve()
    if resolved.name != "ingest" or resolved.parent.parent.name != "runs":
        logger.info("dicomweb: %s is not a run's ingest folder: no ledger, every study is fetched", out_dir)
        return None
    return resolved.parent.parent.parent / "private" / "pacs" / source_id(options.base_url)


def _account(rows: list[dict[str, Any]], incomplete: dict[str, Fetched]) -> list[dict[str, Any]]:
    """Exclude the files of incomplete studies with their reason; one row for what never arrived."""
    for row in rows:
        fetched = incomplete.get(row["path"].split("/", 1)[0])
        if fetched is not None and row["status"] == "indexed":
            row.update(status="excluded", reason=f"incomplete study from the PACS: {fetched.problem}"[:500])
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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def snapshot(source: str, *, out_dir: Path, policy: ReleasePolicy) -> Snapshot:
    options = parse(source)
    out_dir = Path(out_dir)
    root = out_dir / RECEIVED
    if root.exists():
        shutil.rmtree(root)  # re-running ingest replaces its outputs
    root.mkdir(parents=True)
    if (out_dir / SIDECARS).exists():
        shutil.rmtree(out_dir / SIDECARS)
    folder = _ledger_folder(out_dir, options)
    ledger = Ledger(folder) if folder is not None else None
    run_name = out_dir.resolve().parent.name
    client = _client(options)
    logger.info("dicomweb: querying %s%s", options.display, f" for studies since {options.since}" if options.since
                else "")
    if ledger is None:
        return _snapshot(options, client, root, out_dir, policy, None, run_name)
    with ledger.locked():
        return _snapshot(options, client, root, out_dir, policy, ledger, run_name)


def _snapshot(options: Options, client: DICOMwebClient, root: Path, out_dir: Path, policy: ReleasePolicy,
              ledger: Ledger | None, run_name: str) -> Snapshot:
    from guards.ingest import ingest

    studies = list_studies(client, options)
    entries = ledger.load() if ledger is not None else {}
    listed = {s.uid for s in studies}
    to_fetch: list[Study] = []
    carried = 0
    for study in studies:
        old = entries.get(study.uid)
        unchanged = (old is not None and old.status == "complete" and old.expected == study.expected
                     and old.qido_sha256 == study.qido_sha256)
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
                               updated_at=_now())
        if ledger is not None:
            ledger.forget(old.folder)
    logger.info("dicomweb: %d studies listed: %d to fetch, %d carried from the ledger, %d gone",
                len(studies), len(to_fetch), carried, gone)

    retriever = _Retriever(options, root)
    steps = Steps(len(to_fetch), what="dicomweb: retrieve", logger=logger, unit="studies")
    incomplete: dict[str, Fetched] = {}
    with ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="dicomweb") as pool:
        for fetched in pool.map(retriever.fetch, to_fetch):
            steps.advance()
            study = fetched.study
            if not fetched.complete:
                incomplete[study.folder] = fetched
                logger.warning("dicomweb: a study is incomplete and excluded: %s", fetched.problem)
            entries[study.uid] = Entry(
                StudyInstanceUID=study.uid, folder=study.folder, AccessionNumber=study.accession,
                StudyDate=study.study_date, expected=study.expected, received=fetched.received,
                qido_sha256=study.qido_sha256, files_sha256=files_digest(fetched.files),
                status="complete" if fetched.complete else ("failed" if not fetched.received else "incomplete"),
                reason=fetched.problem, run=run_name, updated_at=_now())
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
        rows = _account(rows, incomplete)
        table = to_table(rows)
        write_table(table, result.index_path)
        counts = {"seen": len(rows), "indexed": 0, "quarantined": 0, "excluded": 0}
        for r in rows:
            counts[r["status"]] += 1
    if ledger is not None:
        ledger.save(entries)

    labels_named = options.labels or (policy.ingest.labels if Path(policy.ingest.labels).is_absolute() else "")
    if not labels_named and policy.ingest.labels:
        logger.info("dicomweb: ingest.labels %r is relative: a PACS has no folder to find it in (give an absolute "
                    "path, or labels= in the source URL); no labels", policy.ingest.labels)
    labels = _local_table(labels_named, "labels table", out_dir)
    if labels is not None:
        by_accession = {s.accession: s.uid for s in studies if s.accession}
        by_accession.update({e.AccessionNumber: e.StudyInstanceUID for e in entries.values()
                             if e.AccessionNumber and e.AccessionNumber not in by_accession})
        _resolve_accessions(labels, by_accession)
    demographics = _local_table(policy.cohort.demographics, "cohort.demographics", out_dir)
    logger.info("dicomweb: snapshot of %s: %s (%d fetched, %d carried, %d incomplete)", options.display, counts,
                len(to_fetch), carried, len(incomplete))
    return Snapshot(kind="dicomweb", root=result.root, index=result.index_path, labels=labels,
                    demographics=demographics, counts=counts, fingerprint=fingerprint(rows, [labels, demographics]))
