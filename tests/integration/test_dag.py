"""dags/guard_release.py: imports cleanly, has the designed task graph, and runs end to end under Airflow.

The end-to-end runs use ``airflow dags test`` in a subprocess with its own AIRFLOW_HOME (SQLite), the key from
the ``guard_pseudonym_key`` connection (AIRFLOW_CONN_*), on generated samples with a light policy:
one run passes and publishes a release; one fails its gate, ends failed and publishes nothing. Every line the
runs logged (the task logs of ``dags test`` go to its output, kept under AIRFLOW_HOME/logs) is searched for
the key and for each 8-character piece of it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Airflow reads its configuration when first imported; test_plugin.py computes the same home.
AIRFLOW_HOME = Path(tempfile.gettempdir()) / f"guard-pytest-airflow-{os.getpid()}"
os.environ.update(
    AIRFLOW_HOME=str(AIRFLOW_HOME),
    AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
    AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
    AIRFLOW__CORE__LOAD_EXAMPLES="False",
)
pytest.importorskip("airflow", reason="apache-airflow is not installed (pip install -e '.[airflow]')")

from guards.samples import generate_corpus  # noqa: E402

pytestmark = [pytest.mark.airflow]

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
EXPECTED_TASKS = {
    "ingest", "plan_shards", "deid", "merge_deid", "protect", "cohort", "remediate", "check", "check_gpu", "gate",
    "approve", "publish",
}
EXPECTED_EDGES = {
    ("ingest", "plan_shards"), ("plan_shards", "deid"), ("deid", "merge_deid"), ("merge_deid", "protect"),
    ("protect", "cohort"), ("cohort", "remediate"), ("remediate", "check"), ("check", "gate"),
    ("remediate", "check_gpu"), ("check_gpu", "gate"), ("gate", "approve"),
    ("gate", "publish"), ("approve", "publish"),
}
# Light but complete: real de-identification (no OCR of every image), a short SALM noise run, phi + reid
# blocking; no sign-off asked (tests/browser/test_approval_ui.py answers the approve task). FAILING asks for k
# far above the corpus size without remediation, so reid measures a failure.
PASSING = """
[release]
name = "dag-test"
[pixels]
ocr_all = false
[protect]
max_rounds = 1
steps = 2
train_steps = 2
warmup_epochs = 1
warmup_min_steps = 0
[gate]
blocking = ["phi", "reid"]
advisory = []
off = ["representation", "membership", "unlearnability", "attribute", "inversion"]
[reid]
k = 1
max_risk = 1.0
[approval]
required = false
"""
FAILING = """
[release]
name = "dag-test"
[deid]
clean_pixel_data = false
[protect]
enabled = false
[gate]
blocking = ["reid"]
advisory = []
off = ["representation", "phi", "membership", "unlearnability", "attribute", "inversion"]
[reid]
k = 1000
remediate = false
[approval]
required = false
"""


def _load_dag(monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags["guard_release"]


def test_dagbag_imports_without_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    dag = _load_dag(monkeypatch, GUARD_SOURCE="/data/incoming")
    assert dag.max_active_runs == 1 and dag.catchup is False


def test_task_graph_is_the_design(monkeypatch: pytest.MonkeyPatch) -> None:
    dag = _load_dag(monkeypatch, GUARD_SOURCE="/data/incoming", GUARD_SCHEDULE="30 1 * * *", GUARD_GPU_QUEUE="gpu",
                    GUARD_OUT="/data/guard-out")
    assert set(dag.task_dict) == EXPECTED_TASKS
    edges = {(u, d) for u in dag.task_dict for d in dag.task_dict[u].downstream_task_ids}
    assert edges == EXPECTED_EDGES
    assert dag.timetable.expression == "30 1 * * *"  # the nightly cron comes from GUARD_SCHEDULE
    assert dag.task_dict["protect"].queue == "gpu"  # protect routed to the GPU workers
    assert dag.task_dict["gate"].trigger_rule == "all_done"  # the report is written even if a check crashed
    assert dag.task_dict["deid"].retries == 2 and dag.task_dict["publish"].retries == 0
    assert {"source", "policy", "epsilon", "reid_max_risk", "reid_k", "dry_run", "shards", "waivers"} <= set(
        dag.params.keys())
    assert [o.name for o in dag.task_dict["publish"].outlets] == ["file:///data/guard-out/releases"]
    assert type(dag.task_dict["approve"]).__name__ == "StewardApproval"
    links = {t: [x.name for x in dag.task_dict[t].operator_extra_links] for t in dag.task_dict}
    assert links.pop("gate") == ["Gate report"] and not any(links.values())  # only the gate task links the report
    assert dag.task_dict["approve"].defaults == ["Reject"]  # what the timeout answers


@pytest.mark.parametrize("now", ["", "2026-12-04T02:20:00Z", "2026-12-04T04:00:00Z", "2026-12-04T14:00:00Z"])
def test_unpausing_waits_for_the_next_nightly_time(now: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The form unpauses the DAG: the scheduler must not start the nightly run it missed beside the steward's,
    whatever the time of day (the clock as it is, and fixed just after the 02:00 run, when Airflow's default
    buffer of 10 % of the period would start the missed run, and later)."""
    import airflow.timetables.trigger as trigger
    import pendulum
    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable
    from airflow.timetables.base import TimeRestriction

    if now:
        monkeypatch.setattr(trigger, "utcnow", lambda: pendulum.parse(now))
    dag = _load_dag(monkeypatch, GUARD_SOURCE="/data/incoming", GUARD_SCHEDULE="0 2 * * *")
    assert dag.start_date is None
    timetable = decode_timetable(encode_timetable(dag.timetable))  # as the scheduler reads it
    before = pendulum.parse(now) if now else pendulum.now("UTC")
    info = timetable.next_dagrun_info(last_automated_data_interval=None,
                                      restriction=TimeRestriction(earliest=None, latest=None, catchup=False))
    assert info is not None and info.run_after > before and info.run_after.hour == 2


