"""guards.publish: a release appears whole or not at all, and only when its gate passed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guards.errors import PublishError
from guards.manifest import empty_row, read_table, to_table, write_table
from guards.publish import publish, stage_release


def _tree(tmp: Path) -> tuple[Path, Path]:
    tree = tmp / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "1.dcm").write_bytes(b"x" * 10)
    rows = []
    for path, status, reason in [("a/1.dcm", "published", ""), ("b/2.dcm", "quarantined", "zero bytes")]:
        row = empty_row(path)
        row.update(status=status, reason=reason, source_path=f"private/{path}", StudyInstanceUID=f"2.25.{path[0]}")
        rows.append(row)
    write_table(to_table(rows), tree / "manifest.parquet")
    return tree, tree / "manifest.parquet"


def _staged(tmp: Path, *, passed: bool, labels: dict[str, int] | None = None) -> Path:
    tree, manifest = _tree(tmp)
    report = tmp / "report"
    report.mkdir()
    (report / "index.html").write_text("<html></html>")
    (report / "gate.json").write_text(json.dumps({"passed": passed, "checks": [], "waivers": []}))
    staged = stage_release(tree=tree, manifest=manifest, report_dir=report, staging=tmp / "staging", datasheet="# ds",
                           labels={"2.25.a": 1, "2.25.b": 0} if labels is None else labels)
    return staged.path


def test_publish_renames_staging_into_a_new_version(tmp_path: Path) -> None:
    staging = _staged(tmp_path, passed=True)
    target = publish(staging, tmp_path / "releases", name="demo")
    assert target == tmp_path / "releases" / "demo" / "v0001"
    assert not staging.exists()
    assert (target / "data" / "a" / "1.dcm").read_bytes() == b"x" * 10
    manifest = read_table(target / "manifest.parquet")
    # only published rows, and no source paths (they can carry PHI)
    assert manifest.column("status").to_pylist() == ["published"]
    assert manifest.column("source_path").to_pylist() == [None]


def test_second_publish_gets_next_version_and_leaves_the_first_untouched(tmp_path: Path) -> None:
    first = publish(_staged(tmp_path / "one", passed=True), tmp_path / "releases", name="demo")
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    second = publish(_staged(tmp_path / "two", passed=True), tmp_path / "releases", name="demo")
    assert second.name == "v0002"
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before


def test_failed_gate_publishes_nothing(tmp_path: Path) -> None:
    staging = _staged(tmp_path, passed=False)
    with pytest.raises(PublishError, match="gate did not pass"):
        publish(staging, tmp_path / "releases", name="demo")
    assert not (tmp_path / "releases" / "demo").exists() or not any((tmp_path / "releases" / "demo").iterdir())


def test_incomplete_staging_is_refused(tmp_path: Path) -> None:
    staging = _staged(tmp_path, passed=True)
    (staging / "datasheet.md").unlink()
    with pytest.raises(PublishError, match="datasheet.md is missing"):
        publish(staging, tmp_path / "releases", name="demo")


def test_existing_version_is_never_overwritten(tmp_path: Path) -> None:
    publish(_staged(tmp_path / "one", passed=True), tmp_path / "releases", name="demo", version="v0001")
    with pytest.raises(PublishError, match="already exists"):
        publish(_staged(tmp_path / "two", passed=True), tmp_path / "releases", name="demo", version="v0001")


@pytest.mark.parametrize("name", ["../escape", "", "a/b", "x" * 65])  # path tricks and over-long names
def test_release_names_are_validated(tmp_path: Path, name: str) -> None:
    with pytest.raises(PublishError, match="release name"):
        publish(_staged(tmp_path, passed=True), tmp_path / "releases", name=name)


def test_the_release_ships_one_label_row_per_released_study(tmp_path: Path) -> None:
    target = publish(_staged(tmp_path, passed=True), tmp_path / "releases", name="demo")
    assert (target / "labels.csv").read_text() == "StudyInstanceUID,label\n2.25.a,1\n"  # the quarantined b: absent
    unknown = publish(_staged(tmp_path / "u", passed=True, labels={"2.25.a": -1}), tmp_path / "releases", name="u")
    assert (unknown / "labels.csv").read_text() == "StudyInstanceUID,label\n2.25.a,\n"


def test_a_released_study_missing_from_the_cohort_stops_the_publish(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="1 released studies are not in the cohort"):
        _staged(tmp_path, passed=True, labels={"2.25.b": 0})


def test_released_files_are_readable_whatever_the_umask(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o077)
    try:
        target = publish(_staged(tmp_path, passed=True), tmp_path / "releases", name="demo")
    finally:
        os.umask(old)
    modes = {p.relative_to(target).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in target.rglob("*")}
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert {"data/a/1.dcm", "labels.csv", "gate.json", "report/index.html", "manifest.parquet"} <= set(modes)
    assert all(m == (0o755 if (target / p).is_dir() else 0o644) for p, m in modes.items()), modes
