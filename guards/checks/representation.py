"""Subgroup representation of the release, as a Great Expectations 1.x suite driven by the policy.

For each subgroup column of ``policy.cohort.subgroups`` (values other than "unknown"), over the cohort's studies:

- required subgroups (``policy.representation.required``, "column=value") are present among included studies
  (GX ``ExpectColumnDistinctValuesToContainSet`` with a row condition on ``included``);
- each subgroup has at least ``min_count`` included studies and ``min_share`` of them
  (:class:`~guards.checks.gx_expectations.ExpectSubgroupShareAtLeast`);
- KL divergence against a reference distribution below ``kl_max`` when ``reference`` is set: a population table
  (CSV with column,value,share) or a previous release's cohort (Parquet)
  (:class:`~guards.checks.gx_expectations.ExpectSubgroupKlDivergenceToBeLessThan`);
- label prevalence per subgroup within [prevalence_min, prevalence_max] when the cohort has labels;
- exclusion disparity: a subgroup's exclusion rate over the overall rate at most ``exclusion_ratio_max``, so
  that the studies dropped by ingest, pixel risk or any other step do not fall on one subgroup.

The suite runs in an ephemeral context (no files besides the Data Docs, no progress bars, no telemetry) and
builds GX Data Docs into ``report_dir/datadocs/``. Knolle et al. (Nature 2026): minority groups carry the risk
that averages hide, so every figure is reported per subgroup.
"""

from __future__ import annotations

import html
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from guards.atomic import write_text
from guards.checks.base import CheckResult, Finding, Status
from guards.cohort import UNKNOWN
from guards.errors import InputError
from guards.logs import quiet_third_party
from guards.policy import ReleasePolicy

if TYPE_CHECKING:
    from guards.run import Run

logger = logging.getLogger(__name__)

CHECK_ID = "representation"
_COLUMNS: dict[str, Any] = {"included_column": "included", "label_column": "label"}
DOCS_DIR = "datadocs"
SUITE_NAME = "release_representation"


@dataclass(frozen=True)
class _Planned:
    """An expectation and how its result becomes findings."""

    expectation: Any
    metric: str
    subgroup: str
    threshold: float | int | str


def load_reference(path: str, *, subgroups: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Reference shares per subgroup column from a population CSV (column,value,share) or a cohort Parquet."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"representation.reference {path!r} does not exist; give a CSV (column,value,share) or a"
                         " previous release's cohort.parquet, or leave it empty")
    out: dict[str, dict[str, float]] = {}
    if p.suffix == ".parquet":
        prev = pq.read_table(p).to_pandas()
        if "included" in prev.columns:
            prev = prev[prev["included"].astype(bool)]
        for col in subgroups:
            if col in prev.columns:
                counts = prev[col].astype(str).value_counts()
                out[col] = {str(v): float(n) / float(counts.sum()) for v, n in counts.items() if v != UNKNOWN}
        return out
    table = pd.read_csv(p, dtype={"column": str, "value": str})
    if not {"column", "value", "share"} <= set(table.columns):
        raise InputError(f"reference table {path!r} has columns {list(table.columns)}; it needs column,value,share")
    for row in table.itertuples(index=False):
        out.setdefault(str(row.column), {})[str(row.value)] = float(row.share)
    return out


def _plan(df: pd.DataFrame, policy: ReleasePolicy, reference: dict[str, dict[str, float]]) -> list[_Planned]:
    quiet_third_party()
    from great_expectations.expectations.core.expect_column_distinct_values_to_contain_set import (
        ExpectColumnDistinctValuesToContainSet,
    )

    from guards.checks import gx_expectations as gxe

    sec = policy.representation
    cols = [c for c in policy.cohort.subgroups if c in df.columns]
    plans: list[_Planned] = []
    required: dict[str, list[str]] = {}
    for item in sec.required:
        col, sep, value = item.partition("=")
        if not sep or col not in df.columns:
            raise InputError(f"representation.required {item!r}: expected 'column=value' with a cohort column"
                             f" (one of {cols})")
        required.setdefault(col, []).append(value)
    for col, values in required.items():
        plans.append(_Planned(
            ExpectColumnDistinctValuesToContainSet(column=col, value_set=values, row_condition="included==True",
                                                   condition_parser="pandas"),
            "required_subgroups_present", f"{col}={'|'.join(values)}", ",".join(values)))
    has_labels = "label" in df.columns and bool((pd.to_numeric(df["label"], errors="coerce") >= 0).any())
    for col in cols:
        values = sorted({str(v) for v in df[col].astype(str).unique() if v != UNKNOWN} | set(required.get(col, [])))
        for v in values:
            plans.append(_Planned(gxe.ExpectSubgroupShareAtLeast(
                subgroup_column=col, value=v, min_count=sec.min_count, min_share=sec.min_share, **_COLUMNS),
                "subgroup_count_share", f"{col}={v}", f"count>={sec.min_count}, share>={sec.min_share}"))
            plans.append(_Planned(gxe.ExpectSubgroupExclusionRateRatioAtMost(
                subgroup_column=col, value=v, max_ratio=sec.exclusion_ratio_max, **_COLUMNS),
                "exclusion_rate_ratio", f"{col}={v}", sec.exclusion_ratio_max))
            if has_labels:
                plans.append(_Planned(gxe.ExpectSubgroupLabelPrevalenceToBeBetween(
                    subgroup_column=col, value=v, min_value=sec.prevalence_min, max_value=sec.prevalence_max,
                    **_COLUMNS), "label_prevalence", f"{col}={v}", f"[{sec.prevalence_min}, {sec.prevalence_max}]"))
        if col in reference:
            plans.append(_Planned(gxe.ExpectSubgroupKlDivergenceToBeLessThan(
                subgroup_column=col, reference=reference[col], threshold=sec.kl_max, **_COLUMNS),
                "kl_divergence", f"{col}", sec.kl_max))
    return plans


