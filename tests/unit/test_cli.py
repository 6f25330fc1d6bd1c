"""guards.cli: exit codes and refusals that do not need the heavy steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guards.cli import main
from guards.manifest import read_table


def test_run_without_a_key_refuses_with_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("GUARD_KEY", raising=False)
    (tmp_path / "src").mkdir()
    assert main(["run", str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    assert "no pseudonym key" in caplog.text
    assert not (tmp_path / "out" / "releases").exists()


def test_bad_policy_is_a_usage_error_naming_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture, key_hex: str) -> None:
    monkeypatch.setenv("GUARD_KEY", key_hex)
    policy = tmp_path / "bad.toml"
    policy.write_text("[protect]\nepsilon = 3.0\n")
    assert main(["deid", str(tmp_path), str(tmp_path / "out"), "--policy", str(policy)]) == 2
    assert "protect.epsilon" in caplog.text
    assert key_hex not in caplog.text


def test_unknown_command_is_exit_2() -> None:
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2


def test_run_paths_check_the_release_under_test_and_keep_the_deid_tree_as_reference(tmp_path: Path) -> None:
    from guards.pipeline import RunPaths
    from guards.policy import ReleasePolicy

    release = tmp_path / "release"
    for enabled in (True, False):
        policy = ReleasePolicy().with_overrides({"protect.enabled": enabled})
        paths = RunPaths(out=tmp_path / "work", run_id="check", under_test=release)
        assert paths.release_tree(policy) == release
        assert paths.deid != release
    assert RunPaths(out=tmp_path, run_id="r").release_tree(ReleasePolicy()) == tmp_path / "runs" / "r" / "protect"


def test_check_reads_the_release_in_place_and_leaves_it_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key_hex: str
) -> None:
    """`guard check` with protection off in the policy: the release is read in place (every published image
    examined), never replaced or deleted, and the exit code is the gate's decision."""
    from guards.samples import generate_corpus

    monkeypatch.setenv("GUARD_KEY", key_hex)
    src = tmp_path / "src"
    generate_corpus(src, studies=16, seed=3, image_size=64)
    policy = tmp_path / "policy.toml"
    policy.write_text(
        "[protect]\nenabled = false\n[pixels]\nocr_all = false\n"
        "[gate]\nblocking = [\"attribute\"]\nadvisory = []\n"  # reads every image, in seconds (not a victim)
        "off = [\"representation\", \"reid\", \"phi\", \"membership\", \"unlearnability\", \"inversion\"]\n"
    )
    release = tmp_path / "release"
    assert main(["deid", str(src), str(release), "--policy", str(policy)]) == 0
    before = {p.relative_to(release): p.read_bytes() for p in release.rglob("*") if p.is_file()}
    code = main(["check", str(release), "--source", str(src), "--policy", str(policy)])
    gate = json.loads((release / "report" / "gate.json").read_text(encoding="utf-8"))
    assert code == (0 if gate["passed"] else 1)
    [outcome] = [o for o in gate["outcomes"] if o["id"] == "attribute"]
    published = [r for r in read_table(release / "manifest.parquet").to_pylist() if r["status"] == "published"]
    assert outcome["examined"]["images"] == len(published) > 0
    after = {p.relative_to(release): p.read_bytes() for p in release.rglob("*") if p.is_file()
             if "report" not in p.relative_to(release).parts}
    assert after == before
    assert not (release / "report").is_symlink() and (release / "report" / "gate.json").is_file()
