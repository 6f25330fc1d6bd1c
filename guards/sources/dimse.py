"""A PACS over DIMSE (PS3.4 Query/Retrieve, PS3.7): ``dimse://CALLED_AET@HOST:PORT[?...]``, through pynetdicom.

The snapshot is :func:`guards.sources.pacs.snapshot`, as for DICOMweb (ledger, retries, the ``.not-received``
accounting, labels by AccessionNumber); this module lists and retrieves:

* **C-FIND** (Study Root, STUDY level) lists the studies with StudyInstanceUID, StudyDate, AccessionNumber,
  NumberOfStudyRelatedInstances (the expected count), NumberOfStudyRelatedSeries, ModalitiesInStudy and
  SOPClassesInStudy; ``since`` / ``lookback_days`` become a StudyDate range ``YYYYMMDD-``. The ledger's record hash
  is the sha256 of these attributes (RetrieveAETitle aside).
* **C-GET** (``mode=get``, the default: Study Root Query/Retrieve - GET, STUDY level) on one association per study
  and attempt. The PACS sends the instances back on that association, so we request the storage presentation
  contexts with SCP/SCU role selection (we are the Storage SCP), **one transfer syntax per context**: the PACS then
  finds a context in the instance's stored syntax and sends it unchanged (with several syntaxes in one context,
  only one would be accepted and the PACS would transcode to it). Each received dataset is written as it was sent
  (``event.encoded_dataset()``: the encoded bytes behind a File Meta group naming the context's syntax; nothing is
  decoded or re-encoded) to ``ingest/pacs/<StudyInstanceUID>/<SOPInstanceUID>.dcm``.
* **C-MOVE** (``mode=move&move_port=N``): the source starts its own Storage SCP (AE title ``calling_aet``, on
  ``move_bind``:``move_port``, loopback by default) for the whole snapshot and asks the PACS to move each study to
  it; the PACS must know ``calling_aet`` as a modality at that host and port. Received instances are routed to
  their study's retrieve by StudyInstanceUID.

**The 128-context limit** (an association proposes at most 128 presentation contexts): one goes to the retrieve
SOP class, so 127 storage contexts remain. The SOP classes are those C-FIND reported in SOPClassesInStudy (most
PACS, Orthanc among them, answer it); when the PACS does not say, :data:`DEFAULT_STORAGE_CLASSES` (24 common
image storage classes out of pynetdicom's StoragePresentationContexts). Contexts are allotted round-robin in the
order of :data:`TRANSFER_SYNTAXES`: every class first gets Explicit VR Little Endian, then Implicit VR Little
Endian, then JPEG-LS Lossless, JPEG 2000 Lossless, RLE, JPEG Lossless SV1, JPEG Baseline, JPEG 2000, ... while
contexts remain. Up to 7 classes in a study get all 16 syntaxes; the 24 default classes get the first 5 (the first
7 of them also JPEG Lossless SV1). An instance stored in a syntax not proposed for its class is transcoded by the
PACS to one that is (Orthanc does, to an uncompressed one), or its sub-operation fails: either way it is not the
stored bytes, or it is counted missing and the study is retried, then excluded with the reason.

What crosses the network is the data set without its File Meta group (PS3.10 file meta is not sent over DIMSE,
and Data Set Trailing Padding (FFFC,FFFC) may not be: DCMTK-based PACS drop it); the file written is the data set
as sent, byte for byte, behind a File Meta group that pynetdicom builds (SOP class and instance, the transfer
syntax of the context, pynetdicom's implementation UID).

URL query parameters (all optional): ``since``, ``lookback_days``, ``workers``, ``retries``, ``timeout`` (seconds:
ACSE, DIMSE and network timeouts), ``labels``, ``ledger=off``, as for DICOMweb (guards.sources.pacs.common);
``calling_aet`` (default ``GUARDIAN``), ``mode=get|move``, ``move_port`` (required with ``mode=move``),
``move_bind`` (default 127.0.0.1). DIMSE has no credentials here; the PACS admits the calling AET (and host).
The source is recorded as ``dimse://CALLED_AET@HOST:PORT``; the ledger is keyed by it.

pynetdicom's logging of C-FIND/C-GET/C-MOVE identifiers is turned off on import (it would log patient data at
DEBUG); this module logs counts only.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import pynetdicom
from pydicom import uid as uids
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, build_context, build_role, evt, sop_class
from pynetdicom.presentation import PresentationContext, StoragePresentationContexts
from pynetdicom.status import code_to_category

from guards.errors import InputError
from guards.sources import Snapshot, pacs
from guards.sources.pacs import COMMON_PARAMS, NOT_RECEIVED, RECEIVED, Common, Study, int_param, study_folder

if TYPE_CHECKING:
    from guards.policy import ReleasePolicy

__all__ = ["NOT_RECEIVED", "RECEIVED", "DimseError", "Options", "list_studies", "parse", "snapshot",
           "storage_contexts"]

logger = logging.getLogger(__name__)

# Identifiers are C-FIND answers and C-GET/C-MOVE keys: patient data, never logged (pynetdicom's default is True).
pynetdicom._config.LOG_RESPONSE_IDENTIFIERS = False
pynetdicom._config.LOG_REQUEST_IDENTIFIERS = False

# Study Root Query/Retrieve Information Model - FIND, - MOVE, - GET (PS3.4 C.6.2)
StudyRootQueryRetrieveInformationModelFind = uids.UID("1.2.840.10008.5.1.4.1.2.2.1")
StudyRootQueryRetrieveInformationModelMove = uids.UID("1.2.840.10008.5.1.4.1.2.2.2")
StudyRootQueryRetrieveInformationModelGet = uids.UID("1.2.840.10008.5.1.4.1.2.2.3")
DEFAULT_CALLING_AET = "GUARDIAN"
MAX_CONTEXTS = 128  # PS3.8: presentation context IDs are the odd numbers 1-255
STORAGE_BUDGET = MAX_CONTEXTS - 1  # one goes to the Query/Retrieve - GET SOP class

# The order in which storage contexts are allotted (round-robin over the SOP classes): uncompressed first (what
# any PACS can send), then the lossless compressed syntaxes, then the lossy ones, then the rare ones.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    uids.ExplicitVRLittleEndian, uids.ImplicitVRLittleEndian, uids.JPEGLSLossless, uids.JPEG2000Lossless,
    uids.RLELossless, uids.JPEGLosslessSV1, uids.JPEGBaseline8Bit, uids.JPEG2000, uids.JPEGLSNearLossless,
    uids.JPEGExtended12Bit, uids.JPEGLossless, uids.DeflatedExplicitVRLittleEndian, uids.HTJ2KLossless,
    uids.HTJ2KLosslessRPCL, uids.HTJ2K, uids.ExplicitVRBigEndian,
)

# When C-FIND does not report SOPClassesInStudy: the common image storage classes (pynetdicom's
# StoragePresentationContexts holds 120+, far over the limit with even one syntax each beside the others).
_DEFAULT_NAMES = (
    "CTImageStorage", "EnhancedCTImageStorage", "MRImageStorage", "EnhancedMRImageStorage",
    "ComputedRadiographyImageStorage", "DigitalXRayImageStorageForPresentation",
    "DigitalXRayImageStorageForProcessing", "DigitalMammographyXRayImageStorageForPresentation",
    "DigitalMammographyXRayImageStorageForProcessing", "BreastTomosynthesisImageStorage",
    "UltrasoundImageStorage", "UltrasoundMultiFrameImageStorage", "SecondaryCaptureImageStorage",
    "MultiFrameGrayscaleByteSecondaryCaptureImageStorage", "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
    "MultiFrameTrueColorSecondaryCaptureImageStorage", "NuclearMedicineImageStorage",
    "PositronEmissionTomographyImageStorage",
    "XRayAngiographicImageStorage", "XRayRadiofluoroscopicImageStorage", "RTImageStorage",
    "VLPhotographicImageStorage", "EnhancedPETImageStorage", "SegmentationStorage",
)
DEFAULT_STORAGE_CLASSES: tuple[str, ...] = tuple(str(getattr(sop_class, name)) for name in _DEFAULT_NAMES)

FIND_KEYS = ("StudyInstanceUID", "StudyDate", "AccessionNumber", "NumberOfStudyRelatedInstances",
             "NumberOfStudyRelatedSeries", "ModalitiesInStudy", "SOPClassesInStudy")
_UNSTABLE = {"RetrieveAETitle", "QueryRetrieveLevel"}  # name the server as reached, not the study
_PARAMS = COMMON_PARAMS | {"calling_aet", "mode", "move_port", "move_bind"}
_PENDING = (0xFF00, 0xFF01)
_SUCCESS = 0x0000


class DimseError(Exception):
    """A retrieve that failed, in words without patient data (the association, a status, a count)."""


@dataclass(frozen=True)
class Options:
    """A DIMSE source as parsed from its URL."""

    called_aet: str
    host: str
    port: int
    calling_aet: str = DEFAULT_CALLING_AET
    mode: Literal["get", "move"] = "get"
    move_port: int = 0
    move_bind: str = "127.0.0.1"
    common: Common = field(default_factory=Common)

    @property
    def display(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"dimse://{self.called_aet}@{host}:{self.port}"


def _aet(raw: str, what: str) -> str:
    value = raw.strip()
    if not value or len(value) > 16 or "\\" in value or any(ord(c) < 32 or ord(c) > 126 for c in value):
        raise InputError(f"DIMSE source: {what} {raw!r} is not an AE title (1-16 printable ASCII characters, no "
                         "backslash)")
    return value


def parse(source: str) -> Options:
    """The options of ``dimse://CALLED_AET@HOST:PORT[?...]``."""
    head, sep, rest = source.partition("://")
    if not sep or head.lower() != "dimse":
        raise InputError("a DIMSE source is dimse://CALLED_AET@HOST:PORT")
    parts = urlsplit(f"dimse://{rest}")
    if parts.password is not None:
        raise InputError("DIMSE source: no password in the URL; write dimse://CALLED_AET@HOST:PORT")
    called = _aet(unquote(parts.username or ""), "called AE title") if parts.username else ""
    if not called:
        raise InputError("DIMSE source: no called AE title; write dimse://CALLED_AET@HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        raise InputError("DIMSE source: the port is not a number") from None
    host = parts.hostname or ""
    if not host or not port:
        raise InputError("DIMSE source: name the host and the port: dimse://CALLED_AET@HOST:PORT")
    if parts.path.strip("/"):
        raise InputError("DIMSE source: no path after HOST:PORT")
    params = parse_qs(parts.query, keep_blank_values=True)
    c = pacs.common(params, what="DIMSE", known=_PARAMS)
    calling = _aet(params.get("calling_aet", [DEFAULT_CALLING_AET])[-1], "calling_aet")
    mode = params.get("mode", ["get"])[-1].lower()
    if mode not in ("get", "move"):
        raise InputError(f"DIMSE source: mode={mode!r}; use get or move")
    move_port = int_param(params, "move_port", 0, 1, 65535, what="DIMSE")
    if mode == "move" and not move_port:
        raise InputError("DIMSE source: mode=move needs move_port=N, the port the PACS knows for calling_aet (its "
                         "C-MOVE destination)")
    return Options(called_aet=called, host=host, port=port, calling_aet=calling,
                   mode="move" if mode == "move" else "get", move_port=move_port,
                   move_bind=params.get("move_bind", ["127.0.0.1"])[-1] or "127.0.0.1", common=c)


def storage_contexts(classes: Sequence[str], budget: int = STORAGE_BUDGET) -> list[PresentationContext]:
    """Storage contexts for ``classes``, one transfer syntax each, round-robin in TRANSFER_SYNTAXES order."""
    unique = list(dict.fromkeys(str(c) for c in classes if str(c).strip())) or list(DEFAULT_STORAGE_CLASSES)
    contexts: list[PresentationContext] = []
    for syntax in TRANSFER_SYNTAXES:
        for abstract in unique:
            if len(contexts) == budget:
                return contexts
            contexts.append(build_context(abstract, syntax))
    return contexts


def _ae(options: Options) -> AE:
    ae = AE(ae_title=options.calling_aet)
    timeout = options.common.timeout
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    return ae


def _no_delay(event: evt.Event) -> None:
    """TCP_NODELAY on each association's socket: DIMSE is request/response, and Nagle's algorithm against the
    peer's delayed ACK held each C-STORE response about 40 ms (measured on loopback against Orthanc 1.10: a
    one-instance C-GET took 89 ms with it, 49 ms without)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


HANDLERS: list[Any] = [(evt.EVT_CONN_OPEN, _no_delay)]


def _refusal(assoc: Any, options: Options) -> str:
    """Why an association was not established, in words (AE titles and host only)."""
    if assoc.is_rejected:
        primitive = getattr(assoc.acceptor, "primitive", None)
        detail = ""
        if primitive is not None:
            detail = f": {getattr(primitive, 'result_str', '')} {getattr(primitive, 'source_str', '')} " \
                     f"{getattr(primitive, 'reason_str', '')}".rstrip()
        return (f"{options.display} rejected the association from calling AE title {options.calling_aet!r}"
                f"{detail}")
    if assoc.is_aborted:
        return (f"no association with {options.display} from calling AE title {options.calling_aet!r} (the "
                "connection was refused or aborted)")
    return (f"cannot associate with {options.display} from calling AE title {options.calling_aet!r} (connection "
            f"refused, or no answer within {options.common.timeout:g} s)")


def _close(assoc: Any, *, finished: bool) -> None:
    """Release an association whose operation finished; abort one left in the middle (the consumer stopped, or
    the peer went quiet): a release would wait for the operation, up to the DIMSE timeout."""
    if assoc.is_established:
        if finished:
            assoc.release()
        else:
            assoc.abort()


def _values(ds: Dataset, keyword: str) -> list[str]:
    if keyword not in ds or ds[keyword].value in (None, ""):
        return []
    value = ds[keyword].value
    if isinstance(value, bytes):
        return [value.decode(errors="replace")]
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value]
    return [str(value)]


@dataclass(frozen=True)
class Listed:
    """A study as C-FIND answered it, with the SOP classes to propose for its retrieve."""

    study: Study
    classes: tuple[str, ...]


def _listed(ident: Dataset) -> Listed | None:
    uid = "".join(_values(ident, "StudyInstanceUID")[:1]).strip(" \x00")
    if not uid:
        return None
    count = "".join(_values(ident, "NumberOfStudyRelatedInstances")[:1]).strip()
    try:
        expected = int(count) if count else None
    except ValueError:
        expected = None
    stable = {e.keyword or str(e.tag): [str(v) for v in _values(ident, e.keyword)] if e.keyword else repr(e.value)
              for e in ident if e.keyword not in _UNSTABLE}
    digest = sha256(repr(sorted(stable.items())).encode()).hexdigest()
    accession = "".join(_values(ident, "AccessionNumber")[:1]).strip() or None
    study_date = "".join(_values(ident, "StudyDate")[:1]).strip() or None
    study = Study(uid=uid, folder=study_folder(uid), expected=expected, accession=accession, study_date=study_date,
                  record_sha256=digest)
    return Listed(study, tuple(c.strip() for c in _values(ident, "SOPClassesInStudy") if c.strip()))


def list_studies(options: Options) -> list[Listed]:
    """C-FIND at STUDY level: every study (in the StudyDate window, when one is set)."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    for keyword in FIND_KEYS:
        setattr(query, keyword, "")
    if options.common.since:
        query.StudyDate = f"{options.common.since:%Y%m%d}-"
    ae = _ae(options)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(options.host, options.port, ae_title=options.called_aet, evt_handlers=HANDLERS)
    if not assoc.is_established:
        raise InputError(f"{_refusal(assoc, options)}; is the PACS reachable and does it know this AE title?")
    found: dict[str, Listed] = {}
    unnamed = 0
    final: int | None = None
    try:
        for status, ident in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if "Status" not in status:
                why = ("the PACS aborted the association" if assoc.is_aborted else
                       f"no answer within {options.common.timeout:g} s")
                raise InputError(f"{options.display}: the C-FIND study query got no answer ({why}); does the PACS "
                                 f"allow C-FIND from calling AE title {options.calling_aet!r}?")
            if status.Status in _PENDING:
                listed = _listed(ident) if ident is not None else None
                if listed is None:
                    unnamed += 1
                else:
                    found.setdefault(listed.study.uid, listed)
            else:
                final = int(status.Status)
    finally:
        _close(assoc, finished=final is not None)
    if final != _SUCCESS:
        raise InputError(f"{options.display}: the C-FIND study query failed (status 0x{final or 0:04X}); does the "
                         f"PACS allow C-FIND from {options.calling_aet!r}?")
    if unnamed:
        logger.warning("dimse: %d C-FIND result(s) without a StudyInstanceUID cannot be retrieved", unnamed)
    return [found[uid] for uid in sorted(found)]


def _query(uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = uid
    return ds


def _final(status: Dataset | None, what: str) -> None:
    """Raise DimseError unless the retrieve's final status says every sub-operation succeeded."""
    if status is None or "Status" not in status:
        raise DimseError(f"no final {what} response (association aborted or timed out)")
    code = int(status.Status)
    failed = int(status.get("NumberOfFailedSuboperations") or 0)
    if code == _SUCCESS or (code in (0x0001, 0xB000) and not failed):
        return
    counts = f", {failed} sub-operation(s) failed" if failed else ""
    raise DimseError(f"{what} status 0x{code:04X} ({code_to_category(code)}){counts}")


def _c_get(options: Options, listed: Listed) -> Iterator[bytes]:
    """C-GET of one study on its own association; the instances as sent, in the order they came."""
    received: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.encoded_dataset())  # the encoded data set as sent, behind a file meta group
        return 0x0000

    storage = storage_contexts(listed.classes)
    contexts = [build_context(StudyRootQueryRetrieveInformationModelGet), *storage]
    roles: list[Any] = [build_role(c, scp_role=True) for c in dict.fromkeys(str(cx.abstract_syntax) for cx in storage)]
    assoc = _ae(options).associate(options.host, options.port, ae_title=options.called_aet, contexts=contexts,
                                   ext_neg=roles, evt_handlers=[*HANDLERS, (evt.EVT_C_STORE, on_store)])
    if not assoc.is_established:
        raise DimseError(_refusal(assoc, options))
    final: Dataset | None = None
    try:
        for status, _ in assoc.send_c_get(_query(listed.study.uid), StudyRootQueryRetrieveInformationModelGet):
            while received:
                yield received.pop(0)
            if "Status" not in status or status.Status not in _PENDING:
                final = status
        while received:
            yield received.pop(0)
    finally:
        _close(assoc, finished=final is not None)
    _final(final, "C-GET")


class _StoreScp:
    """The Storage SCP of ``mode=move``: receives what the PACS moves and hands it to the study's retrieve."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.lock = threading.Lock()
        self.waiting: dict[str, queue.SimpleQueue[bytes]] = {}
        self.stray = 0
        ae = _ae(options)
        ae.require_called_aet = True
        for cx in StoragePresentationContexts:
            if cx.abstract_syntax:
                ae.add_supported_context(cx.abstract_syntax, list(TRANSFER_SYNTAXES))
        self.ae = ae
        try:
            self.server = ae.start_server((options.move_bind, options.move_port), block=False,
                                          evt_handlers=[*HANDLERS, (evt.EVT_C_STORE, self.on_store)])
        except OSError as e:
            raise InputError(f"DIMSE source: cannot listen on {options.move_bind}:{options.move_port} for C-MOVE "
                             f"({type(e).__name__}: {e.strerror or e})") from None

    def on_store(self, event: evt.Event) -> int:
        try:
            uid = str(event.dataset.get("StudyInstanceUID", "")).strip(" \x00")
        except Exception:
            uid = ""
        with self.lock:
            target = self.waiting.get(uid)
            if target is None:
                self.stray += 1
                return 0xA700  # no retrieve waits for this study: refused (Out of resources)
        target.put(event.encoded_dataset())
        return 0x0000

    @contextmanager
    def expecting(self, uid: str) -> Iterator[queue.SimpleQueue[bytes]]:
        inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        with self.lock:
            if uid in self.waiting:
                raise DimseError("the same study is already being moved")
            self.waiting[uid] = inbox
        try:
            yield inbox
        finally:
            with self.lock:
                self.waiting.pop(uid, None)

    def shutdown(self) -> None:
        self.server.shutdown()  # type: ignore[union-attr]
        if self.stray:
            logger.warning("dimse: %d instance(s) arrived for no study being moved; refused", self.stray)


def _c_move(options: Options, listed: Listed, scp: _StoreScp) -> Iterator[bytes]:
    """C-MOVE of one study to our own Storage SCP; the instances as they arrived there."""
    with scp.expecting(listed.study.uid) as inbox:
        ae = _ae(options)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate(options.host, options.port, ae_title=options.called_aet, evt_handlers=HANDLERS)
        if not assoc.is_established:
            raise DimseError(_refusal(assoc, options))
        final: Dataset | None = None
        try:
            for status, _ in assoc.send_c_move(_query(listed.study.uid), options.calling_aet,
                                               StudyRootQueryRetrieveInformationModelMove):
                while not inbox.empty():
                    yield inbox.get()
                if "Status" not in status or status.Status not in _PENDING:
                    final = status
            while not inbox.empty():
                yield inbox.get()
        finally:
            _close(assoc, finished=final is not None)
        _final(final, "C-MOVE")


def _fetch_study(options: Options, listed: Listed, scp: _StoreScp | None = None) -> Iterator[bytes]:
    """One retrieve of one study: C-GET, or C-MOVE to ``scp``."""
    if options.mode == "move":
        assert scp is not None
        yield from _c_move(options, listed, scp)
    else:
        yield from _c_get(options, listed)


class _Dimse:
    """The DIMSE PACS of ``options`` as a :class:`guards.sources.pacs.Pacs`: one association per retrieve."""

    kind = "dimse"
    count_origin = "C-FIND NumberOfStudyRelatedInstances"
    errors: tuple[type[Exception], ...] = (DimseError, RuntimeError)

    def __init__(self, options: Options, scp: _StoreScp | None = None) -> None:
        self.options = options
        self.common = options.common
        self.display = options.display
        self.ledger_key = options.display
        self.scp = scp
        self.listed: dict[str, Listed] = {}

    def list_studies(self) -> list[Study]:
        found = list_studies(self.options)
        self.listed = {f.study.uid: f for f in found}
        return [f.study for f in found]

    def fetch(self, study: Study) -> Iterator[bytes]:
        return _fetch_study(self.options, self.listed.get(study.uid) or Listed(study, ()), self.scp)

    def reason(self, error: Exception) -> str:
        text = str(error).splitlines()[0] if str(error) else ""
        return f"{type(error).__name__}: {text}"[:300] if not isinstance(error, DimseError) else text[:300]


def snapshot(source: str, *, out_dir: Path, policy: ReleasePolicy) -> Snapshot:
    """The snapshot of the DIMSE PACS ``source`` (guards.sources.pacs.snapshot does the work)."""
    options = parse(source)
    scp = _StoreScp(options) if options.mode == "move" else None
    try:
        return pacs.snapshot(_Dimse(options, scp), out_dir=Path(out_dir), policy=policy)
    finally:
        if scp is not None:
            scp.shutdown()
