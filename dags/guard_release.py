"""guard_release: the nightly Release Guard run, and the steward's manual run with a parameter form.

Thin by design: every task imports ``guards`` inside its body and calls one function of
``guards.pipeline``; no file reads, torch or pandas imports at parse time (the cron comes from the
``GUARD_SCHEDULE`` environment variable, which ``make``/docker set from the policy's ``release.schedule``).

ingest -> plan_shards -> deid.expand -> merge_deid -> protect -> cohort -> remediate
       -> check_<id> (in parallel) -> gate -> publish
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task

GUARD_OUT = os.environ.get("GUARD_OUT", os.path.join(os.environ.get("AIRFLOW_HOME", "."), "guard-out"))
GUARD_SOURCE = os.environ.get("GUARD_SOURCE", "")
GUARD_POLICY = os.environ.get("GUARD_POLICY", "")
GUARD_QUEUE_GPU = os.environ.get("GUARD_GPU_QUEUE", "")  # e.g. "gpu" routes protect to the GPU workers
# A scheduled run needs a source: without GUARD_SOURCE the DAG is manual-only (the form asks for one), since
# Airflow refuses a schedule on a DAG whose required params have no valid default.
SCHEDULE = os.environ.get("GUARD_SCHEDULE", "0 2 * * *") if GUARD_SOURCE else None
RELEASES = Asset(name="guard_releases", uri=f"file://{os.path.abspath(GUARD_OUT)}/releases")
CHECKS = ("representation", "reid", "phi", "membership", "unlearnability", "attribute")

PARAMS = {
    "source": Param(GUARD_SOURCE, type="string", minLength=1, title="Source",
                    description="DICOM tree (local path or fsspec URL) with labels.csv at its root"),
    "policy": Param(GUARD_POLICY, type="string", title="Policy file",
                    description="guard.toml path; empty for the defaults"),
    "epsilon": Param(None, type=["null", "number"], minimum=0, maximum=0.25, title="Noise budget epsilon",
                     description="override protect.epsilon (fraction of the displayed range)"),
    "reid_max_risk": Param(None, type=["null", "number"], minimum=0, maximum=1, title="Max re-identification risk",
                           description="override reid.max_risk"),
    "reid_k": Param(None, type=["null", "integer"], minimum=1, title="k-anonymity", description="override reid.k"),
    "dry_run": Param(False, type="boolean", title="Dry run", description="run every check but never publish"),
    "shards": Param(2, type="integer", minimum=1, maximum=64, title="Shards",
                    description="groups of patients de-identified in parallel"),
    "waivers": Param([], type="array", title="Waivers",
                     description="checks a steward waives, each with a written reason",
                     items={"type": "object", "required": ["check", "reason"],
                            "properties": {"check": {"type": "string", "enum": list(CHECKS)},
                                           "reason": {"type": "string", "minLength": 10}}}),
}


def _run_context() -> dict[str, Any]:
    """Policy (with the form's overrides), run paths and key for this task; the key stays in memory.

    The key comes from the connection ``guard_pseudonym_key`` (its password) through the configured secrets
    backend; Airflow masks connection passwords in task logs, and Release Guard never formats it.
    """
    from airflow.sdk import Connection

    from guards import pipeline
    from guards.keys import key_from_text

    ctx = get_current_context()
    params = dict(ctx["params"])
    policy = pipeline.policy_for_run(params.get("policy") or None, params)
    secret = Connection.get("guard_pseudonym_key").password or ""
    return {
        "policy": policy,
        "paths": pipeline.RunPaths(out=Path(GUARD_OUT), run_id=pipeline.safe_run_id(ctx["run_id"])),
        "source": params["source"],
        "key": key_from_text(secret),
    }


@dag(
    dag_id="guard_release",
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
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
        from guards import pipeline

        rc = _run_context()
        return pipeline.step_ingest(rc["source"], rc["paths"], policy=rc["policy"])

    @task
    def plan_shards(ingested: dict[str, Any]) -> list[int]:
        from guards import pipeline

        rc = _run_context()
        return pipeline.plan_shards(rc["paths"], shards=int(get_current_context()["params"]["shards"]))

    @task(max_active_tis_per_dagrun=4)
    def deid(shard: int) -> dict[str, Any]:
        from guards import pipeline

        rc = _run_context()
        return pipeline.step_deid_shard(rc["source"], rc["paths"], shard, policy=rc["policy"], key=rc["key"])

    @task
    def merge_deid(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
        from guards import pipeline

        rc = _run_context()
        return pipeline.merge_deid(rc["paths"])

    @task(queue=GUARD_QUEUE_GPU or None)
    def protect(merged: dict[str, Any]) -> dict[str, Any]:
        from guards import pipeline

        rc = _run_context()
        device = "cuda" if GUARD_QUEUE_GPU else "cpu"
        return pipeline.step_protect(rc["source"], rc["paths"], policy=rc["policy"], key=rc["key"], device=device)

    @task
    def cohort(protected: dict[str, Any]) -> dict[str, Any]:
        from guards import pipeline

        rc = _run_context()
        return pipeline.step_cohort(rc["source"], rc["paths"], policy=rc["policy"], key=rc["key"])

    @task
    def remediate(built: dict[str, Any]) -> dict[str, Any]:
        from guards import pipeline

        rc = _run_context()
        return pipeline.step_remediate(rc["paths"], policy=rc["policy"])

    @task(retries=0)
    def check(check_id: str, built: dict[str, Any]) -> dict[str, Any]:
        from guards import pipeline

        rc = _run_context()
        if check_id not in pipeline.enabled_checks(rc["policy"]):
            return {"id": check_id, "status": "not requested"}
        return pipeline.run_check(check_id, rc["source"], rc["paths"], policy=rc["policy"])

    @task(retries=0, trigger_rule="all_done")
    def gate(results: list[dict[str, Any]]) -> dict[str, Any]:
        """Fails (red in the UI) when a blocking check fails; the report is written either way."""
        from airflow.sdk.exceptions import AirflowFailException

        from guards import pipeline

        rc = _run_context()
        outcome = pipeline.step_gate(rc["paths"], policy=rc["policy"])
        if not outcome["passed"]:
            reasons = "; ".join(outcome["reasons"])
            raise AirflowFailException(f"release gate FAILED: {reasons}. Report: {outcome['report']}")
        return outcome

    @task(outlets=[RELEASES], retries=0)
    def publish(decision: dict[str, Any]) -> dict[str, Any]:
        from guards import pipeline

        rc = _run_context()
        ctx = get_current_context()
        if ctx["params"]["dry_run"]:
            return {"published": False, "dry_run": True, "report": decision["report"]}
        outcome = pipeline.step_publish(rc["paths"], policy=rc["policy"], key=rc["key"])
        ctx["outlet_events"][RELEASES].extra = {
            "release": outcome.get("release"),
            "verdict": "passed" if decision["passed"] else "failed",
            "counts": pipeline.input_counts(rc["paths"], rc["policy"]),
        }
        return outcome

    ingested = ingest()
    shards = plan_shards(ingested)
    merged = merge_deid(deid.expand(shard=shards))
    built = remediate(cohort(protect(merged)))
    results = check.partial(built=built).expand(check_id=list(CHECKS))
    publish(gate(results))


guard_release()
