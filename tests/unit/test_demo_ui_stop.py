"""scripts/demo.py run_group (what `make ui` runs airflow standalone with): a SIGTERM leaves no process behind.

``airflow standalone`` leaves its children running when only it is killed; the stand-in here is a shell whose
children ignore SIGHUP, started exactly as `make ui` starts Airflow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"
STARTER = f"""
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("demo", {str(SCRIPT)!r})
demo = importlib.util.module_from_spec(spec); spec.loader.exec_module(demo)
sys.exit(demo.run_group(["bash", "-c", "trap '' HUP; sleep 300 & sleep 300 & (trap '' TERM; sleep 300) & wait"],
                        dict(os.environ), grace_seconds=3))
"""


def _group_members(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,pgid=,stat="], capture_output=True, text=True, check=True).stdout
    return [int(pid) for pid, group, stat in (line.split() for line in out.splitlines())
            if int(group) == pgid and not stat.startswith("Z")]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_ui_stops_every_process_of_its_group(sig: signal.Signals) -> None:
    parent = subprocess.Popen([sys.executable, "-c", STARTER], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    line = parent.stdout.readline()
    assert line.startswith("started bash as process group "), line
    pgid = int(line.rsplit(" ", 1)[1])
    deadline = time.monotonic() + 30
    while len(_group_members(pgid)) < 4 and time.monotonic() < deadline:  # bash and its three sleeps
        time.sleep(0.1)
    assert len(_group_members(pgid)) >= 4
    os.kill(parent.pid, sig)
    assert parent.wait(timeout=60) == 0
    assert _group_members(pgid) == []  # the one that ignores SIGTERM was killed after the grace period
