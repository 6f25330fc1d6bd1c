"""The default generated samples under the default policy: the gate measures and passes, or blocks honestly.

The gate fails closed: a blocking check that could not show the release safe is ``inconclusive`` and blocks.
On the demo's samples membership inference is inconclusive (too few patients per subgroup for its 95 %
intervals), and unlearnability may fail on a subgroup: with the default (class-targeted adversarial) noise every
attacker of guards.checks.victims ends at chance on the whole release (measured 0.50 for all five against 0.70
clean-trained), but a subgroup's figure (sex=M, age 65-89 in one run) can lie above the band, issue 15's open
finding. So
the test asserts the honest outcome: the first attempt blocks on inconclusive checks, each named with what would
make it conclusive, and on a failed check only where that failure is unlearnability naming its attacker; never on
a missing one; the steward's second attempt of the same run with a written waiver for each carries every measured
step (nothing is computed again: waivers are not an input of the checks), passes, publishes, and the datasheet
lists the waivers.

The run is as a user runs it first, with nothing tuned: the demo's 150 studies and seed and `ReleasePolicy()`.
Every check must have run and examined data, every blocking check must pass or be waived, every input file
must be accounted for, and the published release must hold exactly the files the manifest lists as published.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guards.keys import PseudonymKey
from guards.manifest import read_table
from guards.pipeline import run_pipeline
from guards.policy import ReleasePolicy
from guards.samples import generate_corpus

# 222 s on a quiet 2-core machine, 852 s seen on a busy one: its own generous timeout, not the suite's 900 s
pytestmark = [pytest.mark.timeout(2400),
              pytest.mark.slow(reason="the one full-size release: 150 studies as `make demo`, every check with its "
                                      "models, then the waived second attempt")]

STUDIES = 150  # as `make demo`
SEED = 7  # as `make demo`
CHECKS = {"phi", "reid", "representation", "membership", "unlearnability", "attribute", "inversion"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, key: PseudonymKey) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("release")
    corpus = generate_corpus(root / "incoming", studies=STUDIES, seed=SEED)
    first = run_pipeline(corpus.root, root / "out", policy=ReleasePolicy(), key=key, run_id="default")
    if first.passed:
        return corpus.root, first
    gate = json.loads((first.paths.report / "gate.json").read_text(encoding="utf-8"))
    blocking = [o for o in gate["outcomes"] if o["role"] == "blocking"]
    assert {o["outcome"] for o in blocking} <= {"pass", "inconclusive", "fail"}, gate["reasons"]
    failed = [o["id"] for o in blocking if o["outcome"] == "fail"]
    assert set(failed) <= {"unlearnability"}, gate["reasons"]  # the default noise vs adaptive attackers (issue 15)
    if failed:
        worst = next(c for c in gate["checks"] if c["id"] == "unlearnability" and c["subgroup"] == "all"
                     and c["metric"] == "balanced_accuracy_protected")
        assert "worst case over 5 attacker(s)" in worst["evidence"], worst
    inconclusive = [o["id"] for o in blocking if o["outcome"] == "inconclusive"]
    assert inconclusive and first.release is None
    for check_id in inconclusive:
        assert any(f"'{check_id}' is inconclusive" in r for r in gate["reasons"]), gate["reasons"]
    waived = {o["id"]: o["outcome"] for o in blocking if o["outcome"] in ("inconclusive", "fail")}
    waivers = [{"check": c, "reason": f"demo samples: {c} is {outcome} on 150 generated studies"}
               for c, outcome in waived.items()]
    policy = ReleasePolicy().with_overrides({"gate.waivers": waivers})
    second = run_pipeline(corpus.root, root / "out", policy=policy, key=key, run_id="default")
    assert second.run.attempt == 2
    sheet = (second.release / "datasheet.md").read_text(encoding="utf-8") if second.release else ""
    for check_id, outcome in waived.items():
        assert f"`{check_id}` (was {outcome})" in sheet
    return corpus.root, second


def test_gate_passes_and_every_check_examined_data(run: tuple[Path, object]) -> None:
    _, result = run
    gate = json.loads((result.paths.report / "gate.json").read_text(encoding="utf-8"))  # type: ignore[attr-defined]
    assert result.passed and gate["passed"], gate["reasons"]  # type: ignore[attr-defined]
    outcomes = {o["id"]: o for o in gate["outcomes"]}
    assert CHECKS <= set(outcomes)
    for check_id in CHECKS:
        assert outcomes[check_id]["outcome"] != "not run", check_id
        assert any(v for v in outcomes[check_id]["examined"].values()), (check_id, outcomes[check_id])
    blocking = {o["id"] for o in gate["outcomes"] if o["role"] == "blocking"}
    assert {"phi", "reid", "unlearnability"} <= blocking
    assert {o["outcome"] for o in gate["outcomes"] if o["role"] == "blocking"} <= {"pass", "waived"}
    phi = outcomes["phi"]["examined"]
    assert phi["files"] > 0 and phi.get("hits", 0) == 0


def test_release_published_and_every_input_accounted_for(run: tuple[Path, object]) -> None:
    source, result = run
    release = result.release  # type: ignore[attr-defined]
    assert release is not None and release.name == "v0001" and release.parent.name == ReleasePolicy().release.name
    # the run's last manifest has one row per input file, whatever became of it ...
    rows = read_table(result.paths.release_tree(ReleasePolicy()) / "manifest.parquet").to_pylist()  # type: ignore[attr-defined]
    inputs = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    assert sorted(r["source_path"] for r in rows) == inputs
    assert {r["status"] for r in rows} <= {"published", "quarantined", "excluded"}
    assert all(r["reason"] for r in rows if r["status"] != "published")
    published = sorted(r["path"] for r in rows if r["status"] == "published")
    assert len(published) > 0.9 * len(inputs)
    # ... and the release holds exactly the published files, with a manifest of those alone
    on_disk = sorted(p.relative_to(release / "data").as_posix() for p in (release / "data").rglob("*") if p.is_file())
    assert on_disk == published
    assert sorted(r["path"] for r in read_table(release / "manifest.parquet").to_pylist()) == published
    assert json.loads((release / "gate.json").read_text(encoding="utf-8"))["passed"] is True
    assert (release / "report" / "index.html").is_file() and (release / "datasheet.md").is_file()


def test_inversion_figures_of_both_proxies_are_in_gate_json(run: tuple[Path, object]) -> None:
    """Issue 18: the model-inversion audit of the proxy trained on the protected release and of the one trained on
    the clean de-identified images are both in gate.json (advisory by default)."""
    _, result = run
    gate = json.loads((result.paths.report / "gate.json").read_text(encoding="utf-8"))  # type: ignore[attr-defined]
    [outcome] = [o for o in gate["outcomes"] if o["id"] == "inversion"]
    assert outcome["role"] == "advisory" and outcome["examined"]["proxies"] == 2
    assert outcome["examined"]["patients"] > 0 and outcome["examined"]["cells"] > 0
    overall = {c["metric"]: c for c in gate["checks"] if c["id"] == "inversion" and c["subgroup"] == "all"}
    for metric in ("reconstruction_auc", "rero_at_ssim_0.5", "proxy_balanced_accuracy"):
        for name in (metric, f"{metric}_clean"):
            assert isinstance(overall[name]["value"], float), (name, overall.get(name))
    assert "clean de-identified" in overall["reconstruction_auc_clean"]["evidence"]
