"""guards.protect.eot: the differentiable JPEG matches Pillow's, gradients flow, the attacker view is seeded."""

from __future__ import annotations

import pytest
import torch

from guards.checks.victims import jpeg as pillow_jpeg
from guards.protect import eot


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0.0, 0.6, 32)[None, None, None, :]
    return eot.gaussian_blur(torch.rand(4, 1, 32, 32, generator=g) * 0.3 + ramp, 1.0).clamp(0, 1)


def test_quantisation_table_is_t81_k1_at_quality_50_and_scaled_by_ijg() -> None:
    assert torch.equal(eot.quantisation_table(50), eot.LUMINANCE)
    assert float(eot.quantisation_table(75)[0, 0]) == 8.0  # floor((16 * 50 + 50) / 100)
    assert float(eot.quantisation_table(100).max()) == 1.0
    with pytest.raises(ValueError, match="quality"):
        eot.quantisation_table(0)


@pytest.mark.parametrize("quality", [50, 75, 95])
def test_differentiable_jpeg_decodes_like_pillow(images: torch.Tensor, quality: int) -> None:
    ours, pillow = eot.jpeg(images, quality), pillow_jpeg(images, quality)
    assert float((ours - pillow).abs().mean()) * 255 < 0.5  # Pillow's integer DCT differs by rounding only
    assert float((images - pillow).abs().mean()) * 255 > 0.5  # and JPEG did change the images


def test_jpeg_removes_high_frequencies_and_keeps_low_ones() -> None:
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    checker = 0.5 + 3 / 255 * torch.where((yy + xx) % 2 == 0, 1.0, -1.0)
    smooth = 0.5 + 3 / 255 * torch.cos(2 * torch.pi * xx / 32)
    for pattern, kept in ((checker, False), (smooth, True)):
        out = eot.jpeg(pattern[None, None], 75)[0, 0]
        energy = float(((out - 0.5) ** 2).sum() / ((pattern - 0.5) ** 2).sum())
        assert (energy > 0.6) is kept


def test_gradients_flow_through_every_view(images: torch.Tensor) -> None:
    for seed in range(12):
        x = images.clone().requires_grad_(True)
        eot.attacker_view(x, torch.Generator().manual_seed(seed)).sum().backward()
        assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_attacker_view_is_seeded(images: torch.Tensor) -> None:
    a = eot.attacker_view(images, torch.Generator().manual_seed(3))
    b = eot.attacker_view(images, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == images.shape


def test_blur_keeps_the_mean_of_a_flat_image() -> None:
    flat = torch.full((1, 1, 16, 16), 0.4)
    assert torch.allclose(eot.gaussian_blur(flat, 1.0), flat, atol=1e-6)
