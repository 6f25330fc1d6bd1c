"""A PACS source (guards.sources.dicomweb) against a real Orthanc with its DICOMweb plugin (orthanc.py here).

Every test starts its own Orthanc and uploads generated studies (6, image_size 64) and compressed third-party
files (JPEG-LS, RLE, JPEG Lossless) through its REST API, then resolves ``dicomweb+http://...`` into a snapshot.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import orthanc  # tests/integration/orthanc.py (pytest puts this folder on sys.path)
import pyarrow.parquet as pq
import pytest
from light_policy import light_toml  # tests/light_policy.py
from phi_scan import found  # tests/phi_scan.py
from pydicom import dcmread
from pydicom.uid import generate_uid

from guards import pipeline
from guards.checks import registry
from guards.errors import InputError
from guards.keys import PseudonymKey
from guards.policy import ReleasePolicy
from guards.samples import SampleCorpus, generate_corpus
from guards.sources import Snapshot, dicomweb, resolve
from guards.testdata import pydicom_data_dir, pydicom_test_dir

pytestmark = pytest.mark.timeout(600)

# Only the header checks run: every other registered check is off (a check registered later is off here too).
OFF = [c.id for c in registry.registered() if c.id not in ("reid", "phi")]
LIGHT = ReleasePolicy().with_overrides({
    "pixels.ocr_all": False, "protect.enabled": False, "reid.remediate": False,
    "reid.k": 1, "reid.max_risk": 1.0,
    "gate.blocking": ["reid", "phi"], "gate.advisory": [], "gate.off": OFF, "approval.required": False,
})


def _compressed() -> list[Path]:
    files = [pydicom_test_dir() / "MR_small_jpeg_ls_lossless.dcm", pydicom_test_dir() / "SC_rgb_rle.dcm"]
    data = pydicom_data_dir()
    if data is not None and (data / "JPGLosslessP14SV1_1s_1f_8b.dcm").is_file():
        files.append(data / "JPGLosslessP14SV1_1s_1f_8b.dcm")
    return files


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> SampleCorpus:
    return generate_corpus(tmp_path_factory.mktemp("pacs-src"), studies=6, seed=5, image_size=64)


@pytest.fixture
def pacs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[orthanc.Orthanc]:
    with orthanc.start(tmp_path / "orthanc", password="pw-" + os.urandom(12).hex()) as server:
        monkeypatch.setenv(dicomweb.ENV_USER, server.user)
        monkeypatch.setenv(dicomweb.ENV_PASSWORD, server.password)
        monkeypatch.delenv(dicomweb.ENV_TOKEN, raising=False)
        yield server


def _header(data: bytes) -> tuple[str, str, str]:
    ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.file_meta.TransferSyntaxUID)


def _upload(server: orthanc.Orthanc, files: list[Path]) -> dict[str, bytes]:
    """SOPInstanceUID -> the bytes uploaded."""
    sent: dict[str, bytes] = {}
    for f in files:
        data = f.read_bytes()
        server.upload(data)
        sent[_header(data)[0]] = data
    return sent


def assert_quarantined_study(rows: list[dict[str, object]], ingest_dir: Path) -> None:
    """The rows of one incomplete study: each received file quarantined with a copy under ``ingest/quarantine/``
    (identical to the file received), and what never arrived one excluded ``.not-received`` row."""
    received = [r for r in rows if not str(r["path"]).endswith(dicomweb.NOT_RECEIVED)]
    assert received and all(r["status"] == "quarantined" for r in received), [r["status"] for r in received]
    assert all((ingest_dir / "quarantine" / str(r["path"])).read_bytes()
               == (ingest_dir / "pacs" / str(r["path"])).read_bytes() for r in received)
    assert all(r["status"] == "excluded" for r in rows if str(r["path"]).endswith(dicomweb.NOT_RECEIVED))


def _studies(sent: dict[str, bytes]) -> dict[str, list[str]]:
    by: dict[str, list[str]] = collections.defaultdict(list)
    for sop, data in sent.items():
        by[_header(data)[1]].append(sop)
    return dict(by)


def _spy(monkeypatch: pytest.MonkeyPatch, before: dict[str, object] | None = None) -> list[str]:
    """Record every WADO-RS study retrieve (the real one runs); ``before[uid]`` is called with the attempt number
    just before that study's retrieve."""
    calls: list[str] = []
    real = dicomweb._fetch_study

    def spy(client: object, uid: str) -> Iterator[bytes]:
        calls.append(uid)
        if before and uid in before:
            before[uid](calls.count(uid))  # type: ignore[operator]
        yield from real(client, uid)  # type: ignore[arg-type]

    monkeypatch.setattr(dicomweb, "_fetch_study", spy)
    return calls