def _validate(df: pd.DataFrame, plans: list[_Planned], docs_dir: Path) -> list[Any]:
    """Run the suite in an ephemeral context and build Data Docs into ``docs_dir``; results in plan order.

    GX's filesystem store wants an absolute ``base_directory``: ``guard run src out`` with a relative OUT is
    a user's first command, so the folder is resolved here."""
    quiet_third_party()
    import great_expectations as gx
    from great_expectations.checkpoint.actions import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    context.add_data_docs_site(site_name="release", site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder", "show_cta_footer": False},
        "show_how_to_buttons": False,
    })  # type: ignore[typeddict-unknown-key]
    asset = context.data_sources.add_pandas("cohort").add_dataframe_asset("cohort")
    batch = asset.add_batch_definition_whole_dataframe("cohort")
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME))
    for p in plans:
        suite.add_expectation(p.expectation)
    vd = context.validation_definitions.add(gx.ValidationDefinition(name=SUITE_NAME, data=batch, suite=suite))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=SUITE_NAME, validation_definitions=[vd], result_format={"result_format": "SUMMARY"},
        actions=[UpdateDataDocsAction(name="datadocs", site_names=["release"])]))
    run = checkpoint.run(batch_parameters={"dataframe": df})
    removed = offline_data_docs(docs_dir)
    logger.info("representation: Data Docs built offline (%d references to public CDNs removed)", removed)
    results = next(iter(run.run_results.values())).results
    by_id = {r.expectation_config.id if r.expectation_config else None: r for r in results}
    return [by_id[p.expectation.id] for p in plans]


_REMOTE = re.compile(r'<script\b[^>]*\bsrc="https?://[^"]*"[^>]*>\s*</script>|<link\b[^>]*\bhref="https?://[^"]*"[^>]*/?>'
                     r'|<img\b[^>]*\bsrc="https?://[^"]*"[^>]*/?>', re.IGNORECASE)


def offline_data_docs(docs_dir: Path) -> int:
    """Remove every script, style sheet and image GX's pages load from public CDNs (unpinned, without integrity;
    the image is GX's logo on S3).

    The pages are static HTML rendered by GX; the CDN scripts only add charts and navigation. A release must read
    offline, and the review plugin's Content-Security-Policy refuses third-party scripts anyway. Returns how
    many references were removed."""
    removed = 0
    for page in docs_dir.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        clean, n = _REMOTE.subn("", text)
        if n:
            write_text(page, clean)
            removed += n
    return removed


def _findings(plan: _Planned, res: Any) -> list[Finding]:
    status: Status = "pass" if res.success else "fail"
    observed = res.result.get("observed_value")
    name = res.expectation_config.type
    if plan.metric == "subgroup_count_share":
        sec = res.expectation_config.kwargs
        ev = (f"{name}: {plan.subgroup} has {observed['count']} included studies, {observed['share']:.2%} of"
              f" {observed['included_total']}")
        return [
            Finding("subgroup_count", observed["count"], sec["min_count"],
                    "pass" if observed["count"] >= sec["min_count"] else "fail", plan.subgroup, ev),
            Finding("subgroup_share", observed["share"], sec["min_share"],
                    "pass" if observed["share"] >= sec["min_share"] else "fail", plan.subgroup, ev),
        ]
    if plan.metric == "required_subgroups_present":
        missing = res.result.get("partial_missing_list") or []
        ev = f"{name}: missing among included studies: {missing}" if missing else f"{name}: all present"
        return [Finding(plan.metric, ",".join(map(str, missing)) or "none", plan.threshold, status, plan.subgroup, ev)]
    if plan.metric == "exclusion_rate_ratio":
        d = res.result.get("details", {})
        ev = (f"{name}: {plan.subgroup}: {d.get('excluded')} of {d.get('rows')} studies excluded (rate"
              f" {d.get('rate')}, overall {d.get('overall_rate')})")
        return [Finding(plan.metric, observed, plan.threshold, status, plan.subgroup, ev)]
    if plan.metric == "label_prevalence":
        d = res.result.get("details", {})
        ev = f"{name}: {plan.subgroup}: positive share {observed} of {d.get('labelled', 0)} labelled included studies"
        return [Finding(plan.metric, observed, plan.threshold, status, plan.subgroup, ev)]
    ev = f"{name}: KL(release || reference) of {plan.subgroup} = {observed} nats"
    return [Finding(plan.metric, observed, plan.threshold, status, plan.subgroup, ev)]


