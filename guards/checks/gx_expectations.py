"""Custom Great Expectations 1.x expectations for subgroup representation, where GX has none.

All of them read one table metric, ``table.subgroup_stats``: per value of a subgroup column, the rows, the
included rows (``included`` true: at least one instance released), the labelled included rows (label >= 0)
and the positive ones (label > 0). They are batch (table-level) expectations so that the inclusion flag and the
label can be read next to the subgroup column.

- :class:`ExpectSubgroupShareAtLeast`: a subgroup has at least ``min_count`` included rows and
  ``min_share`` of all included rows;
- :class:`ExpectSubgroupKlDivergenceToBeLessThan`: KL(P_release || Q_reference) of a subgroup column's
  distribution below ``threshold`` (Kullback & Leibler 1951; Q is smoothed so that a category missing from
  the reference gives a large, finite divergence);
- :class:`ExpectSubgroupLabelPrevalenceToBeBetween`: the positive-label share of a subgroup within bounds;
- :class:`ExpectSubgroupExclusionRateRatioAtMost`: a subgroup's exclusion rate (rows not included) over the
  overall exclusion rate at most ``max_ratio`` (a rate ratio, as in disparate-impact audits).

GX's own ``ExpectColumnKLDivergenceToBeLessThan`` expects a partition object of bins and weights built for
numeric columns; the categorical one here takes the reference shares directly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, ClassVar

from guards.logs import quiet_third_party

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no telemetry from a release gate
quiet_third_party()  # before GX's import logs its registrations

import pandas as pd  # noqa: E402
from great_expectations.core.metric_domain_types import MetricDomainTypes  # noqa: E402
from great_expectations.execution_engine.pandas_execution_engine import PandasExecutionEngine  # noqa: E402
from great_expectations.expectations.expectation import BatchExpectation  # noqa: E402
from great_expectations.expectations.metrics.metric_provider import metric_value  # noqa: E402
from great_expectations.expectations.metrics.table_metric_provider import TableMetricProvider  # noqa: E402
from great_expectations.render.components import LegacyRendererType, RenderedStringTemplateContent  # noqa: E402
from great_expectations.render.renderer.renderer import renderer  # noqa: E402

METRIC = "table.subgroup_stats"
SMOOTHING = 1e-6
# per value: [rows, included rows, labelled included rows, positive included rows]
Stats = dict[str, list[int]]


def subgroup_stats(df: pd.DataFrame, *, subgroup_column: str, included_column: str = "included",
                   label_column: str = "label") -> Stats:
    """Per value of ``subgroup_column``: rows, included rows, labelled included rows, positive included rows."""
    values = df[subgroup_column].astype(str)
    included = df[included_column].astype(bool) if included_column in df.columns else pd.Series(True, index=df.index)
    labels = (pd.to_numeric(df[label_column], errors="coerce").fillna(-1) if label_column in df.columns
              else pd.Series(-1, index=df.index))
    frame = pd.DataFrame({"v": values, "n": 1, "inc": included.astype(int),
                          "lab": (included & (labels >= 0)).astype(int), "pos": (included & (labels > 0)).astype(int)})
    agg = frame.groupby("v", sort=True)[["n", "inc", "lab", "pos"]].sum()
    return {str(v): [int(x) for x in row] for v, row in zip(agg.index, agg.to_numpy(), strict=True)}


def kl_divergence(observed: Mapping[str, float], reference: Mapping[str, float]) -> float:
    """KL(P || Q) in nats over the union of categories; both are normalised, Q is smoothed by ``SMOOTHING``."""
    keys = sorted(set(observed) | set(reference))
    p_total = sum(max(observed.get(k, 0.0), 0.0) for k in keys)
    if p_total <= 0:
        return math.inf
    q = {k: max(reference.get(k, 0.0), 0.0) + SMOOTHING for k in keys}
    q_total = sum(q.values())
    out = 0.0
    for k in keys:
        p = max(observed.get(k, 0.0), 0.0) / p_total
        if p > 0:
            out += p * math.log(p / (q[k] / q_total))
    return out


class TableSubgroupStats(TableMetricProvider):
    """``table.subgroup_stats``: :func:`subgroup_stats` of the batch."""

    metric_name = METRIC
    value_keys = ("subgroup_column", "included_column", "label_column")

    @metric_value(engine=PandasExecutionEngine)
    def _pandas(cls, execution_engine: PandasExecutionEngine, metric_domain_kwargs: dict[str, Any],
                metric_value_kwargs: dict[str, Any], metrics: dict[str, Any],
                runtime_configuration: dict[str, Any]) -> Stats:
        df, _, _ = execution_engine.get_compute_domain(domain_kwargs=metric_domain_kwargs,
                                                       domain_type=MetricDomainTypes.TABLE)
        return subgroup_stats(df, subgroup_column=metric_value_kwargs["subgroup_column"],
                              included_column=metric_value_kwargs.get("included_column") or "included",
                              label_column=metric_value_kwargs.get("label_column") or "label")


class _SubgroupExpectation(BatchExpectation):
    subgroup_column: str
    included_column: str = "included"
    label_column: str = "label"

    metric_dependencies: ClassVar[tuple[str, ...]] = (METRIC,)
    domain_keys: ClassVar[tuple[str, ...]] = ("batch_id",)

    # Data Docs text of the expectation; ``$name`` is a kwarg. Without a renderer GX prints the raw kwargs into the
    # page (``expect_...(**{'value': '<img src=x onerror=...>'})``): subgroup values come from DICOM headers and a
    # reference table, so they are untrusted. Every param is passed as a string, which GX HTML-escapes.
    _template: ClassVar[str] = ""

    def _stats(self, metrics: dict[str, Any]) -> Stats:
        stats: Stats = metrics[METRIC]
        return stats

    @classmethod
    @renderer(renderer_type=LegacyRendererType.PRESCRIPTIVE)
    def _prescriptive_renderer(cls, configuration: Any = None, result: Any = None,
                               runtime_configuration: dict[str, Any] | None = None,
                               **kwargs: Any) -> list[RenderedStringTemplateContent]:
        config = configuration if configuration is not None else getattr(result, "expectation_config", None)
        raw = dict(getattr(config, "kwargs", None) or {})
        params = {k: _param_text(v) for k, v in raw.items()}
        styling = (runtime_configuration or {}).get("styling", {})
        return [RenderedStringTemplateContent(content_block_type="string_template", string_template={
            "template": cls._template, "params": params, "styling": styling})]


def _param_text(value: Any) -> str:
    """A kwarg as plain text for a Data Docs template (GX escapes string params, not dicts or lists)."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {v}" for k, v in sorted(value.items(), key=lambda kv: str(kv[0])))
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