def test_manual_only_without_a_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """A nightly schedule needs a source; without GUARD_SOURCE the DAG is triggered by hand with the form."""
    monkeypatch.delenv("GUARD_SOURCE", raising=False)
    dag = _load_dag(monkeypatch)
    assert type(dag.timetable).__name__ == "NullTimetable"


def test_form_refuses_bad_params(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    params = _load_dag(monkeypatch, GUARD_SOURCE="/data/incoming").params
    params["waivers"] = [{"check": "phi", "reason": "reviewed by the steward"}]  # accepted
    params["epsilon"] = 0.05
    with pytest.raises(ParamValidationError, match="waivers"):
        params["waivers"] = [{"check": "phi", "reason": "short"}]
    with pytest.raises(ParamValidationError, match="epsilon"):
        params["epsilon"] = 0.9
    with pytest.raises(ParamValidationError, match="epsilon"):
        params["epsilon"] = 0  # no noise: refused by the form as by the policy
    params["policy"] = None  # optional: empty means the defaults
    with pytest.raises(ParamValidationError, match="shards"):
        params["shards"] = 0


@dataclass(frozen=True)
class DagRun:
    state: str
    out: Path
    log: str


EXTRA_CHECK = """
from guards.checks.base import CheckResult, Finding
from guards.checks.registry import Check


def _run(current):
    n = current.cohort().num_rows
    return CheckResult(id="study_count", findings=(Finding("studies", n, 1, "pass" if n else "fail"),),
                       examined={"studies": n})


CHECK = Check("study_count", _run)
"""


def _extra_check(folder: Path) -> Path:
    """A check from another package: one module and one registry line (an entry point), nothing else."""
    (folder / "guard_extra_check.py").write_text(EXTRA_CHECK, encoding="utf-8")
    info = folder / "guard_extra_check-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: guard-extra-check\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[release_guard.checks]\nstudy_count = guard_extra_check:CHECK\n")
    return folder


