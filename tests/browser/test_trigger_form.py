"""A steward's whole run in a real Airflow, through the UI only: trigger form, sign-off, Release gates, report.

The API server, scheduler, DAG processor and triggerer run as separate processes on one home (SQLite,
LocalExecutor); the DAG has its nightly schedule (GUARD_SOURCE set), and the steward, logged in to headless
Chromium, opens the DAG, fills the trigger form (source and policy), triggers (which unpauses the DAG), approves
the run in Required actions with a comment, and reads the Release gates page and the gate report. Asserted: the
run publishes one release whose gate.json names the steward; the page shows the verdict and the sign-off; the
report opens; and the only DAG run is the steward's (unpausing started no missed nightly run).
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HAS_AIRFLOW = importlib.util.find_spec("airflow") is not None
pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra has it)")

from airflow_ui import CHROMEDRIVER, CHROMIUM, Server, api_server, chromium, reid_only_policy  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from guards.samples import generate_corpus  # noqa: E402

pytestmark = [
    pytest.mark.airflow,
    pytest.mark.timeout(1500),
    pytest.mark.slow(reason="the API server, scheduler, DAG processor, triggerer and headless Chromium; one run"),
    pytest.mark.skipif(not HAS_AIRFLOW, reason="apache-airflow is not installed (pip install -e '.[airflow]')"),
    pytest.mark.skipif(not (CHROMEDRIVER and CHROMIUM),
                       reason="chromium and chromium-driver are not installed (make system-deps installs them)"),
    # Known flaky under the full suite in CI (2 of 2 clean-clone runs on 2026-12-03 failed before the form was
    # submitted: once a dropped key, once the policy field not keeping the typed path); it passes run alone.
    # Until that is understood it runs outside CI only: `.venv/bin/pytest tests/browser/test_trigger_form.py`.
    pytest.mark.skipif(bool(os.environ.get("CI")), reason="flaky in the CI suite (see the comment above)"),
]

RELEASE = "ui-form"
POLICY = reid_only_policy(RELEASE)
COMMENT = "triggered from the form and reviewed"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("studies")
    generate_corpus(root, studies=4, seed=7, image_size=64)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, key_hex: str, source: Path) -> Iterator[Server]:
    key = json.dumps({"conn_type": "generic", "password": key_hex})
    with api_server(tmp_path_factory.mktemp("airflow-home"), guard_out=tmp_path_factory.mktemp("guard-out"),
                    role="user", components=("scheduler", "dag-processor", "triggerer"),
                    extra_env={"AIRFLOW_CONN_GUARD_PSEUDONYM_KEY": key, "GUARD_SOURCE": str(source),
                               "GUARD_SCHEDULE": "0 2 * * *"}) as running:
        yield running


def _until(what: str, probe: Any, server: Server, *, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(2)
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                     for p in sorted(server.home.glob("*.log")))
    pytest.fail(f"{what} within {seconds:.0f} s\n{logs}", pytrace=False)


def _fill(browser: Any, element_id: str, text: str) -> None:
    """Replace the text of a form field as a user does (select all, type), until the field holds it: the form
    re-renders while its defaults load, which can drop keys typed meanwhile."""
    from selenium.webdriver.common.keys import Keys

    for _ in range(10):
        field = browser.find_element(By.ID, element_id)
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.DELETE)
        field.send_keys(text)
        time.sleep(0.5)
        if browser.find_element(By.ID, element_id).get_attribute("value") == text:
            return
    pytest.fail(f"the form field {element_id} does not keep the text typed into it", pytrace=False)


def _task_state(server: Server, run_id: str, task_id: str) -> str:
    try:
        return str(server.api("GET", f"/api/v2/dags/guard_release/dagRuns/{run_id}/taskInstances/{task_id}")["state"])
    except OSError:
        return ""


def _dag_runs(server: Server) -> list[dict[str, Any]]:
    return list(server.api("GET", "/api/v2/dags/guard_release/dagRuns")["dag_runs"])


def test_a_steward_triggers_approves_and_reads_the_report_in_the_browser(server: Server, source: Path) -> None:
    policy = server.home / "form.toml"
    policy.write_text(POLICY, encoding="utf-8")
    _until("the DAG processor parsed guard_release", lambda: _dag(server), server, seconds=300)
    with chromium(server) as browser:
        wait = WebDriverWait(browser, 120)
        browser.get(f"{server.base}/dags/guard_release")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=trigger-dag-button]"))[0].click()
        wait.until(lambda d: d.find_elements(By.ID, "element_source"))
        time.sleep(1)  # the form re-renders once its defaults load
        _fill(browser, "element_source", str(source))  # the nightly source is its default; typed anyway
        _fill(browser, "element_policy", str(policy))
        # The submit button is enabled only when every field is valid: an optional field must be nullable (a
        # required string or array left empty kept it disabled, with no message).
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]").is_enabled())
        browser.find_element(By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]").click()

        [run] = _until("the triggered run appeared", lambda: _dag_runs(server), server, seconds=120)
        run_id = run["dag_run_id"]
        assert run["run_type"] == "manual" and run["conf"]["source"] == str(source)
        assert run["conf"]["policy"] == str(policy)
        def waiting() -> bool:
            assert _dag_runs(server)[0]["state"] != "failed", "the run failed before its sign-off"
            return _task_state(server, run_id, "approve") == "awaiting_input"

        _until("approve waits for the steward", waiting, server, seconds=900)

        browser.get(f"{server.base}/dags/guard_release/runs/{run_id}/tasks/approve/required_actions")
        wait.until(lambda d: d.find_elements(By.ID, "element_comment"))
        assert "Gate: PASSED" in browser.execute_script("return document.body.innerText")
        time.sleep(1)
        browser.find_element(By.ID, "element_comment").send_keys(COMMENT)
        wait.until(lambda d: [b for b in d.find_elements(By.TAG_NAME, "button")
                              if b.text.strip() == "Approve" and b.is_enabled()])[0].click()
        _until("the run ended", lambda: _dag_runs(server)[0]["state"] in ("success", "failed"), server, seconds=600)
        assert _dag_runs(server)[0]["state"] == "success"

        browser.get(f"{server.base}/release-gates/")
        from guards.run import safe_run_id

        folder = safe_run_id(run_id)
        [row] = [r for r in browser.find_elements(By.TAG_NAME, "tr") if folder in r.text]
        assert "PASSED" in row.text and "approved by steward" in row.text and COMMENT in row.text
        row.find_element(By.LINK_TEXT, folder).click()
        wait.until(lambda d: "gate report" in d.execute_script("return document.body.innerText"))
        report = browser.execute_script("return document.body.innerText")
        assert f"Release Guard gate report — run {folder}" in report and "PASSED" in report and "reid" in report

    releases = Path(server.env["GUARD_OUT"]) / "releases" / RELEASE
    [version] = list(releases.iterdir())
    approval = json.loads((version / "gate.json").read_text(encoding="utf-8"))["approval"]
    assert approval["decision"] == "approved" and approval["by"] == "steward" and approval["comment"] == COMMENT
    assert [r["run_type"] for r in _dag_runs(server)] == ["manual"]  # unpausing started no nightly run
    assert server.api("GET", "/api/v2/dags/guard_release")["is_paused"] is False


def _dag(server: Server) -> bool:
    try:
        server.api("GET", "/api/v2/dags/guard_release")
        return True
    except OSError:
        return False