def _annotate_index(docs_dir: Path, plans: list[_Planned], results: list[Any]) -> str | None:
    """Name the failing expectations at the top of the Data Docs index, linked to the validation page.

    GX's index lists validation runs only; a steward opening it should see at once which expectation failed.
    Returns the validation page (relative to ``docs_dir``), if one was built.
    """
    pages = sorted(docs_dir.glob("validations/**/*.html"))
    page = pages[-1].relative_to(docs_dir).as_posix() if pages else None
    index = docs_dir / "index.html"
    if not index.is_file():
        return page
    failed = [(r.expectation_config.type, p.subgroup, r.result.get("observed_value"))
              for p, r in zip(plans, results, strict=True) if not r.success]
    items = "".join(f"<li><code>{html.escape(t)}</code> {html.escape(sg)}: observed {html.escape(str(o))}</li>"
                    for t, sg, o in failed)
    link = f' (<a href="{html.escape(page)}">validation results</a>)' if page else ""
    block = (f'<div class="container" id="release-guard-summary"><h2>Release Guard representation suite:'
             f' {"FAILED" if failed else "passed"}{link}</h2>'
             + (f"<p>Failing expectations ({len(failed)}):</p><ul>{items}</ul>" if failed else
                f"<p>All {len(results)} expectations passed.</p>") + "</div>")
    text = index.read_text(encoding="utf-8").replace("<body>", "<body>" + block, 1)
    write_text(index, text)
    return page


def run(cohort: pa.Table, *, source_index: pa.Table | None, policy: ReleasePolicy, report_dir: Path) -> CheckResult:
    """Validate subgroup representation; Data Docs go to ``report_dir/datadocs`` (artefact ``datadocs``)."""
    df = cohort.to_pandas()
    if "included" not in df.columns:
        df["included"] = True
    reference = (load_reference(policy.representation.reference, subgroups=policy.cohort.subgroups)
                 if policy.representation.reference else {})
    plans = _plan(df, policy, reference)
    findings: list[Finding] = []
    included = int(df["included"].astype(bool).sum())
    if included == 0:
        findings.append(Finding("included_studies", 0, 1, "fail", "all", "no study is included: an empty release"))
    artefacts: dict[str, str] = {}
    if plans:
        report_dir.mkdir(parents=True, exist_ok=True)
        tmp = report_dir / (DOCS_DIR + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        results = _validate(df, plans, tmp)
        page = _annotate_index(tmp, plans, results)
        final = report_dir / DOCS_DIR
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
        artefacts["datadocs"] = f"{DOCS_DIR}/index.html"
        if page:
            artefacts["datadocs_validation"] = f"{DOCS_DIR}/{page}"
        for plan, res in zip(plans, results, strict=True):
            findings.extend(_findings(plan, res))
    failing = sorted({f.subgroup for f in findings if f.status == "fail"})
    per_metric: dict[str, int] = {}
    for f in findings:
        per_metric[f.metric] = per_metric.get(f.metric, 0) + 1
    examined = {
        "studies": int(len(df)),
        "included_studies": included,
        "excluded_studies": int(len(df)) - included,
        "subgroup_columns": len([c for c in policy.cohort.subgroups if c in df.columns]),
        "expectations": len(plans),
    }
    if source_index is not None and "status" in source_index.column_names:
        statuses = source_index.column("status").to_pylist()
        examined["source_files"] = len(statuses)
        examined["source_files_quarantined"] = sum(s == "quarantined" for s in statuses)
    summary = (f"Representation fails for {', '.join(failing)}" if failing else
               f"All {examined['expectations']} representation expectations hold over {included} included studies")
    return CheckResult(
        id=CHECK_ID, findings=tuple(findings), examined=examined, summary=summary,
        advice=("Add studies of the under-represented subgroups, review why their studies were excluded"
                " (ingest/deid quarantine reasons), or lower representation.min_count / min_share with a written"
                " waiver") if failing else "",
        artefacts=artefacts,
        details={"expectations_by_metric": per_metric, "reference_columns": sorted(reference)},
    )


def check(current: Run) -> CheckResult:
    """The registry's entry (guards.checks.registry): the suite on the run's cohort, Data Docs in its report."""
    return run(current.cohort(), source_index=current.index(), policy=current.policy,
               report_dir=current.paths.report)
