"""guards.checks.gx_expectations: the figures, and each custom expectation passing and failing inside GX 1.x."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest

from guards.checks import gx_expectations as gxe

# 20 rows: A has 12 (10 included, labels 1,0 alternating), B has 6 (all included, no positive), C has 2 (1 included)
FRAME = pd.DataFrame({
    "g": ["A"] * 12 + ["B"] * 6 + ["C"] * 2,
    "included": [True] * 10 + [False] * 2 + [True] * 6 + [True, False],
    "label": [1, 0] * 6 + [0] * 6 + [-1, -1],
})


@pytest.fixture(scope="module")
def batch() -> Any:
    """One ephemeral GX context and batch for the whole module (GX contexts are slow to build)."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    return context.data_sources.pandas_default.read_dataframe(FRAME)


def test_subgroup_stats() -> None:
    stats = gxe.subgroup_stats(FRAME, subgroup_column="g")
    assert stats == {"A": [12, 10, 10, 5], "B": [6, 6, 6, 0], "C": [2, 1, 0, 0]}


def test_kl_divergence_values() -> None:
    assert gxe.kl_divergence({"a": 5, "b": 5}, {"a": 0.5, "b": 0.5}) == pytest.approx(0.0, abs=1e-9)
    # P = (0.75, 0.25), Q = (0.5, 0.5): 0.75 ln 1.5 + 0.25 ln 0.5
    assert gxe.kl_divergence({"a": 3, "b": 1}, {"a": 1, "b": 1}) == pytest.approx(
        0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-5)
    missing = gxe.kl_divergence({"a": 1, "c": 1}, {"a": 1.0})  # c absent from the reference: large, finite
    assert math.isfinite(missing) and missing > 5
    assert gxe.kl_divergence({}, {"a": 1.0}) == math.inf


@pytest.mark.parametrize(
    ("expectation", "success", "observed"),
    [
        # A: 10 of 17 included rows
        (gxe.ExpectSubgroupShareAtLeast(subgroup_column="g", value="A", min_count=10, min_share=0.5), True,
         {"count": 10, "share": round(10 / 17, 6), "included_total": 17}),
        # C: 1 included row, under a floor of 2
        (gxe.ExpectSubgroupShareAtLeast(subgroup_column="g", value="C", min_count=2, min_share=0.0), False,
         {"count": 1, "share": round(1 / 17, 6), "included_total": 17}),
        # absent subgroup: count 0
        (gxe.ExpectSubgroupShareAtLeast(subgroup_column="g", value="D", min_count=1), False,
         {"count": 0, "share": 0.0, "included_total": 17}),
        # the release matches the reference shares
        (gxe.ExpectSubgroupKlDivergenceToBeLessThan(subgroup_column="g", reference={"A": 10, "B": 6, "C": 1},
                                                    threshold=0.01), True, 0.0),
        (gxe.ExpectSubgroupKlDivergenceToBeLessThan(subgroup_column="g", reference={"A": 0.1, "B": 0.8, "C": 0.1},
                                                    threshold=0.25), False,
         round(sum(p * math.log(p / q) for p, q in ((10 / 17, 0.1), (6 / 17, 0.8), (1 / 17, 0.1))), 4)),
        (gxe.ExpectSubgroupLabelPrevalenceToBeBetween(subgroup_column="g", value="A", min_value=0.4, max_value=0.6),
         True, 0.5),
        (gxe.ExpectSubgroupLabelPrevalenceToBeBetween(subgroup_column="g", value="B", min_value=0.02), False, 0.0),
        (gxe.ExpectSubgroupLabelPrevalenceToBeBetween(subgroup_column="g", value="C"), False, None),  # unlabelled
        # overall 3/20 excluded; A 2/12 -> ratio 1.11; C 1/2 -> ratio 3.33
        (gxe.ExpectSubgroupExclusionRateRatioAtMost(subgroup_column="g", value="A", max_ratio=3.0), True,
         round((2 / 12) / (3 / 20), 6)),
        (gxe.ExpectSubgroupExclusionRateRatioAtMost(subgroup_column="g", value="C", max_ratio=3.0), False,
         round((1 / 2) / (3 / 20), 6)),
    ],
)
def test_expectation_in_gx(batch: Any, expectation: Any, success: bool, observed: Any) -> None:
    result = batch.validate(expectation)
    assert result.success is success
    value = result.result["observed_value"]
    assert value == (pytest.approx(observed, abs=1e-4) if isinstance(observed, float) else observed)
