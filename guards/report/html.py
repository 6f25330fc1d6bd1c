"""The gate report as one self-contained HTML page: no script, no external style sheet, no network.

Order, for a data steward: the verdict; what failed and what can be changed; what is inconclusive (not shown
safe) and what would make it conclusive; input counts; waivers; one section per check (summary, advice, what would
make it conclusive, the steward's waiver, examined counts, figures, findings table, artefact links, other
details); the policy. Inconclusive checks and findings have their own colour and label, distinct from pass, warn
and fail; waived checks show the steward's reason and the status they had before the waiver.
Every piece of text from a check, the context or the policy goes through :func:`html.escape`.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import urlparse

from guards.checks.base import CheckResult
from guards.gate import GateDecision
from guards.policy import ReleasePolicy, Waiver
from guards.report import svg

MAX_ROWS = 300  # findings rows per check; the rest are counted
MAX_DETAILS_CHARS = 20_000
_PLOTTED_DETAILS = ("roc", "curves", "distributions", "thumbnails")

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
.verdict{padding:1em;border-radius:6px;font-size:1.4em;font-weight:bold}
.pass{background:#e3f5e1;border:2px solid #2ca02c}.fail{background:#fbe3e3;border:2px solid #d62728}
.warn{background:#fff4d6}.waived{background:#eef}
.inconclusive{background:#efe3f7;border:2px dashed #7b3fa0}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;font-size:.9em;
text-align:left;vertical-align:top}tr.fail td{background:#fdeaea}tr.warn td{background:#fff8e1}
tr.inconclusive td{background:#f5ecfa}tr.waived td{background:#eef}
section{border-top:1px solid #ddd;margin-top:1.5em}pre{background:#f6f6f6;padding:.5em;overflow:auto;
font-size:.8em;max-height:30em}.figs{display:flex;flex-wrap:wrap;gap:1em}
"""


_CSS_CLASS = {"not run": "fail", "no data": "fail"}
_LABEL = {"inconclusive": "inconclusive: not shown safe"}


def _css(outcome: str) -> str:
    return _CSS_CLASS.get(outcome, outcome)


def _label(outcome: str, was: str = "") -> str:
    """The outcome as the steward reads it: inconclusive is labelled as not shown safe; waived says what it was."""
    if outcome == "waived" and was:
        return f"waived (was {_LABEL.get(was, was)})"
    return _LABEL.get(outcome, outcome)


def _e(x: object) -> str:
    return escape(str(x), quote=True)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return "" if v is None else str(v)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, classes: Sequence[str] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{_e(classes[i])}"' if i < len(classes) else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_e(_fmt(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _number(v: object) -> float | None:
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v)):
        return float(v)
    return None


def _subgroup_figures(result: CheckResult) -> list[str]:
    """A bar chart per metric measured for several subgroups (risk, share, AUC per subgroup)."""
    by_metric: dict[str, dict[str, float]] = defaultdict(dict)
    statuses: dict[str, dict[str, str]] = defaultdict(dict)
    thresholds: dict[str, float | None] = {}
    for f in result.findings:
        v = _number(f.value)
        if v is None:
            continue
        by_metric[f.metric][f.subgroup] = v
        statuses[f.metric][f.subgroup] = f.status
        thresholds.setdefault(f.metric, _number(f.threshold))
    figs = []
    for metric, values in by_metric.items():
        if len(values) >= 2 or any(k != "all" for k in values):
            figs.append(svg.bar_chart(values, title=f"{result.id}: {metric} per subgroup", ylabel=metric,
                                      threshold=thresholds.get(metric), statuses=statuses[metric]))
    return figs


