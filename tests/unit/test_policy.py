"""guards.policy: one typed, validated object; guard.toml documents exactly its keys."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from guards.errors import PolicyError
from guards.policy import (
    AttributeSection,
    CohortSection,
    DeidSection,
    GateSection,
    IngestSection,
    MembershipSection,
    PixelsSection,
    ProtectSection,
    ReidSection,
    ReleasePolicy,
    ReleaseSection,
    RepresentationSection,
    UnlearnabilitySection,
    Waiver,
    load_policy,
    policy_from_dict,
)

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


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ProtectSection(epsilon=5.0), "protect.epsilon: 5.0 is out of range; allowed 0.0 to 1.0"),
        (lambda: ProtectSection(epsilon=0.0), "protect.epsilon: 0.0 gives no noise; it must be above 0"),
        (lambda: PixelsSection(padding=-50), "pixels.padding: -50 is out of range; allowed 0 to"),
        (lambda: ProtectSection(surrogate="vgg"),  # type: ignore[arg-type]
         "protect.surrogate: 'vgg' is not allowed; use one of ['cnn', 'resnet18']"),
        (lambda: ProtectSection(init="gaussian"), "protect.init: 'gaussian' is not allowed"),  # type: ignore[arg-type]
        (lambda: ProtectSection(saliency="random"),  # type: ignore[arg-type]
         "protect.saliency: 'random' is not allowed"),
        (lambda: ProtectSection(rho=-0.1), "protect.rho: -0.1 is out of range"),
        (lambda: ProtectSection(max_rounds=0), "protect.max_rounds: 0 is out of range"),
        (lambda: PixelsSection(mode="blur"),  # type: ignore[arg-type]
         "pixels.mode: 'blur' is not allowed; use one of ['clean', 'quarantine', 'keep']"),
        (lambda: PixelsSection(min_confidence=101.0),
         "pixels.min_confidence: 101.0 is out of range; allowed 0.0 to 100.0"),
        (lambda: PixelsSection(verify_passes=-1), "pixels.verify_passes: -1 is out of range"),
        (lambda: PixelsSection(padding=2.5), "pixels.padding: expected an integer"),  # type: ignore[arg-type]
        (lambda: MembershipSection(attack="shadow"),  # type: ignore[arg-type]
         "membership.attack: 'shadow' is not allowed; use one of ['lira', 'rmia']"),
        (lambda: MembershipSection(reference_models=0), "membership.reference_models: 0 is out of range"),
        (lambda: DeidSection(retain_longitudinal="some"),  # type: ignore[arg-type]
         "deid.retain_longitudinal: 'some' is not allowed"),
        (lambda: DeidSection(date_shift_days=(10, -10)), "deid.date_shift_days: [10, -10] must be [low, high]"),
        (lambda: DeidSection(uid_root="2.025"), "deid.uid_root: '2.025' is not a valid UID root"),
        (lambda: DeidSection(clean_pixel_data="yes"), "deid.clean_pixel_data: expected true or false"),  # type: ignore[arg-type]
        (lambda: ReidSection(k=0), "reid.k: 0 is out of range"),
        (lambda: ReidSection(max_risk=1.5), "reid.max_risk: 1.5 is out of range; allowed 0.0 to 1.0"),
        (lambda: ReidSection(quasi_identifiers=("PatientSex", "PatientSex")),
         "reid.quasi_identifiers: ['PatientSex'] listed more than once"),
        (lambda: ReidSection(quasi_identifiers=("PatientID",)),
         "reid.quasi_identifiers[0]: 'PatientID' is a pseudonym"),
        (lambda: ReidSection(quasi_identifiers=("Station Name",)),
         "reid.quasi_identifiers[0]: 'Station Name' is not a DICOM keyword"),
        (lambda: RepresentationSection(prevalence_min=0.9, prevalence_max=0.1),
         "representation.prevalence_min: 0.9 must not exceed"),
        (lambda: RepresentationSection(min_share=2.0), "representation.min_share: 2.0 is out of range"),
        (lambda: AttributeSection(folds=1), "attribute.folds: 1 is out of range; allowed 2 to 100"),
        (lambda: UnlearnabilitySection(margin=-0.5), "unlearnability.margin: -0.5 is out of range"),
        (lambda: CohortSection(age_bands=(18, 0)), "cohort.age_bands: [18, 0] must be increasing"),
        (lambda: CohortSection(age_bands=(-5, 18)), "cohort.age_bands[0]: -5 is out of range"),
        (lambda: IngestSection(max_file_bytes=0), "ingest.max_file_bytes: 0 is out of range"),
        (lambda: ReleaseSection(seed=-1), "release.seed: -1 is out of range"),
        (lambda: ReleaseSection(name=" "), "release.name: an empty name is not allowed"),
        (lambda: GateSection(blocking=("phi",), advisory=("phi",)), "gate: check 'phi' is both blocking and advisory"),
        (lambda: GateSection(blocking=("",)), "gate.blocking[0]: an empty name is not allowed"),
        (lambda: Waiver(check="phi", reason="ok"), "written reason of at least 10"),
        (lambda: Waiver(check=" ", reason="a reason long enough"), "a waiver needs a check id"),
        (lambda: ReleasePolicy(protect={"epsilon": 5.0}), "protect.epsilon: 5.0 is out of range"),  # type: ignore[arg-type]
        (lambda: dataclasses.replace(ProtectSection(), epsilon=5.0), "protect.epsilon: 5.0 is out of range"),
    ],
)
def test_sections_refuse_bad_values_at_construction(make: Any, message: str) -> None:
    """Policy objects are valid once constructed, however they are made (not only through the TOML loader)."""
    with pytest.raises(PolicyError) as e:
        make()
    assert message in str(e.value)


def test_constructed_values_are_normalised() -> None:
    """Ints given for float keys become floats and lists become tuples, as the TOML loader gives them."""
    p = ProtectSection(epsilon=1, rho=1)
    assert (p.epsilon, p.rho) == (1.0, 1.0) and isinstance(p.epsilon, float)
    assert ProtectSection(enabled=False, epsilon=0).epsilon == 0.0  # no budget is fine when nothing is noised
    g = GateSection(blocking=["phi"], advisory=[], waivers=[{"check": "phi", "reason": "reviewed by the steward"}])  # type: ignore[arg-type]
    assert g.blocking == ("phi",) and g.waivers == (Waiver("phi", "reviewed by the steward"),)
    assert hash(ReleasePolicy()) == hash(ReleasePolicy())  # still frozen and hashable


def test_gate_check_ids_are_any_non_empty_name() -> None:
    """Which checks exist is the check registry's business, not the policy's."""
    gate = GateSection(blocking=("phi", "my_plugin_check"), advisory=("another",))
    assert "my_plugin_check" in gate.blocking
    assert policy_from_dict({"gate": {"blocking": ["x_check"], "advisory": []}}).gate.blocking == ("x_check",)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"protect": {"epsilon": 5.0}}, "protect.epsilon: 5.0 is out of range; allowed 0.0 to 1.0"),
        ({"pixels": {"padding": -50}}, "pixels.padding: -50 is out of range"),
        ({"protect": {"surrogate": "vgg"}}, "protect.surrogate: 'vgg' is not allowed"),
        ({"protect": {"device": "cuda"}}, "protect: unknown key(s) ['device']"),  # removed: never read
        ({"release": {"schedule": "0 2 * * *"}}, "release: unknown key(s) ['schedule']"),  # removed: never read
        ({"pixels": {"min_confidence": 250}}, "pixels.min_confidence: 250.0 is out of range"),
        ({"gate": {"waivers": [{"check": "phi"}]}}, "gate.waivers[0]: missing key(s) ['reason']"),
        ({"gate": {"waivers": [{"check": "phi", "reason": "long enough text", "by": "x"}]}},
         "gate.waivers[0]: unknown key(s) ['by']"),
        ({"reid": {"quasi_identifiers": ["PatientSex", 3]}}, "reid.quasi_identifiers[1]: expected a string"),
    ],
)
def test_toml_path_gives_the_same_errors(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    """A policy file is refused with the objects' own messages, and so are overrides."""
    import json

    lines = []
    for section, table in data.items():
        for k, v in table.items():
            if k == "waivers":
                for w in v:
                    lines += ["[[gate.waivers]]", *[f"{wk} = {json.dumps(wv)}" for wk, wv in w.items()]]
            else:
                lines += [f"[{section}]", f"{k} = {json.dumps(v)}"]
    path = tmp_path / "guard.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PolicyError) as e:
        load_policy(path)
    assert message in str(e.value)
    section, table = next(iter(data.items()))
    if section != "gate":
        with pytest.raises(PolicyError) as e:
            ReleasePolicy().with_overrides({f"{section}.{k}": v for k, v in table.items()})
        assert message in str(e.value)


def test_ranges_live_in_the_fields() -> None:
    """One table of ranges: the fields' metadata (no separate dict in guards.policy)."""
    import typing

    import guards.policy as policy_module

    assert not hasattr(policy_module, "_RANGES")
    sections = typing.get_type_hints(ReleasePolicy)
    ranges = {f"{name}.{f.name}": f.metadata["range"]
              for name, cls in sections.items() for f in dataclasses.fields(cls) if "range" in f.metadata}
    assert ranges["protect.epsilon"] == (0.0, 1.0) and ranges["pixels.padding"][0] == 0
    assert ranges["pixels.min_confidence"] == (0.0, 100.0) and ranges["pixels.verify_passes"][0] == 0
    for key, (lo, hi) in ranges.items():  # every default is inside its own range
        section, name = key.split(".")
        value = getattr(getattr(ReleasePolicy(), section), name)
        for v in value if isinstance(value, tuple) else (value,):
            assert (lo is None or v >= lo) and (hi is None or v <= hi), key
