"""The DAG's ``approve`` task: an Airflow 3 human-in-the-loop ApprovalOperator between the gate and publish.

The steward sees the verdict, the reasons and the report link in Airflow's Required actions page and answers
Approve or Reject with a comment. The answer (or, after ``approval.timeout_hours`` with no answer, a rejection)
is recorded in the Run by :func:`guards.approval.record`; Reject skips publish, and publish itself refuses an
attempt without an approval. A dry run, or a run the policy lets publish unasked (``approval.required = false``,
or a scheduled run with ``approval.scheduled = false``), records why nobody was asked and does not wait.

This module imports Airflow; only the DAG file imports it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param
from airflow.sdk.definitions.param import ParamsDict

from guards import approval as approvals

if TYPE_CHECKING:
    from airflow.sdk.bases.notifier import BaseNotifier

    from guards.run import Run

REQUIRED_ACTIONS = "Airflow Required actions"
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()<>#+!|~&])")


def markdown_text(text: str) -> str:
    """``text`` shown as itself in the Required actions page's Markdown (header values reach gate reasons)."""
    return _MARKDOWN.sub(r"\\\1", str(text).replace("\r", " ").replace("\n", " "))


def request_body(run: Run) -> str:
    """What the steward reads before answering: verdict, counts, waivers, warnings and the report's link."""
    gate = json.loads((run.paths.report / "gate.json").read_text(encoding="utf-8"))
    lines = [f"**Gate: {'PASSED' if gate['passed'] else 'FAILED'}** for release "
             f"{markdown_text(run.policy.release.name)}, run {markdown_text(run.run_id)} attempt {run.attempt}.",
             "", f"Report: [Release gates / {markdown_text(run.run_id)}](/release-gates/runs/{run.run_id}/)", ""]
    outcomes = gate.get("outcomes", [])
    if outcomes:
        lines += ["| check | role | outcome |", "|---|---|---|"]
        lines += [f"| {markdown_text(o['id'])} | {markdown_text(o.get('role', ''))} | "
                  f"{markdown_text(o.get('outcome', ''))} |" for o in outcomes]
        lines.append("")
    for title, key in (("Waivers", "waivers"), ("Warnings", "warnings")):
        items = gate.get(key) or []
        if items:
            lines += [f"**{title}**", ""]
            lines += [f"- {markdown_text(w['check'] + ': ' + w['reason'] if isinstance(w, dict) else w)}"
                      for w in items]
            lines.append("")
    lines.append(f"No answer within {run.policy.approval.timeout_hours:g} h rejects the release.")
    return "\n".join(lines)


class StewardApproval(ApprovalOperator):
    """Approve or reject publishing this attempt; the answer is recorded in the Run before publish runs."""

    def __init__(self, *, load_run: Callable[[], Run], notifiers: Sequence[BaseNotifier] = (), **kwargs: Any):
        self._load_run = load_run
        given = kwargs.pop("params", None)  # the DAG's own params, merged in by Airflow (unresolved: keep them so)
        params = given if isinstance(given, ParamsDict) else ParamsDict(given or {})
        params.update(ParamsDict({"comment": Param(
            "", type="string", maxLength=approvals.COMMENT_MAX, title="Comment", source="task",
            description="why you approve or reject (recorded in the datasheet and gate.json with your name)")}))
        super().__init__(
            subject="Release Guard: publish this release?",
            body="(written when the gate has passed)",
            defaults="Reject",  # what the scheduler's timeout sweep answers: no answer rejects
            params=params,
            notifiers=list(notifiers),
            **kwargs,
        )

    def execute(self, context: Any) -> Any:
        run = self._load_run()
        params = context["params"]
        run_type = getattr(context.get("dag_run"), "run_type", "")
        scheduled = getattr(run_type, "value", run_type) == "scheduled"
        unasked = "dry run: nothing is published" if params.get("dry_run") else approvals.required(
            run, scheduled=scheduled)
        if unasked is not None:
            approvals.record(run, approvals.Approval(decision="not required", by="", at=approvals.now(),
                                                     comment="", via=unasked))
            self.log.info("no sign-off asked: %s", unasked)
            return {"chosen_options": ["Approve"], "responded_by_user": None, "not_required": unasked}
        self.body = request_body(run)
        self.response_timeout = timedelta(hours=run.policy.approval.timeout_hours)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if "error" not in event:
            chosen = list(event.get("chosen_options") or [])
            user = event.get("responded_by_user") or {}
            timed_out = bool(event.get("timedout")) or not user
            hours = self._load_run().policy.approval.timeout_hours
            approvals.record(self._load_run(), approvals.Approval(
                decision="approved" if chosen == [self.APPROVE] and not timed_out else "rejected",
                by="" if timed_out else str(user.get("name") or user.get("id") or ""),
                at=_iso(event.get("responded_at")),
                comment=str((event.get("params_input") or {}).get("comment") or ""),
                via=f"no answer within {hours:g} h (timeout rejects)" if timed_out else REQUIRED_ACTIONS))
        return super().execute_complete(context, event)


def _iso(value: Any) -> str:
    if value is None:
        return approvals.now()
    return value.isoformat(timespec="seconds") if hasattr(value, "isoformat") else str(value)
