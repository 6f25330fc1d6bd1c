"""Release gates: the data steward's review of gate decisions inside the Airflow UI (Airflow 3 plugin).

A FastAPI app mounted by the API server under ``/release-gates`` with a nav entry "Release gates":

- ``/release-gates/``: every run under ``GUARD_OUT/runs/*/report/gate.json`` with its verdict, failing checks
  and the subgroups they failed for (``/release-gates/api/runs`` gives the same as JSON);
- ``/release-gates/runs/<run_id>/``: that run's gate report (``index.html``, its assets, and the Great
  Expectations Data Docs under ``report/datadocs/``), with path-traversal protection;
- the extra link "Gate report" on the ``gate`` task of ``guard_release`` (declared on that task's operator,
  guards.gate_task, not here: a plugin's global link showed an empty "Extra Links" heading on every task).

Every route depends on the API server's DAG authorisation (``requires_access_dag("GET", RUN)`` for
``guard_release``): a request without a valid Airflow JWT (bearer header or the UI's session cookie) gets 401, a
user who may not read that DAG's runs gets 403. The report is of a release candidate, so it is as private as the
run itself. The app has no docs routes (``/docs``, ``/redoc``, ``/openapi.json``). Every response carries a strict
Content-Security-Policy (no script at all, nothing from another origin), ``Cache-Control: no-store`` and
``X-Content-Type-Options: nosniff``: the pages hold values from DICOM headers, and Data Docs are GX's HTML.

Nothing here reads the pseudonym key or the private crosswalk: only ``report/`` folders are served.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from guards.gate_task import REVIEW_URL_PREFIX

logger = logging.getLogger(__name__)

URL_PREFIX = REVIEW_URL_PREFIX
DAG_ID = "guard_release"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")  # guards.pipeline.safe_run_id's alphabet
# No script of any origin (the report and the review page need none; GX's inline scripts are refused), styles and
# images from this origin or inline (the report's <style> and SVG charts), never framed by another site.
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'none'; style-src 'self' 'unsafe-inline'; "
                                "img-src 'self' data:; font-src 'self'; base-uri 'none'; form-action 'none'; "
                                "frame-ancestors 'self'"),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def guard_out() -> Path:
    """The runs' root, the same default as dags/guard_release.py (``GUARD_OUT`` or ``$AIRFLOW_HOME/guard-out``)."""
    default = os.path.join(os.environ.get("AIRFLOW_HOME", "."), "guard-out")
    return Path(os.environ.get("GUARD_OUT", default))


