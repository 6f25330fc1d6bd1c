"""The persisted Run (guards.run): stamped results, crashed and stale checks are "not run", publish once per run,
resume skips work done on unchanged inputs, a remote (fsspec) source, and a check added with one registry line.

A light policy: OCR of the risky modalities only, no noise, only the reid check (k=1), so each run takes seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fsspec
import pytest
from light_policy import light_toml  # tests/light_policy.py

from guards import pipeline
from guards import run as runs
from guards.checks import registry
from guards.checks.base import CheckResult, Finding
from guards.keys import PseudonymKey
from guards.policy import ReleasePolicy
from guards.samples import generate_corpus

LIGHT = ReleasePolicy().with_overrides({
    "pixels.ocr_all": False, "protect.enabled": False, "reid.remediate": False,
    "reid.k": 1, "reid.max_risk": 1.0,
    "gate.blocking": ["reid", "phi"], "gate.advisory": [],
    "gate.off": ["representation", "membership", "unlearnability", "attribute", "inversion"],
})


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src")
    generate_corpus(root, studies=4, seed=3, image_size=64)
    return root


def _versions(out: Path) -> list[str]:
    root = out / "releases" / LIGHT.release.name
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_publish_once_per_run_and_resume_skips_done_steps(source: Path, tmp_path: Path, key: PseudonymKey) -> None:
    first = pipeline.run_pipeline(source, tmp_path, policy=LIGHT, key=key, run_id="nightly")
    assert first.passed and first.release is not None and not first.already_published
    assert _versions(tmp_path) == ["v0001"]
    again = pipeline.step_publish(first.run, key=key)  # publishing the same run again does nothing
    assert again["already"] and not again["published"] and _versions(tmp_path) == ["v0001"]
    second = pipeline.run_pipeline(source, tmp_path, policy=LIGHT, key=key, run_id="nightly")
    assert second.run.attempt == 2 and second.passed and second.already_published
    assert _versions(tmp_path) == ["v0001"]
    record = runs.read_record(second.run, "merge_deid")
    assert record is not None and record.carried_from == 1  # de-identification was not done again
    _, stamp = runs.read_stamped(runs.result_path(second.run, "reid"))
    assert stamp is not None and stamp.attempt == 2 and stamp.carried_from == 1
    provenance = json.loads((tmp_path / "releases" / LIGHT.release.name / "v0001" / "provenance.json").read_text())
    assert provenance["run_id"] == "nightly" and provenance["attempt"] == 1


def test_a_crash_in_attempt_two_is_not_run_and_the_stale_file_is_never_read(
    source: Path, tmp_path: Path, key: PseudonymKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = LIGHT.with_overrides({"reid.k": 2})  # other inputs than attempt 1: nothing is carried
    run1 = pipeline.begin(source, tmp_path, "r", policy=LIGHT, key=key)
    pipeline.step_deid(run1, key=key)
    pipeline.step_cohort(run1, key=key)
    for check_id in pipeline.enabled_checks(LIGHT):
        pipeline.run_check(run1, check_id)
    assert pipeline.step_gate(run1)["passed"]
    stale = runs.result_path(run1, "phi").read_bytes()

    run2 = pipeline.begin(source, tmp_path, "r", policy=policy, key=key)
    assert run2.attempt == 2
    pipeline.step_deid(run2, key=key)
    pipeline.step_cohort(run2, key=key)
    pipeline.run_check(run2, "reid")

    def crash(current: runs.Run) -> CheckResult:
        raise RuntimeError("the OCR engine died")

    monkeypatch.setattr("guards.checks.phi.check", crash)
    with pytest.raises(RuntimeError):
        pipeline.run_check(run2, "phi")
    gate = pipeline.step_gate(run2)
    assert not gate["passed"]
    assert any("'phi'" in r and "crashed in attempt 2" in r and "RuntimeError" in r for r in gate["reasons"])
    runs.result_path(run2, "phi").write_bytes(stale)  # attempt 1's file put back is stale, not attempt 2's result
    runs.error_path(run2, "phi").unlink()
    gate = pipeline.step_gate(run2)
    assert not gate["passed"] and any("stale" in r and "attempt 1" in r for r in gate["reasons"])
    report = json.loads((run2.paths.report / "gate.json").read_text())
    [phi] = [o for o in report["outcomes"] if o["id"] == "phi"]
    assert phi["outcome"] == "not run"
    assert pipeline.step_publish(run2, key=key)["published"] is False
    assert _versions(tmp_path) == []


def test_a_memory_source_runs_the_whole_pipeline_and_publishes(source: Path, tmp_path: Path, key: PseudonymKey) -> None:
    fs = fsspec.filesystem("memory")
    for path in source.rglob("*"):
        if path.is_file():
            fs.pipe(f"/guard-test-src/{path.relative_to(source).as_posix()}", path.read_bytes())
    try:
        result = pipeline.run_pipeline("memory://guard-test-src", tmp_path, policy=LIGHT, key=key, run_id="remote")
    finally:
        fs.rm("/guard-test-src", recursive=True)
    assert result.passed and result.release is not None
    snap = result.run.require_snapshot()
    assert snap.kind == "fsspec" and snap.labels is not None and snap.labels.is_file()
    n_files = sum(1 for p in source.rglob("*") if p.is_file())
    assert result.counts["seen"] == n_files and result.counts["published"] > 0
    assert len(list((result.release / "data").rglob("*.dcm"))) == result.counts["published"]


def _examined_everything(current: runs.Run) -> CheckResult:
    n = current.cohort().num_rows
    return CheckResult(id="study_count", findings=(Finding("studies", n, 1, "pass" if n >= 1 else "fail"),),
                       examined={"studies": n})


def test_a_check_registered_with_one_line_runs_and_is_in_gate_json(
    source: Path, tmp_path: Path, key: PseudonymKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "BUILTIN", (*registry.BUILTIN, registry.Check("study_count", _examined_everything)))
    result = pipeline.run_pipeline(source, tmp_path, policy=LIGHT, key=key, run_id="extra")
    gate = json.loads((result.run.paths.report / "gate.json").read_text())
    [outcome] = [o for o in gate["outcomes"] if o["id"] == "study_count"]
    assert outcome["role"] == "blocking" and outcome["outcome"] == "pass" and outcome["examined"]["studies"] == 4


def test_a_policy_naming_an_unregistered_check_is_refused(tmp_path: Path, key: PseudonymKey) -> None:
    with pytest.raises(Exception, match="unknown check"):
        pipeline.start_run(tmp_path, "r", source=tmp_path, policy=LIGHT.with_overrides({"gate.off": ["nope"]}),
                           key=key)


def test_private_side_is_owner_only_and_the_release_is_readable_with_its_labels(
    source: Path, tmp_path: Path, key: PseudonymKey
) -> None:
    """Under a permissive umask too: OUT/runs and OUT/private 0700, the crosswalk 0600; every file of the release
    0644 in 0755 folders; the release's labels.csv has one row per released study, under the release's UIDs."""
    import csv
    import os
    import stat

    from guards.manifest import read_table

    old = os.umask(0o002)
    try:
        result = pipeline.run_pipeline(source, tmp_path, policy=LIGHT, key=key, run_id="modes")
    finally:
        os.umask(old)
    assert result.release is not None

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(tmp_path / "runs") == 0o700 and mode(tmp_path / "private") == 0o700
    [crosswalk] = list((tmp_path / "private").glob("crosswalk-*.parquet"))
    assert mode(crosswalk) == 0o600
    files = [p for p in result.release.rglob("*") if p.is_file()]
    assert len(files) > 5 and {mode(p) for p in files} == {0o644}
    assert {mode(p) for p in [result.release, *(p for p in result.release.rglob("*") if p.is_dir())]} == {0o755}
    with (result.release / "labels.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    released = set(read_table(result.release / "manifest.parquet").column("StudyInstanceUID").to_pylist())
    assert [r["StudyInstanceUID"] for r in rows] == sorted(released) and len(rows) == 4
    labels = {int(line.split(",")[1]) for line in (source / "labels.csv").read_text().splitlines()[1:]}
    assert {int(r["label"]) for r in rows} <= labels
    sheet = (result.release / "datasheet.md").read_text(encoding="utf-8")
    assert "`labels.csv`" in sheet
    # each exclusion's cause in its own row (the source's labels.csv is a sidecar, not a study); no "indexed 0"
    assert "| excluded | sidecar table (ingest.sidecars), not an instance | 1 |" in sheet
    counts = sheet.split("## Input files")[1].split("## Files")[0]
    assert "indexed" not in counts and "None" not in counts, counts


def test_a_bad_label_is_the_first_reason_of_the_report(source: Path, tmp_path: Path, key: PseudonymKey) -> None:
    """A step that fails on bad input (here the cohort, on a label that is not an integer) is named, with the
    offending line, as the first reason of gate.json and the report; the gate runs after it as the DAG's does
    (trigger rule all_done)."""
    from guards.errors import InputError

    bad = tmp_path / "src"
    shutil.copytree(source, bad)
    lines = (bad / "labels.csv").read_text().splitlines()
    uid = lines[1].split(",")[0]
    lines[1] = f"{uid},not an integer"
    (bad / "labels.csv").write_text("\n".join(lines) + "\n")
    run = pipeline.begin(bad, tmp_path / "out", "bad-label", policy=LIGHT, key=key)
    pipeline.step_deid(run, key=key)
    with pytest.raises(InputError, match="line 2"):
        pipeline.step_cohort(run, key=key)
    gate = pipeline.step_gate(run)
    assert not gate["passed"]
    first = gate["reasons"][0]
    assert first.startswith("Step 'cohort' failed in this attempt (InputError: labels table") and "line 2" in first
    assert "'not an integer' is not an integer" in first
    html = (run.paths.report / "index.html").read_text(encoding="utf-8")
    assert "Step &#x27;cohort&#x27; failed" in html or "Step 'cohort' failed" in html
    assert pipeline.step_publish(run, key=key)["published"] is False


def test_a_second_run_on_the_same_out_is_refused_while_the_first_holds_it(
    source: Path, tmp_path: Path, key: PseudonymKey
) -> None:
    import subprocess
    import sys

    from guards.errors import InputError

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from guards.atomic import exclusive\n"
        f"with exclusive(Path({str(out)!r}), what='guard run nightly'):\n"
        "    print('held', flush=True); time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=r"in use by guard run nightly \(pid \d+\); wait for it"):
            pipeline.run_pipeline(source, out, policy=LIGHT, key=key, run_id="second")
        assert not (out / "runs" / "second").exists()  # refused before anything was written
    finally:
        holder.kill()
        holder.wait()
    result = pipeline.run_pipeline(source, out, policy=LIGHT, key=key, run_id="second")  # free again
    assert result.release is not None


LIGHT_TOML = light_toml()


@pytest.mark.timeout(300)
def test_two_guard_runs_started_at_once_on_one_out_never_publish_a_release_unlike_its_manifest(
    source: Path, tmp_path: Path, key_hex: str
) -> None:
    """Two real ``guard run`` processes on one OUT, started together without run ids (issue 16): the one that
    does not get OUT's lock refuses with a clear message (exit 2) or, if the first is already done, runs after
    it; every release's manifest lists exactly its files, each with its SHA-256."""
    import hashlib
    import os
    import subprocess
    import sys

    import pyarrow.parquet as pq

    out = tmp_path / "out"
    policy = tmp_path / "policy.toml"
    policy.write_text(LIGHT_TOML, encoding="utf-8")
    env = {**os.environ, "GUARD_KEY": key_hex}
    command = [sys.executable, "-m", "guards.cli", "run", str(source), str(out), "--policy", str(policy)]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errors = [p.communicate(timeout=240)[1] for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) in ([0, 0], [0, 2]), errors
    for code, err in zip(codes, errors, strict=True):
        if code == 2:
            assert "is in use by guard run run-" in err and "wait for it to finish, or use another OUT" in err
    runs_made = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs_made) == codes.count(0)  # the refused run wrote no run folder
    versions = _versions(out)
    assert len(versions) == codes.count(0)
    for version in versions:
        release = out / "releases" / LIGHT.release.name / version
        rows = pq.read_table(release / "manifest.parquet").to_pylist()
        files = {str(p.relative_to(release / "data")) for p in (release / "data").rglob("*") if p.is_file()}
        assert files == {r["path"] for r in rows}
        for r in rows:
            assert hashlib.sha256((release / "data" / r["path"]).read_bytes()).hexdigest() == r["sha256"], r["path"]
