"""The DAG's ``gate`` task: a TaskFlow task whose operator carries the extra link "Gate report".

The link is declared on this operator only (``operator_extra_links``), not as a plugin's global link: a global
link is listed on every task of every DAG, so each task page showed an empty "Extra Links" heading. Airflow 3's
worker evaluates an operator's own links when the task ends (passed or failed) and stores them as XCom, which the
UI reads; the link is the run's page in the Release gates plugin (plugins/guard_review.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airflow.providers.standard.decorators.python import _PythonDecoratedOperator
from airflow.sdk import BaseOperatorLink
from airflow.sdk.bases.decorator import task_decorator_factory

REVIEW_URL_PREFIX = "/release-gates"  # where plugins/guard_review.py mounts the Release gates app


def report_url(run_id: str) -> str:
    """The Release gates page of the run that the DAG run ``run_id`` made."""
    from guards.run import safe_run_id

    return f"{REVIEW_URL_PREFIX}/runs/{safe_run_id(run_id)}/"


class GateReportLink(BaseOperatorLink):
    """Extra link "Gate report": the run's page in Release gates."""

    name = "Gate report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return report_url(ti_key.run_id)


class GateOperator(_PythonDecoratedOperator):
    """A ``@task`` whose task page links to the gate report."""

    operator_extra_links = (GateReportLink(),)


def gate_task(python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
    """``@gate_task(...)``: like ``@task(...)``, with the "Gate report" link."""
    return task_decorator_factory(python_callable=python_callable, decorated_operator_class=GateOperator, **kwargs)
