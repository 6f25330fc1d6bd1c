"""Scale-out: guard_release on CeleryExecutor with the local PostgreSQL (metadata + results) and Redis (broker).

The test starts the API server (Execution API for the workers), the scheduler, the dag-processor and one Celery
worker, each in its own process group, and stops every group at the end. It triggers a run, kills the worker
(SIGKILL to its whole group) while a de-identification shard is running, starts a new worker, and checks that
the run still completes with every input file accounted for (seen = published + quarantined + excluded) and no
duplicate or partial file (no ``*.tmp``, one published file per manifest row, every published file parses).
The kill point is found by watching the shard output folder every 20 ms, since a shard takes about a second.
Bounded: every wait has a deadline, and the whole test ends within about 8 minutes.

Skipped, with the reason, when Postgres (127.0.0.1:5432) or Redis (127.0.0.1:6379) is not reachable.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guards.samples import generate_corpus

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
PG_HOST, PG_PORT, REDIS_PORT = "127.0.0.1", 5432, 6379
DB_NAME = f"guard_system_test_{os.getpid()}"
DEADLINE_S = 450  # the run must finish this many seconds after the trigger
SHARDS = 2
POLICY = """
[release]
name = "celery-test"
[protect]
enabled = false
[gate]
blocking = ["phi", "reid"]
advisory = []
off = ["representation", "membership", "unlearnability", "attribute", "inversion"]
[reid]
k = 1
max_risk = 1.0
[approval]
required = false  # the sign-off is tested in tests/browser/test_approval_ui.py; this run is about a killed worker
"""

pytestmark = [pytest.mark.system, pytest.mark.timeout(600),
              pytest.mark.slow(reason="a CeleryExecutor deployment (scheduler, two workers) runs the DAG on "
                                      "PostgreSQL and Redis")]


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection((PG_HOST, port), timeout=2):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sql(db: str, query: str, *args: Any, autocommit: bool = False) -> list[tuple[Any, ...]]:
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname=db)
    try:
        conn.autocommit = autocommit
        with conn.cursor() as cur:
            cur.execute(query, args)
            rows = cur.fetchall() if cur.description else []
        conn.commit()
        return rows
    finally:
        conn.close()


class Services:
    """Airflow processes, one process group each; ``stop`` ends a group (children included)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen([AIRFLOW, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        log.close()

    def stop(self, name: str, sig: int = signal.SIGTERM, wait_s: float = 20) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait_s)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            try:  # children that outlived their leader
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def _wait(what: str, condition: Callable[[], Any], *, timeout_s: float, services: Services) -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        for name, proc in services.procs.items():
            if proc.poll() is not None:
                tail = (services.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"{name} exited ({proc.returncode}) while waiting for {what}:\n{tail}")
        time.sleep(1)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture()
def database() -> Iterator[str]:
    if not _reachable(PG_PORT):
        pytest.skip(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}")
    if not _reachable(REDIS_PORT):
        pytest.skip(f"Redis is not reachable on {PG_HOST}:{REDIS_PORT}")
    _sql("postgres", f'DROP DATABASE IF EXISTS "{DB_NAME}"', autocommit=True)
    _sql("postgres", f'CREATE DATABASE "{DB_NAME}"', autocommit=True)
    yield DB_NAME
    _sql("postgres", f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)', autocommit=True)


def test_celery_run_survives_a_killed_worker(
        database: str, tmp_path: Path, key_hex: str) -> None:
    source = tmp_path / "source"
    generate_corpus(source, studies=32, seed=21)
    (source / "broken.dcm").write_bytes(b"not dicom")  # quarantined, still accounted for
    n_inputs = sum(1 for p in source.rglob("*") if p.is_file())
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY, encoding="utf-8")
    home, out = tmp_path / "airflow", tmp_path / "guard-out"
    (home / "logs").mkdir(parents=True)
    port, queue = _free_port(), f"guard-systest-{os.getpid()}"
    db_url = f"postgresql+psycopg2://postgres@{PG_HOST}:{PG_PORT}/{database}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GUARD_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__PARALLELISM="4",
        AIRFLOW__CORE__EXECUTOR="airflow.providers.celery.executors.celery_executor.CeleryExecutor",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=db_url,
        AIRFLOW__CELERY__RESULT_BACKEND=f"db+postgresql://postgres@{PG_HOST}:{PG_PORT}/{database}",
        AIRFLOW__CELERY__BROKER_URL=f"redis://{PG_HOST}:{REDIS_PORT}/0",
        AIRFLOW__OPERATORS__DEFAULT_QUEUE=queue,  # our own queue: other Celery users on this Redis are untouched
        AIRFLOW__API_AUTH__JWT_SECRET=os.urandom(32).hex(),
        AIRFLOW__API__SECRET_KEY=os.urandom(16).hex(),
        AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="30",  # a killed worker's task is noticed quickly
        AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL="5",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        GUARD_OUT=str(out),
        AIRFLOW_CONN_GUARD_PSEUDONYM_KEY=json.dumps({"conn_type": "generic", "password": key_hex}),
    )
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=240)
    services = Services(env, home / "logs")
    worker = ("celery", "worker", "--queues", queue, "--concurrency", "2", "--skip-serve-logs")
    try:
        services.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
        services.start("scheduler", "scheduler")
        services.start("dag-processor", "dag-processor")
        services.start("worker", *worker)
        _wait("the DAG to be parsed", lambda: _sql(database, "SELECT 1 FROM dag WHERE dag_id = 'guard_release'"),
              timeout_s=180, services=services)
        conf = json.dumps({"source": str(source), "policy": str(policy), "shards": SHARDS})
        subprocess.run([AIRFLOW, "dags", "trigger", "guard_release", "-r", "systest", "-c", conf], env=env,
                       check=True, capture_output=True, timeout=120)
        triggered = time.monotonic()

        def deid_running() -> bool:
            return bool(_sql(database, "SELECT 1 FROM task_instance WHERE dag_id = 'guard_release' "
                                       "AND run_id = 'systest' AND task_id = 'deid' AND state = 'running'"))

        _wait("a deid shard to run", deid_running, timeout_s=240, services=services)
        # A shard takes about a second, so a fixed sleep can miss it: watch its output folder closely and kill
        # as soon as a shard has written a file and before every shard has written its manifest.
        written, finished = _kill_point(out / "runs" / "systest" / "deid", shards=SHARDS, timeout_s=60)
        services.stop("worker", sig=signal.SIGKILL)  # the worker and its task processes, no clean-up
        assert written > 0 and finished < SHARDS, (written, finished)
        assert _sql(database, "SELECT state FROM dag_run WHERE run_id = 'systest'") == [("running",)]
        services.start("worker-2", *worker)

        def finished() -> str | None:
            [(state,)] = _sql(database, "SELECT state FROM dag_run WHERE run_id = 'systest'")
            return state if state in ("success", "failed") else None

        remaining = DEADLINE_S - (time.monotonic() - triggered)
        state = _wait("the run to finish", finished, timeout_s=max(remaining, 30), services=services)
        tis = _sql(database, "SELECT task_id, map_index, state, try_number FROM task_instance "
                             "WHERE run_id = 'systest' ORDER BY task_id, map_index")
        assert state == "success", tis
    finally:
        services.stop_all()

    # the kill happened during de-identification: a deid shard needed a second try
    assert max(t[3] for t in tis if t[0] == "deid") >= 2, tis
    _assert_release_complete(out, n_inputs=n_inputs)
    _assert_no_key_in_logs(home / "logs", key_hex)