class ExpectSubgroupShareAtLeast(_SubgroupExpectation):
    """Expect the included rows of ``subgroup_column == value`` to number at least ``min_count`` and to be at
    least ``min_share`` of all included rows (a representation floor)."""

    value: str
    min_count: int = 1
    min_share: float = 0.0
    _template: ClassVar[str] = (
        "Included rows of $subgroup_column = $value must number at least $min_count and be at "
        "least $min_share of all included rows."
    )
    success_keys: ClassVar[tuple[str, ...]] = (
        "subgroup_column", "included_column", "label_column", "value", "min_count", "min_share")

    def _validate(self, metrics: dict[str, Any], runtime_configuration: dict[str, Any] | None = None,
                  execution_engine: Any = None) -> dict[str, Any]:
        stats = self._stats(metrics)
        total = sum(s[1] for s in stats.values())
        count = stats.get(self.value, [0, 0, 0, 0])[1]
        share = count / total if total else 0.0
        ok = count >= self.min_count and share >= self.min_share
        return {"success": ok, "result": {"observed_value": {"count": count, "share": round(share, 6),
                                                             "included_total": total}}}


class ExpectSubgroupKlDivergenceToBeLessThan(_SubgroupExpectation):
    """Expect KL(P_release || Q_reference) of ``subgroup_column`` over included rows to be below
    ``threshold``; ``reference`` maps values to shares (a population table or a previous release)."""

    reference: dict[str, float]
    threshold: float
    ignore_values: list[str] = ["unknown"]  # noqa: RUF012 - pydantic field default
    _template: ClassVar[str] = (
        "KL divergence of $subgroup_column (included rows) from the reference ($reference) must be "
        "less than $threshold, ignoring $ignore_values."
    )
    success_keys: ClassVar[tuple[str, ...]] = (
        "subgroup_column", "included_column", "label_column", "reference", "threshold", "ignore_values")

    def _validate(self, metrics: dict[str, Any], runtime_configuration: dict[str, Any] | None = None,
                  execution_engine: Any = None) -> dict[str, Any]:
        stats = self._stats(metrics)
        observed = {v: float(s[1]) for v, s in stats.items() if v not in self.ignore_values}
        kl = kl_divergence(observed, self.reference)
        return {"success": kl < self.threshold,
                "result": {"observed_value": round(kl, 6) if math.isfinite(kl) else "inf"}}


