"""guards.protect.mask: exact sparsity of the saliency mask, at model and native resolution."""

from __future__ import annotations

import pytest
import torch

from guards.protect.mask import batch_masks, flatness, foreground, mask_size, native_mask, spread, topk_mask


@pytest.mark.parametrize("rho", [0.01, 0.1, 0.25, 0.5, 1.0])
def test_topk_mask_selects_exactly_rho_of_the_foreground(rho: float) -> None:
    g = torch.Generator().manual_seed(3)
    image = torch.rand(40, 33, generator=g)
    image[:10] = 0.0  # a dark band that is not foreground
    fg = foreground(image)
    sal = torch.rand(40, 33, generator=g)
    m = topk_mask(sal, fg, rho=rho)
    assert int(m.sum()) == mask_size(rho, int(fg.sum()))
    assert not bool((m & ~fg).any())  # never outside the foreground
    if 0 < int(m.sum()) < int(fg.sum()):  # the chosen pixels have the highest saliency
        assert float(sal[m].min()) >= float(sal[fg & ~m].max())


def test_mask_size_rounds_half_up() -> None:
    assert mask_size(0.1, 25) == 3  # 2.5 -> 3
    assert mask_size(0.1, 24) == 2  # 2.4 -> 2
    assert mask_size(0.0, 100) == 0


def test_ties_are_broken_deterministically() -> None:
    sal = torch.zeros(8, 8)
    fg = torch.ones(8, 8, dtype=torch.bool)
    a = topk_mask(sal, fg, rho=0.25)
    b = topk_mask(sal.clone(), fg, rho=0.25)
    assert torch.equal(a, b) and int(a.sum()) == 16


def test_dark_image_uses_every_pixel_as_foreground() -> None:
    assert bool(foreground(torch.zeros(5, 5)).all())


@pytest.mark.parametrize(("h", "w"), [(64, 64), (97, 131), (512, 384)])
def test_native_mask_sparsity_is_exact_after_upsampling(h: int, w: int) -> None:
    g = torch.Generator().manual_seed(h + w)
    sal_model = torch.rand(16, 16, generator=g)
    native = torch.rand(h, w, generator=g)
    native[: h // 4] = 0.0
    m = native_mask(sal_model, native, rho=0.1)
    assert m.shape == (h, w)
    assert int(m.sum()) == mask_size(0.1, int(foreground(native).sum()))


def test_batch_masks_per_image() -> None:
    g = torch.Generator().manual_seed(5)
    images = torch.rand(4, 1, 12, 12, generator=g)
    sal = torch.rand(4, 1, 12, 12, generator=g)
    m = batch_masks(sal, images, rho=0.2)
    for i in range(4):
        assert int(m[i].sum()) == mask_size(0.2, int(foreground(images[i, 0]).sum()))


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        topk_mask(torch.zeros(3, 3), torch.ones(4, 4, dtype=torch.bool), rho=0.1)


def test_flatness_ranks_smooth_tissue_above_edges() -> None:
    img = torch.zeros(1, 1, 16, 16)
    img[..., :, 8:] = 1.0  # a vertical edge at column 8
    score = flatness(img)[0, 0]
    assert float(score[8, 2]) > float(score[8, 7])  # far from the edge is flatter than next to it
    assert float(score[8, 2]) == 0.0  # a constant neighbourhood has no contrast


def test_spread_takes_every_cell_before_any_cell_twice() -> None:
    scores = torch.rand(2, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    scores[0, 0, :8, :8] += 10  # one cell far more salient than the rest
    ranked = spread(scores, block=8)
    mask = batch_masks(ranked, torch.ones(2, 1, 20, 20), rho=9 / 400)  # 9 pixels: one per cell (3 x 3 cells)
    for i in range(2):
        assert int(mask[i].sum()) == 9
        counts = [int(mask[i, 0, y : y + 8, x : x + 8].sum()) for y in (0, 8, 16) for x in (0, 8, 16)]
        assert counts == [1] * 9
        # inside a cell, the best pixel is the one chosen
        y0, x0 = 8, 8
        cell = scores[i, 0, y0 : y0 + 8, x0 : x0 + 8]
        best = divmod(int(cell.argmax()), 8)
        assert bool(mask[i, 0, y0 + best[0], x0 + best[1]])