def _kill_point(deid: Path, *, shards: int, timeout_s: float) -> tuple[int, int]:
    """Wait, polling every 20 ms, until a shard has written a de-identified file into ``deid`` while fewer than
    ``shards`` shard manifests exist; returns (files written, shard manifests) at that moment."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        finished = len(list((deid / ".shards").glob("*.parquet"))) if (deid / ".shards").is_dir() else 0
        if finished >= shards:
            pytest.fail(f"every deid shard finished before the worker could be killed: {finished} manifests")
        written = sum(1 for _ in deid.rglob("*.dcm")) if deid.is_dir() else 0
        if written:
            return written, finished
        time.sleep(0.02)
    pytest.fail(f"no de-identified file appeared under {deid} within {timeout_s:.0f} s")


def _assert_release_complete(out: Path, *, n_inputs: int) -> None:
    import pydicom

    from guards.manifest import read_table

    # the run's own manifest (private side) has one row per input file: seen = published + quarantined + excluded
    run_rows = read_table(out / "runs" / "systest" / "deid" / "manifest.parquet").to_pylist()
    statuses = [r["status"] for r in run_rows]
    assert len(run_rows) == n_inputs
    assert statuses.count("published") + statuses.count("quarantined") + statuses.count("excluded") == n_inputs
    assert statuses.count("quarantined") >= 1  # broken.dcm
    assert len({r["source_path"] for r in run_rows}) == n_inputs  # no input twice
    # the release: exactly the published instances, once each, every file complete
    [release] = list((out / "releases" / "celery-test").iterdir())
    rows = read_table(release / "manifest.parquet").to_pylist()
    published = [r["path"] for r in rows if r["status"] == "published"]
    assert len(published) == len(set(published)) == statuses.count("published") > 0
    files = sorted(p for p in release.rglob("*.dcm"))
    assert len(files) == len(published)  # no stray or duplicate file in the release
    for path in files:
        pydicom.dcmread(path)  # every published file parses (a partial file would not)
    leftovers = [p for p in out.rglob("*") if p.name.endswith((".tmp", ".part")) or ".tmp" in p.suffixes]
    assert not leftovers, leftovers


def _assert_no_key_in_logs(logs: Path, key_hex: str) -> None:
    files = [p for p in logs.rglob("*") if p.is_file()]
    task_logs = [p for p in files if "dag_id=guard_release" in p.as_posix()]
    assert task_logs, f"no task log under {logs}"
    pieces = {key_hex[i:i + 8] for i in range(len(key_hex) - 7)}
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace").lower()
        leaked = sum(1 for p in pieces if p in text)
        if leaked:  # not an assert: its rewriting would print the pieces
            pytest.fail(f"{path.name}: {leaked} piece(s) of the pseudonym key in the log", pytrace=False)
