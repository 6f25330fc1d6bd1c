"""`make demo`: generate sample studies, run the guard_release DAG once with the embedded default
(SQLite, no services), and print where the release and its gate report are. `make ui` then serves the
Airflow UI (airflow standalone on 127.0.0.1:8080) to review the run and its "Release gates" page.

The demo key is random, written to demo/key.txt (mode 0600) and handed to Airflow as the connection
guard_pseudonym_key through an AIRFLOW_CONN_* variable; it is never printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo"
logger = logging.getLogger("demo")


def demo_key() -> str:
    path = DEMO / "key.txt"
    if not path.exists():
        DEMO.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32) + "\n", encoding="utf-8")
        path.chmod(0o600)
    return path.read_text(encoding="utf-8").strip()


def airflow_env() -> dict[str, str]:
    env = dict(os.environ)
    # airflow standalone starts its components as `airflow ...` subprocesses: the venv's bin must be on PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("AIRFLOW_HOME", str(ROOT / ".airflow"))
    env.update(
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__PARALLELISM=env.get("AIRFLOW__CORE__PARALLELISM", "4"),
        GUARD_OUT=str(DEMO / "out"),
        GUARD_SOURCE=str(DEMO / "samples"),
        GUARD_POLICY=str(ROOT / "guard.toml"),
        AIRFLOW_CONN_GUARD_PSEUDONYM_KEY=json.dumps({"conn_type": "generic", "password": demo_key()}),
    )
    return env


def airflow(*args: str, env: dict[str, str]) -> None:
    exe = Path(sys.executable).with_name("airflow")
    subprocess.run([str(exe), *args], env=env, check=True)


def dags_test(conf: dict[str, object], env: dict[str, str]) -> int:
    exe = Path(sys.executable).with_name("airflow")
    return subprocess.run([str(exe), "dags", "test", "guard_release", "-c", json.dumps(conf)], env=env).returncode


def latest_gate(out: Path) -> tuple[Path, dict[str, object]] | None:
    reports = sorted((out / "runs").glob("*/report/gate.json"), key=lambda p: p.stat().st_mtime)
    return (reports[-1], json.loads(reports[-1].read_text(encoding="utf-8"))) if reports else None


def demo_waivers(gate: dict[str, object]) -> list[dict[str, str]]:
    """The demo steward's waivers: one per blocking check that failed or was inconclusive on the generated
    samples, each with what the check found or needed. None when a check did not run or examined nothing (no
    waiver covers those; the gate would refuse it). The samples hold no real patient; a real steward would make
    the check pass or conclusive instead (the report says how)."""
    outcomes = gate["outcomes"]  # type: ignore[index]
    blocking = [o for o in outcomes if o["role"] == "blocking" and o["outcome"] != "pass"]  # type: ignore[union-attr]
    if not blocking or any(o["outcome"] not in ("fail", "inconclusive") or not any(o["examined"].values())
                           for o in blocking):
        return []
    waivers = []
    for o in blocking:
        findings = [f for f in gate["checks"] if f["id"] == o["id"] and f["status"] == o["outcome"]]  # type: ignore[union-attr]
        first = findings[0] if findings else {}
        where = f" ({first.get('subgroup')})" if first.get("subgroup") not in (None, "", "all") else ""
        found = (f"needs {first['needs']}" if first.get("needs") else
                 f"{first.get('metric')}{where} {first.get('value')} against {first.get('threshold')}")
        waivers.append({"check": o["id"], "reason": f"demo steward, generated samples with no real patient:"
                        f" {o['id']} was {o['outcome']} ({found}); waived to show the waiver path"})
    return waivers


APPROVAL_REQUIRED = "# required: a DAG run waits for a steward's approval before it publishes\nrequired = true\n"


def demo_policy() -> Path:
    """guard.toml with one change: nobody is asked to sign off (the demo has no steward at a browser); the datasheet
    records "not required: policy approval.required = false". A real run waits in Airflow's Required actions."""
    text = (ROOT / "guard.toml").read_text(encoding="utf-8")
    if APPROVAL_REQUIRED not in text:
        raise SystemExit("guard.toml has no '[approval] required = true' line to turn off for the demo")
    DEMO.mkdir(parents=True, exist_ok=True)
    path = DEMO / "guard.toml"
    path.write_text(text.replace(APPROVAL_REQUIRED, APPROVAL_REQUIRED.replace("= true", "= false")), encoding="utf-8")
    return path


