"""guards.run.Run.input_fingerprint: what a carried step depends on. Waivers are read by the gate alone, so a
steward's waiver does not make the checks run again; every other input does."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from guards.policy import ReleasePolicy
from guards.run import Run
from guards.sources import Snapshot


def _run(tmp_path: Path, policy: ReleasePolicy, *, snapshot_fp: str = "s1", key_fp: str = "k1") -> Run:
    snap = Snapshot(kind="tree", root=tmp_path, index=tmp_path / "index.parquet", labels=None, demographics=None,
                    counts={"seen": 1, "indexed": 1, "quarantined": 0, "excluded": 0}, fingerprint=snapshot_fp)
    run = Run.start(tmp_path / "out", "r", source=tmp_path, policy=policy, key_fingerprint=key_fp, device="cpu")
    return run.with_snapshot(snap)


def test_waivers_are_not_an_input_of_the_steps(tmp_path: Path) -> None:
    base = _run(tmp_path, ReleasePolicy())
    waived = replace(base, policy=ReleasePolicy().with_overrides(
        {"gate.waivers": [{"check": "membership", "reason": "steward: 20 studies are too few"}]}))
    assert waived.input_fingerprint() == base.input_fingerprint()


def test_policy_snapshot_key_and_release_under_test_are_inputs(tmp_path: Path) -> None:
    base = _run(tmp_path, ReleasePolicy())
    off = ReleasePolicy().with_overrides({"gate.advisory": [], "gate.off": ["attribute"]})
    fingerprints = {
        base.input_fingerprint(),
        replace(base, policy=ReleasePolicy().with_overrides({"reid.k": 7})).input_fingerprint(),
        replace(base, policy=off).input_fingerprint(),
        _run(tmp_path, ReleasePolicy(), snapshot_fp="s2").input_fingerprint(),
        _run(tmp_path, ReleasePolicy(), key_fp="k2").input_fingerprint(),
        replace(base, under_test=tmp_path / "release").input_fingerprint(),
    }
    assert len(fingerprints) == 6
