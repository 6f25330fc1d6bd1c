"""The CUDA path of the noise generator (guards.protect.salm, guards.protect.tree with ``device="cuda"``).

These tests run only where ``torch.cuda.is_available()``; elsewhere they are skipped with that reason, so a CPU
machine's run shows them as skipped, never as passed. They check what the CPU tests check (the budget, the mask,
the result on the CPU, one seed one noise) on the GPU, and that the GPU noise protects as well as the CPU noise
on the same data (the surrogate fits the noised images).
"""

from __future__ import annotations

import pytest
import torch
from noise_fixtures import CFG, EPS, two_class_images  # tests/noise_fixtures.py

from guards.protect.mask import foreground, mask_size
from guards.protect.salm import NoiseConfig, error_minimizing_noise

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device on this machine (torch.cuda.is_available() is False): the GPU path is tested on GPU"
    " machines only",
)



@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return two_class_images()


def test_cuda_noise_is_within_budget_sparse_and_returned_on_the_cpu(data) -> None:  # type: ignore[no-untyped-def]
    x, y = data
    r = error_minimizing_noise(x, y, config=CFG, seed=9, device=torch.device("cuda"))
    assert r.delta.device.type == "cpu" and r.mask.device.type == "cpu"
    assert float(r.delta.abs().max()) <= EPS + 1e-6
    assert not bool((r.delta[~r.mask] != 0).any())
    for i in range(len(x)):
        assert int(r.mask[i].sum()) == mask_size(0.1, int(foreground(x[i, 0]).sum()))
    assert ((x + r.delta) >= 0).all() and ((x + r.delta) <= 1).all()


def test_cuda_noise_depends_on_the_seed(data) -> None:  # type: ignore[no-untyped-def]
    x, y = data
    a = error_minimizing_noise(x, y, config=CFG, seed=9, device=torch.device("cuda"))
    b = error_minimizing_noise(x, y, config=CFG, seed=10, device=torch.device("cuda"))
    assert not torch.equal(a.delta, b.delta)


def test_cuda_and_cpu_noise_both_make_the_data_fit(data) -> None:  # type: ignore[no-untyped-def]
    x, y = data
    cfg = NoiseConfig(**{**CFG.__dict__, "rho": None, "max_rounds": 3, "stop_accuracy": 1.01})
    gpu = error_minimizing_noise(x, y, config=cfg, seed=9, device=torch.device("cuda"))
    cpu = error_minimizing_noise(x, y, config=cfg, seed=9)
    assert gpu.rounds == cpu.rounds == 3
    assert gpu.surrogate_accuracy >= 0.5 and cpu.surrogate_accuracy >= 0.5