@pytest.fixture(scope="module")
def airflow_run(tmp_path_factory: pytest.TempPathFactory, key_hex: str):  # type: ignore[no-untyped-def]
    """A function running the DAG once with ``airflow dags test`` on a fresh corpus; the home is shared."""
    home = tmp_path_factory.mktemp("airflow-home")
    source = tmp_path_factory.mktemp("samples")
    generate_corpus(source, studies=24, seed=11, image_size=64)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GUARD_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__PARALLELISM="4",
        AIRFLOW_CONN_GUARD_PSEUDONYM_KEY=json.dumps({"conn_type": "generic", "password": key_hex}),
    )
    env["PYTHONPATH"] = str(_extra_check(tmp_path_factory.mktemp("extra-check")))
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)

    done: dict[str, DagRun] = {}

    def run(name: str, policy_text: str, *, out_name: str = "", extra_env: dict[str, str] | None = None,
            **form: Any) -> DagRun:
        """``airflow dags test`` once per ``name`` (memoised); ``form`` adds (or replaces) the parameter form's
        fields, ``extra_env`` the environment's variables (e.g. a connection)."""
        if name in done:
            return done[name]
        policy = home / f"{name}.toml"
        policy.write_text(policy_text, encoding="utf-8")
        out = home / f"out-{out_name or name}"
        run_env = {**env, "GUARD_OUT": str(out), **(extra_env or {})}
        conf = json.dumps({"source": str(source), "policy": str(policy), **form})
        log_file = home / "logs" / f"dags-test-{name}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("w", encoding="utf-8") as f:
            subprocess.run([AIRFLOW, "dags", "test", "guard_release", "-c", conf], env=run_env, stdout=f,
                           stderr=subprocess.STDOUT, timeout=900)
        with sqlite3.connect(home / "airflow.db") as db:  # the run's state, as the scheduler recorded it
            [(state,)] = db.execute("SELECT state FROM dag_run WHERE dag_id = 'guard_release' "
                                    "ORDER BY id DESC LIMIT 1").fetchall()
        done[name] = DagRun(state=state, out=out, log=log_file.read_text(encoding="utf-8"))
        return done[name]

    run.home = home  # type: ignore[attr-defined]
    return run


@pytest.mark.slow(reason="`airflow dags test` of the whole DAG: protect and every check as mapped tasks")
def test_dag_run_publishes_a_release_and_logs_no_key(airflow_run: Any, key_hex: str) -> None:
    result = airflow_run("passing", PASSING)
    assert result.state == "success", result.log[-3000:]
    [release] = (result.out / "releases" / "dag-test").iterdir()
    assert (release / "manifest.parquet").is_file() and (release / "datasheet.md").is_file()
    gate = json.loads((release / "gate.json").read_text(encoding="utf-8"))
    assert gate["passed"] is True
    # the check registered by an entry point ran as a mapped task and was judged (unclassified: blocking)
    [extra] = [o for o in gate["outcomes"] if o["id"] == "study_count"]
    assert extra["role"] == "blocking" and extra["outcome"] == "pass" and extra["examined"]["studies"] > 0
    from guards.manifest import read_table, status_counts

    counts = status_counts(read_table(release / "manifest.parquet"))
    assert counts["published"] > 0
    # the logs searched are the task logs: every step left its lines there
    for task_id in ("ingest", "deid", "protect", "cohort", "gate", "publish"):
        assert f"task_id='{task_id}'" in result.log
    with sqlite3.connect(airflow_run.home / "airflow.db") as db:  # mapped checks are named by their check id
        named = {row[0] for row in db.execute("SELECT rendered_map_index FROM task_instance WHERE task_id IN "
                                              "('check', 'check_gpu') AND dag_id = 'guard_release'")}
    assert {"phi", "study_count", "membership"} <= named, named
    _assert_no_key_in_logs(airflow_run.home / "logs", key_hex)


@pytest.mark.slow(reason="`airflow dags test` of the whole DAG up to a failing gate")
def test_failing_gate_fails_the_run_and_publishes_nothing(airflow_run: Any, key_hex: str) -> None:
    result = airflow_run("failing", FAILING)
    assert result.state == "failed"
    assert "release gate FAILED" in result.log
    assert "reason 1/" in result.log and "Report: /release-gates/runs/" in result.log  # a line per reason, a link
    assert not (result.out / "releases").exists() or not any((result.out / "releases").rglob("*"))
    [report] = list((result.out / "runs").glob("*/report/gate.json"))
    assert json.loads(report.read_text(encoding="utf-8"))["passed"] is False
    _assert_no_key_in_logs(airflow_run.home / "logs", key_hex)


@pytest.mark.slow(reason="two `airflow dags test` runs: the failing one and its resumed attempt")
def test_steward_resumes_the_failed_run_with_a_waiver_and_it_publishes(airflow_run: Any) -> None:
    """The form's ``resume`` continues the failed run as its next attempt: measured steps are carried (the
    waiver is not an input of a check), the gate records the waiver, and the release is published once."""
    failed = airflow_run("failing", FAILING)
    [run_dir] = list((failed.out / "runs").iterdir())
    waiver = {"check": "reid", "reason": "test steward: k = 1000 is far above this 24-study corpus"}
    result = airflow_run("resumed", FAILING, out_name="failing", resume=run_dir.name, waivers=[waiver])
    assert result.state == "success", result.log[-3000:]
    gate = json.loads((run_dir / "report" / "gate.json").read_text(encoding="utf-8"))
    assert gate["passed"] is True and gate["run_id"] == run_dir.name and gate["attempt"] == 2
    [reid] = [o for o in gate["outcomes"] if o["id"] == "reid"]
    assert reid["outcome"] == "waived" and reid["was"] == "fail"
    stamp = json.loads((run_dir / "checks" / "reid.json").read_text(encoding="utf-8"))["stamp"]
    assert stamp["attempt"] == 2 and stamp["carried_from"] == 1
    [release] = (failed.out / "releases" / "dag-test").iterdir()
    assert "`reid` (was fail)" in (release / "datasheet.md").read_text(encoding="utf-8")


