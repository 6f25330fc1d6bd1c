"""`guard run` (the CLI, in-process) on generated studies with the bad-input corpus mixed in (issue 16): the run
ends with the gate's verdict, and every input file is in the manifest exactly once.

Before: a corrupt deflate stream, sequences nested 300+ deep or a name that is not UTF-8 crashed the whole run
(exit 3), an unreadable folder's files vanished, and a SOPInstanceUID in two studies was published twice.

A light policy: OCR of the risky modalities only, the reid and phi checks (k=1), model checks off, and protect
on with a handful of noise steps so that the big-endian and padded inputs are written by protect too.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import pytest
from bad_inputs import LOCKED, Case, write_bad_inputs  # tests/bad_inputs.py
from light_policy import light_toml  # tests/light_policy.py

from guards.cli import main
from guards.manifest import read_table
from guards.samples import generate_corpus

LIGHT_TOML = light_toml(protect="""steps = 1
max_rounds = 1
train_steps = 1
warmup_epochs = 0
warmup_min_steps = 0
reuse = false""")


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory, key_hex: str) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("badrun")
    src, out = base / "src", base / "out"
    corpus = generate_corpus(src, studies=6, seed=16, image_size=64)
    cases = write_bad_inputs(src, sorted(corpus.files))
    locked = src / LOCKED
    os.chmod(locked, 0)  # enough for a user other than root ...
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:  # ... and for root, whom chmod does not stop: listing refused here
        if not isinstance(path, int) and os.fspath(path).rstrip("/") == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return real_scandir(path)

    policy = base / "light.toml"
    policy.write_text(LIGHT_TOML, encoding="utf-8")
    mp = pytest.MonkeyPatch()
    mp.setattr(os, "scandir", scandir)
    mp.setenv("GUARD_KEY", key_hex)
    try:
        rc = main(["run", str(src), str(out), "--run-id", "bad", "--policy", str(policy)])
    finally:
        mp.undo()
        os.chmod(locked, 0o755)
    assert rc in (0, 1), f"guard run exited {rc}: the run stopped instead of quarantining the bad files"
    run = out / "runs" / "bad"
    manifest = read_table(run / "protect" / "manifest.parquet").to_pylist()
    inputs = sorted(p.relative_to(src).as_posix() for p in corpus.files) + [c.path for c in cases]
    return {"rc": rc, "run": run, "manifest": manifest, "cases": cases, "inputs": inputs}


@pytest.mark.slow(reason="guard run (ingest, deid, a few protect steps, two checks) on 6 studies and 160+ cases")
@pytest.mark.timeout(300)
def test_the_run_ends_and_every_file_is_accounted_for_exactly_once(outcome: dict[str, Any]) -> None:
    manifest: list[dict[str, Any]] = outcome["manifest"]
    cases: list[Case] = outcome["cases"]
    assert len(cases) >= 130
    rows = Counter(r["source_path"] for r in manifest)
    assert sorted(rows) == sorted([*outcome["inputs"], "labels.csv", f"{LOCKED}/"])  # the folder is its own row
    assert all(n == 1 for n in rows.values()), [p for p, n in rows.items() if n > 1]
    for row in manifest:
        assert row["status"] in ("published", "quarantined", "excluded"), row
        if row["status"] != "published":
            assert row["reason"], row["source_path"]
    assert not any(p.startswith(LOCKED + "/") and p != f"{LOCKED}/" for p in rows)  # its file was never seen


@pytest.mark.slow(reason="reads the run of the module fixture (guard run on 6 studies and 160+ cases)")
@pytest.mark.timeout(300)
def test_no_bad_case_is_published_and_the_valid_ones_are_accounted(outcome: dict[str, Any]) -> None:
    by_source = {r["source_path"]: r for r in outcome["manifest"]}
    for case in outcome["cases"]:
        row = by_source[case.path]
        if case.bad:
            assert row["status"] != "published", (case, row["reason"])
    assert "nested too deep" in by_source["bad/deep/nested_300.dcm"]["reason"]
    corrupt = [c.path for c in outcome["cases"] if c.kind == "deflated-corrupt"]
    assert corrupt and all("corrupt deflated" in by_source[p]["reason"] for p in corrupt)
    assert "not valid UTF-8" in by_source[r"bad/name_\xff\xfe.dcm"]["reason"]
    assert "folder cannot be read" in by_source[f"{LOCKED}/"]["reason"]
    for name in ("MR_small_bigendian.dcm", "MR_small_padded.dcm"):
        assert by_source[f"bad/pydicom/{name}"]["status"] == "published", by_source[f"bad/pydicom/{name}"]
    # 12-bit JPEG Extended (PS3.5 A.4.1): JPGExtended.dcm decodes with the pinned pylibjpeg-libjpeg and is published
    # (re-encoded losslessly); JPEG-lossy.dcm, its original, has invalid SOS parameters for a sequential JPEG
    # (pydicom's README; libjpeg: "scan start must be zero and scan stop must be 63") and no decoder reads it.
    assert by_source["bad/pydicom/JPGExtended.dcm"]["status"] == "published"
    lossy = by_source["bad/pydicom/JPEG-lossy.dcm"]
    assert lossy["status"] == "quarantined" and "cannot be decoded" in lossy["reason"]
    # one SOPInstanceUID in two studies: exactly one of the two files is published
    published_uids = Counter(r["SOPInstanceUID"] for r in outcome["manifest"] if r["status"] == "published")
    assert all(n == 1 for n in published_uids.values())
    assert by_source["bad/duplicate_uid.dcm"]["status"] == "excluded"


@pytest.mark.slow(reason="reads the run of the module fixture (guard run on 6 studies and 160+ cases)")
@pytest.mark.timeout(300)
def test_the_gate_gave_a_verdict(outcome: dict[str, Any]) -> None:
    assert outcome["rc"] in (0, 1)  # the gate's verdict (pass / fail), never 3 (internal error) nor 2
    gate = json.loads((outcome["run"] / "report" / "gate.json").read_text(encoding="utf-8"))
    assert gate["passed"] is (outcome["rc"] == 0)
