"""De-identification throughput and residual PHI: Release Guard against the floor and three open-source peers.

For each corpus (pydicom's test files, pydicom-data's files, N generated instances from guards.samples) every
tool reads each file from disk, de-identifies it and writes it to disk, in one process, one after another:

- floor: pydicom's bare ``dcmread`` + ``save_as`` (no de-identification: the upper bound);
- release-guard: ``guards.deid.deidentify_dataset`` (Basic Profile + Modified Dates, keyed UIDs) + ``save_as``;
- release-guard-tree: ``guards.deid.deidentify_tree`` end to end (index, de-identify, write, sha256, manifest);
- dicognito (``Anonymizer().anonymize``), dicom-anonymizer (``anonymize_dataset``), deid (``replace_identifiers``
  with its default ``dicom`` recipe, one call per file so that same-named files in different folders do not
  collide).

Each timing is the best of ``--repeats`` passes over the corpus, the tools taking turns in every round
(files / second, failures counted apart). On the generated corpus, every output is searched for the source PHI
tokens the generator recorded (``SampleCorpus.phi_tokens``), in the bytes and in the decoded element values,
case-insensitively.

Usage: ``.venv/bin/python benchmarks/deid_throughput/run.py --generated 2000 --repeats 3``
(peers: ``pip install -r benchmarks/deid_throughput/requirements.txt``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from guards.deid import deidentify_dataset, deidentify_tree
from guards.deid.writer import encode_part10
from guards.keys import PseudonymKey
from guards.policy import DeidSection, ReleasePolicy
from guards.testdata import pydicom_data_files, pydicom_test_files

sys.path.insert(0, str(Path(__file__).parent))  # synth.py, the stand-in corpus
log = logging.getLogger("deid_throughput")
POLICY = ReleasePolicy(deid=DeidSection(clean_pixel_data=False))  # header de-identification only
# A benchmark key made up for this script (not a deployment's key).
KEY = PseudonymKey(bytes.fromhex("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"))
READ_ERRORS = (InvalidDicomError, ValueError, TypeError, KeyError, AttributeError, NotImplementedError, OSError,
               EOFError, IndexError)

Tool = Callable[[Path, Path], None]


def _floor(src: Path, dst: Path) -> None:
    ds = dcmread(src)
    ds.save_as(dst)


def _release_guard(src: Path, dst: Path) -> None:
    ds = dcmread(src)
    deidentify_dataset(ds, policy=POLICY, key=KEY)
    dst.write_bytes(encode_part10(ds))  # the writer deidentify_tree uses (Part 10, standard file meta)


def _dicognito() -> Tool:
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer(seed="benchmark")  # seeded: reproducible, like our keyed pseudonyms

    def run(src: Path, dst: Path) -> None:
        ds = dcmread(src)
        anonymizer.anonymize(ds)
        ds.save_as(dst)

    return run


def _dicom_anonymizer() -> Tool:
    from dicomanonymizer import anonymize_dataset

    def run(src: Path, dst: Path) -> None:
        ds = dcmread(src)
        anonymize_dataset(ds, delete_private_tags=True)
        ds.save_as(dst)

    return run


def _deid() -> Tool:
    from deid.config import DeidRecipe
    from deid.dicom import replace_identifiers

    recipe = DeidRecipe()  # the package's default "dicom" recipe

    def run(src: Path, dst: Path) -> None:
        out = replace_identifiers(
            dicom_files=[str(src)], deid=recipe, save=True, overwrite=True, output_folder=str(dst.parent)
        )
        produced = Path(out[0]) if out else None
        if produced is None or not produced.is_file():
            raise ValueError("deid wrote nothing")
        if produced != dst:
            produced.replace(dst)

    return run


def _readable(files: list[Path]) -> list[Path]:
    """Files the floor can read and write (the corpus every tool is timed on)."""
    keep = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "x.dcm"
        for f in files:
            try:
                ds = dcmread(f)
                if "SOPInstanceUID" not in ds or "DirectoryRecordSequence" in ds:
                    continue
                ds.save_as(out)
                keep.append(f)
            except READ_ERRORS:
                continue
    return keep


def _one_pass(tool: Tool, files: list[Path], root: Path, out: Path) -> tuple[float, int]:
    """Seconds for one pass of ``tool`` over ``files`` (outputs under ``out``), and the files it failed on."""
    if out.exists():
        shutil.rmtree(out)
    targets = [out / f.relative_to(root) for f in files]
    for t in {t.parent for t in targets}:
        t.mkdir(parents=True, exist_ok=True)
    failures = 0
    start = time.perf_counter()
    for f, t in zip(files, targets, strict=True):
        try:
            tool(f, t)
        except Exception:  # noqa: BLE001 - a peer's failure on one file is counted, not fatal
            failures += 1
    return time.perf_counter() - start, failures


def _time_tools(tools: dict[str, Tool], files: list[Path], root: Path, out: Path, repeats: int) -> dict[str, Any]:
    """Best of ``repeats`` passes per tool; the tools take turns in every round, so that a change of load on a
    shared machine hits them alike."""
    best = {name: float("inf") for name in tools}
    failures = dict.fromkeys(tools, 0)
    for _ in range(repeats):
        for name, tool in tools.items():
            seconds, failures[name] = _one_pass(tool, files, root, out / name)
            best[name] = min(best[name], seconds)
    return {name: {"files": len(files), "failures": failures[name], "seconds": round(best[name], 3),
                   "files_per_s": round(len(files) / best[name], 1)} for name in tools}


def _time_tree(files: list[Path], root: Path, out: Path, repeats: int, *, phi: dict[str, list[str]]) -> dict[str, Any]:
    best = float("inf")
    published = 0
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"  # only the corpus files, so that the tree sees what the others see
        for f in files:
            target = src / f.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(f, target) if _same_device(f, src) else shutil.copy(f, target)
        for _ in range(repeats):
            if out.exists():
                shutil.rmtree(out)
            start = time.perf_counter()
            result = deidentify_tree(src, out, policy=POLICY, key=KEY)
            best = min(best, time.perf_counter() - start)
            published = result.counts["published"]
            by_source = {r["source_path"]: r["path"] for r in result.table.to_pylist() if r["status"] == "published"}
    entry: dict[str, Any] = {"files": len(files), "published": published, "seconds": round(best, 3),
                             "files_per_s": round(len(files) / best, 1)}
    if phi:
        entry.update(_residual_phi({by_source.get(k, k): v for k, v in phi.items()}, out))
    return entry


def _same_device(a: Path, b: Path) -> bool:
    b.mkdir(parents=True, exist_ok=True)
    return a.stat().st_dev == b.stat().st_dev


def _residual_phi(phi: dict[str, list[str]], out: Path) -> dict[str, int]:
    """(file, token) pairs of the source PHI found in a tool's outputs, by bytes or decoded values."""
    left = examined = missing = 0
    for rel, tokens in phi.items():
        target = out / rel
        if not target.is_file():
            missing += 1
            continue
        data = target.read_bytes().lower()
        try:
            text = str(dcmread(target)).lower()
        except READ_ERRORS:
            text = ""
        for token in tokens:
            examined += 1
            t = token.lower()
            if t.encode("utf-8") in data or t in text:
                left += 1
    return {"tokens_examined": examined, "tokens_left": left, "outputs_missing": missing}