def _detail_figures(result: CheckResult) -> list[str]:
    figs = []
    roc = result.details.get("roc")
    if isinstance(roc, Mapping):
        curves = {str(k): (v.get("fpr", []), v.get("tpr", [])) for k, v in roc.items() if isinstance(v, Mapping)}
        if curves:
            figs.append(svg.roc_chart(curves, title=f"{result.id}: ROC per subgroup (log-log)"))
    curves_raw = result.details.get("curves")
    if isinstance(curves_raw, Mapping):
        series: dict[str, list[float]] = {}
        for name, v in curves_raw.items():
            if isinstance(v, list):
                series[str(name)] = [x for x in v if _number(x) is not None]
            elif isinstance(v, Mapping):
                for sub, w in v.items():
                    if isinstance(w, list):
                        series[f"{name}/{sub}"] = [x for x in w if _number(x) is not None]
        if series:
            figs.append(svg.line_chart(series, title=f"{result.id}: learning curves", ylabel="accuracy"))
    dists = result.details.get("distributions")
    if isinstance(dists, Mapping):
        for column, shares in dists.items():
            if isinstance(shares, Mapping):
                vals = {str(k): float(x) for k, x in shares.items() if _number(x) is not None}
                figs.append(svg.bar_chart(vals, title=f"{result.id}: distribution of {column}", ylabel="share"))
    thumbs = result.details.get("thumbnails")  # guards.checks.inversion: {cell: {row name: [image, ...]}}
    if isinstance(thumbs, Mapping):
        rows: dict[str, list[Any]] = {}
        captions: dict[str, list[str]] = {}
        for cell, grid in thumbs.items():
            if not isinstance(grid, Mapping):
                continue
            tips = grid.get("ssim")
            for row in ("reconstructions", "nearest released training images"):
                images = grid.get(row)
                if isinstance(images, list) and images:
                    rows[f"{cell}: {row}"] = images
                    if isinstance(tips, list):
                        captions[f"{cell}: {row}"] = [f"SSIM {t:.3f}" for t in tips if _number(t) is not None]
        if rows:
            figs.append(svg.thumbnails(rows, captions=captions,
                                       title=f"{result.id}: reconstructions and the nearest released training image"))
    return figs


def _link(name: str, target: str) -> str:
    parsed = urlparse(target)
    if parsed.scheme or parsed.netloc or target.startswith("/"):
        return f"<li>{_e(name)}: {_e(target)} (not linked: only paths inside the report folder are linked)</li>"
    return f'<li><a href="{_e(target)}">{_e(name)}</a></li>'


def _check_section(result: CheckResult, outcome: str, role: str, *, was: str = "",
                   waiver: Waiver | None = None) -> str:
    parts = [f'<section id="check-{_e(result.id)}"><h2>Check <code>{_e(result.id)}</code>: '
             f'<span class="{_e(_css(outcome))}">{_e(_label(outcome, was))}</span> ({_e(role)})</h2>']
    if result.summary:
        parts.append(f"<p>{_e(result.summary)}</p>")
    if result.advice:
        parts.append(f"<p><strong>What you can change:</strong> {_e(result.advice)}</p>")
    if result.conclusive_when:
        parts.append('<div class="inconclusive"><p><strong>Inconclusive: the check could not show the release'
                     " safe. What would make it conclusive:</strong></p><ul>"
                     + "".join(f"<li>{_e(n)}</li>" for n in result.conclusive_when) + "</ul></div>")
    if waiver is not None:
        parts.append(f'<p class="waived"><strong>Waived by the steward</strong> (was {_e(_label(was or "fail"))}):'
                     f" {_e(waiver.reason)}</p>")
    parts.append("<h3>What was examined</h3>")
    parts.append(_table(["count", "value"], sorted(result.examined.items())) if result.examined
                 else "<p><strong>Nothing was examined.</strong></p>")
    figs = _subgroup_figures(result) + _detail_figures(result)
    if figs:
        parts.append('<h3>Figures</h3><div class="figs">' + "".join(figs) + "</div>")
    parts.append(f"<h3>Findings ({len(result.findings)})</h3>")
    rows = [(_label(f.status), f.metric, f.subgroup, f.value, f.threshold, f.evidence, f.needs)
            for f in result.findings[:MAX_ROWS]]
    parts.append(_table(["status", "metric", "subgroup", "value", "threshold", "evidence",
                         "what would make it conclusive"], rows,
                        classes=[f.status for f in result.findings[:MAX_ROWS]]))
    if len(result.findings) > MAX_ROWS:
        parts.append(f"<p>{len(result.findings) - MAX_ROWS} more findings are in gate.json.</p>")
    if result.artefacts:
        parts.append("<h3>Artefacts</h3><ul>" + "".join(_link(k, v) for k, v in result.artefacts.items()) + "</ul>")
    rest = {k: v for k, v in result.details.items() if k not in _PLOTTED_DETAILS}
    if rest:
        text = json.dumps(rest, indent=1, default=str, sort_keys=True)
        if len(text) > MAX_DETAILS_CHARS:
            text = text[:MAX_DETAILS_CHARS] + "\n... (cut)"
        parts.append(f"<details><summary>Other details</summary><pre>{_e(text)}</pre></details>")
    parts.append("</section>")
    return "\n".join(parts)


def _counts(context: Mapping[str, Any]) -> str:
    counts = context.get("counts")
    flat: dict[str, Any] = dict(counts) if isinstance(counts, Mapping) else {}
    for k in ("seen", "published", "quarantined", "excluded"):
        if k in context:
            flat[k] = context[k]
    if not flat:
        return "<p>No input counts were given.</p>"
    order = ["seen", "published", "quarantined", "excluded"]
    keys = [k for k in order if k in flat] + sorted(k for k in flat if k not in order)
    out = _table(["input files", "count"], [(k, flat[k]) for k in keys])
    causes = [c for c in context.get("causes") or [] if isinstance(c, Sequence) and len(c) == 3]
    if causes:
        out += "<p>Quarantined and excluded files, by cause:</p>" + _table(["status", "cause", "files"], causes)
    return out


