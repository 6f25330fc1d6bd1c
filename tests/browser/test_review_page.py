"""The review page in a real browser: XSS payloads in DICOM headers stay inert on every page the plugin serves.

A failing run is made from generated studies whose EthnicGroup, Manufacturer, InstitutionName and
StudyDescription hold an HTML payload; a second run's labels table holds one as a label (refused by the cohort
step, whose error, with the offending row, is the report's first reason). The real Airflow API server
(``airflow api-server``, SimpleAuthManager, its own home and port) serves the Release gates plugin; headless
Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by selenium) logs in with the UI's session cookie
and opens the Release gates page, the runs' gate reports, and every Great Expectations Data Docs page of the
first run. On each page: no alert opened, no element the payload would create exists, the payload's text is
shown as text where it is shown, and the response carried the CSP.
"""

from __future__ import annotations

import importlib.util
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

from airflow_ui import CHROMEDRIVER, CHROMIUM, Server, api_server, chromium  # noqa: E402
from pydicom import dcmread  # noqa: E402
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402

from guards import pipeline  # noqa: E402
from guards.keys import PseudonymKey  # noqa: E402
from guards.policy import ReleasePolicy  # noqa: E402
from guards.samples import generate_corpus  # noqa: E402

pytestmark = [
    pytest.mark.airflow,
    pytest.mark.timeout(900),
    pytest.mark.slow(reason="starts the Airflow API server and headless Chromium"),
    pytest.mark.skipif(not HAS_AIRFLOW, reason="apache-airflow is not installed (pip install -e '.[airflow]')"),
    pytest.mark.skipif(not (CHROMEDRIVER and CHROMIUM),
                       reason="chromium and chromium-driver are not installed (make system-deps installs them)"),
]

RUN_ID = "manual__xss"
LABEL_RUN_ID = "manual__xss_label"
LABEL_PAYLOAD = "<img src=x class=xss-label onerror=alert(1)>"
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
    "gate.off": ["phi", "membership", "unlearnability", "attribute", "inversion"],
})


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
    # The label run: one row's label is the payload; the cohort step fails on it, the gate reports why.
    from guards.errors import InputError

    lines = (src / "labels.csv").read_text(encoding="utf-8").splitlines()
    lines[1] = f"{lines[1].split(',')[0]},{LABEL_PAYLOAD}"
    (src / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = pipeline.begin(src, out, LABEL_RUN_ID, policy=POLICY, key=key)
    pipeline.step_deid(run, key=key)
    with pytest.raises(InputError, match="line 2"):
        pipeline.step_cohort(run, key=key)
    gate = pipeline.step_gate(run)
    assert LABEL_PAYLOAD in gate["reasons"][0]  # the offending value is named (and must be shown as text)
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, guard_out: Path) -> Iterator[Server]:
    with api_server(tmp_path_factory.mktemp("airflow-home"), guard_out=guard_out) as running:
        yield running


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[Any]:
    with chromium(server) as driver:
        yield driver


def _pages(guard_out: Path) -> list[str]:
    report = guard_out / "runs" / RUN_ID / "report"
    docs = sorted(p.relative_to(report).as_posix() for p in (report / "datadocs").rglob("*.html"))
    assert len(docs) >= 3, docs  # index, suite, validation
    return ["/release-gates/", f"/release-gates/runs/{RUN_ID}/", *(f"/release-gates/runs/{RUN_ID}/{d}" for d in docs),
            f"/release-gates/runs/{LABEL_RUN_ID}/"]


def test_payloads_in_headers_are_inert_on_every_page(browser: Any, server: Server, guard_out: Path) -> None:
    shown: dict[str, int] = {}
    for path in _pages(guard_out):
        headers = urllib.request.urlopen(urllib.request.Request(
            server.base + path, headers={"Authorization": f"Bearer {server.token}"}), timeout=30).headers
        assert "script-src 'none'" in headers.get("Content-Security-Policy", ""), path
        assert headers.get("Cache-Control") == "no-store", path
        browser.get(server.base + path)
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
    assert shown[f"/release-gates/runs/{LABEL_RUN_ID}/"] > 0  # the label's payload, as text, in the first reason
    assert shown["/release-gates/"] > 0  # the Release gates page lists both runs' causes, as text
    assert sum(v for k, v in shown.items() if "datadocs" in k) > 0, shown