def _tools() -> dict[str, Tool]:
    tools: dict[str, Tool] = {"floor": _floor, "release-guard": _release_guard}
    for name, factory in (("dicognito", _dicognito), ("dicom-anonymizer", _dicom_anonymizer), ("deid", _deid)):
        try:
            tools[name] = factory()
        except ImportError as e:
            log.warning("%s is not installed (%s): skipped", name, e)
    return tools


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generated", type=int, default=2000, help="generated instances (0: skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("results.json"))
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--corpora", default="pydicom,pydicom-data,generated", help="comma-separated subset")
    parser.add_argument("--tools", default="", help="comma-separated subset (default: all, release-guard-tree too)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("pydicom", "deid", "dicognito", "guards"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.simplefilter("ignore")

    work = args.work or Path(tempfile.mkdtemp(prefix="deid_bench_"))
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "load_average_at_start": list(os.getloadavg())},
        "command": " ".join(["run.py", *(argv if argv is not None else sys.argv[1:])]),
        "repeats": args.repeats,
        "corpora": {},
    }
    wanted = set(args.corpora.split(","))
    corpora: dict[str, tuple[Path, list[Path]]] = {}
    if "pydicom" in wanted:
        pyd = _readable(pydicom_test_files())
        corpora["pydicom"] = (_common_root(pyd), pyd)
    data = _readable(pydicom_data_files()) if "pydicom-data" in wanted else []
    if data:
        corpora["pydicom-data"] = (_common_root(data), data)
    phi: dict[str, list[str]] = {}
    if args.generated and "generated" in wanted:
        corpora["generated"], phi, results["generated_source"] = _generated(work, args.generated, args.seed)

    tools = _tools()
    chosen = set(args.tools.split(",")) if args.tools else set(tools) | {"release-guard-tree"}
    tools = {k: v for k, v in tools.items() if k in chosen}
    for cname, (root, files) in corpora.items():
        log.info("corpus %s: %d files", cname, len(files))
        entry: dict[str, Any] = {"files": len(files), "tools": {}}
        entry["tools"] = _time_tools(tools, files, root, work / "out" / cname, args.repeats)
        for tname in tools:
            if cname == "generated":
                entry["tools"][tname].update(_residual_phi(phi, work / "out" / cname / tname))
            log.info("  %-18s %s", tname, entry["tools"][tname])
        if "release-guard-tree" in chosen:
            tree_out = work / "out" / cname / "release-guard-tree"
            tree_phi = phi if cname == "generated" else {}
            entry["tools"]["release-guard-tree"] = _time_tree(files, root, tree_out, args.repeats, phi=tree_phi)
            log.info("  %-18s %s", "release-guard-tree", entry["tools"]["release-guard-tree"])
        _ratios(entry)
        results["corpora"][cname] = entry
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    log.info("wrote %s", args.json)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _generated(work: Path, n: int, seed: int) -> tuple[tuple[Path, list[Path]], dict[str, list[str]], str]:
    """``n`` generated instances and their PHI tokens: guards.samples, or the local stand-in until it lands."""
    try:
        from guards.samples import generate_corpus
    except ImportError:
        from synth import generate  # type: ignore[import-not-found]

        log.warning("guards.samples is not available: using benchmarks/deid_throughput/synth.py")
        root = work / "synth"
        phi = generate(root, instances=n, seed=seed)
        return (root, sorted(root / rel for rel in phi)), phi, "benchmarks/deid_throughput/synth.py"
    studies = max(1, n // 8)
    while True:
        root = work / f"generated_{studies}"
        corpus = generate_corpus(root, studies=studies, seed=seed)
        dicom = sorted(p for p in corpus.files if p.suffix == ".dcm" or p.suffix == "")
        if len(dicom) >= n:
            break
        shutil.rmtree(root)
        studies = int(studies * n / max(len(dicom), 1) * 1.1) + 1
    dicom = dicom[:n]
    chosen = {p.relative_to(corpus.root).as_posix() for p in dicom}
    return (corpus.root, dicom), {k: v for k, v in corpus.phi_tokens.items() if k in chosen}, "guards.samples"


def _common_root(files: list[Path]) -> Path:
    return Path(os.path.commonpath([str(f.parent) for f in files]))


def _ratios(entry: dict[str, Any]) -> None:
    tools = entry["tools"]
    ours = tools["release-guard"]["files_per_s"]
    floor = tools["floor"]["files_per_s"]
    peers = [v["files_per_s"] for k, v in tools.items() if k in ("dicognito", "dicom-anonymizer", "deid")]
    entry["ratio_to_floor"] = round(ours / floor, 3)
    if peers:
        entry["ratio_to_fastest_peer"] = round(ours / max(peers), 2)


if __name__ == "__main__":
    raise SystemExit(main())
