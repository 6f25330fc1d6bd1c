"""A real Airflow API server and a headless Chromium for the browser tests (no Airflow import in this process).

``api_server`` starts ``airflow api-server`` (SimpleAuthManager with one user and role, its own home, SQLite and a
free loopback port) as its own process group and stops the group at the end; ``chromium`` starts Debian's chromium
through chromium-driver (selenium never downloads a driver) with the server's session cookie set.
"""

from __future__ import annotations

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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass(frozen=True)
class Server:
    base: str
    token: str  # the user's JWT (the UI's _token cookie, or a Bearer header)
    env: dict[str, str]  # the environment of the server: an `airflow dags test` with it shares its metadata DB
    home: Path

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """A call of the REST API as the user."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")


def reid_only_policy(release: str) -> str:
    """A light policy for runs of the DAG in the browser tests: reid blocking, every model check off, no noise, no
    pixel cleaning (the sign-off is what these tests look at)."""
    return f"""
[release]
name = "{release}"
[pixels]
ocr_all = false
[deid]
clean_pixel_data = false
[protect]
enabled = false
[gate]
blocking = ["reid"]
advisory = []
off = ["representation", "phi", "membership", "unlearnability", "attribute", "inversion"]
[reid]
k = 1
max_risk = 1.0
remediate = false
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def api_server(home: Path, *, guard_out: Path, user: str = "steward", role: str = "viewer",
               extra_env: dict[str, str] | None = None, components: tuple[str, ...] = ()) -> Iterator[Server]:
    """The API server; ``components`` (e.g. ``("scheduler", "dag-processor", "triggerer")``) start beside it, each
    ``airflow <component>`` in its own process group on the same home and metadata DB (LocalExecutor), so a run
    triggered from the UI runs."""
    password = secrets.token_urlsafe(16)
    (home / "passwords.json").write_text(json.dumps({user: password}), encoding="utf-8")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GUARD_"))}
    env.update(
        AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="False",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{user}:{role}",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(home / "passwords.json"),
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(32), AIRFLOW__API__BASE_URL=base, GUARD_OUT=str(guard_out),
        **(extra_env or {}),
    )
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    log = (home / "api-server.log").open("w", encoding="utf-8")
    if components:  # the workers' tasks talk to the API server's execution API
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"{base}/execution/"
    apps = "all" if components else "core"
    proc = subprocess.Popen([AIRFLOW, "api-server", "-H", "127.0.0.1", "-p", str(port), "-w", "1", "--apps", apps],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    others: list[subprocess.Popen[bytes]] = []
    if components:
        env.setdefault("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
        env.setdefault("AIRFLOW__CORE__PARALLELISM", "2")
        env.setdefault("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "5")
        for component in components:
            with (home / f"{component}.log").open("wb") as out:
                others.append(subprocess.Popen([AIRFLOW, component], env=env, stdout=out, stderr=subprocess.STDOUT,
                                               start_new_session=True))
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the API server did not start: "
                                       + (home / "api-server.log").read_text()[-3000:]) from None
                time.sleep(1)
        req = urllib.request.Request(f"{base}/auth/token", data=json.dumps(
            {"username": user, "password": password}).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            token = json.loads(r.read())["access_token"]
        yield Server(base=base, token=token, env=env, home=home)
    finally:
        for p in (proc, *others):
            try:
                os.killpg(p.pid, 15)
            except ProcessLookupError:
                continue
        for p in (proc, *others):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
        log.close()


@contextmanager
def chromium(server: Server) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)  # no driver download
    driver.set_page_load_timeout(60)
    try:
        driver.get(server.base + "/api/v2/monitor/health")  # a page of the origin, to set its cookie
        driver.add_cookie({"name": "_token", "value": server.token, "path": "/"})
        yield driver
    finally:
        driver.quit()
