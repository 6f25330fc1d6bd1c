"""The named sign-off in a real Airflow: the DAG's ``approve`` task waits in Required actions, a steward answers in
headless Chromium, and the answer decides what is published.

One API server (SimpleAuthManager, a steward with the "user" role) shares its SQLite metadata DB with
``airflow dags test`` runs of the real DAG on generated studies (a light policy: reid only, no noise). Each run
parks its ``approve`` task in AWAITING_INPUT; then
- the steward opens the task's Required actions page, reads the verdict, writes a comment and clicks Approve:
  the run publishes, and gate.json and the datasheet name the steward, the time and the comment;
- the steward rejects (the REST API the page calls): publish is skipped and nothing is published;
- nobody answers within ``approval.timeout_hours``: the scheduler's own timeout sweep
  (``SchedulerJobRunner.check_awaiting_input_timeouts``) answers the task's default, Reject, and nothing is
  published.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HAS_AIRFLOW = importlib.util.find_spec("airflow") is not None
pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra has it)")

from airflow_ui import AIRFLOW, CHROMEDRIVER, CHROMIUM, Server, api_server, chromium, reid_only_policy  # noqa: E402,E501
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from guards.samples import generate_corpus  # noqa: E402

pytestmark = [
    pytest.mark.airflow,
    pytest.mark.timeout(1200),
    pytest.mark.slow(reason="the API server, headless Chromium and three `airflow dags test` runs of the DAG"),
    pytest.mark.skipif(not HAS_AIRFLOW, reason="apache-airflow is not installed (pip install -e '.[airflow]')"),
    pytest.mark.skipif(not (CHROMEDRIVER and CHROMIUM),
                       reason="chromium and chromium-driver are not installed (make system-deps installs them)"),
]

RELEASE = "ui-approval"
POLICY = reid_only_policy(RELEASE)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, key_hex: str) -> Iterator[Server]:
    out = tmp_path_factory.mktemp("guard-out")
    key = json.dumps({"conn_type": "generic", "password": key_hex})
    with api_server(tmp_path_factory.mktemp("airflow-home"), guard_out=out, role="user",
                    extra_env={"AIRFLOW_CONN_GUARD_PSEUDONYM_KEY": key}) as running:
        yield running


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("studies")
    generate_corpus(root, studies=4, seed=7, image_size=64)
    return root


class Waiting:
    """An ``airflow dags test`` of guard_release whose ``approve`` task is awaiting input."""

    def __init__(self, server: Server, source: Path, name: str, policy: str) -> None:
        self.server, self.name = server, name
        policy_file = server.home / f"{name}.toml"
        policy_file.write_text(policy, encoding="utf-8")
        self.log = server.home / f"dags-test-{name}.log"
        conf = json.dumps({"source": str(source), "policy": str(policy_file), "shards": 1})
        with self.log.open("w", encoding="utf-8") as f:
            self.proc = subprocess.Popen([AIRFLOW, "dags", "test", "guard_release", "-c", conf], env=server.env,
                                         stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        self.run_id = self._awaiting(deadline=time.monotonic() + 600)

    def _db(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.server.home / "airflow.db", timeout=30) as db:
            return db.execute(sql, args).fetchall()

    def _awaiting(self, *, deadline: float) -> str:
        while time.monotonic() < deadline:
            rows = self._db("SELECT run_id FROM task_instance WHERE dag_id = 'guard_release' AND task_id = 'approve'"
                            " AND state = 'awaiting_input'")
            if rows:
                return str(rows[0][0])
            if self.proc.poll() is not None:
                pytest.fail(f"dags test ended before approve: {self.log.read_text()[-3000:]}", pytrace=False)
            time.sleep(2)
        self.stop()
        pytest.fail("approve never waited for input: " + self.log.read_text()[-3000:], pytrace=False)

    def finish(self) -> dict[str, str]:
        """Wait for the run to end; the state of each task that decides publishing."""
        try:
            self.proc.wait(timeout=300)
        finally:
            self.stop()
        rows = self._db("SELECT task_id, state FROM task_instance WHERE run_id = ? AND task_id IN "
                        "('gate', 'approve', 'publish')", self.run_id)
        return {task: str(state) for task, state in rows}

    def gate_json(self) -> dict[str, Any]:
        folder = Path(self.server.env["GUARD_OUT"]) / "runs" / _safe(self.run_id)
        return dict(json.loads((folder / "report" / "gate.json").read_text(encoding="utf-8")))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(timeout=30)


def _safe(run_id: str) -> str:
    from guards.run import safe_run_id

    return safe_run_id(run_id)


def _versions(server: Server) -> list[str]:
    root = Path(server.env["GUARD_OUT"]) / "releases" / RELEASE
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_approving_in_the_browser_publishes_and_records_the_steward(server: Server, source: Path) -> None:
    run = Waiting(server, source, "approve", POLICY)
    before = _versions(server)
    with chromium(server) as browser:
        browser.get(f"{server.base}/dags/guard_release/runs/{run.run_id}/tasks/approve/required_actions")
        wait = WebDriverWait(browser, 90)
        wait.until(lambda d: d.find_elements(By.ID, "element_comment"))
        text = browser.execute_script("return document.body.innerText")
        assert "Release Guard: publish this release?" in text and "Gate: PASSED" in text
        assert "No answer within 72 h rejects the release." in text
        [link] = browser.find_elements(By.LINK_TEXT, f"Release gates / {_safe(run.run_id)}")
        assert link.get_attribute("href").endswith(f"/release-gates/runs/{_safe(run.run_id)}/")
        time.sleep(1)  # the form re-renders once its defaults load; type into the settled field
        browser.find_element(By.ID, "element_comment").send_keys("read the gate report: reid passes")
        approve = wait.until(lambda d: [b for b in d.find_elements(By.TAG_NAME, "button")
                                        if b.text.strip() == "Approve" and b.is_enabled()])
        approve[0].click()
        states = run.finish()
        browser.get(f"{server.base}/release-gates/")  # the Release gates page shows who signed off, and why
        row = [r for r in browser.find_elements(By.TAG_NAME, "tr") if _safe(run.run_id) in r.text]
        assert row and "approved by steward" in row[0].text and "read the gate report: reid passes" in row[0].text
    assert states == {"gate": "success", "approve": "success", "publish": "success"}, run.log.read_text()[-3000:]
    after = _versions(server)
    assert len(after) == len(before) + 1
    release = Path(server.env["GUARD_OUT"]) / "releases" / RELEASE / after[-1]
    approval = json.loads((release / "gate.json").read_text(encoding="utf-8"))["approval"]
    assert approval["decision"] == "approved" and approval["by"] == "steward"
    assert approval["comment"] == "read the gate report: reid passes" and approval["via"] == "Airflow Required actions"
    sheet = (release / "datasheet.md").read_text(encoding="utf-8")
    assert "- By: steward" in sheet and "read the gate report" in sheet
    # The gate task links its report (the link the worker stored when the task ended); no other task has links,
    # so no task page shows an empty "Extra Links" heading.
    links = f"/api/v2/dags/guard_release/dagRuns/{run.run_id}/taskInstances/%s/links"
    assert server.api("GET", links % "gate")["extra_links"] == {
        "Gate report": f"/release-gates/runs/{_safe(run.run_id)}/"}
    assert server.api("GET", links % "cohort")["total_entries"] == 0


def test_rejecting_publishes_nothing(server: Server, source: Path) -> None:
    run = Waiting(server, source, "reject", POLICY)
    before = _versions(server)
    server.api("PATCH", f"/api/v2/dags/guard_release/dagRuns/{run.run_id}/taskInstances/approve/-1/hitlDetails",
               {"chosen_options": ["Reject"], "params_input": {"comment": "site B labels not yet verified"}})
    states = run.finish()
    assert states["approve"] == "success" and states["publish"] == "skipped", states
    assert _versions(server) == before
    approval = run.gate_json()["approval"]
    assert approval["decision"] == "rejected" and approval["by"] == "steward"
    assert approval["comment"] == "site B labels not yet verified"


def test_no_answer_in_time_rejects(server: Server, source: Path) -> None:
    run = Waiting(server, source, "timeout", POLICY + "[approval]\ntimeout_hours = 0.0003\n")  # about a second
    before = _versions(server)
    time.sleep(3)
    sweep = ("from airflow.jobs.job import Job\nfrom airflow.jobs.scheduler_job_runner import SchedulerJobRunner\n"
             "SchedulerJobRunner(job=Job()).check_awaiting_input_timeouts()\n")
    subprocess.run([str(Path(AIRFLOW).with_name("python")), "-c", sweep], env=server.env, check=True,
                   capture_output=True, timeout=120, cwd=server.home)
    states = run.finish()
    assert states["approve"] == "success" and states["publish"] == "skipped", states
    assert _versions(server) == before
    approval = run.gate_json()["approval"]
    assert approval["decision"] == "rejected" and approval["by"] == ""
    assert approval["via"].startswith("no answer within 0.0003 h")
