"""`guard run` on 20 generated studies with the default policy: an honest block, then a steward's waived pass.

Twenty studies are too few for the statistical checks to show the release safe: the first attempt must exit 1
(the gate failed, nothing published) and its report must name each inconclusive blocking check with what would
make it conclusive. On these samples a blocking check may also fail outright, and the gate is right to say
so: the representation floor (a 20-study cohort has an age band with 1 study, under the floor of 5), or
membership inference when the random half of members is easy to tell apart (a proxy trained on 9 patients'
images memorises them). A steward who accepts all of this
writes one waiver per blocking check that did not pass; the second attempt of the same run (``--run-id``) then
carries every measured step, exits 0, publishes once, and its datasheet lists each waiver with what it covered.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from guards.cli import EXIT_GATE_FAILED, EXIT_OK, main
from guards.samples import generate_corpus

pytestmark = pytest.mark.slow(reason="`guard run` three times on 20 studies: protect and six checks measured once")

STUDIES = 20
SEED = 3


def gate_ids(gate: object) -> list[str]:
    return [o["id"] for o in gate["outcomes"]]  # type: ignore[index]


def _gate(out: Path) -> dict[str, object]:
    return json.loads((out / "runs" / "r20" / "report" / "gate.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def attempts(tmp_path_factory: pytest.TempPathFactory, key_hex: str) -> dict[str, object]:
    root = tmp_path_factory.mktemp("cli20")
    generate_corpus(root / "src", studies=STUDIES, seed=SEED)
    mp = pytest.MonkeyPatch()
    mp.setenv("GUARD_KEY", key_hex)
    mp.chdir(root)  # relative SRC and OUT, as a user types them
    try:
        first_rc = main(["run", "src", "out", "--run-id", "r20"])
        first = _gate(root / "out")
        first_releases = sorted((root / "out" / "releases").glob("*/v[0-9]*"))
        not_passed = [o for o in first["outcomes"] if o["role"] == "blocking" and o["outcome"] != "pass"]  # type: ignore[attr-defined]
        policy = root / "waivers.toml"
        policy.write_text("".join(
            f'[[gate.waivers]]\ncheck = "{o["id"]}"\nreason = "test steward: {o["id"]} is {o["outcome"]} on'
            f' {STUDIES} generated studies"\n\n' for o in not_passed), encoding="utf-8")
        second_rc = main(["run", "src", "out", "--run-id", "r20", "--policy", str(policy)])
        stamps = {p.stem: json.loads(p.read_text(encoding="utf-8")).get("stamp")
                  for p in (root / "out" / "runs" / "r20" / "checks").glob("*.json")}
        second = _gate(root / "out")
        log = io.StringIO()
        handler = logging.StreamHandler(log)
        logging.getLogger().addHandler(handler)
        try:
            third_rc = main(["run", "src", "out", "--run-id", "r20", "--policy", str(policy)])
        finally:
            logging.getLogger().removeHandler(handler)
    finally:
        mp.undo()
    return {"root": root, "first_rc": first_rc, "first": first, "first_releases": first_releases,
            "not_passed": not_passed, "second_rc": second_rc, "second": second, "stamps": stamps, "third_rc": third_rc,
            "third_log": log.getvalue()}


def test_first_attempt_blocks_and_names_each_inconclusive_check_with_its_needs(attempts: dict[str, object]) -> None:
    assert attempts["first_rc"] == EXIT_GATE_FAILED
    gate = attempts["first"]
    assert gate["passed"] is False  # type: ignore[index]
    assert attempts["first_releases"] == []
    outcomes = {o["id"]: o for o in gate["outcomes"]}  # type: ignore[index]
    assert all(o["outcome"] != "not run" for o in outcomes.values()), outcomes
    inconclusive = [i for i, o in outcomes.items() if o["role"] == "blocking" and o["outcome"] == "inconclusive"]
    assert inconclusive, "20 studies are too few for every statistical check to be conclusive"
    reasons = gate["reasons"]  # type: ignore[index]
    for check_id in inconclusive:
        named = [r for r in reasons if f"Blocking check '{check_id}' is inconclusive" in r]
        assert named and all("Conclusive with:" in r for r in named), (check_id, reasons)
        assert any(f"waive it in guard.toml ([[gate.waivers]] check = '{check_id}'" in r for r in reasons)
    html = (attempts["root"] / "out" / "runs" / "r20" / "report" / "index.html").read_text(encoding="utf-8")  # type: ignore[operator]
    for check_id in inconclusive:
        assert check_id in html
    assert "Conclusive with" in html or "conclusive with" in html


def test_waived_second_attempt_exits_0_carries_the_checks_and_lists_the_waivers(attempts: dict[str, object]) -> None:
    assert attempts["second_rc"] == EXIT_OK
    gate = attempts["second"]
    assert gate["passed"] is True and gate["attempt"] == 2  # type: ignore[index]
    waived = {o["id"]: o for o in gate["outcomes"] if o["outcome"] == "waived"}  # type: ignore[index]
    not_passed = {o["id"]: o["outcome"] for o in attempts["not_passed"]}  # type: ignore[attr-defined]
    assert {i: o["was"] for i, o in waived.items()} == not_passed
    root = attempts["root"]
    stamps = {i: s for i, s in attempts["stamps"].items() if s}  # type: ignore[attr-defined]
    assert set(stamps) >= set(gate_ids(gate)) and all(s["attempt"] == 2 for s in stamps.values())
    assert all(s.get("carried_from") == 1 for s in stamps.values()), stamps  # waivers are not an input of a check
    releases = sorted((root / "out" / "releases").glob("*/v[0-9]*"))  # type: ignore[operator]
    assert [r.name for r in releases] == ["v0001"]
    sheet = (releases[0] / "datasheet.md").read_text(encoding="utf-8")
    for check_id, was in not_passed.items():
        assert f"`{check_id}` (was {was})" in sheet, sheet


def test_third_attempt_publishes_nothing_new(attempts: dict[str, object]) -> None:
    assert attempts["third_rc"] == EXIT_OK
    assert "already published" in attempts["third_log"]  # type: ignore[operator]
    assert [r.name for r in (attempts["root"] / "out" / "releases").glob("*/v[0-9]*")] == ["v0001"]  # type: ignore[operator]
