"""guards.cli: exit codes and refusals that do not need the heavy steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from guards.cli import main


def test_run_without_a_key_refuses_with_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("GUARD_KEY", raising=False)
    (tmp_path / "src").mkdir()
    assert main(["run", str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    assert "no pseudonym key" in caplog.text
    assert not (tmp_path / "out" / "releases").exists()


def test_bad_policy_is_a_usage_error_naming_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture, key_hex: str) -> None:
    monkeypatch.setenv("GUARD_KEY", key_hex)
    policy = tmp_path / "bad.toml"
    policy.write_text("[protect]\nepsilon = 3.0\n")
    assert main(["deid", str(tmp_path), str(tmp_path / "out"), "--policy", str(policy)]) == 2
    assert "protect.epsilon" in caplog.text
    assert key_hex not in caplog.text


def test_unknown_command_is_exit_2() -> None:
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
