"""scripts/demo.py: the demo steward waives only what a waiver may cover, each waiver saying what it covers."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

spec = importlib.util.spec_from_file_location("demo", Path(__file__).resolve().parents[2] / "scripts" / "demo.py")
assert spec is not None and spec.loader is not None
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)


def _gate(*outcomes: tuple[str, str, int]) -> dict[str, Any]:
    return {
        "outcomes": [{"id": i, "role": "blocking", "outcome": o, "examined": {"patients": n}} for i, o, n in outcomes],
        "checks": [{"id": "membership", "status": "fail", "metric": "auc", "value": 0.87, "threshold": 0.65,
                    "subgroup": "age_band=18-39", "needs": ""},
                   {"id": "unlearnability", "status": "inconclusive", "metric": "balanced_accuracy_clean",
                    "value": 0.5, "threshold": 0.6, "subgroup": "all", "needs": "a clean victim that learns"}],
    }


def test_failed_and_inconclusive_checks_are_waived_with_what_they_found() -> None:
    waivers = demo.demo_waivers(_gate(("phi", "pass", 9), ("membership", "fail", 9),
                                      ("unlearnability", "inconclusive", 9)))
    assert [w["check"] for w in waivers] == ["membership", "unlearnability"]
    assert "auc (age_band=18-39) 0.87 against 0.65" in waivers[0]["reason"]
    assert "needs a clean victim that learns" in waivers[1]["reason"]
    assert all("generated samples" in w["reason"] for w in waivers)


def test_nothing_is_waived_when_a_check_did_not_run_or_examined_nothing() -> None:
    assert demo.demo_waivers(_gate(("membership", "fail", 9), ("phi", "not run", 0))) == []
    assert demo.demo_waivers(_gate(("membership", "fail", 0))) == []
    assert demo.demo_waivers(_gate(("phi", "pass", 9))) == []