def _rows(snap: Snapshot) -> list[dict[str, object]]:
    return pq.read_table(snap.index).to_pylist()


def _secrets_absent(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_every_instance_arrives_byte_for_byte_in_its_stored_transfer_syntax(
    pacs: orthanc.Orthanc, corpus: SampleCorpus, tmp_path: Path
) -> None:
    sent = _upload(pacs, [*corpus.files, *_compressed()])
    syntaxes = {_header(d)[2] for d in sent.values()}
    assert {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5"} <= syntaxes  # JPEG-LS and RLE among them

    snap = resolve(pacs.source("workers=3"), out_dir=tmp_path / "ingest", policy=ReleasePolicy())

    assert snap.kind == "dicomweb"
    rows = _rows(snap)
    indexed = {r["SOPInstanceUID"]: r for r in rows if r["status"] == "indexed"}
    assert set(indexed) == set(sent) and len(rows) == len(sent)
    assert snap.counts == {"seen": len(sent), "indexed": len(sent), "quarantined": 0, "excluded": 0}
    for sop, data in sent.items():
        row = indexed[sop]
        local = snap.root / str(row["path"])
        assert local.read_bytes() == data  # the file as stored on the PACS, not re-encoded
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert row["TransferSyntaxUID"] == _header(data)[2]
        assert row["path"] == f"{row['StudyInstanceUID']}/{sop}.dcm"
    assert snap.root == tmp_path / "ingest" / "pacs"
    assert snap.labels is None  # ingest.labels is relative: a PACS has no folder to find it in
    assert not list(snap.root.glob(".*"))  # no partial folders left to be indexed


def test_a_study_the_pacs_cannot_deliver_is_retried_then_accounted_for(
    pacs: orthanc.Orthanc, corpus: SampleCorpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = _upload(pacs, corpus.files)
    by_study = _studies(sent)
    short_study = max(by_study, key=lambda s: len(by_study[s]))
    failed_study = min(s for s in by_study if len(by_study[s]) == 1)
    # Files lost from Orthanc's storage area while its index still lists them (storage cache off). Measured on
    # Orthanc 1.10.1 + DICOMweb 1.7: a study of 4 with one file lost answers 200 with 3 parts (a short count);
    # a study whose only file is lost answers HTTP 500 (and so does QIDO-RS while it lists that study, so that
    # file is lost once the listing is done, just before its first retrieve). Every attempt gives the same.
    lost = by_study[short_study][0]
    pacs.lose_file(lost, tmp_path / "lost-1.dcm")
    calls = _spy(monkeypatch, {failed_study: lambda n: n == 1 and pacs.lose_file(by_study[failed_study][0],
                                                                               tmp_path / "lost-2.dcm")})

    snap = resolve(pacs.source("retries=2"), out_dir=tmp_path / "ingest", policy=ReleasePolicy())

    assert calls.count(short_study) == 3 and calls.count(failed_study) == 3  # 1 + retries=2
    assert all(calls.count(s) == 1 for s in by_study if s not in (short_study, failed_study))
    rows = _rows(snap)
    [failed] = [r for r in rows if r["StudyInstanceUID"] == failed_study]
    assert failed["path"] == f"{failed_study}/{dicomweb.NOT_RECEIVED}" and failed["status"] == "excluded"
    assert "HTTP 500" in str(failed["reason"]) and "after 3 attempt(s)" in str(failed["reason"])
    short = [r for r in rows if r["StudyInstanceUID"] == short_study]
    received = [r for r in short if r["path"] != f"{short_study}/{dicomweb.NOT_RECEIVED}"]
    n = len(by_study[short_study])
    assert {r["SOPInstanceUID"] for r in received} == set(by_study[short_study]) - {lost}
    assert len(short) == n
    assert_quarantined_study(short, tmp_path / "ingest")
    # Each file carries the study's reason, unless ingest found the file itself broken (the stream Orthanc cut
    # when it met the lost file can end inside the last part): then that file's own, more specific reason.
    reasons = [str(r["reason"]) for r in short]
    assert all(f"{n - 1} of {n} instances received" in r or r.startswith("truncated") for r in reasons), reasons
    assert sum(f"{n - 1} of {n} instances received" in r for r in reasons) >= 2, reasons
    assert any("1 instance(s) of the study never arrived" in str(r["reason"]) for r in short)
    assert all((snap.root / str(r["path"])).is_file() for r in received)  # kept for the steward to look at
    others = [r for r in rows if r["StudyInstanceUID"] not in (short_study, failed_study)]
    assert others and all(r["status"] == "indexed" for r in others)
    assert snap.counts["seen"] == len(rows) == (snap.counts["indexed"] + snap.counts["quarantined"]
                                                + snap.counts["excluded"])
    assert snap.counts["indexed"] == len(sent) - n - 1 and snap.counts["quarantined"] == n - 1
    # A PACS whose study query itself fails gives no snapshot at all (fail closed), and says why.
    with pytest.raises(InputError, match=r"QIDO-RS study query failed \(HTTP 500"):
        resolve(pacs.source(), out_dir=tmp_path / "ingest2", policy=ReleasePolicy())


def test_a_short_count_that_recovers_on_retry_is_indexed_whole(
    pacs: orthanc.Orthanc, corpus: SampleCorpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = _upload(pacs, corpus.files)
    by_study = _studies(sent)
    study = max(by_study, key=lambda s: len(by_study[s]))
    removed = by_study[study][0]

    def flaky(attempt: int) -> None:
        if attempt == 1:
            pacs.delete_instance(removed)  # gone for the first retrieve ...
        elif attempt == 2:
            pacs.upload(sent[removed])  # ... and back for the retry

    calls = _spy(monkeypatch, {study: flaky})
    snap = resolve(pacs.source("retries=1"), out_dir=tmp_path / "ingest", policy=ReleasePolicy())
    assert calls.count(study) == 2
    rows = _rows(snap)
    assert {r["SOPInstanceUID"] for r in rows if r["status"] == "indexed"} == set(sent)
    assert snap.counts["excluded"] == 0


def test_credentials_appear_in_no_record_no_index_and_no_log(
    pacs: orthanc.Orthanc, corpus: SampleCorpus, tmp_path: Path, key: PseudonymKey,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sent = _upload(pacs, corpus.files[:4])
    caplog.set_level(logging.DEBUG)  # dicomweb-client, requests and urllib3 debug lines included
    out = tmp_path / "out"
    run = pipeline.begin(pacs.source(), out, "env-creds", policy=LIGHT, key=key)
    assert run.require_snapshot().counts["indexed"] == len(sent)
    # The same PACS with the credentials written into the URL instead of the environment.
    monkeypatch.delenv(dicomweb.ENV_USER)
    monkeypatch.delenv(dicomweb.ENV_PASSWORD)
    in_url = pacs.source().replace("://", f"://{pacs.user}:{pacs.password}@", 1)
    run2 = pipeline.begin(in_url, out, "url-creds", policy=LIGHT, key=key)
    assert run2.require_snapshot().counts["indexed"] == len(sent)
    assert run2.source == in_url.replace(f"{pacs.user}:{pacs.password}@", "***@")
    with pytest.raises(InputError) as refused:  # a wrong password: refused, and the message does not quote it
        pipeline.begin(pacs.source().replace("://", f"://{pacs.user}:wrong-{pacs.password}@", 1), out, "bad",
                       policy=LIGHT, key=key)
    assert "HTTP 401" in str(refused.value) and pacs.password not in str(refused.value)

    assert pacs.password in in_url  # the test's own check: the secret was there to leak
    assert _secrets_absent(out, pacs.password) == []  # run.json, snapshot, index, ledger, sidecars, files
    for r in (run, run2):
        assert pacs.password not in json.dumps(r.require_snapshot().to_json())
    assert pacs.password not in caplog.text and "Authorization" not in caplog.text
    assert any("dicomweb: snapshot of dicomweb+http://127.0.0.1" in m for m in caplog.messages)


def test_a_bearer_token_from_the_environment_is_sent_and_never_recorded(
    corpus: SampleCorpus, tmp_path: Path, key: PseudonymKey, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture
) -> None:
    token = "tok-" + os.urandom(16).hex()
    with orthanc.start(tmp_path / "orthanc", token=token) as server:
        sent = _upload(server, corpus.files[:3])
        for name in (dicomweb.ENV_USER, dicomweb.ENV_PASSWORD):
            monkeypatch.delenv(name, raising=False)
        with pytest.raises(InputError, match="refused the credentials"):  # the filter admits nothing else
            resolve(server.source(), out_dir=tmp_path / "no-token", policy=ReleasePolicy())
        monkeypatch.setenv(dicomweb.ENV_TOKEN, token)
        caplog.set_level(logging.DEBUG)
        run = pipeline.begin(server.source(), tmp_path / "out", "token", policy=LIGHT, key=key)
    assert run.require_snapshot().counts["indexed"] == len(sent)
    assert _secrets_absent(tmp_path / "out", token) == [] and token not in caplog.text


def test_source_urls_are_parsed_and_checked_without_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import date

    for name in (dicomweb.ENV_USER, dicomweb.ENV_PASSWORD, dicomweb.ENV_TOKEN):
        monkeypatch.delenv(name, raising=False)
    o = dicomweb.parse("dicomweb+https://u:pw-in-url-9@pacs.example:8443/dicom-web/?since=20260101&lookback_days=30"
                       "&workers=4&retries=0&labels=/srv/labels.csv", today=date(2026, 3, 1))
    assert o.base_url == "https://pacs.example:8443/dicom-web" and o.display == "dicomweb+" + o.base_url
    assert o.common.since == date(2026, 1, 30)
    assert (o.common.workers, o.common.retries, o.common.labels) == (4, 0, "/srv/labels.csv")
    assert (o.user, o.password) == ("u", "pw-in-url-9") and "pw-in-url-9" not in repr(o)
    monkeypatch.setenv(dicomweb.ENV_USER, "envuser")
    monkeypatch.setenv(dicomweb.ENV_PASSWORD, "envpw")
    assert (dicomweb.parse("dicomweb+http://h:1/x").user, dicomweb.parse("dicomweb+http://h:1/x").password) == (
        "envuser", "envpw")
    for bad, message in (("dicomweb+http://h:1/x?workers=0", "out of range"), ("dicomweb+http://h:1/x?foo=1",
                         "unknown parameter"), ("dicomweb+http://h:1/x?since=2026-01-01", "not a date"),
                         ("dicomweb+http://h:1/x?labels=rel.csv", "absolute"), ("dicomweb+http:///x", "no host")):
        with pytest.raises(InputError, match=message):
            dicomweb.parse(bad)
    assert dicomweb.parse("dicomweb+http://h:1/x").common.since is None


def test_the_next_snapshot_fetches_only_new_or_changed_studies(
    pacs: orthanc.Orthanc, corpus: SampleCorpus, tmp_path: Path, key: PseudonymKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = _upload(pacs, corpus.files)
    by_study = _studies(sent)
    out = tmp_path / "out"
    calls = _spy(monkeypatch)
    first = pipeline.begin(pacs.source(), out, "night1", policy=LIGHT, key=key).require_snapshot()
    assert sorted(calls) == sorted(by_study)

    # Night 2: one new study arrived.
    [rle] = [p for p in _compressed() if p.name == "SC_rgb_rle.dcm"]
    new_sop, new_study, _ = _header(rle.read_bytes())
    pacs.upload(rle.read_bytes())
    calls.clear()
    second = pipeline.begin(pacs.source(), out, "night2", policy=LIGHT, key=key).require_snapshot()
    assert calls == [new_study]
    rows = _rows(second)
    assert {r["SOPInstanceUID"] for r in rows if r["status"] == "indexed"} == set(sent) | {new_sop}
    carried = [second.root / str(r["path"]) for r in rows if r["StudyInstanceUID"] != new_study]
    assert all(p.stat().st_nlink >= 3 for p in carried)  # linked: store, night 1 and night 2 share one copy

    # Night 3: one more instance in an existing study (count changed); nothing else is fetched.
    grown = min(by_study)
    ds = dcmread(io.BytesIO(sent[by_study[grown][0]]))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["pacs-test-extra"])
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    pacs.upload(buffer.getvalue())
    calls.clear()
    third = pipeline.begin(pacs.source(), out, "night3", policy=LIGHT, key=key).require_snapshot()
    assert calls == [grown]
    assert third.counts["indexed"] == len(sent) + 2

    # A resumed attempt with nothing changed fetches nothing and gives the same snapshot.
    calls.clear()
    again = pipeline.begin(pacs.source(), out, "night3", policy=LIGHT, key=key)
    assert calls == [] and again.attempt == 2 and again.require_snapshot().fingerprint == third.fingerprint
    assert first.fingerprint != second.fingerprint != third.fingerprint

    [ledger_path] = list((out / "private" / "pacs").glob("*/ledger.parquet"))
    assert ledger_path.stat().st_mode & 0o077 == 0
    ledger = {r["StudyInstanceUID"]: r for r in pq.read_table(ledger_path).to_pylist()}
    assert set(ledger) == set(by_study) | {new_study}
    assert all(r["status"] == "complete" and r["expected"] == r["received"] for r in ledger.values())
    assert ledger[grown]["received"] == len(by_study[grown]) + 1 and ledger[grown]["run"] == "night3"


LIGHT_TOML = light_toml(extra="[approval]\nrequired = false\n")


def _published(out: Path) -> dict[str, bytes]:
    """SOPInstanceUID -> bytes of each published file of the release under ``out``."""
    [release] = list((out / "releases").glob("*/v0001"))
    return {_header(p.read_bytes())[0]: p.read_bytes() for p in (release / "data").rglob("*.dcm")}


def pacs_and_folder_releases(
    source: str, corpus: SampleCorpus, tmp_path: Path, key_hex: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture
) -> tuple[dict[str, bytes], dict[str, bytes], list[tuple[str, str]]]:
    """``guard run SOURCE OUT --labels labels.csv`` and ``guard run`` on the corpus's folder, one light policy and
    key; both gates pass with the same outcomes. Returns the two releases (SOPInstanceUID -> file bytes) and the
    PACS run's log lines (logger name, message), DEBUG included."""
    from guards.cli import EXIT_OK, main

    policy = tmp_path / "policy.toml"
    policy.write_text(LIGHT_TOML, encoding="utf-8")
    monkeypatch.setenv("GUARD_KEY", key_hex)
    caplog.set_level(logging.DEBUG)
    rc_pacs = main(["run", source, str(tmp_path / "pacs"), "--labels", str(corpus.labels_csv),
                    "--policy", str(policy), "--run-id", "night"])
    pacs_log = [(r.name, r.getMessage()) for r in caplog.records]
    rc_folder = main(["run", str(corpus.root), str(tmp_path / "folder"), "--policy", str(policy),
                      "--run-id", "night"])
    assert rc_pacs == rc_folder == EXIT_OK
    gates = [json.loads((tmp_path / where / "runs" / "night" / "report" / "gate.json").read_text(encoding="utf-8"))
             for where in ("pacs", "folder")]
    assert gates[0]["passed"] is gates[1]["passed"] is True
    assert [(o["id"], o["outcome"]) for o in gates[0]["outcomes"]] == [(o["id"], o["outcome"])
                                                                      for o in gates[1]["outcomes"]]
    return _published(tmp_path / "pacs"), _published(tmp_path / "folder"), pacs_log


def assert_no_phi_from_the_pacs(corpus: SampleCorpus, out: Path, log: list[tuple[str, str]]) -> None:
    """No PHI the PACS sent (names and IDs in its query answers and files) in any file name, file or Parquet cell
    under ``out`` outside ``out/private/`` (the release, the run's work, its reports), nor in any log line."""
    tokens = sorted({t for ts in corpus.phi_tokens.values() for t in ts if len(t) >= 4})
    assert tokens
    hits, scanned = found(out, tokens, skip=("private",))
    assert scanned > 2 * len(corpus.files), scanned  # the release and the run's de-identified work were scanned
    assert hits == [], hits
    assert any((out / "private" / "runs").rglob("*.dcm"))  # the PACS's raw copies are there, on the private side
    leaked = [(t, name, message[:200]) for name, message in log for t in tokens if t in message]
    assert not leaked, leaked[:5]


def test_guard_run_on_the_pacs_publishes_the_release_of_the_same_folder(
    pacs: orthanc.Orthanc, corpus: SampleCorpus, tmp_path: Path, key_hex: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 17: ``guard run dicomweb+http://... OUT --labels labels.csv`` gives the folder's release."""
    sent = _upload(pacs, corpus.files)
    from_pacs, from_folder, pacs_log = pacs_and_folder_releases(pacs.source(), corpus, tmp_path, key_hex,
                                                                monkeypatch, caplog)
    assert len(from_pacs) == len(sent) and set(from_pacs) == set(from_folder)  # same pseudonymous UIDs
    assert not set(from_pacs) & set(sent)  # and they are pseudonyms, not the PACS's UIDs
    assert all(from_pacs[uid] == from_folder[uid] for uid in from_pacs)  # byte for byte the same files
    assert len(pacs_log) > 50  # debug lines of dicomweb-client, requests and urllib3 among them
    assert_no_phi_from_the_pacs(corpus, tmp_path / "pacs", pacs_log)


def test_guard_run_on_a_pacs_labels_by_accession_number_and_accounts_for_a_lost_study(
    pacs: orthanc.Orthanc, corpus: SampleCorpus, tmp_path: Path, key_hex: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from guards.cli import EXIT_OK, main

    sent = _upload(pacs, corpus.files)
    by_study = _studies(sent)
    lost_study = max(by_study, key=lambda s: len(by_study[s]))
    pacs.lose_file(by_study[lost_study][0], tmp_path / "lost.dcm")  # one study the PACS cannot deliver
    # Labels: half of the studies named by StudyInstanceUID, the others by AccessionNumber only.
    accession = {_header(d)[1]: str(dcmread(io.BytesIO(d), stop_before_pixels=True).AccessionNumber)
                 for d in sent.values()}
    lines = ["StudyInstanceUID,AccessionNumber,label"]
    for n, (uid, label) in enumerate(sorted(corpus.labels.items())):
        lines.append(f"{uid},,{label}" if n % 2 else f",{accession[uid]},{label}")
    labels = tmp_path / "pacs-labels.csv"
    labels.write_text("\n".join(lines) + "\n", encoding="utf-8")
    policy = tmp_path / "policy.toml"
    policy.write_text(LIGHT_TOML, encoding="utf-8")
    monkeypatch.setenv("GUARD_KEY", key_hex)
    out = tmp_path / "out"

    rc = main(["run", pacs.source(), str(out), "--labels", str(labels), "--policy", str(policy), "--run-id", "pacs"])

    assert rc == EXIT_OK
    assert len(_published(out)) == len(sent) - len(by_study[lost_study])
    run = json.loads((out / "runs" / "pacs" / "run.json").read_text(encoding="utf-8"))
    assert run["source"] == pacs.source() and run["snapshot"]["kind"] == "dicomweb"
    copy = out / "private" / "runs" / "pacs" / "ingest" / "sidecars" / labels.name
    assert pipeline.read_labels(copy) == corpus.labels  # accession-only rows resolved through QIDO-RS
    cohort = pq.read_table(out / "private" / "runs" / "pacs" / "cohort" / "cohort.parquet").to_pylist()
    assert len(cohort) == len(by_study)
    [excluded] = [c for c in cohort if not c["included"]]
    assert "PACS" in excluded["exclusion_reason"] or "not received" in excluded["exclusion_reason"]
    assert all(c["label"] in (0, 1) for c in cohort)
    with pytest.raises(SystemExit):  # --labels names a file that is not there: refused before anything runs
        main(["run", pacs.source(), str(tmp_path / "out2"), "--labels", str(tmp_path / "nope.csv"), "--bogus"])
    assert main(["run", pacs.source(), str(tmp_path / "out2"), "--labels", str(tmp_path / "nope.csv")]) != EXIT_OK
    assert not (tmp_path / "out2").exists()


def test_the_second_night_fetches_the_new_studies_and_the_one_cut_off_the_night_before(
    pacs: orthanc.Orthanc, tmp_path: Path, key_hex: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17: night 1 holds six studies and the connection drops in the middle of one of them (a proxy cuts
    the response after its first instance, every attempt): that study is accounted for with the reason, the rest
    is published. Night 2 adds five studies: only those five and the cut one are retrieved, and the release is
    the union."""
    import cutting_proxy  # tests/integration/cutting_proxy.py

    from guards.cli import EXIT_OK, main

    corpus = generate_corpus(tmp_path / "src", studies=11, seed=8, image_size=64)
    files: dict[str, list[Path]] = collections.defaultdict(list)
    for p in corpus.files:
        files[_header(p.read_bytes())[1]].append(p)
    studies = sorted(files)
    first, later = studies[:6], studies[6:]
    cut = max(first, key=lambda s: len(files[s]))
    assert len(files[cut]) >= 2 and len(later) == 5
    for study in first:
        _upload(pacs, files[study])
    policy = tmp_path / "policy.toml"
    policy.write_text(LIGHT_TOML, encoding="utf-8")
    monkeypatch.setenv("GUARD_KEY", key_hex)
    out = tmp_path / "out"
    calls = _spy(monkeypatch)

    with cutting_proxy.start(pacs.http_port) as proxy:
        source = f"dicomweb+http://127.0.0.1:{proxy.port}/dicom-web?workers=1&retries=1"
        proxy.cut, proxy.keep = f"/studies/{cut}", min(p.stat().st_size for p in files[cut]) + 1500
        night1 = main(["run", source, str(out), "--labels", str(corpus.labels_csv), "--policy", str(policy),
                       "--run-id", "night1"])
        assert night1 == EXIT_OK and proxy.cuts == 2 and calls.count(cut) == 2  # 1 + retries=1
        rows = pq.read_table(out / "private" / "runs" / "night1" / "ingest" / "index.parquet").to_pylist()
        cut_rows = [r for r in rows if r["StudyInstanceUID"] == cut]
        assert_quarantined_study(cut_rows, out / "private" / "runs" / "night1" / "ingest")
        # The multipart stream ends early: a short count (or a read error) on each attempt, then the reason.
        n = len(files[cut])
        assert all(("retrieve failed" in str(r["reason"]) or f"of {n} instances received" in str(r["reason"]))
                   and "after 2 attempt(s)" in str(r["reason"]) for r in cut_rows), [r["reason"] for r in cut_rows]
        assert sum(r["path"].endswith(dicomweb.NOT_RECEIVED) for r in cut_rows) == 1
        [v1] = list((out / "releases").glob("*/v0001"))
        assert len(list((v1 / "data").rglob("*.dcm"))) == sum(len(files[s]) for s in first if s != cut)

        for study in later:
            _upload(pacs, files[study])
        proxy.cut = ""  # the PACS is whole again
        calls.clear()
        night2 = main(["run", source, str(out), "--labels", str(corpus.labels_csv), "--policy", str(policy),
                       "--run-id", "night2"])
    assert night2 == EXIT_OK
    assert sorted(calls) == sorted([*later, cut])  # the five new studies and last night's cut one, no other
    [v2] = list((out / "releases").glob("*/v0002"))
    published = {_header(p.read_bytes())[1] for p in (v2 / "data").rglob("*.dcm")}
    assert len(list((v2 / "data").rglob("*.dcm"))) == len(corpus.files)  # the union: every instance, once
    assert len(published) == len(studies)
