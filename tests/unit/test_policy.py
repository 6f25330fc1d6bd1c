"""guards.policy: one typed, validated object; guard.toml documents exactly its keys."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from guards.errors import PolicyError
from guards.policy import ReleasePolicy, load_policy, policy_from_dict

GUARD_TOML = Path(__file__).resolve().parents[2] / "guard.toml"


def _keys(obj: Any, prefix: str = "") -> set[str]:
    keys = set()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys |= _keys(value, f"{prefix}{f.name}.")
        else:
            keys.add(f"{prefix}{f.name}")
    return keys


def test_guard_toml_is_the_defaults_and_documents_every_key() -> None:
    assert load_policy(GUARD_TOML) == ReleasePolicy()
    data = tomllib.loads(GUARD_TOML.read_text())
    in_file = {f"{s}.{k}" for s, table in data.items() for k in table}
    in_file |= {"gate.waivers"}  # documented as a commented example: the default is no waiver
    assert in_file == _keys(ReleasePolicy())
    text = GUARD_TOML.read_text()
    for key in _keys(ReleasePolicy()):
        assert f"{key.split('.')[-1]} = " in text or key == "gate.waivers"


def test_every_guard_toml_key_has_a_comment_above_it() -> None:
    """Each ``key = value`` line is preceded (in its comment block) by ``# key: what it does``."""
    section = ""
    block: list[str] = []
    undocumented: list[str] = []
    seen: set[str] = set()
    for line in GUARD_TOML.read_text().splitlines():
        header = re.match(r"^\[(\w+)\]$", line)
        if header:
            section, block = header.group(1), []
            continue
        assignment = re.match(r"^(\w+) = ", line)
        if assignment:
            key = assignment.group(1)
            seen.add(f"{section}.{key}")
            if not any(c.startswith(f"# {key}:") for c in block):
                undocumented.append(f"{section}.{key}")
            block = []
        elif line.startswith("#"):
            block.append(line)
    assert seen == _keys(ReleasePolicy()) - {"gate.waivers"}  # every assignment line found and checked
    assert undocumented == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"protect": {"epsilon": 2.0}}, "protect.epsilon: 2.0 is out of range"),  # budget above the range
        ({"protect": {"epsilon": "8/255"}}, "protect.epsilon: expected a number"),  # wrong type
        ({"deid": {"retain_longitudinal": "some"}}, "'some' is not allowed; use one of"),  # not a Literal value
        ({"deid": {"retain_uid": True}}, "unknown key(s) ['retain_uid']"),  # a typo names the allowed keys
        ({"nope": {}}, "unknown key(s) ['nope']"),  # unknown section
        ({"deid": {"clean_pixel_data": "yes"}}, "expected true or false"),  # strings are not booleans
        ({"deid": {"date_shift_days": [10, -10]}}, "must be [low, high]"),  # reversed range
        ({"gate": {"blocking": ["phi"], "advisory": ["phi"]}}, "both blocking and advisory"),
        ({"gate": {"waivers": [{"check": "phi", "reason": "ok"}]}}, "written reason of at least 10"),
        ({"reid": {"k": 0}}, "reid.k: 0 is out of range"),
        ({"ingest": {"max_file_bytes": 0}}, "ingest.max_file_bytes: 0 is out of range"),  # nothing would pass
        ({"ingest": {"sidecars": "labels.csv"}}, "ingest.sidecars: expected a list"),  # a string is not a list
        ({"ingest": {"follow_symlinks": 1}}, "ingest.follow_symlinks: expected true or false"),
    ],
)
def test_invalid_values_name_the_key_and_what_is_allowed(data: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as e:
        policy_from_dict(data)
    assert message in str(e.value)


def test_overrides_are_validated_like_the_file() -> None:
    policy = ReleasePolicy().with_overrides({"reid.k": 5, "protect.epsilon": 0.02})
    assert (policy.reid.k, policy.protect.epsilon) == (5, 0.02)
    with pytest.raises(PolicyError, match="section.key"):
        ReleasePolicy().with_overrides({"k": 5})
    with pytest.raises(PolicyError, match="reid.max_risk"):
        ReleasePolicy().with_overrides({"reid.max_risk": 1.5})


def test_missing_or_broken_policy_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[deid\n")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(bad)