def run_summary(report_dir: Path) -> dict[str, Any]:
    """One run's verdict from its ``gate.json``: failing checks with metric, value, threshold and subgroup.

    A ``gate.json`` that cannot be parsed is shown as such (``passed`` None), not hidden.
    """
    run_id = report_dir.parent.name
    try:
        gate = json.loads((report_dir / "gate.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        logger.warning("run %s: gate.json unreadable (%s)", run_id, type(e).__name__)
        return {"run_id": run_id, "passed": None, "failing": [], "error": "gate.json unreadable", "waivers": []}
    failing = [
        {k: c.get(k) for k in ("id", "metric", "value", "threshold", "subgroup", "evidence")}
        for c in gate.get("checks", [])
        if c.get("status") == "fail"
    ]
    return {
        "run_id": run_id,
        "passed": bool(gate.get("passed")),
        "failing": failing,
        "subgroups": sorted({str(c["subgroup"]) for c in failing if c.get("subgroup")}),
        "reasons": list(gate.get("reasons", [])),
        "waivers": list(gate.get("waivers", [])),
        "approval": gate.get("approval") if isinstance(gate.get("approval"), dict) else None,
        "has_datadocs": (report_dir / "datadocs" / "index.html").is_file(),
        "modified": (report_dir / "gate.json").stat().st_mtime,
    }


def list_runs(out: Path) -> list[dict[str, Any]]:
    """Every run with a gate report, newest first."""
    gates = (out / "runs").glob("*/report/gate.json")
    runs = [run_summary(p.parent) for p in gates if _RUN_ID.match(p.parents[1].name)]
    return sorted(runs, key=lambda r: r.get("modified", 0.0), reverse=True)


def report_file(out: Path, run_id: str, rel: str) -> Path:
    """The file ``rel`` of a run's report folder, or 404: no run id outside the safe alphabet, no path that
    resolves (through ``..`` or a symlink) outside ``runs/<run_id>/report``, no hidden files. The run's folder
    and its ``report`` folder must themselves be real folders under ``runs/``: a symlinked ``report`` would make
    every file of its target look contained."""
    if not _RUN_ID.match(run_id):
        raise HTTPException(status_code=404, detail="no such run")
    root = (out / "runs" / run_id / "report").resolve()
    if root != (out / "runs").resolve() / run_id / "report":
        logger.warning("refused run %s: its report folder is a link out of the runs folder", run_id)
        raise HTTPException(status_code=404, detail="no such run")
    rel = rel or "index.html"
    if "\x00" in rel or any(part.startswith(".") for part in Path(rel).parts):
        raise HTTPException(status_code=404, detail="no such file")
    target = (root / rel).resolve()
    if not target.is_relative_to(root):
        logger.warning("refused a path outside the report of run %s", run_id)
        raise HTTPException(status_code=404, detail="no such file")
    if target.is_dir():
        target = target / "index.html"
    if not target.is_file():
        raise HTTPException(status_code=404, detail="no such file")
    return target


def _cell(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _failing_item(c: dict[str, Any]) -> str:
    """One failing check as the steward reads it: ``reid k_anonymity = 2 (threshold 5) in sex=F``, or
    ``membership not run (crashed: ...)``; nothing printed for what is not there."""
    head = f"<b>{_cell(c.get('id'))}</b>"
    if c.get("metric") == "not run":
        return f"{head} not run ({_cell(c.get('evidence') or 'no result')})"
    text = f"{head} {_cell(c.get('metric'))} = {_cell('not measured' if c.get('value') is None else c['value'])}"
    if c.get("threshold") is not None:
        text += f" (threshold {_cell(c['threshold'])})"
    if c.get("subgroup") and c["subgroup"] != "all":
        text += f" in {_cell(c['subgroup'])}"
    return text


def _sign_off(r: dict[str, Any]) -> str:
    """The steward's decision on a passed gate (guards.approval): who, when and the comment; or that one is awaited."""
    a = r.get("approval")
    if not a:
        return "awaiting sign-off" if r["passed"] else "-"
    decision = str(a.get("decision") or "")
    if decision == "not required":
        return "not required by policy"
    text = f"<b>{_cell(decision)}</b>"
    if a.get("by"):
        text += f" by {_cell(a['by'])}"
    if a.get("at"):
        text += f" at {_cell(a['at'])}"
    if a.get("comment"):
        text += f": {_cell(a['comment'])}"
    elif a.get("via") and not a.get("by"):
        text += f" ({_cell(a['via'])})"
    return text


def runs_page(runs: list[dict[str, Any]]) -> str:
    """The "Release gates" page: one row per run, failing checks and their subgroups spelled out."""
    rows = []
    for r in runs:
        verdict = {True: "PASSED", False: "FAILED", None: "UNREADABLE"}[r["passed"]]
        failing = "".join(f"<li>{_failing_item(c)}</li>" for c in r["failing"])
        cause = _cell(r["reasons"][0]) if r.get("reasons") else ""
        waived = ", ".join(_cell(w.get("check")) for w in r["waivers"]) or "none"
        run = html.escape(r["run_id"], quote=True)
        docs = f' · <a href="runs/{run}/datadocs/index.html">Data Docs</a>' if r.get("has_datadocs") else ""
        rows.append(
            f'<tr class="{verdict.lower()}"><td><a href="runs/{run}/">{run}</a>{docs}</td><td>{verdict}</td>'
            f"<td>{cause}</td><td><ul>{failing or '<li>none</li>'}</ul></td>"
            f"<td>{_cell(', '.join(r.get('subgroups', [])))}</td>"
            f"<td>{waived}</td><td>{_sign_off(r)}</td></tr>"
        )
    body = "".join(rows) or '<tr><td colspan="7">No run has produced a gate report yet.</td></tr>'
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Release gates</title><style>"
        "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:.3em .6em;vertical-align:top}tr.failed td:nth-child(2){color:#b00020;font-weight:bold}"
        "tr.passed td:nth-child(2){color:#0a7d32;font-weight:bold}ul{margin:0;padding-left:1.1em}</style></head>"
        f"<body><h1>Release gates</h1><p>{len(runs)} run(s) with a gate report.</p>"
        "<table><thead><tr><th>Run</th><th>Verdict</th><th>First cause</th><th>Failing checks</th><th>Subgroups</th>"
        f"<th>Waivers</th><th>Sign-off</th></tr></thead><tbody>{body}</tbody></table></body></html>"
    )


def create_app() -> FastAPI:
    """The plugin's FastAPI app: every route requires a user who may read ``guard_release``'s runs (401 without
    credentials, 403 without that permission); no docs routes; security headers on every response."""
    app = FastAPI(title="Release gates", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID))])

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return runs_page(list_runs(guard_out()))

    @app.get("/api/runs")
    def runs_json() -> list[dict[str, Any]]:
        return list_runs(guard_out())

    @app.get("/runs/{run_id}")
    def run_root(run_id: str) -> RedirectResponse:
        report_file(guard_out(), run_id, "index.html")
        return RedirectResponse(url=f"{URL_PREFIX}/runs/{run_id}/", status_code=307)

    @app.get("/runs/{run_id}/{rel:path}")
    def run_report(run_id: str, rel: str) -> FileResponse:
        return FileResponse(report_file(guard_out(), run_id, rel))

    return app


class GuardReviewPlugin(AirflowPlugin):
    name = "guard_review"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Release gates"}]
    external_views = [
        {
            "name": "Release gates",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "release-gates",
        }
    ]
