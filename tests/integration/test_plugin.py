"""plugins/guard_review.py served by the real Airflow API app (create_app, SimpleAuthManager with one user).

A failing run's report is shown to a client holding a JWT from the auth manager's token endpoint; every route
refuses a request without a token (401); paths outside a run's report folder are refused.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Airflow reads its configuration when first imported: point it at a throw-away home before that happens.
# test_dag.py computes the same home, so the two modules agree whichever is imported first.
AIRFLOW_HOME = Path(tempfile.gettempdir()) / f"guard-pytest-airflow-{os.getpid()}"
os.environ.update(
    AIRFLOW_HOME=str(AIRFLOW_HOME),
    AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
    AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
    AIRFLOW__CORE__LOAD_EXAMPLES="False",
    AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="False",  # all-admins mode authenticates every request
    AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="steward:viewer",
    AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(AIRFLOW_HOME / "passwords.json"),
)
os.environ.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_hex(32))

pytest.importorskip("airflow", reason="apache-airflow is not installed (pip install -e '.[airflow]')")
from fastapi.testclient import TestClient  # noqa: E402

from guards import pipeline  # noqa: E402
from guards.keys import PseudonymKey  # noqa: E402
from guards.policy import ReleasePolicy  # noqa: E402
from guards.samples import generate_corpus  # noqa: E402

pytestmark = [pytest.mark.airflow]

# deid + cohort + reid only; k far above the corpus size so reid (the only blocking check) fails.
FAILING = ReleasePolicy().with_overrides({
    "deid.clean_pixel_data": False, "protect.enabled": False,
    "gate.blocking": ["reid"], "gate.advisory": [], "reid.k": 1000,
    "gate.off": ["representation", "phi", "membership", "unlearnability", "attribute", "inversion"],
})


@pytest.fixture(scope="module")
def guard_out(tmp_path_factory: pytest.TempPathFactory, key: PseudonymKey) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("guard-out")
    root = tmp_path_factory.mktemp("src")
    generate_corpus(root, studies=12, seed=3, image_size=64)
    result = pipeline.run_pipeline(root, out, policy=FAILING, key=key, run_id="manual__2026-11-23_failing")
    assert not result.passed and result.release is None
    (out / "secret.txt").write_text("outside every report folder", encoding="utf-8")
    old = os.environ.get("GUARD_OUT")
    os.environ["GUARD_OUT"] = str(out)
    yield out
    if old is None:
        os.environ.pop("GUARD_OUT", None)
    else:
        os.environ["GUARD_OUT"] = old


@pytest.fixture(scope="module")
def client() -> TestClient:
    AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
    passwords = AIRFLOW_HOME / "passwords.json"
    if not passwords.exists():  # the auth manager keeps a user's existing password
        passwords.write_text(json.dumps({"steward": secrets.token_urlsafe(16)}), encoding="utf-8")
    if not (AIRFLOW_HOME / "airflow.db").exists():
        subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True,
                       env=dict(os.environ), capture_output=True, timeout=300)
    from airflow.api_fastapi.app import create_app

    return TestClient(create_app(apps="core"))


@pytest.fixture(scope="module")
def token(client: TestClient) -> str:
    password = json.loads((AIRFLOW_HOME / "passwords.json").read_text(encoding="utf-8"))["steward"]
    assert client.post("/auth/token", json={"username": "steward", "password": "wrong"}).status_code == 401
    response = client.post("/auth/token", json={"username": "steward", "password": password})
    assert response.status_code == 201, response.text
    return str(response.json()["access_token"])


def test_failing_run_listed_with_its_failing_check(client: TestClient, token: str, guard_out: Path) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    runs = client.get("/release-gates/api/runs", headers=auth)
    assert runs.status_code == 200
    [run] = runs.json()
    assert run["run_id"] == "manual__2026-11-23_failing" and run["passed"] is False
    assert {c["id"] for c in run["failing"]} == {"reid"}
    page = client.get("/release-gates/", headers=auth)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "FAILED" in page.text and "manual__2026-11-23_failing" in page.text and "<b>reid</b>" in page.text
    assert "None" not in page.text and "(threshold )" not in page.text


def test_the_first_cause_is_the_step_that_emptied_the_release(client: TestClient, token: str,
                                                               guard_out: Path) -> None:
    """reid.k = 1000 on 12 studies: remediation suppresses every study; that is the first reason in gate.json,
    the report and the Release gates page, before what the checks then could not examine."""
    gate = json.loads((guard_out / "runs" / "manual__2026-11-23_failing" / "report" / "gate.json").read_text())
    first = gate["reasons"][0]
    assert first.startswith("Re-identification remediation suppressed 12 of 12 studies (reid.k = 1000)"), first
    page = client.get("/release-gates/", headers={"Authorization": f"Bearer {token}"}).text
    assert "Re-identification remediation suppressed 12 of 12 studies" in page
    report = (guard_out / "runs" / "manual__2026-11-23_failing" / "report" / "index.html").read_text()
    assert report.index("suppressed 12 of 12 studies") < report.index("examined nothing")


def test_failing_run_report_served(client: TestClient, token: str, guard_out: Path) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    report = guard_out / "runs" / "manual__2026-11-23_failing" / "report"
    page = client.get("/release-gates/runs/manual__2026-11-23_failing/", headers=auth)
    assert page.status_code == 200
    assert page.content == (report / "index.html").read_bytes()
    gate = client.get("/release-gates/runs/manual__2026-11-23_failing/gate.json", headers=auth)
    assert gate.status_code == 200 and gate.json()["passed"] is False
    # the UI's session cookie works as well as the bearer header (the nav view is an iframe)
    client.cookies.set("_token", token)
    try:
        assert client.get("/release-gates/runs/manual__2026-11-23_failing/").status_code == 200
    finally:
        client.cookies.clear()


@pytest.mark.parametrize("path", [
    "/release-gates/",
    "/release-gates/api/runs",
    "/release-gates/runs/manual__2026-11-23_failing/",
    "/release-gates/runs/manual__2026-11-23_failing/gate.json",
])
def test_every_route_refuses_without_token(client: TestClient, guard_out: Path, path: str) -> None:
    client.cookies.clear()  # a response may have refreshed the session cookie (JWTRefreshMiddleware)
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer not-a-jwt"}).status_code in (401, 403)


@pytest.mark.parametrize("path", [
    "/release-gates/runs/manual__2026-11-23_failing/../../secret.txt",  # normalised by the client: no route
    "/release-gates/runs/manual__2026-11-23_failing/%2e%2e/%2e%2e/%2e%2e/secret.txt",  # encoded dot-dot
    "/release-gates/runs/manual__2026-11-23_failing/..%2f..%2f..%2fsecret.txt",  # encoded slashes
    "/release-gates/runs/..%2f..%2fsecret.txt/x",  # a run id that is not one
    "/release-gates/runs/manual__2026-11-23_failing/.hidden",  # hidden files are not served
])
def test_no_path_outside_the_report(client: TestClient, token: str, guard_out: Path, path: str) -> None:
    response = client.get(path, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 404
    assert b"outside every report folder" not in response.content


def test_gate_report_link_points_at_the_run_page() -> None:
    from types import SimpleNamespace

    import guard_review  # the plugins folder is on sys.path once Airflow has loaded its plugins

    from guards.gate_task import GateOperator, GateReportLink

    link = GateReportLink()
    key = SimpleNamespace(dag_id="guard_release", run_id="manual__2026-11-23T02:00:00+00:00")
    assert link.name == "Gate report"
    assert link.get_link(SimpleNamespace(task_id="gate"), ti_key=key) == (
        "/release-gates/runs/manual__2026-11-23T02_00_00_00_00/")
    assert [x.name for x in GateOperator.operator_extra_links] == ["Gate report"]
    # Not a global link: those are listed on every task of every DAG (an empty "Extra Links" heading on each).
    assert not guard_review.GuardReviewPlugin.global_operator_extra_links


def test_every_response_carries_a_strict_csp_and_no_store(client: TestClient, token: str, guard_out: Path) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    client.cookies.clear()
    for response in (client.get("/release-gates/", headers=auth),
                     client.get("/release-gates/runs/manual__2026-11-23_failing/", headers=auth),
                     client.get("/release-gates/runs/manual__2026-11-23_failing/gate.json", headers=auth),
                     client.get("/release-gates/"),  # 401
                     client.get("/release-gates/runs/manual__2026-11-23_failing/nothing.html", headers=auth)):  # 404
        csp = response.headers.get("content-security-policy", "")
        assert "default-src 'none'" in csp and "script-src 'none'" in csp, (response.status_code, csp)
        assert response.headers.get("cache-control") == "no-store"
        assert response.headers.get("x-content-type-options") == "nosniff"


@pytest.mark.parametrize("path", ["/release-gates/docs", "/release-gates/redoc", "/release-gates/openapi.json"])
def test_no_docs_routes(client: TestClient, token: str, path: str) -> None:
    client.cookies.clear()
    for headers in ({}, {"Authorization": f"Bearer {token}"}):
        response = client.get(path, headers=headers)
        assert response.status_code in (401, 404) and "openapi" not in response.text.lower()


def test_a_symlinked_report_folder_is_not_served(client: TestClient, token: str, guard_out: Path) -> None:
    run = guard_out / "runs" / "linked"
    run.mkdir()
    (run / "report").symlink_to(guard_out, target_is_directory=True)  # would make secret.txt look contained
    try:
        response = client.get("/release-gates/runs/linked/secret.txt", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 404 and b"outside every report folder" not in response.content
    finally:
        (run / "report").unlink()
        run.rmdir()


def test_a_user_who_may_not_read_the_dag_gets_403(client: TestClient, token: str, guard_out: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The auth manager is asked about guard_release's runs; when it says no, no report is served."""
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    asked: list[tuple[str, str | None]] = []

    def deny(self, *, method, details=None, user, access_entity=None):  # type: ignore[no-untyped-def]
        asked.append((method, getattr(details, "id", None)))
        return False

    monkeypatch.setattr(SimpleAuthManager, "is_authorized_dag", deny)
    client.cookies.clear()
    for path in ("/release-gates/", "/release-gates/runs/manual__2026-11-23_failing/gate.json"):
        response = client.get(path, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 403, (path, response.status_code)
        assert b"reid" not in response.content
    assert asked and set(asked) == {("GET", "guard_release")}


def test_the_release_gates_page_shows_the_sign_off() -> None:
    import guard_review

    base = {"failing": [], "reasons": [], "waivers": [], "subgroups": []}
    runs = [
        {**base, "run_id": "a", "passed": True, "approval": {
            "decision": "approved", "by": "steward", "at": "2026-12-03T10:00:00+00:00",
            "comment": "<img src=x onerror=alert(1)> checked", "via": "Airflow Required actions"}},
        {**base, "run_id": "b", "passed": True, "approval": {
            "decision": "rejected", "by": "", "at": "2026-12-03T11:00:00+00:00", "comment": "",
            "via": "no answer within 72 h (timeout)"}},
        {**base, "run_id": "c", "passed": True, "approval": None},
        {**base, "run_id": "d", "passed": False, "approval": None},
    ]
    page = guard_review.runs_page(runs)
    assert "<th>Sign-off</th>" in page
    assert "<b>approved</b> by steward at 2026-12-03T10:00:00+00:00: &lt;img src=x" in page
    assert "<img src=x" not in page  # the comment is the steward's text, shown as text
    assert "<b>rejected</b> at 2026-12-03T11:00:00+00:00 (no answer within 72 h (timeout))" in page
    assert page.count("awaiting sign-off") == 1  # the passed run without a decision; the failed one has none