@pytest.mark.slow(reason="`airflow dags test` of the whole DAG on a PACS source: a real Orthanc (DICOMweb, DIMSE)")
@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_dag_run_on_a_pacs_source_publishes_its_release(protocol: str, airflow_run: Any, tmp_path: Path,
                                                        key_hex: str) -> None:
    """Issue 17: the source is a form Param (``dicomweb+http://...`` or ``dimse://AET@HOST:PORT``), the labels
    table another; DICOMweb credentials come from the ``guard_pacs`` connection, and the password is in no log and
    nowhere under OUT."""
    import orthanc  # tests/integration/orthanc.py

    corpus = generate_corpus(tmp_path / "pacs-src", studies=6, seed=5, image_size=64)
    password = "pw-" + os.urandom(12).hex()
    with orthanc.start(tmp_path / "orthanc", password=password) as pacs:
        for f in corpus.files:
            pacs.upload(f.read_bytes())
        source = pacs.source() if protocol == "dicomweb" else pacs.dimse_source()
        connection = json.dumps({"conn_type": "generic", "login": pacs.user, "password": password})
        result = airflow_run(f"pacs-{protocol}", PASSING, extra_env={"AIRFLOW_CONN_GUARD_PACS": connection},
                             source=source, labels=str(corpus.labels_csv))
    assert result.state == "success", result.log[-3000:]
    [release] = (result.out / "releases" / "dag-test").iterdir()
    assert len(list((release / "data").rglob("*.dcm"))) == len(corpus.files)
    [run_json] = list((result.out / "runs").glob("*/run.json"))
    run = json.loads(run_json.read_text(encoding="utf-8"))
    assert run["source"] == source and run["snapshot"]["kind"] == protocol
    assert run["snapshot"]["counts"]["indexed"] == len(corpus.files)
    examined = [p for p in [*result.out.rglob("*"), *(airflow_run.home / "logs").rglob("*")] if p.is_file()]
    assert len(examined) > len(corpus.files)
    assert [p.name for p in examined if password.encode() in p.read_bytes()] == []


def _assert_no_key_in_logs(logs: Path, key_hex: str) -> None:
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert files, f"no log file under {logs}"
    pieces = {key_hex[i:i + 8] for i in range(len(key_hex) - 7)}
    examined = 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace").lower()
        examined += len(text)
        leaked = sum(1 for p in pieces if p in text)
        if leaked:  # not an assert: its rewriting would print the pieces
            pytest.fail(f"{path.name}: {leaked} piece(s) of the pseudonym key in the log", pytrace=False)
    assert examined > 10_000  # the logs are the task logs of a full run, not an empty file


def test_a_failed_gate_and_a_pending_approval_send_email(monkeypatch: pytest.MonkeyPatch) -> None:
    """GUARD_NOTIFY_EMAIL: the gate's failure callback and the approve task's notifier are Airflow SmtpNotifiers;
    both reach a real SMTP server (aiosmtpd) through the smtp_default connection."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    received: list[Any] = []

    class Keep(Message):  # type: ignore[misc]
        def handle_message(self, message: Any) -> None:
            received.append(message)

    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Keep(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": port,
            "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "guard@example.org"}}))
        dag = _load_dag(monkeypatch, GUARD_SOURCE="/data/incoming", GUARD_NOTIFY_EMAIL="steward@example.org")
        [on_failure] = dag.task_dict["gate"].on_failure_callback
        [pending] = dag.task_dict["approve"].notifiers
        for notifier in (on_failure, pending):
            notifier({"run_id": "manual__notify", "dag": dag})  # renders the templates, then notify()
    finally:
        controller.stop()
    subjects = sorted(m["Subject"] for m in received)
    assert subjects == ["Release Guard: approval pending for manual__notify",
                        "Release Guard: gate FAILED for manual__notify"], subjects
    assert all(m["To"] == "steward@example.org" for m in received)
