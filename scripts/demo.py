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
    conf = json.dumps({"source": str(samples), "policy": str(ROOT / "guard.toml")})
    logger.info("running the guard_release DAG once (airflow dags test)")
    result = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "dags", "test", "guard_release", "-c", conf], env=env
    )
    out = DEMO / "out"
    reports = sorted((out / "runs").glob("*/report/index.html"), key=lambda p: p.stat().st_mtime)
    releases = sorted((out / "releases").glob("*/v*"), key=lambda p: p.stat().st_mtime)
    verdict = "no report"
    if reports:
        verdict = "PASSED" if json.loads((reports[-1].parent / "gate.json").read_text())["passed"] else "FAILED"
    print()
    print("Release Guard demo")
    print(f"  samples : {samples}")
    print(f"  gate    : {verdict}")
    print(f"  report  : {reports[-1] if reports else 'none (see the task logs above)'}")
    print(f"  release : {releases[-1] if releases else 'none published (the gate failed: the report says why)'}")
    print("  review  : make ui, then http://127.0.0.1:8080 -> Release gates")
    # A failed gate is a legitimate outcome of the demo (the report explains it); a run with no report is not.
    return 0 if reports else (result.returncode or 1)


def run_ui() -> int:
    env = airflow_env()
    env["AIRFLOW__API__HOST"] = "127.0.0.1"
    env["AIRFLOW__API__PORT"] = "8080"
    exe = Path(sys.executable).with_name("airflow")
    # airflow standalone leaves children running when killed: start it in its own session, stop the group.
    proc = subprocess.Popen([str(exe), "standalone"], env=env, start_new_session=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)
        return 0


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ui", action="store_true")
    parser.add_argument("--studies", type=int, default=int(os.environ.get("DEMO_STUDIES", "150")))
    args = parser.parse_args()
    return run_ui() if args.ui else run_demo(args.studies)


if __name__ == "__main__":
    sys.exit(main())
