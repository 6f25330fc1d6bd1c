"""guard_release: the nightly Release Guard run, and the steward's manual run with a parameter form.

Thin by design: the ``ingest`` task starts the persisted Run (``guards.run.Run``: the policy file plus the form's
overrides and waivers, frozen; the source snapshot; the devices) and every later task loads that Run and calls
one function of ``guards.pipeline``, exactly as ``guard run`` does. Nothing is read at parse time but the
environment and the check registry (``guards.checks.registry``, which imports neither torch nor a check).
Bad input (``GuardError``) fails a task at once, without retries; a crash is retried.

ingest -> plan_shards -> deid.expand -> merge_deid -> protect -> cohort -> remediate
       -> check.expand | check_gpu.expand (registered checks; those needing a GPU on the GPU queue) -> gate
       -> approve (a steward's named sign-off in Required actions; guards.approval_task) -> publish

With ``GUARD_NOTIFY_EMAIL`` (comma-separated addresses) a failed gate and a pending approval send an email through
the ``smtp_default`` connection (Airflow's SmtpNotifier).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pendulum
from airflow.sdk import Asset, CronTriggerTimetable, Param, dag, get_current_context, task

from guards.approval_task import StewardApproval
from guards.checks.registry import registered
from guards.gate_task import gate_task, report_url

GUARD_OUT = os.environ.get("GUARD_OUT", os.path.join(os.environ.get("AIRFLOW_HOME", "."), "guard-out"))
GUARD_SOURCE = os.environ.get("GUARD_SOURCE", "")
GUARD_POLICY = os.environ.get("GUARD_POLICY", "")
GUARD_QUEUE_GPU = os.environ.get("GUARD_GPU_QUEUE", "")  # e.g. "gpu": protect and the GPU checks run there
# A scheduled run needs a source: without GUARD_SOURCE the DAG is manual-only (the form asks for one), since
# Airflow refuses a schedule on a DAG whose required params have no valid default.
CRON = os.environ.get("GUARD_SCHEDULE", "0 2 * * *") if GUARD_SOURCE else None
# No start_date and run_immediately=timedelta(0): unpausing the DAG (the trigger form does) waits for the next
# nightly time instead of starting the missed one at once, which then ran beside the steward's run and published
# first. run_immediately=False is not "never" in Airflow 3.3: only True is special-cased, so False falls back to
# "within 10 % of the period" and an unpause in the 2.4 h after the nightly time started the missed run.
SCHEDULE = CronTriggerTimetable(CRON, timezone="UTC", run_immediately=timedelta(0)) if CRON else None
# The releases folder as an Asset, named by its URI: Airflow keeps one active asset per name, so a fixed name
# with a GUARD_OUT that changed (a second deployment on one metadata DB, a moved OUT) made publish fail as
# "inactive asset".
RELEASES = Asset(uri=f"file://{os.path.abspath(GUARD_OUT)}/releases")
CHECKS = registered()
CPU_CHECKS = [c.id for c in CHECKS if "gpu" not in c.needs]
GPU_CHECKS = [c.id for c in CHECKS if "gpu" in c.needs]
NOTIFY = [a.strip() for a in os.environ.get("GUARD_NOTIFY_EMAIL", "").split(",") if a.strip()]
T = TypeVar("T")

PARAMS = {
    "source": Param(GUARD_SOURCE, type="string", minLength=1, title="Source",
                    description="DICOM tree (local path or fsspec URL) with labels.csv at its root, or a PACS: "
                                "dicomweb+http://HOST:PORT/PATH (credentials from the guard_pacs connection) or "
                                "dimse://AET@HOST:PORT?calling_aet=OURS (C-FIND + C-GET)"),
    "labels": Param(None, type=["null", "string"], title="Labels table",
                    description="absolute local path of a labels table (StudyInstanceUID or AccessionNumber, "
                                "label), e.g. for a PACS source; empty: ingest.labels inside the source"),
    "policy": Param(GUARD_POLICY, type=["null", "string"], title="Policy file",
                    description="guard.toml path; empty for the defaults"),
    "epsilon": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=0.25, title="Noise budget epsilon",
                     description="override protect.epsilon (fraction of the displayed range)"),
    "reid_max_risk": Param(None, type=["null", "number"], minimum=0, maximum=1, title="Max re-identification risk",
                           description="override reid.max_risk"),
    "reid_k": Param(None, type=["null", "integer"], minimum=1, title="k-anonymity", description="override reid.k"),
    "dry_run": Param(False, type="boolean", title="Dry run", description="run every check but never publish"),
    "shards": Param(2, type="integer", minimum=1, maximum=64, title="Shards",
                    description="groups of patients de-identified in parallel"),
    "resume": Param(None, type=["null", "string"], title="Resume run",
                    description="id of an earlier run (its folder under runs/) to continue as its next attempt:"
                                " steps done on unchanged inputs are carried, e.g. after a steward adds a waiver;"
                                " empty for a new run"),
    "waivers": Param(None, type=["null", "array"], title="Waivers",
                     description="checks a steward waives, each with a written reason",
                     items={"type": "object", "required": ["check", "reason"],
                            "properties": {"check": {"type": "string", "enum": [c.id for c in CHECKS]},
                                           "reason": {"type": "string", "minLength": 10}}}),
}


def _key() -> Any:
    """The key, from the connection ``guard_pseudonym_key`` (its password) through the secrets backend. Airflow
    masks connection passwords in task logs, and Release Guard never formats it."""
    from airflow.sdk import Connection

    from guards.keys import key_from_text

    return key_from_text(Connection.get("guard_pseudonym_key").password or "")


def _pacs_credentials() -> None:
    """PACS credentials for the ingest task, from the connection ``guard_pacs`` when it exists: its login and
    password (HTTP Basic) or ``{"token": ...}`` in its extra (Bearer), handed to guards.sources.dicomweb in its
    environment variables. Airflow masks connection passwords in task logs; the source records neither."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    from guards.sources import dicomweb

    try:
        conn = Connection.get("guard_pacs")
    except AirflowNotFoundException:
        return
    for name, value in ((dicomweb.ENV_USER, conn.login), (dicomweb.ENV_PASSWORD, conn.password),
                        (dicomweb.ENV_TOKEN, conn.extra_dejson.get("token"))):
        if value:
            os.environ[name] = str(value)


