"""guards.protect.salm / surrogate / labels: budget, sparsity, determinism, devices, pseudo-labels."""

from __future__ import annotations

import pytest
import torch
from noise_fixtures import CFG, EPS, two_class_images  # tests/noise_fixtures.py

from guards.errors import GuardError
from guards.protect.labels import pseudo_labels
from guards.protect.mask import foreground, mask_size
from guards.protect.salm import NoiseConfig, error_minimizing_noise
from guards.protect.surrogate import auto_batch_size, select_device


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return two_class_images()


@pytest.fixture(scope="module")
def noise(data: tuple[torch.Tensor, torch.Tensor]):  # type: ignore[no-untyped-def]
    return error_minimizing_noise(*data, config=CFG, seed=9)


def test_noise_is_within_budget_and_inside_the_mask(noise, data) -> None:  # type: ignore[no-untyped-def]
    x, _ = data
    assert noise.delta.shape == x.shape
    assert float(noise.delta.abs().max()) <= EPS + 1e-7
    assert not bool((noise.delta[~noise.mask] != 0).any())
    assert float(noise.delta.abs().max()) == pytest.approx(EPS)  # saturated: the budget is used
    assert ((x + noise.delta) >= 0).all() and ((x + noise.delta) <= 1).all()
    assert noise.examined == 24 and 1 <= noise.rounds <= 2


def test_mask_sparsity_equals_rho(noise, data) -> None:  # type: ignore[no-untyped-def]
    x, _ = data
    for i in range(x.shape[0]):
        assert int(noise.mask[i].sum()) == mask_size(0.1, int(foreground(x[i, 0]).sum()))


def test_same_seed_same_noise_other_seed_other_noise(noise, data) -> None:  # type: ignore[no-untyped-def]
    again = error_minimizing_noise(*data, config=CFG, seed=9)
    assert torch.equal(again.delta, noise.delta) and torch.equal(again.mask, noise.mask)
    other = error_minimizing_noise(*data, config=CFG, seed=10)
    assert not torch.equal(other.delta, noise.delta)


def test_dense_noise_touches_every_pixel(data) -> None:  # type: ignore[no-untyped-def]
    cfg = NoiseConfig(**{**CFG.__dict__, "rho": None, "max_rounds": 1})
    r = error_minimizing_noise(*data, config=cfg, seed=9)
    assert bool(r.mask.all())
    assert float((r.delta != 0).float().mean()) > 0.9


def test_noise_lowers_the_surrogate_loss_compared_with_no_noise(data) -> None:  # type: ignore[no-untyped-def]
    # Error-minimizing: after the rounds the surrogate fits the noised images at least as well as the clean ones.
    cfg = NoiseConfig(**{**CFG.__dict__, "rho": None, "max_rounds": 3, "stop_accuracy": 1.01})
    r = error_minimizing_noise(*data, config=cfg, seed=9)
    assert r.rounds == 3 and r.surrogate_accuracy >= 0.5


def test_bad_inputs_are_clear_errors(data) -> None:  # type: ignore[no-untyped-def]
    x, y = data
    with pytest.raises(GuardError, match="labels"):
        error_minimizing_noise(x, y[:3], config=CFG, seed=1)
    with pytest.raises(GuardError, match="N x C x H x W"):
        error_minimizing_noise(x[0], y, config=CFG, seed=1)
    with pytest.raises(GuardError, match="rho"):
        NoiseConfig(rho=1.5)


def test_device_selection() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("cuda", cuda_available=True) == torch.device("cuda")
    assert select_device("cuda:0", cuda_available=True) == torch.device("cuda:0")
    with pytest.raises(GuardError, match="CUDA is not available"):
        select_device("cuda", cuda_available=False)
    with pytest.raises(GuardError, match="not supported"):
        select_device("tpu")
    with pytest.raises(GuardError, match="cuda:<index>"):
        select_device("cuda:x", cuda_available=True)


def test_batch_size_from_memory() -> None:
    cpu = torch.device("cpu")
    assert auto_batch_size(cpu, image_size=64, channels=1, requested=12) == 12
    big = auto_batch_size(cpu, image_size=64, channels=1, free_bytes=64 << 30)
    small = auto_batch_size(cpu, image_size=64, channels=1, free_bytes=64 << 20)
    assert big == 512 and small < big and small >= 8
    assert small & (small - 1) == 0  # a power of two


def test_pseudo_labels_separate_two_obvious_groups() -> None:
    g = torch.Generator().manual_seed(2)
    dark = torch.rand(10, 1, 16, 16, generator=g) * 0.1
    bright = 0.8 + torch.rand(10, 1, 16, 16, generator=g) * 0.1
    labels = pseudo_labels(torch.cat([dark, bright]), k=2, seed=4)
    assert len(set(labels[:10].tolist())) == 1 and len(set(labels[10:].tolist())) == 1
    assert labels[0] != labels[10]
    assert torch.equal(labels, pseudo_labels(torch.cat([dark, bright]), k=2, seed=4))


