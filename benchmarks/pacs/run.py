"""PACS pull speed: studies/s from a local Orthanc, Release Guard's sources beside plain client loops.

One Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``, started as in the tests: tests/integration/orthanc.py)
holds ``--studies`` generated studies. Each contender pulls every study to a fresh local folder:

- ``guard dicomweb``: :func:`guards.sources.resolve` of ``dicomweb+http://...`` (QIDO-RS, WADO-RS with
  ``transfer-syntax=*``, count check, index; no ledger), with 1 and with 3 workers;
- ``dicomweb-client loop``: the plain library, one ``search_for_studies`` then ``retrieve_study`` per study, each
  instance written with ``dcmwrite`` (what a script would do; its datasets are re-encoded, ours are the bytes);
- ``guard dimse`` and ``pynetdicom getscu`` (``python -m pynetdicom getscu`` once per study) when
  guards.sources.dimse is installed.

Each figure is the median of ``--repeats`` pulls; the ratio is against the plain client in the same run.

    .venv/bin/python benchmarks/pacs/run.py --studies 100 --repeats 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmwrite

from guards.policy import ReleasePolicy
from guards.samples import generate_corpus
from guards.sources import dicomweb, resolve

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
import orthanc  # noqa: E402  (tests/integration/orthanc.py: the test suite's Orthanc launcher)

logger = logging.getLogger("benchmarks.pacs")


def _median(fn: Callable[[Path], int], work: Path, repeats: int) -> tuple[float, int]:
    times, counts = [], []
    for n in range(repeats):
        target = work / f"pull-{n}"
        start = time.perf_counter()
        counts.append(fn(target))
        times.append(time.perf_counter() - start)
        shutil.rmtree(target, ignore_errors=True)
    if len(set(counts)) != 1:
        raise RuntimeError(f"pulls disagree on the instance count: {counts}")
    return statistics.median(times), counts[0]


def _plain_client(server: orthanc.Orthanc) -> Callable[[Path], int]:
    def pull(target: Path) -> int:
        session = requests.Session()
        session.auth = (server.user, server.password)
        client = DICOMwebClient(f"{server.rest}/dicom-web", session=session)
        n = 0
        for study in client.search_for_studies(get_remaining=True):
            uid = study["0020000D"]["Value"][0]
            folder = target / uid
            folder.mkdir(parents=True)
            for ds in client.retrieve_study(uid):
                dcmwrite(folder / f"{ds.SOPInstanceUID}.dcm", ds, enforce_file_format=True)
                n += 1
        return n
    return pull


def _guard(source: str) -> Callable[[Path], int]:
    def pull(target: Path) -> int:
        snap = resolve(source, out_dir=target, policy=ReleasePolicy())
        return snap.counts["indexed"]
    return pull


def _getscu(server: orthanc.Orthanc, studies: list[str], calling: str) -> Callable[[Path], int]:
    def pull(target: Path) -> int:
        for uid in studies:
            folder = target / uid
            folder.mkdir(parents=True)
            subprocess.run([sys.executable, "-m", "pynetdicom", "getscu", "127.0.0.1", str(server.dicom_port),
                            "-aet", calling, "-aec", "GUARDTEST", "-k", "QueryRetrieveLevel=STUDY",
                            "-k", f"StudyInstanceUID={uid}", "-od", str(folder)],
                           check=True, capture_output=True, timeout=600)
        return sum(1 for p in target.rglob("*") if p.is_file())
    return pull


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=100, help="generated studies (seed 5)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="guard-pacs-bench-") as tmp:
        work = Path(tmp)
        corpus = generate_corpus(work / "src", studies=args.studies, seed=5, image_size=args.image_size)
        size = sum(p.stat().st_size for p in corpus.files)
        with orthanc.start(work / "orthanc") as server:
            for f in corpus.files:
                server.upload(f.read_bytes())
            os.environ[dicomweb.ENV_USER], os.environ[dicomweb.ENV_PASSWORD] = server.user, server.password
            studies = sorted(corpus.labels)
            contenders: dict[str, Callable[[Path], int]] = {
                "dicomweb-client loop": _plain_client(server),
                "guard dicomweb, 1 worker": _guard(server.source("workers=1&ledger=off")),
                "guard dicomweb, 3 workers": _guard(server.source("workers=3&ledger=off")),
            }
            if importlib.util.find_spec("guards.sources.dimse") is not None:
                from guards.sources import dimse

                calling = getattr(dimse, "DEFAULT_CALLING_AET", "GUARDIAN")
                contenders["pynetdicom getscu"] = _getscu(server, studies, calling)
                contenders["guard dimse, 1 worker"] = _guard(
                    f"dimse://GUARDTEST@127.0.0.1:{server.dicom_port}?workers=1&ledger=off")
                contenders["guard dimse, 3 workers"] = _guard(
                    f"dimse://GUARDTEST@127.0.0.1:{server.dicom_port}?workers=3&ledger=off")
            results: list[dict[str, Any]] = []
            for name, pull in contenders.items():
                seconds, instances = _median(pull, work, args.repeats)
                results.append({"contender": name, "seconds": round(seconds, 3), "instances": instances,
                                "studies_per_s": round(len(studies) / seconds, 2)})
                print(f"{name}: {seconds:.2f} s, {instances} instances, {len(studies) / seconds:.1f} studies/s")
    base = {r["contender"]: r["seconds"] for r in results}
    for r in results:
        r["speed_vs_dicomweb_client"] = round(base["dicomweb-client loop"] / r["seconds"], 2)
        if "pynetdicom getscu" in base:
            r["speed_vs_getscu"] = round(base["pynetdicom getscu"] / r["seconds"], 2)
    record = {"studies": len(studies), "instances": len(corpus.files), "megabytes": round(size / 1e6, 1),
              "repeats": args.repeats, "cpus": os.cpu_count(), "results": results}
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