def _remediation(context: Mapping[str, Any]) -> str:
    """What re-identification remediation changed and who paid for it (guards.remediate, context["remediation"])."""
    r = context.get("remediation")
    if not isinstance(r, Mapping):
        return ""
    parts = ["<h2>Re-identification remediation</h2>",
             f"<p>{_e(r.get('suppressed_studies', 0))} studies suppressed, {_e(r.get('rewritten_files', 0))} "
             "released files rewritten with generalised quasi-identifiers.</p>"]
    generalisations = r.get("generalisations") or {}
    if generalisations:
        parts.append(_table(["quasi-identifier", "released as"], list(generalisations.items())))
    losses = [x for x in r.get("subgroup_losses") or [] if isinstance(x, Mapping)]
    if losses:
        keys = sorted({k for x in losses for k in x})
        parts.append("<p>Cost per subgroup:</p>" + _table(keys, [tuple(x.get(k, "") for k in keys) for x in losses]))
    return "\n".join(parts)


def render_html(decision: GateDecision, results: Sequence[CheckResult], *, policy: ReleasePolicy,
                context: Mapping[str, Any]) -> str:
    """The whole page as a string (see the module docstring for its order)."""
    verdict = "PASSED: the release may be published" if decision.passed else "FAILED: nothing is published"
    cls = "pass" if decision.passed else "fail"
    run_id = context.get("run_id")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Release Guard gate report</title>',
        f"<style>{CSS}</style></head><body>",
        f"<h1>Release Guard gate report{(' — run ' + _e(run_id)) if run_id else ''}</h1>",
        f'<div class="verdict {cls}">{_e(verdict)}</div>',
        "<h2>Summary</h2>",
    ]
    if decision.reasons:
        parts.append("<p>The release is blocked because:</p><ul>"
                     + "".join(f"<li>{_e(r)}</li>" for r in decision.reasons) + "</ul>")
    else:
        parts.append("<p>Every blocking check passed (or was waived with a written reason).</p>")
    unsure = [o for o in decision.outcomes if o.outcome == "inconclusive" or o.was == "inconclusive"]
    if unsure:
        parts.append('<div class="inconclusive"><p><strong>Inconclusive (not shown safe):</strong></p><ul>'
                     + "".join(f"<li><code>{_e(o.id)}</code> ({_e(o.role)}, {_e(_label(o.outcome, o.was))}):"
                               f" conclusive with: {_e(o.note or 'more data')}</li>" for o in unsure)
                     + "</ul></div>")
    if decision.warnings:
        parts.append("<p>Warnings of blocking checks (each check passed; these findings are close to or past a"
                     " warning level):</p><ul>" + "".join(f"<li>{_e(w)}</li>" for w in decision.warnings) + "</ul>")
    if decision.advisories:
        parts.append("<p>Advisory (does not block):</p><ul>"
                     + "".join(f"<li>{_e(a)}</li>" for a in decision.advisories) + "</ul>")
    waiver_of = {w.check: w for w in decision.waivers}
    parts.append(_table(
        ["check", "role", "outcome", "note"],
        [(o.id, o.role, _label(o.outcome, o.was),
          f"waived: {waiver_of[o.id].reason}" if o.outcome == "waived" and o.id in waiver_of else o.note)
         for o in decision.outcomes],
        classes=[_css(o.outcome) for o in decision.outcomes]))
    parts.append("<h2>Input counts</h2>" + _counts(context))
    parts.append(_remediation(context))
    parts.append("<h2>Waivers</h2>")
    parts.append(_table(["check", "reason"], [(w.check, w.reason) for w in decision.waivers])
                 if decision.waivers else "<p>No waiver was applied.</p>")
    outcomes = {o.id: o for o in decision.outcomes}
    for result in results:
        o = outcomes.get(result.id)
        parts.append(_check_section(result, o.outcome if o else result.status, o.role if o else "blocking",
                                    was=o.was if o else "",
                                    waiver=waiver_of.get(result.id) if o and o.outcome == "waived" else None))
    policy_text = json.dumps(policy.to_dict(), indent=1, default=str)
    parts.append(f'<section id="policy"><h2>Policy used</h2><pre>{_e(policy_text)}</pre></section>')
    parts.append("</body></html>")
    return "\n".join(parts)
