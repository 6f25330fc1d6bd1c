"""A PACS over DICOMweb (PS3.18): ``dicomweb+http://HOST:PORT/PATH`` or ``dicomweb+https://...``.

``PATH`` is the DICOMweb root (Orthanc: ``/dicom-web``). The snapshot is made in four steps:

1. QIDO-RS: ``GET {root}/studies`` lists the studies with their NumberOfStudyRelatedInstances (all pages);
2. each study that the ledger (guards.sources.ledger) does not hold unchanged is retrieved with WADO-RS,
   ``GET {root}/studies/{uid}`` with ``Accept: multipart/related; type="application/dicom"; transfer-syntax=*``,
   so every instance arrives in its stored transfer syntax, byte for byte, and is written to
   ``ingest/pacs/<StudyInstanceUID>/<SOPInstanceUID>.dcm``; a pool of ``workers`` retrieves run at once;
3. the studies the ledger holds unchanged are linked from its store into ``ingest/pacs/``;
4. :func:`guards.ingest.ingest` indexes ``ingest/pacs/`` like any local tree (same quarantine and exclusion rules).

Steps 2-4, the retries and the accounting below are :func:`guards.sources.pacs.snapshot`, shared with the DIMSE
source (guards.sources.dimse); this module lists and retrieves.

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

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.web import _Transaction

from guards.errors import InputError
from guards.sources import Snapshot, pacs
from guards.sources.pacs import NOT_RECEIVED, RECEIVED, Common, Study, study_folder

__all__ = ["NOT_RECEIVED", "RECEIVED", "Options", "Study", "list_studies", "parse", "snapshot"]

if TYPE_CHECKING:
    from guards.policy import ReleasePolicy

logger = logging.getLogger(__name__)

ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ENV_USER, ENV_PASSWORD, ENV_TOKEN = "GUARD_DICOMWEB_USER", "GUARD_DICOMWEB_PASSWORD", "GUARD_DICOMWEB_TOKEN"
QIDO_FIELDS = ("StudyInstanceUID", "StudyDate", "AccessionNumber", "PatientID", "NumberOfStudyRelatedInstances",
               "NumberOfStudyRelatedSeries", "ModalitiesInStudy")
RETRIEVE_URL_TAG = "00081190"  # Retrieve URL: names the server as reached, not the study's content


@dataclass(frozen=True)
class Options:
    """A DICOMweb source as parsed from its URL: where, how, and the credentials (never recorded)."""

    base_url: str  # http(s)://HOST:PORT/PATH, no credentials, no query
    common: Common = field(default_factory=Common)
    user: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)

    @property
    def display(self) -> str:
        return f"dicomweb+{self.base_url}"

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.password, self.token) if s)


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
    c = pacs.common(parse_qs(parts.query, keep_blank_values=True), what="DICOMweb", today=today)
    user = os.environ.get(ENV_USER, "") or (parts.username or "")
    password = os.environ.get(ENV_PASSWORD, "") or (parts.password or "")
    return Options(base_url=base_url, common=c, user=user, password=password, token=os.environ.get(ENV_TOKEN, ""))


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
    client = DICOMwebClient(options.base_url, session=session, timeout=options.common.timeout)
    client.set_http_retry_params(retry=False)  # retries are per study, below, with the count check
    return client


def _value(record: dict[str, Any], tag: str) -> Any:
    values = record.get(tag, {}).get("Value") or [None]
    return values[0]


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
    return Study(uid=uid, folder=study_folder(uid), expected=expected,
                 accession=str(accession) if accession else None, study_date=str(study_date) if study_date else None,
                 record_sha256=digest)


def _http_reason(e: Exception, options: Options) -> str:
    if isinstance(e, requests.HTTPError) and e.response is not None:
        return f"HTTP {e.response.status_code} {e.response.reason or ''}".strip()
    return _scrub(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", options)[:300]


def list_studies(client: DICOMwebClient, options: Options) -> list[Study]:
    """QIDO-RS: every study (in the StudyDate window, when one is set), all pages."""
    filters = {"StudyDate": f"{options.common.since:%Y%m%d}-"} if options.common.since else None
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


class _DicomWeb:
    """The DICOMweb PACS of ``options`` as a :class:`guards.sources.pacs.Pacs`: one HTTP session per thread."""

    kind = "dicomweb"
    count_origin = "QIDO-RS NumberOfStudyRelatedInstances"
    errors: tuple[type[Exception], ...] = (requests.RequestException,)

    def __init__(self, options: Options) -> None:
        self.options = options
        self.common = options.common
        self.display = options.display
        self.ledger_key = options.base_url
        self.local = threading.local()

    def client(self) -> DICOMwebClient:
        client: DICOMwebClient | None = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = _client(self.options)
        return client

    def list_studies(self) -> list[Study]:
        return list_studies(self.client(), self.options)

    def fetch(self, study: Study) -> Iterator[bytes]:
        return _fetch_study(self.client(), study.uid)

    def reason(self, error: Exception) -> str:
        return _http_reason(error, self.options)


def snapshot(source: str, *, out_dir: Path, policy: ReleasePolicy) -> Snapshot:
    """The snapshot of the DICOMweb PACS ``source`` (guards.sources.pacs.snapshot does the work)."""
    return pacs.snapshot(_DicomWeb(parse(source)), out_dir=Path(out_dir), policy=policy)
