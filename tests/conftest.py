"""Shared fixtures. Keys here are test keys made up for the tests, never a real deployment's key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from guards.keys import PseudonymKey

# A made-up key for tests; tests that check the key never leaks search outputs for this value.
TEST_KEY_HEX = "5f1d3c9a7e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f1a3c5e7b9d2f4a6c8e0b1d3f"


@pytest.fixture(scope="session")
def key_hex() -> str:
    return TEST_KEY_HEX


@pytest.fixture(scope="session")
def key() -> PseudonymKey:
    return PseudonymKey(bytes.fromhex(TEST_KEY_HEX))


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A small generated corpus shared by the tests of one session (24 studies, seed 11)."""
    from guards.samples import generate_corpus

    out = tmp_path_factory.mktemp("samples")
    return generate_corpus(out, studies=24, seed=11)


@pytest.fixture(autouse=True)
def _no_network_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom's get_testdata_file would try to download; tests read bundled files from disk instead."""
    monkeypatch.setenv("PYDICOM_NO_DOWNLOAD", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under system/ are system tests; every slow test says why it is slow (``slow(reason=...)``)."""
    here = Path(__file__).parent
    unjustified = [item.nodeid for item in items
                   if any(not m.kwargs.get("reason") for m in item.iter_markers("slow"))]
    if unjustified:
        raise pytest.UsageError("slow tests must say why they are slow, pytest.mark.slow(reason=...): "
                                + ", ".join(unjustified[:5]))
    for item in items:
        rel = Path(str(item.fspath)).relative_to(here)
        if rel.parts and rel.parts[0] == "system":
            item.add_marker(pytest.mark.system)
