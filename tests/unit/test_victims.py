"""guards.checks.victims: the attackers' preprocessing does what it says (JPEG removes the highest frequency and
keeps smooth structure, blur smooths, augmentation is seeded, the random control keeps the noise's sparsity)."""

from __future__ import annotations

import pytest
import torch

from guards.checks import victims
from guards.errors import InputError
from guards.policy import PolicyError, policy_from_dict


def _checker(size: int, amplitude: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return amplitude * (((yy + xx) % 2) * 2 - 1).float()


def test_jpeg75_garbles_a_faint_checkerboard_and_keeps_a_smooth_pattern() -> None:
    """On a noisy image, JPEG quality 75 keeps a smooth 48/255 step to within 0.1 % and changes a 4/255 per-pixel
    checkerboard by about its own size (measured 95 %): the shortcut the attacker sees is no longer clean."""
    base = (0.5 + 0.03 * torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    reference = victims.jpeg(base, 75)
    amplitude = 4 / 255
    fine = victims.jpeg(base + _checker(32, amplitude), 75) - reference
    assert float((fine - _checker(32, amplitude)).abs().mean()) > 0.5 * amplitude
    smooth = base.clone()
    smooth[..., :16, :] += 48 / 255
    step = (victims.jpeg(smooth, 75) - reference)[..., :16, :]
    assert float((step - 48 / 255).abs().mean()) < 0.01 * 48 / 255
    assert fine.shape == base.shape and fine.dtype == base.dtype


def test_blur_removes_the_checkerboard_and_keeps_a_constant() -> None:
    flat = torch.full((2, 1, 16, 16), 0.3)
    assert torch.allclose(victims.blur(flat), flat, atol=1e-6)
    fine = flat + _checker(16, 0.1)
    assert float((victims.blur(fine) - flat).abs().max()) < 0.02


def test_augment_is_seeded_and_changes_the_batch() -> None:
    batch = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    a = victims.augment(batch, torch.Generator().manual_seed(3))
    b = victims.augment(batch, torch.Generator().manual_seed(3))
    c = victims.augment(batch, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, batch)
    assert a.shape == batch.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_random_control_has_the_noise_sparsity_and_amplitudes() -> None:
    delta = torch.zeros(3, 1, 16, 16)
    delta[:, :, 2:5, 3:9] = 0.05
    delta[1, 0, 10, 10] = -0.2
    control = victims.same_sparsity_noise(delta, torch.Generator().manual_seed(0))
    for d, c in zip(delta, control, strict=True):
        assert int((c != 0).sum()) == int((d != 0).sum())
        assert sorted(c.abs().flatten().tolist()) == sorted(d.abs().flatten().tolist())
    assert not torch.equal(control.abs(), delta.abs())  # moved: no image-specific pattern kept
    assert {float(v) for v in control[control != 0].sign()} == {-1.0, 1.0}


def test_each_family_builds_seeded_weights() -> None:
    for name in ("plain", "mlp"):
        build = victims.builder(victims.RECIPES[name], image_shape=(1, 16, 16))
        one, two = build(3, 5), build(3, 5)
        assert all(torch.equal(p, q) for p, q in zip(one.parameters(), two.parameters(), strict=True))
        assert one(torch.zeros(2, 1, 16, 16)).shape == (2, 3)
    with pytest.raises(InputError, match="victim defence 'gzip'"):
        victims.defended(torch.zeros(1, 1, 8, 8), "gzip")


def test_policy_names_the_attackers() -> None:
    assert policy_from_dict({}).unlearnability.victims == ("plain", "augmented", "jpeg75", "blur", "mlp")
    assert set(policy_from_dict({}).unlearnability.victims) <= set(victims.RECIPES)
    with pytest.raises(PolicyError, match="unlearnability.victims"):
        policy_from_dict({"unlearnability": {"victims": []}})
    with pytest.raises(PolicyError, match="is not allowed"):
        policy_from_dict({"unlearnability": {"victims": ["resnet50"]}})