def run_demo(studies: int) -> int:
    samples = DEMO / "samples"
    if not (samples / "labels.csv").exists():
        from guards.samples import generate_corpus

        if samples.exists():
            shutil.rmtree(samples)
        logger.info("generating %d sample studies into %s", studies, samples)
        generate_corpus(samples, studies=studies, seed=7)
    env = airflow_env()
    logger.info("airflow db migrate (SQLite under %s)", env["AIRFLOW_HOME"])
    airflow("db", "migrate", env=env)
    conf: dict[str, object] = {"source": str(samples), "policy": str(demo_policy())}
    logger.info("running the guard_release DAG once (airflow dags test)")
    returncode = dags_test(conf, env)
    out = DEMO / "out"
    first = latest_gate(out)
    lines = []
    if first is not None:
        path, gate = first
        verdict = "PASSED" if gate["passed"] else "FAILED"
        lines.append(f"  gate    : {verdict} (attempt {gate.get('attempt', 1)})")
        waivers = [] if gate["passed"] else demo_waivers(gate)
        if waivers:
            # The fail-closed gate blocked on checks that failed or could not measure on the generated samples.
            # The demo plays the steward: it records a waiver for each (demo/waivers.json) and resumes the same
            # run, which carries every measured step and only judges again.
            (DEMO / "waivers.json").write_text(json.dumps(waivers, indent=2) + "\n", encoding="utf-8")
            blocked = ", ".join(f"{o['id']} ({o['outcome']})" for o in gate["outcomes"]  # type: ignore[attr-defined]
                                if o["role"] == "blocking" and o["outcome"] != "pass")
            lines.append(f"            blocked by {blocked}; the demo steward waived them: demo/waivers.json")
            logger.info("resuming run %s with the demo steward's waivers for: %s", path.parents[1].name, blocked)
            returncode = dags_test({**conf, "resume": path.parents[1].name, "waivers": waivers}, env)
            second = latest_gate(out)
            if second is not None:
                path, gate = second
                verdict = "PASSED" if gate["passed"] else "FAILED"
                lines.append(f"  gate    : {verdict} (attempt {gate.get('attempt', 2)}, with the waivers)")
        lines.append(f"  report  : {path.parent / 'index.html'}")
    else:
        lines.append("  gate    : no report")
        lines.append("  report  : none (see the task logs above)")
    releases = sorted((out / "releases").glob("*/v[0-9]*"), key=lambda p: p.stat().st_mtime)
    print()
    print("Release Guard demo")
    print(f"  samples : {samples}")
    print("\n".join(lines))
    print(f"  release : {releases[-1] if releases else 'none published (the gate failed: the report says why)'}")
    print("  review  : make ui, then http://127.0.0.1:8080 -> Release gates")
    # A failed gate is a legitimate outcome of the demo (the report explains it); a run with no report is not.
    return 0 if first is not None else (returncode or 1)


def run_group(cmd: list[str], env: dict[str, str], *, grace_seconds: float = 30.0) -> int:
    """Run ``cmd`` in its own session and wait; on Ctrl-C, SIGTERM or SIGHUP stop its whole process group.

    ``airflow standalone`` starts the scheduler, the API server, the DAG processor and the triggerer as children
    that outlive it when it alone is killed (13 processes were left after a SIGTERM to ``make ui``). The group is
    sent SIGTERM, given ``grace_seconds`` to exit, then SIGKILL; this returns only when no process of it is left.
    """
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    print(f"started {cmd[0]} as process group {proc.pid}", flush=True)

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        _stop_group(proc, grace_seconds)
        return 0


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of the group exists under another user
        return True
    return True


def _stop_group(proc: subprocess.Popen[bytes], grace_seconds: float) -> None:
    """SIGTERM to the group, SIGKILL after ``grace_seconds``; returns when the group is gone (the leader reaped,
    since a zombie still counts as a member)."""
    pgid = proc.pid
    print(f"stopping process group {pgid}", flush=True)
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        proc.wait()
        return
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        proc.poll()
        if not _alive(pgid):
            return
        time.sleep(0.2)
    os.killpg(pgid, signal.SIGKILL)
    while True:
        proc.poll()
        if not _alive(pgid):
            return
        time.sleep(0.1)


def run_ui() -> int:
    env = airflow_env()
    env["AIRFLOW__API__HOST"] = "127.0.0.1"
    env["AIRFLOW__API__PORT"] = "8080"
    exe = Path(sys.executable).with_name("airflow")
    return run_group([str(exe), "standalone"], env)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ui", action="store_true")
    parser.add_argument("--studies", type=int, default=int(os.environ.get("DEMO_STUDIES", "150")))
    args = parser.parse_args()
    return run_ui() if args.ui else run_demo(args.studies)


if __name__ == "__main__":
    sys.exit(main())
