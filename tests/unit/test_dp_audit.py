"""guards.checks.dp_audit: the membership attack on DP-SGD audit proxies (issue 18), and its policy switch."""

from __future__ import annotations

import pytest
from test_images import corpus_module

from guards import pipeline
from guards.checks import dp_audit, registry
from guards.checks.base import CheckResult
from guards.errors import InputError, PolicyError
from guards.policy import DpAuditSection, ReleasePolicy, policy_from_dict


def _policy(**dp: object) -> ReleasePolicy:
    return policy_from_dict({
        "membership": {"image_size": 16, "reference_models": 2, "bootstrap": 0},
        "dp_audit": {"enabled": True, "epsilons": [1.0], "epochs": 20, "delta": 1e-3, **dp},
        "release": {"seed": 20260101},
    })


@pytest.fixture(scope="module")
def memorising(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """40 patients; the 10 minority patients have atypical images, each study duplicated: easy to memorise."""
    root = tmp_path_factory.mktemp("dp") / "dup"
    return corpus_module().make_corpus(root, patients=40, size=16, seed=1, signal=0.09, minority_share=0.25,
                                       minority_duplicated=True)


@pytest.fixture(scope="module")
def audited(memorising) -> CheckResult:  # type: ignore[no-untyped-def]
    return dp_audit.run(memorising.root, source_dir=memorising.root, cohort=memorising.cohort, policy=_policy())


@pytest.mark.timeout(300)
@pytest.mark.slow(reason="trains 3 plain and 3 DP-SGD models (Opacus per-sample gradients): about 20 s")
def test_dp_lowers_the_most_exposed_subgroups_tpr(audited: CheckResult) -> None:
    d = audited.details
    exposed = d["most_exposed"]
    assert exposed == "ethnic_group=minority"
    plain = d["runs"]["none"]["subgroups"][exposed]["tpr_1pct"]
    private = d["runs"]["1"]["subgroups"][exposed]["tpr_1pct"]
    assert plain >= 0.4  # the non-DP proxy clearly memorises the duplicated minority
    assert private < plain
    assert d["tpr_drop"]["1"] == pytest.approx(plain - private)
    # The accountant spent no more than the budget, and the utility cost is recorded against the non-DP proxy.
    run1 = d["runs"]["1"]
    assert 0 < run1["epsilon_spent"] <= 1.0 + 1e-6
    assert run1["utility_loss"] == pytest.approx(d["runs"]["none"]["utility"] - run1["utility"], abs=1e-3)
    assert d["accounting"] == "record-level"
    assert "record-level" in audited.summary
    assert "not one patient" in audited.summary
    assert {f.subgroup for f in audited.findings} >= {f"{exposed} (no DP)", f"{exposed} (epsilon=1)"}


def test_policy_is_off_by_default_and_the_gate_runs_nothing_of_it() -> None:
    default = ReleasePolicy()
    assert default.dp_audit.enabled is False
    assert "dp_audit" in default.gate.off
    assert "dp_audit" not in pipeline.enabled_checks(default)
    assert "dp_audit" in {c.id for c in registry.registered()}
    # A policy that lists its own gate.off (the light test policies) still leaves it off.
    light = default.with_overrides({"gate.blocking": ["reid"], "gate.advisory": [],
                                    "gate.off": ["membership"]})
    assert set(light.gate.off) == {"membership", "dp_audit"}
    on = default.with_overrides({"dp_audit.enabled": True})
    assert "dp_audit" in pipeline.enabled_checks(on)
    assert "dp_audit" in on.gate.advisory and "dp_audit" not in on.gate.off  # advisory by default
    assert "dp_audit" in on.with_overrides({"gate.blocking": ["dp_audit"], "gate.advisory": []}).gate.blocking
    assert "dp_audit" in on.with_overrides({"dp_audit.enabled": False}).gate.off


@pytest.mark.parametrize(("values", "message"), [
    ({"epsilons": []}, "dp_audit.epsilons: empty"),
    ({"epsilons": [1.0, -2.0]}, "not above 0"),
    ({"epsilons": [1.0, 1.0]}, "twice"),
    ({"delta": 0.0}, "delta"),
    ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ({"epochs": 0}, "dp_audit.epochs"),
    ({"nope": 1}, "unknown key"),
])
def test_policy_errors_name_the_key(values: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        policy_from_dict({"dp_audit": values})


def test_delta_not_below_one_over_the_records_is_refused() -> None:
    import torch
    x, y = torch.rand(10, 1, 8, 8), torch.tensor([0, 1] * 5)
    with pytest.raises(InputError, match="dp_audit.delta"):
        dp_audit.train_dp(x, y, n_classes=2, sec=DpAuditSection(delta=0.2), epsilon=1.0, seed=1)
