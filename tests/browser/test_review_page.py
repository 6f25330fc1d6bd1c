"""The review page in a real browser: XSS payloads in DICOM headers stay inert on every page the plugin serves.

A failing run is made from generated studies whose EthnicGroup, Manufacturer, InstitutionName and
StudyDescription hold an HTML payload. The real Airflow API server (``airflow api-server``, SimpleAuthManager, its
own home and port) serves the Release gates plugin; headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
driven by selenium) logs in with the UI's session cookie and opens the Release gates page, the run's gate report,
and every Great Expectations Data Docs page of the run. On each page: no alert opened, no element the payload would
create exists, the payload's text is shown as text where it is shown, and the response carried the CSP.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Airflow is not imported here: it reads its configuration on first import, and tests/integration/test_plugin.py
# points it at its own home before that; this test talks to its own API server process only.
HAS_AIRFLOW = importlib.util.find_spec("airflow") is not None
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra has it)")

from pydicom import dcmread  # noqa: E402
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402

from guards import pipeline  # noqa: E402
from guards.keys import PseudonymKey  # noqa: E402
from guards.policy import ReleasePolicy  # noqa: E402
from guards.samples import generate_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.airflow,
    pytest.mark.timeout(900),
    pytest.mark.slow(reason="starts the Airflow API server and headless Chromium"),
    pytest.mark.skipif(not HAS_AIRFLOW, reason="apache-airflow is not installed (pip install -e '.[airflow]')"),
    pytest.mark.skipif(not (CHROMEDRIVER and CHROMIUM),
                       reason="chromium and chromium-driver are not installed (make system-deps installs them)"),
]

RUN_ID = "manual__xss"
# One marker per field, so that a page showing a payload says which header it came from.
FIELDS = ("EthnicGroup", "Manufacturer", "InstitutionName", "StudyDescription")


def payload(field: str) -> str:
    """Markup that creates an element (and runs a handler) where a page writes the value unescaped; EthnicGroup is
    SH (16 characters, PS3.5 6.2), so its payload is the short form."""
    if field == "EthnicGroup":
        return '"><img src=x>'
    return f'"><img src=x class=xss-{field} onerror=alert(1)>'


# Representation (Data Docs) and reid only, fast; reid.k far above the corpus so the gate fails and shows findings.
POLICY = ReleasePolicy().with_overrides({
    "deid.clean_pixel_data": False, "protect.enabled": False, "reid.remediate": False,
    "gate.blocking": ["representation", "reid"], "gate.advisory": [], "reid.k": 1000,
    "gate.off": ["phi", "membership", "unlearnability", "attribute"],
})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def guard_out(tmp_path_factory: pytest.TempPathFactory, key: PseudonymKey) -> Path:
    src = tmp_path_factory.mktemp("xss-src")
    generate_corpus(src, studies=12, seed=3, image_size=64)
    files = sorted(src.rglob("*.dcm"))
    assert files
    for path in files:
        ds = dcmread(path)
        for field in FIELDS:
            setattr(ds, field, payload(field))
        ds.save_as(path)
    out = tmp_path_factory.mktemp("xss-out")
    result = pipeline.run_pipeline(src, out, policy=POLICY, key=key, run_id=RUN_ID)
    assert not result.passed
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, guard_out: Path) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("airflow-home")
    password = secrets.token_urlsafe(16)
    (home / "passwords.json").write_text(json.dumps({"steward": password}), encoding="utf-8")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GUARD_"))}
    env.update(
        AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="False",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="steward:viewer",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(home / "passwords.json"),
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(32), GUARD_OUT=str(guard_out),
    )
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    log = (home / "api-server.log").open("w", encoding="utf-8")
    proc = subprocess.Popen([airflow, "api-server", "-H", "127.0.0.1", "-p", str(port), "-w", "1", "--apps", "core"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("the API server did not start: " + (home / "api-server.log").read_text()[-3000:])
                time.sleep(1)
        req = urllib.request.Request(f"{base}/auth/token", data=json.dumps(
            {"username": "steward", "password": password}).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            token = json.loads(r.read())["access_token"]
        yield {"base": base, "token": token}
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()


@pytest.fixture(scope="module")
def browser(server: dict[str, Any]) -> Iterator[Any]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)  # no driver download
    driver.set_page_load_timeout(60)
    try:
        driver.get(server["base"] + "/release-gates/does-not-exist")  # a page of the origin, to set its cookie
        driver.add_cookie({"name": "_token", "value": server["token"], "path": "/"})
        yield driver
    finally:
        driver.quit()


def _pages(guard_out: Path) -> list[str]:
    report = guard_out / "runs" / RUN_ID / "report"
    docs = sorted(p.relative_to(report).as_posix() for p in (report / "datadocs").rglob("*.html"))
    assert len(docs) >= 3, docs  # index, suite, validation
    return ["/release-gates/", f"/release-gates/runs/{RUN_ID}/", *(f"/release-gates/runs/{RUN_ID}/{d}" for d in docs)]


def test_payloads_in_headers_are_inert_on_every_page(browser: Any, server: dict[str, Any], guard_out: Path) -> None:
    shown: dict[str, int] = {}
    for path in _pages(guard_out):
        headers = urllib.request.urlopen(urllib.request.Request(
            server["base"] + path, headers={"Authorization": f"Bearer {server['token']}"}), timeout=30).headers
        assert "script-src 'none'" in headers.get("Content-Security-Policy", ""), path
        assert headers.get("Cache-Control") == "no-store", path
        browser.get(server["base"] + path)
        assert "401" not in browser.title and "Not authenticated" not in browser.page_source[:2000], path
        time.sleep(0.5)  # an onerror handler would have fired by now
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 - reading it is the probe
        created = browser.execute_script("return document.querySelectorAll('img[src=\"x\"], [class^=\"xss-\"]').length")
        assert created == 0, path
        text = browser.execute_script("return document.body ? document.body.innerText : ''")
        shown[path] = text.count("<img src=x")
    # the payload of EthnicGroup (a subgroup value) is shown, as text, on the report and on the Data Docs pages
    assert shown[f"/release-gates/runs/{RUN_ID}/"] > 0
    assert sum(v for k, v in shown.items() if "datadocs" in k) > 0, shown
