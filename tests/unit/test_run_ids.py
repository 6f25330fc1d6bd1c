"""Run ids that cannot collide, and what killed runs leave behind cleaned when a new run takes OUT (issue 16).

With one-second ids, two runs started in the same second shared one run folder and published two releases whose
manifests disagreed with their files. A killed run's staging folder and temporary files stayed forever.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from guards import pipeline
from guards.run import _RUN_ID


def test_run_ids_started_together_are_unique_sortable_and_valid() -> None:
    ids = [pipeline.new_run_id() for _ in range(2000)]  # far more than one per second, one per microsecond
    assert len(set(ids)) == len(ids)
    assert all(_RUN_ID.match(i) for i in ids)
    stamps = [i.rsplit("-", 1)[0] for i in ids]  # the time part: fixed width, so text order is time order
    assert stamps == sorted(stamps)
    assert len({len(i) for i in ids}) == 1


def _killed_run(out: Path, run_id: str) -> Path:
    """The folders a run killed while staging its release leaves: staging/ and a temporary file of a step."""
    run = out / "runs" / run_id
    (run / "staging" / "data").mkdir(parents=True)
    (run / "staging" / "data" / "x.dcm").write_bytes(b"half a release")
    (run / "deid").mkdir()
    tmp = run / "deid" / ".manifest.parquet.tmp"
    tmp.write_bytes(b"partial")
    old = time.time() - pipeline.STALE_TMP_S - 60
    os.utime(tmp, (old, old))
    private_tmp = out / "private" / "runs" / run_id / "ingest" / ".index.parquet.tmp"
    private_tmp.parent.mkdir(parents=True)
    private_tmp.write_bytes(b"partial")
    os.utime(private_tmp, (old, old))
    return run


def test_a_killed_runs_staging_and_old_temporary_files_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    killed = _killed_run(out, "run-killed")
    release = out / "releases" / "demo" / "v0001"
    release.mkdir(parents=True)
    (release / "manifest.parquet").write_bytes(b"published")
    fresh = out / "runs" / "run-other" / "deid" / ".part.tmp"  # just written: it may be renamed any moment
    fresh.parent.mkdir(parents=True)
    fresh.write_bytes(b"in flight")
    current = _killed_run(out, "run-current")
    removed = pipeline.clean_stale_runs(out, keep="run-current")
    assert sorted(removed) == ["private/runs/run-killed/ingest/.index.parquet.tmp", "runs/run-killed/deid/"
                               ".manifest.parquet.tmp", "runs/run-killed/staging"]
    assert not (killed / "staging").exists() and (killed / "deid").is_dir()
    assert (release / "manifest.parquet").read_bytes() == b"published"  # a published release is never touched
    assert fresh.is_file()
    assert (current / "staging").is_dir() and (current / "deid" / ".manifest.parquet.tmp").is_file()


def test_a_run_that_holds_its_lock_keeps_its_staging(tmp_path: Path) -> None:
    out = tmp_path / "out"
    busy = _killed_run(out, "run-publishing")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from pathlib import Path; from guards.atomic import exclusive\n"
        f"with exclusive(Path({str(busy)!r}), what='publish of run run-publishing'):\n"
        "    print('held', flush=True); time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        removed = pipeline.clean_stale_runs(out, keep=None)
        assert "runs/run-publishing/staging" not in removed
        assert (busy / "staging" / "data" / "x.dcm").is_file()
    finally:
        holder.kill()
        holder.wait()
    assert "runs/run-publishing/staging" in pipeline.clean_stale_runs(out, keep=None)  # released: now stale