def _run_id() -> str:
    """The Run every task of this DAG run loads: the form's ``resume`` run, else one named after the DAG run."""
    from guards.run import safe_run_id

    ctx = get_current_context()
    return safe_run_id(ctx["params"].get("resume") or ctx["run_id"])


def _load() -> Any:
    from guards.run import Run

    return Run.load(Path(GUARD_OUT), _run_id())


def _notifier(subject: str, text: str) -> Any:
    """An email to GUARD_NOTIFY_EMAIL through smtp_default (no values from the data: the link says where)."""
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    return SmtpNotifier(to=NOTIFY, subject=subject, html_content=(
        f"<p>{text}</p><p>DAG run <code>{{{{ run_id }}}}</code>. Open the Release gates page of Airflow"
        " (Browse, Release gates) for the report.</p>"))


def _guarded(work: Callable[[], T]) -> T:
    """Bad input fails the task at once (no retries: the same input fails the same way); the message says why."""
    from airflow.sdk.exceptions import AirflowFailException

    from guards.errors import GuardError

    try:
        return work()
    except GuardError as e:
        raise AirflowFailException(str(e)) from e


@dag(
    dag_id="guard_release",
    schedule=SCHEDULE,
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    tags=["release-guard", "dicom", "privacy"],
    default_args={"retries": 2, "retry_delay": pendulum.duration(seconds=30)},
    doc_md=__doc__,
)
def guard_release() -> None:
    @task
    def ingest() -> dict[str, Any]:
        """Start the Run (or its next attempt) with the frozen policy, then snapshot the source."""
        from guards import pipeline

        def work() -> dict[str, Any]:
            params = dict(get_current_context()["params"])
            policy = pipeline.policy_for_run(params.get("policy") or None, params)
            if params.get("resume"):
                pipeline.Run.load(Path(GUARD_OUT), _run_id())  # resuming a run that does not exist: bad input
            run = pipeline.start_run(Path(GUARD_OUT), _run_id(), source=params["source"], policy=policy,
                                     key=_key(), device="cuda" if GUARD_QUEUE_GPU else "cpu")
            _pacs_credentials()
            return dict(pipeline.step_ingest(run, params["source"]))

        return _guarded(work)

    @task
    def plan_shards(ingested: dict[str, Any]) -> list[int]:
        from guards import pipeline

        shards = int(get_current_context()["params"]["shards"])
        return _guarded(lambda: pipeline.plan_shards(_load(), shards=shards))

    @task(max_active_tis_per_dagrun=4)
    def deid(shard: int) -> dict[str, Any]:
        from guards import pipeline

        return _guarded(lambda: dict(pipeline.step_deid_shard(_load(), shard, key=_key())))

    @task
    def merge_deid(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
        from guards import pipeline

        return _guarded(lambda: dict(pipeline.merge_deid(_load())))

    @task(queue=GUARD_QUEUE_GPU or None)
    def protect(merged: dict[str, Any]) -> dict[str, Any]:
        from guards import pipeline

        return _guarded(lambda: dict(pipeline.step_protect(_load(), key=_key())))

    @task
    def cohort(protected: dict[str, Any]) -> dict[str, Any]:
        from guards import pipeline

        return _guarded(lambda: dict(pipeline.step_cohort(_load(), key=_key())))

    @task
    def remediate(built: dict[str, Any]) -> dict[str, Any]:
        from guards import pipeline

        return _guarded(lambda: dict(pipeline.step_remediate(_load())))

    def _check(check_id: str) -> dict[str, Any]:
        from guards import pipeline

        get_current_context()["check_id"] = check_id  # type: ignore[typeddict-unknown-key]  # map_index_template
        run = _load()
        if check_id not in pipeline.enabled_checks(run.policy):
            return {"id": check_id, "status": "off by policy"}
        return _guarded(lambda: dict(pipeline.run_check(run, check_id)))

    @task(retries=0, map_index_template="{{ check_id }}")  # the UI lists "check phi", not "check 2"
    def check(check_id: str, built: dict[str, Any]) -> dict[str, Any]:
        return _check(check_id)

    @task(retries=0, queue=GUARD_QUEUE_GPU or None, map_index_template="{{ check_id }}")
    def check_gpu(check_id: str, built: dict[str, Any]) -> dict[str, Any]:
        """The checks whose registry entry needs a GPU; they run on the Run's device."""
        return _check(check_id)

    @gate_task(retries=0, trigger_rule="all_done", on_failure_callback=[
        _notifier("Release Guard: gate FAILED for {{ run_id }}", "The release gate failed: nothing is published.")
    ] if NOTIFY else [])
    def gate(cpu: list[dict[str, Any]], gpu: list[dict[str, Any]]) -> dict[str, Any]:
        """Fails (red in the UI) when a blocking check fails, is inconclusive or did not run in this attempt."""
        import logging

        from airflow.sdk.exceptions import AirflowFailException

        from guards import pipeline

        outcome = _guarded(lambda: pipeline.step_gate(_load()))
        if not outcome["passed"]:
            log = logging.getLogger("guard_release.gate")
            for n, reason in enumerate(outcome["reasons"], start=1):  # one line per reason, not one long line
                log.error("reason %d/%d: %s", n, len(outcome["reasons"]), reason)
            link = report_url(_run_id())  # the Gate report link of this task
            raise AirflowFailException(f"release gate FAILED ({len(outcome['reasons'])} reasons above; the first:"
                                       f" {outcome['reasons'][0] if outcome['reasons'] else 'none given'})."
                                       f" Report: {link} in Release gates")
        return dict(outcome)

    @task(outlets=[RELEASES], retries=0)
    def publish(decision: dict[str, Any]) -> dict[str, Any]:
        from guards import pipeline

        ctx = get_current_context()
        if ctx["params"]["dry_run"]:
            return {"published": False, "dry_run": True, "report": decision["report"]}
        run = _load()
        outcome = _guarded(lambda: pipeline.step_publish(run, key=_key()))
        ctx["outlet_events"][RELEASES].extra = {
            "release": outcome["release"],
            "verdict": "passed" if decision["passed"] else "failed",
            "version": outcome["version"],
            "approval": outcome["approval"],
            "already_published": outcome["already"],
            "counts": pipeline.input_counts(run),
        }
        return dict(outcome)

    ingested = ingest()
    shards = plan_shards(ingested)
    merged = merge_deid(deid.expand(shard=shards))
    built = remediate(cohort(protect(merged)))
    cpu = check.partial(built=built).expand(check_id=CPU_CHECKS)
    gpu = check_gpu.partial(built=built).expand(check_id=GPU_CHECKS)
    approve = StewardApproval(
        task_id="approve", load_run=_load, retries=0,
        notifiers=[_notifier("Release Guard: approval pending for {{ run_id }}",
                             "The release gate passed; a steward's approval is needed before it is published"
                             " (Required actions in Airflow).")] if NOTIFY else [])
    decided = gate(cpu, gpu)
    decided >> approve >> publish(decided)


guard_release()