def test_frozen_images_get_no_noise_and_the_others_do(data) -> None:  # type: ignore[no-untyped-def]
    x, y = data
    frozen = torch.zeros(len(x), dtype=torch.bool)
    frozen[:10] = True
    r = error_minimizing_noise(x, y, config=CFG, seed=9, frozen=frozen)
    assert not bool(r.delta[frozen].any()) and not bool(r.mask[frozen].any())
    for i in range(10, len(x)):
        assert int(r.mask[i].sum()) == mask_size(0.1, int(foreground(x[i, 0]).sum()))
        assert float(r.delta[i].abs().max()) == pytest.approx(EPS)
    assert r.examined == len(x) - 10
    with pytest.raises(GuardError, match="one flag per image"):
        error_minimizing_noise(x, y, config=CFG, seed=9, frozen=frozen[:5])


def test_warm_up_and_every_round_log_progress_and_protect_sets_its_thread_count(data, caplog, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import guards.progress as progress_mod
    import guards.protect.salm as salm

    threads: list[int] = []
    real_train = salm._train

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        threads.append(torch.get_num_threads())
        return real_train(*args, **kwargs)

    monkeypatch.setattr(salm, "_train", spy)
    monkeypatch.setattr(progress_mod, "EVERY_SECONDS", 0.0)  # a line at every step
    before = torch.get_num_threads()
    chosen = 1 if before != 1 else 2  # a count other than the current one, so setting it is visible
    monkeypatch.setattr(salm, "available_cores", lambda: chosen)
    cfg = NoiseConfig(**{**CFG.__dict__, "warmup_min_steps": 4, "min_rounds": 2, "stop_accuracy": 1.01})
    with caplog.at_level("INFO", logger="guards.protect.salm"):
        r = error_minimizing_noise(*data, config=cfg, seed=9)
    assert threads and set(threads) == {chosen}
    assert torch.get_num_threads() == before  # restored
    text = caplog.text
    assert "protect: surrogate warm-up: 1/4 batches (25%)" in text and "ETA" in text
    assert "protect: surrogate warm-up: done, 4 batches" in text
    per_round = CFG.train_steps + 2 * CFG.steps  # 24 images in batches of 16: 2 noise batches
    for k in range(1, r.rounds + 1):
        assert f"protect: noise round {k} (at most 2): 1/{per_round} steps" in text
        assert f"protect: noise round {k} (at most 2): done, {per_round} steps" in text
    assert r.rounds == 2 and "at most 0 more rounds" in text


ROBUST = NoiseConfig(**{**CFG.__dict__, "rho": 1.0, "saturate": False, "classwise": True, "eot": True,
                        "min_psnr_db": 38.0, "max_rounds": 3, "stop_accuracy": 1.01})


def _psnr_db(delta: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(1 / delta.pow(2).flatten(1).mean(1))


def test_project_meets_the_psnr_floor_the_box_and_the_range() -> None:
    from guards.protect.salm import project

    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 1, 16, 16, generator=g)
    mask = torch.rand(6, 1, 16, 16, generator=g) < 0.7
    d = project(torch.randn(6, 1, 16, 16, generator=g) * 0.1, x, mask.float(), epsilon=EPS, min_psnr_db=38.0)
    assert bool((_psnr_db(d) >= 38.0 - 1e-4).all())
    assert float(d.abs().max()) <= EPS + 1e-7 and not bool(d[~mask].any())
    assert bool(((x + d) >= 0).all() and ((x + d) <= 1).all())
    tiny = torch.full((1, 1, 16, 16), 1e-3)  # already above the floor: left as it is
    assert torch.allclose(project(tiny, torch.full_like(tiny, 0.5), torch.ones_like(tiny), epsilon=EPS,
                                  min_psnr_db=38.0), tiny)


def test_robust_noise_keeps_both_budgets_and_stays_on_the_foreground(data) -> None:  # type: ignore[no-untyped-def]
    x, _ = data
    r = error_minimizing_noise(*data, config=ROBUST, seed=9)
    assert bool((_psnr_db(r.delta) >= 38.0 - 1e-4).all())
    assert float(r.delta.abs().max()) <= EPS + 1e-7
    for i in range(len(x)):  # rho 1: the whole foreground, nothing else
        assert torch.equal(r.mask[i, 0], foreground(x[i, 0]))
    assert not bool(r.delta[~r.mask].any()) and r.rounds == 3
    again = error_minimizing_noise(*data, config=ROBUST, seed=9)
    assert torch.equal(again.delta, r.delta)


def _class_agreement(delta: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cosine similarity of two images' noise: same class, other class."""
    flat = torch.nn.functional.normalize(delta.flatten(1), dim=1)
    cos = flat @ flat.T
    same = (y[:, None] == y[None, :]) & ~torch.eye(len(y), dtype=torch.bool)
    other = y[:, None] != y[None, :]
    return float(cos[same].mean()), float(cos[other].mean())


def test_the_class_part_gives_a_class_one_shared_pattern() -> None:
    # Images with nothing that tells the classes apart: what the noise of a class shares comes from the class part.
    g = torch.Generator().manual_seed(5)
    x = torch.rand(24, 1, 16, 16, generator=g) * 0.6 + 0.2
    y = torch.arange(24) % 3
    with_class = error_minimizing_noise(x, y, config=ROBUST, seed=9).delta
    without = error_minimizing_noise(x, y, config=NoiseConfig(**{**ROBUST.__dict__, "classwise": False}),
                                     seed=9).delta
    same, other = _class_agreement(with_class, y)
    same0, other0 = _class_agreement(without, y)
    # Sample-wise noise against one surrogate already leans per class (0.55 here); the class part adds to it (0.80).
    assert same - other > 0.65
    assert same - other > (same0 - other0) + 0.15


ADVERSARIAL = NoiseConfig(**{**ROBUST.__dict__, "objective": "adversarial", "classwise": False, "steps": 12,
                             "warmup_epochs": 6, "warmup_min_steps": 80, "step_size": 1 / 255})


def test_adversarial_noise_pushes_each_image_to_the_next_class_within_both_budgets(data) -> None:  # type: ignore[no-untyped-def]
    import guards.protect.salm as salm

    x, y = data
    frozen = torch.zeros(len(x), dtype=torch.bool)
    frozen[:4] = True
    r = error_minimizing_noise(x, y, config=ADVERSARIAL, seed=9, frozen=frozen)
    assert r.rounds == 1 and r.examined == len(x) - 4
    assert not bool(r.delta[frozen].any())
    assert bool((_psnr_db(r.delta[~frozen]) >= 38.0 - 1e-4).all())
    assert float(r.delta.abs().max()) <= EPS + 1e-7 and not bool(r.delta[~r.mask].any())
    # With room to move (a looser budget than the release's), the surrogate it was optimised against now calls
    # most images the next class.
    loose = NoiseConfig(**{**ADVERSARIAL.__dict__, "epsilon": 0.25, "min_psnr_db": 20.0, "step_size": 0.02})
    seen: list[torch.nn.Module] = []
    real = salm._targeted_poison

    def spy(ensemble, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(ensemble[0][0])  # the surrogate trained on clean images
        return real(ensemble, *args, **kwargs)

    salm._targeted_poison = spy
    try:
        wide = error_minimizing_noise(x, y, config=loose, seed=9, frozen=frozen)
    finally:
        salm._targeted_poison = real
    assert torch.equal(error_minimizing_noise(x, y, config=ADVERSARIAL, seed=9, frozen=frozen).delta, r.delta)
    model = seen[0].eval()
    target = (y + 1) % 2
    with torch.no_grad():
        clean_hits = float((model(x[~frozen]).argmax(1) == target[~frozen]).float().mean())
        noised_hits = float((model((x + wide.delta)[~frozen]).argmax(1) == target[~frozen]).float().mean())
    assert clean_hits < 0.2 and noised_hits > 0.6


def test_unknown_objective_is_a_clear_error() -> None:
    with pytest.raises(GuardError, match="objective"):
        NoiseConfig(objective="maximin")


def test_adversarial_noise_of_a_single_class_release_is_not_zero(data) -> None:  # type: ignore[no-untyped-def]
    # One class (a small unlabelled release whose pseudo-labels form one cluster): the cross-entropy of a
    # one-output surrogate is 0 whatever the noise, so the noise is pushed towards a second output instead.
    x, _ = data
    r = error_minimizing_noise(x, torch.zeros(len(x), dtype=torch.long), config=ADVERSARIAL, seed=9)
    assert float(r.delta.abs().max()) > 0


def test_defence_surrogates_join_the_ensemble_and_bad_names_are_clear_errors(data) -> None:  # type: ignore[no-untyped-def]
    import guards.protect.salm as salm

    sizes: list[int] = []
    real = salm._targeted_poison

    def spy(ensemble, *args, **kwargs):  # type: ignore[no-untyped-def]
        sizes.append(len(ensemble))
        return real(ensemble, *args, **kwargs)

    cfg = NoiseConfig(**{**ADVERSARIAL.__dict__, "defences": ("blur", "jpeg75")})
    salm._targeted_poison = spy
    try:
        r = error_minimizing_noise(*data, config=cfg, seed=9)
    finally:
        salm._targeted_poison = real
    assert sizes == [3] and bool((_psnr_db(r.delta) >= 38.0 - 1e-4).all())
    with pytest.raises(GuardError, match="defences"):
        NoiseConfig(objective="adversarial", defences=("median",))
    with pytest.raises(GuardError, match="adversarial"):
        NoiseConfig(objective="min-min", defences=("blur",))


def test_adversarial_noise_without_a_warm_up_still_runs(data) -> None:  # type: ignore[no-untyped-def]
    # warmup_epochs = warmup_min_steps = 0 (the light test policies): no schedule over zero steps.
    cfg = NoiseConfig(**{**ADVERSARIAL.__dict__, "warmup_epochs": 0, "warmup_min_steps": 0, "steps": 1,
                         "defences": ("blur",)})
    r = error_minimizing_noise(*data, config=cfg, seed=9)
    assert r.rounds == 1 and float(r.delta.abs().max()) > 0
