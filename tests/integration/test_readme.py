"""The README's CLI quick start, run verbatim (relative paths) in a fresh folder, gets the exit codes it states.

The block is read from README.md: each line runs as written in one bash session, and a line whose comment says
``# exit N`` must exit with N. The folder has only a ``.venv`` link to this interpreter's venv, as a clone
after ``make test`` has.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow(reason="the README's quick start end to end: 20 studies de-identified, protected, "
                                     "checked (6 checks, model training) and resumed with waivers")

README = Path(__file__).resolve().parents[2] / "README.md"
RC = "__readme_rc__"


def quick_start() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Without Airflow: the `guard` CLI"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the CLI section of README.md has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_quick_start_block_states_an_exit_code_for_each_guard_command() -> None:
    lines = quick_start()
    guard_lines = [line for line in lines if line.startswith("guard ")]
    assert len(guard_lines) >= 3 and all(re.search(r"# exit \d", line) for line in guard_lines)


def test_readme_quick_start_runs_verbatim(tmp_path: Path) -> None:
    lines = quick_start()
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))  # the venv make created, as in a clone
    script = "".join(f"{line}\necho \"{RC} {i} $?\"\n" for i, line in enumerate(lines))
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=1500,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    codes = {int(i): int(rc) for i, rc in re.findall(rf"^{RC} (\d+) (\d+)$", done.stdout, re.M)}
    assert len(codes) == len(lines), done.stderr[-3000:]
    for i, line in enumerate(lines):
        stated = re.search(r"# exit (\d)", line)
        expected = int(stated.group(1)) if stated else 0
        assert codes[i] == expected, (line, codes[i], done.stderr[-3000:])
    assert (tmp_path / "out" / "runs" / "first" / "report" / "index.html").is_file()
    assert not list((tmp_path / "out" / "releases").glob("*/v[0-9]*"))