class ExpectSubgroupLabelPrevalenceToBeBetween(_SubgroupExpectation):
    """Expect the share of positive labels (label > 0) among labelled included rows of ``subgroup_column ==
    value`` to be within [min_value, max_value]; a subgroup with no labelled row fails (nothing to measure)."""

    value: str
    min_value: float = 0.0
    max_value: float = 1.0
    _template: ClassVar[str] = (
        "The share of positive labels among labelled included rows of $subgroup_column = $value "
        "must be between $min_value and $max_value."
    )
    success_keys: ClassVar[tuple[str, ...]] = (
        "subgroup_column", "included_column", "label_column", "value", "min_value", "max_value")

    def _validate(self, metrics: dict[str, Any], runtime_configuration: dict[str, Any] | None = None,
                  execution_engine: Any = None) -> dict[str, Any]:
        _, _, labelled, positive = self._stats(metrics).get(self.value, [0, 0, 0, 0])
        if not labelled:
            return {"success": False, "result": {"observed_value": None, "details": {"labelled": 0}}}
        prevalence = positive / labelled
        return {"success": self.min_value <= prevalence <= self.max_value,
                "result": {"observed_value": round(prevalence, 6), "details": {"labelled": labelled}}}


class ExpectSubgroupExclusionRateRatioAtMost(_SubgroupExpectation):
    """Expect the exclusion rate of ``subgroup_column == value`` (rows not included / rows) over the overall
    exclusion rate to be at most ``max_ratio``; with no exclusion overall the ratio is 0."""

    value: str
    max_ratio: float
    _template: ClassVar[str] = (
        "The exclusion rate of $subgroup_column = $value over the overall exclusion rate must be "
        "at most $max_ratio."
    )
    success_keys: ClassVar[tuple[str, ...]] = (
        "subgroup_column", "included_column", "label_column", "value", "max_ratio")

    def _validate(self, metrics: dict[str, Any], runtime_configuration: dict[str, Any] | None = None,
                  execution_engine: Any = None) -> dict[str, Any]:
        stats = self._stats(metrics)
        rows = sum(s[0] for s in stats.values())
        excluded = sum(s[0] - s[1] for s in stats.values())
        n, inc = stats.get(self.value, [0, 0, 0, 0])[:2]
        overall = excluded / rows if rows else 0.0
        rate = (n - inc) / n if n else 0.0
        ratio = rate / overall if overall > 0 else 0.0
        return {"success": ratio <= self.max_ratio,
                "result": {"observed_value": round(ratio, 6),
                           "details": {"excluded": n - inc, "rows": n, "rate": round(rate, 6),
                                       "overall_rate": round(overall, 6)}}}
