"""Airflow's overhead: the guard_release DAG (``airflow dags test``, SQLite, in one process) against
``guard run`` (the same steps in-process) on the same generated studies, policy and key.

    .venv/bin/python benchmarks/airflow_overhead/run.py --studies 500 [--image-size 128] [--shards 2]

Both sides use the same light policy (written next to the results): real PS3.15 de-identification with OCR of
the risky modalities only, one short SALM round, phi + reid blocking. The figures are wall-clock seconds of each
command; the Airflow side also reports the sum of its task durations from its metadata DB, so the overhead
splits into start-up/parse/scheduling (wall - tasks) and per-task cost (tasks - guard run). The key is random
per run and never printed. Results go to benchmarks/airflow_overhead/results-<studies>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
logger = logging.getLogger("airflow_overhead")
POLICY = """
[release]
name = "overhead"
[pixels]
ocr_all = false
[protect]
max_rounds = 1
steps = 2
train_steps = 2
warmup_epochs = 1
[gate]
blocking = ["phi", "reid"]
advisory = []
off = ["representation", "membership", "unlearnability", "attribute", "inversion"]
[reid]
k = 1
max_risk = 1.0
[approval]
required = false  # no steward answers in a benchmark: the DAG's approve task records "not required"
"""


def timed(cmd: list[str], *, env: dict[str, str], log: Path) -> tuple[float, int]:
    """Wall seconds and exit code of one command; its output goes to ``log``."""
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    return time.perf_counter() - start, rc


def task_seconds(db: Path) -> dict[str, float]:
    """Per task id, the summed duration of its task instances (mapped ones added up), from Airflow's DB."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT task_id, SUM(duration) FROM task_instance GROUP BY task_id").fetchall()
    return {task: float(total or 0.0) for task, total in rows}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed)")
    args = parser.parse_args()

    from guards.samples import generate_corpus

    work = args.work or Path(tempfile.mkdtemp(prefix="airflow-overhead-"))
    source, policy = work / "source", work / "policy.toml"
    policy.write_text(POLICY, encoding="utf-8")
    if not (source / "labels.csv").exists():
        logger.info("generating %d studies (%d px) into %s", args.studies, args.image_size, source)
        generate_corpus(source, studies=args.studies, seed=args.seed, image_size=args.image_size)
    n_files = sum(1 for p in source.rglob("*") if p.is_file())
    key = secrets.token_hex(32)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GUARD_"))}

    logger.info("guard run")
    cli_env = {**base, "GUARD_KEY": key}
    cli_s, cli_rc = timed([str(BIN / "guard"), "run", str(source), str(work / "cli-out"), "--policy", str(policy)],
                          env=cli_env, log=work / "guard-run.log")

    home = work / "airflow"
    af_env = {
        **base,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "GUARD_OUT": str(work / "dag-out"),
        "AIRFLOW_CONN_GUARD_PSEUDONYM_KEY": json.dumps({"conn_type": "generic", "password": key}),
    }
    if home.exists():
        shutil.rmtree(home)
    logger.info("airflow db migrate (one-off, not counted as overhead)")
    migrate_s, _ = timed([str(BIN / "airflow"), "db", "migrate"], env=af_env, log=work / "migrate.log")
    logger.info("airflow dags test guard_release")
    conf = json.dumps({"source": str(source), "policy": str(policy), "shards": args.shards})
    dag_s, dag_rc = timed([str(BIN / "airflow"), "dags", "test", "guard_release", "-c", conf], env=af_env,
                          log=work / "dags-test.log")
    tasks = task_seconds(home / "airflow.db")
    with sqlite3.connect(home / "airflow.db") as conn:
        [(state,)] = conn.execute("SELECT state FROM dag_run ORDER BY id DESC LIMIT 1").fetchall()

    result: dict[str, Any] = {
        "studies": args.studies, "files": n_files, "image_size": args.image_size, "shards": args.shards,
        "guard_run_s": round(cli_s, 1), "guard_run_rc": cli_rc,
        "dags_test_s": round(dag_s, 1), "dag_run_state": state, "db_migrate_s": round(migrate_s, 1),
        "task_seconds": {k: round(v, 1) for k, v in sorted(tasks.items())},
        "tasks_total_s": round(sum(tasks.values()), 1),
        "overhead_s": round(dag_s - cli_s, 1),
        "overhead_pct": round(100 * (dag_s - cli_s) / cli_s, 1) if cli_s else None,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpus": os.cpu_count(),
    }
    out = Path(__file__).with_name(f"results-{args.studies}.json")
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    logger.info("results: %s", json.dumps(result))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if cli_rc == 0 and state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
