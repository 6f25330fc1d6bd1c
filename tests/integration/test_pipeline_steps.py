"""guards.pipeline: the sharded de-identification equals the whole-tree one, and every file is accounted for."""

from __future__ import annotations

from pathlib import Path

import pytest

from guards import pipeline
from guards.keys import PseudonymKey
from guards.manifest import read_table
from guards.policy import ReleasePolicy
from guards.samples import Population, generate_corpus

POLICY = ReleasePolicy().with_overrides({"deid.clean_pixel_data": False})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src")
    generate_corpus(root, studies=10, seed=5, image_size=64, population=Population(ct_share=0.3))
    (root / "broken.dcm").write_bytes(b"not dicom at all")
    (root / "empty.dcm").write_bytes(b"")
    return root


def _tree(paths: pipeline.RunPaths) -> dict[str, bytes]:
    return {p.relative_to(paths.deid).as_posix(): p.read_bytes()
            for p in paths.deid.rglob("*.dcm") if ".shards" not in p.parts}


def test_sharded_deid_equals_whole_tree_and_accounts_for_every_file(
        corpus: Path, tmp_path: Path, key: PseudonymKey) -> None:
    run_one = pipeline.begin(corpus, tmp_path / "one", "r", policy=POLICY, key=key)
    run_three = pipeline.begin(corpus, tmp_path / "three", "r", policy=POLICY, key=key)
    one, three = run_one.paths, run_three.paths
    a = pipeline.step_deid(run_one, key=key, shards=1)
    b = pipeline.step_deid(run_three, key=key, shards=3)
    n_files = sum(1 for p in corpus.rglob("*") if p.is_file())
    for outcome in (a, b):
        c = outcome["counts"]
        assert c["seen"] == n_files == c["published"] + c["quarantined"] + c["excluded"]
        assert c["quarantined"] == 2 and c["excluded"] == 1  # broken + empty; labels.csv is a sidecar
    assert _tree(one) == _tree(three)  # same bytes whatever the sharding (keyed, deterministic)
    ma = sorted(read_table(one.deid / "manifest.parquet").to_pylist(), key=lambda r: r["source_path"])
    mb = sorted(read_table(three.deid / "manifest.parquet").to_pylist(), key=lambda r: r["source_path"])
    assert ma == mb
    # the private crosswalk is merged outside the run folder and holds originals -> pseudonyms
    cw = read_table(three.private / "crosswalk-r.parquet").to_pylist()
    assert cw and all(r["original"] != r["pseudonym"] for r in cw)
    assert not (three.private / "r").exists()


def test_merge_refuses_when_a_shard_is_missing(corpus: Path, tmp_path: Path, key: PseudonymKey) -> None:
    run = pipeline.begin(corpus, tmp_path, "r", policy=POLICY, key=key)
    shards = pipeline.plan_shards(run, shards=3)
    assert len(shards) >= 2
    for shard in shards[1:]:  # the first shard "crashed"
        pipeline.step_deid_shard(run, shard, key=key)
    with pytest.raises(Exception, match="a shard is missing"):
        pipeline.merge_deid(run)
    pipeline.step_deid_shard(run, shards[0], key=key)  # the retry
    assert pipeline.merge_deid(run)["counts"]["published"] > 0


def test_patients_stay_in_one_shard(corpus: Path, tmp_path: Path, key: PseudonymKey) -> None:
    run = pipeline.begin(corpus, tmp_path, "r", policy=POLICY, key=key)
    owner: dict[str, int] = {}
    for shard in pipeline.plan_shards(run, shards=4):
        for row in read_table(run.paths.ingest / "shards" / f"{shard:04d}.parquet").to_pylist():
            assert owner.setdefault(row["PatientID"], shard) == shard
    assert len(owner) > 1
